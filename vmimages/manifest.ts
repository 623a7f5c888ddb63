// The signed manifest of a VM base image (a qcow2 file the lab's VMs run on through per-user
// overlays): name, display name, OS type, default, version, size, SHA-256 and a SHA-256 per 1 MiB
// chunk. Same key, same chunk index and same canonical-JSON signature as a root image's manifest
// (image-format/manifest.ts), but its own format and `kind: vm-image`: neither is ever taken for
// the other (refuseOtherKind, exit 42).
import type crypto from 'node:crypto'
import { z } from 'zod'
import { LabhostError } from '../lib/errors.ts'
import {
  CHUNK_SIZE,
  checkSchema,
  checkSignature,
  keyFingerprint,
  parseJson,
  refineChunkCount,
  refuseOtherKind,
  Sha256Hex,
  signDocument,
  SignerFingerprint,
  VM_IMAGE_MANIFEST_FORMAT,
} from '../image-format/manifest.ts'

export const VM_MANIFEST_FILE = 'manifest.json'

const sha256Hex = Sha256Hex
/** A base's name: the catalogue section, the first part of its file name. */
export const BaseName = z
  .string()
  .max(64)
  .regex(/^[a-z0-9][a-z0-9-]*$/, 'lower-case letters, digits and dashes, starting with a letter or digit')
/** Starts with a digit, so a file name built from it is never hidden, `.` or `..`; no `/`. */
export const BaseVersion = z
  .string()
  .max(64)
  .regex(/^[0-9][0-9A-Za-z.+~-]*$/, 'a version such as 1.2.0')
/** Printable, one line, no INI syntax in it (it becomes a catalogue value). */
export const DisplayName = z
  .string()
  .min(1)
  .max(100)
  .regex(/^[^\x00-\x1f\x7f[\]=;#]+$/, 'one line of printable text without [ ] = ; #')
export const OsType = z
  .string()
  .max(32)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'a lower-case word such as windows or linux')

/** The file a base is published and installed as: derived, never taken from a manifest as is. */
export const baseFileName = (name: string, version: string): string => `${name}-${version}.qcow2`

export const VmManifestSchema = z
  .object({
    format: z.literal(VM_IMAGE_MANIFEST_FORMAT),
    kind: z.literal('vm-image'),
    name: BaseName,
    displayName: DisplayName,
    os: OsType,
    default: z.boolean(),
    version: BaseVersion,
    createdAt: z.number().int().nonnegative(),
    image: z
      .object({
        file: z.string(),
        size: z.number().int().positive(),
        sha256: sha256Hex,
        chunkSize: z.literal(CHUNK_SIZE),
        chunks: z.array(sha256Hex),
      })
      .strict(),
    /** What `qemu-img info` said at publishing; for people (the chunk hashes are what is checked). */
    qcow2: z.object({ virtualSize: z.number().int().positive(), clusterSize: z.number().int().positive() }).strict(),
    signer: SignerFingerprint,
    signature: z.string().optional(),
  })
  .strict()
  .superRefine((m, ctx) => {
    refineChunkCount(m.image, ctx)
    if (m.image.file !== baseFileName(m.name, m.version)) {
      ctx.addIssue({ code: 'custom', path: ['image', 'file'], message: `must be ${baseFileName(m.name, m.version)} (name-version.qcow2)` })
    }
  })

export type VmManifest = z.infer<typeof VmManifestSchema>

/**
 * The manifest in `text` (from `where`): its signature by `key` before any field is read (exit
 * 30), then its kind (42), then its shape (31) — names confined to plain file names, the chunk
 * count matching the size. Only then may its sizes and names be used.
 */
export function parseSignedVmManifest(text: string, key: crypto.KeyObject, where: string): VmManifest {
  const v = parseJson(text, where)
  checkSignature(v, key, where)
  refuseOtherKind(v, 'vm-image', where)
  return checkSchema(
    VmManifestSchema,
    v,
    where,
    'not a VM base image manifest this labhost can use: publish it again with this labhost version; nothing was written',
  )
}

export function signVmManifest(m: Omit<VmManifest, 'signer' | 'signature'>, key: crypto.KeyObject, publicKey: crypto.KeyObject): VmManifest {
  const full: VmManifest = { ...m, signer: keyFingerprint(publicKey) }
  const r = VmManifestSchema.safeParse(full)
  if (!r.success)
    throw new LabhostError(
      'usage',
      `the VM image manifest would be invalid: ${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message}`,
      'check --name, --version, --os and --display-name',
    )
  return signDocument(full, key)
}

/** Bytes of chunk `index`: the chunk size, less for the last one. */
export const vmChunkLength = (m: VmManifest, index: number): number => Math.min(m.image.chunkSize, m.image.size - index * m.image.chunkSize)

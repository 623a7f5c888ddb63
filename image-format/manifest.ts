// The signed manifest of a root image: version, recipe hash, size, SHA-256, a chunk index of
// SHA-256 per fixed-size chunk, signed with ed25519 over its canonical JSON.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { LabhostError } from '../lib/errors.ts'
import { LayoutSchema, PartitionSchema } from '../lib/layout.ts'

export const MANIFEST_FORMAT = 'labhost-manifest/1'
/** The format of a VM base image's manifest (vmimages/manifest.ts), signed by the same key. */
export const VM_IMAGE_MANIFEST_FORMAT = 'labhost-vm-image/1'
export const CHUNK_SIZE = 1 << 20

// The shape a signed manifest must have. Checked only after its signature (the fields of an
// unsigned manifest mean nothing), so a malformed one is a one-line manifestInvalid naming the
// field rather than a TypeError wherever a field is used. .strict() everywhere: a new field is a
// new format. No defaults: what is checked is exactly what was signed.
const count = z.number().int().nonnegative()
const positive = z.number().int().positive()
/** A SHA-256 in lower-case hex (every signed document's hashes). */
export const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 in lower-case hex (64 digits)')
const sha256Hex = Sha256Hex
/** Who signed a document (root or VM image manifest): the key's fingerprint (keyFingerprint). */
export const SignerFingerprint = z.string().regex(/^sha256:[0-9a-f]{32}$/, 'a key fingerprint sha256:<32 hex digits>')

/** A chunk list must fit its image's size: one hash per chunk (root and VM image manifests alike). */
export function refineChunkCount(image: { size: number; chunkSize: number; chunks: readonly string[] }, ctx: z.RefinementCtx): void {
  const chunks = Math.ceil(image.size / image.chunkSize)
  if (image.chunks.length !== chunks) {
    ctx.addIssue({
      code: 'custom',
      path: ['image', 'chunks'],
      message: `${image.chunks.length} chunk hashes, where ${image.size} bytes make ${chunks} chunks of ${image.chunkSize}`,
    })
  }
}
// a file beside the manifest: a plain name (downloads resolve it against the manifest's URL)
const fileName = z
  .string()
  .max(255)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._+-]*$/, 'a plain file name (no directory, not hidden)')
const fileRef = { file: fileName, size: count, sha256: sha256Hex }

export const ManifestSchema = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    name: z.string().regex(/^[a-z0-9-]+$/, 'lower-case letters, digits and dashes'),
    version: z
      .string()
      .max(64)
      .regex(/^[0-9][0-9A-Za-z.+~-]*$/, 'a version such as 1.2.0'),
    recipeHash: sha256Hex,
    createdAt: count,
    layout: z
      .object({ rootFsUuid: LayoutSchema.shape.rootFsUuid, slotSizeMiB: positive, slots: z.object({ A: z.string().min(1), B: z.string().min(1) }).strict() })
      .strict(),
    /** The whole layout the image was built for (its fstab): the installer partitions by it. */
    diskLayout: LayoutSchema.extend({
      partitions: z.array(PartitionSchema.extend({ options: z.string() })),
      stateMount: z.string(),
    }).optional(),
    image: z.object({ ...fileRef, chunkSize: positive, chunks: z.array(sha256Hex) }).strict(),
    /**
     * The zstd copy that is downloaded, one zstd frame per `frameSize` bytes of image (without
     * `frameSize`, an image built before it: one per chunk). `frames`: each frame's size, in image
     * order (image-format/zstd-frames.ts): a delta update fetches single frames by their byte range.
     */
    transport: z.object({ ...fileRef, compression: z.literal('zstd'), frameSize: positive.optional(), frames: z.array(positive).optional() }).strict(),
    /** The block index (image-format/block-index.ts): short hashes of every block, for delta updates. */
    blocks: z
      .object({ ...fileRef, blockSize: positive, hashBytes: z.number().int().min(1).max(32) })
      .strict()
      .optional(),
    /** The recipe's trial: boots the new version gets before its initramfs rolls back (`labhost update --trial-boots` overrides). */
    trial: z
      .object({ boots: z.number().int().min(1).max(20) })
      .strict()
      .optional(),
    signer: SignerFingerprint,
    signature: z.string().optional(),
  })
  .strict()
  .superRefine((m, ctx) => {
    refineChunkCount(m.image, ctx)
    const { frameSize } = m.transport
    // a frame never straddles two chunks (a chunk is whole frames) nor splits a block (a fetched
    // frame replaces whole blocks of a chunk assembled from the disk: updater/delta.ts)
    if (frameSize !== undefined && m.image.chunkSize % frameSize !== 0) {
      ctx.addIssue({ code: 'custom', path: ['transport', 'frameSize'], message: `${frameSize} bytes does not divide the chunk size ${m.image.chunkSize}` })
    } else if (frameSize !== undefined && m.blocks && frameSize % m.blocks.blockSize !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['transport', 'frameSize'],
        message: `${frameSize} bytes is not a multiple of the block size ${m.blocks.blockSize}`,
      })
    }
    const frames = m.transport.frames
    const want = Math.ceil(m.image.size / frameSizeOf(m))
    if (frames && (frames.length !== want || frames.reduce((a, b) => a + b, 0) !== m.transport.size)) {
      ctx.addIssue({
        code: 'custom',
        path: ['transport', 'frames'],
        message: `${frames.length} frames of ${frames.reduce((a, b) => a + b, 0)} bytes, where ${m.image.size} bytes of image make ${want} frames of ${frameSizeOf(m)} and the transport file has ${m.transport.size} bytes`,
      })
    }
    if (m.blocks && m.blocks.size !== Math.ceil(m.image.size / m.blocks.blockSize) * m.blocks.hashBytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['blocks', 'size'],
        message: `${m.blocks.size} bytes, where ${m.image.size} bytes of image in ${m.blocks.blockSize}-byte blocks make ${Math.ceil(m.image.size / m.blocks.blockSize) * m.blocks.hashBytes}`,
      })
    }
    const files = [m.image.file, m.transport.file, ...(m.blocks ? [m.blocks.file] : []), 'manifest.json']
    if (new Set(files).size !== files.length)
      ctx.addIssue({ code: 'custom', path: [], message: `the image, transport, block index and manifest need four different file names: ${files.join(', ')}` })
  })

export type Manifest = z.infer<typeof ManifestSchema>

/** Bytes of chunk `index` of the image: the chunk size, less for the last one. */
export const chunkLength = (m: Manifest, index: number): number => Math.min(m.image.chunkSize, m.image.size - index * m.image.chunkSize)

type FrameGrid = { image: { size: number; chunkSize: number }; transport: { frameSize?: number | undefined } }

/** Bytes of image in each transport frame: `transport.frameSize`, or one chunk (an image built before frame sizes). */
export const frameSizeOf = (m: FrameGrid): number => m.transport.frameSize ?? m.image.chunkSize

/** Frames that make one chunk (the last chunk may have fewer). */
export const framesPerChunk = (m: FrameGrid): number => m.image.chunkSize / frameSizeOf(m)

/** Bytes of image in frame `index`: the frame size, less for the last one. */
export const frameLength = (m: FrameGrid, index: number): number => Math.min(frameSizeOf(m), m.image.size - index * frameSizeOf(m))

/** JSON with keys sorted at every level: the bytes that are signed. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`
  }
  return JSON.stringify(v)
}

export function keyFingerprint(publicKey: crypto.KeyObject): string {
  return (
    'sha256:' +
    crypto
      .createHash('sha256')
      .update(publicKey.export({ format: 'der', type: 'spki' }))
      .digest('hex')
      .slice(0, 32)
  )
}

/** The files generateKeyPair would write in `dir`, or the refusal it would give (an existing key). */
export function planKeyPair(dir: string, name = 'labhost-signing'): { privateKeyFile: string; publicKeyFile: string } {
  const privateKeyFile = path.join(dir, `${name}.key`)
  const publicKeyFile = path.join(dir, `${name}.pub`)
  if (fs.existsSync(privateKeyFile))
    throw new LabhostError('usage', `${privateKeyFile} exists already`, 'choose another --out directory; an existing key is never overwritten')
  return { privateKeyFile, publicKeyFile }
}

export function generateKeyPair(dir: string, name = 'labhost-signing'): { privateKeyFile: string; publicKeyFile: string } {
  const { privateKeyFile, publicKeyFile } = planKeyPair(dir, name)
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519')
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(privateKeyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 })
  fs.writeFileSync(publicKeyFile, publicKey.export({ format: 'pem', type: 'spki' }))
  return { privateKeyFile, publicKeyFile }
}

export function readPrivateKey(file: string): crypto.KeyObject {
  try {
    const k = crypto.createPrivateKey(fs.readFileSync(file))
    if (k.asymmetricKeyType !== 'ed25519') throw new Error('not an ed25519 key')
    return k
  } catch (e) {
    throw new LabhostError(
      'usage',
      `${file} is not an ed25519 private key: ${(e as Error).message}`,
      'make one with `labhost image keygen --out DIR`',
      {},
      { cause: e },
    )
  }
}

export function readPublicKey(file: string): crypto.KeyObject {
  try {
    const k = crypto.createPublicKey(fs.readFileSync(file))
    if (k.asymmetricKeyType !== 'ed25519') throw new Error('not an ed25519 key')
    return k
  } catch (e) {
    throw new LabhostError(
      'usage',
      `${file} is not an ed25519 public key: ${(e as Error).message}`,
      'use the .pub file written by `labhost image keygen`',
      {},
      { cause: e },
    )
  }
}

export function signManifest(m: Manifest, key: crypto.KeyObject): Manifest {
  return signDocument(m, key)
}

/** Any manifest kind signed the same way: ed25519 over its canonical JSON without the signature. */
export function signDocument<M extends { signature?: string }>(m: M, key: crypto.KeyObject): M {
  const unsigned = { ...m, signature: undefined }
  return { ...m, signature: crypto.sign(null, Buffer.from(canonicalJson(unsigned)), key).toString('base64') }
}

const short = (v: unknown) => {
  const s = JSON.stringify(v) ?? String(v)
  return s.length > 60 ? `${s.slice(0, 57)}...` : s
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)

/** The JSON value of a manifest's text, any shape. */
export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text)
  } catch (e) {
    throw new LabhostError(
      'manifestInvalid',
      `${where} is not a readable manifest: ${(e as Error).message}`,
      'point at the manifest.json written by `labhost image build`',
      {},
      { cause: e },
    )
  }
}

function unsigned(where: string): LabhostError {
  return new LabhostError(
    'signatureInvalid',
    `${where} is not signed`,
    'only signed images are accepted; sign it with `labhost image build --key`; nothing was written',
  )
}

/** Throws unless `v` carries a valid signature by `key`; reads nothing else of it. */
export function checkSignature(v: unknown, key: crypto.KeyObject, where: string): void {
  if (!isObject(v) || typeof v.signature !== 'string') throw unsigned(where)
  let ok = false
  try {
    ok = crypto.verify(null, Buffer.from(canonicalJson({ ...v, signature: undefined })), key, Buffer.from(v.signature, 'base64'))
  } catch {
    // a signature OpenSSL cannot even parse is a signature that does not match
  }
  if (!ok) {
    // the signer named in an unverified manifest is only a clue: anything but a fingerprint quoted, shortened
    const signer = typeof v.signer === 'string' && /^sha256:[0-9a-f]{32}$/.test(v.signer) ? v.signer : short(v.signer ?? 'unknown')
    throw new LabhostError(
      'signatureInvalid',
      `${where}: the signature does not match (signed by ${signer}, trusted key ${keyFingerprint(key)})`,
      'the manifest was changed or signed by another key: rebuild or re-download it; nothing was written',
    )
  }
}

export type ManifestKind = 'root-image' | 'vm-image'

/** Which kind of signed manifest `v` claims to be, by its format (and a VM image's `kind`); null: neither. */
export function manifestKindOf(v: unknown): ManifestKind | null {
  if (!isObject(v)) return null
  if (v.kind === 'vm-image' || v.format === VM_IMAGE_MANIFEST_FORMAT) return 'vm-image'
  return v.format === MANIFEST_FORMAT ? 'root-image' : null
}

/**
 * Refuse a manifest of the other kind (exit 42) — a VM base image is never written to a root slot,
 * nor a root image put among the VM bases — after its signature was checked: both are signed by
 * the same key, so the signature alone cannot tell them apart.
 */
export function refuseOtherKind(v: unknown, want: ManifestKind, where: string): void {
  const kind = manifestKindOf(v)
  if (kind === null || kind === want) return
  const what = (k: ManifestKind) => (k === 'vm-image' ? 'a VM base image (labhost vm-image publish)' : 'a root image (labhost image build)')
  throw new LabhostError(
    'manifestKind',
    `${where} is the manifest of ${what(kind)}, not of ${what(want)}`,
    want === 'vm-image'
      ? 'give the URL or directory that `labhost vm-image publish` wrote; nothing was written'
      : 'root slots take only root images: give an image directory that `labhost image build` wrote; nothing was written',
  )
}

/** `v` as a Manifest, or manifestInvalid naming the first field that is wrong and its value. */
function checkShape(v: unknown, where: string): Manifest {
  return checkSchema(ManifestSchema, v, where, 'not a manifest this labhost can use: rebuild the image with this labhost version; nothing was written')
}

/** `v` parsed by `schema` exactly as signed, or manifestInvalid naming the first field that is wrong and its value. */
export function checkSchema<S extends z.ZodType>(schema: S, v: unknown, where: string, hint: string): z.infer<S> {
  const r = schema.safeParse(v)
  if (r.success) {
    // a default zod filled in (a layout key added later) would be a key nobody signed, and the
    // signature is checked again over what this returns
    if (canonicalJson(r.data) !== canonicalJson(v)) {
      throw new LabhostError(
        'manifestInvalid',
        `${where}: a key with a default is missing (a manifest writes out every key it signs)`,
        'rebuild the image with this labhost version; nothing was written',
      )
    }
    return r.data
  }
  const issue = r.error.issues[0]!
  let found: unknown = v
  for (const k of issue.path) found = isObject(found) || Array.isArray(found) ? (found as Record<PropertyKey, unknown>)[k] : undefined
  const field = issue.path.length ? issue.path.join('.') : '(top level)'
  const what = issue.code === 'unrecognized_keys' ? `unknown key(s) ${issue.keys.join(', ')}` : found === undefined ? 'missing' : `found ${short(found)}`
  const more = r.error.issues.length > 1 ? ` (+${r.error.issues.length - 1} more)` : ''
  throw new LabhostError('manifestInvalid', `${where}: ${field}: ${issue.message}; ${what}${more}`, hint, {
    field,
    issues: r.error.issues.map((i) => ({ path: i.path.map(String), message: i.message })),
  })
}

/**
 * Verify `m`'s signature by `key` — before anything else of it is read — then its shape; returns
 * it typed. Any JSON value may be passed: the worst outcome is a LabhostError.
 */
export function verifyManifestSignature(m: unknown, key: crypto.KeyObject, where: string): Manifest {
  checkSignature(m, key, where)
  refuseOtherKind(m, 'root-image', where)
  return checkShape(m, where)
}

/** The manifest in `text`, its signature by `key` checked first, then its shape. */
export function parseSignedManifest(text: string, key: crypto.KeyObject, where: string): Manifest {
  return verifyManifestSignature(parseJson(text, where), key, where)
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch (e) {
    throw new LabhostError(
      'manifestInvalid',
      `${file} is not a readable manifest: ${(e as Error).message}`,
      'point at the manifest.json written by `labhost image build`',
      {},
      { cause: e },
    )
  }
}

export function readSignedManifest(file: string, key: crypto.KeyObject): Manifest {
  return parseSignedManifest(readText(file), key, file)
}

/** A manifest file, not yet verified: see parseManifest. */
export function readManifest(file: string): Manifest {
  return parseManifest(readText(file), file)
}

/**
 * Parse a manifest's text where the trusted key is not at hand (`where`, a file or URL, names it
 * in errors): one without a signature is refused as unsigned, one with a signature must have the
 * shape. Nothing in it is to be trusted before verifyManifestSignature.
 */
export function parseManifest(text: string, where: string): Manifest {
  const v = parseJson(text, where)
  if (!isObject(v) || typeof v.signature !== 'string') throw unsigned(where)
  refuseOtherKind(v, 'root-image', where)
  return checkShape(v, where)
}

/** SHA-256 of the whole file and of each chunk, in one pass. */
export function hashChunks(file: string, chunkSize = CHUNK_SIZE): { size: number; sha256: string; chunks: string[] } {
  const whole = crypto.createHash('sha256')
  const chunks: string[] = []
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(chunkSize)
    let size = 0
    for (;;) {
      let n = 0
      while (n < chunkSize) {
        const r = fs.readSync(fd, buf, n, chunkSize - n, size + n)
        if (r === 0) break
        n += r
      }
      if (n === 0) break
      whole.update(buf.subarray(0, n))
      chunks.push(crypto.createHash('sha256').update(buf.subarray(0, n)).digest('hex'))
      size += n
      if (n < chunkSize) break
    }
    return { size, sha256: whole.digest('hex'), chunks }
  } finally {
    fs.closeSync(fd)
  }
}

/** A file's size and SHA-256, in one pass. */
export function fileDigest(file: string): { size: number; sha256: string } {
  const whole = crypto.createHash('sha256')
  const fd = fs.openSync(file, 'r')
  let size = 0
  try {
    const buf = Buffer.alloc(4 << 20)
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, size)) > 0; size += n) whole.update(buf.subarray(0, n))
  } finally {
    fs.closeSync(fd)
  }
  return { size, sha256: whole.digest('hex') }
}

/** Whether `file` is the file a manifest part names (its size and SHA-256), in one pass. */
export function matchesPart(file: string, part: { size: number; sha256: string }): { ok: boolean; size: number; sha256: string } {
  const { size, sha256 } = fileDigest(file)
  return { ok: size === part.size && sha256 === part.sha256, size, sha256 }
}

/** Verify signature and, when the files are beside the manifest, their sizes and hashes. */
export function verifyImageDir(manifestFile: string, key: crypto.KeyObject): Manifest {
  const m = readSignedManifest(manifestFile, key)
  const dir = path.dirname(manifestFile)
  for (const part of [m.image, m.transport, ...(m.blocks ? [m.blocks] : [])]) {
    const f = path.join(dir, part.file)
    if (!fs.existsSync(f)) continue
    const h = matchesPart(f, part)
    if (!h.ok) {
      throw new LabhostError(
        'hashMismatch',
        `${f} does not match its manifest (size ${h.size} vs ${part.size}, sha256 ${h.sha256.slice(0, 16)}… vs ${part.sha256.slice(0, 16)}…)`,
        'the file is damaged or was replaced: rebuild or re-download it',
      )
    }
  }
  return m
}

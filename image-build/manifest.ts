// The signed manifest of a root image: version, recipe hash, size, SHA-256, a chunk index of
// SHA-256 per fixed-size chunk, signed with ed25519 over its canonical JSON.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import type { Layout } from '../lib/layout.ts'

export const MANIFEST_FORMAT = 'labhost-manifest/1'
export const CHUNK_SIZE = 1 << 20

export interface Manifest {
  format: typeof MANIFEST_FORMAT
  name: string
  version: string
  recipeHash: string
  createdAt: number
  layout: { rootFsUuid: string; slotSizeMiB: number; slots: { A: string; B: string } }
  /** The whole layout the image was built for (its fstab): the installer partitions by it. */
  diskLayout?: Layout
  image: { file: string; size: number; sha256: string; chunkSize: number; chunks: string[] }
  /**
   * The zstd copy that is downloaded. `frames`: the size of each chunk's own zstd frame, in chunk
   * order (image-build/zstd-frames.ts): a delta update fetches single chunks by their byte range.
   */
  transport: { file: string; size: number; sha256: string; compression: 'zstd'; frames?: number[] }
  /** The block index (image-build/block-index.ts): short hashes of every block, for delta updates. */
  blocks?: { file: string; size: number; sha256: string; blockSize: number; hashBytes: number }
  signer: string
  signature?: string
}

/** Bytes of chunk `index` of the image: the chunk size, less for the last one. */
export const chunkLength = (m: Manifest, index: number): number => Math.min(m.image.chunkSize, m.image.size - index * m.image.chunkSize)

/** JSON with keys sorted at every level: the bytes that are signed. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`
  if (v !== null && typeof v === 'object') {
    return `{${Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(',')}}`
  }
  return JSON.stringify(v)
}

export function keyFingerprint(publicKey: crypto.KeyObject): string {
  return 'sha256:' + crypto.createHash('sha256').update(publicKey.export({ format: 'der', type: 'spki' })).digest('hex').slice(0, 32)
}

export function generateKeyPair(dir: string, name = 'labhost-signing'): { privateKeyFile: string; publicKeyFile: string } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519')
  fs.mkdirSync(dir, { recursive: true })
  const privateKeyFile = path.join(dir, `${name}.key`)
  const publicKeyFile = path.join(dir, `${name}.pub`)
  if (fs.existsSync(privateKeyFile)) throw new LabhostError('usage', `${privateKeyFile} exists already`, 'choose another --out directory; an existing key is never overwritten')
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
    throw new LabhostError('usage', `${file} is not an ed25519 private key: ${(e as Error).message}`, 'make one with `labhost image keygen --out DIR`')
  }
}

export function readPublicKey(file: string): crypto.KeyObject {
  try {
    const k = crypto.createPublicKey(fs.readFileSync(file))
    if (k.asymmetricKeyType !== 'ed25519') throw new Error('not an ed25519 key')
    return k
  } catch (e) {
    throw new LabhostError('usage', `${file} is not an ed25519 public key: ${(e as Error).message}`, 'use the .pub file written by `labhost image keygen`')
  }
}

export function signManifest(m: Manifest, key: crypto.KeyObject): Manifest {
  const unsigned = { ...m, signature: undefined }
  return { ...m, signature: crypto.sign(null, Buffer.from(canonicalJson(unsigned)), key).toString('base64') }
}

/** Throws unless `m` carries a valid signature by `key`. */
export function verifyManifestSignature(m: Manifest, key: crypto.KeyObject, where: string): void {
  if (typeof m.signature !== 'string') {
    throw new LabhostError('signatureInvalid', `${where} is not signed`, 'only signed images are accepted; sign it with `labhost image build --key`')
  }
  const ok = crypto.verify(null, Buffer.from(canonicalJson({ ...m, signature: undefined })), key, Buffer.from(m.signature, 'base64'))
  if (!ok) {
    throw new LabhostError('signatureInvalid', `${where}: the signature does not match (signed by ${m.signer ?? 'unknown'}, trusted key ${keyFingerprint(key)})`,
      'the manifest was changed or signed by another key: rebuild or re-download it; nothing was written')
  }
}

export function readManifest(file: string): Manifest {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    throw new LabhostError('manifestInvalid', `${file} is not a readable manifest: ${(e as Error).message}`, 'point at the manifest.json written by `labhost image build`')
  }
  return parseManifest(text, file)
}

/** Parse a manifest's text; `where` (a file or URL) names it in errors. */
export function parseManifest(text: string, where: string): Manifest {
  let m: Manifest
  try {
    m = JSON.parse(text) as Manifest
  } catch (e) {
    throw new LabhostError('manifestInvalid', `${where} is not a readable manifest: ${(e as Error).message}`, 'point at the manifest.json written by `labhost image build`')
  }
  if (m === null || typeof m !== 'object' || m.format !== MANIFEST_FORMAT) {
    throw new LabhostError('manifestInvalid', `${where}: format ${JSON.stringify(m?.format)} is not ${MANIFEST_FORMAT}`, 'rebuild the image with this labhost version')
  }
  return m
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

/** Whether `file` is the file a manifest part names (its size and SHA-256), in one pass. */
export function matchesPart(file: string, part: { size: number; sha256: string }): { ok: boolean; size: number; sha256: string } {
  const whole = crypto.createHash('sha256')
  const fd = fs.openSync(file, 'r')
  let size = 0
  try {
    const buf = Buffer.alloc(4 << 20)
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, size)) > 0; size += n) whole.update(buf.subarray(0, n))
  } finally {
    fs.closeSync(fd)
  }
  const sha256 = whole.digest('hex')
  return { ok: size === part.size && sha256 === part.sha256, size, sha256 }
}

/** Verify signature and, when the files are beside the manifest, their sizes and hashes. */
export function verifyImageDir(manifestFile: string, key: crypto.KeyObject): Manifest {
  const m = readManifest(manifestFile)
  verifyManifestSignature(m, key, manifestFile)
  const dir = path.dirname(manifestFile)
  for (const part of [m.image, m.transport, ...(m.blocks ? [m.blocks] : [])]) {
    const f = path.join(dir, part.file)
    if (!fs.existsSync(f)) continue
    const h = matchesPart(f, part)
    if (!h.ok) {
      throw new LabhostError('hashMismatch', `${f} does not match its manifest (size ${h.size} vs ${part.size}, sha256 ${h.sha256.slice(0, 16)}… vs ${part.sha256.slice(0, 16)}…)`,
        'the file is damaged or was replaced: rebuild or re-download it')
    }
  }
  return m
}

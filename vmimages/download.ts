// A base image's bytes into its temporary file, every 1 MiB chunk hashed as it arrives and
// compared with the signed chunk index before it is written; then fsync. A temporary file left by
// a power cut or a killed pull is resumed: its chunks are read back and hashed, the good prefix
// kept, the rest downloaded from there.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { LabhostError } from '../lib/errors.ts'
import type { Progress } from '../lib/progress.ts'
import { vmChunkLength, type VmManifest } from './manifest.ts'
import type { BaseSource } from './source.ts'
import type { BtClient } from '../image-format/bt-clients.ts'

export interface Downloaded {
  /** How the bytes came: BitTorrent (a client seeding on) or HTTP / a directory. */
  method: 'torrent' | 'http'
  /** The BitTorrent client that downloaded it (null: an earlier pull's download was whole already). */
  client?: BtClient | null
  /** That client, seeding on after the pull (BitTorrent only). */
  seederPid?: number | null
  /** Bytes kept from an earlier, interrupted pull (read back and verified). */
  resumedBytes: number
  downloadedBytes: number
  seconds: number
}

function readFully(fd: number, buf: Buffer, length: number, position: number): number {
  let n = 0
  while (n < length) {
    const r = fs.readSync(fd, buf, n, length - n, position + n)
    if (r === 0) break
    n += r
  }
  return n
}

/** The verified prefix of `fd` (whole chunks whose hashes match), fed into `whole`. */
function verifiedPrefix(fd: number, m: VmManifest, whole: crypto.Hash): number {
  const have = fs.fstatSync(fd).size
  const buf = Buffer.alloc(m.image.chunkSize)
  let at = 0
  for (let i = 0; i < m.image.chunks.length && at < have; i++) {
    const len = vmChunkLength(m, i)
    if (readFully(fd, buf, len, at) !== len) break
    const piece = buf.subarray(0, len)
    if (crypto.createHash('sha256').update(piece).digest('hex') !== m.image.chunks[i]) break
    whole.update(piece)
    at += len
  }
  return at
}

/** How much of `file` is the signed base from its start (whole chunks), and the SHA-256 of those bytes. */
export function verifyFile(file: string, m: VmManifest): { good: number; sha256: string } {
  const fd = fs.openSync(file, 'r')
  try {
    const whole = crypto.createHash('sha256')
    const good = verifiedPrefix(fd, m, whole)
    return { good, sha256: whole.digest('hex') }
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Fill `tempFile` with the base `source` describes, verified chunk by chunk; fsync'd when this
 * returns. A chunk that does not match is refused at once (exit 32) and a source that ends early
 * is downloadFailed (36): the caller removes the file.
 */
export async function downloadBase(source: BaseSource, tempFile: string, o: { progress?: Progress } = {}): Promise<Downloaded> {
  const m = source.manifest
  const started = Date.now()
  const fd = fs.openSync(tempFile, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644)
  try {
    const whole = crypto.createHash('sha256')
    const resumed = verifiedPrefix(fd, m, whole)
    fs.ftruncateSync(fd, resumed)
    let at = resumed
    let index = resumed / m.image.chunkSize
    const chunk = Buffer.alloc(m.image.chunkSize)
    let filled = 0
    const complete = () => {
      const piece = chunk.subarray(0, filled)
      const got = crypto.createHash('sha256').update(piece).digest('hex')
      if (got !== m.image.chunks[index]) {
        throw new LabhostError(
          'hashMismatch',
          `chunk ${index} (bytes ${at}-${at + filled - 1}) of ${source.where} does not match the signed manifest (sha256 ${got.slice(0, 16)}… vs ${m.image.chunks[index]!.slice(0, 16)}…)`,
          'the published file is damaged or was replaced: publish it again, or pull from another source; nothing was installed',
        )
      }
      whole.update(piece)
      for (let done = 0; done < filled;) done += fs.writeSync(fd, piece, done, filled - done, at + done)
      at += filled
      index++
      filled = 0
      o.progress?.(at, m.image.size)
    }
    for await (const data of source.read(resumed)) {
      let off = 0
      while (off < data.length) {
        const want = vmChunkLength(m, index) - filled
        const n = Math.min(want, data.length - off)
        data.copy(chunk, filled, off, off + n)
        filled += n
        off += n
        if (filled === vmChunkLength(m, index)) complete()
        if (at === m.image.size && off < data.length) break
      }
    }
    if (at !== m.image.size) {
      throw new LabhostError(
        'downloadFailed',
        `${source.where} ended at byte ${at + filled} of ${m.image.size}`,
        'the published file is truncated: publish it again; nothing was installed',
      )
    }
    const sha = whole.digest('hex')
    if (sha !== m.image.sha256) {
      throw new LabhostError(
        'hashMismatch',
        `${source.where}: every chunk matched, but the whole file's SHA-256 ${sha.slice(0, 16)}… is not the signed ${m.image.sha256.slice(0, 16)}…`,
        'the manifest is inconsistent: publish the base again; nothing was installed',
      )
    }
    fs.fsyncSync(fd)
    return { method: 'http', resumedBytes: resumed, downloadedBytes: m.image.size - resumed, seconds: (Date.now() - started) / 1000 }
  } finally {
    fs.closeSync(fd)
  }
}

// Writing a signed image into a byte range of a disk (a root slot): decompress the transport
// stream as it arrives, check every chunk against the signed manifest before it is written, write
// it with O_DIRECT while the next chunks arrive, make all-zero chunks read as zeros without sending
// them (lib/direct-io.ts), fdatasync, then read the range back from the device with O_DIRECT and
// compare again. Used by `labhost update` (inactive slot) and `labhost install` (slot A).
import crypto from 'node:crypto'
import fs from 'node:fs'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { execa } from 'execa'
import { alignedBuffers, DIRECT_ALIGN, DirectFile, readUpTo, roundUp } from '../lib/direct-io.ts'
import { LabhostError } from '../lib/errors.ts'
import { HashPool } from '../lib/hash-pool.ts'
import type { Progress } from '../lib/progress.ts'
import type { Manifest } from '../image-build/manifest.ts'
import type { UpdateSource } from './source.ts'

export interface ImageTarget {
  disk: string
  firstByte: number
  /** For messages: "slot B". */
  name: string
}

/** Chunk buffers of the writer: one filling, the others queued for or in O_DIRECT writes. */
const WRITE_BUFFERS = 8
/** Reads the verifier keeps in flight ahead of the chunk it is hashing. */
const READ_AHEAD = 8

function chunkMismatch(manifest: Manifest, index: number, what: string): LabhostError {
  return new LabhostError('hashMismatch', `${what}: chunk ${index} (bytes ${index * manifest.image.chunkSize}..) does not match the signed manifest`,
    'the download or the disk corrupted the image: run it again (only the target slot was written, nothing was switched)')
}

/**
 * Chunk checks against the manifest. A chunk whose signed hash is that of zeros is checked by
 * comparing it with zeros (the same verdict, without hashing), and the writer need not send it.
 */
class ChunkChecker {
  readonly manifest: Manifest
  readonly zeros: Buffer
  private zeroHashes = new Map<number, string>()
  private hashes = new HashPool()

  constructor(manifest: Manifest, zeros: Buffer) {
    this.manifest = manifest
    this.zeros = zeros
  }

  close(): Promise<void> {
    return this.hashes.close()
  }

  length(index: number): number {
    const { size, chunkSize } = this.manifest.image
    return Math.min(chunkSize, size - index * chunkSize)
  }

  isZero(index: number): boolean {
    const n = this.length(index)
    if (!this.zeroHashes.has(n)) this.zeroHashes.set(n, crypto.createHash('sha256').update(this.zeros.subarray(0, n)).digest('hex'))
    return this.manifest.image.chunks[index] === this.zeroHashes.get(n)
  }

  async matches(index: number, data: Buffer): Promise<boolean> {
    return this.isZero(index) ? data.equals(this.zeros.subarray(0, data.length)) : await this.hashes.sha256(data) === this.manifest.image.chunks[index]
  }
}

/** Buffers handed out and given back; a waiter is woken by a returned buffer or a failure. */
class BufferPool {
  private free: Buffer[]
  private wake: (() => void) | null = null
  failure: unknown = null

  constructor(buffers: Buffer[]) {
    this.free = buffers
  }

  async take(): Promise<Buffer> {
    while (!this.free.length && !this.failure) await new Promise<void>((resolve) => { this.wake = resolve })
    if (this.failure) throw this.failure
    return this.free.pop()!
  }

  give(buf: Buffer): void {
    this.free.push(buf)
    this.signal()
  }

  fail(e: unknown): void {
    this.failure ??= e
    this.signal()
  }

  private signal(): void {
    const w = this.wake
    this.wake = null
    w?.()
  }
}

export interface WriteStats {
  /** Image bytes sent to the disk as data. */
  dataBytes: number
  /** All-zero chunks the kernel zeroed on the disk (no data sent). */
  kernelZeroedBytes: number
  /** All-zero chunks written as zeros (short runs, or no BLKZEROOUT). */
  writtenZeroBytes: number
}

/**
 * Decompress the transport stream (a local file or a download in progress) into the target
 * range, checking every chunk against the signed manifest before it is written.
 */
export async function writeImage(target: ImageTarget, manifest: Manifest, source: UpdateSource, progress?: Progress): Promise<WriteStats> {
  const { chunkSize: size, size: total, chunks } = manifest.image
  const file = DirectFile.open(target.disk, 'write')
  const buffers = alignedBuffers(WRITE_BUFFERS + 1, roundUp(size, DIRECT_ALIGN))
  const checker = new ChunkChecker(manifest, buffers.pop()!)
  const pool = new BufferPool(buffers)
  const block = alignedBuffers(1, DIRECT_ALIGN)[0]!
  const writes = new Set<Promise<void>>()
  const zeroRuns: { at: number; length: number }[] = []
  let received = 0
  let written = 0
  // Chunks hash concurrently, but each is written only after every chunk before it matched:
  // a bad chunk stops the writer with nothing after it on the disk.
  let inOrder = Promise.resolve()

  // One full chunk (or the image's shorter tail) is in `buf`: start its hash; once it and all
  // chunks before it match, write it (or note it as zeros). The buffer returns to the pool after.
  const place = (buf: Buffer, length: number) => {
    const index = received / size
    if (index >= chunks.length || length > checker.length(index)) {
      pool.give(buf)
      throw new LabhostError('hashMismatch', 'the image is longer than its manifest says', 'the transport file was replaced: fetch it again')
    }
    // a stream that ends short of its last chunk: reported as truncated by the caller
    if (length < checker.length(index)) return pool.give(buf)
    received += length
    const at = target.firstByte + index * size
    const matches = checker.matches(index, buf.subarray(0, length))
    matches.catch(() => {}) // a failed hash is reported where it is awaited, below
    inOrder = inOrder.then(async () => {
      if (pool.failure) return pool.give(buf)
      if (!await matches) {
        pool.give(buf)
        throw chunkMismatch(manifest, index, 'while writing')
      }
      written += length
      progress?.(written, total)
      if (checker.isZero(index) && length % DIRECT_ALIGN === 0) {
        pool.give(buf)
        const last = zeroRuns.at(-1)
        if (last && last.at + last.length === at) last.length += length
        else zeroRuns.push({ at, length })
        return
      }
      let span = length
      if (file.direct && length % DIRECT_ALIGN) {
        // O_DIRECT moves whole blocks: complete the image's last block with what the disk holds
        const whole = length - (length % DIRECT_ALIGN)
        await file.read(block, DIRECT_ALIGN, at + whole)
        block.copy(buf, length, length - whole, DIRECT_ALIGN)
        span = whole + DIRECT_ALIGN
      }
      const w: Promise<void> = file.write(buf, span, at).catch((e) => pool.fail(e)).finally(() => {
        writes.delete(w)
        pool.give(buf)
      })
      writes.add(w)
    }).catch((e) => pool.fail(e))
  }
  const settle = async () => {
    await inOrder
    await Promise.all(writes)
  }

  // A local raw image is read chunk by chunk into the buffers themselves.
  const readRaw = async (file: string) => {
    const fd = fs.openSync(file, 'r')
    try {
      for (let index = 0; index < chunks.length; index++) {
        const b = await pool.take()
        const n = await readUpTo(fd, b, checker.length(index), index * size).catch((e) => {
          pool.give(b)
          throw new LabhostError('io', `reading ${file} failed: ${(e as Error).message}`, 'check the image file; only the target slot was written, nothing was switched')
        })
        place(b, n)
        if (n < checker.length(index)) break
      }
    } finally {
      fs.closeSync(fd)
    }
  }
  // zstd decompresses a compressed stream; a raw image is read as it is.
  const zstd = source.compressed ? execa('zstd', ['-dc'], { buffer: false, encoding: 'buffer', reject: false, stdin: 'pipe', stderr: 'pipe' }) : null
  let feedError: unknown
  const feed = zstd ? pipeline(Readable.from(source.transport()), zstd.stdin!).catch((e) => {
    feedError = e
    zstd.kill()
  }) : Promise.resolve()
  let buf: Buffer | null = null
  let filled = 0
  let streamed = false
  try {
    try {
      if (source.rawImageFile) await readRaw(source.rawImageFile)
      else for await (const data of zstd ? zstd.stdout! : source.transport()) {
        const piece = data as Buffer
        for (let from = 0; from < piece.length;) {
          buf ??= await pool.take()
          const n = Math.min(size - filled, piece.length - from)
          piece.copy(buf, filled, from, from + n)
          filled += n
          from += n
          if (filled === size) {
            const full = buf
            buf = null
            filled = 0
            place(full, size)
          }
        }
      }
      streamed = true
    } finally {
      // stop the decompressor when this ends early; never when it is finishing by itself
      if (!streamed) zstd?.kill()
      await Promise.all([feed, zstd])
    }
    const r = zstd ? await zstd : { exitCode: 0, stderr: '' }
    if (r.exitCode === 0 && buf && filled) place(buf, filled)
    await settle()
    // A failed download explains a short zstd stream better than zstd's own complaint.
    if (feedError) throw feedError
    if (pool.failure) throw pool.failure
    if (r.exitCode !== 0 || written !== total) {
      throw new LabhostError('hashMismatch', `the transport file ends early: ${written} of ${total} bytes (${String(r.stderr ?? '').trim().split('\n').pop()})`,
        'the download is truncated: run it again (only the target slot was written, nothing was switched)')
    }
    const stats = { dataBytes: total, kernelZeroedBytes: 0, writtenZeroBytes: 0 }
    for (const run of zeroRuns) {
      stats.dataBytes -= run.length
      if (await file.zero(run.at, run.length, checker.zeros) === 'kernel') stats.kernelZeroedBytes += run.length
      else stats.writtenZeroBytes += run.length
    }
    await file.sync()
    return stats
  } finally {
    await settle()
    file.close()
    await checker.close()
  }
}

/**
 * Read the slot back from the device, bypassing the page cache, and compare chunk by chunk
 * (READ_AHEAD readers, each reading and hashing every READ_AHEAD-th chunk). Reports the first bad
 * chunk: after a mismatch, only chunks before it are still checked.
 */
export async function verifyImage(target: ImageTarget, manifest: Manifest, progress?: Progress): Promise<void> {
  const { chunkSize: size, size: total, chunks } = manifest.image
  const file = DirectFile.open(target.disk, 'read')
  const buffers = alignedBuffers(READ_AHEAD + 1, roundUp(size, DIRECT_ALIGN))
  const checker = new ChunkChecker(manifest, buffers.pop()!)
  let firstBad = Infinity
  let checked = 0
  const reader = async (buf: Buffer, first: number) => {
    for (let i = first; i < chunks.length && i < firstBad; i += buffers.length) {
      const length = checker.length(i)
      await file.read(buf, file.direct ? roundUp(length, DIRECT_ALIGN) : length, target.firstByte + i * size)
      if (!await checker.matches(i, buf.subarray(0, length))) firstBad = Math.min(firstBad, i)
      checked++
      progress?.(Math.min(checked * size, total), total)
    }
  }
  try {
    // Without O_DIRECT the page cache would answer: drop the device's cached pages first.
    if (!file.direct && file.isBlockDevice) await execa('blockdev', ['--flushbufs', target.disk])
    const results = await Promise.allSettled(buffers.map((buf, k) => reader(buf, k)))
    for (const r of results) if (r.status === 'rejected') throw r.reason
  } finally {
    file.close()
    await checker.close()
  }
  if (firstBad < chunks.length) throw chunkMismatch(manifest, firstBad, `reading ${target.name} back from ${target.disk}`)
}

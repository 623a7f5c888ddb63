// Writing a signed image into a byte range of a disk (a root slot): decompress the transport
// stream as it arrives, write it with O_DIRECT while the next chunks arrive, read each written
// chunk back from the device (O_DIRECT: no cache answers) and compare its SHA-256 with the signed
// manifest while later chunks are written, make the chunks the manifest says are zeros read as
// zeros without sending them (lib/direct-io.ts), fdatasync, then read back what was not read yet
// (the zeroed chunks; everything where the target has no O_DIRECT, after dropping the cache).
// Every byte is judged once, from the disk. Used by `labhost update` (inactive slot) and
// `labhost install` (slot A).
import crypto from 'node:crypto'
import fs from 'node:fs'
import { alignedBuffers, DIRECT_ALIGN, DirectFile, readUpTo, roundUp } from '../lib/direct-io.ts'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { fault } from '../lib/faults.ts'
import { ZstdReader, type ZstdVerdict } from '../lib/zstd-reader.ts'
import { HashPool } from '../lib/hash-pool.ts'
import type { Progress } from '../lib/progress.ts'
import { chunkLength, type Manifest } from './manifest.ts'
import { downloadTransport, unhandledKind, type UpdateSource } from './source.ts'

export interface ImageTarget {
  disk: string
  firstByte: number
  /** For messages: "slot B". */
  name: string
}

/** What the writer reads, one reader each: a raw image file, zstd (a file or a stream), a raw stream. */
export type ImageInput =
  | { readonly kind: 'raw-file'; readonly file: string }
  | { readonly kind: 'zstd'; readonly from: string | AsyncIterable<Buffer> }
  | { readonly kind: 'raw-stream'; readonly stream: AsyncIterable<Buffer> }

/** How the writer reads each kind of source. */
export function imageInput(source: UpdateSource): ImageInput {
  switch (source.kind) {
    case 'local-raw': return { kind: 'raw-file', file: source.file }
    case 'local-zstd': case 'torrent': return { kind: 'zstd', from: source.file }
    case 'http': return { kind: 'zstd', from: downloadTransport(source) }
    case 'delta': return { kind: 'raw-stream', stream: source.chunks() }
    default: return unhandledKind(source)
  }
}

/** Chunk buffers of the writer: one filling, the others queued for or in O_DIRECT writes. */
const WRITE_BUFFERS = 8
/** Reads the verifier keeps in flight ahead of the chunk it is hashing. */
const READ_AHEAD = 8
/** Read-backs the writer keeps in flight behind its writes. */
const WRITE_READ_BACKS = 4

function chunkMismatch(manifest: Manifest, index: number, what: string): LabhostError {
  return new LabhostError('hashMismatch', `${what}: chunk ${index} (bytes ${index * manifest.image.chunkSize}..) does not match the signed manifest`,
    'the download or the disk corrupted the image: run it again (only the target slot was written, nothing was switched)')
}

const zeroHashes = new Map<number, string>()

/** SHA-256 of `length` zero bytes: the signed hash of an all-zero chunk. */
export function zeroChunkHash(length: number): string {
  let h = zeroHashes.get(length)
  if (!h) zeroHashes.set(length, h = crypto.createHash('sha256').update(Buffer.alloc(length)).digest('hex'))
  return h
}

/**
 * Chunk checks against the manifest. A chunk whose signed hash is that of zeros is checked by
 * comparing it with zeros (the same verdict, without hashing), and the writer need not send it.
 */
class ChunkChecker {
  readonly manifest: Manifest
  readonly zeros: Buffer
  /** Started at the first hash: a writer that reads nothing back needs no workers. */
  private hashes: HashPool | null = null

  constructor(manifest: Manifest, zeros: Buffer) {
    this.manifest = manifest
    this.zeros = zeros
  }

  async close(): Promise<void> {
    await this.hashes?.close()
  }

  length(index: number): number {
    return chunkLength(this.manifest, index)
  }

  isZero(index: number): boolean {
    return this.manifest.image.chunks[index] === zeroChunkHash(this.length(index))
  }

  async matches(index: number, data: Buffer): Promise<boolean> {
    if (this.isZero(index)) return data.equals(this.zeros.subarray(0, data.length))
    this.hashes ??= new HashPool()
    return await this.hashes.sha256(data) === this.manifest.image.chunks[index]
  }
}

/** Buffers handed out and given back; waiters are woken in turn by returned buffers, all by a failure. */
class BufferPool {
  private free: Buffer[]
  private waiters: (() => void)[] = []
  failure: unknown = null

  constructor(buffers: Buffer[]) {
    this.free = buffers
  }

  async take(): Promise<Buffer> {
    while (!this.free.length && !this.failure) await new Promise<void>((resolve) => this.waiters.push(resolve))
    if (this.failure) throw this.failure
    return this.free.pop()!
  }

  give(buf: Buffer): void {
    this.free.push(buf)
    this.waiters.shift()?.()
  }

  fail(e: unknown): void {
    this.failure ??= e
    for (const w of this.waiters.splice(0)) w()
  }
}

/** A test seam: called before the bytes of chunk `index` (at byte `at` of the disk) are read back. */
export type BeforeReadBack = (index: number, at: number, length: number) => Promise<void> | void

export interface WriteOptions {
  progress?: Progress
  /**
   * Read every chunk back from the device as soon as its O_DIRECT write completed, and compare it
   * with the manifest (while later chunks are written). WriteResult.readBack names the chunks so
   * checked; verifyImage checks the rest. Without O_DIRECT nothing is read back here.
   */
  readBack?: boolean
  beforeReadBack?: BeforeReadBack
}

export interface WriteResult {
  stats: WriteStats
  /** Chunks already read back from the device and found matching. */
  readBack: Set<number>
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
 * range. Chunks the manifest says are zeros are compared with zeros before they are zeroed; the
 * others are hashed when they are read back (here with `readBack`, else by verifyImage).
 */
export async function writeImage(target: ImageTarget, manifest: Manifest, input: ImageInput, o: WriteOptions = {}): Promise<WriteResult> {
  const { progress } = o
  const { chunkSize: size, size: total, chunks } = manifest.image
  const file = DirectFile.open(target.disk, 'write')
  const readBack = (o.readBack ?? false) && file.direct
  const buffers = alignedBuffers(WRITE_BUFFERS + 1 + (readBack ? WRITE_READ_BACKS : 0), roundUp(size, DIRECT_ALIGN))
  const checker = new ChunkChecker(manifest, buffers.pop()!)
  const readPool = new BufferPool(buffers.splice(WRITE_BUFFERS))
  const pool = new BufferPool(buffers)
  const block = alignedBuffers(1, DIRECT_ALIGN)[0]!
  const writes = new Set<Promise<void>>()
  const readBacks = new Set<Promise<void>>()
  const checked = new Set<number>()
  let firstBad = Infinity
  // Read chunk `index` back (its write has completed) and compare it with the manifest. Chunks
  // written before a bad one are still read back, so the first bad chunk is the one reported.
  const readBackChunk = (index: number, at: number, length: number) => {
    const r: Promise<void> = (async () => {
      const b = await readPool.take()
      try {
        await o.beforeReadBack?.(index, at, length)
        await file.read(b, roundUp(length, DIRECT_ALIGN), at)
        if (await checker.matches(index, b.subarray(0, length))) checked.add(index)
        else {
          firstBad = Math.min(firstBad, index)
          pool.fail(chunkMismatch(manifest, index, `reading ${target.name} back from ${target.disk}`))
        }
      } finally {
        readPool.give(b)
      }
    })().catch((e) => pool.fail(e)).finally(() => readBacks.delete(r))
    readBacks.add(r)
  }
  const zeroRuns: { at: number; length: number }[] = []
  let received = 0
  let written = 0
  // Chunks are written in stream order, several in flight; each is read back and hashed once its
  // write completed. A chunk that does not match stops the writer (the target slot is not bootable
  // until the switch, which comes only after every chunk matched from the disk).
  let inOrder = Promise.resolve()

  // One full chunk (or the image's shorter tail) is in `buf`: write it (or note it as zeros), then
  // read it back. The buffer returns to the pool when its write completed.
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
    inOrder = inOrder.then(async () => {
      if (pool.failure) return pool.give(buf)
      // a chunk the manifest says is zeros is compared with zeros here and zeroed at the end;
      // every other chunk is hashed once, when it is read back from the disk
      if (checker.isZero(index)) {
        if (!buf.subarray(0, length).equals(checker.zeros.subarray(0, length))) {
          pool.give(buf)
          throw chunkMismatch(manifest, index, 'while writing')
        }
        if (length % DIRECT_ALIGN === 0) {
          pool.give(buf)
          written += length
          progress?.(written, total)
          const last = zeroRuns.at(-1)
          if (last && last.at + last.length === at) last.length += length
          else zeroRuns.push({ at, length })
          return
        }
      }
      let span = length
      if (file.direct && length % DIRECT_ALIGN) {
        // O_DIRECT moves whole blocks: complete the image's last block with what the disk holds
        const whole = length - (length % DIRECT_ALIGN)
        await file.read(block, DIRECT_ALIGN, at + whole)
        block.copy(buf, length, length - whole, DIRECT_ALIGN)
        span = whole + DIRECT_ALIGN
      }
      const w: Promise<void> = file.write(buf, span, at).then(() => {
        written += length
        progress?.(written, total)
        if (readBack) readBackChunk(index, at, length)
      }, (e) => pool.fail(e)).finally(() => {
        writes.delete(w)
        pool.give(buf)
      })
      writes.add(w)
    }).catch((e) => pool.fail(e))
  }
  const settle = async () => {
    await inOrder
    await Promise.all(writes)
    await Promise.all(readBacks)
  }

  // Chunk by chunk into the buffers themselves: `fill` reads up to `length` bytes of chunk `index`
  // (fewer only where the input ends). One byte past the last chunk tells an input that is longer.
  const readChunks = async (fill: (buf: Buffer, index: number, length: number) => Promise<number>) => {
    for (let index = 0; ; index++) {
      const length = index < chunks.length ? checker.length(index) : 1
      const b = await pool.take()
      const n = await fill(b, index, length).catch((e) => {
        pool.give(b)
        throw e
      })
      if (n === 0) return pool.give(b)
      place(b, n)
      if (n < length) return
    }
  }
  // A local raw image is read as it is; a compressed stream through zstd (lib/zstd-reader.ts).
  const readRaw = async (file: string) => {
    const fd = fs.openSync(file, 'r')
    try {
      await readChunks((b, index, length) => readUpTo(fd, b, length, index * size).catch((e) => {
        throw new LabhostError('io', `reading ${file} failed: ${(e as Error).message}`, 'check the image file; only the target slot was written, nothing was switched', {}, { cause: e })
      }))
    } finally {
      fs.closeSync(fd)
    }
  }
  const readZstd = (z: ZstdReader) => readChunks(async (b, _index, length) => {
    let n = 0
    for (let r; n < length && (r = await z.read(b, n, length - n)); n += r);
    return n
  })
  let zstd: ZstdReader | null = null
  let verdict: ZstdVerdict = { ok: true, message: '' }
  let buf: Buffer | null = null
  let filled = 0
  try {
    let finished = false
    try {
      switch (input.kind) {
        case 'raw-file': await readRaw(input.file); break
        case 'zstd': await readZstd(zstd = await ZstdReader.open(input.from)); break
        case 'raw-stream': for await (const piece of input.stream) {
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
          break
        default: unhandledKind(input)
      }
      finished = true
    } finally {
      // stop zstd when this ends early; never when it is finishing by itself
      if (zstd) verdict = await zstd.finish(!finished)
    }
    if (buf && filled) place(buf, filled)
    await settle()
    // A failed download explains a short zstd stream better than zstd's own complaint.
    if (verdict.inputError) throw verdict.inputError
    if (pool.failure) throw pool.failure
    // zstd names a cut input "premature end"; any other complaint is about the bytes themselves
    if (!verdict.ok && verdict.error && !/premature end|truncated/i.test(verdict.message)) {
      if (verdict.error.details.notInstalled) throw verdict.error
      throw new LabhostError('hashMismatch', `the transport file is not a good zstd stream after ${written} of ${total} bytes (zstd: ${verdict.message})`,
        'the download or the copy corrupted it: fetch it again (only the target slot was written, nothing was switched)', {}, { cause: verdict.error })
    }
    if (!verdict.ok || written !== total) {
      throw new LabhostError('imageTruncated', `the transport file ends early: ${written} of ${total} bytes (${verdict.ok ? 'the stream ended' : `zstd: ${verdict.message}`})`,
        'the download or the copy is cut short: fetch it again (only the target slot was written, nothing was switched)', {}, { cause: verdict.error })
    }
    const stats = { dataBytes: total, kernelZeroedBytes: 0, writtenZeroBytes: 0 }
    for (const run of zeroRuns) {
      stats.dataBytes -= run.length
      if (await file.zero(run.at, run.length, checker.zeros) === 'kernel') stats.kernelZeroedBytes += run.length
      else stats.writtenZeroBytes += run.length
    }
    await file.sync()
    return { stats, readBack: checked }
  } catch (e) {
    // a chunk that did not read back right is the first thing to report, whatever stopped the writer
    await settle()
    throw firstBad < chunks.length ? chunkMismatch(manifest, firstBad, `reading ${target.name} back from ${target.disk}`) : e
  } finally {
    await settle()
    file.close()
    await checker.close()
  }
}

export interface VerifyOptions {
  progress?: Progress
  /** Chunks already read back and found matching (WriteResult.readBack): not read again. */
  skip?: Set<number>
  beforeReadBack?: BeforeReadBack
}

/**
 * Read the slot back from the device, bypassing the page cache, and compare chunk by chunk
 * (READ_AHEAD readers, each reading and hashing every READ_AHEAD-th chunk to check). Reports the
 * first bad chunk: after a mismatch, only chunks before it are still checked.
 */
export async function verifyImage(target: ImageTarget, manifest: Manifest, o: VerifyOptions = {}): Promise<void> {
  // fault injection (test builds only): the mutant that trusts what it wrote
  if (fault('SKIP_READBACK') === '1') return
  const { progress, skip = new Set<number>() } = o
  const { chunkSize: size, size: total, chunks } = manifest.image
  const file = DirectFile.open(target.disk, 'read')
  const buffers = alignedBuffers(READ_AHEAD + 1, roundUp(size, DIRECT_ALIGN))
  const checker = new ChunkChecker(manifest, buffers.pop()!)
  const todo = chunks.map((_, i) => i).filter((i) => !skip.has(i))
  let firstBad = Infinity
  let checked = chunks.length - todo.length
  const reader = async (buf: Buffer, first: number) => {
    for (let k = first; k < todo.length && todo[k]! < firstBad; k += buffers.length) {
      const i = todo[k]!
      const length = checker.length(i)
      await o.beforeReadBack?.(i, target.firstByte + i * size, length)
      await file.read(buf, file.direct ? roundUp(length, DIRECT_ALIGN) : length, target.firstByte + i * size)
      if (!await checker.matches(i, buf.subarray(0, length))) firstBad = Math.min(firstBad, i)
      checked++
      progress?.(Math.min(checked * size, total), total)
    }
  }
  try {
    // Without O_DIRECT the page cache would answer: drop the device's cached pages first.
    if (!file.direct && file.isBlockDevice) await run('blockdev', ['--flushbufs', target.disk])
    const results = await Promise.allSettled(buffers.map((buf, k) => reader(buf, k)))
    for (const r of results) if (r.status === 'rejected') throw r.reason
  } finally {
    file.close()
    await checker.close()
  }
  if (firstBad < chunks.length) throw chunkMismatch(manifest, firstBad, `reading ${target.name} back from ${target.disk}`)
}

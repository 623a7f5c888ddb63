// Writing a signed image into a byte range of a disk (a root slot): decompress the transport
// stream as it arrives, write it with O_DIRECT while the next chunks arrive, read each written
// chunk back from the device (O_DIRECT: no cache answers) and compare its SHA-256 with the signed
// manifest while later chunks are written, make the chunks the manifest says are zeros read as
// zeros without sending them (lib/direct-io.ts), fdatasync, then read back what was not read yet
// (the zeroed chunks; everything where the target has no O_DIRECT, after dropping the cache).
// Every byte is judged once, from the disk. Used by `labhost update` (inactive slot) and
// `labhost install` (slot A).
import crypto from 'node:crypto'
import { alignedBuffers, DIRECT_ALIGN, DirectFile, roundUp } from '../lib/direct-io.ts'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { fault } from '../lib/faults.ts'
import { ZstdReader, type ZstdVerdict } from '../lib/zstd-reader.ts'
import { WorkerPool } from '../lib/worker-pool.ts'
import type { Progress } from '../lib/progress.ts'
import { chunkLength, type Manifest } from './manifest.ts'
import { downloadTransport, unhandledKind, type UpdateSource } from './source.ts'
import { FrameError, framedZstdChunks, rawFileChunks, rawStreamChunks, zstdChunks, type FilledChunk } from './image-readers.ts'

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
    case 'local-raw':
      return { kind: 'raw-file', file: source.file }
    case 'local-zstd':
    case 'torrent':
      return { kind: 'zstd', from: source.file }
    case 'http':
      return { kind: 'zstd', from: downloadTransport(source) }
    case 'delta':
      return { kind: 'raw-stream', stream: source.chunks() }
    default:
      return unhandledKind(source)
  }
}

/** Chunk buffers of the writer: one filling, the others queued for or in O_DIRECT writes. */
const WRITE_BUFFERS = 12
/** Reads the verifier keeps in flight ahead of the chunk it is hashing. */
const READ_AHEAD = 8
/** Read-backs the writer keeps in flight behind its writes. */
const WRITE_READ_BACKS = 4

function chunkMismatch(manifest: Manifest, index: number, what: string): LabhostError {
  return new LabhostError(
    'hashMismatch',
    `${what}: chunk ${index} (bytes ${index * manifest.image.chunkSize}..) does not match the signed manifest`,
    'the download or the disk corrupted the image: run it again (only the target slot was written, nothing was switched)',
  )
}

const zeroHashes = new Map<number, string>()

/** SHA-256 of `length` zero bytes: the signed hash of an all-zero chunk. */
export function zeroChunkHash(length: number): string {
  let h = zeroHashes.get(length)
  if (!h) zeroHashes.set(length, (h = crypto.createHash('sha256').update(Buffer.alloc(length)).digest('hex')))
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
  private hashes: WorkerPool | null = null

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
    this.hashes ??= new WorkerPool()
    return (await this.hashes.sha256(data)) === this.manifest.image.chunks[index]
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
 * A pipeline of stages: a reader per input kind fills the writer's buffers (readInput), the
 * writer writes them in order and reads them back (SlotWriter), the input's end is judged
 * (checkWholeImage), the last zero run is zeroed and the disk synced (SlotWriter.finish).
 */
export async function writeImage(target: ImageTarget, manifest: Manifest, input: ImageInput, o: WriteOptions = {}): Promise<WriteResult> {
  const writer = new SlotWriter(target, manifest, o)
  try {
    const verdict = await readInput(input, manifest, writer)
    await writer.settle()
    checkWholeImage(verdict, writer.buffers.failure, writer.written, manifest.image.size)
    return { stats: await writer.finish(), readBack: writer.checked }
  } catch (e) {
    // a chunk that did not read back right is the first thing to report, whatever stopped the writer
    await writer.settle()
    throw writer.firstMismatch() ?? e
  } finally {
    await writer.close()
  }
}

/** Stage 1, the readers (image-readers.ts): every chunk of the input into the writer; zstd's verdict on its stream. */
async function readInput(input: ImageInput, manifest: Manifest, writer: SlotWriter): Promise<ZstdVerdict> {
  switch (input.kind) {
    case 'raw-file':
      await writer.placeAll(rawFileChunks(input.file, manifest, writer.buffers))
      return { ok: true, message: '' }
    case 'zstd':
      return manifest.transport?.frames ? await readFramedZstd(input.from, manifest, writer) : await readZstd(input.from, manifest, writer)
    case 'raw-stream':
      await writer.placeAll(rawStreamChunks(input.stream, manifest, writer.buffers))
      return { ok: true, message: '' }
    default:
      return unhandledKind(input)
  }
}

/** A compressed stream through zstd (lib/zstd-reader.ts), which says at the end whether the stream was whole. */
async function readZstd(from: string | AsyncIterable<Buffer>, manifest: Manifest, writer: SlotWriter): Promise<ZstdVerdict> {
  const zstd = await ZstdReader.open(from)
  let finished = false
  let verdict: ZstdVerdict
  try {
    await writer.placeAll(zstdChunks(zstd, manifest, writer.buffers))
    finished = true
  } finally {
    // stop zstd when this ends early; never when it is finishing by itself
    verdict = await zstd.finish(!finished)
  }
  return verdict
}

/**
 * A transport file of independent frames (their sizes in the manifest): decompressed in worker
 * threads, several frames at once (image-readers.ts). Its verdict in zstd's terms: an input that
 * ends early is a premature end, a frame that does not decompress is a damaged stream.
 */
async function readFramedZstd(from: string | AsyncIterable<Buffer>, manifest: Manifest, writer: SlotWriter): Promise<ZstdVerdict> {
  const pool = new WorkerPool()
  try {
    await writer.placeAll(framedZstdChunks(from, manifest, writer.buffers, pool))
    return { ok: true, message: '' }
  } catch (e) {
    if (!(e instanceof FrameError)) throw e
    if (e.truncated) return { ok: false, message: e.message }
    return { ok: false, message: e.message, error: new LabhostError('hashMismatch', e.message, 'fetch the transport file again') }
  } finally {
    await pool.close()
  }
}

/**
 * Stage 3, once every write and read-back settled: the input must have been the whole image.
 * Throws what explains a shortfall best, in this order.
 */
function checkWholeImage(verdict: ZstdVerdict, failure: unknown, written: number, total: number): void {
  // A failed download explains a short zstd stream better than zstd's own complaint.
  if (verdict.inputError) throw verdict.inputError
  if (failure) throw failure
  // zstd names a cut input "premature end"; any other complaint is about the bytes themselves
  if (!verdict.ok && verdict.error && !/premature end|truncated/i.test(verdict.message)) {
    if (verdict.error.details.notInstalled) throw verdict.error
    throw new LabhostError(
      'hashMismatch',
      `the transport file is not a good zstd stream after ${written} of ${total} bytes (zstd: ${verdict.message})`,
      'the download or the copy corrupted it: fetch it again (only the target slot was written, nothing was switched)',
      {},
      { cause: verdict.error },
    )
  }
  if (!verdict.ok || written !== total) {
    throw new LabhostError(
      'imageTruncated',
      `the transport file ends early: ${written} of ${total} bytes (${verdict.ok ? 'the stream ended' : `zstd: ${verdict.message}`})`,
      'the download or the copy is cut short: fetch it again (only the target slot was written, nothing was switched)',
      {},
      { cause: verdict.error },
    )
  }
}

/**
 * Stage 2, the writer: chunks in stream order into the target range with O_DIRECT, several writes
 * in flight; each chunk read back and hashed once its write completed (with `readBack`). A chunk
 * that does not match stops the writer (the target slot is not bootable until the switch, which
 * comes only after every chunk matched from the disk). Chunks due to be zeros are not sent: each
 * run of them is zeroed once the stream has passed it, beside the writes of later chunks.
 */
class SlotWriter {
  private readonly target: ImageTarget
  private readonly manifest: Manifest
  private readonly o: WriteOptions
  private readonly file: DirectFile
  private readonly readBack: boolean
  private readonly checker: ChunkChecker
  /** The buffers the readers fill; a failure here stops the readers and the writer. */
  readonly buffers: BufferPool
  private readonly readBuffers: BufferPool
  /** One block, to complete the image's last block from the disk. */
  private readonly block: Buffer
  private readonly writes = new Set<Promise<void>>()
  private readonly readBacks = new Set<Promise<void>>()
  /** Chunks read back from the device and found matching. */
  readonly checked = new Set<number>()
  private firstBad = Infinity
  /** The run of checked zero chunks the stream is in, zeroed when the stream leaves it (or ends). */
  private zeroRun: { at: number; length: number } | null = null
  /** The zeroing of the runs passed, one run at a time (a sparse image has many), beside the writes. */
  private zeroings: Promise<void> = Promise.resolve()
  private readonly zeroStats = { kernelZeroedBytes: 0, writtenZeroBytes: 0 }
  private received = 0
  /** Image bytes written, or checked as zeros and due to be zeroed. */
  written = 0
  private inOrder = Promise.resolve()

  constructor(target: ImageTarget, manifest: Manifest, o: WriteOptions) {
    this.target = target
    this.manifest = manifest
    this.o = o
    this.file = DirectFile.open(target.disk, 'write')
    this.readBack = (o.readBack ?? false) && this.file.direct
    const buffers = alignedBuffers(WRITE_BUFFERS + 1 + (this.readBack ? WRITE_READ_BACKS : 0), roundUp(manifest.image.chunkSize, DIRECT_ALIGN))
    this.checker = new ChunkChecker(manifest, buffers.pop()!)
    this.readBuffers = new BufferPool(buffers.splice(WRITE_BUFFERS))
    this.buffers = new BufferPool(buffers)
    this.block = alignedBuffers(1, DIRECT_ALIGN)[0]!
  }

  /** Every chunk a reader yields, placed as it comes. */
  async placeAll(chunks: AsyncIterable<FilledChunk>): Promise<void> {
    for await (const { buf, length } of chunks) this.place(buf, length)
  }

  /** One full chunk (or the image's shorter tail) is in `buf`: queue it for writing in stream order. */
  private place(buf: Buffer, length: number): void {
    const { chunkSize: size, chunks } = this.manifest.image
    const index = this.received / size
    if (index >= chunks.length || length > this.checker.length(index)) {
      this.buffers.give(buf)
      throw new LabhostError('hashMismatch', 'the image is longer than its manifest says', 'the transport file was replaced: fetch it again')
    }
    // a stream that ends short of its last chunk: reported as truncated by checkWholeImage
    if (length < this.checker.length(index)) return this.buffers.give(buf)
    this.received += length
    const at = this.target.firstByte + index * size
    this.inOrder = this.inOrder.then(() => this.writeChunk(buf, index, at, length)).catch((e) => this.buffers.fail(e))
  }

  /** In stream order: note a chunk of zeros, or write the chunk (its buffer returns when the write completed). */
  private async writeChunk(buf: Buffer, index: number, at: number, length: number): Promise<void> {
    if (this.buffers.failure) return this.buffers.give(buf)
    // a chunk the manifest says is zeros is compared with zeros here and zeroed with its run;
    // every other chunk is hashed once, when it is read back from the disk
    if (this.checker.isZero(index)) {
      if (!buf.subarray(0, length).equals(this.checker.zeros.subarray(0, length))) {
        this.buffers.give(buf)
        throw chunkMismatch(this.manifest, index, 'while writing')
      }
      if (length % DIRECT_ALIGN === 0) return this.noteZeros(buf, at, length)
    }
    this.zeroRunEnded()
    const span = this.file.direct && length % DIRECT_ALIGN ? await this.completeLastBlock(buf, at, length) : length
    const w: Promise<void> = this.file
      .write(buf, span, at)
      .then(
        () => {
          this.advance(length)
          if (this.readBack) this.readBackChunk(index, at, length)
        },
        (e) => this.buffers.fail(e),
      )
      .finally(() => {
        this.writes.delete(w)
        this.buffers.give(buf)
      })
    this.writes.add(w)
  }

  /** A checked chunk of zeros joins the run it continues (zeroRunEnded zeroes the run). */
  private noteZeros(buf: Buffer, at: number, length: number): void {
    this.buffers.give(buf)
    this.advance(length)
    if (this.zeroRun && this.zeroRun.at + this.zeroRun.length === at) this.zeroRun.length += length
    else {
      this.zeroRunEnded()
      this.zeroRun = { at, length }
    }
  }

  /** The stream left a run of zero chunks: zero it (by the kernel where it can) beside the writes that follow. */
  private zeroRunEnded(): void {
    const run = this.zeroRun
    if (!run) return
    this.zeroRun = null
    this.zeroings = this.zeroings.then(() =>
      this.file.zero(run.at, run.length, this.checker.zeros).then(
        (how) => void (this.zeroStats[how === 'kernel' ? 'kernelZeroedBytes' : 'writtenZeroBytes'] += run.length),
        (e) => this.buffers.fail(e),
      ),
    )
  }

  /** O_DIRECT moves whole blocks: complete the image's last block with what the disk holds; the bytes to write. */
  private async completeLastBlock(buf: Buffer, at: number, length: number): Promise<number> {
    const whole = length - (length % DIRECT_ALIGN)
    await this.file.read(this.block, DIRECT_ALIGN, at + whole)
    this.block.copy(buf, length, length - whole, DIRECT_ALIGN)
    return whole + DIRECT_ALIGN
  }

  private advance(length: number): void {
    this.written += length
    this.o.progress?.(this.written, this.manifest.image.size)
  }

  /**
   * Read chunk `index` back (its write has completed) and compare it with the manifest. Chunks
   * written before a bad one are still read back, so the first bad chunk is the one reported.
   */
  private readBackChunk(index: number, at: number, length: number): void {
    const r: Promise<void> = this.checkOnDisk(index, at, length)
      .catch((e) => this.buffers.fail(e))
      .finally(() => this.readBacks.delete(r))
    this.readBacks.add(r)
  }

  private async checkOnDisk(index: number, at: number, length: number): Promise<void> {
    const b = await this.readBuffers.take()
    try {
      await this.o.beforeReadBack?.(index, at, length)
      await this.file.read(b, roundUp(length, DIRECT_ALIGN), at)
      if (await this.checker.matches(index, b.subarray(0, length))) this.checked.add(index)
      else {
        this.firstBad = Math.min(this.firstBad, index)
        this.buffers.fail(this.readBackMismatch(index))
      }
    } finally {
      this.readBuffers.give(b)
    }
  }

  private readBackMismatch(index: number): LabhostError {
    return chunkMismatch(this.manifest, index, `reading ${this.target.name} back from ${this.target.disk}`)
  }

  /** The first chunk that read back wrong, if any. */
  firstMismatch(): LabhostError | null {
    return this.firstBad < this.manifest.image.chunks.length ? this.readBackMismatch(this.firstBad) : null
  }

  /** Wait for the queued chunks, their writes, their read-backs and the zeroing of the runs passed. */
  async settle(): Promise<void> {
    await this.inOrder
    await Promise.all(this.writes)
    await Promise.all(this.readBacks)
    await this.zeroings
  }

  /** Stage 4: zero the last run of zeros, then fdatasync. */
  async finish(): Promise<WriteStats> {
    this.zeroRunEnded()
    await this.zeroings
    if (this.buffers.failure) throw this.buffers.failure
    const { kernelZeroedBytes, writtenZeroBytes } = this.zeroStats
    const stats = { dataBytes: this.manifest.image.size - kernelZeroedBytes - writtenZeroBytes, kernelZeroedBytes, writtenZeroBytes }
    await this.file.sync()
    return stats
  }

  async close(): Promise<void> {
    await this.settle()
    this.file.close()
    await this.checker.close()
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
      if (!(await checker.matches(i, buf.subarray(0, length)))) firstBad = Math.min(firstBad, i)
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

// The slot writer's readers, one per kind of input (bmaptool's TransRead): each fills the writer's
// own aligned chunk buffers, one image chunk per buffer, and yields them in image order. A reader
// takes a buffer only when the writer has one free, so a slow disk slows the reading. The writer
// (slot-writer.ts) checks what it is given against the manifest; a reader only copies.
import fs from 'node:fs'
import { readUpTo } from '../lib/direct-io.ts'
import { LabhostError } from '../lib/errors.ts'
import type { ZstdReader } from '../lib/zstd-reader.ts'
import type { WorkerPool } from '../lib/worker-pool.ts'
import { chunkLength, frameSizeOf, framesPerChunk, type Manifest } from './manifest.ts'

/** The writer's chunk buffers: a reader takes one to fill and gives back one it does not yield. */
export interface ChunkBuffers {
  take(): Promise<Buffer>
  give(buf: Buffer): void
}

/** `length` bytes of the image at the start of `buf`: a whole chunk, or fewer where the input ends. */
export interface FilledChunk {
  buf: Buffer
  length: number
}

type Fill = (buf: Buffer, index: number, length: number) => Promise<number>

/**
 * Chunk by chunk into the buffers themselves: `fill` reads up to `length` bytes of chunk `index`
 * (fewer only where the input ends). One byte past the last chunk tells an input that is longer.
 */
async function* fillChunks(manifest: Manifest, buffers: ChunkBuffers, fill: Fill): AsyncGenerator<FilledChunk> {
  const count = manifest.image.chunks.length
  for (let index = 0; ; index++) {
    const length = index < count ? chunkLength(manifest, index) : 1
    const buf = await buffers.take()
    const n = await fill(buf, index, length).catch((e) => {
      buffers.give(buf)
      throw e
    })
    if (n === 0) {
      buffers.give(buf)
      return
    }
    yield { buf, length: n }
    if (n < length) return
  }
}

/** A local raw image file, read as it is, each chunk from its own offset. */
export async function* rawFileChunks(file: string, manifest: Manifest, buffers: ChunkBuffers): AsyncGenerator<FilledChunk> {
  const size = manifest.image.chunkSize
  const fd = fs.openSync(file, 'r')
  try {
    // past the last chunk, the one byte that tells a longer file is the one right after the image
    // (inside the last chunk's room when the image is not a whole number of chunks)
    yield* fillChunks(manifest, buffers, (b, index, length) =>
      readUpTo(fd, b, length, Math.min(index * size, manifest.image.size)).catch((e) => {
        throw new LabhostError(
          'io',
          `reading ${file} failed: ${(e as Error).message}`,
          'check the image file; only the target slot was written, nothing was switched',
          {},
          { cause: e },
        )
      }),
    )
  } finally {
    fs.closeSync(fd)
  }
}

/** A zstd stream, decompressed by zstd straight into the buffers (lib/zstd-reader.ts). */
export function zstdChunks(zstd: ZstdReader, manifest: Manifest, buffers: ChunkBuffers): AsyncGenerator<FilledChunk> {
  return fillChunks(manifest, buffers, async (b, _index, length) => {
    let n = 0
    for (let r; n < length && (r = await zstd.read(b, n, length - n)); n += r);
    return n
  })
}

/** A raw stream of pieces of any size (a delta's chunks): copied into whole chunks, then the tail. */
export async function* rawStreamChunks(stream: AsyncIterable<Buffer>, manifest: Manifest, buffers: ChunkBuffers): AsyncGenerator<FilledChunk> {
  const size = manifest.image.chunkSize
  let buf: Buffer | null = null
  let filled = 0
  for await (const piece of stream) {
    for (let from = 0; from < piece.length;) {
      buf ??= await buffers.take()
      const n = Math.min(size - filled, piece.length - from)
      piece.copy(buf, filled, from, from + n)
      filled += n
      from += n
      if (filled === size) {
        const full = buf
        buf = null
        filled = 0
        yield { buf: full, length: size }
      }
    }
  }
  if (buf && filled) yield { buf, length: filled }
}

/** Chunks whose frames are being decompressed at once, ahead of the one the writer takes next. */
const FRAMED_AHEAD = 5

/** Why a framed transport stopped short of its image: it ended early, or a frame is damaged. */
export class FrameError extends Error {
  readonly truncated: boolean
  constructor(message: string, truncated: boolean) {
    super(message)
    this.truncated = truncated
  }
}

/** The compressed frames of one chunk, one after the other in `data` (its own memory: it is handed to a worker). */
interface FrameGroup {
  data: Uint8Array
  sizes: number[]
}

/**
 * A transport file of independent zstd frames (their sizes in the signed manifest), decompressed
 * a chunk's frames at a time in worker threads straight into the buffers, several chunks at once.
 * A frame must decompress to exactly its share of the image (else FrameError); an input that ends
 * early yields the chunks it completed, then throws FrameError(truncated).
 */
export async function* framedZstdChunks(
  from: string | AsyncIterable<Buffer>,
  manifest: Manifest,
  buffers: ChunkBuffers,
  pool: WorkerPool,
): AsyncGenerator<FilledChunk> {
  const frames = manifest.transport.frames!
  const perChunk = framesPerChunk(manifest)
  const frameSize = frameSizeOf(manifest)
  const groups = manifest.image.chunks.map((_, i) => frames.slice(i * perChunk, (i + 1) * perChunk))
  const input = typeof from === 'string' ? fileGroups(from, groups) : streamGroups(from, groups)
  const ahead: { buf: Buffer; length: number; done: Promise<unknown> }[] = []
  try {
    for (let index = 0; index < groups.length; index++) {
      if (ahead.length >= FRAMED_AHEAD) yield await settled(ahead.shift()!)
      const next = await input.next()
      if (next.done) {
        while (ahead.length) yield await settled(ahead.shift()!)
        throw new FrameError(`premature end: the transport file ends in the frames of chunk ${index} of ${groups.length}`, true)
      }
      const length = chunkLength(manifest, index)
      const buf = await buffers.take()
      const done = pool.zstdFrames(next.value.data, next.value.sizes, buf.subarray(0, length), frameSize).catch((e: Error) => {
        throw new FrameError(`chunk ${index}'s frames (image bytes ${index * manifest.image.chunkSize}..) do not decompress: ${e.message}`, false)
      })
      done.catch(() => {}) // looked at when its turn comes
      ahead.push({ buf, length, done })
    }
    while (ahead.length) yield await settled(ahead.shift()!)
    if (!(await input.next()).done)
      throw new LabhostError('hashMismatch', 'the transport file is longer than its manifest says', 'the transport file was replaced: fetch it again')
  } finally {
    // stopped early: the buffers of chunks not handed over go back once their frames are done
    for (const a of ahead.splice(0)) {
      await a.done.catch(() => {})
      buffers.give(a.buf)
    }
    await input.return(undefined)
  }
}

/** A chunk whose frames are all in its buffer (else what went wrong with them). */
async function settled(a: { buf: Buffer; length: number; done: Promise<unknown> }): Promise<FilledChunk> {
  await a.done
  return { buf: a.buf, length: a.length }
}

/** A transport file on disk, a chunk's frames at a time; anything after the last frame comes as one more group. */
async function* fileGroups(file: string, groups: number[][]): AsyncGenerator<FrameGroup> {
  const fd = fs.openSync(file, 'r')
  try {
    let at = 0
    for (const sizes of groups) {
      const want = sizes.reduce((a, b) => a + b, 0)
      const data = Buffer.allocUnsafeSlow(want)
      if ((await readUpTo(fd, data, want, at)) < want) return
      yield { data, sizes }
      at += want
    }
    const probe = Buffer.alloc(1)
    if (await readUpTo(fd, probe, 1, at)) yield { data: probe, sizes: [1] }
  } finally {
    fs.closeSync(fd)
  }
}

/** A byte stream (a download), cut into a chunk's frames at a time; bytes after the last frame come as one more group. */
async function* streamGroups(stream: AsyncIterable<Buffer>, groups: number[][]): AsyncGenerator<FrameGroup> {
  let i = 0
  let data = new Uint8Array(groups[0]?.reduce((a, b) => a + b, 0) ?? 0)
  let filled = 0
  for await (const piece of stream) {
    for (let from = 0; from < piece.length;) {
      if (i === groups.length) return yield { data: piece.subarray(from), sizes: [piece.length - from] }
      const n = Math.min(data.length - filled, piece.length - from)
      data.set(piece.subarray(from, from + n), filled)
      filled += n
      from += n
      if (filled === data.length) {
        yield { data, sizes: groups[i]! }
        data = new Uint8Array(groups[++i]?.reduce((a, b) => a + b, 0) ?? 0)
        filled = 0
      }
    }
  }
}

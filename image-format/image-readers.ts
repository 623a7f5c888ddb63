// The slot writer's readers, one per kind of input (bmaptool's TransRead): each fills the writer's
// own aligned chunk buffers, one image chunk per buffer, and yields them in image order. A reader
// takes a buffer only when the writer has one free, so a slow disk slows the reading. The writer
// (slot-writer.ts) checks what it is given against the manifest; a reader only copies.
import fs from 'node:fs'
import { readUpTo } from '../lib/direct-io.ts'
import { LabhostError } from '../lib/errors.ts'
import type { ZstdReader } from '../lib/zstd-reader.ts'
import { chunkLength, type Manifest } from './manifest.ts'

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

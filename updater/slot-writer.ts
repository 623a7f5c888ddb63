// Writing a signed image into a byte range of a disk (a root slot): decompress the transport
// stream as it arrives, hash every chunk against the signed manifest before writing it, fsync,
// then read the range back from the device with O_DIRECT and compare again. Used by
// `labhost update` (inactive slot) and `labhost install` (slot A).
import crypto from 'node:crypto'
import fs from 'node:fs'
import { once } from 'node:events'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { execa } from 'execa'
import { LabhostError } from '../lib/errors.ts'
import type { Progress } from '../lib/progress.ts'
import type { Manifest } from '../image-build/manifest.ts'
import type { UpdateSource } from './source.ts'

export interface ImageTarget {
  disk: string
  firstByte: number
  /** For messages: "slot B". */
  name: string
}

function chunkMismatch(manifest: Manifest, index: number, what: string): LabhostError {
  return new LabhostError('hashMismatch', `${what}: chunk ${index} (bytes ${index * manifest.image.chunkSize}..) does not match the signed manifest`,
    'the download or the disk corrupted the image: run it again (only the target slot was written, nothing was switched)')
}

/**
 * Feed a byte stream to `onChunk` in whole pieces of `size` bytes; returns the shorter tail, for
 * the caller to check once it knows the stream ended well (a truncated stream ends in a tail).
 */
async function forEachChunk(stream: AsyncIterable<unknown>, size: number, onChunk: (chunk: Buffer) => void | Promise<void>): Promise<Buffer> {
  // Copy each piece once into a chunk-sized buffer; a fresh buffer per chunk, since the
  // consumer may still be writing the last one.
  let chunk = Buffer.allocUnsafe(size)
  let filled = 0
  for await (const data of stream) {
    const piece = data as Buffer
    let at = 0
    while (at < piece.length) {
      const n = Math.min(size - filled, piece.length - at)
      piece.copy(chunk, filled, at, at + n)
      filled += n
      at += n
      if (filled === size) {
        await onChunk(chunk)
        chunk = Buffer.allocUnsafe(size)
        filled = 0
      }
    }
  }
  return chunk.subarray(0, filled)
}

/**
 * Decompress the transport stream (a local file or a download in progress) into the target
 * range, checking every chunk against the signed manifest before it is written.
 */
export async function writeImage(target: ImageTarget, manifest: Manifest, source: UpdateSource, progress?: Progress): Promise<void> {
  const size = manifest.image.chunkSize
  // dd writes the checked chunks: O_DIRECT on a block device (aligned buffers, no page cache to
  // flush), then fsync; it runs beside zstd and our hashing, so the three overlap.
  const direct = fs.statSync(target.disk).isBlockDevice()
  const sink = execa('dd', [`of=${target.disk}`, `bs=${size}`, 'iflag=fullblock', `oflag=seek_bytes${direct ? ',direct' : ''}`, `seek=${target.firstByte}`, 'conv=notrunc,fsync', 'status=none'],
    { buffer: false, reject: false, stdin: 'pipe', stdout: 'ignore', stderr: 'pipe', encoding: 'buffer' })
  const sinkErr: Buffer[] = []
  sink.stderr!.on('data', (d: Buffer) => sinkErr.push(d))
  // a dd that dies early closes its stdin: its exit status reports that, not an EPIPE here
  sink.stdin!.on('error', () => {})
  // zstd decompresses a compressed stream; a raw image is read as it is.
  const zstd = source.compressed ? execa('zstd', ['-dc'], { buffer: false, encoding: 'buffer', reject: false, stdin: 'pipe', stderr: 'pipe' }) : null
  let feedError: unknown
  const feed = zstd ? pipeline(Readable.from(source.transport()), zstd.stdin!).catch((e) => {
    feedError = e
    zstd.kill()
  }) : Promise.resolve()
  let written = 0
  let index = 0
  const flushChunk = async (chunk: Buffer) => {
    if (written + chunk.length > manifest.image.size) throw new LabhostError('hashMismatch', 'the image is longer than its manifest says', 'the transport file was replaced: fetch it again')
    const h = crypto.createHash('sha256').update(chunk).digest('hex')
    if (h !== manifest.image.chunks[index]) throw chunkMismatch(manifest, index, 'while writing')
    // keep a few chunks queued for dd, so zstd is not stalled while dd writes
    sink.stdin!.write(chunk)
    if (sink.stdin!.writableLength > 8 * size) await once(sink.stdin!, 'drain')
    written += chunk.length
    index++
    progress?.(written, manifest.image.size)
  }
  let tail: Buffer
  try {
    tail = await forEachChunk(zstd ? zstd.stdout! : source.transport(), size, flushChunk)
  } catch (e) {
    zstd?.kill()
    sink.kill()
    await Promise.all([feed, zstd, sink])
    throw e
  }
  await feed
  const r = zstd ? await zstd : { exitCode: 0, stderr: '' }
  try {
    // A failed download explains a short zstd stream better than zstd's own complaint.
    if (feedError) throw feedError
    if (r.exitCode === 0 && tail.length) await flushChunk(tail)
    if (r.exitCode !== 0 || written !== manifest.image.size) {
      throw new LabhostError('hashMismatch', `the transport file ends early: ${written} of ${manifest.image.size} bytes (${String(r.stderr ?? '').trim().split('\n').pop()})`,
        'the download is truncated: run it again (only the target slot was written, nothing was switched)')
    }
  } catch (e) {
    sink.kill()
    await sink
    throw e
  }
  sink.stdin!.end()
  const w = await sink
  if (w.exitCode !== 0) {
    throw new LabhostError('io', `writing ${target.name} of ${target.disk} failed: ${Buffer.concat(sinkErr).toString().trim() || `dd exit ${w.exitCode}`}`,
      'check the disk (dmesg); only the target slot was written, nothing was switched')
  }
}

/** Read the slot back from the device, bypassing the page cache, and compare chunk by chunk. */
export async function verifyImage(target: ImageTarget, manifest: Manifest, progress?: Progress): Promise<void> {
  const size = manifest.image.chunkSize
  const dd = execa('dd', [`if=${target.disk}`, 'bs=4M', 'iflag=direct,skip_bytes,count_bytes', `skip=${target.firstByte}`, `count=${manifest.image.size}`, 'status=none'],
    { buffer: false, encoding: 'buffer', reject: false })
  let index = 0
  const check = (chunk: Buffer) => {
    if (crypto.createHash('sha256').update(chunk).digest('hex') !== manifest.image.chunks[index]) throw chunkMismatch(manifest, index, `reading ${target.name} back from ${target.disk}`)
    index++
    progress?.(Math.min(index * size, manifest.image.size), manifest.image.size)
  }
  let tail: Buffer
  try {
    tail = await forEachChunk(dd.stdout!, size, check)
  } catch (e) {
    dd.kill()
    await dd
    throw e
  }
  await dd
  if (tail.length) check(tail)
  if (index !== manifest.image.chunks.length) throw chunkMismatch(manifest, index, `reading ${target.name} back (short read)`)
}


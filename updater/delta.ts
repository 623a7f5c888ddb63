// Delta updates: the new image is assembled from what the host already has and only the rest is
// downloaded. Both root slots are read (O_DIRECT) and hashed on the new image's chunk grid, and
// with the image's block index every 4 KiB block found there is located too. A chunk of the signed
// index found on the disk is taken whole, a zero chunk is made by the writer, a chunk whose blocks
// are all found is assembled from them; of any other chunk only the zstd frames (128 KiB of image
// each: image-format/zstd-frames.ts) that hold its blocks found nowhere are fetched, with HTTP
// Range requests on the transport file, and the rest of it comes from the disk. The result is an
// ordinary raw-image stream for the slot writer, so the slot is written and then read back and
// verified exactly as in a full update; nothing here is trusted without that check.
import crypto from 'node:crypto'
import { alignedBuffers, DIRECT_ALIGN, DirectFile, roundUp } from '../lib/direct-io.ts'
import { blockHashes, WorkerPool } from '../lib/worker-pool.ts'
import { LabhostError } from '../lib/errors.ts'
import { chunkLength, frameLength, frameSizeOf, framesPerChunk, type Manifest } from '../image-format/manifest.ts'
import { decompressFrame, frameOffsets } from '../image-format/zstd-frames.ts'
import { resumableDownload, type HttpSource, type Remote, type TransferStats, type UpdateSource } from '../image-format/source.ts'
import { zeroChunkHash } from '../image-format/slot-writer.ts'

/** A byte range of the disk: a root slot. */
export interface SlotRange {
  firstByte: number
  bytes: number
}

/** In a block list (ChunkFrom `at`): an all-zero block, made rather than read. */
export const ZERO_BLOCK = -1
/** In a block list: a block that comes with a downloaded frame of the chunk, whether found on the disk or not. */
export const IN_FRAME = -2

export type ChunkFrom =
  | { kind: 'zero' }
  | { kind: 'disk'; slot: 'active' | 'target'; index: number; at: number }
  /** Assembled from blocks found on the disk: each block's byte offset, or ZERO_BLOCK. */
  | { kind: 'blocks'; at: number[] }
  /**
   * Assembled from the blocks found on the disk and the downloaded frames `frames` (numbered
   * within the chunk) that hold the blocks found nowhere: `at` as for 'blocks', IN_FRAME for every
   * block of those frames.
   */
  | { kind: 'patch'; at: number[]; frames: number[] }
  /** Every frame of the chunk downloaded. */
  | { kind: 'fetch' }

/** Byte range [start, end) of the transport file holding frames first..last. */
export interface FetchRange {
  start: number
  end: number
  first: number
  last: number
}

export interface DeltaSummary {
  chunks: number
  zero: number
  /** Chunks taken from the running slot, and from the slot being written (already in place or further on). */
  fromActive: number
  fromTarget: number
  /** Chunks assembled from blocks found anywhere in either slot (with the block index). */
  fromBlocks: number
  /** Chunks that need downloaded frames: all of theirs, or (`patched`) those holding the blocks found nowhere. */
  fetched: number
  /** Of the `fetched` chunks, those assembled from blocks found on the disk and some of their frames. */
  patched: number
  /** Image bytes per transport frame (the chunk size for an image built before frame sizes), and frames in the transport file. */
  frameSize: number
  frames: number
  /** Frames in the requested ranges (those between close missing runs included). */
  fetchedFrames: number
  /** Transport bytes the delta asks for, in `requests` Range requests (before any retry). */
  fetchBytes: number
  requests: number
  transportBytes: number
  scanSeconds: number
}

export interface DeltaPlan {
  chunks: ChunkFrom[]
  ranges: FetchRange[]
  summary: DeltaSummary
}

/**
 * Frames between two missing runs closer than this many transport bytes are fetched too: one
 * request instead of two. 1/16 of a frame's image bytes: frames that small are nearly all zeros
 * (64 KiB for 1 MiB frames); a gap of 64 KiB between 128 KiB frames would be two frames of data,
 * and merging those took the host image's one-package delta from 3.2 % of the image to 4.0 %.
 */
export const mergeGap = (frameSize: number): number => frameSize / 16
/** Readers in flight while a slot is hashed. */
const SCAN_READERS = 8
/** A delta that would fetch more than this share of the transport file is not worth the requests. */
export const DELTA_MAX_SHARE = 0.9

/** Why a delta is not possible for this manifest, or null. */
export function deltaUnusable(manifest: Manifest): string | null {
  const { frames, size } = manifest.transport
  if (!frames) return 'the manifest has no frame index (an image built before delta updates)'
  if (frames.length !== Math.ceil(manifest.image.size / frameSizeOf(manifest)) || frameOffsets(frames).at(-1) !== size)
    return 'its frame index does not add up to the transport file'
  return null
}

/**
 * SHA-256 of each chunk-sized piece of a slot on the new image's chunk grid, as far as the slot
 * reaches; with `blocks`, also where each block hash (as in the block index) lies on the disk.
 */
async function hashSlot(file: DirectFile, slot: SlotRange, manifest: Manifest, pool: WorkerPool, blocks?: Map<string, number>): Promise<(string | null)[]> {
  const { chunkSize } = manifest.image
  const count = manifest.image.chunks.length
  const hashes: (string | null)[] = new Array<string | null>(count).fill(null)
  const index = manifest.blocks
  const buffers = alignedBuffers(SCAN_READERS, roundUp(chunkSize, DIRECT_ALIGN))
  const reader = async (buf: Buffer, first: number) => {
    for (let i = first; i < count; i += buffers.length) {
      const length = chunkLength(manifest, i)
      const span = file.direct ? roundUp(length, DIRECT_ALIGN) : length
      if (i * chunkSize + span > slot.bytes) break
      const at = slot.firstByte + i * chunkSize
      await file.read(buf, span, at)
      if (!blocks || !index) {
        hashes[i] = await pool.sha256(buf.subarray(0, length))
        continue
      }
      const r = await pool.sha256WithBlocks(buf.subarray(0, length), index.blockSize, index.hashBytes)
      hashes[i] = r.hash
      const w = 2 * index.hashBytes
      for (let k = 0; k * w < r.blocks.length; k++) blocks.set(r.blocks.slice(k * w, (k + 1) * w), at + k * index.blockSize)
    }
  }
  await Promise.all(buffers.map((b, k) => reader(b, k)))
  return hashes
}

/** Both slots hashed on the new image's chunk grid (scanSlots): what planFromScan decides with. */
export interface SlotScan {
  active: (string | null)[]
  target: (string | null)[]
  /** Where each 4 KiB block hash lies, in the running slot and in the slot being written; only where the image's block index can be used. */
  activeBlocks?: Map<string, number>
  targetBlocks?: Map<string, number>
  seconds: number
}

/** Blocks are looked for only where the image has a block index and a frame is whole blocks (always, but for an odd old image). */
const blocksUsable = (manifest: Manifest) => !!manifest.blocks && frameSizeOf(manifest) % manifest.blocks.blockSize === 0

/**
 * Read and hash both slots of `disk` as far as the image reaches (and, with `o.blocks` where the
 * image has a usable block index, locate every block); writes nothing. Needs only the signed
 * manifest: an update over BitTorrent runs it while the delta pack (and its block index) downloads.
 */
export async function scanSlots(
  manifest: Manifest,
  disk: string,
  slots: { active: SlotRange; target: SlotRange },
  o: { blocks: boolean } = { blocks: true },
): Promise<SlotScan> {
  const started = Date.now()
  const file = DirectFile.open(disk, 'read')
  const pool = new WorkerPool()
  const activeBlocks = o.blocks && blocksUsable(manifest) ? new Map<string, number>() : undefined
  const targetBlocks = activeBlocks ? new Map<string, number>() : undefined
  try {
    const active = await hashSlot(file, slots.active, manifest, pool, activeBlocks)
    const target = await hashSlot(file, slots.target, manifest, pool, targetBlocks)
    return { active, target, activeBlocks, targetBlocks, seconds: (Date.now() - started) / 1000 }
  } finally {
    file.close()
    await pool.close()
  }
}

/**
 * Decide for every chunk of the new image where it comes from, and which frames of the transport
 * file are downloaded. Reads and hashes both slots of `disk` as far as the image reaches; writes
 * nothing.
 */
export async function planDelta(manifest: Manifest, disk: string, slots: { active: SlotRange; target: SlotRange }, blockIndex?: Buffer): Promise<DeltaPlan> {
  // without an index the blocks are not located at all
  const scan = await scanSlots(manifest, disk, slots, { blocks: !!blockIndex })
  return planFromScan(manifest, slots, scan, blockIndex)
}

/** planDelta's decision on slots already scanned (scanSlots); `blockIndex`: the image's, checked against the signed manifest. */
export function planFromScan(manifest: Manifest, slots: { active: SlotRange; target: SlotRange }, scan: SlotScan, blockIndex?: Buffer): DeltaPlan {
  const started = Date.now()
  const { chunks: wanted, chunkSize } = manifest.image
  const frames = manifest.transport.frames!
  const frameSize = frameSizeOf(manifest)
  const perChunk = framesPerChunk(manifest)
  const { active, target } = scan
  const withBlocks = !!blockIndex && blocksUsable(manifest) && !!scan.activeBlocks && !!scan.targetBlocks
  // where each block hash lies: in the running slot, and (the last place) in the slot being written
  const activeBlocks = withBlocks ? scan.activeBlocks : undefined
  const targetBlocks = withBlocks ? scan.targetBlocks : undefined
  const inActive = new Map<string, number>()
  active.forEach((h, j) => {
    if (h && !inActive.has(h)) inActive.set(h, j)
  })
  // where each hash lies in the slot being written: usable for chunk i only at j >= i, because
  // chunks are written in order and position j < i is overwritten by then
  const inTarget = new Map<string, number[]>()
  target.forEach((h, j) => {
    if (h) inTarget.set(h, [...(inTarget.get(h) ?? []), j])
  })
  const chunks: ChunkFrom[] = wanted.map((h, i) => {
    const length = chunkLength(manifest, i)
    if (h === zeroChunkHash(length)) return { kind: 'zero' }
    if (target[i] === h) return { kind: 'disk', slot: 'target', index: i, at: slots.target.firstByte + i * chunkSize }
    const a = active[i] === h ? i : inActive.get(h)
    if (a !== undefined) return { kind: 'disk', slot: 'active', index: a, at: slots.active.firstByte + a * chunkSize }
    const later = inTarget.get(h)?.find((j) => j > i)
    if (later !== undefined) return { kind: 'disk', slot: 'target', index: later, at: slots.target.firstByte + later * chunkSize }
    const at = activeBlocks && targetBlocks ? findBlocks(manifest, blockIndex!, i, activeBlocks, targetBlocks, slots.target.firstByte + i * chunkSize) : null
    return at ? fromBlocks(at, frameSize / manifest.blocks!.blockSize, Math.ceil(length / frameSize)) : { kind: 'fetch' }
  })
  const ranges = fetchRanges(chunks, frames, mergeGap(frameSize), perChunk, withBlocks ? frameSize / manifest.blocks!.blockSize : 0)
  const count = (f: (c: ChunkFrom) => boolean) => chunks.filter(f).length
  return {
    chunks,
    ranges,
    summary: {
      chunks: chunks.length,
      zero: count((c) => c.kind === 'zero'),
      fromActive: count((c) => c.kind === 'disk' && c.slot === 'active'),
      fromTarget: count((c) => c.kind === 'disk' && c.slot === 'target'),
      fromBlocks: count((c) => c.kind === 'blocks'),
      fetched: count((c) => c.kind === 'fetch' || c.kind === 'patch'),
      patched: count((c) => c.kind === 'patch'),
      frameSize,
      frames: frames.length,
      fetchedFrames: ranges.reduce((n, r) => n + r.last - r.first + 1, 0),
      fetchBytes: ranges.reduce((n, r) => n + r.end - r.start, 0),
      requests: ranges.length,
      transportBytes: manifest.transport.size,
      scanSeconds: scan.seconds + (Date.now() - started) / 1000,
    },
  }
}

/**
 * A chunk of `frames` frames of `perFrame` blocks each, whose blocks lie at `at` (null: found
 * nowhere): assembled from the disk, from the disk and the frames that hold the blocks found
 * nowhere, or (every frame holds one) downloaded.
 */
function fromBlocks(at: (number | null)[], perFrame: number, frames: number): ChunkFrom {
  const missing: number[] = []
  for (let k = 0; k < frames; k++) if (at.slice(k * perFrame, (k + 1) * perFrame).includes(null)) missing.push(k)
  if (missing.length === 0) return { kind: 'blocks', at: at as number[] }
  if (missing.length === frames) return { kind: 'fetch' }
  const patched = at.map((a) => a ?? IN_FRAME)
  for (const k of missing) patched.fill(IN_FRAME, k * perFrame, (k + 1) * perFrame)
  return { kind: 'patch', at: patched, frames: missing }
}

/**
 * The frames to download as byte ranges of the transport file: runs of the frames the chunks
 * need, runs separated by a few small frames made one request. A frame in such a gap is used
 * where it saves a read: every frame of a chunk downloaded makes it a downloaded chunk, and a
 * patched chunk takes each of its frames that comes anyway. Changes `chunks` so.
 */
function fetchRanges(chunks: ChunkFrom[], frames: number[], gap: number, perChunk: number, perFrame: number): FetchRange[] {
  const need = usedFrames(chunks, frames.length, perChunk)
  const offsets = frameOffsets(frames)
  const ranges: FetchRange[] = []
  need.forEach((n, f) => {
    if (!n) return
    const last = ranges.at(-1)
    if (last && offsets[f]! - last.end <= gap) {
      last.end = offsets[f + 1]!
      last.last = f
    } else ranges.push({ start: offsets[f]!, end: offsets[f + 1]!, first: f, last: f })
  })
  const fetched = new Uint8Array(frames.length)
  for (const r of ranges) fetched.fill(1, r.first, r.last + 1)
  chunks.forEach((c, i) => {
    if (c.kind === 'zero' || c.kind === 'fetch') return
    const mine = fetched.subarray(i * perChunk, Math.min((i + 1) * perChunk, frames.length))
    if (mine.every((f) => f === 1)) chunks[i] = { kind: 'fetch' }
    else if (c.kind === 'patch') {
      c.frames = []
      mine.forEach((f, k) => {
        if (!f) return
        c.frames.push(k)
        c.at.fill(IN_FRAME, k * perFrame, (k + 1) * perFrame)
      })
    }
  })
  return ranges
}

/**
 * Where every block of chunk `i` lies on the disk (ZERO_BLOCK: a zero block; null: found
 * nowhere), or null when the chunk is not whole blocks. Blocks of the slot being written count
 * only at or after `notBefore` (the chunk's own place): what lies before it is overwritten by then.
 */
function findBlocks(
  manifest: Manifest,
  index: Buffer,
  i: number,
  active: Map<string, number>,
  target: Map<string, number>,
  notBefore: number,
): (number | null)[] | null {
  const { blockSize, hashBytes } = manifest.blocks!
  const { chunkSize } = manifest.image
  const first = (i * chunkSize) / blockSize
  const length = chunkLength(manifest, i)
  if (length % blockSize) return null
  const count = length / blockSize
  const zero = zeroBlockHash(blockSize, hashBytes)
  const at: (number | null)[] = []
  for (let k = 0; k < count; k++) {
    const h = index.toString('hex', (first + k) * hashBytes, (first + k + 1) * hashBytes)
    if (h === zero) {
      at.push(ZERO_BLOCK)
      continue
    }
    const a = active.get(h) ?? target.get(h)
    at.push(a === undefined || (!active.has(h) && a < notBefore) ? null : a)
  }
  return at
}

const zeroBlockHashes = new Map<string, string>()
/** The index entry of an all-zero block (computed once). */
function zeroBlockHash(blockSize: number, hashBytes: number): string {
  const key = `${blockSize}/${hashBytes}`
  let h = zeroBlockHashes.get(key)
  if (!h) zeroBlockHashes.set(key, (h = blockHashes(new Uint8Array(blockSize), blockSize, hashBytes).toString('hex')))
  return h
}

/** Whether the delta is worth it against downloading the whole transport file. */
export const deltaPays = (s: DeltaSummary): boolean => s.fetchBytes <= DELTA_MAX_SHARE * s.transportBytes

/** Transport bytes [start, end) as a stream: over HTTP (resumed after failures), or from a delta pack (delta-pack.ts). */
export type RangeReader = (start: number, end: number) => AsyncIterable<Buffer>

export const httpRanges =
  (remote: Remote, stats: TransferStats): RangeReader =>
  (start, end) =>
    resumableDownload(remote.url, { start, end }, remote.fetch, stats)

/**
 * The frames `chunks` use: every frame of a downloaded chunk, a patched chunk's own (before ranges
 * are merged, the frames to request; after, a frame in a merged gap that neither takes is
 * downloaded and skipped).
 */
function usedFrames(chunks: ChunkFrom[], count: number, perChunk: number): Uint8Array {
  const used = new Uint8Array(count)
  chunks.forEach((c, i) => {
    if (c.kind === 'fetch') used.fill(1, i * perChunk, Math.min((i + 1) * perChunk, count))
    else if (c.kind === 'patch') for (const k of c.frames) used[i * perChunk + k] = 1
  })
  return used
}

const frameName = (f: number, perChunk: number) => (perChunk === 1 ? `the frame of chunk ${f}` : `frame ${f} (of chunk ${Math.floor(f / perChunk)})`)

/**
 * The downloaded frames the plan uses, in order, decompressed: each range downloaded (resuming
 * after failures, like a full download) and cut into its frames.
 */
async function* fetchFrames(plan: DeltaPlan, manifest: Manifest, remote: Remote, read: RangeReader): AsyncGenerator<{ index: number; data: Buffer }> {
  const frames = manifest.transport.frames!
  const perChunk = framesPerChunk(manifest)
  const used = usedFrames(plan.chunks, frames.length, perChunk)
  for (const range of plan.ranges) {
    let pending: Buffer[] = []
    let have = 0
    let index = range.first
    for await (const piece of read(range.start, range.end)) {
      pending.push(piece)
      have += piece.length
      while (index <= range.last && have >= frames[index]!) {
        const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending)
        const frame = all.subarray(0, frames[index]!)
        pending = [all.subarray(frames[index]!)]
        have -= frame.length
        if (used[index]) yield { index, data: decompressFrame(frame, frameLength(manifest, index), `${remote.url}: ${frameName(index, perChunk)}`) }
        index++
      }
    }
    if (index <= range.last)
      throw new LabhostError(
        'downloadFailed',
        `${remote.url}: the range for frames ${range.first}..${range.last} ended early`,
        'run the update again; nothing was switched',
      )
  }
}

/** Read the blocks at `at` (byte offsets; ZERO_BLOCK: zeros; IN_FRAME: left as is) into `buf` in order, runs of adjacent blocks in one read. */
async function assemble(file: DirectFile, buf: Buffer, at: number[], blockSize: number): Promise<void> {
  for (let k = 0; k < at.length;) {
    if (at[k] === ZERO_BLOCK) buf.fill(0, k * blockSize, (k + 1) * blockSize)
    if (at[k]! < 0) {
      k++
      continue
    }
    let n = 1
    while (k + n < at.length && at[k + n] === at[k]! + n * blockSize) n++
    await file.read(buf.subarray(k * blockSize), n * blockSize, at[k]!)
    k += n
  }
}

/**
 * Chunk `i` downloaded by itself (all its frames) into `buf`, when what was assembled from the disk
 * was not it. `offsets`: frameOffsets of the manifest's frames.
 */
async function fetchChunk(manifest: Manifest, offsets: number[], i: number, buf: Buffer, remote: Remote, read: RangeReader): Promise<Buffer> {
  const frames = manifest.transport.frames!
  const perChunk = framesPerChunk(manifest)
  const first = i * perChunk
  const last = Math.min(first + perChunk, frames.length) - 1
  const parts: Buffer[] = []
  for await (const p of read(offsets[first]!, offsets[last + 1]!)) parts.push(p)
  const data = Buffer.concat(parts)
  for (let f = first; f <= last; f++) {
    const frame = data.subarray(offsets[f]! - offsets[first]!, offsets[f + 1]! - offsets[first]!)
    decompressFrame(frame, frameLength(manifest, f), `${remote.url}: ${frameName(f, perChunk)}`).copy(buf, (f - first) * frameSizeOf(manifest))
  }
  return buf.subarray(0, chunkLength(manifest, i))
}

/**
 * The new image as a raw stream for the slot writer: zero chunks as zeros, chunks the host has
 * read from the disk, the others assembled from blocks on the disk and downloaded frames. `source`
 * is the http source the manifest came from; `read` where the frames come from (default: HTTP
 * Range requests to it).
 */
export function deltaSource(plan: DeltaPlan, manifest: Manifest, disk: string, source: HttpSource, read?: RangeReader, via = ''): UpdateSource {
  const { remote } = source
  const ranges = read ?? httpRanges(remote, source.stats)
  const { chunkSize } = manifest.image
  const frameSize = frameSizeOf(manifest)
  const perChunk = framesPerChunk(manifest)
  const s = plan.summary
  return {
    kind: 'delta',
    manifestWhere: source.manifestWhere,
    manifest: source.manifest,
    stats: source.stats,
    remote,
    transportWhere: `${remote.url} (delta: ${s.fetched} of ${s.chunks} chunks, ${s.fetchedFrames} of ${s.frames} frames${via})`,
    chunks: async function* () {
      const file = DirectFile.open(disk, 'read')
      const [buf] = alignedBuffers(1, roundUp(chunkSize, DIRECT_ALIGN))
      const zeros = Buffer.alloc(chunkSize)
      const fetched = fetchFrames(plan, manifest, remote, ranges)
      /** The next downloaded frame, which must be frame `f`, into its place in `buf` (chunk `i`'s). */
      const place = async (i: number, f: number) => {
        const next = await fetched.next()
        if (next.done || next.value.index !== f)
          throw new Error(`delta: frame ${f} expected from the download, got ${next.done ? 'its end' : next.value.index}`)
        next.value.data.copy(buf!, (f - i * perChunk) * frameSize)
      }
      /** The frames' offsets in the transport file, once a chunk may need them. */
      let offsets: number[] | undefined
      const signed = (i: number, length: number) => crypto.createHash('sha256').update(buf!.subarray(0, length)).digest('hex') === manifest.image.chunks[i]
      try {
        for (let i = 0; i < plan.chunks.length; i++) {
          const from = plan.chunks[i]!
          const length = chunkLength(manifest, i)
          if (from.kind === 'zero') yield zeros.subarray(0, length)
          else if (from.kind === 'disk') {
            await file.read(buf!, file.direct ? roundUp(length, DIRECT_ALIGN) : length, from.at)
            yield buf!.subarray(0, length)
          } else if (from.kind === 'blocks' || from.kind === 'patch') {
            offsets ??= frameOffsets(manifest.transport.frames!)
            await assemble(file, buf!, from.at, manifest.blocks!.blockSize)
            if (from.kind === 'patch') for (const k of from.frames) await place(i, i * perChunk + k)
            // a short hash found the blocks; the chunk's signed SHA-256 decides (else: download all of it)
            yield signed(i, length) ? buf!.subarray(0, length) : await fetchChunk(manifest, offsets, i, buf!, remote, ranges)
          } else {
            for (let f = i * perChunk; f * frameSize < i * chunkSize + length; f++) await place(i, f)
            yield buf!.subarray(0, length)
          }
        }
      } finally {
        file.close()
        await fetched.return(undefined)
      }
    },
  }
}

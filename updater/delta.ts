// Delta updates: the new image is assembled from chunks the host already has and only the
// missing chunks are downloaded. Both root slots are read (O_DIRECT) and hashed on the new
// image's chunk grid; every chunk of the signed index found there is taken from the disk, every
// zero chunk is made by the writer, and the rest is fetched with HTTP Range requests for the
// chunks' own zstd frames in the transport file (image-format/zstd-frames.ts). The result is an
// ordinary raw-image stream for the slot writer, so the slot is written and then read back and
// verified exactly as in a full update; nothing here is trusted without that check.
import crypto from 'node:crypto'
import { alignedBuffers, DIRECT_ALIGN, DirectFile, roundUp } from '../lib/direct-io.ts'
import { blockHashes, HashPool } from '../lib/hash-pool.ts'
import { LabhostError } from '../lib/errors.ts'
import { chunkLength, type Manifest } from '../image-format/manifest.ts'
import { decompressFrame, frameOffsets } from '../image-format/zstd-frames.ts'
import { resumableDownload, type HttpSource, type Remote, type TransferStats, type UpdateSource } from '../image-format/source.ts'
import { zeroChunkHash } from '../image-format/slot-writer.ts'

/** A byte range of the disk: a root slot. */
export interface SlotRange {
  firstByte: number
  bytes: number
}

export type ChunkFrom =
  | { kind: 'zero' }
  | { kind: 'disk'; slot: 'active' | 'target'; index: number; at: number }
  /** Assembled from blocks found on the disk: each block's byte offset, or -1 for a zero block. */
  | { kind: 'blocks'; at: number[] }
  | { kind: 'fetch' }

/** Byte range [start, end) of the transport file holding the frames of chunks first..last. */
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
  fetched: number
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

/** Frames between two missing runs closer than this are fetched too: one request instead of two. */
const MERGE_GAP = 64 << 10
/** Readers in flight while a slot is hashed. */
const SCAN_READERS = 8
/** A delta that would fetch more than this share of the transport file is not worth the requests. */
export const DELTA_MAX_SHARE = 0.9

/** Why a delta is not possible for this manifest, or null. */
export function deltaUnusable(manifest: Manifest): string | null {
  const { frames, size } = manifest.transport
  if (!frames) return 'the manifest has no frame index (an image built before delta updates)'
  if (frames.length !== manifest.image.chunks.length || frameOffsets(frames).at(-1) !== size) return 'its frame index does not add up to the transport file'
  return null
}

/**
 * SHA-256 of each chunk-sized piece of a slot on the new image's chunk grid, as far as the slot
 * reaches; with `blocks`, also where each block hash (as in the block index) lies on the disk.
 */
async function hashSlot(file: DirectFile, slot: SlotRange, manifest: Manifest, pool: HashPool, blocks?: Map<string, number>): Promise<(string | null)[]> {
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

/**
 * Decide for every chunk of the new image where it comes from. Reads and hashes both slots of
 * `disk` as far as the image reaches; writes nothing.
 */
export async function planDelta(manifest: Manifest, disk: string, slots: { active: SlotRange; target: SlotRange }, blockIndex?: Buffer): Promise<DeltaPlan> {
  const started = Date.now()
  const { chunks: wanted, chunkSize } = manifest.image
  const frames = manifest.transport.frames!
  const file = DirectFile.open(disk, 'read')
  const pool = new HashPool()
  let active: (string | null)[]
  let target: (string | null)[]
  // where each block hash lies: in the running slot, and (the last place) in the slot being written
  const activeBlocks = blockIndex && manifest.blocks ? new Map<string, number>() : undefined
  const targetBlocks = activeBlocks ? new Map<string, number>() : undefined
  try {
    active = await hashSlot(file, slots.active, manifest, pool, activeBlocks)
    target = await hashSlot(file, slots.target, manifest, pool, targetBlocks)
  } finally {
    file.close()
    await pool.close()
  }
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
    const assembled =
      activeBlocks && targetBlocks && blockIndex
        ? findBlocks(manifest, blockIndex, i, activeBlocks, targetBlocks, slots.target.firstByte + i * chunkSize)
        : null
    if (assembled) return { kind: 'blocks', at: assembled }
    return { kind: 'fetch' }
  })
  // runs of missing chunks as byte ranges of the transport file; runs separated by a few small
  // frames become one request (the frames between are fetched and used too)
  const offsets = frameOffsets(frames)
  const ranges: FetchRange[] = []
  chunks.forEach((c, i) => {
    if (c.kind !== 'fetch') return
    const last = ranges.at(-1)
    if (last && offsets[i]! - last.end <= MERGE_GAP) {
      for (let k = last.last + 1; k < i; k++) if (chunks[k]!.kind !== 'zero') chunks[k] = { kind: 'fetch' }
      last.end = offsets[i + 1]!
      last.last = i
    } else ranges.push({ start: offsets[i]!, end: offsets[i + 1]!, first: i, last: i })
  })
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
      fetched: count((c) => c.kind === 'fetch'),
      fetchBytes: ranges.reduce((n, r) => n + r.end - r.start, 0),
      requests: ranges.length,
      transportBytes: manifest.transport.size,
      scanSeconds: (Date.now() - started) / 1000,
    },
  }
}

/**
 * Where every block of chunk `i` lies on the disk (-1: a zero block), or null when one is found
 * nowhere. Blocks of the slot being written count only at or after `notBefore` (the chunk's own
 * place): what lies before it is overwritten by then.
 */
function findBlocks(
  manifest: Manifest,
  index: Buffer,
  i: number,
  active: Map<string, number>,
  target: Map<string, number>,
  notBefore: number,
): number[] | null {
  const { blockSize, hashBytes } = manifest.blocks!
  const { chunkSize } = manifest.image
  const first = (i * chunkSize) / blockSize
  const length = chunkLength(manifest, i)
  if (length % blockSize) return null
  const count = length / blockSize
  const zero = zeroBlockHash(blockSize, hashBytes)
  const at: number[] = []
  for (let k = 0; k < count; k++) {
    const h = index.toString('hex', (first + k) * hashBytes, (first + k + 1) * hashBytes)
    if (h === zero) {
      at.push(-1)
      continue
    }
    const a = active.get(h) ?? target.get(h)
    if (a === undefined || (!active.has(h) && a < notBefore)) return null
    at.push(a)
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
 * The fetched chunks, in order: each range downloaded (resuming after failures, like a full
 * download), cut into its frames and each frame decompressed. Chunks inside a range that the plan
 * takes from elsewhere (zero chunks) are skipped.
 */
async function* fetchChunks(plan: DeltaPlan, manifest: Manifest, remote: Remote, read: RangeReader): AsyncGenerator<{ index: number; data: Buffer }> {
  const frames = manifest.transport.frames!
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
        if (plan.chunks[index]!.kind === 'fetch') {
          yield { index, data: decompressFrame(frame, chunkLength(manifest, index), `${remote.url}: the frame of chunk ${index}`) }
        }
        index++
      }
    }
    if (index <= range.last)
      throw new LabhostError(
        'downloadFailed',
        `${remote.url}: the range for chunks ${range.first}..${range.last} ended early`,
        'run the update again; nothing was switched',
      )
  }
}

/** Read the blocks at `at` (byte offsets; -1: zeros) into `buf` in order, runs of adjacent blocks in one read. */
async function assemble(file: DirectFile, buf: Buffer, at: number[], blockSize: number): Promise<void> {
  for (let k = 0; k < at.length;) {
    if (at[k] === -1) {
      buf.fill(0, k * blockSize, (k + 1) * blockSize)
      k++
      continue
    }
    let n = 1
    while (k + n < at.length && at[k + n] === at[k]! + n * blockSize) n++
    await file.read(buf.subarray(k * blockSize), n * blockSize, at[k]!)
    k += n
  }
}

/** One chunk downloaded by itself (its frame), when what was found on the disk was not it. */
async function fetchOne(manifest: Manifest, i: number, remote: Remote, read: RangeReader): Promise<Buffer> {
  const offsets = frameOffsets(manifest.transport.frames!)
  const parts: Buffer[] = []
  for await (const p of read(offsets[i]!, offsets[i + 1]!)) parts.push(p)
  return decompressFrame(Buffer.concat(parts), chunkLength(manifest, i), `${remote.url}: the frame of chunk ${i}`)
}

/**
 * The new image as a raw stream for the slot writer: zero chunks as zeros, chunks the host has
 * read from the disk, the others downloaded. `source` is the http source the manifest came from;
 * `read` where the missing frames come from (default: HTTP Range requests to it).
 */
export function deltaSource(plan: DeltaPlan, manifest: Manifest, disk: string, source: HttpSource, read?: RangeReader, via = ''): UpdateSource {
  const { remote } = source
  const ranges = read ?? httpRanges(remote, source.stats)
  const { chunkSize } = manifest.image
  return {
    kind: 'delta',
    manifestWhere: source.manifestWhere,
    manifest: source.manifest,
    stats: source.stats,
    remote,
    transportWhere: `${remote.url} (delta: ${plan.summary.fetched} of ${plan.summary.chunks} chunks${via})`,
    chunks: async function* () {
      const file = DirectFile.open(disk, 'read')
      const [buf] = alignedBuffers(1, roundUp(chunkSize, DIRECT_ALIGN))
      const zeros = Buffer.alloc(chunkSize)
      const fetched = fetchChunks(plan, manifest, remote, ranges)
      try {
        for (let i = 0; i < plan.chunks.length; i++) {
          const from = plan.chunks[i]!
          const length = chunkLength(manifest, i)
          if (from.kind === 'zero') yield zeros.subarray(0, length)
          else if (from.kind === 'disk') {
            await file.read(buf!, file.direct ? roundUp(length, DIRECT_ALIGN) : length, from.at)
            yield buf!.subarray(0, length)
          } else if (from.kind === 'blocks') {
            await assemble(file, buf!, from.at, manifest.blocks!.blockSize)
            // a short hash found the blocks; the chunk's signed SHA-256 decides (else: download it)
            if (crypto.createHash('sha256').update(buf!.subarray(0, length)).digest('hex') === manifest.image.chunks[i]) yield buf!.subarray(0, length)
            else yield await fetchOne(manifest, i, remote, ranges)
          } else {
            const next = await fetched.next()
            if (next.done || next.value.index !== i)
              throw new Error(`delta: chunk ${i} expected from the download, got ${next.done ? 'its end' : next.value.index}`)
            yield next.value.data
          }
        }
      } finally {
        file.close()
        await fetched.return(undefined)
      }
    },
  }
}

// Delta packs: a delta that many hosts need, fetched over BitTorrent from each other instead of
// one HTTP Range request per host per run of frames. At publish time, for each version the fleet
// runs (`labhost image publish DIR --delta-from OLD_DIR`), the transport bytes a host running that
// version lacks — exactly the ranges its own delta plan asks for (planDelta on the old image) —
// are concatenated into one file, TRANSPORT.from-ID.pack, after the image's block index (the
// pack's first `index` bytes), with its .torrent; DIR/TRANSPORT.deltas.json lists the packs and the
// transport ranges each holds. A host updating with --torrent that runs a pack's `from` version
// downloads that pack with aria2c first, takes the block index from it (checked against the signed
// manifest) and plans its delta as always; so the server sends a lab the index once, not once per
// host. Otherwise it plans with the index over HTTP and takes the pack that holds every range it
// needs, if one does. The ranges are runs of frames (updater/delta.ts): a host running the pack's
// version lacks the same frames or fewer, and finds each of its ranges inside one of the pack's.
// Any range the pack lacks, and a chunk assembled from blocks (and frames) that did not match,
// come over HTTP as before. Neither the list nor the pack is signed: the list is checked for
// bounds and names before use, the torrent like any other, the index against the signed manifest,
// and every chunk is judged against the signed manifest by the slot writer, as from HTTP.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { LabhostError, isLabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { readManifest, type Manifest } from '../image-format/manifest.ts'
import { fetchBytes, type HttpSource } from '../image-format/source.ts'
import { makeTorrent, type PublishOptions } from '../image-format/torrent.ts'
import { planDelta, type FetchRange, type RangeReader } from './delta.ts'
import { torrentDownload, type TorrentOptions } from './torrent.ts'

export const DELTA_PACKS_FORMAT = 'labhost-delta-packs/1'
/** The largest pack list read (before anything in it is checked). */
export const DELTA_PACKS_MAX_BYTES = 1 << 20

/** The largest block index a pack may start with (a 64 GiB image's: 4 KiB blocks, 8-byte hashes). */
const PACK_MAX_INDEX = 128 << 20

export const deltaPacksFileFor = (transportFile: string) => `${transportFile}.deltas.json`

const PackSchema = z
  .object({
    file: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*\.pack$/, 'a plain file name ending in .pack'),
    size: z.number().int().positive(),
    /** The image a host must run for the pack to hold its delta (for the admin; the host checks the ranges). */
    from: z.object({ version: z.string().max(64), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).strict(),
    /** The pack's first bytes are the image's block index (manifest.blocks), this many; 0: none. */
    index: z.number().int().nonnegative().max(PACK_MAX_INDEX).optional(),
    /** Transport byte ranges [start, end), ascending, apart: the pack is their bytes in this order. */
    ranges: z
      .array(z.tuple([z.number().int().nonnegative(), z.number().int().positive()]))
      .min(1)
      .max(1 << 20),
  })
  .strict()
export type DeltaPack = z.infer<typeof PackSchema>

const PacksSchema = z.object({ format: z.literal(DELTA_PACKS_FORMAT), packs: z.array(PackSchema).max(256) }).strict()

/** The pack list `text` (from `where`), checked: ranges inside the transport file, ascending, adding up to each pack's size. */
export function parseDeltaPacks(text: string, transportSize: number, where: string): DeltaPack[] {
  const bad = (why: string) =>
    new LabhostError('manifestInvalid', `${where} is not a usable delta pack list: ${why}`, 'publish the image again (labhost image publish --delta-from)')
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    throw bad((e as Error).message)
  }
  const r = PacksSchema.safeParse(json)
  if (!r.success) throw bad(r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '))
  for (const p of r.data.packs) {
    let end = 0
    let sum = 0
    for (const [s, e] of p.ranges) {
      if (s < end || e <= s || e > transportSize) throw bad(`${p.file}: range ${s}-${e} is not ascending inside the ${transportSize}-byte transport file`)
      end = e
      sum += e - s
    }
    if (sum + (p.index ?? 0) !== p.size) throw bad(`${p.file}: its index and ranges hold ${sum + (p.index ?? 0)} bytes, not ${p.size}`)
  }
  return r.data.packs
}

/** Where transport bytes [start, end) lie in `pack`, or null when one of its ranges does not hold them all. */
export function packOffset(pack: DeltaPack, start: number, end: number): number | null {
  let at = pack.index ?? 0
  for (const [s, e] of pack.ranges) {
    if (start >= s && end <= e) return at + (start - s)
    at += e - s
  }
  return null
}

/** The smallest pack that holds every one of `ranges`, or null. */
export function packFor(packs: DeltaPack[], ranges: readonly FetchRange[]): DeltaPack | null {
  const holding = packs.filter((p) => ranges.every((r) => packOffset(p, r.start, r.end) !== null))
  return holding.sort((a, b) => a.size - b.size)[0] ?? null
}

/** Transport bytes [start, end): from the pack where it holds them, else from `fallback` (HTTP). */
export function packRanges(pack: DeltaPack, file: string, fallback: RangeReader): RangeReader {
  return (start, end) => {
    const at = packOffset(pack, start, end)
    if (at === null) return fallback(start, end)
    return fs.createReadStream(file, { start: at, end: at + (end - start) - 1, highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>
  }
}

/** The published pack list of `source`'s transport file, checked; null when none is published. */
export async function fetchPackList(source: HttpSource, manifest: Manifest, log: (line: string) => void): Promise<DeltaPack[] | null> {
  const listUrl = deltaPacksFileFor(source.remote.url)
  try {
    const text = (await fetchBytes(listUrl, source.remote.fetch, { maxBytes: DELTA_PACKS_MAX_BYTES, code: 'manifestInvalid' })).toString('utf8')
    return parseDeltaPacks(text, manifest.transport.size, listUrl)
  } catch (e) {
    if (isLabhostError(e) && e.code === 'notFound') {
      log(`${listUrl}: no delta packs published; the delta comes over HTTP`)
      return null
    }
    throw e
  }
}

/** The pack made for hosts running `version` that starts with this image's block index, or null. */
export function packForVersion(packs: DeltaPack[], version: string | null, manifest: Manifest): DeltaPack | null {
  if (version === null || !manifest.blocks) return null
  return packs.find((p) => p.from.version === version && p.index === manifest.blocks!.size) ?? null
}

export interface FetchedPack {
  pack: DeltaPack
  file: string
  seconds: number
  seederPid: number | null
}

/** `pack` downloaded with aria2c (seeding on). */
export async function downloadPack(source: HttpSource, manifest: Manifest, pack: DeltaPack, o: TorrentOptions): Promise<FetchedPack> {
  const log = o.log ?? (() => {})
  const got = await torrentDownload(
    source,
    new URL(pack.file, source.remote.url).toString(),
    { name: pack.file, size: pack.size },
    `${manifest.transport.sha256.slice(0, 16)}-${pack.from.sha256.slice(0, 16)}`,
    { ...o, log },
    'update without --torrent (the delta then comes over HTTP); nothing was written',
  )
  if (fs.statSync(got.file).size !== pack.size) {
    await got.stop()
    throw new LabhostError('hashMismatch', `${got.file} is not ${pack.size} bytes`, 'publish the image again; nothing was written')
  }
  log(
    `downloaded the delta pack ${pack.file} (${pack.size} bytes) with BitTorrent in ${got.seconds.toFixed(1)} s; ${got.client} seeds it for ${o.seedMinutes} min`,
  )
  return { pack, file: got.file, seconds: got.seconds, seederPid: got.seederPid }
}

/** The block index a fetched pack starts with, if it is the signed one (else undefined, said in the log). */
export function packIndex(fetched: FetchedPack, manifest: Manifest, log: (line: string) => void): Buffer | undefined {
  const b = manifest.blocks
  if (!b || fetched.pack.index !== b.size) return undefined
  const fd = fs.openSync(fetched.file, 'r')
  try {
    const data = Buffer.alloc(b.size)
    if (fs.readSync(fd, data, 0, b.size, 0) === b.size && crypto.createHash('sha256').update(data).digest('hex') === b.sha256) return data
  } finally {
    fs.closeSync(fd)
  }
  log(`the block index in ${fetched.pack.file} does not match the signed manifest: it comes over HTTP`)
  return undefined
}

/**
 * For `labhost image publish DIR --delta-from OLD_DIR`: the pack a host running OLD_DIR's image
 * needs to reach DIR's (its delta plan against the old image, with no help from the other slot),
 * its .torrent, and the pack list beside the transport file. Returns the list's packs.
 */
export async function publishDeltaPacks(imageDir: string, oldDirs: string[], o: PublishOptions): Promise<DeltaPack[]> {
  const manifest = readManifest(path.join(imageDir, 'manifest.json'))
  const transport = path.join(imageDir, path.basename(manifest.transport.file))
  const blockIndex = manifest.blocks ? fs.readFileSync(path.join(imageDir, path.basename(manifest.blocks.file))) : undefined
  const packs: DeltaPack[] = []
  for (const oldDir of oldDirs) {
    const old = readManifest(path.join(oldDir, 'manifest.json'))
    // the old image as its slot holds it: decompressed beside the new one (a file system that
    // takes direct I/O, unlike a tmpfs)
    const work = fs.mkdtempSync(path.join(imageDir, '.delta-'))
    try {
      const raw = path.join(work, 'old.img')
      await run('zstd', ['-d', '-q', '-f', path.join(oldDir, path.basename(old.transport.file)), '-o', raw])
      const plan = await planDelta(manifest, raw, { active: { firstByte: 0, bytes: old.image.size }, target: { firstByte: 0, bytes: 0 } }, blockIndex)
      const file = `${path.basename(transport)}.from-${old.image.sha256.slice(0, 16)}.pack`
      const out = path.join(imageDir, file)
      const fd = fs.openSync(transport, 'r')
      const wfd = fs.openSync(out, 'w')
      try {
        // the block index first: a host running the old version plans its delta with it
        if (blockIndex) fs.writeSync(wfd, blockIndex)
        const buf = Buffer.alloc(1 << 20)
        for (const r of plan.ranges)
          for (let at = r.start; at < r.end;) {
            const n = fs.readSync(fd, buf, 0, Math.min(buf.length, r.end - at), at)
            if (n === 0) throw new LabhostError('io', `${transport} ends at ${at}`, 'build the image again')
            fs.writeSync(wfd, buf, 0, n)
            at += n
          }
      } finally {
        fs.closeSync(fd)
        fs.closeSync(wfd)
      }
      await makeTorrent(out, o)
      packs.push({
        file,
        size: fs.statSync(out).size,
        from: { version: old.version, sha256: old.image.sha256 },
        index: blockIndex?.length ?? 0,
        ranges: plan.ranges.map((r) => [r.start, r.end] as [number, number]),
      })
    } finally {
      fs.rmSync(work, { recursive: true, force: true })
    }
  }
  fs.writeFileSync(deltaPacksFileFor(transport), JSON.stringify({ format: DELTA_PACKS_FORMAT, packs }, null, 2) + '\n')
  return packs
}

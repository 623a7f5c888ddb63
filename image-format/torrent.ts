// labhost image publish: a BitTorrent metainfo file for an image's transport copy, next to its
// signed manifest (root.img.zst → root.img.zst.torrent), made by mktorrent. The torrent is not
// signed and need not be: a host checks what it downloaded against the signed manifest.
// labhost image seed: the first seeder of a published image (aria2c), after checking the file.
import fs from 'node:fs'
import path from 'node:path'
import { bdecode, bencode, BencodeError, isDict, type BValue } from '../lib/bencode.ts'
import { LabhostError } from '../lib/errors.ts'
import { run, start, toolError } from '../lib/exec.ts'
import { matchesPart, readManifest } from './manifest.ts'

export interface PublishOptions {
  /** Announce URLs (http://tracker:6969/announce); the first is the primary. */
  trackers: string[]
  /** HTTP URLs of the transport file that peers may also download from (BEP 19 web seeds). */
  webSeeds?: string[]
  /** log2 of the piece size; default pieceSizeLog2For(the file's size). */
  pieceSizeLog2?: number
}

/**
 * The piece size for a file: about a thousand pieces, from 32 KiB to 1 MiB. A piece is what a
 * peer can pass on once it has it whole and checked, so a small file (a delta pack of a few MiB)
 * in 1 MiB pieces gives a lab's hosts a handful of pieces to trade, and most wait for the one host
 * that fetches from the server; files of 1 GiB and more keep 1 MiB pieces (a short .torrent).
 */
export function pieceSizeLog2For(size: number): number {
  return Math.min(20, Math.max(15, Math.ceil(Math.log2(Math.max(1, size) / 1024))))
}

export interface Published {
  torrentFile: string
  infoHash: string
  pieces: number
}

export const torrentFileFor = (transportFile: string): string => `${transportFile}.torrent`

/**
 * The largest .torrent accepted. `labhost image publish` makes pieces of at most 1 MiB, 20 bytes of
 * SHA-1 each: 64 GiB of transport file make a 1.25 MiB torrent (5 MiB with 256 KiB pieces).
 */
export const TORRENT_MAX_BYTES = 8 << 20

/**
 * Throws unless the .torrent `data` (from `where`) describes exactly one file, named `want.name`
 * with `want.size` bytes, in pieces that add up: the torrent is not signed, and the names in it
 * are what aria2c creates in its directory. BitTorrent v2 torrents (a file tree) are refused too:
 * labhost publishes v1 ones, and a hybrid could name other files in its v2 half.
 */
export function checkTorrent(data: Buffer, want: { name: string; size: number }, where: string): void {
  const refuse = (problem: string) =>
    new LabhostError(
      'torrentInvalid',
      `${where} ${problem}; labhost downloads only ${want.name} of ${want.size} bytes (the signed transport file)`,
      'publish the image again (labhost image publish DIR --tracker URL), or update over HTTP without --torrent; nothing was written',
    )
  let root: BValue
  try {
    root = bdecode(data)
  } catch (e) {
    if (!(e instanceof BencodeError)) throw e
    throw new LabhostError(
      'torrentInvalid',
      `${where} is not a torrent file (${e.message})`,
      'publish the image again (labhost image publish DIR --tracker URL), or update over HTTP without --torrent; nothing was written',
      {},
      { cause: e },
    )
  }
  const info = isDict(root) ? root.get('info') : undefined
  if (!isDict(info)) throw refuse('has no info dictionary')
  const files = info.get('files')
  if (files !== undefined) throw refuse(`describes ${Array.isArray(files) ? files.length : 'a list of'} files`)
  if (info.has('file tree') || info.has('meta version')) throw refuse('is a BitTorrent v2 torrent')
  for (const key of ['name', 'name.utf-8']) {
    const name = info.get(key)
    if (key === 'name.utf-8' && name === undefined) continue
    if (!Buffer.isBuffer(name)) throw refuse(`has no ${key}`)
    if (!name.equals(Buffer.from(want.name))) throw refuse(`names its file ${JSON.stringify(name.toString('utf8'))}`)
  }
  const length = info.get('length')
  if (length !== want.size) throw refuse(`gives its file ${typeof length === 'number' ? length : 'no'} bytes`)
  const pieceLength = info.get('piece length')
  const pieces = info.get('pieces')
  if (typeof pieceLength !== 'number' || pieceLength < 1 || !Buffer.isBuffer(pieces) || pieces.length !== 20 * Math.ceil(want.size / pieceLength)) {
    throw refuse('has pieces that do not add up to its file')
  }
}

/** The piece length and the pieces' SHA-1 hashes (20 bytes each, in order) of a .torrent that passed checkTorrent. */
export function torrentPieces(data: Buffer): { pieceLength: number; hashes: Buffer } {
  const root = bdecode(data)
  const info = isDict(root) ? root.get('info') : undefined
  const pieceLength = isDict(info) ? info.get('piece length') : undefined
  const hashes = isDict(info) ? info.get('pieces') : undefined
  if (typeof pieceLength !== 'number' || pieceLength < 1 || !Buffer.isBuffer(hashes)) throw new Error('torrentPieces: a .torrent not checked by checkTorrent')
  return { pieceLength, hashes }
}

/** Part `index` of `of` (1-based) of a host's share of a file: `--upstream-part index/of`. */
export interface UpstreamPart {
  index: number
  of: number
}

/**
 * The bytes [start, end) of part `p` of a file of `size` bytes in pieces of `pieceLength`: the
 * pieces split as evenly as whole pieces allow, in order, so that the parts of 1/N … N/N are apart
 * and together the whole file (a part may be empty when there are more parts than pieces).
 */
export function upstreamPartRange(size: number, pieceLength: number, p: UpstreamPart): { start: number; end: number } {
  const pieces = Math.ceil(size / pieceLength)
  const first = Math.floor(((p.index - 1) * pieces) / p.of)
  const last = Math.floor((p.index * pieces) / p.of)
  return { start: Math.min(size, first * pieceLength), end: Math.min(size, last * pieceLength) }
}

/** The trackers (announce, then announce-list in order, each once) and web seeds (url-list) a .torrent names; http(s) and udp only. */
export function torrentSources(data: Buffer): { trackers: string[]; webSeeds: string[] } {
  const root = bdecode(data)
  if (!isDict(root)) return { trackers: [], webSeeds: [] }
  const strings = (v: BValue | undefined): string[] => (Buffer.isBuffer(v) ? [v.toString('utf8')] : Array.isArray(v) ? v.flatMap(strings) : [])
  // unsigned: only the kinds of URL aria2c should follow (no file://, no magnet, nothing else)
  const trackers = [...new Set([...strings(root.get('announce')), ...strings(root.get('announce-list'))])].filter((u) => /^(https?|udp):\/\/[^/]/.test(u))
  return { trackers, webSeeds: [...new Set(strings(root.get('url-list')))].filter((u) => /^https?:\/\/[^/]/.test(u)) }
}

/**
 * Which peers a host's aria2c uses (`--peers` of vm-image pull and update), for labs of several
 * buildings with slow uplinks, or a lab whose server should send about one copy:
 *   all       any peer: the torrent's trackers and web seeds, local peer discovery, peer exchange;
 *   building  only the peers of this host's subnet (Local Peer Discovery: multicast stays in the
 *             building) and the trackers given (the building's own); never the server, no peer exchange;
 *   upstream  a host that brings the file into its building: the torrent's trackers and the server
 *             (a BEP 19 web seed: the server stays plain static files) as well as its building's
 *             peers, which fetch from it; no peer exchange (its outside peers are not handed on).
 */
export const PEER_PARTS = ['all', 'building', 'upstream'] as const
export type PeerPart = (typeof PEER_PARTS)[number]

/** The part a host takes, as aria2c's sources; `server` is the file's URL on the image server, added as a web seed (null: none but the torrent's). */
export function peerSources(part: PeerPart, own: { trackers: string[]; webSeeds: string[] }, server: string | null, trackers: string[]) {
  if (part === 'building') return { trackers: [...new Set(trackers)], webSeeds: [], lpd: true, peerExchange: false }
  const webSeeds = [...new Set([...own.webSeeds, ...(server === null ? [] : [server])])]
  const sources = { trackers: [...new Set([...own.trackers, ...trackers])], webSeeds, lpd: true }
  return { ...sources, peerExchange: part === 'all' }
}

/** For the log: the part and its sources. */
export const describeSources = (part: PeerPart, s: ReturnType<typeof peerSources>) =>
  `peers: ${part} (${s.trackers.length ? `trackers ${s.trackers.join(' ')}` : 'no tracker'}; ${s.webSeeds.length ? `web seeds ${s.webSeeds.join(' ')}` : 'no web seed'}; local peer discovery${s.peerExchange ? '; peer exchange' : ''})`

/**
 * The checked .torrent `data` with exactly these sources: its info dictionary is kept byte for
 * byte (so is its info hash: it is the same swarm), announce, announce-list and url-list say
 * `trackers` and `webSeeds`, and nothing else of the top level stays (a comment, DHT nodes).
 */
export function sourcedTorrent(data: Buffer, s: { trackers: string[]; webSeeds: string[] }): Buffer {
  const root = bdecode(data)
  const info = isDict(root) ? root.get('info') : undefined
  if (!isDict(info)) throw new LabhostError('torrentInvalid', 'the torrent has no info dictionary', 'publish it again; nothing was written')
  const out = new Map<string, BValue>([['info', info]])
  if (s.trackers.length) {
    out.set('announce', Buffer.from(s.trackers[0]!))
    out.set(
      'announce-list',
      s.trackers.map((t) => [Buffer.from(t)]),
    )
  }
  if (s.webSeeds.length)
    out.set(
      'url-list',
      s.webSeeds.map((w) => Buffer.from(w)),
    )
  return bencode(out)
}

/** Info hash (hex) of a .torrent file, as aria2c reads it. */
export async function infoHash(torrentFile: string): Promise<string> {
  const { stdout } = await run('aria2c', ['--show-files=true', torrentFile])
  const m = /Info Hash:\s*([0-9a-f]{40})/i.exec(stdout)
  if (!m) throw new LabhostError('manifestInvalid', `${torrentFile} is not a torrent aria2c can read`, 'make it again with `labhost image publish`')
  return m[1]!.toLowerCase()
}

export async function publishImage(imageDir: string, o: PublishOptions): Promise<Published> {
  if (!o.trackers.length)
    throw new LabhostError('usage', 'labhost image publish needs at least one --tracker URL', 'e.g. --tracker http://10.0.0.1:6969/announce')
  const manifest = readManifest(path.join(imageDir, 'manifest.json'))
  const transport = path.join(imageDir, path.basename(manifest.transport.file))
  if (!fs.existsSync(transport) || fs.statSync(transport).size !== manifest.transport.size) {
    throw new LabhostError(
      'notFound',
      `${transport} is missing or not the size its manifest says`,
      'publish a complete image directory (labhost image build --out DIR)',
    )
  }
  return makeTorrent(transport, o)
}

/** `file`.torrent beside `file` (mktorrent), for root and VM base images alike. */
export async function makeTorrent(file: string, o: PublishOptions): Promise<Published> {
  for (const u of [...o.trackers, ...(o.webSeeds ?? [])]) {
    if (!/^(https?|udp):\/\/[^/]/.test(u))
      throw new LabhostError(
        'usage',
        `${u} is not a tracker or web seed URL`,
        'use http://HOST:PORT/announce (or udp://) for trackers and http(s):// for web seeds',
      )
  }
  const out = torrentFileFor(file)
  fs.rmSync(out, { force: true })
  const pieceLog2 = o.pieceSizeLog2 ?? pieceSizeLog2For(fs.statSync(file).size)
  // -d: no creation date, so the same image and trackers give the same torrent (and info hash)
  await run('mktorrent', [
    '-d',
    '-l',
    String(pieceLog2),
    ...o.trackers.flatMap((t) => ['-a', t]),
    ...(o.webSeeds ?? []).flatMap((w) => ['-w', w]),
    '-o',
    out,
    file,
  ])
  return { torrentFile: out, infoHash: await infoHash(out), pieces: Math.ceil(fs.statSync(file).size / 2 ** pieceLog2) }
}

export interface SeedOptions {
  /** aria2c's --max-overall-upload-limit (bytes per second, K or M suffix); none by default. */
  uploadLimit?: string
  /** Seconds between announces (aria2c's --bt-tracker-interval); the tracker decides by default. */
  trackerIntervalSeconds?: number
  /** Ends the seeder (SIGTERM to aria2c). */
  signal?: AbortSignal
  log?: (line: string) => void
}

/**
 * Seed a published image directory until `signal` aborts: its transport file is checked against
 * the signed manifest first (a seeder of other bytes would only waste the lab's bandwidth), then
 * aria2c seeds it — DHT off, Local Peer Discovery on, no ratio limit.
 */
export async function seedImage(imageDir: string, o: SeedOptions = {}): Promise<{ seconds: number }> {
  const manifest = readManifest(path.join(imageDir, 'manifest.json'))
  const transport = path.join(imageDir, path.basename(manifest.transport.file))
  const torrent = torrentFileFor(transport)
  if (!fs.existsSync(torrent)) throw new LabhostError('notFound', `${torrent} is missing`, 'make it first: labhost image publish DIR --tracker URL')
  // aria2c creates and writes what the torrent names, in the image directory
  checkTorrent(fs.readFileSync(torrent), { name: path.basename(transport), size: manifest.transport.size }, torrent)
  const h = fs.existsSync(transport) ? matchesPart(transport, manifest.transport) : null
  if (!h?.ok) {
    throw new LabhostError(
      'hashMismatch',
      `${transport} is not the transport file its signed manifest names${h ? ` (size ${h.size} vs ${manifest.transport.size})` : ' (missing)'}`,
      'copy the whole image directory again from the build; nothing is seeded',
    )
  }
  const args = [
    `--dir=${path.dirname(transport)}`,
    '--seed-ratio=0.0',
    '--check-integrity=true',
    '--enable-dht=false',
    '--enable-dht6=false',
    '--bt-enable-lpd=true',
    ...(o.trackerIntervalSeconds ? [`--bt-tracker-interval=${o.trackerIntervalSeconds}`] : []),
    ...(o.uploadLimit ? [`--max-overall-upload-limit=${o.uploadLimit}`] : []),
    '--summary-interval=0',
    '--console-log-level=warn',
    torrent,
  ]
  const started = Date.now()
  o.log?.(`seeding ${transport} (${await infoHash(torrent)})${o.uploadLimit ? `, uploads capped at ${o.uploadLimit}/s` : ''}`)
  // its console lines go to stderr: stdout stays the command's result (--json)
  const seeder = start('aria2c', args, { stdout: 2, stderr: 2 })
  const stop = () => seeder.process.kill('SIGTERM')
  o.signal?.addEventListener('abort', stop, { once: true })
  const r = await seeder.done.finally(() => o.signal?.removeEventListener('abort', stop))
  if (!o.signal?.aborted && r.exitCode !== 0) {
    const failed = toolError('aria2c', args, r, { hint: 'see its messages above; is the BitTorrent port free and the tracker reachable?' })
    if (failed.details.notInstalled) throw failed
    throw new LabhostError('toolFailed', `aria2c stopped seeding ${torrent} (exit ${r.exitCode ?? r.signal ?? r.startError})`, failed.hint, failed.details, {
      cause: failed,
    })
  }
  return { seconds: (Date.now() - started) / 1000 }
}

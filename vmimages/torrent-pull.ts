// A VM base image over BitTorrent (the default of `labhost vm-image pull URL`): the .torrent that
// `labhost vm-image publish` wrote beside the base, checked (one file: the signed name and size),
// with the sources this host may use (building-aware, below); the client (labhost's libtorrent one
// where python3-libtorrent is installed, else aria2c: image-format/bt-clients.ts) downloads straight onto the
// backing partition — BACKING/.torrent/ID/NAME.qcow2, resumed after a cut — and seeds it on for a
// while. The file is then read back and every chunk checked against the signed manifest, and
// hard-linked to the pull's temporary name: the base is renamed into place from there, while
// the client seeds from its own link (its after-seeding hook removes that directory).
//
// Building-aware (a lab of several buildings whose uplinks are slow): each host takes one of
// three parts —
//   all       the torrent's trackers, the image server as a web seed (BEP 19: the server stays
//             plain static files), Local Peer Discovery and peer exchange: any peer anywhere;
//   building  only the peers of this host's subnet (Local Peer Discovery: multicast stays in the
//             building) and any --tracker given (the building's own); no server, no peer exchange;
//   upstream  a host that brings the image into its building: the torrent's trackers and the
//             server as well as its building's peers, which fetch from it; no peer exchange (so
//             its outside peers are not handed on to the building).
// With one or two upstream hosts per building, the building's uplink carries about one copy.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError, isLabhostError } from '../lib/errors.ts'
import { syncDir } from '../lib/durable.ts'
import { describeSources, peerSources, sourcedTorrent, torrentSources, type PeerPart } from '../image-format/torrent.ts'
import { aria2Download, fetchTorrent, PID_FILE, shellQuote, type Aria2Options } from '../image-format/torrent-download.ts'
import { DEFAULT_BT_CLIENT } from '../image-format/bt-clients.ts'
import { verifyFile, type Downloaded } from './download.ts'
import type { BaseSource } from './source.ts'

export interface VmTorrentOptions extends Aria2Options {
  peers: PeerPart
  /** Trackers announced to besides the torrent's (building: instead of them), e.g. the building's own. */
  trackers: string[]
}

export const DEFAULT_VM_TORRENT: VmTorrentOptions = {
  client: DEFAULT_BT_CLIENT,
  peers: 'all',
  trackers: [],
  seedMinutes: 60,
  seedRatio: 0,
  trackerIntervalSeconds: 60,
  stallSeconds: 600,
}

/** Where the BitTorrent client keeps its downloads on the backing partition (not a base: scanBases reads only the top level). */
export const torrentRoot = (backingDir: string) => path.join(path.resolve(backingDir), '.torrent')

/** A pid file's BitTorrent client, if it still runs: ended (SIGTERM, then SIGKILL) before its files are touched. */
async function endSeeder(pidFile: string): Promise<void> {
  let pid: number
  try {
    pid = Number(fs.readFileSync(pidFile, 'utf8'))
  } catch {
    return
  }
  const alive = () => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path.dirname(pidFile))
    } catch {
      return false
    }
  }
  if (!Number.isInteger(pid) || pid <= 1 || !alive()) return
  process.kill(pid, 'SIGTERM')
  for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100))
  if (alive()) process.kill(pid, 'SIGKILL')
}

/**
 * Remove the BitTorrent downloads whose id is not in `keep` (their seeders ended first): those of
 * bases since replaced. The caller keeps the current bases' (they go on seeding for the lab).
 */
export async function clearTorrents(backingDir: string, keep: ReadonlySet<string>): Promise<void> {
  const root = torrentRoot(backingDir)
  if (!fs.existsSync(root)) return
  for (const n of fs.readdirSync(root)) {
    const id = n.replace(/\.control$/, '')
    if (keep.has(id)) continue
    await endSeeder(path.join(root, `${id}.control`, PID_FILE))
    fs.rmSync(path.join(root, n), { recursive: true, force: true })
  }
}

/** Bytes an interrupted BitTorrent pull of `id` left on the disk. */
export function torrentPartialBytes(backingDir: string, id: string, name: string): number {
  const f = path.join(torrentRoot(backingDir), id, name)
  return fs.existsSync(f) ? fs.statSync(f).blocks * 512 : 0
}

export const torrentIdOf = (sha256: string) => sha256.slice(0, 16)

/**
 * The published .torrent of `source` (null when none is published: the caller pulls over HTTP),
 * checked against the signed manifest.
 */
export async function fetchBaseTorrent(source: BaseSource): Promise<Buffer | null> {
  if (!source.url) return null
  try {
    // the client creates what the torrent names: exactly the signed file, with its size
    return await fetchTorrent(`${source.url}.torrent`, source.fetch, { name: source.manifest.image.file, size: source.manifest.image.size })
  } catch (e) {
    if (isLabhostError(e) && e.code === 'notFound') return null
    throw e
  }
}

/**
 * Download `source`'s base with BitTorrent onto the backing partition and link it to `tempFile`,
 * every chunk checked against the signed manifest. Throws hashMismatch (a torrent of other bytes:
 * its download is removed) or downloadFailed (no progress: the partial download stays for the next pull).
 */
export async function torrentPull(source: BaseSource, torrent: Buffer, backingDir: string, tempFile: string, o: VmTorrentOptions): Promise<Downloaded> {
  const m = source.manifest
  const started = Date.now()
  const id = torrentIdOf(m.image.sha256)
  const root = torrentRoot(backingDir)
  fs.mkdirSync(root, { recursive: true, mode: 0o700 })
  const dir = path.join(root, id)
  const control = path.join(root, `${id}.control`)
  // a pull killed before leaves its client running (a session of its own): one writer per file
  await endSeeder(path.join(control, PID_FILE))
  const resumed = torrentPartialBytes(backingDir, id, m.image.file)
  // a pull killed after the client had every piece: the file is whole already (judged as below)
  const have = path.join(dir, m.image.file)
  if (resumed >= m.image.size && fs.statSync(have).size === m.image.size) {
    const v = verifyFile(have, m)
    if (v.good === m.image.size && v.sha256 === m.image.sha256) {
      o.log?.(`${have} is whole already (an earlier pull's download): not downloaded again`)
      fs.rmSync(tempFile, { force: true })
      fs.linkSync(have, tempFile)
      syncDir(path.dirname(tempFile))
      return { method: 'torrent', client: null, seederPid: null, resumedBytes: m.image.size, downloadedBytes: 0, seconds: (Date.now() - started) / 1000 }
    }
  }
  const s = peerSources(o.peers, torrentSources(torrent), source.url!, o.trackers)
  o.log?.(describeSources(o.peers, s))
  const got = await aria2Download({
    ...o,
    torrent: sourcedTorrent(torrent, s),
    name: m.image.file,
    size: m.image.size,
    dir,
    control,
    lpd: s.lpd,
    peerExchange: s.peerExchange,
    caFile: source.fetch.caFile,
    afterSeeding: `rm -rf ${shellQuote(dir)} ${shellQuote(control)}`,
    what: `${source.url}.torrent`,
    otherwise: 'pull over HTTP (--http); the bytes downloaded so far stay for the next pull, nothing was installed',
  })
  const v = verifyFile(got.file, m)
  if (v.good !== m.image.size || v.sha256 !== m.image.sha256) {
    await got.stop()
    for (const d of [dir, control]) fs.rmSync(d, { recursive: true, force: true })
    if (fs.readdirSync(root).length === 0) fs.rmdirSync(root)
    throw new LabhostError(
      'hashMismatch',
      `${source.url}.torrent delivered other bytes than the signed ${m.name} ${m.version}: ${v.good === m.image.size ? 'the whole file differs' : `chunk ${v.good / m.image.chunkSize} (from byte ${v.good}) differs`}`,
      'the .torrent beside the base belongs to another file: publish the base again, or pull over HTTP (--http); nothing was installed',
    )
  }
  fs.rmSync(tempFile, { force: true })
  fs.linkSync(got.file, tempFile)
  syncDir(path.dirname(tempFile))
  o.log?.(`downloaded ${m.image.file} with BitTorrent in ${got.seconds.toFixed(1)} s; ${got.client} (pid ${got.seederPid}) seeds it for ${o.seedMinutes} min`)
  return {
    method: 'torrent',
    client: got.client,
    seederPid: got.seederPid,
    resumedBytes: Math.min(resumed, m.image.size),
    downloadedBytes: m.image.size - Math.min(resumed, m.image.size),
    seconds: (Date.now() - started) / 1000,
  }
}

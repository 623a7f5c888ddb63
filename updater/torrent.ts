// The transport file over BitTorrent: aria2c downloads the .torrent published beside the signed
// manifest (labhost image publish) from the lab's peers, then keeps seeding it for a while after
// labhost is done, so the next hosts fetch from this one instead of the server. The download
// lands in RAM (/run by default: an update never writes /persistent) and is checked against the
// signed manifest before a byte of it is written; the slot writer then checks every chunk again.
//
// Peers in the same lab come first where aria2c allows it: Local Peer Discovery (multicast on the
// lab's subnet) finds them without the tracker, and DHT stays off, so peers come from the tracker
// and the LAN only (image-format/torrent-download.ts runs aria2c, or with --bt-client libtorrent
// labhost's libtorrent client, which unchokes every peer of the lab). With --peers a lab's server
// sends about one copy: its one upstream host fetches from the server and the others only from the
// lab, until no peer of the lab has a byte to give (torrentDownload below).
import path from 'node:path'
import { LabhostError, isLabhostError } from '../lib/errors.ts'
import { matchesPart, type Manifest } from '../image-format/manifest.ts'
import { aria2Download, fetchTorrent, type Aria2Options, type Aria2Result } from '../image-format/torrent-download.ts'
import { describeSources, peerSources, sourcedTorrent, torrentSources, type PeerPart, type UpstreamPart } from '../image-format/torrent.ts'
import { fetchUpstreamPart } from './upstream-part.ts'
import type { HttpSource, UpdateSource } from '../image-format/source.ts'
import { DEFAULT_BT_CLIENT } from '../image-format/bt-clients.ts'

export interface TorrentOptions extends Aria2Options {
  /** Download (and seeding) directory; default /run/labhost/torrent (RAM, gone at reboot). */
  dir: string
  /**
   * Which peers (image-format/torrent.ts): `all` takes the torrent as published; `upstream` adds
   * the server as a web seed and keeps its peers to itself (the lab's one or two hosts that fetch
   * from the server); `building` uses only the lab's peers and `trackers`, and turns to the server
   * only when no peer had a byte to give for the stall timeout (it becomes the upstream).
   */
  peers: PeerPart
  /** Trackers announced to besides the torrent's (with `building`: instead of them), e.g. the lab's own. */
  trackers: string[]
  /**
   * With `upstream`: this host is one of a lab's N upstream hosts and fetches only part K of N
   * from the server (upstream-part.ts), the rest from the lab; none: the whole file, as a web seed.
   */
  upstreamPart?: UpstreamPart
}

export const DEFAULT_TORRENT: TorrentOptions = {
  client: DEFAULT_BT_CLIENT,
  dir: '/run/labhost/torrent',
  peers: 'all',
  trackers: [],
  seedMinutes: 30,
  seedRatio: 0,
  trackerIntervalSeconds: 60,
  stallSeconds: 300,
}

/** The URL of the .torrent published for a transport file URL. */
export const torrentUrlFor = (transportUrl: string): string => `${transportUrl}.torrent`

/**
 * `want` — the signed transport file, or a delta pack (delta-pack.ts) — downloaded with aria2c from
 * the .torrent beside `fileUrl` (checked first; its sources as o.peers says) into o.dir/ID; aria2c
 * seeds on. One directory per file (ID): a new image never meets the pieces of another; the
 * .torrent, the completion hook, its marker and aria2c's log live in a directory beside it that
 * only root may enter, where no torrent's file name can reach.
 */
export async function torrentDownload(
  source: Pick<HttpSource, 'remote' | 'stats'>,
  fileUrl: string,
  want: { name: string; size: number },
  id: string,
  o: TorrentOptions,
  otherwise: string,
): Promise<Aria2Result> {
  const { remote } = source
  const torrentUrl = torrentUrlFor(fileUrl)
  const torrent = await fetchTorrent(torrentUrl, remote.fetch, want)
  const run = (part: PeerPart, stallSeconds: number, webSeeds = true) => {
    const all = peerSources(part, torrentSources(torrent), part === 'all' ? null : fileUrl, o.trackers)
    const s = webSeeds ? all : { ...all, webSeeds: [] }
    o.log?.(describeSources(part, s))
    return aria2Download({
      ...o,
      stallSeconds,
      torrent: sourcedTorrent(torrent, s),
      ...want,
      dir: path.join(o.dir, id),
      control: path.join(o.dir, `${id}.control`),
      lpd: s.lpd,
      peerExchange: s.peerExchange,
      caFile: remote.fetch.caFile,
      what: torrentUrl,
      otherwise,
    })
  }
  const part = o.peers === 'upstream' && o.upstreamPart && o.upstreamPart.of > 1 ? o.upstreamPart : undefined
  if (o.peers !== 'building' && !part) return run(o.peers, o.stallSeconds)
  if (part) {
    // one of the lab's N upstream hosts: its part from the server, then the rest from the lab
    // (the torrent's trackers too, where the other parts' hosts are; no web seed)
    const bytes = await fetchUpstreamPart(remote, fileUrl, torrent, want, part, path.join(o.dir, id), source.stats, o.log ?? (() => {}))
    if (bytes) o.log?.(`fetched part ${part.index} of ${part.of} of ${want.name} from the server (${bytes} bytes); the rest comes from the lab`)
  }
  // A lab's hosts wait for their peers; when none has a byte to give for the timeout (and up to
  // half of it more, at random, so that the hosts of a lab without an upstream do not all turn to
  // the server at once), this host fetches from the server as well and becomes the lab's upstream:
  // one host per lab pays the copy, the others get their pieces from it. aria2c resumes the
  // pieces it has.
  try {
    const stall = Math.round(o.stallSeconds * (1 + Math.random() / 2))
    return await (part ? run('upstream', stall, false) : run('building', stall))
  } catch (e) {
    if (!(isLabhostError(e) && e.details.stalled)) throw e
    o.log?.(`no peer of this lab had ${want.name} to give: fetching it from the server too, as the lab's upstream`)
    return run('upstream', o.stallSeconds)
  }
}

/**
 * Download the transport file of `source` (an http source) with aria2c and return it as a local
 * source. Checks size and SHA-256 against the signed manifest; leaves aria2c seeding.
 */
export async function torrentSource(source: HttpSource, manifest: Manifest, o: TorrentOptions): Promise<UpdateSource> {
  const { remote } = source
  const log = o.log ?? (() => {})
  const torrentUrl = torrentUrlFor(remote.url)
  const name = path.basename(manifest.transport.file)
  const got = await torrentDownload(
    source,
    remote.url,
    { name, size: manifest.transport.size },
    manifest.transport.sha256.slice(0, 16),
    o,
    'update over HTTP without --torrent; nothing was written',
  )
  const { file, seconds } = got
  const h = matchesPart(file, manifest.transport)
  if (!h.ok) {
    await got.stop()
    throw new LabhostError(
      'hashMismatch',
      `the file the torrent delivered (${file}) is not the signed transport file (size ${h.size} vs ${manifest.transport.size})`,
      'the .torrent beside the manifest belongs to another image: publish it again (labhost image publish); nothing was written',
    )
  }
  log(`downloaded ${name} with BitTorrent in ${seconds.toFixed(1)} s; ${got.client} (pid ${got.seederPid}) seeds it for ${o.seedMinutes} min`)
  source.stats.torrent = { url: torrentUrl, file, seconds, seederPid: got.seederPid, seedMinutes: o.seedMinutes }
  return {
    kind: 'torrent',
    manifestWhere: source.manifestWhere,
    manifest: source.manifest,
    stats: source.stats,
    remote,
    transportWhere: `${file} (BitTorrent)`,
    file,
  }
}

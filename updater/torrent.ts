// The transport file over BitTorrent: aria2c downloads the .torrent published beside the signed
// manifest (labhost image publish) from the lab's peers, then keeps seeding it for a while after
// labhost is done, so the next hosts fetch from this one instead of the server. The download
// lands in RAM (/run by default: an update never writes /persistent) and is checked against the
// signed manifest before a byte of it is written; the slot writer then checks every chunk again.
//
// Peers in the same lab come first where aria2c allows it: Local Peer Discovery (multicast on the
// lab's subnet) finds them without the tracker, and DHT stays off, so peers come from the tracker
// and the LAN only (image-format/torrent-download.ts runs aria2c).
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { matchesPart, type Manifest } from '../image-format/manifest.ts'
import { aria2Download, fetchTorrent, type Aria2Options, type Aria2Result } from '../image-format/torrent-download.ts'
import type { HttpSource, Remote, UpdateSource } from '../image-format/source.ts'

export interface TorrentOptions extends Aria2Options {
  /** Download (and seeding) directory; default /run/labhost/torrent (RAM, gone at reboot). */
  dir: string
}

export const DEFAULT_TORRENT: TorrentOptions = { dir: '/run/labhost/torrent', seedMinutes: 30, seedRatio: 0, trackerIntervalSeconds: 60, stallSeconds: 300 }

/** The URL of the .torrent published for a transport file URL. */
export const torrentUrlFor = (transportUrl: string): string => `${transportUrl}.torrent`

/**
 * `want` — the signed transport file, or a delta pack (delta-pack.ts) — downloaded with aria2c from
 * the .torrent at `torrentUrl` (checked first) into o.dir/ID; aria2c seeds on. One directory per
 * file (ID): a new image never meets the pieces of another; the .torrent, the completion hook, its
 * marker and aria2c's log live in a directory beside it that only root may enter, where no
 * torrent's file name can reach.
 */
export async function torrentDownload(
  remote: Remote,
  torrentUrl: string,
  want: { name: string; size: number },
  id: string,
  o: TorrentOptions,
  otherwise: string,
): Promise<Aria2Result> {
  return aria2Download({
    ...o,
    torrent: await fetchTorrent(torrentUrl, remote.fetch, want),
    ...want,
    dir: path.join(o.dir, id),
    control: path.join(o.dir, `${id}.control`),
    lpd: true,
    peerExchange: true,
    caFile: remote.fetch.caFile,
    what: torrentUrl,
    otherwise,
  })
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
    remote,
    torrentUrl,
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
  log(`downloaded ${name} with BitTorrent in ${seconds.toFixed(1)} s; aria2c (pid ${got.seederPid}) seeds it for ${o.seedMinutes} min`)
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

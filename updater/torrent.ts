// The transport file over BitTorrent: aria2c downloads the .torrent published beside the signed
// manifest (labhost image publish) from the lab's peers, then keeps seeding it for a while after
// labhost is done, so the next hosts fetch from this one instead of the server. The download
// lands in RAM (/run by default: an update never writes /persistent) and is checked against the
// signed manifest before a byte of it is written; the slot writer then checks every chunk again.
//
// Peers in the same lab come first where aria2c allows it: Local Peer Discovery (multicast on the
// lab's subnet) finds them without the tracker, and DHT stays off, so peers come from the tracker
// and the LAN only.
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { LabhostError } from '../lib/errors.ts'
import { start, toolError, type RunOutcome } from '../lib/exec.ts'
import { matchesPart, type Manifest } from '../image-format/manifest.ts'
import { checkTorrent, TORRENT_MAX_BYTES } from '../image-format/torrent.ts'
import { fetchBytes, type HttpSource, type UpdateSource } from '../image-format/source.ts'

export interface TorrentOptions {
  /** Download (and seeding) directory; default /run/labhost/torrent (RAM, gone at reboot). */
  dir: string
  /** Minutes aria2c goes on seeding after the download completed (it outlives labhost; a reboot ends it). */
  seedMinutes: number
  /** Also stop seeding at this upload/download ratio; 0: only the time counts. */
  seedRatio: number
  /** Seconds between announces to the tracker; 0: what the tracker asks for. */
  trackerIntervalSeconds: number
  /** Give up when no byte arrived for this long. */
  stallSeconds: number
  /** Download rate limit in aria2c's notation (`5M`: 5 MiB/s); none by default. */
  downloadLimit?: string
  log?: (line: string) => void
}

export const DEFAULT_TORRENT: TorrentOptions = { dir: '/run/labhost/torrent', seedMinutes: 30, seedRatio: 0, trackerIntervalSeconds: 60, stallSeconds: 300 }

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`

/** The URL of the .torrent published for a transport file URL. */
export const torrentUrlFor = (transportUrl: string): string => `${transportUrl}.torrent`

function tailOf(file: string, lines = 4): string {
  try {
    return fs
      .readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .filter((l) => /error|exception|fail/i.test(l))
      .slice(-lines)
      .join(' | ')
  } catch {
    return ''
  }
}

/**
 * Download the transport file of `source` (an http source) with aria2c and return it as a local
 * source. Checks size and SHA-256 against the signed manifest; leaves aria2c seeding.
 */
export async function torrentSource(source: HttpSource, manifest: Manifest, o: TorrentOptions): Promise<UpdateSource> {
  const { remote } = source
  const log = o.log ?? (() => {})
  const started = Date.now()
  const torrentUrl = torrentUrlFor(remote.url)
  const name = path.basename(manifest.transport.file)
  // The torrent is not signed, and aria2c creates whatever files it names: it must name exactly
  // the signed transport file, with its size, before aria2c sees it.
  const torrent = await fetchBytes(torrentUrl, remote.fetch, { maxBytes: TORRENT_MAX_BYTES, code: 'torrentInvalid' })
  checkTorrent(torrent, { name, size: manifest.transport.size }, torrentUrl)
  // one directory per transport file: a new image never meets the pieces of another. aria2c
  // writes there; the .torrent, the completion hook, its marker and aria2c's log live in a
  // directory beside it that only root may enter, where no torrent's file name can reach.
  const id = manifest.transport.sha256.slice(0, 16)
  const dir = path.join(o.dir, id)
  const control = path.join(o.dir, `${id}.control`)
  fs.mkdirSync(dir, { recursive: true })
  fs.rmSync(control, { recursive: true, force: true })
  fs.mkdirSync(control, { mode: 0o700 })
  const file = path.join(dir, name)
  const torrentFile = path.join(control, `${name}.torrent`)
  fs.writeFileSync(torrentFile, torrent)
  const marker = path.join(control, 'complete')
  const hook = path.join(control, 'on-complete.sh')
  fs.writeFileSync(hook, `#!/bin/sh\n: > ${shellQuote(marker)}\n`, { mode: 0o700 })
  const logFile = path.join(control, 'aria2c.log')
  const args = [
    `--dir=${dir}`,
    '--continue=true',
    '--check-integrity=true',
    '--auto-file-renaming=false',
    '--allow-overwrite=true',
    '--file-allocation=none',
    '--enable-dht=false',
    '--enable-dht6=false',
    '--bt-enable-lpd=true',
    `--seed-time=${o.seedMinutes}`,
    `--seed-ratio=${o.seedRatio.toFixed(1)}`,
    `--bt-stop-timeout=${o.stallSeconds}`,
    ...(o.trackerIntervalSeconds ? [`--bt-tracker-interval=${o.trackerIntervalSeconds}`] : []),
    ...(o.downloadLimit ? [`--max-overall-download-limit=${o.downloadLimit}`] : []),
    ...(remote.fetch.caFile ? [`--ca-certificate=${path.resolve(remote.fetch.caFile)}`] : []),
    `--on-bt-download-complete=${hook}`,
    '--summary-interval=0',
    '--console-log-level=error',
    `--log=${logFile}`,
    '--log-level=notice',
    torrentFile,
  ]
  log(`downloading ${name} with BitTorrent (${torrentUrl}) into ${dir}`)
  // its own session: it seeds on after labhost exits
  const aria2c = start('aria2c', args, { detached: true, stderr: 'ignore' })
  const child = aria2c.process
  let exit: RunOutcome | null = null
  void aria2c.done.then((r) => {
    exit = r
  })
  const stop = () => {
    try {
      if (child.pid && !exit) process.kill(-child.pid, 'SIGTERM')
    } catch {
      /* gone already */
    }
  }
  // Progress is what lands in the file: a piece aria2c rejects (bad hash) is fetched again into
  // the same place, so a peer that serves only corrupted pieces makes no progress, however busy.
  const allocated = () => (fs.existsSync(file) ? fs.statSync(file).blocks * 512 : 0)
  let last = { bytes: 0, at: Date.now() }
  while (!fs.existsSync(marker)) {
    if (exit) {
      const x = exit as RunOutcome
      // aria2c logs to its file, not to stderr: the error lines of the log are what it said
      const logged = tailOf(logFile)
      const failed = toolError('aria2c', args, { ...x, stderr: logged })
      if (failed.details.notInstalled) throw failed
      const why = x.startError ? `aria2c could not be started (${x.startError})` : `aria2c exited with ${x.exitCode ?? x.signal}`
      throw new LabhostError(
        'downloadFailed',
        `BitTorrent download of ${torrentUrl} failed: ${why}${logged ? `: ${logged}` : ''}`,
        `check the tracker and that a peer or the server seeds the torrent (see ${logFile}), or update over HTTP without --torrent; nothing was written`,
        {},
        { cause: failed },
      )
    }
    const bytes = allocated()
    if (bytes > last.bytes) last = { bytes, at: Date.now() }
    else if (Date.now() - last.at > o.stallSeconds * 1000) {
      stop()
      throw new LabhostError(
        'downloadFailed',
        `BitTorrent download of ${torrentUrl} made no progress for ${o.stallSeconds} s (${bytes} of ${manifest.transport.size} bytes verified or in flight)`,
        `no peer serves good pieces: check that the server seeds the torrent (${logFile}), or update over HTTP without --torrent; nothing was written`,
      )
    }
    await sleep(200)
  }
  const seconds = (Date.now() - started) / 1000
  const h = matchesPart(file, manifest.transport)
  if (!h.ok) {
    stop()
    throw new LabhostError(
      'hashMismatch',
      `the file the torrent delivered (${file}) is not the signed transport file (size ${h.size} vs ${manifest.transport.size})`,
      'the .torrent beside the manifest belongs to another image: publish it again (labhost image publish); nothing was written',
    )
  }
  child.unref()
  log(`downloaded ${name} with BitTorrent in ${seconds.toFixed(1)} s; aria2c (pid ${child.pid}) seeds it for ${o.seedMinutes} min`)
  source.stats.torrent = { url: torrentUrl, file, seconds, seederPid: exit ? null : (child.pid ?? null), seedMinutes: o.seedMinutes }
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

// One file over BitTorrent with aria2c (or labhost's libtorrent client: bt-clients.ts), for root
// images (updater/torrent.ts) and VM base images (vmimages/torrent-pull.ts) alike: the caller has
// checked the torrent (checkTorrent: one file, the signed name and size) and chosen its sources
// (sourcedTorrent); the client downloads into `dir`, its .torrent, completion hook, marker and log
// live in a private control directory beside it, and it goes on seeding in a session of its own
// after labhost is done. Whatever arrives is still only bytes that match the torrent's SHA-1
// pieces: the caller checks them against the signed manifest.
//
// Which peers: DHT stays off always (peers come from the trackers, the web seeds and the LAN only).
// Local Peer Discovery (multicast on the host's subnet) finds the peers of the same lab without a
// tracker; peer exchange is switched off where a host must keep to its building's peers, so the
// peers of an upstream host do not reach them second-hand.
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { LabhostError } from '../lib/errors.ts'
import { missingHint, start, toolError, type RunOutcome } from '../lib/exec.ts'
import { chooseBtClient, libtorrentClientSource, rateBytes, LIBTORRENT_CLIENT, PYTHON3, type BtClient, type BtClientChoice } from './bt-clients.ts'
import { fetchBytes, type FetchOptions } from './source.ts'
import { checkTorrent, TORRENT_MAX_BYTES } from './torrent.ts'

export interface Aria2Options {
  /** Which client downloads and seeds (bt-clients.ts: chooseBtClient); DEFAULT_BT_CLIENT (auto) where not given. */
  client?: BtClientChoice
  /** Minutes the client goes on seeding after the download completed (it outlives labhost; a reboot ends it). */
  seedMinutes: number
  /** Also stop seeding at this upload/download ratio; 0: only the time counts. */
  seedRatio: number
  /** Seconds between announces to the tracker; 0: what the tracker asks for. */
  trackerIntervalSeconds: number
  /** Give up when no byte arrived for this long (error details: `stalled: true`). */
  stallSeconds: number
  /** Download rate limit in aria2c's notation (`5M`: 5 MiB/s); none by default. */
  downloadLimit?: string
  log?: (line: string) => void
}

export interface Aria2Download extends Aria2Options {
  /** The .torrent aria2c reads (checked, its sources chosen). */
  torrent: Buffer
  /** The one file it names, and its size. */
  name: string
  size: number
  /** Where aria2c writes the file (and its .aria2 control file: a download cut off resumes). */
  dir: string
  /** A private directory (root only) for the .torrent, the hooks, the marker and aria2c's log. */
  control: string
  /** Local Peer Discovery (the peers of this subnet) and peer exchange (peers named by peers). */
  lpd: boolean
  peerExchange: boolean
  caFile?: string
  /** Shell command aria2c runs when it is done seeding: e.g. remove the download. */
  afterSeeding?: string
  /** For messages: the torrent's URL, and what the user can do instead. */
  what: string
  otherwise: string
}

export interface Aria2Result {
  file: string
  /** The client that downloaded it (and seeds it). */
  client: BtClient
  seconds: number
  /** The client, seeding on (null: it ended with the download). */
  seederPid: number | null
  /** End the client now (the download turned out to be useless); resolves once it has exited (or 5 s passed). */
  stop(): Promise<void>
}

/** The client's pid (aria2c's or libtorrent's; the name from when there was only aria2c), in the control directory. */
export const PID_FILE = 'aria2c.pid'

export const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`

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
 * The .torrent at `url` (at most TORRENT_MAX_BYTES), checked to describe exactly `want` — one
 * file of that name and size — before aria2c sees it: the torrent is not signed, and aria2c
 * creates whatever files it names.
 */
export async function fetchTorrent(url: string, fetch: FetchOptions, want: { name: string; size: number }): Promise<Buffer> {
  const torrent = await fetchBytes(url, fetch, { maxBytes: TORRENT_MAX_BYTES, code: 'torrentInvalid' })
  checkTorrent(torrent, want, url)
  return torrent
}

/** Download the torrent's one file into `o.dir`; resolves when it is complete (the client checked every SHA-1 piece). */
export async function aria2Download(o: Aria2Download): Promise<Aria2Result> {
  const log = o.log ?? (() => {})
  const started = Date.now()
  fs.mkdirSync(o.dir, { recursive: true })
  fs.rmSync(o.control, { recursive: true, force: true })
  fs.mkdirSync(o.control, { recursive: true, mode: 0o700 })
  const file = path.join(o.dir, o.name)
  const torrentFile = path.join(o.control, `${o.name}.torrent`)
  fs.writeFileSync(torrentFile, o.torrent)
  const marker = path.join(o.control, 'complete')
  const after = path.join(o.control, 'after-seeding.sh')
  if (o.afterSeeding) fs.writeFileSync(after, `#!/bin/sh\n${o.afterSeeding}\n`, { mode: 0o700 })
  const { client, why } = await chooseBtClient(o.client)
  const logFile = path.join(o.control, `${client}.log`)
  // aria2c's completion hook touches the marker (labhost's libtorrent client touches it itself)
  const aria2cArgs = (): string[] => {
    const hook = path.join(o.control, 'on-complete.sh')
    fs.writeFileSync(hook, `#!/bin/sh\n: > ${shellQuote(marker)}\n`, { mode: 0o700 })
    return [
      `--dir=${o.dir}`,
      '--continue=true',
      '--check-integrity=true',
      '--auto-file-renaming=false',
      '--allow-overwrite=true',
      '--file-allocation=none',
      '--enable-dht=false',
      '--enable-dht6=false',
      `--bt-enable-lpd=${o.lpd}`,
      `--enable-peer-exchange=${o.peerExchange}`,
      `--seed-time=${o.seedMinutes}`,
      `--seed-ratio=${o.seedRatio.toFixed(1)}`,
      // a backstop only: the watch below judges a stall (by the bytes that land) before aria2c would
      `--bt-stop-timeout=${o.stallSeconds + 30}`,
      ...(o.trackerIntervalSeconds ? [`--bt-tracker-interval=${o.trackerIntervalSeconds}`] : []),
      ...(o.downloadLimit ? [`--max-overall-download-limit=${o.downloadLimit}`] : []),
      ...(o.caFile ? [`--ca-certificate=${path.resolve(o.caFile)}`] : []),
      // for BitTorrent, --on-bt-download-complete runs when the pieces are in, --on-download-complete
      // (and -stop, -error) once seeding is over
      `--on-bt-download-complete=${hook}`,
      // (only then: a download that failed or was stopped stays, to be resumed)
      ...(o.afterSeeding ? [`--on-download-complete=${after}`] : []),
      '--summary-interval=0',
      '--console-log-level=error',
      `--log=${logFile}`,
      '--log-level=notice',
      torrentFile,
    ]
  }
  // labhost's libtorrent client (bt-clients.ts): the same contract, its marker touched by itself
  const libtorrentArgs = (): string[] => {
    const script = path.join(o.control, LIBTORRENT_CLIENT)
    fs.writeFileSync(script, libtorrentClientSource(), { mode: 0o700 })
    return [
      script,
      `--torrent=${torrentFile}`,
      `--dir=${o.dir}`,
      `--marker=${marker}`,
      `--log=${logFile}`,
      `--seed-minutes=${o.seedMinutes}`,
      `--seed-ratio=${o.seedRatio}`,
      `--tracker-interval=${o.trackerIntervalSeconds}`,
      `--lpd=${o.lpd}`,
      `--peer-exchange=${o.peerExchange}`,
      ...(o.downloadLimit ? [`--download-limit=${rateBytes(o.downloadLimit)}`] : []),
      ...(o.afterSeeding ? [`--after-seeding=${after}`] : []),
    ]
  }
  const [cmd, args] = client === 'aria2c' ? ['aria2c', aria2cArgs()] : [PYTHON3, libtorrentArgs()]
  log(`downloading ${o.name} with BitTorrent (${client}, ${why}; ${o.what}) into ${o.dir}`)
  // its own session: it seeds on after labhost exits (libtorrent's web seeds over https trust the CA file as aria2c does)
  const env = client === 'libtorrent' && o.caFile ? { SSL_CERT_FILE: path.resolve(o.caFile) } : undefined
  const running = start(cmd, args, { detached: true, stderr: 'ignore', env })
  const child = running.process
  // the next run of the same download ends this client first if it is still running (PID_FILE)
  if (child.pid) fs.writeFileSync(path.join(o.control, PID_FILE), String(child.pid))
  let exit: RunOutcome | null = null
  void running.done.then((r) => {
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
      // the client logs to its file, not to stderr: the error lines of the log are what it said
      const logged = tailOf(logFile)
      const failed = toolError(cmd, args, { ...x, stderr: logged })
      if (failed.details.notInstalled) throw failed
      // 3: labhost's libtorrent client found no python3-libtorrent
      if (client === 'libtorrent' && x.exitCode === 3)
        throw new LabhostError('toolFailed', `python3-libtorrent is not installed (${logged})`, missingHint(cmd), { notInstalled: true })
      const why = x.startError ? `${client} could not be started (${x.startError})` : `${client} exited with ${x.exitCode ?? x.signal}`
      // 7: downloads left unfinished (its --bt-stop-timeout, or a signal): no peer gave it the rest
      throw new LabhostError(
        'downloadFailed',
        `BitTorrent download of ${o.what} failed: ${why}${logged ? `: ${logged}` : ''}`,
        `check the tracker and that a peer or the server seeds the torrent (see ${logFile}), or ${o.otherwise}`,
        { stalled: x.exitCode === 7 },
        { cause: failed },
      )
    }
    const bytes = allocated()
    if (bytes > last.bytes) last = { bytes, at: Date.now() }
    else if (Date.now() - last.at > o.stallSeconds * 1000) {
      // ended before the caller may start another client on the same file
      stop()
      await Promise.race([running.done, sleep(5000)])
      throw new LabhostError(
        'downloadFailed',
        `BitTorrent download of ${o.what} made no progress for ${o.stallSeconds} s (${bytes} of ${o.size} bytes verified or in flight)`,
        `no peer serves good pieces: check that the server seeds the torrent (${logFile}), or ${o.otherwise}`,
        { stalled: true },
      )
    }
    await sleep(200)
  }
  child.unref()
  const stopNow = async () => {
    stop()
    await Promise.race([running.done, sleep(5000)])
  }
  return { file, client, seconds: (Date.now() - started) / 1000, seederPid: exit ? null : (child.pid ?? null), stop: stopNow }
}

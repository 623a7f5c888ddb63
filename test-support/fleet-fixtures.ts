// A lab on one machine (test-support/netns.ts): a server namespace running the image HTTP server
// (`labhost image serve`), opentracker (whitelisting the image's info hash) and the first aria2c
// seeder, and host namespaces each with a disk on a loop device running 1.0.0 from slot A.
// Used by the fleet test and `npm run bench`; close() stops every process and removes it all.
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ResultPromise } from 'execa'
import { attachLoop, detachLoop } from '../lib/loop.ts'
import { createLab, type Lab, type LabMember } from './netns.ts'
import { labhostCommand } from './test-helpers.ts'
import { startServe, startTracker, stopProcesses, TRACKER_PORT, waitFor } from './lab-services.ts'
import { infoHash, publishImage } from '../image-format/torrent.ts'
import { publishDeltaPacks, type DeltaPack } from '../updater/delta-pack.ts'
import { makeHostIn, type Host, type Images } from './update-fixtures.ts'

export { HTTP_PORT, TRACKER_PORT } from './lab-services.ts'

export interface FleetHost extends Host {
  member: LabMember
  downloadDir: string
}

export interface Fleet {
  lab: Lab
  server: LabMember
  hosts: FleetHost[]
  /** The image directory served (2.0.0, with its .torrent). */
  imageDir: string
  url: string
  /** The server's opentracker (announce URL). */
  trackerUrl: string
  transportBytes: number
  /** The delta packs published for hosts on 1.0.0 (with `deltaFrom`), tracked too. */
  deltaPacks: DeltaPack[]
  /**
   * Start the honest seeder on the server (the first source of the pieces), `labhost image seed`,
   * and wait until it has announced itself: a lab's server seeds before its hosts are told to update.
   */
  seed(o?: { uploadLimit?: string }): Promise<void>
  /** Start aria2c seeding `dir` with these extra flags, unchecked (a seeder of bad or other bytes). */
  seedRaw(dir: string, extra?: string[]): ResultPromise
  /** Add an info hash to the tracker's whitelist (it reloads the list on SIGHUP). */
  allow(infoHash: string): Promise<void>
  /** `labhost update` on a host, inside its namespace. */
  update(h: FleetHost, args: string[]): ResultPromise
  close(): Promise<void>
}

/** Switch ports of the lab, both ways: a gigabit lab switch. */
export const PORT_MBIT = 1000

/**
 * `deltaFrom`: also publish a delta pack (and its .torrent) for hosts running that image directory.
 * `hostPortMbit`: the hosts' ports at that speed (the server's stays at PORT_MBIT).
 */
export async function startFleet(dir: string, images: Images, o: { hosts: number; prefix: string; deltaFrom?: string; hostPortMbit?: number }): Promise<Fleet> {
  // read when the fleet starts (not at import): the bench points it at the executable first
  const [labhost, ...cli] = labhostCommand()
  const lab = await createLab(o.prefix, o.hosts, { portMbit: o.hostPortMbit ?? PORT_MBIT, serverPortMbit: PORT_MBIT })
  const loops: string[] = []
  const processes: ResultPromise[] = []
  const close = async () => {
    await stopProcesses(processes, 3000)
    await lab.close()
    for (const l of loops) await detachLoop(l).catch(() => {})
  }
  try {
    const server = lab.members[0]!
    const imageDir = path.join(dir, 'served')
    fs.cpSync(images.v2, imageDir, { recursive: true })
    const trackers = [`http://${server.ip}:${TRACKER_PORT}/announce`]
    const published = await publishImage(imageDir, { trackers })
    const deltaPacks = o.deltaFrom ? await publishDeltaPacks(imageDir, [o.deltaFrom], { trackers }) : []
    const packHashes = await Promise.all(deltaPacks.map((p) => infoHash(path.join(imageDir, `${p.file}.torrent`))))
    const tracker = await startTracker(lab.spawn, server, dir, [published.infoHash, ...packHashes])
    processes.push(tracker.process)
    const http = await startServe(lab.spawn, server, imageDir)
    processes.push(http.process)
    const url = http.url
    const hosts: FleetHost[] = []
    for (const [i, member] of lab.members.slice(1).entries()) {
      const d = path.join(dir, `host${i + 1}`)
      fs.mkdirSync(d)
      const h = await makeHostIn(d, images, async (file) => {
        const dev = await attachLoop(file)
        loops.push(dev)
        return dev
      })
      hosts.push({ ...h, member, downloadDir: path.join(d, 'download') })
    }
    return {
      lab,
      server,
      hosts,
      imageDir,
      url,
      trackerUrl: tracker.url,
      deltaPacks,
      transportBytes: fs.statSync(path.join(imageDir, 'root.img.zst')).size,
      async seed(o = {}) {
        const p = lab.spawn(server, labhost, [
          ...cli,
          'image',
          'seed',
          imageDir,
          '--tracker-interval',
          '2',
          ...(o.uploadLimit ? ['--upload-limit', o.uploadLimit] : []),
        ])
        processes.push(p)
        await waitFor(p, /seeding /, 30_000, 'labhost image seed')
        await sleep(2500) // aria2c checks the file, then announces (every 2 s)
      },
      seedRaw(seedDir, extra = []) {
        const p = lab.spawn(server, 'aria2c', [
          `--dir=${seedDir}`,
          '--seed-ratio=0.0',
          '--check-integrity=true',
          '--enable-dht=false',
          '--bt-enable-lpd=false',
          '--bt-tracker-interval=2',
          '--summary-interval=0',
          '--console-log-level=error',
          ...extra,
          path.join(seedDir, 'root.img.zst.torrent'),
        ])
        processes.push(p)
        return p
      },
      allow: tracker.allow,
      update(h, args) {
        return lab.spawn(h.member, labhost, [...cli, 'update', url, '--json', ...h.args, ...args])
      },
      close,
    }
  } catch (e) {
    await close()
    throw e
  }
}

/** BitTorrent for a test host: its own download directory, quick announces, short seeding. */
export const btArgs = (h: FleetHost, extra: string[] = []) => [
  '--torrent',
  '--download-dir',
  h.downloadDir,
  '--tracker-interval',
  '2',
  '--seed-minutes',
  '2',
  ...extra,
]

/** A whole image over BitTorrent (--full: a delta from 1.0.0 would be a few HTTP requests). */
export const torrentArgs = (h: FleetHost, extra: string[] = []) => ['--full', ...btArgs(h, extra)]

/**
 * The part host `i` of the lab takes (docs/admin.md): the first `upstreams` are the upstream hosts
 * (with more than one, each fetches its part K/N of the file from the server), the others keep to
 * the lab and its tracker.
 */
export const labPart = (f: Fleet, i: number, upstreams = 1) =>
  i >= upstreams
    ? ['--peers', 'building', '--tracker', f.trackerUrl]
    : ['--peers', 'upstream', ...(upstreams > 1 ? ['--upstream-part', `${i + 1}/${upstreams}`] : [])]

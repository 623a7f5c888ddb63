// A campus on one machine for the VM base image distribution (issue 22): two buildings joined by a
// slow link (test-support/netns.ts createCampus); the image server (`labhost image serve` of the
// published bases, opentracker) stands in building a; every host has its backing and user
// partitions as ext4 file systems on loop devices. `distribute` pulls one published base onto
// every host at once — building-aware, plain BitTorrent or plain HTTP — and measures what crossed
// the link, what the server sent and when the last host was done. Used by the campus test and
// `npm run bench`; close() ends every process, unmounts, detaches and removes the namespaces.
import fs from 'node:fs'
import path from 'node:path'
import type { ResultPromise } from 'execa'
import { run } from '../lib/exec.ts'
import { attachLoop, detachLoop } from '../lib/loop.ts'
import { createCampus, killIn, type Campus, type LabMember } from './netns.ts'
import { startServe, startTracker, stopProcesses, type Tracker } from './lab-services.ts'
import { labhostCommand, sparseFile } from './test-helpers.ts'

export const LINK_MBIT = 100
export const PORT_MBIT = 1000

export interface CampusHost {
  name: string
  building: string
  member: LabMember
  backing: string
  user: string
  catalogue: string
}

/** building-aware: one upstream host per building, the rest keep to their building's peers. */
export type DistributionMode = 'locality' | 'bittorrent' | 'http'

export interface Distribution {
  mode: DistributionMode
  seconds: number
  /** Bytes that went into each building over the link, in `buildings` order. */
  linkBytesIn: number[]
  serverBytes: number
  results: { host: CampusHost; exitCode: number | undefined; output: string; json: unknown }[]
}

export interface CampusLab {
  campus: Campus
  server: LabMember
  /** A member of building b that is none of the hosts (a peer the tests make misbehave). */
  bystander: LabMember
  hosts: CampusHost[]
  tracker: Tracker
  /** http://SERVER:PORT/ — the published directories are under it by their names. */
  url: string
  /** `labhost vm-image pull URL` on a host, in its namespace (--json, quick announces, the host's directories). */
  pull(h: CampusHost, source: string, args?: string[]): ResultPromise
  distribute(source: string, mode: DistributionMode, args?: string[]): Promise<Distribution>
  /** Every host as new: its seeders ended, its backing and user partitions emptied (for the next round of a benchmark). */
  resetHosts(): Promise<void>
  close(): Promise<void>
}

const [labhost, ...cli] = labhostCommand()

/** The args a host's pull gets in `mode`: the first host of each building is its upstream. */
export function modeArgs(mode: DistributionMode, h: CampusHost, hosts: CampusHost[]): string[] {
  if (mode === 'http') return ['--http']
  if (mode === 'bittorrent') return ['--peers', 'all']
  return ['--peers', hosts.find((x) => x.building === h.building) === h ? 'upstream' : 'building']
}

/**
 * `served` holds the published directories (vm-image publish --out); `infoHashes` their torrents'.
 * Building a: the server and `perBuilding` hosts; building b: `perBuilding` hosts and a bystander.
 */
export async function startCampus(
  dir: string,
  served: string,
  infoHashes: string[],
  o: { prefix: string; perBuilding: number; backingMiB: number; userMiB: number; trustedKey: string },
): Promise<CampusLab> {
  const campus = await createCampus(o.prefix, { perBuilding: [o.perBuilding + 1, o.perBuilding + 1], linkMbit: LINK_MBIT, portMbit: PORT_MBIT })
  const processes: ResultPromise[] = []
  const mounts: string[] = []
  const loops: string[] = []
  const close = async () => {
    await stopProcesses(processes, 2000)
    await campus.close() // every aria2c still seeding in a namespace ends here
    for (const m of mounts.reverse()) await run('umount', [m]).catch(() => run('umount', ['-l', m]).catch(() => {}))
    for (const l of loops) await detachLoop(l).catch(() => {})
  }
  const fsOnLoop = async (file: string, mib: number, mnt: string) => {
    fs.mkdirSync(path.dirname(file), { recursive: true })
    const dev = await attachLoop(sparseFile(file, mib << 20))
    loops.push(dev)
    await run('mkfs.ext4', ['-q', '-F', dev])
    fs.mkdirSync(mnt, { recursive: true })
    await run('mount', [dev, mnt])
    mounts.push(mnt)
    return mnt
  }
  try {
    const server = campus.buildings[0]!.members[0]!
    const bystander = campus.buildings[1]!.members.at(-1)!
    const tracker = await startTracker(campus.spawn, server, dir, infoHashes)
    processes.push(tracker.process)
    const http = await startServe(campus.spawn, server, served)
    processes.push(http.process)
    const hosts: CampusHost[] = []
    for (const b of campus.buildings) {
      for (const member of b.members) {
        if (member === server || member === bystander) continue
        const name = path.basename(member.ns)
        const d = path.join(dir, name)
        const backing = await fsOnLoop(path.join(d, 'backing.img'), o.backingMiB, path.join(d, 'backing'))
        const user = await fsOnLoop(path.join(d, 'user.img'), o.userMiB, path.join(d, 'user'))
        hosts.push({ name, building: b.name, member, backing, user, catalogue: path.join(backing, 'catalogue.ini') })
      }
    }
    const pull = (h: CampusHost, source: string, args: string[] = []) =>
      campus.spawn(h.member, labhost, [
        ...cli,
        'vm-image',
        'pull',
        source,
        '--trusted-key',
        o.trustedKey,
        '--dir',
        h.backing,
        '--user-dir',
        h.user,
        '--json',
        ...(args.includes('--http') ? [] : ['--tracker-interval', '2']),
        ...args,
      ])
    return {
      campus,
      server,
      bystander,
      hosts,
      tracker,
      url: `${http.url}/`,
      pull,
      async distribute(source, mode, args = []) {
        const server0 = await campus.txBytes(server)
        const link0 = await campus.linkBytesIn()
        const started = Date.now()
        const runs = await Promise.all(hosts.map((h) => pull(h, source, [...modeArgs(mode, h, hosts), ...args])))
        const seconds = (Date.now() - started) / 1000
        const link1 = await campus.linkBytesIn()
        return {
          mode,
          seconds,
          linkBytesIn: link1.map((b, k) => b - link0[k]!),
          serverBytes: (await campus.txBytes(server)) - server0,
          results: runs.map((r, i) => {
            let json: unknown = null
            try {
              json = JSON.parse(String(r.stdout))
            } catch {
              /* not JSON: the output says why */
            }
            return { host: hosts[i]!, exitCode: r.exitCode, output: String(r.all ?? ''), json }
          }),
        }
      },
      async resetHosts() {
        for (const h of hosts) {
          // the seeding clients: aria2c, or labhost's libtorrent client (python3)
          for (const comm of ['aria2c', 'python3']) await killIn(h.member.ns, comm)
          for (const d of [h.backing, h.user])
            for (const n of fs.readdirSync(d)) if (n !== 'lost+found') fs.rmSync(path.join(d, n), { recursive: true, force: true })
        }
      },
      close,
    }
  } catch (e) {
    await close()
    throw e
  }
}

// The fleet section of `npm run bench` (issue 18): a lab of N hosts in network namespaces (1, 8
// and 32; the server's and every host's port at 1 Gbit/s) updates from 1.0.0 to 2.0.0 at once,
// four ways — the whole transport file over HTTP, the whole file over BitTorrent, the delta over
// HTTP, the delta (its pack) over BitTorrent. BitTorrent here is building-aware as docs/admin.md
// advises for a lab: half the lab's hosts, at most LAB_UPSTREAMS, are `--peers upstream
// --upstream-part K/N` (each fetches its part of the file from the server, and the others fetch
// from them), the rest `--peers building --tracker` (the lab's peers only, never the server); the
// server runs no seeder. Measured per round: the bytes the server's interface sent, per the bytes
// one host needs; the time until the last host was done; and how busy this machine's CPUs were
// (every host shares its two cores, which real PCs do not).
// The network-bound section runs the BitTorrent ways again on the lean image with the hosts' ports
// slowed (networkBoundSpeeds), so that one host's download, not the shared CPU, is what a host waits for.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { BtClient } from '../image-format/bt-clients.ts'
import { buildImage } from '../image-build/build.ts'
import { writeRecipeVariant } from '../image-build/recipe.ts'
import { publishDeltaPacks } from '../updater/delta-pack.ts'
import { leanRecipe } from '../test-support/lean-recipe.ts'
import { labPart, PORT_MBIT, startFleet, type Fleet, type FleetHost } from '../test-support/fleet-fixtures.ts'
import type { Images } from '../test-support/update-fixtures.ts'

/** The package 2.0.0 of the fleet's image adds (with its libraries): a delta of a few MiB, as a small update is. */
export const FLEET_EXTRA_PACKAGE = 'nano'

/**
 * What 2.0.0 adds in the network-bound section's delta rounds: the Debian Edu manual (Debian's
 * school-lab distribution), a 19 MB delta pack, where nano's is 1.6 MB. One host alone takes about
 * 45 s for its download either way, but nano's pack does so only at 0.36 Mbit/s, where a port's
 * queue holds a dozen frames for every flow through it and TCP recovers a loss by its timeout: the
 * ports then carried about 60 % of their speed with 32 hosts (2026-12-03). The manual's pack takes
 * its 45 s at 3.4 Mbit/s, near the whole image's 3.7; and a real update of the host image is of its
 * size (the 1 GiB host image's delta is 36 MB, README).
 */
export const NETWORK_BOUND_DELTA_PACKAGES = ['debian-edu-doc-en']

/**
 * The test image as 1.0.0, and as 2.0.0 with one package more; `lean`: the 40 MiB variant without
 * the labhost executable inside (vm-tests' lean image), so that writing 32 slots at once costs a
 * quarter of the CPU; `add`: the packages 2.0.0 adds besides FLEET_EXTRA_PACKAGE, in a lean image
 * of `imageSizeMiB` (both versions) that holds them.
 */
export async function buildFleetImages(dir: string, keys: Images['keys'], o: { lean?: boolean; add?: string[]; imageSizeMiB?: number } = {}): Promise<Images> {
  const name = `fleet${o.lean ? '-lean' : ''}${o.add?.length ? '-more' : ''}`
  const base = o.lean ? leanRecipe(path.join(dir, `${name}-1.yaml`), (r) => void (r.imageSizeMiB = o.imageSizeMiB ?? r.imageSizeMiB)) : 'test'
  const v1 = path.dirname((await buildImage(base, { out: path.join(dir, `${name}-v1`), keyFile: keys.privateKeyFile })).manifestFile)
  const recipe2 = writeRecipeVariant(base, path.join(dir, `${name}-2.yaml`), (r) => {
    r.version = '2.0.0'
    r.base.packages = [...r.base.packages, FLEET_EXTRA_PACKAGE, ...(o.add ?? [])]
  })
  const v2 = path.dirname((await buildImage(recipe2, { out: path.join(dir, `${name}-v2`), keyFile: keys.privateKeyFile })).manifestFile)
  return { keys, v1, v2 }
}

export const METHODS = ['full-http', 'full-bt', 'delta-http', 'delta-bt'] as const
export type Method = (typeof METHODS)[number]

/**
 * A lab's upstream hosts: half its hosts, at most LAB_UPSTREAMS (4 of 8, 8 of 32). Each fetches
 * its part of the file from the server (--upstream-part K/N), so the file comes into the lab
 * through N ports and each passes on a part, where one upstream host passed on every piece several
 * times over its one port (aria2c has no super-seeding: 4.55x one host's time at 32 hosts with
 * one; 3.0x with 4 parts, 2.3x with 8, measured 2026-12-03).
 */
export const LAB_UPSTREAMS = 8
export const upstreamsFor = (hosts: number) => Math.min(LAB_UPSTREAMS, Math.ceil(hosts / 2))

/** The client of the CPU-bound rounds: aria2c, as in their first runs, so that runs compare (the network-bound ones name theirs). */
const CPU_BOUND_CLIENT: BtClient = 'aria2c'

const LABEL: Record<Method, string> = {
  'full-http': 'whole image over HTTP',
  'full-bt': `whole image over BitTorrent (half the hosts, at most ${LAB_UPSTREAMS}, upstream with a part each; the rest the lab only)`,
  'delta-http': 'delta over HTTP',
  'delta-bt': `delta pack over BitTorrent (half the hosts, at most ${LAB_UPSTREAMS}, upstream with a part each; the rest the lab only)`,
}

/** A method's label in the figures' names; the BitTorrent client where it is not aria2c (whose figures came first). */
const labelOf = (m: Method, client: BtClient) =>
  client === 'aria2c' || !m.endsWith('-bt') ? LABEL[m] : LABEL[m].replace('over BitTorrent (', "over BitTorrent (labhost's libtorrent client; ")

export interface Round {
  method: Method
  hosts: number
  /** The hosts' port speed (the server's: PORT_MBIT). */
  hostPortMbit: number
  seconds: number
  serverBytes: number
  /** TCP segments the server sent again (its namespace's RetransSegs; null if unread): what the slow ports' queues dropped. */
  serverResent: number | null
  /** What one host needs: the whole transport file, or (delta) its pack — the block index and the ranges it lacks. */
  needBytes: number
  /** Machine-wide CPU busy share during the round (1: both cores busy all the time). */
  cpuBusy: number
  /** CPU seconds this machine spent during the round (all cores). */
  cpuSeconds: number
  /** CPU seconds the hosts' own processes used (labhost, zstd, aria2c until the round ended); null where no control group could count them. */
  hostCpuSeconds: number | null
  /** BitTorrent: the longest a host's aria2c took until it had every piece (null over HTTP, where the download is the write). */
  downloadSeconds: number | null
  /** BitTorrent: hosts that found no peer of their lab with a byte to give in time and fetched from the server too. */
  fellBack: number
}

/**
 * A control group that counts the CPU time of the processes put into it and of everything they
 * start (the hosts' labhost, its zstd and aria2c): cgroup v2 (cpu.stat) or v1's cpuacct, where
 * this machine mounts one; null where neither can be made.
 */
/** cgroup v2: the CPU seconds of a group (cpu.stat's usage_usec). */
const v2Usage = (d: string) => Number(/usage_usec (\d+)/.exec(fs.readFileSync(path.join(d, 'cpu.stat'), 'utf8'))?.[1]) / 1e6

function cpuGroup(name: string): { join(pid: number | undefined): void; seconds(): number; remove(): void } | null {
  const roots = [
    { dir: '/sys/fs/cgroup', read: v2Usage },
    { dir: '/sys/fs/cgroup/unified', read: v2Usage },
    { dir: '/sys/fs/cgroup/cpuacct', read: (d: string) => Number(fs.readFileSync(path.join(d, 'cpuacct.usage'), 'utf8')) / 1e9 },
  ]
  for (const r of roots) {
    const d = path.join(r.dir, name)
    try {
      if (!fs.existsSync(path.join(r.dir, 'cgroup.procs'))) continue
      fs.mkdirSync(d)
      if (!Number.isFinite(r.read(d))) throw new Error('no CPU count')
    } catch {
      fs.rmSync(d, { recursive: false, force: true })
      continue
    }
    return {
      join(pid) {
        if (pid) fs.writeFileSync(path.join(d, 'cgroup.procs'), String(pid))
      },
      seconds: () => r.read(d),
      remove() {
        // a group with processes cannot be removed: what still runs (aria2c seeding on) goes to the parent
        for (const pid of fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
          try {
            fs.writeFileSync(path.join(r.dir, 'cgroup.procs'), pid)
          } catch {
            /* gone */
          }
        }
        fs.rmdirSync(d)
      },
    }
  }
  return null
}

/** The TCP segments the server's namespace sent again since it was made (/proc/net/snmp's Tcp RetransSegs there), or null. */
async function resentSegments(f: Fleet): Promise<number | null> {
  const r = await f.lab.spawn(f.server, 'cat', ['/proc/net/snmp'])
  const [names, values] = String(r.stdout)
    .split('\n')
    .filter((l) => l.startsWith('Tcp:'))
    .map((l) => l.trim().split(/\s+/))
  const at = names?.indexOf('RetransSegs') ?? -1
  const n = at > 0 ? Number(values?.[at]) : NaN
  return r.exitCode === 0 && Number.isFinite(n) ? n : null
}

/** CPU time this machine spent busy (all cores, seconds), from /proc/stat. */
export function cpuBusySeconds(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!
  return busy / 100
}

/**
 * A host's `labhost update` arguments for `method`; the first `upstreams` hosts of the lab are its
 * BitTorrent upstream hosts (one host alone fetches the whole file from the server).
 * BitTorrent as a lab runs it: the product's announce interval and seeding time, not the tests'
 * quick ones (btArgs: announces every 2 s, seeding 2 min, which at 32 hosts left late hosts a lab
 * whose seeders had gone, and the server's tracker answering 16 announces a second).
 */
function hostArgs(f: Fleet, h: FleetHost, i: number, method: Method, upstreams: number, client: BtClient): string[] {
  const bt = ['--torrent', '--download-dir', h.downloadDir, '--bt-client', client, ...labPart(f, i, Math.min(upstreams, f.hosts.length))]
  switch (method) {
    case 'full-http':
      return ['--full']
    case 'full-bt':
      return ['--full', ...bt]
    case 'delta-http':
      return []
    case 'delta-bt':
      return bt
  }
}

/** One round: a fresh lab of `hosts` (with a delta pack for 1.0.0 published), all updating at once with `method` (BitTorrent: by `client`), `upstreams` of them the lab's upstream hosts. */
export async function fleetRound(
  dir: string,
  images: Images,
  hosts: number,
  method: Method,
  prefix: string,
  hostPortMbit: number = PORT_MBIT,
  upstreams = upstreamsFor(hosts),
  client: BtClient = CPU_BOUND_CLIENT,
): Promise<Round> {
  const fleetDir = fs.mkdtempSync(path.join(dir, `fleet-${method}-${hosts}-`))
  const f = await startFleet(fleetDir, images, { hosts, prefix, deltaFrom: images.v1, hostPortMbit })
  try {
    const before = await f.lab.txBytes(f.server)
    const group = cpuGroup(`${prefix}-${process.pid}`)
    try {
      const cpu0 = cpuBusySeconds()
      const t0 = performance.now()
      const runs = await Promise.all(
        f.hosts.map((h, i) => {
          const p = f.update(h, hostArgs(f, h, i, method, upstreams, client))
          group?.join(p.pid)
          return p
        }),
      )
      const seconds = (performance.now() - t0) / 1000
      const cpu = cpuBusySeconds() - cpu0
      const hostCpuSeconds = group ? group.seconds() : null
      const serverBytes = (await f.lab.txBytes(f.server)) - before
      const serverResent = await resentSegments(f)
      let downloadSeconds: number | null = null
      // hosts of the lab that found no peer with a byte to give in time and fetched from the server too
      const fellBack = runs.filter((r) => /no peer of this lab had .* to give/.test(String(r.all))).length
      for (const [i, r] of runs.entries()) {
        if (r.exitCode !== 0) throw new Error(`${method}, ${hosts} hosts: host ${i + 1} failed: ${String(r.all).slice(-1500)}`)
        const out = JSON.parse(String(r.stdout)) as { to: { version: string }; transfer: { torrent?: { seconds: number } } }
        if (out.to.version !== '2.0.0') throw new Error(`${method}: host ${i + 1} wrote ${out.to.version}`)
        if (out.transfer.torrent) downloadSeconds = Math.max(downloadSeconds ?? 0, out.transfer.torrent.seconds)
      }
      const needBytes = method.startsWith('delta') ? f.deltaPacks[0]!.size : f.transportBytes
      return {
        method,
        hosts,
        hostPortMbit,
        seconds,
        serverBytes,
        serverResent,
        needBytes,
        cpuBusy: cpu / seconds / cores,
        cpuSeconds: cpu,
        hostCpuSeconds,
        downloadSeconds,
        fellBack,
      }
    } finally {
      // aria2c may still seed: moved out of the group, ended by f.close below
      group?.remove()
    }
  } finally {
    await f.close()
    fs.rmSync(fleetDir, { recursive: true, force: true })
  }
}

export interface FleetFigure {
  name: string
  value: number
  unit: string
  peer: string | null
  peerValue: number | null
  note?: string
}

/** The middle value (the upper one of an even count). */
export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/**
 * The network-bound regime: the hosts' ports slowed until one host's download takes about
 * `seconds` (45), so the download, not this machine's two shared cores, is what takes the time (32
 * hosts' own processes needed about 65 s of both cores together at gigabit speed with the test
 * image, more than one host alone needs in all). Per BitTorrent method, on that method's images,
 * the speed at which what one host needs takes that long: the whole transport file, or the delta
 * pack from 1.0.0 (made here as the fleet publishes it). The server's port stays at 1 Gbit/s.
 */
export async function networkBoundSpeeds(
  dir: string,
  images: { 'full-bt': Images; 'delta-bt': Images },
  seconds = 45,
): Promise<Record<'full-bt' | 'delta-bt', number>> {
  const mbit = (bytes: number) => Number(((bytes * 8) / seconds / 1e6).toFixed(2))
  const full = images['full-bt']
  const transport = (JSON.parse(fs.readFileSync(path.join(full.v2, 'manifest.json'), 'utf8')) as { transport: { size: number } }).transport.size
  const delta = images['delta-bt']
  const work = fs.mkdtempSync(path.join(dir, 'pack-size-'))
  try {
    fs.cpSync(delta.v2, work, { recursive: true })
    const [pack] = await publishDeltaPacks(work, [delta.v1], { trackers: ['http://127.0.0.1:1/announce'] })
    return { 'full-bt': mbit(transport), 'delta-bt': mbit(pack!.size) }
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

/**
 * The whole section: 3 single-host rounds per method (the reference time), `runs8` rounds of 8
 * hosts and `runs32` of 32, methods alternating. Figures: server bytes per one host's need and
 * time per the single host's, each method at 8 and 32 hosts, with the spread and CPU share.
 * `hostPortMbit`: the hosts' port speed per method (PORT_MBIT where not given); `section` names
 * the figures (`fleet: …`).
 */
export async function benchFleetScale(
  dir: string,
  images: Images,
  fig: (f: FleetFigure) => void,
  o: {
    runs8: number
    runs32: number
    methods?: readonly Method[]
    hostPortMbit?: Partial<Record<Method, number>>
    section?: string
    /** A method's own images instead of `images`, and what its 2.0.0 changes (in its figures' notes). */
    imagesOf?: Partial<Record<Method, { images: Images; change: string }>>
    /** The BitTorrent client of the BitTorrent methods; aria2c where not given. */
    client?: BtClient
  } = {
    runs8: 3,
    runs32: 1,
  },
): Promise<Round[]> {
  const methods = o.methods ?? METHODS
  const imagesFor = (m: Method) => o.imagesOf?.[m]?.images ?? images
  const change = (m: Method) => (o.imagesOf?.[m] ? `; 2.0.0 ${o.imagesOf[m].change}` : '')
  const section = o.section ?? 'fleet'
  const client = o.client ?? CPU_BOUND_CLIENT
  const label = (m: Method) => labelOf(m, client)
  const portOf = (m: Method) => o.hostPortMbit?.[m] ?? PORT_MBIT
  const rounds: Round[] = []
  const prefix = (m: Method, n: number) => `lhs${METHODS.indexOf(m)}${n}`
  const plan: [number, number][] = [
    [1, 3],
    [8, o.runs8],
    [32, o.runs32],
  ]
  for (const [n, runs] of plan)
    for (let r = 0; r < runs; r++)
      for (const m of methods) {
        const round = await fleetRound(dir, imagesFor(m), n, m, prefix(m, n), portOf(m), upstreamsFor(n), client)
        console.log(
          `${section} ${m}${m.endsWith('-bt') ? ` (${client})` : ''} (hosts' ports ${portOf(m)} Mbit/s), ${n} host(s), round ${r + 1}: ${round.seconds.toFixed(1)} s${round.downloadSeconds === null ? '' : ` (BitTorrent downloads done within ${round.downloadSeconds.toFixed(1)} s; ${round.fellBack} host(s) turned to the server)`}, server sent ${(round.serverBytes / 2 ** 20).toFixed(1)} MiB${round.serverResent === null ? '' : ` (TCP sent ${round.serverResent} segments again)`}, CPU busy ${(round.cpuBusy * 100).toFixed(0)} %`,
        )
        rounds.push(round)
      }
  const ports = (m: Method) =>
    portOf(m) === PORT_MBIT ? `every port ${PORT_MBIT} Mbit/s` : `the hosts' ports ${portOf(m)} Mbit/s, the server's ${PORT_MBIT} Mbit/s`
  const single = (m: Method) => rounds.filter((r) => r.method === m && r.hosts === 1)
  // segments of at most one MSS (1448 bytes here): an upper bound on the bytes sent again
  const resent = (rs: Round[]) => {
    const segs = rs.map((r) => r.serverResent).filter((x) => x !== null)
    return segs.length ? `; TCP sent ${median(segs)} segments again (at most ${((median(segs) * 1448) / 1e6).toFixed(2)} MB; median)` : ''
  }
  for (const m of methods) {
    const need = single(m)[0]!.needBytes
    const alone = median(single(m).map((r) => r.seconds))
    const httpSingles = single(m.startsWith('delta') ? 'delta-http' : 'full-http').map((r) => r.seconds)
    const httpAlone = httpSingles.length ? `one host alone over HTTP: ${median(httpSingles).toFixed(1)} s` : 'HTTP not measured'
    for (const n of [8, 32]) {
      const rs = rounds.filter((r) => r.method === m && r.hosts === n)
      if (!rs.length) continue
      const copies = rs.map((r) => r.serverBytes / need)
      const times = rs.map((r) => r.seconds)
      const spread = (xs: number[], d: number) =>
        xs.length > 1 ? `; ${xs.length} runs, min ${Math.min(...xs).toFixed(d)}, max ${Math.max(...xs).toFixed(d)}` : '; 1 run'
      fig({
        name: `${section}: server bytes sent per the bytes one host needs, ${n} hosts, ${label(m)}`,
        value: Number(median(copies).toFixed(2)),
        unit: 'x one host',
        peer: 'the bytes one host needs (the transport file; for a delta its pack: the block index and the frames it lacks)',
        peerValue: 1,
        note: `one host needs ${need} bytes${spread(copies, 2)}; ${ports(m)}${resent(rs)}${change(m)}`,
      })
      // the same bytes against what the server sent for one host alone: besides the file, each
      // host fetches the signed manifest, the .torrent (and the pack list) and announces to the
      // tracker, and TCP resends what a slow port's queue drops; the server sends that for any host
      const aloneBytes = median(single(m).map((r) => r.serverBytes))
      fig({
        name: `${section}: server bytes sent per the server bytes for one host alone, ${n} hosts, ${label(m)}`,
        value: Number(median(rs.map((r) => r.serverBytes / aloneBytes)).toFixed(2)),
        unit: 'x one host alone',
        peer: 'the bytes the server sent for one host alone, the same way (the file, the manifest, the .torrent, the pack list, tracker answers, TCP resends)',
        peerValue: 1,
        note: `one host alone: ${aloneBytes} bytes, ${(aloneBytes / need).toFixed(2)} x the bytes it needs${spread(
          rs.map((r) => r.serverBytes / aloneBytes),
          2,
        )}; ${ports(m)}${change(m)}`,
      })
      fig({
        name: `${section}: time until the last of ${n} hosts was done, ${label(m)}`,
        value: Number(median(times).toFixed(1)),
        unit: 's',
        peer: 'one host alone, the same way',
        peerValue: Number(alone.toFixed(1)),
        note:
          `${httpAlone}${spread(times, 1)}; ${ports(m)}; this machine's ${cores} cores were busy ${(median(rs.map((r) => r.cpuBusy)) * 100).toFixed(0)} % of the time: ` +
          `all hosts share them, where real PCs have a CPU each${change(m)}`,
      })
      const hostCpu = rs.map((r) => r.hostCpuSeconds).filter((x) => x !== null)
      if (hostCpu.length)
        fig({
          name: `${section}: time until the last of ${n} hosts was done, against the hosts' own CPU time spread over this machine's cores, ${label(m)}`,
          value: Number(median(times).toFixed(1)),
          unit: 's',
          peer: `the CPU seconds the hosts' processes used (labhost, zstd, ${client}; a control group), / ${cores} cores: the least this machine can take`,
          peerValue: Number((median(hostCpu) / cores).toFixed(1)),
          note: `${(median(hostCpu) / n).toFixed(2)} CPU s per host; the server's processes and the kernel's packet forwarding are not counted`,
        })
      const downloads = rs.map((r) => r.downloadSeconds).filter((x) => x !== null)
      const aloneDownload = single(m)
        .map((r) => r.downloadSeconds)
        .filter((x) => x !== null)
      if (downloads.length && aloneDownload.length)
        fig({
          name: `${section}: time until every one of ${n} hosts had the whole download (${client === 'aria2c' ? 'aria2c' : 'BitTorrent'}), ${label(m)}`,
          value: Number(median(downloads).toFixed(1)),
          unit: 's',
          peer: 'one host alone, the same way',
          peerValue: Number(median(aloneDownload).toFixed(1)),
          note: `the distribution without the slot writes and read-backs that follow it${spread(downloads, 1)}; the same shared cores`,
        })
    }
    const fit = linearFit(rounds.filter((r) => r.method === m).map((r) => [r.hosts, r.seconds]))
    const counted = rounds.filter((r) => r.method === m && r.hostCpuSeconds !== null)
    const perHost = counted.length ? median(counted.map((r) => r.hostCpuSeconds! / r.hosts)) : null
    console.log(
      `${section} model, ${m}: last host done after ${fit.a.toFixed(1)} + ${fit.b.toFixed(2)} x hosts s on this machine` +
        (perHost === null
          ? ''
          : `; the hosts' processes used ${perHost.toFixed(2)} CPU s each, ${(perHost / cores).toFixed(2)} s per host on ${cores} shared cores`),
    )
  }
  return rounds
}

const cores = os.cpus().length

/** Least squares t = a + b·n over the points (n, t). */
export function linearFit(points: [number, number][]): { a: number; b: number } {
  const k = points.length
  const sx = points.reduce((x, [n]) => x + n, 0)
  const sy = points.reduce((x, [, t]) => x + t, 0)
  const sxx = points.reduce((x, [n]) => x + n * n, 0)
  const sxy = points.reduce((x, [n, t]) => x + n * t, 0)
  const b = (k * sxy - sx * sy) / (k * sxx - sx * sx)
  return { a: (sy - b * sx) / k, b }
}

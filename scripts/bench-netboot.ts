// `npm run bench -- --netboot-only`: a room of PCs network-installing at once, without VMs (8 under
// TCG on two cores would measure the emulator): in a lab of network namespaces (every port 1 Gbit/s)
// each PC fetches what iPXE fetches (vmlinuz, initrd.img) and runs `labhost install --netboot` on
// loop-device disks, as the netbooted installer does. Over plain HTTP, then with the netboot
// directory's image over BitTorrent (the server's seeder, opentracker and the room's PCs as peers).
// Per round: the server's bytes sent, split into the boot files (HTTP either way: iPXE has no
// BitTorrent) and the image's share in copies of its transport file; the time until the last PC
// reported; and what this machine's two cores were doing.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ResultPromise } from 'execa'
import YAML from 'yaml'
import { attachLoop, detachLoop } from '../lib/loop.ts'
import { createLab } from '../test-support/netns.ts'
import { HTTP_PORT, startServe, startTracker, stopProcesses, waitFor } from '../test-support/lab-services.ts'
import { labhostCommand, runCli, sparseFile } from '../test-support/test-helpers.ts'
import type { Images } from '../test-support/update-fixtures.ts'
import { infoHash } from '../image-format/torrent.ts'
import { cpuBusySeconds, type FleetFigure } from './bench-fleet.ts'

const MiB = 1 << 20
const SUBNET = '10.78.0'
const SERVER = `${SUBNET}.1`
const URL_BASE = `http://${SERVER}:${HTTP_PORT}`
const CONFIG = {
  models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
  disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
  netboot: {},
  finish: 'none',
}

export interface NetbootRound {
  method: 'http' | 'bt'
  pcs: number
  seconds: number
  serverBytes: number
  bootBytes: number
  transportBytes: number
  cpuBusy: number
}

const cores = os.cpus().length

/** A netboot directory for the bench's server address, over BitTorrent too with `tracker`. */
async function netbootDir(out: string, images: Images, config: string, tracker?: string): Promise<void> {
  const r = await runCli([
    'netboot',
    '--image',
    images.v2,
    '--config',
    config,
    '--url',
    URL_BASE,
    '--out',
    out,
    '--signing-key',
    images.keys.privateKeyFile,
    '--server-address',
    SERVER,
    '--interface',
    'eth0',
    ...(tracker ? ['--torrent', '--tracker', tracker, '--seed-minutes', '2'] : []),
  ])
  if (r.code !== 0) throw new Error(`labhost netboot: ${r.stderr}`)
}

/** One round: a fresh lab, `pcs` blank PCs installing at once. */
export async function netbootRound(dir: string, images: Images, pcs: number, method: 'http' | 'bt'): Promise<NetbootRound> {
  const d = fs.mkdtempSync(path.join(dir, `netboot-${method}-${pcs}-`))
  fs.writeFileSync(`${d}/install.yaml`, YAML.stringify(CONFIG))
  const lab = await createLab(`nbb${method === 'bt' ? 't' : 'h'}`, pcs, { subnet: SUBNET, portMbit: 1000 })
  const [labhost, ...cli] = labhostCommand()
  const processes: ResultPromise[] = []
  const loops: string[] = []
  try {
    const server = lab.members[0]!
    const tracker = method === 'bt' ? await startTracker(lab.spawn, server, d, []) : null
    const out = `${d}/netboot`
    await netbootDir(out, images, `${d}/install.yaml`, tracker?.url)
    const transportBytes = fs.statSync(`${out}/image/${JSON.parse(fs.readFileSync(`${out}/image/manifest.json`, 'utf8')).transport.file}`).size
    const serve = await startServe(lab.spawn, server, out, HTTP_PORT, ['--accept-reports', 'reports'])
    processes.push(serve.process)
    if (tracker) {
      processes.push(tracker.process)
      const torrent = fs.readdirSync(`${out}/image`).find((f) => f.endsWith('.torrent'))!
      await tracker.allow(await infoHash(`${out}/image/${torrent}`))
      const seeder = lab.spawn(server, labhost, [...cli, 'image', 'seed', `${out}/image`, '--tracker-interval', '2'])
      processes.push(seeder)
      await waitFor(seeder, /seeding /, 30_000, 'labhost image seed')
      await sleep(2500)
    }
    const bootBytes = fs.statSync(`${out}/vmlinuz`).size + fs.statSync(`${out}/initrd.img`).size
    const pcArgs = await Promise.all(
      lab.members.slice(1).map(async (m, i) => {
        const p = `${d}/pc${i + 1}`
        fs.mkdirSync(`${p}/sys/class/dmi/id`, { recursive: true })
        for (const [f, v] of [
          ['sys_vendor', 'Dell Inc.'],
          ['product_name', 'OptiPlex 7010'],
          ['product_serial', `CZCBENCH${i + 1}`],
        ])
          fs.writeFileSync(`${p}/sys/class/dmi/id/${f}`, `${v}\n`)
        const ssd = await attachLoop(sparseFile(`${p}/ssd.img`, 480 * MiB), { directIo: true })
        loops.push(ssd)
        const hdd = await attachLoop(sparseFile(`${p}/hdd.img`, 40 * MiB), { directIo: true })
        loops.push(hdd)
        const mac = `52:54:00:be:00:${(i + 1).toString(16).padStart(2, '0')}`
        return { m, mac, args: ['--ssd', ssd, '--hdd', hdd, '--sys-root', `${p}/sys`, '--download-dir', `${p}/bt`] }
      }),
    )
    const before = await lab.txBytes(server)
    const cpu0 = cpuBusySeconds()
    const t0 = performance.now()
    const script = (pc: (typeof pcArgs)[number]) =>
      // what iPXE fetches, then the installer the netbooted kernel runs
      [
        `busybox wget -q -O /dev/null ${URL_BASE}/vmlinuz`,
        `busybox wget -q -O /dev/null ${URL_BASE}/initrd.img`,
        [labhost, ...cli, 'install', '--netboot', `${URL_BASE}/`, '--boot-mac', pc.mac, '--trusted-key', images.keys.publicKeyFile, ...pc.args, '--json'].join(
          ' ',
        ),
      ].join(' && ')
    const runs = await Promise.all(pcArgs.map((pc) => lab.spawn(pc.m, 'sh', ['-c', script(pc)])))
    const seconds = (performance.now() - t0) / 1000
    const cpu = cpuBusySeconds() - cpu0
    const serverBytes = (await lab.txBytes(server)) - before
    for (const [i, r] of runs.entries()) {
      if (r.exitCode !== 0) throw new Error(`netboot ${method}: PC ${i + 1} failed: ${String(r.all).slice(-1500)}`)
      if (!fs.readdirSync(`${out}/reports`).some((f) => f.startsWith(`CZCBENCH${i + 1}-`) && f.endsWith('.json')))
        throw new Error(`netboot ${method}: PC ${i + 1} left no report on the server`)
    }
    return { method, pcs, seconds, serverBytes, bootBytes, transportBytes, cpuBusy: cpu / seconds / cores }
  } finally {
    await stopProcesses(processes, 3000)
    await lab.close()
    for (const l of loops) await detachLoop(l).catch(() => {})
    fs.rmSync(d, { recursive: true, force: true })
  }
}

/** The section: one PC alone and `pcs` at once, over HTTP and over BitTorrent. */
export async function benchNetbootRoom(dir: string, images: Images, fig: (f: FleetFigure) => void, pcs = 8): Promise<NetbootRound[]> {
  const rounds: NetbootRound[] = []
  for (const n of [1, pcs])
    for (const method of ['http', 'bt'] as const) {
      const r = await netbootRound(dir, images, n, method)
      console.log(
        `netboot ${method}, ${n} PC(s): ${r.seconds.toFixed(1)} s, server sent ${(r.serverBytes / MiB).toFixed(1)} MiB (boot files ${((r.bootBytes * n) / MiB).toFixed(1)} MiB), CPU busy ${(r.cpuBusy * 100).toFixed(0)} %`,
      )
      rounds.push(r)
    }
  const at = (m: 'http' | 'bt', n: number) => rounds.find((r) => r.method === m && r.pcs === n)!
  const copies = (r: NetbootRound) => (r.serverBytes - r.bootBytes * r.pcs) / r.transportBytes
  const label = { http: 'image over HTTP', bt: 'image over BitTorrent (server seeds, PCs are peers)' }
  for (const m of ['http', 'bt'] as const) {
    fig({
      name: `netboot: server bytes for the image per copy of it, ${pcs} PCs installing at once, ${label[m]}`,
      value: Number(copies(at(m, pcs)).toFixed(2)),
      unit: 'copies',
      peer: 'one PC alone, the same way',
      peerValue: Number(copies(at(m, 1)).toFixed(2)),
      note: `transport file ${at(m, pcs).transportBytes} bytes; besides it each PC fetched the boot files over HTTP (${(at(m, pcs).bootBytes / MiB).toFixed(1)} MiB: vmlinuz + initrd.img, as iPXE does); every port 1000 Mbit/s`,
    })
    fig({
      name: `netboot: time until the last of ${pcs} PCs reported its install, ${label[m]}`,
      value: Number(at(m, pcs).seconds.toFixed(1)),
      unit: 's',
      peer: 'one PC alone, the same way',
      peerValue: Number(at(m, 1).seconds.toFixed(1)),
      note: `boot files included; no VM: the PCs' installers share this machine's ${cores} cores (busy ${(at(m, pcs).cpuBusy * 100).toFixed(0)} %)`,
    })
  }
  fig({
    name: `netboot: server bytes sent in all, ${pcs} PCs, BitTorrent against HTTP`,
    value: Number((at('bt', pcs).serverBytes / MiB).toFixed(1)),
    unit: 'MiB',
    peer: 'the same room over HTTP',
    peerValue: Number((at('http', pcs).serverBytes / MiB).toFixed(1)),
    note: 'the boot files (HTTP either way) are most of it with a small image: they do not shrink with BitTorrent',
  })
  return rounds
}

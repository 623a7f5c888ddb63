// labhost install: image this PC from the installer stick, unattended (installer/install.ts).
import fs from 'node:fs'
import { isLabhostError, LabhostError } from '../../lib/errors.ts'
import { powerAction } from '../../lib/power.ts'
import { recordingInstalled, renderPlan, reportName, runInstall } from '../../installer/install.ts'
import { readMachine } from '../../installer/machine.ts'
import { dirStore, hexrawMac, httpStore, type ReportStore } from '../../installer/report-store.ts'
import { DEFAULT_FETCH, fetchBytes, httpSource, type UpdateSource } from '../../image-format/source.ts'
import { parseNetbootManifest, type NetbootManifest } from '../../image-build/netboot-files.ts'
import { DEFAULT_TORRENT, torrentSource } from '../../updater/torrent.ts'
import { defineCommand, pathValue, TRUSTED_KEY } from '../command.ts'

export const install = defineCommand({
  name: 'install',
  summary: 'image this PC: check the model, pick and partition the disks, write the root image to slot A, identity, report, reboot',
  usage: 'labhost install --config install.yaml --image DIR [options] | labhost install --netboot URL --boot-mac MAC [options]',
  options: {
    config: {
      type: 'string',
      value: 'FILE',
      schema: pathValue(),
      description: 'install.yaml (required without --netboot): the models, disks, kept partitions, BIOS settings and finish (labhost schema install)',
    },
    image: {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      description: 'the signed root image (manifest.json and root.img.zst) to write to slot A (required without --netboot)',
    },
    stick: { type: 'string', value: 'DEV', schema: pathValue(), description: "the installer's own medium, never a target" },
    ssd: {
      type: 'string',
      value: 'DEV',
      schema: pathValue(),
      defaultText: "matched by install.yaml's disk properties",
      description: 'the SSD to image (still checked for size and contents)',
    },
    hdd: {
      type: 'string',
      value: 'DEV',
      schema: pathValue(),
      defaultText: "matched by install.yaml's disk properties",
      description: 'the HDD to image (still checked for size and contents)',
    },
    'report-dir': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      description: "where the install report (or a refusal's reason) goes besides /persistent: the stick's reports/",
    },
    netboot: {
      type: 'string',
      value: 'URL',
      description:
        'a network install: the directory `labhost netboot` made, as served over http (its install.yaml, image/ and reports/, where the report, refusal and log are PUT); install.yaml netboot: decides whether this PC may be imaged',
    },
    'boot-mac': { type: 'string', value: 'MAC', description: 'with --netboot: the MAC of the NIC this PC network-booted by (iPXE passes BOOTIF)' },
    'download-dir': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      defaultText: DEFAULT_TORRENT.dir,
      description: "with --netboot, when the server's netboot.json says BitTorrent: where the image is downloaded (RAM on a PC that booted from the network)",
    },
    'trusted-key': TRUSTED_KEY,
    'new-identity': { type: 'boolean', description: 'replace the machine identity (UUID, SSH host keys, host name) a kept /persistent holds' },
    'no-finish': { type: 'boolean', description: "leave install.yaml's finish (reboot, poweroff) undone" },
    'finish-file': {
      type: 'string',
      value: 'FILE',
      schema: pathValue(),
      description: "write install.yaml's finish to FILE instead of doing it (the stick's init does it after unmounting)",
    },
    'sys-root': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      default: '/sys',
      seam: true,
      description: 'the root of sysfs (DMI, block devices): a tree laid out by a test',
    },
  },
  conflicts: [
    ['no-finish', 'finish-file', 'give one: --finish-file records the finish, --no-finish drops it'],
    ['netboot', 'config', 'a network install takes install.yaml from the server'],
    ['netboot', 'image', 'a network install takes the image from the server'],
    ['netboot', 'report-dir', 'a network install leaves its reports on the server'],
  ],
  requires: [
    ['netboot', 'boot-mac'],
    ['boot-mac', 'netboot'],
    ['download-dir', 'netboot'],
  ],
  dryRun: { plan: 'check the model and the image, pick the disks, print the plan (what each disk loses, each partition, BIOS changes)' },
  async run(values, _positionals, ctx) {
    const net = values.netboot === undefined ? null : netbootSource(values.netboot, values['boot-mac']!)
    for (const o of ['config', 'image'] as const)
      if (!net && !values[o]) throw new LabhostError('usage', `labhost install needs --${o} (or --netboot URL)`, `usage: ${this.usage}`)
    const reports: ReportStore | undefined = net ? net.reports : values['report-dir'] ? dirStore(values['report-dir']) : undefined
    // a network install's log goes to the server beside its report: the admin is not at the PC
    const logLines: string[] = []
    const log = (line: string) => {
      if (net) logLines.push(line)
      ctx.log(line)
    }
    let name = 'unknown-machine'
    try {
      const configText = net ? await fetchText(net.config) : undefined
      const served = net ? await netbootManifest(net.base) : null
      const bt = served?.torrent && !ctx.dryRun ? btFetch(served, values['download-dir'] ?? DEFAULT_TORRENT.dir, log) : undefined
      const { plan, report } = await runInstall({
        config: net ? net.config : values.config!,
        configText,
        image: net ? net.image : values.image!,
        trustedKey: values['trusted-key'],
        stick: values.stick,
        ssd: values.ssd,
        hdd: values.hdd,
        reports,
        netboot: net ? { bootMac: net.bootMac } : undefined,
        prepareSource: bt?.prepare,
        newIdentity: values['new-identity'],
        sysRoot: values['sys-root'],
        dryRun: ctx.dryRun,
        log,
        progress: ctx.progress,
      })
      if (ctx.dryRun || !report) return { data: { ...plan, dryRun: true }, human: renderPlan(plan, true) }
      name = reportName(report.hostname?.name, plan.machine)
      const human = `installed ${plan.image.name} ${plan.image.version} on ${plan.disks.map((d) => d.disk.path).join(' + ')} in ${report.steps.reduce((n, x) => n + x.seconds, 0).toFixed(1)} s; identity ${report.identity.created ? 'created' : 'kept'}`
      if (net) {
        log(human)
        await recordingInstalled(plan, net.reports, async () => {
          // beside the report, under its name
          await net.reports.write(`${name}-${report.startedAt.replace(/[:.]/g, '-')}.log`, logLines.join('\n') + '\n')
          // the PC's next network boot goes on to its SSD (the boot script looks for this first)
          await net.reports.write(`${hexrawMac(net.bootMac)}.boot-local`, `${new Date().toISOString()} installed ${plan.image.name} ${plan.image.version}\n`)
        })
      }
      const finishFile = values['finish-file']
      // the room's other PCs fetch from this one while it seeds: its reboot waits for that
      if (bt?.seeder() && plan.finish !== 'none' && !values['no-finish']) await seedOut(bt.seeder()!, served!.torrent!.seedMinutes, log)
      if (finishFile) fs.writeFileSync(finishFile, `${plan.finish}\n`)
      else if (plan.finish !== 'none' && !values['no-finish']) {
        ctx.log(human)
        await powerAction(plan.finish, ctx.log)
      }
      return { data: report, human }
    } catch (e) {
      // the technician (or, over the network, the admin) reads the outcome where the reports go:
      // a refusal leaves its reason there too
      // (installed, only not recorded: the store did not take the report, nor would it take this)
      if (reports && isLabhostError(e) && e.code !== 'installedNotRecorded') {
        let machine = null
        try {
          machine = readMachine(values['sys-root'])
        } catch {
          /* no DMI: the report is named unknown-machine */
        }
        name = reportName(null, machine)
        const declined = e.code === 'notToBeImaged'
        const stamp = new Date().toISOString().replace(/[:.]/g, '-')
        const record = JSON.stringify({ result: declined ? 'declined' : 'refused', ...e.toJSON() }, null, 2) + '\n'
        try {
          const base = `${name}-${declined ? 'declined' : 'refused'}-${stamp}`
          await reports.write(`${base}.json`, record)
          if (net) {
            log(`labhost install ${declined ? 'declined' : 'refused'}: ${e.message}`)
            await reports.write(`${base}.log`, logLines.join('\n') + '\n')
            // declined: this PC boots its own disk from now on; a refused one is for the admin to look at
            if (declined) await net.reports.write(`${hexrawMac(net.bootMac)}.boot-local`, `${new Date().toISOString()} declined: ${e.message}\n`)
          }
        } catch (w) {
          ctx.log(`the ${declined ? 'decline' : 'refusal'} could not be recorded in ${reports.where}: ${w instanceof Error ? w.message : String(w)}`)
        }
      }
      throw e
    }
  },
})

/** Where a network install finds install.yaml, the image and the reports directory, under the URL `labhost netboot` served. */
function netbootSource(url: string, bootMac: string) {
  if (!/^https?:\/\/[^/]/i.test(url))
    throw new LabhostError('usage', `--netboot ${url} is not an http(s) URL`, 'give the URL of the directory `labhost netboot` made, as the server serves it')
  const mac = bootMac.toLowerCase().replace(/-/g, ':')
  if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac))
    throw new LabhostError('usage', `--boot-mac ${bootMac} is not a MAC address`, 'give it as 52:54:00:12:34:56 (iPXE passes BOOTIF=01-52-54-00-12-34-56)')
  const base = url.endsWith('/') ? url : `${url}/`
  return {
    base,
    bootMac: mac,
    config: new URL('install.yaml', base).toString(),
    image: new URL('image/', base).toString(),
    reports: httpStore(new URL('reports/', base).toString(), mac),
  }
}

const CONFIG_MAX_BYTES = 1 << 20

async function fetchText(url: string): Promise<string> {
  return (await fetchBytes(url, DEFAULT_FETCH, { maxBytes: CONFIG_MAX_BYTES, code: 'configInvalid', what: 'nothing was written' })).toString('utf8')
}

/** netboot.json, the server's description of the netboot directory (whether the image comes over BitTorrent); null without one. */
async function netbootManifest(base: string): Promise<NetbootManifest | null> {
  const url = new URL('netboot.json', base).toString()
  let r: Response
  try {
    r = await fetch(url, { signal: AbortSignal.timeout(DEFAULT_FETCH.timeoutMs) })
  } catch (e) {
    throw new LabhostError(
      'downloadFailed',
      `GET ${url} failed: ${e instanceof Error ? e.message : String(e)}`,
      'check the netboot server; nothing was written',
      {},
      { cause: e },
    )
  }
  if (r.status === 404) return null
  // a small file with its length declared, or nothing read at all
  const declared = r.headers.get('content-length')
  const text = r.ok && declared !== null && Number(declared) <= CONFIG_MAX_BYTES ? await r.text() : null
  let v: unknown
  try {
    v = JSON.parse(text ?? '')
  } catch (e) {
    throw new LabhostError(
      'manifestInvalid',
      `${url} is not the JSON labhost netboot writes (HTTP ${r.status})`,
      'write the netboot directory again with `labhost netboot`; nothing was written',
      {},
      { cause: e },
    )
  }
  return parseNetbootManifest(v, url)
}

const onPath = (tool: string) => (process.env.PATH ?? '').split(':').some((d) => d && fs.existsSync(`${d}/${tool}`))

/**
 * The image over BitTorrent, as the server's netboot.json says (its seeder and the room's PCs as
 * peers): fetched after every check passed, before the first write. An installer system without
 * aria2c takes it over HTTP, as does a server that publishes no torrent.
 */
function btFetch(served: NetbootManifest, dir: string, log: (line: string) => void) {
  if (!onPath('aria2c')) {
    log('netboot.json offers the image over BitTorrent, but this installer system has no aria2c: over HTTP')
    return undefined
  }
  const seedMinutes = served.torrent!.seedMinutes
  let seeder: number | null = null
  return {
    prepare: async (source: UpdateSource): Promise<UpdateSource> => {
      const http = httpSource(source)
      if (!http) return source
      const got = await torrentSource(http, source.manifest, { ...DEFAULT_TORRENT, dir, seedMinutes, log })
      seeder = got.stats.torrent?.seederPid ?? null
      return got
    },
    seeder: () => seeder,
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Until aria2c (pid) has seeded its minutes and ended. */
async function seedOut(pid: number, minutes: number, log: (line: string) => void): Promise<void> {
  log(`seeding the image for the room for up to ${minutes} min before the finish`)
  while (alive(pid)) await new Promise((r) => setTimeout(r, 2000))
}

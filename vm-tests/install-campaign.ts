// The campaign's installer half: a lab PC (DMI Dell OptiPlex 7010, USB stick, blank SSD and HDD)
// boots the installer stick, and the harness resets it at an instant drawn from the seed while
// `labhost install` runs. The PC boots the stick again; that re-run must complete (exit 0), and
// the SSD must then boot the installed image. Every cycle starts from blank disks; the stick is
// the same one throughout, as a technician's would be.
import fs from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { prng } from '../lib/test-helpers.ts'
import { buildStick } from '../image-build/stick.ts'
import type { VmDriver } from './driver.ts'
import type { VmDisk, VmSpec } from './qemu.ts'
import { Console, type Marker, type MarkerPattern } from './console-markers.ts'
import { buildCampaignImages } from './campaign.ts'

const MiB = 1 << 20
const DELL = { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' }

export interface InstallCampaignOptions {
  driver: VmDriver
  cycles: number
  seed: number
  workDir: string
  keepDir: string
  /** Longest a stick boot plus install may take before the cycle counts as failed. */
  installTimeoutMs?: number
  log?: (line: string) => void
}

export interface InstallCycleRecord {
  cycle: number
  aim: 'calibration' | 'uniform'
  /** Milliseconds after the stick announced the install; null for the calibration cycle. */
  resetAtMs: number | null
  /** The installer step running when the reset came. */
  step: string | null
  /** The re-run's exit code (the first run's, for calibration). */
  exit: number | null
  /** The SSD booted the installed image afterwards. */
  booted: boolean
  outcome: 'completed' | 'failed'
  why?: string
}

export interface InstallCampaignReport {
  driver: string
  accel: string
  seed: number
  cycles: number
  resets: number
  completed: number
  failed: number
  seconds: number
  calibration: { installMs: number } | null
  records: InstallCycleRecord[]
  kept?: string
}

export const installSummaryLine = (r: InstallCampaignReport): string =>
  `install cycles ${r.cycles}, resets ${r.resets}, re-runs completed ${r.completed}, failed ${r.failed}`

const PATTERNS: MarkerPattern[] = [
  [/LABHOST-STICK-INSTALL-START()()/, 'start'],
  [/LABHOST-STICK-INSTALL-END exit=(\d+)()/, 'end'],
  [/step: (.+?)\s*$()/, 'step'],
  [/LABHOST-USERSPACE version=(\S+) slot=([AB])/, 'userspace'],
]

export async function runInstallCampaign(o: InstallCampaignOptions): Promise<InstallCampaignReport> {
  const log = o.log ?? (() => {})
  const rnd = prng(o.seed)
  const installTimeout = o.installTimeoutMs ?? 900_000
  fs.mkdirSync(o.workDir, { recursive: true })
  const { dirs, keyFile } = await buildCampaignImages(o.workDir)
  const config = path.join(o.workDir, 'install.yaml')
  fs.writeFileSync(config, YAML.stringify({
    models: [{ vendor: DELL.manufacturer, product: DELL.product }],
    disks: { ssd: { rotational: false, minSizeGiB: 0.55 }, hdd: { rotational: true, minSizeGiB: 0.05 } },
    finish: 'poweroff',
  }))
  const stick = path.join(o.workDir, 'stick.img')
  await buildStick({ imageDir: dirs['1.0.0']!, config, out: stick, keyFile })
  const ssd = path.join(o.workDir, 'ssd.img')
  const hdd = path.join(o.workDir, 'hdd.img')
  const targets: VmDisk[] = [{ file: ssd, bus: 'ide-hd', rotationRate: 1, bootIndex: 1 }, { file: hdd, bus: 'ide-hd', rotationRate: 7200, bootIndex: 2 }]
  const withStick: VmSpec = { smbios: DELL, disks: [{ file: stick, bus: 'usb-storage', bootIndex: 0 }, ...targets] }
  const serialFile = path.join(o.workDir, 'serial.log')
  const report: InstallCampaignReport = { driver: o.driver.name, accel: await o.driver.accel(), seed: o.seed, cycles: 0, resets: 0, completed: 0, failed: 0, seconds: 0, calibration: null, records: [] }
  const started = Date.now()
  const fail = (record: InstallCycleRecord, why: string) => {
    record.outcome = 'failed'
    record.why = why
    report.failed++
    const keep = path.join(o.keepDir, `install-seed${o.seed}-cycle${record.cycle}`)
    fs.mkdirSync(keep, { recursive: true })
    for (const f of [stick, ssd, hdd, serialFile]) fs.copyFileSync(f, path.join(keep, path.basename(f)))
    report.kept = keep
    log(`FAILED install cycle ${record.cycle}: ${why}; disks, stick and serial log kept in ${keep}`)
  }
  try {
    for (let cycle = 0; cycle <= o.cycles; cycle++) {
      const record: InstallCycleRecord = { cycle, aim: report.calibration ? 'uniform' : 'calibration', resetAtMs: null, step: null, exit: null, booted: false, outcome: 'completed' }
      report.records.push(record)
      for (const [f, mib] of [[ssd, 640], [hdd, 64]] as const) {
        fs.writeFileSync(f, '')
        fs.truncateSync(f, mib * MiB)
      }
      const vm = await o.driver.start(withStick, serialFile)
      try {
        const con = new Console(vm, PATTERNS)
        const deadline = Date.now() + installTimeout
        const start = await con.until('start', deadline)
        if (!start) {
          fail(record, 'the stick never started labhost install')
          break
        }
        const note = (m: Marker) => { if (m.kind === 'step') record.step = m.a }
        if (report.calibration) {
          const resetAt = start.at + rnd() * report.calibration.installMs
          await con.waitUntil(resetAt, note)
          record.resetAtMs = Date.now() - start.at
          await vm.reset()
          report.resets++
          if (!(await con.until('start', deadline))) {
            fail(record, 'after the reset the stick did not start the install again')
            break
          }
        }
        // the re-run's own steps are not the step the reset hit
        const end = await con.until('end', deadline, report.calibration ? undefined : note)
        record.exit = end ? Number(end.a) : null
        if (!report.calibration && end) report.calibration = { installMs: end.at - start.at }
        // finish: poweroff — the PC turns itself off after a completed install
        for (let i = 0; i < 600 && !vm.exited(); i++) await new Promise((r) => setTimeout(r, 100))
      } finally {
        await vm.powerOff()
      }
      if (record.exit !== 0) {
        fail(record, record.exit === null ? 'the install did not end' : `the ${record.aim === 'calibration' ? '' : 're-'}run exited ${record.exit}`)
        break
      }
      // the SSD, without the stick, boots what was installed
      const ssdBoot = await o.driver.start({ smbios: DELL, disks: targets }, serialFile)
      try {
        record.booted = (await new Console(ssdBoot, PATTERNS).until('userspace', Date.now() + 180_000)) !== null
      } finally {
        await ssdBoot.powerOff()
      }
      if (!record.booted) {
        fail(record, 'the SSD did not boot the installed image')
        break
      }
      if (record.aim !== 'calibration') report.completed++
      log(record.aim === 'calibration' ? `calibration: install ${(report.calibration!.installMs / 1000).toFixed(1)} s, SSD boots`
        : `install cycle ${cycle}: reset at ${(record.resetAtMs! / 1000).toFixed(1)} s (${record.step ?? 'before the first step'}) -> re-run exit 0, SSD boots`)
    }
  } finally {
    report.cycles = report.records.filter((r) => r.aim !== 'calibration').length
    report.seconds = (Date.now() - started) / 1000
  }
  return report
}

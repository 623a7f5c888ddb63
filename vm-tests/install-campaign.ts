// The campaign's installer half: a lab PC (DMI Dell OptiPlex 7010, USB stick, blank SSD and HDD)
// boots the installer stick, and the harness resets it while `labhost install` runs. The PC
// boots the stick again; that re-run must complete (exit 0), and the SSD must then boot the
// installed image (its version, from slot A). Every cycle starts from blank disks; the stick is
// the same one throughout, as a technician's would be.
//
// Two ways to aim. Uniform (the soak): a calibration install measures the whole install, then
// every reset falls at a random instant of it. Stratified (what npm test runs): the cycles take
// the named steps in turn (partitioning, the image write, identity) and each reset is aimed from
// the guest's own `step:` announcement, at a random point of that step as this campaign last
// measured it (the steps the runs go through before the aimed one, and every re-run, measure
// them: no calibration install). A step that ends before the drawn instant gets no reset: that
// run completes (and has measured the step), and the cycle begins again on blank disks.
import fs from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { prng } from '../test-support/test-helpers.ts'
import { buildStick } from '../image-build/stick.ts'
import { buildImage } from '../image-build/build.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { readManifest } from '../image-format/manifest.ts'
import type { RunningVm, VmDriver } from './driver.ts'
import type { VmDisk, VmSpec } from './qemu.ts'
import { Console, type Marker, type MarkerPattern } from './console-markers.ts'
import { leanRecipe } from '../test-support/lean-recipe.ts'

const MiB = 1 << 20
const DELL = { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' }

/** The installer steps (installer/install.ts) a stratified campaign aims at, in turn: partitioning, the image write, identity. */
export const STRATIFIED_AIMS = ['partition the SSD', 'write the root image to slot A', 'identity and report'] as const

/**
 * A cautious guess (shorter than TCG takes) of how long an aimed step lasts, used only until a
 * run of the campaign has measured that step. A guess too long costs one completed run, not a
 * reset in the wrong step: the cycle begins again with the measured length.
 */
const FIRST_GUESS_MS: Record<string, number> = { 'partition the SSD': 1500, 'write the root image to slot A': 1500, 'identity and report': 1000 }

/** Resets fall inside this share of a step's measured length: the harness sees the next announcement a poll later than the guest makes it. */
const INSIDE = 0.8

/** How often a stratified cycle begins again because its step ended before the instant, before it counts as failed. */
const MAX_MISSES = 3

export interface InstallCampaignOptions {
  driver: VmDriver
  cycles: number
  seed: number
  workDir: string
  keepDir: string
  /** Aim the resets at named installer steps in turn (STRATIFIED_AIMS), one reset per cycle, instead of uniformly over a calibrated install. */
  stratified?: boolean
  /** The steps a stratified campaign aims at (default STRATIFIED_AIMS). */
  aimSteps?: readonly string[]
  /** Longest a stick boot plus install may take before the cycle counts as failed. */
  installTimeoutMs?: number
  log?: (line: string) => void
}

export interface InstallCycleRecord {
  cycle: number
  aim: 'calibration' | 'uniform' | 'step'
  /** The step a stratified cycle aimed at; null otherwise. */
  aimedStep: string | null
  /** Where in the aimed step (0..1 of INSIDE times its length) the instant was drawn. */
  fraction: number | null
  /** The step's length the instant was drawn from: the shortest this campaign had measured, or the first guess. */
  aimedLengthMs: number | null
  /** Milliseconds after the aimed step's announcement that the reset came. */
  resetInStepMs: number | null
  /** Runs of this cycle whose aimed step ended before the instant (no reset; they completed and measured it). */
  missed: number
  /** Milliseconds after the stick announced the install; null for the calibration cycle. */
  resetAtMs: number | null
  /** The installer step running when the reset came: the last `step:` line the guest printed before it. */
  step: string | null
  /** The re-run's exit code (the first run's, for calibration). */
  exit: number | null
  /** The SSD booted the installed image afterwards. */
  booted: boolean
  /** What the SSD booted: version and slot, from the image's own announcement. */
  bootedAs: { version: string; slot: string } | null
  outcome: 'completed' | 'failed'
  why?: string
  /** The cycle's wall time: stick boots, install runs, the SSD boot. */
  seconds?: number
}

export interface InstallCampaignReport {
  driver: string
  accel: string
  seed: number
  aims: 'uniform' | 'stratified'
  cycles: number
  resets: number
  completed: number
  failed: number
  seconds: number
  calibration: { installMs: number } | null
  /** The shortest length of each installer step this campaign measured (ms, from the guest's announcements). */
  stepMs: Record<string, number>
  records: InstallCycleRecord[]
  kept?: string
}

export const installSummaryLine = (r: InstallCampaignReport): string =>
  `install cycles ${r.cycles}, resets ${r.resets}, re-runs completed ${r.completed}, failed ${r.failed}`

const PATTERNS: MarkerPattern[] = [
  [/LABHOST-STICK-INSTALL-START()()/, 'start'],
  [/LABHOST-STICK-INSTALL-END exit=(\d+)()/, 'end'],
  [/step: (.+?)\s*$()/, 'step'],
  // the installer's last line: the report is on the stick (the end of the last step's work)
  [/report: \S+\.json\s*$()()/, 'report'],
  [/LABHOST-USERSPACE version=(\S+) slot=([AB])/, 'userspace'],
]

/** The lean test image, version 1.0.0, signed with the cached test key: what the stick installs. */
async function buildInstallImage(dir: string): Promise<{ imageDir: string; version: string; keyFile: string }> {
  const keys = cacheKeys()
  const recipe = leanRecipe(`${dir}/recipes/install-1.0.0.yaml`, (r) => {
    r.version = '1.0.0'
  })
  const built = await buildImage(recipe, { out: `${dir}/v1.0.0`, keyFile: keys.privateKeyFile })
  return { imageDir: path.dirname(built.manifestFile), version: readManifest(built.manifestFile).version, keyFile: keys.privateKeyFile }
}

/** Where the k-th of n stratified resets of one aim falls in its step (0..1): inside the k-th n-th, at the draw. */
export function stepFraction(nthOfAim: number, ofAim: number, draw: number): number {
  return (nthOfAim + draw) / ofAim
}

/** One run of the installer as the serial console shows it: its step announcements and its report line. */
interface Run {
  steps: Marker[]
  report: Marker | null
}
const newRun = (): Run => ({ steps: [], report: null })
const noteIn = (run: Run) => (m: Marker) => {
  if (m.kind === 'step') run.steps.push(m)
  if (m.kind === 'report') run.report = m
}

export async function runInstallCampaign(o: InstallCampaignOptions): Promise<InstallCampaignReport> {
  const log = o.log ?? (() => {})
  const rnd = prng(o.seed)
  const installTimeout = o.installTimeoutMs ?? 900_000
  const aims = o.stratified ? [...(o.aimSteps ?? STRATIFIED_AIMS)] : null
  if (aims && aims.length === 0) throw new Error('a stratified install campaign needs at least one step to aim at')
  fs.mkdirSync(o.workDir, { recursive: true })
  const building = Date.now()
  const { imageDir, version, keyFile } = await buildInstallImage(o.workDir)
  const config = path.join(o.workDir, 'install.yaml')
  fs.writeFileSync(
    config,
    YAML.stringify({
      models: [{ vendor: DELL.manufacturer, product: DELL.product }],
      disks: { ssd: { rotational: false, minSizeGiB: 0.55 }, hdd: { rotational: true, minSizeGiB: 0.05 } },
      finish: 'poweroff',
    }),
  )
  const stick = path.join(o.workDir, 'stick.img')
  await buildStick({ imageDir, config, out: stick, keyFile })
  log(`image ${version} and the stick built in ${((Date.now() - building) / 1000).toFixed(0)} s`)
  const ssd = path.join(o.workDir, 'ssd.img')
  const hdd = path.join(o.workDir, 'hdd.img')
  const targets: VmDisk[] = [
    { file: ssd, bus: 'ide-hd', rotationRate: 1, bootIndex: 1 },
    { file: hdd, bus: 'ide-hd', rotationRate: 7200, bootIndex: 2 },
  ]
  const withStick: VmSpec = { smbios: DELL, disks: [{ file: stick, bus: 'usb-storage', bootIndex: 0 }, ...targets] }
  const serialFile = path.join(o.workDir, 'serial.log')
  const report: InstallCampaignReport = {
    driver: o.driver.name,
    accel: await o.driver.accel(),
    seed: o.seed,
    aims: aims ? 'stratified' : 'uniform',
    cycles: 0,
    resets: 0,
    completed: 0,
    failed: 0,
    seconds: 0,
    calibration: null,
    stepMs: {},
    records: [],
  }
  const started = Date.now()
  const fail = (record: InstallCycleRecord, why: string) => {
    record.outcome = 'failed'
    record.why = why
    report.failed++
    const keep = path.join(o.keepDir, `install-seed${o.seed}-cycle${record.cycle}`)
    fs.mkdirSync(keep, { recursive: true })
    for (const f of [stick, ssd, hdd, serialFile]) if (fs.existsSync(f)) fs.copyFileSync(f, path.join(keep, path.basename(f)))
    fs.writeFileSync(path.join(keep, 'why.txt'), `${why}\n${JSON.stringify(record, null, 2)}\n`)
    report.kept = keep
    log(`FAILED install cycle ${record.cycle}: ${why}; disks, stick and serial log kept in ${keep}`)
  }
  const blankDisks = () => {
    for (const [f, mib] of [
      [ssd, 640],
      [hdd, 64],
    ] as const) {
      fs.writeFileSync(f, '')
      fs.truncateSync(f, mib * MiB)
    }
  }
  /** Each step's length from one run's announcements: from its `step:` line to the next one (the last step: to the report line). */
  const measure = (run: Run) => {
    run.steps.forEach((s, i) => {
      const next = run.steps[i + 1] ?? run.report
      if (!next) return
      report.stepMs[s.a] = Math.min(report.stepMs[s.a] ?? Infinity, next.at - s.at)
    })
  }
  /** The rest of a run from the stick, to its END line (returned; null if none came): its steps measured. */
  const finishRun = async (con: Console, deadline: number, run: Run): Promise<Marker | null> => {
    const end = await con.until('end', deadline, noteIn(run))
    measure(run)
    return end
  }
  /** finish: poweroff — the PC turns itself off after a completed install. */
  const awaitPowerOff = async (vm: RunningVm) => {
    for (let i = 0; i < 600 && !vm.exited(); i++) await new Promise((r) => setTimeout(r, 100))
  }

  try {
    // uniform: cycle 0 is the calibration install
    for (let cycle = aims ? 1 : 0; cycle <= o.cycles; cycle++) {
      const aimedStep = aims ? aims[(cycle - 1) % aims.length]! : null
      const aim: InstallCycleRecord['aim'] = aims ? 'step' : report.calibration ? 'uniform' : 'calibration'
      const record: InstallCycleRecord = {
        cycle,
        aim,
        aimedStep,
        fraction: null,
        aimedLengthMs: null,
        resetInStepMs: null,
        missed: 0,
        resetAtMs: null,
        step: null,
        exit: null,
        booted: false,
        bootedAs: null,
        outcome: 'completed',
      }
      report.records.push(record)
      const cycleStarted = Date.now()
      if (aims) {
        // the k-th of n resets aimed at this step falls inside the k-th n-th of it
        const k = Math.floor((cycle - 1) / aims.length)
        const n = Math.floor((o.cycles - ((cycle - 1) % aims.length) - 1) / aims.length) + 1
        record.fraction = stepFraction(k, n, rnd())
      }
      const uniformDraw = aims || !report.calibration ? null : rnd()
      let failed: string | null = null
      for (;;) {
        blankDisks()
        const vm = await o.driver.start(withStick, serialFile)
        let reset = false
        try {
          const con = new Console(vm, PATTERNS)
          const deadline = Date.now() + installTimeout
          const start = await con.until('start', deadline)
          if (!start) {
            failed = 'the stick never started labhost install'
            break
          }
          const first = newRun()
          let last: string | null = null
          const note = (m: Marker) => {
            noteIn(first)(m)
            if (m.kind === 'step') last = m.a
          }
          if (aimedStep) {
            // the guest's own announcement of the aimed step; the steps before it are measured on the way
            let at: Marker | null = null
            for (let m: Marker | null; !at;) {
              if (!(m = await con.next(deadline)) || m.kind === 'end') break
              note(m)
              if (m.kind === 'step' && m.a === aimedStep) at = m
            }
            measure(first) // the aimed step is the last one announced: not measured here
            if (!at) {
              failed = `the install never announced the step "${aimedStep}"`
              break
            }
            const length = report.stepMs[aimedStep] ?? FIRST_GUESS_MS[aimedStep] ?? 1000
            record.aimedLengthMs = length
            const resetAt = at.at + record.fraction! * INSIDE * length
            // wait for the instant; an announcement of anything after the step first is a miss
            let ended: Marker | null = null
            while (Date.now() < resetAt && !ended) {
              const m = await con.next(Math.min(resetAt, Date.now() + 25))
              if (m) {
                note(m)
                if (m.kind === 'step' || m.kind === 'report' || m.kind === 'end') ended = m
              }
              if (vm.exited()) break
            }
            if (ended || vm.exited()) {
              record.missed++
              if (ended?.kind === 'end') measure(first)
              const end = ended?.kind === 'end' ? ended : ended ? await finishRun(con, deadline, first) : null
              const exit = end ? Number(end.a) : null
              log(
                `install cycle ${cycle}: "${aimedStep}" ended ${((Date.now() - at.at) / 1000).toFixed(2)} s after its announcement, before the instant ` +
                  `(${((record.fraction! * INSIDE * length) / 1000).toFixed(2)} s in); that run ended with exit ${exit}; now measured ${report.stepMs[aimedStep] ?? '?'} ms, again on blank disks`,
              )
              if (exit !== 0) {
                failed = `a run that was not reset exited ${exit}`
                break
              }
              if (record.missed >= MAX_MISSES) {
                failed = `"${aimedStep}" ended before the instant ${record.missed} times`
                break
              }
              continue
            }
            record.resetInStepMs = Date.now() - at.at
          } else if (report.calibration) {
            await con.waitUntil(start.at + uniformDraw! * report.calibration.installMs, note)
          }
          if (aimedStep || report.calibration) {
            record.resetAtMs = Date.now() - start.at
            await vm.reset()
            reset = true
            report.resets++
            // what the guest printed before the reset (read after it, too) ends before the re-run's START
            if (!(await con.until('start', deadline, note))) {
              failed = 'after the reset the stick did not start the install again'
              break
            }
            record.step = last
          }
          // the re-run's (or the calibration run's) steps measure the installer
          const end = await finishRun(con, deadline, reset ? newRun() : first)
          record.exit = end ? Number(end.a) : null
          if (!aims && !report.calibration && end) report.calibration = { installMs: end.at - start.at }
          await awaitPowerOff(vm)
        } finally {
          await vm.powerOff()
        }
        break
      }
      if (failed) {
        fail(record, failed)
        break
      }
      if (record.exit !== 0) {
        fail(record, record.exit === null ? 'the install did not end' : `the ${record.aim === 'calibration' ? '' : 're-'}run exited ${record.exit}`)
        break
      }
      // the SSD, without the stick, boots what was installed
      const ssdBoot = await o.driver.start({ smbios: DELL, disks: targets }, serialFile)
      try {
        const up = await new Console(ssdBoot, PATTERNS).until('userspace', Date.now() + 180_000)
        record.bootedAs = up ? { version: up.a, slot: up.b } : null
        record.booted = up !== null && up.a === version && up.b === 'A'
      } finally {
        await ssdBoot.powerOff()
      }
      if (!record.booted) {
        fail(
          record,
          record.bootedAs
            ? `the SSD booted ${record.bootedAs.version} from slot ${record.bootedAs.slot}, not ${version} from slot A`
            : 'the SSD did not boot the installed image',
        )
        break
      }
      if (record.aim !== 'calibration') report.completed++
      record.seconds = (Date.now() - cycleStarted) / 1000
      const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`
      log(
        record.aim === 'calibration'
          ? `calibration: install ${sec(report.calibration!.installMs)}, SSD boots`
          : record.aim === 'step'
            ? `install cycle ${cycle}: aimed at "${record.aimedStep}", reset ${sec(record.resetInStepMs!)} after its announcement (${(record.fraction! * 100).toFixed(0)} % of ${INSIDE * 100} % of ` +
              `${sec(record.aimedLengthMs!)}), during "${record.step}" -> re-run exit 0, SSD boots ${record.bootedAs!.version} from slot A; cycle ${record.seconds.toFixed(0)} s`
            : `install cycle ${cycle}: reset at ${sec(record.resetAtMs!)} (${record.step ?? 'before the first step'}) -> re-run exit 0, SSD boots`,
      )
    }
  } finally {
    report.cycles = report.records.filter((r) => r.aim !== 'calibration').length
    report.seconds = (Date.now() - started) / 1000
  }
  return report
}

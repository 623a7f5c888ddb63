// npm run vm-tests -- [--mode update|install|rollback] [--cycles N] [--seed S] [--json report.json]
//                     [--driver auto|qemu|virtualbox] [--keep DIR] [--commit-weight F] [--cpus N] [--mutant naive-switch|commit-before-write]
//                     [--firmware bios|uefi]  (uefi: OVMF, no CSM, the selector on the ESP; update mode)
//                     [--stratified]  (alternate commit/uniform aims, instants in slices: what npm test runs;
//                                      install mode: resets aimed at partitioning, the image write, identity in turn)
//                     [--hold]  (commit aims reset while the guest waits before a switch write: load-independent)
//                     [--resume report.json]  (continue a cut-off update or rollback campaign to N cycles in all)
//                     rollback mode: updates to a version that fails its trial and resets in its trial boots,
//                     its userspace and the initramfs's rollback write (--stratified: those aims in turn)
// The random-reset campaign: resets during updates (vm-tests/campaign.ts; summary `cycles N,
// resets N, old N, new N, bricked N`), during installs from the stick (install-campaign.ts), or
// during the trial and the rollback of a failing version (rollback-campaign.ts; summary `rollback
// cycles N, resets N, rolled back N, bricked N`).
// Exits 1 when a cycle bricked or a re-run failed (disks and serial log are kept) or an update
// failed by itself.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { parseArgs } from 'node:util'
import { execa } from 'execa'
import { chooseDriver } from './choose-driver.ts'
import { MUTANTS, runUpdateCampaign, summaryLine, type CampaignReport, type Mutant } from './campaign.ts'
import { installSummaryLine, runInstallCampaign } from './install-campaign.ts'
import { rollbackSummaryLine, runRollbackCampaign, type RollbackCampaignReport } from './rollback-campaign.ts'

const root = path.resolve(import.meta.dirname, '..')
const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'update' },
    cycles: { type: 'string', default: '20' },
    seed: { type: 'string' },
    json: { type: 'string' },
    driver: { type: 'string', default: 'auto' },
    keep: { type: 'string', default: path.join(os.tmpdir(), 'labhost-campaign-bricks') },
    'commit-weight': { type: 'string', default: '0.4' },
    stratified: { type: 'boolean', default: false },
    hold: { type: 'boolean', default: false },
    cpus: { type: 'string', default: '1' },
    mutant: { type: 'string' },
    firmware: { type: 'string', default: 'bios' },
    resume: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (values.mutant !== undefined && !(values.mutant in MUTANTS)) {
  console.error(`--mutant ${values.mutant} is none of ${Object.keys(MUTANTS).join(', ')}`)
  process.exit(2)
}
if (values.firmware !== 'bios' && values.firmware !== 'uefi') {
  console.error(`--firmware ${values.firmware} is neither bios nor uefi`)
  process.exit(2)
}
if (values.mode === 'rollback' && (values.firmware !== 'bios' || values.mutant !== undefined || values.hold)) {
  console.error('--mode rollback runs on bios firmware, with no --mutant and no --hold')
  process.exit(2)
}
if (values.help) {
  console.log(
    fs
      .readFileSync(import.meta.filename, 'utf8')
      .split('\nimport ')[0]!
      .split('\n')
      .map((l) => l.replace(/^\/\/ ?/, ''))
      .join('\n'),
  )
  process.exit(0)
}
// a cut-off soak continues from its report: same seed, its cycles count, written back to it
let resume: CampaignReport | undefined
if (values.resume) {
  try {
    resume = JSON.parse(fs.readFileSync(values.resume, 'utf8')) as CampaignReport
  } catch (e) {
    console.error(`--resume ${values.resume}: not a campaign report (${(e as Error).message})`)
    process.exit(2)
  }
  if (values.seed !== undefined && Number(values.seed) !== resume.seed) {
    console.error(`--resume ${values.resume} was made with seed ${resume.seed}, not ${values.seed}: drop --seed`)
    process.exit(2)
  }
  if (values.mode !== 'update' && values.mode !== 'rollback') {
    console.error('--resume continues update and rollback campaigns only')
    process.exit(2)
  }
  if (((resume as { mode?: string }).mode === 'rollback') !== (values.mode === 'rollback')) {
    console.error(`--resume ${values.resume} is not a report of --mode ${values.mode}`)
    process.exit(2)
  }
  values.json ??= values.resume
}
const cycles = Number(values.cycles)
const seed = resume ? resume.seed : values.seed !== undefined ? Number(values.seed) : crypto.randomInt(2 ** 31)
if (!Number.isInteger(cycles) || cycles < 1 || !Number.isInteger(seed)) {
  console.error('--cycles needs a positive whole number and --seed a whole number')
  process.exit(2)
}
// the guest runs the single-file executable of this checkout: build it as it is now
await execa(process.execPath, [path.join(root, 'scripts/build.ts')], { stdio: ['ignore', 'ignore', 'inherit'] })
// a mutant or a holding guest runs the fault-enabled build (lib/faults.ts): the release executable ignores fault variables
if (values.mutant || values.hold) await execa(process.execPath, [path.join(root, 'scripts/build.ts'), '--faults'], { stdio: ['ignore', 'ignore', 'inherit'] })
const driver = await chooseDriver(values.driver)
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-campaign-'))
// a soak stopped with Ctrl-C (its report is written after every cycle) leaves no scratch behind;
// execa kills the VM with us
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    fs.rmSync(workDir, { recursive: true, force: true })
    process.exit(130)
  })
}
console.log(
  `campaign: ${cycles} cycles, seed ${seed}, driver ${driver.name} (${await driver.accel()}), work ${workDir}` +
    (resume ? `; resuming ${values.resume} after its ${resume.cycles} cycles` : ''),
)
try {
  if (values.mode === 'install') {
    const report = await runInstallCampaign({ driver, cycles, seed, workDir, keepDir: values.keep, stratified: values.stratified, log: (l) => console.log(l) })
    if (values.json) fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n')
    console.log(`${installSummaryLine(report)} under ${report.accel}, ${(report.seconds / 60).toFixed(1)} min`)
    process.exitCode = report.failed ? 1 : 0
  } else if (values.mode === 'update') {
    const report = await runUpdateCampaign({
      driver,
      cycles,
      seed,
      workDir,
      keepDir: values.keep,
      commitWeight: Number(values['commit-weight']),
      stratified: values.stratified,
      hold: values.hold,
      cpus: Number(values.cpus),
      mutant: values.mutant as Mutant | undefined,
      firmware: values.firmware as 'bios' | 'uefi',
      log: (l) => console.log(l),
      resume,
      // the report so far, after every cycle: a soak that is cut off still leaves its record
      onCycle: values.json ? (r) => fs.writeFileSync(values.json!, JSON.stringify({ ...r, partial: true }, null, 2) + '\n') : undefined,
    })
    if (values.json) fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n')
    console.log(`${summaryLine(report)}; ${report.resetsPerHour} resets per hour under ${report.accel}, ${(report.seconds / 60).toFixed(1)} min`)
    process.exitCode = report.bricked || report.failedUpdates ? 1 : 0
  } else if (values.mode === 'rollback') {
    const report = await runRollbackCampaign({
      driver,
      cycles,
      seed,
      workDir,
      keepDir: values.keep,
      stratified: values.stratified,
      log: (l) => console.log(l),
      resume: resume as unknown as RollbackCampaignReport | undefined,
      onCycle: values.json ? (r) => fs.writeFileSync(values.json!, JSON.stringify({ ...r, partial: true }, null, 2) + '\n') : undefined,
    })
    if (values.json) fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n')
    console.log(`${rollbackSummaryLine(report)}; ${report.resetsPerHour} resets per hour under ${report.accel}, ${(report.seconds / 60).toFixed(1)} min`)
    process.exitCode = report.bricked || report.failedUpdates || report.lost || report.stopped ? 1 : 0
  } else {
    console.error(`--mode ${values.mode}: use update, install or rollback`)
    process.exitCode = 2
  }
} finally {
  fs.rmSync(workDir, { recursive: true, force: true })
}

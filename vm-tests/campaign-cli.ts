// npm run vm-tests -- [--cycles N] [--seed S] [--json report.json] [--driver auto|qemu|virtualbox]
//                     [--keep DIR] [--commit-weight F] [--inject-naive-switch]
// The random-reset campaign (vm-tests/campaign.ts): prints a line per cycle and the summary
// `cycles N, resets N, old N, new N, bricked N`; exits 1 when a cycle bricked (its disks and
// serial log are kept) or an update failed by itself.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { parseArgs } from 'node:util'
import { execa } from 'execa'
import { chooseDriver } from './driver.ts'
import { runUpdateCampaign, summaryLine } from './campaign.ts'

const root = path.resolve(import.meta.dirname, '..')
const { values } = parseArgs({
  options: {
    cycles: { type: 'string', default: '20' },
    seed: { type: 'string' },
    json: { type: 'string' },
    driver: { type: 'string', default: 'auto' },
    keep: { type: 'string', default: path.join(os.tmpdir(), 'labhost-campaign-bricks') },
    'commit-weight': { type: 'string', default: '0.4' },
    'inject-naive-switch': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (values.help) {
  console.log(fs.readFileSync(import.meta.filename, 'utf8').split('\n').slice(0, 5).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'))
  process.exit(0)
}
const cycles = Number(values.cycles)
const seed = values.seed !== undefined ? Number(values.seed) : crypto.randomInt(2 ** 31)
if (!Number.isInteger(cycles) || cycles < 1 || !Number.isInteger(seed)) {
  console.error('--cycles needs a positive whole number and --seed a whole number')
  process.exit(2)
}
// the guest runs the single-file executable this checkout builds
if (!fs.existsSync(path.join(root, 'dist/labhost'))) await execa(process.execPath, [path.join(root, 'scripts/build.ts')], { stdio: 'inherit' })
const driver = await chooseDriver(values.driver)
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-campaign-'))
console.log(`campaign: ${cycles} cycles, seed ${seed}, driver ${driver.name} (${await driver.accel()}), work ${workDir}`)
try {
  const report = await runUpdateCampaign({
    driver, cycles, seed, workDir, keepDir: values.keep, commitWeight: Number(values['commit-weight']),
    injectNaiveSwitch: values['inject-naive-switch'], log: (l) => console.log(l),
  })
  if (values.json) fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n')
  console.log(`${summaryLine(report)}; ${report.resetsPerHour} resets per hour under ${report.accel}, ${(report.seconds / 60).toFixed(1)} min`)
  process.exitCode = report.bricked || report.failedUpdates ? 1 : 0
} finally {
  fs.rmSync(workDir, { recursive: true, force: true })
}

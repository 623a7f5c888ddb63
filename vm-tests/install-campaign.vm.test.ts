// The short installer-reset campaign `npm test` runs (the longer runs are `npm run vm-tests --
// --mode install --stratified --cycles N`): three resets of a lab PC installing from its stick
// onto blank disks, one aimed at each of partitioning the SSD (sgdisk, mkfs), writing the root
// image to slot A, and creating the identity (SSH host keys, machine UUID) — each from the
// guest's own `step:` announcement, at a random point inside the step. After every reset the
// stick's re-run must exit 0 and the SSD must then boot the installed version from slot A.
// LABHOST_SEED=S repeats a run; the JSON report goes to reports/install-campaign.json.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { REPO_ROOT, seedFromEnv, tmpDir } from '../test-support/test-helpers.ts'
import { QemuDriver } from './qemu-driver.ts'
import { STRATIFIED_AIMS, installSummaryLine, runInstallCampaign } from './install-campaign.ts'

const RESETS = STRATIFIED_AIMS.length

t.test(`short install campaign: ${RESETS} resets, during partitioning, the image write and identity; every re-run completes, the SSD boots`, async (t) => {
  const seed = seedFromEnv()
  const report = await runInstallCampaign({
    driver: new QemuDriver(),
    cycles: RESETS,
    seed,
    stratified: true,
    installTimeoutMs: 300_000,
    workDir: tmpDir(t, 'labhost-install-campaign-'),
    keepDir: tmpDir(t, 'labhost-install-campaign-keep-'),
    log: (l) => t.comment(l),
  })
  fs.mkdirSync(path.join(REPO_ROOT, 'reports'), { recursive: true })
  fs.writeFileSync(path.join(REPO_ROOT, 'reports/install-campaign.json'), JSON.stringify(report, null, 2) + '\n')
  t.comment(
    `seed ${seed}: ${installSummaryLine(report)} under ${report.accel}, ${report.seconds.toFixed(0)} s; step lengths measured ${JSON.stringify(report.stepMs)}`,
  )
  t.equal(report.failed, 0, 'no cycle failed', { records: report.records.filter((r) => r.outcome === 'failed') })
  t.equal(report.resets, RESETS, `${RESETS} resets`)
  t.same(
    report.records.map((r) => r.aimedStep),
    [...STRATIFIED_AIMS],
    'one reset aimed at each of partitioning, the image write and identity',
  )
  for (const r of report.records) {
    t.equal(r.step, r.aimedStep, `cycle ${r.cycle}: the reset came while the guest ran "${r.aimedStep}" (its last step line before the reset)`, { record: r })
    t.equal(r.exit, 0, `cycle ${r.cycle}: the stick's re-run exited 0`)
    t.same(r.bootedAs?.slot, 'A', `cycle ${r.cycle}: the SSD then booted the installed image from slot A`, { bootedAs: r.bootedAs })
    t.ok(r.booted, `cycle ${r.cycle}: and it is the version the stick carries`)
  }
  t.equal(report.completed, RESETS, 'every re-run completed')
})

// The short random-reset campaign `npm test` runs (the long soak is `npm run vm-tests -- --cycles
// 500`): 4 resets of a host that updates itself between 1.0.0 and 2.0.0, each followed by a boot
// that must bring up one of the two with that slot's bytes exactly the signed image. The aims are
// stratified (every second reset around the commit; each instant random inside its own slice of
// the window), so four resets reach the write (the first uniform reset is aimed inside it, from
// the guest's announcement), the later part of the update and both sides of the switch. The
// commit-aimed resets do not depend on timing: the guest (the fault-enabled build) waits before
// each GPT write of the switch until the harness answers, and the harness resets it while it waits
// before the primary array (trial armed, no switch: the old version must come back) or before the
// backup array (switched, mirror not written: the new version must come up). Before
// each update the guest fills the slot it will write with 0xFF, and the harness checks from the
// disk that the slot held none of the image's chunks: a torn or skipped write cannot pass. Then the
// same campaign with an updater that switches before it writes must report a brick. (The naive
// switch, no CRC compensation, is `npm run vm-tests -- --mutant naive-switch`; in `npm test` the
// crash replay boots its end state under BIOS and UEFI.)
// LABHOST_SEED=S repeats a run; the JSON report goes to reports/campaign.json.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { hashRange, REPO_ROOT, seedFromEnv, tmpDir } from '../test-support/test-helpers.ts'
import type { Manifest } from '../image-format/manifest.ts'
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { slotStatus } from '../bootloader/slots.ts'
import { QemuDriver } from './qemu-driver.ts'
import { HOLD_POINTS, runUpdateCampaign, summaryLine, type CampaignReport } from './campaign.ts'

const RESETS = 4
/** The short campaign's calibration, reused by the mutant that needs only the write's length. */
let calibration: CampaignReport['calibration'] = null

t.test(`short campaign: ${RESETS} resets aimed over updates and at the commit, no brick`, async (t) => {
  const seed = seedFromEnv()
  const keep = tmpDir(t, 'labhost-campaign-keep-')
  const workDir = tmpDir(t, 'labhost-campaign-')
  const report = await runUpdateCampaign({
    driver: new QemuDriver(),
    cycles: RESETS,
    seed,
    stratified: true,
    hold: true,
    workDir,
    keepDir: keep,
    log: (l) => t.comment(l),
  })
  calibration = report.calibration
  fs.mkdirSync(path.join(REPO_ROOT, 'reports'), { recursive: true })
  fs.writeFileSync(path.join(REPO_ROOT, 'reports/campaign.json'), JSON.stringify(report, null, 2) + '\n')
  t.comment(`seed ${seed}: ${summaryLine(report)} under ${report.accel}, ${report.resetsPerHour} resets/hour`)
  t.equal(report.bricked, 0, 'no reset bricked the host', { kept: report.kept })
  t.equal(report.failedUpdates, 0, 'no update failed by itself')
  t.equal(report.resets, RESETS, `${RESETS} resets`)
  t.equal(report.old + report.new, RESETS, 'every reset was followed by a boot of the old or the new version')
  const resets = report.records.filter((r) => r.resetAtMs !== null)
  t.ok(
    resets.some((r) => r.phase === 'write') &&
      resets.some((r) => r.phase === 'verify' || r.phase === 'arm-trial' || r.phase === 'commit' || r.phase === 'done'),
    'resets landed while the slot was written and around the switch',
    { phases: resets.map((r) => r.phase) },
  )
  t.ok(report.old > 0 && report.new > 0, 'some resets came back to the old version, some to the new one')
  // the commit aims landed where they were aimed, whatever the load beside the VM: between
  // arming the trial and the mirror write, on both sides of the commit sector
  const commit = resets.filter((r) => r.aim === 'commit')
  t.equal(commit.length, RESETS / 2, 'half the resets were aimed at the commit')
  t.ok(
    commit.every((r) => r.held !== undefined && (HOLD_POINTS as readonly string[]).includes(r.held)),
    'each came while the guest held inside the switch (before a sector write, or after the last)',
    { held: commit.map((r) => r.held) },
  )
  t.ok(
    commit.every((r) => r.phase === 'commit'),
    'after the trial was armed (phase commit)',
    { phases: commit.map((r) => r.phase) },
  )
  t.ok(
    commit.some((r) => r.held === 'primary-array'),
    'a reset before the commit sector was written',
  )
  t.ok(
    commit.some((r) => r.held === 'backup-array' || r.held === 'written'),
    'a reset after it, before the mirror (or the end of the switch)',
  )
  t.ok(
    commit.filter((r) => r.held === 'primary-array').every((r) => r.outcome === 'old'),
    'before the commit sector: the old version came back',
  )
  t.ok(
    commit.filter((r) => r.held !== 'primary-array').every((r) => r.outcome === 'new'),
    'after it: the new version came up',
  )
  // a trial armed for a switch that never happened is void: the initramfs drops it at the next boot
  const voided = (fs.readFileSync(path.join(workDir, 'serial.log'), 'latin1').match(/LABHOST-TRIAL-VOID /g) ?? []).length
  // (a uniform reset may also land after the trial is armed and before the commit: those may add one)
  const mayVoid = resets.filter((r) => r.aim === 'uniform' && r.outcome === 'old' && (r.phase === 'arm-trial' || r.phase === 'commit')).length
  const mustVoid = commit.filter((r) => r.held === 'primary-array').length
  t.ok(voided >= mustVoid && voided <= mustVoid + mayVoid, 'each reset before the commit sector left a trial that the next boot declared void', {
    voided,
    mustVoid,
    mayVoid,
  })
  // the evidence can fail: every update wrote over bytes that were not yet the image's
  const held = report.records.map((r) => r.heldBefore)
  t.ok(held.length > RESETS && held.every((n) => n === 0), "before every update, the slot it wrote held none of the image's chunks (checked from the disk)", {
    held,
  })
})

// The mutant the scrambled slot exists for: an updater that switches before it writes. With the
// inactive slot holding the image already (the campaign before its fix) a reset during the write
// booted the right bytes anyway; now the flagged slot is torn, and the campaign must say brick.
t.test('the same campaign with an updater that switches before writing the slot reports a brick', async (t) => {
  const keep = tmpDir(t, 'labhost-campaign-keep-')
  // uniform aims inside the write (from the guest's announcement of it): the mutant's write comes
  // after its commit, so the reset hits a flagged, torn slot
  const workDir = tmpDir(t, 'labhost-campaign-')
  const report = await runUpdateCampaign({
    driver: new QemuDriver(),
    cycles: 1,
    seed: 1,
    commitWeight: 0,
    aimAtWrite: true,
    workDir,
    keepDir: keep,
    mutant: 'commit-before-write',
    // (the short campaign's: no calibration update of its own, the first update is aimed)
    ...(calibration ? { calibration } : {}),
    bootTimeoutMs: 60_000,
    bootloaderTimeoutMs: 20_000,
    log: (l) => t.comment(l),
  })
  t.equal(report.bricked, 1, summaryLine(report))
  const last = report.records.at(-1)!
  t.equal(last.phase, 'write', 'the reset hit the write', { record: last })
  t.equal(last.heldBefore, 0, 'over a slot that held none of the image')
  // A torn slot fails in its own bootloader (gptmbr loads the slot's extlinux, which finds garbage
  // where ldlinux.sys and the kernel should be) and prints nothing on the serial console, so the
  // signal here is no SYSLINUX banner within 20 s of the reset (it comes within seconds on every
  // good boot), or no userspace within 60 s; a slow boot called a brick would still have to pass
  // the checks of the kept disk below, which show the reason: the flagged slot is the one being
  // written and does not hold the image.
  t.match(last.why, /^no bootloader output within 20 s|^no userspace within 60 s|^the boot failed: |whose bytes are not that signed image/, 'a brick', {
    why: last.why,
  })
  const serial = fs.readFileSync(path.join(report.kept!, 'serial.log'), 'latin1')
  const cycle = serial.slice(serial.lastIndexOf('LABHOST-CYCLE-UPDATE'))
  t.ok(
    cycle.indexOf('LABHOST-PHASE done') >= 0 && cycle.indexOf('LABHOST-PHASE done') < cycle.indexOf('LABHOST-PHASE write'),
    'the mutant switched before it wrote',
  )
  // the right reason: the kept disk flags the slot it was writing, and that slot is not the image
  const d = openGptDisk(path.join(report.kept!, 'ssd.img'))
  const g = readGpt(d)
  d.close()
  const st = slotStatus(g)
  t.equal(st.active, last.to === '2.0.0' ? 'B' : 'A', 'the GPT flags the slot being written')
  const slot = st.active === 'A' ? 0 : 1
  const m = JSON.parse(fs.readFileSync(path.join(workDir, `v${last.to}`, 'manifest.json'), 'utf8')) as Manifest
  t.not(
    hashRange(path.join(report.kept!, 'ssd.img'), Number(g.entries[slot]!.firstLba) * 512, m.image.size),
    m.image.sha256,
    'and that slot does not hold the image: it is torn',
  )
  t.notMatch(
    cycle.slice(cycle.indexOf('LABHOST-PHASE write')),
    new RegExp(`LABHOST-USERSPACE version=${last.to.replace(/\./g, '\\.')}`),
    'which never reached userspace',
  )
})

// Resets during the rollback (issue 15, 4), as `npm test` runs them (the long run, with resets
// also in the trial boots and the failing userspace, is `npm run vm-tests -- --mode rollback
// --cycles 100`; its report is under vm-tests/results/): a host on a good version updates to
// 3.0.0, a version that fails its trial; the unreset calibration cycle records what the disk sees
// of the initramfs's rollback write; then one reset lands inside that rollback write (from the
// initramfs's own announcement of it), and the host must come back by itself on the good version
// (its slot's bytes the signed image, the primary GPT flagging it) within the trial's boots plus
// two. (npm test keeps one reset, the one aimed at the write that matters: each reset costs a
// minute of TCG boots.) Then the rule the rollback checks first: the initramfs writes the saved
// sector back only over the sector the switch wrote, shown on a disk whose GPT was edited after
// the switch (the campaign above is the control: each of its rollbacks ran over the sector its
// own switch wrote).
// LABHOST_SEED=S repeats a run; the JSON report goes to reports/rollback-campaign.json.
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import { REPO_ROOT, seedFromEnv, tmpDir } from '../test-support/test-helpers.ts'
import { copyFileInto, Disk } from '../lib/blockdev.ts'
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { applySectorWrites } from '../bootloader/sector-writes.ts'
import { slotStatus } from '../bootloader/slots.ts'
import { planSwitch } from '../bootloader/switch.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { writeTrialState } from '../image-format/trial-state.ts'
import { QemuDriver } from './qemu-driver.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildCampaignImages } from './campaign.ts'
import { judge } from './crash-replay.ts'
import { buildHostDisks, readPartitionFiles, withPartition } from '../test-support/host-disks.ts'
import { rollbackSummaryLine, runRollbackCampaign } from './rollback-campaign.ts'

const AIMS = ['rollback'] as const
const RESETS = AIMS.length

t.test(`short rollback campaign: a reset inside the initramfs's rollback write, no brick`, async (t) => {
  const seed = seedFromEnv()
  const keep = tmpDir(t, 'labhost-rollback-keep-')
  // one trial boot (the soak gives two): the countdown 1 -> 0, then the rollback
  const report = await runRollbackCampaign({
    driver: new QemuDriver(),
    cycles: RESETS,
    seed,
    stratified: true,
    aims: AIMS,
    trialBoots: 1,
    workDir: tmpDir(t, 'labhost-rollback-'),
    keepDir: keep,
    log: (l) => t.comment(l),
  })
  fs.mkdirSync(path.join(REPO_ROOT, 'reports'), { recursive: true })
  fs.writeFileSync(path.join(REPO_ROOT, 'reports/rollback-campaign.json'), JSON.stringify(report, null, 2) + '\n')
  t.comment(`seed ${seed}: ${rollbackSummaryLine(report)} under ${report.accel}, ${(report.seconds / 60).toFixed(1)} min`)
  t.equal(report.bricked, 0, 'no reset left the failing version flagged, or no userspace', { kept: report.kept, stopped: report.stopped })
  t.equal(report.failedUpdates, 0, 'no update failed by itself')
  t.equal(report.resets, RESETS, `${RESETS} resets`)
  const resets = report.records.filter((r) => r.resetAtMs !== null)
  t.same(
    resets.map((r) => r.aim),
    AIMS,
    'the reset was aimed at the rollback write',
  )
  for (const r of resets) {
    t.ok(r.hit, `the ${r.aim} reset landed in its phase: ${r.phase} (${r.resetAtMs} ms from ${r.anchor})`, { record: r })
    t.same(r.booted, r.good, `after the ${r.aim} reset the host came back to ${r.good.version} in slot ${r.good.slot}`)
    t.ok(
      r.bootsUntilGood !== null && r.bootsUntilGood <= report.trialBoots + 2,
      `within ${report.trialBoots + 2} boots (${r.bootsUntilGood}): ${r.bootsAfter.join(' | ')}`,
    )
  }
  t.equal(report.lost, 0, 'no write the initramfs had announced (after its sync) was lost to a reset')
  t.equal(report.rolledBack, RESETS, 'every reset cycle ended rolled back')
  t.equal(report.records[0]?.outcome, 'rolled-back', 'and so did the unreset calibration cycle')
  // the evidence can fail: every update of the failing version wrote over bytes that were not yet its image's
  t.same(
    report.records.map((r) => r.heldBefore),
    report.records.map(() => 0),
    "before every update, the failing slot held none of 3.0.0's chunks (checked from the disk)",
  )

  // what the disk saw of the rollback, recorded during the calibration cycle
  const rw = report.rollbackWrites
  t.ok(rw, "the rollback's writes were recorded")
  if (rw) {
    t.comment(`GPT writes of the calibration cycle: ${JSON.stringify(rw.writes)}`)
    t.equal(rw.writes.filter((w) => w.sets === 'commit').length, 2, "the update's switch: the commit and its mirror")
    t.same(
      rw.rollbackPrimary.map((w) => [w.lba, w.bytes]),
      [[rw.entriesLba.primary, 512]],
      `the rollback reaches the disk as one 512-byte write at LBA ${rw.entriesLba.primary}`,
    )
    t.same(
      rw.rollbackBackup.map((w) => [w.lba, w.bytes]),
      [[rw.entriesLba.backup, 512]],
      'its mirror as one 512-byte write at the backup entries sector',
    )
    t.ok(rw.rollbackPrimary[0]?.durableBeforeNext, 'the primary write was flushed before the mirror was written')
    t.ok(rw.oneSector, 'one sector, durable before its mirror')
  }
})

t.test('the initramfs writes the saved sector back only over the sector the switch wrote', async (t) => {
  const dir = tmpDir(t, 'labhost-rollback-rule-')
  const { dirs } = await buildCampaignImages(dir)
  const layout = loadRecipe('test').layout
  const disks = await buildHostDisks(dir, layout, `${dirs['1.0.0']}/root.img`, { slots: ['A'], flag: 'A', restMiB: 16 })
  copyFileInto(`${dirs['2.0.0']}/root.img`, disks.ssd, disks.ssdPlan[1]!.firstLba * 512)
  // what labhost update leaves once the trial's boots are used up: slot B flagged, on trial, 0 boots left
  const disk = Disk.open(disks.ssd)
  let commit: Buffer, rollback: Buffer, primaryLba: number
  try {
    const toB = planSwitch(disk, readGpt(disk), 'B')
    const w = toB.writes.find((x) => x.region === 'primary-array')!
    commit = w.data
    primaryLba = Number(w.lba)
    rollback = disk.readSectors(w.lba, 1)
    await withPartition(
      disks.ssd,
      disks.ssdPlan.find((p) => p.mount === layout.stateMount)!,
      async (root) =>
        writeTrialState(root, {
          slot: 'B',
          bootsLeft: 0,
          version: '2.0.0',
          primaryLba: w.lba,
          backupLba: toB.writes.find((x) => x.region === 'backup-array')!.lba,
          committedSector: w.data,
          rollbackSector: rollback,
          fromVersion: '1.0.0',
        }),
    )
    await applySectorWrites(disk, toB.writes)
  } finally {
    disk.close()
  }
  const edited = disks.ssd
  // an edit after the switch: a partition renamed (sgdisk rewrites the entries sector, the CRCs and the backup)
  await execa('sgdisk', ['--change-name=4:lab-log', edited])
  const sector = (file: string, lba: number) => {
    const d = Disk.open(file)
    try {
      return d.readSectors(BigInt(lba), 1)
    } finally {
      d.close()
    }
  }
  const gptBytes = (file: string) => {
    const d = Disk.open(file)
    try {
      const g = readGpt(d)
      const backupFirst = g.backup.header!.entriesLba
      return Buffer.concat([d.readSectors(0n, 34), d.readSectors(backupFirst, Number(g.lastLba - backupFirst + 1n))])
    } finally {
      d.close()
    }
  }
  const active = (file: string) => {
    const d = openGptDisk(file)
    try {
      const s = slotStatus(readGpt(d))
      return { active: s.active, primaryValid: s.primaryValid, backupValid: s.backupValid }
    } finally {
      d.close()
    }
  }
  t.notOk(sector(edited, primaryLba).equals(commit), 'the edit changed the entries sector the switch wrote')
  t.same(active(edited), { active: 'B', primaryValid: true, backupValid: true }, 'slot B is still the flagged one, the tables valid')
  // what writing the saved sector over the edited table would do: the kernel would see no partitions
  const region = Buffer.from(gptBytes(edited).subarray(0, 2 * 512 + 128 * 128))
  rollback.copy(region, primaryLba * 512)
  const slots = { A: { offset: disks.ssdPlan[0]!.firstLba * 512, bytes: 192 << 20 }, B: { offset: disks.ssdPlan[1]!.firstLba * 512, bytes: 192 << 20 } }
  t.match(
    judge(region, 512, slots, { A: 'old', B: 'new' }),
    { boots: 'nothing', why: /primary entry array CRC wrong/ },
    'the saved sector over the edited table would brick the host: the check is what prevents it',
  )

  const boot = (file: string) =>
    bootUntilPowerOff(
      { disks: [{ file, bus: 'ide-hd', rotationRate: 1 }] } satisfies VmSpec,
      300_000,
      /LABHOST-ROLLBACK from=\S+ to=\S+\r?\n|LABHOST-INITRAMFS-FAIL [^\n]*\n|LABHOST-ROOT [^\n]*\n/,
    )
  const before = gptBytes(edited)
  const refused = await boot(edited)
  t.match(
    refused.serial,
    /LABHOST-INITRAMFS-FAIL the GPT sector is not the one the update wrote; not rolling back/,
    'edited: the initramfs refuses and says why',
    { serial: refused.serial.slice(-2000) },
  )
  t.notMatch(refused.serial, /LABHOST-ROLLBACK/, 'edited: no rollback')
  t.ok(gptBytes(edited).equals(before), 'edited: not one byte of either GPT was written')
  const state = await readPartitionFiles(edited, 'lab-log', ['labhost/trial', 'labhost/last-result'])
  t.match(state['labhost/trial'], /^TRIAL_SLOT=B$/m, 'edited: the trial is still pending')
  t.match(state['labhost/trial'], /^BOOTS_LEFT=0$/m)
  t.equal(state['labhost/last-result'], '', 'edited: no result recorded')
})

// `slots switch` repairing a stale backup (docs/design.md: "A power cut between the commit write and the
// mirror leaves a valid backup with the old flags; `slots switch` / `slots repair` mirror the
// sector"). The cut is made by applying only the commit write of a switch plan; the backup array
// then differs from the primary in the root-entry sector alone, both tables CRC-valid.
import t, { type Test } from 'tap'
import { Disk } from '../../lib/blockdev.ts'
import { differingBlocks, failDiag, hashRange, loop, readRange, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { readGpt } from '../gpt.ts'
import { applySectorWrites } from '../sector-writes.ts'
import { slotStatus } from '../slots.ts'
import { planSwitch } from '../switch.ts'
import { makeGptDisk, sgdiskVerify, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'

const MiB = 1 << 20
const DISK_BYTES = 64 * MiB

const edges = (dev: string) => ({
  head: readRange(dev, 0, MiB),
  tail: readRange(dev, DISK_BYTES - MiB, MiB),
  middle: hashRange(dev, MiB, DISK_BYTES - 2 * MiB),
})

for (const sectorSize of [512, 4096]) {
  const cutAfterCommit = async (t: Test) => {
    const dir = tmpDir(t)
    const dev = await loop(t, sparseFile(`${dir}/disk.img`, DISK_BYTES), { sectorSize })
    await makeGptDisk(dev, STANDARD_LAYOUT)
    const start = edges(dev)
    const disk = Disk.open(dev)
    t.teardown(() => disk.close())
    const plan = planSwitch(disk, readGpt(disk), 'B')
    t.same(
      plan.writes.map((w) => w.region),
      ['primary-array', 'backup-array'],
      'a switch plan: the commit, then the mirror',
    )
    await applySectorWrites(disk, plan.writes.slice(0, 1)) // the power goes here
    const g = readGpt(disk)
    const st = slotStatus(g)
    t.ok(st.primaryValid && st.backupValid && !st.tablesAgree && st.active === 'B', 'cut after the commit: B boots, both tables valid, the backup stale')
    const backupArraySector = Number(g.backup.header!.entriesLba) + plan.arraySector
    t.same(g.differingSectors, [plan.arraySector], 'the backup differs in the root-entry sector only')
    return { dev, disk, start, cut: edges(dev), backupArraySector, primaryArraySector: 2 + plan.arraySector }
  }
  // the backup array's sector index within the last MiB of the disk
  const inTail = (lba: number) => lba - (DISK_BYTES - MiB) / sectorSize

  t.test(`${sectorSize}-byte sectors: switch to the slot already flagged mirrors the stale sector into the backup, and nothing else`, async (t) => {
    const c = await cutAfterCommit(t)
    const st = await runCli(['slots', 'status', '--disk', c.dev])
    t.equal(st.code, 1, 'slots status: exit 1')
    t.match(st.stdout, /DIFFER/, 'slots status reports the disagreement')

    const dry = await runCli(['slots', 'switch', '--disk', c.dev, '--to', 'B', '--dry-run', '--json'])
    t.equal(dry.code, 0, failDiag(dry))
    t.match(
      JSON.parse(dry.stdout),
      { alreadyActive: true, writes: [{ region: 'backup-array', lba: String(c.backupArraySector) }] },
      '--dry-run: one write, the backup mirror',
    )
    t.equal(JSON.parse(dry.stdout).writes.length, 1)
    t.same(edges(c.dev), c.cut, '--dry-run wrote nothing')

    const r = await runCli(['slots', 'switch', '--disk', c.dev, '--to', 'B', '--json'])
    t.equal(r.code, 0, 'exit 0', failDiag(r))
    t.same(
      JSON.parse(r.stdout).writes.map((w: { region: string }) => w.region),
      ['backup-array'],
      'it wrote the mirror only',
    )
    const after = edges(c.dev)
    t.ok(after.head.equals(c.cut.head), 'the primary region is untouched')
    t.equal(after.middle, c.cut.middle, 'the partitions are untouched')
    t.same(differingBlocks(c.cut.tail, after.tail, sectorSize), [inTail(c.backupArraySector)], 'exactly the backup root-entry sector changed')
    t.ok(
      readRange(c.dev, c.backupArraySector * sectorSize, sectorSize).equals(readRange(c.dev, c.primaryArraySector * sectorSize, sectorSize)),
      'it now equals the primary sector',
    )
    const healed = slotStatus(readGpt(c.disk))
    t.ok(healed.tablesAgree && healed.primaryValid && healed.backupValid && healed.active === 'B', 'tables agree, B flagged')
    t.match(await sgdiskVerify(c.dev), /No problems found/)
    t.equal((await runCli(['slots', 'status', '--disk', c.dev])).code, 0, 'slots status: exit 0 again')
    // and the result is the disk a whole switch to B makes: back to A restores the start byte for byte
    t.equal((await runCli(['slots', 'switch', '--disk', c.dev, '--to', 'A'])).code, 0)
    t.same(edges(c.dev), c.start, 'a switch back to A leaves the disk as it was before the cut switch')
  })

  t.test(`${sectorSize}-byte sectors: switch back over a stale backup: one commit write, tables agree, the disk as before`, async (t) => {
    const c = await cutAfterCommit(t)
    const r = await runCli(['slots', 'switch', '--disk', c.dev, '--to', 'A', '--json'])
    t.equal(r.code, 0, 'exit 0', failDiag(r))
    // the stale backup already holds A's flags: the commit write alone makes the tables agree
    t.same(
      JSON.parse(r.stdout).writes.map((w: { region: string }) => w.region),
      ['primary-array'],
      'the commit write only',
    )
    const healed = slotStatus(readGpt(c.disk))
    t.ok(healed.tablesAgree && healed.active === 'A', 'tables agree, A flagged')
    t.same(edges(c.dev), c.start, 'byte-identical to the disk before the cut switch')
  })
}

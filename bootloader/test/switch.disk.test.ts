// The one-sector switch on loop devices with 512- and 4096-byte logical sectors.
import t from 'tap'
import { Disk } from '../../lib/blockdev.ts'
import { differingBlocks, failDiag, loop, readRange, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { readGpt } from '../gpt.ts'
import { applySectorWrites } from '../sector-writes.ts'
import { planSwitch } from '../switch.ts'
import { slotStatus } from '../slots.ts'
import { makeGptDisk, sgdiskVerify, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'

const MiB = 1 << 20
const DISK_BYTES = 64 * MiB

function edges(dev: string): { head: Buffer; tail: Buffer } {
  return { head: readRange(dev, 0, MiB), tail: readRange(dev, DISK_BYTES - MiB, MiB) }
}

for (const sectorSize of [512, 4096]) {
  t.test(`${sectorSize}-byte sectors`, async (t) => {
    const dir = tmpDir(t)
    const dev = await loop(t, sparseFile(`${dir}/disk.img`, DISK_BYTES), { sectorSize })
    await makeGptDisk(dev, STANDARD_LAYOUT)
    const start = edges(dev)

    const dry = await runCli(['slots', 'switch', '--disk', dev, '--to', 'B', '--dry-run', '--json'])
    t.equal(dry.code, 0, 'exits 0', failDiag(dry))
    t.equal(JSON.parse(dry.stdout).writes.length, 2, 'the plan names the commit write and the mirror')
    t.same(edges(dev), start, '--dry-run writes nothing')

    const toB = await runCli(['slots', 'switch', '--disk', dev, '--to', 'B'])
    t.equal(toB.code, 0, 'exits 0', failDiag(toB))
    const afterB = edges(dev)
    t.same(differingBlocks(start.head, afterB.head, sectorSize), [2], 'exactly one logical sector of the primary region changed: the first array sector')
    const backupEntriesSector = DISK_BYTES / sectorSize - 1 - Math.ceil(16384 / sectorSize) - (DISK_BYTES - MiB) / sectorSize
    t.same(differingBlocks(start.tail, afterB.tail, sectorSize), [backupEntriesSector], 'exactly one sector of the backup region changed: its mirror')
    t.match(await sgdiskVerify(dev), /No problems found/, 'sgdisk -v: No problems found')

    const st = await runCli(['slots', 'status', '--disk', dev, '--json'])
    const status = JSON.parse(st.stdout)
    t.equal(st.code, 0)
    t.equal(status.active, 'B')
    t.equal(status.sectorSize, sectorSize)
    t.ok(status.tablesAgree && status.primaryValid && status.backupValid)
    t.same(
      status.slots.map((s: { name: string }) => s.name),
      ['rootA', 'rootB'],
      'names read intact after compensation',
    )

    const again = await runCli(['slots', 'switch', '--disk', dev, '--to', 'B', '--json'])
    t.equal(again.code, 0)
    t.equal(JSON.parse(again.stdout).writes.length, 0, 'switching to the active slot writes nothing')

    const toA = await runCli(['slots', 'switch', '--disk', dev, '--to', 'A'])
    t.equal(toA.code, 0, 'exits 0', failDiag(toA))
    t.same(edges(dev), start, 'A -> B -> A leaves the disk byte-identical to the start')
  })

  t.test(`${sectorSize}-byte sectors: power cut between commit and mirror`, async (t) => {
    const dir = tmpDir(t)
    const dev = await loop(t, sparseFile(`${dir}/disk.img`, DISK_BYTES), { sectorSize })
    await makeGptDisk(dev, STANDARD_LAYOUT)
    const disk = Disk.open(dev)
    t.teardown(() => disk.close())
    const plan = planSwitch(disk, readGpt(disk), 'B')
    t.equal(plan.writes[0]!.region, 'primary-array', 'the commit write comes first')
    await applySectorWrites(disk, plan.writes.slice(0, 1))
    const status = slotStatus(readGpt(disk))
    t.equal(status.active, 'B', 'after the commit write alone, B boots')
    t.ok(status.primaryValid && status.backupValid, 'both tables stay valid (the CRC is unchanged)')
    t.notOk(status.tablesAgree, 'the backup still holds the old flags')
    const st = await runCli(['slots', 'status', '--disk', dev])
    t.equal(st.code, 1, 'status reports the stale backup with a non-zero exit')
    t.match(st.stdout, /DIFFER/)
    const repair = await runCli(['slots', 'repair', '--disk', dev])
    t.equal(repair.code, 0, 'exits 0', failDiag(repair))
    const healed = slotStatus(readGpt(disk))
    t.ok(healed.tablesAgree, 'repair mirrors the primary sector into the backup')
    t.equal(healed.active, 'B')
    t.match(await sgdiskVerify(dev), /No problems found/)
  })
}

// The test image from `labhost image build test`, booted: its initramfs mounts the slot whose
// bootable bit is set in the primary GPT, userspace mounts the layout's filesystems by UUID, and
// a slot on trial that is never marked good is rolled back by the initramfs.
import fs from 'node:fs'
import t, { type Test } from 'tap'
import { Disk } from '../lib/blockdev.ts'
import { runCli, tmpDir } from '../lib/test-helpers.ts'
import { readGpt } from '../bootloader/gpt.ts'
import { planSwitch, applySwitch } from '../bootloader/switch.ts'
import { slotStatus } from '../bootloader/slots.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { writeTrialState } from '../updater/trial-state.ts'
import { readLastResult } from '../updater/host-state.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildHostDisks, withPartition, type HostDisks } from './fixtures/host-disks.ts'

const dir = tmpDir(t, 'labhost-vm-image-')
const layout = loadRecipe('test').layout
let image = ''

t.before(async () => {
  t.equal((await runCli(['image', 'keygen', '--out', `${dir}/keys`])).code, 0)
  const b = await runCli(['image', 'build', 'test', '--out', `${dir}/out`, '--key', `${dir}/keys/labhost-signing.key`])
  if (b.code !== 0) throw new Error(`image build failed: ${b.stderr}`)
  image = `${dir}/out/root.img`
})

async function boot(t: Test, disks: HostDisks) {
  const spec: VmSpec = { disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }] }
  const r = await bootUntilPowerOff(spec, 240_000)
  t.comment(`booted under ${r.accel} in ${r.seconds.toFixed(1)} s`)
  return r.serial
}

/** What an update does after writing slot B: switch to it and arm a trial with `boots` boots. */
async function putBOnTrial(t: Test, disks: HostDisks, boots: number): Promise<Disk> {
  const disk = Disk.open(disks.ssd)
  t.teardown(() => disk.close())
  const plan = planSwitch(disk, readGpt(disk), 'B')
  const primaryLba = plan.writes[0]!.lba
  const rollbackSector = disk.readSectors(primaryLba, 1)
  await applySwitch(disk, plan)
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === layout.stateMount)!, async (root) => writeTrialState(root, {
    slot: 'B', bootsLeft: boots, version: '1.0.0', primaryLba, backupLba: plan.writes[1]!.lba,
    committedSector: disk.readSectors(primaryLba, 1), rollbackSector,
  }))
  return disk
}

const userspace = (serial: string) => /LABHOST-USERSPACE version=(\S+) slot=([AB])/.exec(serial)

t.test('image in slot A, A flagged: the initramfs mounts A, fstab mounts every partition by UUID', async (t) => {
  const d = tmpDir(t)
  const disks = await buildHostDisks(d, layout, image, { slots: ['A'], flag: 'A' })
  const serial = await boot(t, disks)
  t.match(serial, /LABHOST-ROOT slot=A dev=sda1/, 'initramfs picked slot A', { serial: serial.slice(-3000) })
  t.match(serial, /LABHOST-CLI labhost \d+\.\d+\.\d+ active=A/, "the labhost binary in the image runs and reads the GPT")
  t.same(userspace(serial)?.slice(1), ['1.0.0', 'A'], 'userspace runs from A')
  for (const m of ['/persistent', '/var/log', '/qcow2/backing', '/qcow2/user']) t.match(serial, `LABHOST-MOUNT ${m}`, `${m} mounted`)
})

t.test('the same image in both slots, B flagged: the initramfs mounts B', async (t) => {
  const d = tmpDir(t)
  const disks = await buildHostDisks(d, layout, image, { slots: ['A', 'B'], flag: 'B' })
  const serial = await boot(t, disks)
  t.match(serial, /LABHOST-ROOT slot=B dev=sda2/)
  t.same(userspace(serial)?.slice(1), ['1.0.0', 'B'])
})

t.test('trial: B gets its boots, then the initramfs rolls back to A by itself', async (t) => {
  const d = tmpDir(t)
  const disks = await buildHostDisks(d, layout, image, { slots: ['A', 'B'], flag: 'A' })
  const disk = await putBOnTrial(t, disks, 1)
  const logPart = disks.ssdPlan.find((p) => p.mount === layout.stateMount)!
  const first = await boot(t, disks)
  t.match(first, /LABHOST-TRIAL slot=B left=0/, 'first boot of B counts down')
  t.same(userspace(first)?.[2], 'B')
  const second = await boot(t, disks)
  t.match(second, /LABHOST-ROLLBACK from=B to=A/, 'no boots left: the initramfs switches back')
  t.equal(userspace(second), null, 'and reboots before userspace')
  const status = slotStatus(readGpt(disk))
  t.equal(status.active, 'A')
  t.ok(status.tablesAgree && status.primaryValid && status.backupValid, 'both GPTs valid and in agreement after the rollback')
  const gptRegion = disk.read(0, 34 * 512)
  t.ok(gptRegion.equals(fs.readFileSync(disks.ssd).subarray(0, 34 * 512)))
  const third = await boot(t, disks)
  t.same(userspace(third)?.[2], 'A', 'the host comes back on A')
  const result = await withPartition(disks.ssd, logPart, async (root) => readLastResult({ bootFile: '', versionFile: '', stateRoot: root }))
  t.match(result, { RESULT: 'rolled-back', FROM: 'B', TO: 'A', VERSION: '1.0.0' }, 'the rollback is recorded for labhost status')
})

t.test('trial ended by labhost mark-good in userspace: no rollback, status says good', async (t) => {
  const d = tmpDir(t)
  const disks = await buildHostDisks(d, layout, image, { slots: ['A', 'B'], flag: 'A' })
  await putBOnTrial(t, disks, 1)
  // the test image's init runs /persistent/test-hook: here, the health check passes at once
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === '/persistent')!, async (root) => {
    fs.writeFileSync(`${root}/test-hook`, '#!/bin/sh\necho "LABHOST-MARK $(/usr/sbin/labhost mark-good)"\necho "LABHOST-STATUS $(/usr/sbin/labhost status --json | tr -d \' \\n\')"\n', { mode: 0o755 })
  })
  const first = await boot(t, disks)
  t.match(first, /LABHOST-TRIAL slot=B left=0/)
  t.match(first, /LABHOST-MARK slot B \(version 1\.0\.0\) marked good/)
  const second = await boot(t, disks)
  t.notMatch(second, /LABHOST-ROLLBACK/, 'no rollback')
  t.same(userspace(second)?.[2], 'B', 'B stays')
  const st = JSON.parse(/LABHOST-STATUS (\{.*\})/.exec(second)?.[1] ?? '{}')
  t.match(st.lastResult, { RESULT: 'good', SLOT: 'B', VERSION: '1.0.0' }, 'labhost status in the guest reports the good trial')
  t.equal(st.gpt?.active, 'B')
  t.same(st.problems, [])
})

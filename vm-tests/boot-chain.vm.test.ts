// The boot chain, booted for real: SeaBIOS → gptmbr → extlinux in the flagged slot → Debian
// kernel → busybox initramfs reporting which slot booted and which partitions the kernel sees.
// A second, 4Kn disk (virtio, 4096-byte logical blocks) is switched alongside and must still
// show its partitions. KVM when it can run real-mode code here, TCG otherwise.
import t, { type Test } from 'tap'
import { loop, runCli, tmpDir } from '../test-support/test-helpers.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { build4KnDisk, buildBootChainDisk, buildSlotImages, parseBootReport } from './fixtures/boot-chain-disk.ts'

const dir = tmpDir(t, 'labhost-vm-boot-')
const disk = `${dir}/disk.img`
const disk4k = `${dir}/disk4k.img`
const spec: VmSpec = {
  disks: [
    { file: disk, bus: 'ide-hd' },
    { file: disk4k, bus: 'virtio-blk', logicalBlockSize: 4096 },
  ],
}

async function boot(t: Test) {
  const r = await bootUntilPowerOff(spec, 240_000)
  t.comment(`booted under ${r.accel} in ${r.seconds.toFixed(1)} s`)
  t.ok(r.poweredOff, 'the guest reached userspace and powered off', { serialTail: r.serial.slice(-2000), stderr: r.stderr })
  return parseBootReport(r.serial)
}

const PARTS = { sda1: 'rootA', sda2: 'rootB', sda3: 'persistent' }
const PARTS_4K = { vda1: 'rootA', vda2: 'rootB', vda3: 'persistent' }

t.before(async () => {
  await buildBootChainDisk(disk, await buildSlotImages(dir))
  await build4KnDisk(disk4k)
})

// (Slot A flagged and booting is image-boot.vm.test.ts and the first boot of every other VM test;
// here the disks start with A flagged, as read offline, and the boot is the one after the switch.)
t.test('labhost slots switch --to B: B boots, the kernel still parses both tables', async (t) => {
  const before = await runCli(['slots', 'status', '--disk', disk, '--json'])
  t.match(JSON.parse(before.stdout), { active: 'A' }, 'slot A is flagged before the switch')
  t.equal((await runCli(['slots', 'switch', '--disk', disk, '--to', 'B'])).code, 0)
  const dev4k = await loop(t, disk4k, { sectorSize: 4096 })
  t.equal((await runCli(['slots', 'switch', '--disk', dev4k, '--to', 'B'])).code, 0)
  const rep = await boot(t)
  t.equal(rep.slot, 'B')
  t.same(rep.disks.sda, { lbs: 512, parts: PARTS })
  t.same(rep.disks.vda, { lbs: 4096, parts: PARTS_4K })
})

// Switching back (B -> A) and booting is every second cycle of the update campaign
// (campaign.vm.test.ts) and the rollbacks of uefi-boot.vm.test.ts and the rollback campaign; a switch without the CRC
// compensation losing the partitions is the campaign's naive-switch mutant and the crash replay's
// naive end state, both booted with the initramfs's own failure marker.

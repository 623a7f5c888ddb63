// The test image from `labhost image build test`, booted: its initramfs mounts the slot whose
// bootable bit is set in the primary GPT, and userspace mounts the layout's filesystems by UUID.
// (Trial boots and rollback are proven end to end by update-guest.vm.test.ts; a B-flagged slot
// booting is what every other cycle of the campaign, campaign.vm.test.ts, checks.)
import t, { type Test } from 'tap'
import { runCli, tmpDir } from '../test-support/test-helpers.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildHostDisks, type HostDisks } from '../test-support/host-disks.ts'

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
  const spec: VmSpec = {
    disks: [
      { file: disks.ssd, bus: 'ide-hd', rotationRate: 1 },
      { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 },
    ],
  }
  const r = await bootUntilPowerOff(spec, 240_000)
  t.comment(`booted under ${r.accel} in ${r.seconds.toFixed(1)} s`)
  return r.serial
}

const userspace = (serial: string) => /LABHOST-USERSPACE version=(\S+) slot=([AB])/.exec(serial)

t.test('image in slot A, A flagged: the initramfs mounts A, fstab mounts every partition by UUID', async (t) => {
  const d = tmpDir(t)
  const disks = await buildHostDisks(d, layout, image, { slots: ['A'], flag: 'A' })
  const serial = await boot(t, disks)
  // the kernel may name either disk sda (the two IDE disks probe in either order); only the SSD
  // has root slots, so partition 1 of whichever it is
  t.match(serial, /LABHOST-ROOT slot=A dev=sd[ab]1\r?\n/, 'initramfs picked slot A', { serial: serial.slice(-3000) })
  t.match(serial, /LABHOST-CLI labhost \d+\.\d+\.\d+ active=A/, 'the labhost binary in the image runs and reads the GPT')
  t.same(userspace(serial)?.slice(1), ['1.0.0', 'A'], 'userspace runs from A')
  for (const m of ['/persistent', '/var/log', '/qcow2/backing', '/qcow2/user']) t.match(serial, `LABHOST-MOUNT ${m}`, `${m} mounted`)
})

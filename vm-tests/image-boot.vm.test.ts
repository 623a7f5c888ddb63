// The test image from `labhost image build test`, booted: its initramfs mounts the slot whose
// bootable bit is set in the primary GPT, and userspace mounts the layout's filesystems by UUID.
// The SSD boots as a lab VM would (issue 22): the whole disk converted to a qcow2 base, published
// with `labhost vm-image publish`, pulled into a backing directory with `labhost vm-image pull`,
// and booted from a fresh user volume on the pulled copy (`qemu-img create -b`), which it writes
// while the base stays the signed bytes.
// (Trial boots and rollback are proven end to end by uefi-boot.vm.test.ts and the campaigns; a B-flagged slot
// booting is what every other cycle of the campaign, campaign.vm.test.ts, checks.)
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { run } from '../lib/exec.ts'
import { hashWhole, runCli, tmpDir } from '../test-support/test-helpers.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { buildImage } from '../image-build/build.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildHostDisks, type HostDisks } from '../test-support/host-disks.ts'

const dir = tmpDir(t, 'labhost-vm-image-')
const layout = loadRecipe('test').layout
let image = ''

const keys = cacheKeys()

t.before(async () => {
  // signed with the suite's key, so the image comes from the cache (scripts/prebuild-images.ts)
  const b = await buildImage('test', { out: `${dir}/out`, keyFile: keys.privateKeyFile })
  image = path.join(path.dirname(b.manifestFile), 'root.img')
})

async function boot(t: Test, disks: HostDisks, ssd: { file: string; format: 'raw' | 'qcow2' } = { file: disks.ssd, format: 'raw' }) {
  const spec: VmSpec = {
    disks: [
      { file: ssd.file, format: ssd.format, bus: 'ide-hd', rotationRate: 1 },
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
  // the SSD as a VM base: converted, published, pulled (a directory source), a user volume on it
  const src = path.join(d, 'lab-pc.qcow2')
  await run('qemu-img', ['convert', '-O', 'qcow2', disks.ssd, src])
  const pub = await runCli([
    'vm-image',
    'publish',
    src,
    '--name',
    'lab-pc',
    '--image-version',
    '1.0.0',
    '--os',
    'linux',
    '--signing-key',
    keys.privateKeyFile,
    '--out',
    path.join(d, 'pub'),
  ])
  t.equal(pub.code, 0, pub.stderr)
  const backing = path.join(d, 'backing')
  const user = path.join(d, 'user')
  for (const x of [backing, user]) fs.mkdirSync(x)
  const pulled = await runCli(['vm-image', 'pull', path.join(d, 'pub'), '--trusted-key', keys.publicKeyFile, '--dir', backing, '--user-dir', user, '--json'])
  t.equal(pulled.code, 0, pulled.stderr)
  const base = path.join(backing, 'lab-pc-1.0.0.qcow2')
  const signed = (JSON.parse(pulled.stdout) as { plan: { sha256: string } }).plan.sha256
  t.equal(hashWhole(base), signed, 'the pulled base is the signed bytes')
  const volume = path.join(user, 'student.qcow2')
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', volume])
  const serial = await boot(t, disks, { file: volume, format: 'qcow2' })
  t.equal(hashWhole(base), signed, 'the base is unchanged after the boot: the guest wrote its user volume')
  // the kernel may name either disk sda (the two IDE disks probe in either order); only the SSD
  // has root slots, so partition 1 of whichever it is
  t.match(serial, /LABHOST-ROOT slot=A dev=sd[ab]1\r?\n/, 'initramfs picked slot A', { serial: serial.slice(-3000) })
  t.match(serial, /LABHOST-CLI labhost \d+\.\d+\.\d+ active=A/, 'the labhost binary in the image runs and reads the GPT')
  t.same(userspace(serial)?.slice(1), ['1.0.0', 'A'], 'userspace runs from A')
  for (const m of ['/persistent', '/var/log', '/qcow2/backing', '/qcow2/user']) t.match(serial, `LABHOST-MOUNT ${m}`, `${m} mounted`)
})

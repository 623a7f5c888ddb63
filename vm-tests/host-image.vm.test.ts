// The `host` recipe (debootstrap'd Debian, systemd, openssh-server) boots from slot A through
// the shared initramfs, and sshd runs with the host keys the installer puts on /persistent.
import fs from 'node:fs'
import t from 'tap'
import { run } from '../lib/exec.ts'
import { runCli, tmpDir } from '../lib/test-helpers.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { bootUntilPowerOff } from './qemu.ts'
import { buildHostDisks, withPartition } from './fixtures/host-disks.ts'

t.test('host image: systemd userspace from slot A, sshd with keys from /persistent', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-host-')
  t.equal((await runCli(['image', 'keygen', '--out', `${dir}/keys`])).code, 0)
  const b = await runCli(['image', 'build', 'host', '--out', `${dir}/image`, '--key', `${dir}/keys/labhost-signing.key`, '--json'])
  t.equal(b.code, 0, 'image build host', { stderr: b.stderr.slice(-2000) })
  t.comment(`host image: ${JSON.parse(b.stdout).size} bytes, built in ${JSON.parse(b.stdout).seconds} s`)
  const layout = loadRecipe('host').layout
  const disks = await buildHostDisks(dir, layout, `${dir}/image/root.img`, { slots: ['A'], flag: 'A' })
  // what the installer's identity step does: host keys on /persistent, once
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === '/persistent')!, async (root) => {
    fs.mkdirSync(`${root}/ssh`, { mode: 0o700 })
    for (const type of ['ed25519', 'rsa']) await run('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', `${root}/ssh/ssh_host_${type}_key`])
  })
  const r = await bootUntilPowerOff({ memoryMb: 1024, disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }] },
    400_000, /LABHOST-USERSPACE[^\n]*\n/)
  t.comment(`booted under ${r.accel} in ${r.seconds.toFixed(1)} s`)
  t.match(r.serial, /LABHOST-ROOT slot=A dev=sda1/, 'the initramfs mounted slot A', { serial: r.serial.slice(-3000) })
  const m = /LABHOST-USERSPACE version=(\S+) slot=(\S+) device=\S+ ssh=(\S+) labhost=(\S+)/.exec(r.serial)
  const labhostVersion = (await runCli(['--version'])).stdout.trim().replace(' ', '-')
  t.same(m?.slice(1), ['1.0.0', 'A', 'active', labhostVersion],
    'systemd reached multi-user, sshd is active with the /persistent keys, labhost runs')
})

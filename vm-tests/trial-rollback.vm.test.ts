// A version that boots but is unhealthy rolls back by itself (issue 15, 8): the `host` image in
// slot A (1.0.0), and in slot B a 2.0.0 of it whose sshd configuration sshd refuses, switched to
// and put on trial the way `labhost update` leaves a host (planSwitch + writeTrialState, the
// updater's own functions; the update path itself is tested in update-guest and the campaign).
// Slot B boots, reaches userspace, its labhost-trial.service finds sshd down at the deadline of
// B's /etc/labhost/trial.yaml, writes the saved sector back and reboots: the host comes up on
// 1.0.0 from slot A, and `labhost status` says rolled-back, with nobody touching it.
import fs from 'node:fs'
import t from 'tap'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { run } from '../lib/exec.ts'
import { Disk } from '../lib/blockdev.ts'
import { readGpt } from '../bootloader/gpt.ts'
import { applySectorWrites } from '../bootloader/sector-writes.ts'
import { planSwitch } from '../bootloader/switch.ts'
import { writeTrialState } from '../updater/trial-state.ts'
import { gatherStatus } from '../updater/status.ts'
import { runCli, tmpDir } from '../lib/test-helpers.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildHostDisks, withPartition } from './fixtures/host-disks.ts'

t.test('host image: a trial version whose sshd is broken fails its health check and rolls back by itself', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-trial-')
  // signed with the cached test key, so the image npm test prebuilt beside the VM tests is a cache hit
  const b = await runCli(['image', 'build', 'host', '--out', `${dir}/image`, '--key', cacheKeys().privateKeyFile, '--json'])
  t.equal(b.code, 0, 'image build host', { stderr: b.stderr.slice(-2000) })
  const layout = loadRecipe('host').layout
  const disks = await buildHostDisks(dir, layout, `${dir}/image/root.img`, { slots: ['A', 'B'], flag: 'A' })
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === '/persistent')!, async (root) => {
    fs.mkdirSync(`${root}/ssh`, { mode: 0o700 })
    for (const type of ['ed25519', 'rsa']) await run('ssh-keygen', ['-q', '-t', type, '-N', '', '-f', `${root}/ssh/ssh_host_${type}_key`])
  })
  // slot B: 2.0.0, with an sshd option sshd does not know (ssh.service then fails to start) and
  // the shortest deadline trial.yaml allows
  await withPartition(disks.ssd, disks.ssdPlan[1]!, async (root) => {
    fs.writeFileSync(`${root}/etc/labhost/version`, '2.0.0\n')
    fs.writeFileSync(`${root}/etc/ssh/sshd_config.d/zz-broken.conf`, 'ThisIsNotAnSshdOption yes\n')
    const trial = fs.readFileSync(`${root}/etc/labhost/trial.yaml`, 'utf8')
    t.match(trial, /deadlineSeconds: 600/, 'the image carries the trial configuration')
    fs.writeFileSync(`${root}/etc/labhost/trial.yaml`, trial.replace(/deadlineSeconds: 600/, 'deadlineSeconds: 30'))
  })
  // what labhost update does at its end: arm the trial (saving both sectors), then switch
  const disk = Disk.open(disks.ssd)
  try {
    const toB = planSwitch(disk, readGpt(disk), 'B')
    const commit = toB.writes.find((w) => w.region === 'primary-array')!
    await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === layout.stateMount)!, async (root) => writeTrialState(root, {
      slot: 'B', bootsLeft: 3, version: '2.0.0', primaryLba: commit.lba, backupLba: toB.writes.find((w) => w.region === 'backup-array')!.lba,
      committedSector: commit.data, rollbackSector: disk.readSectors(commit.lba, 1), fromVersion: '1.0.0',
    }))
    await applySectorWrites(disk, toB.writes)
  } finally {
    disk.close()
  }

  const spec: VmSpec = { memoryMb: 1024, disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }] }
  // boot 1: slot B on trial; the verdict reboots the machine, which ends QEMU (-no-reboot)
  const first = await bootUntilPowerOff(spec, 600_000)
  t.comment(`trial boot and verdict under ${first.accel} in ${first.seconds.toFixed(1)} s`)
  t.match(first.serial, /LABHOST-ROOT slot=B /, 'boot 1: the initramfs mounted slot B')
  t.match(first.serial, /LABHOST-TRIAL slot=B left=2/, 'slot B is on trial')
  t.match(first.serial, /LABHOST-TRIAL-FAILED health check failed at \d+ s after boot \(deadline 30 s\): sshd \(systemctl is-active --quiet ssh.service\)/,
    'its health check found sshd down at the deadline', { serial: first.serial.slice(-4000) })
  t.match(first.serial, /LABHOST-TRIAL-ROLLED-BACK from=B to=A/, 'and wrote the saved sector back')
  t.notMatch(first.serial, /LABHOST-TRIAL-GOOD/, 'slot B was never marked good')
  t.ok(first.poweredOff && !first.timedOut, 'the host rebooted by itself')

  // boot 2: back on 1.0.0 in slot A, healthy, the trial over
  const second = await bootUntilPowerOff(spec, 400_000, /LABHOST-USERSPACE[^\n]*\n/)
  t.match(second.serial, /LABHOST-ROOT slot=A /, 'boot 2: the initramfs mounted slot A')
  const m = /LABHOST-USERSPACE version=(\S+) slot=(\S+) device=\S+ ssh=(\S+) labhost=\S+ trial=(\S+) last=(\S+)/.exec(second.serial)
  t.same(m?.slice(1), ['1.0.0', 'A', 'active', 'none', 'rolled-back'], 'boot 2: 1.0.0 from slot A, sshd active, no trial, last result rolled-back', { serial: second.serial.slice(-3000) })

  // the same, as `labhost status` reads it from the disk
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === layout.stateMount)!, async (root) => {
    fs.writeFileSync(`${dir}/boot`, `SLOT=A\nDEVICE=${disks.ssd}\nDISK=${disks.ssd}\n`)
    const s = gatherStatus({ bootFile: `${dir}/boot`, stateRoot: root, versionFile: `${dir}/none` })
    t.equal(s.gpt?.active, 'A', 'status: slot A boots next')
    t.equal(s.trial, null, 'status: no trial pending')
    t.match(s.lastResult, { RESULT: 'rolled-back', FROM: 'B', TO: 'A', VERSION: '2.0.0', FROM_VERSION: '1.0.0' }, 'status: the last result is the rollback of 2.0.0')
    t.match(s.lastResult?.REASON ?? '', /sshd/, 'with the failed check as its reason')
  })
})

// The `host` recipe (debootstrap'd Debian, systemd, openssh-server) boots from slot A through
// the shared initramfs, sshd runs with the host keys the installer puts on /persistent, and
// labhost-trial.service ends a trial once its health check (sshd active) passes; the status timer
// writes its metrics file for node_exporter's textfile collector. The host takes its name from
// /persistent, and no unit fails on the read-only root. (The test adds one unit of its own to
// slot A that prints the metrics file on the console once it exists; the image has none.)
import fs from 'node:fs'
import t from 'tap'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { Disk } from '../lib/blockdev.ts'
import { readGpt } from '../bootloader/gpt.ts'
import { planSwitch } from '../bootloader/switch.ts'
import { writeTrialState } from '../updater/trial-state.ts'
import { runCli, tmpDir } from '../lib/test-helpers.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { ensureIdentity } from '../installer/identity.ts'
import { bootUntilPowerOff } from './qemu.ts'
import { buildHostDisks, withPartition } from './fixtures/host-disks.ts'

// boot 2 ends once both the boot report and the metrics observer have printed, in either order
const BOTH_LINES = /LABHOST-USERSPACE[^\n]*\n[\s\S]*LABHOST-METRICS-FILE[^\n]*\n|LABHOST-METRICS-FILE[^\n]*\n[\s\S]*LABHOST-USERSPACE[^\n]*\n/

t.test('host image: systemd userspace from slot A, sshd with keys from /persistent', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-host-')
  // signed with the cached test key, so the image npm test prebuilt beside the VM tests is a cache hit
  const b = await runCli(['image', 'build', 'host', '--out', `${dir}/image`, '--key', cacheKeys().privateKeyFile, '--json'])
  t.equal(b.code, 0, 'image build host', { stderr: b.stderr.slice(-2000) })
  t.comment(`host image: ${JSON.parse(b.stdout).size} bytes, built in ${JSON.parse(b.stdout).seconds} s`)
  const layout = loadRecipe('host').layout
  const disks = await buildHostDisks(dir, layout, `${dir}/image/root.img`, { slots: ['A'], flag: 'A' })
  // the installer's identity step: host keys, machine UUID and the host name on /persistent
  const HOSTNAME = 'lab-vm-host-01'
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === '/persistent')!, (root) => ensureIdentity(root, { hostname: HOSTNAME }))
  // the test's observer of the timer: prints the metrics file once the timer has written it
  await withPartition(disks.ssd, disks.ssdPlan[0]!, async (root) => {
    fs.writeFileSync(`${root}/etc/systemd/system/test-metrics-report.service`, `[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'F=/run/labhost/metrics/labhost.prom; i=0; while [ ! -s $F ] && [ $i -lt 240 ]; do sleep 1; i=$((i+1)); done; echo "LABHOST-METRICS-FILE trigger=$(systemctl show -P LastTriggerUSecMonotonic labhost-status.timer) $(tr "\\n" "|" < $F)" > /dev/ttyS0'
[Install]
WantedBy=multi-user.target
`)
    fs.symlinkSync('/etc/systemd/system/test-metrics-report.service', `${root}/etc/systemd/system/multi-user.target.wants/test-metrics-report.service`)
  })
  // Slot A on trial with one boot: only labhost-trial.service's verdict stands between it and a
  // rollback to the (empty) slot B at the second boot.
  const disk = Disk.open(disks.ssd)
  t.teardown(() => disk.close())
  const toB = planSwitch(disk, readGpt(disk), 'B')
  await withPartition(disks.ssd, disks.ssdPlan.find((p) => p.mount === layout.stateMount)!, async (root) => writeTrialState(root, {
    slot: 'A', bootsLeft: 1, version: '1.0.0', primaryLba: toB.writes[0]!.lba, backupLba: toB.writes[1]!.lba,
    committedSector: disk.readSectors(toB.writes[0]!.lba, 1), rollbackSector: toB.writes[0]!.data,
  }))
  const labhostVersion = (await runCli(['--version'])).stdout.trim().replace(' ', '-')
  for (const [i, expectTrial] of [[1, /LABHOST-TRIAL slot=A left=0/], [2, null]] as const) {
    const r = await bootUntilPowerOff({ memoryMb: 1024, disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }] },
      400_000, i === 2 ? BOTH_LINES : /LABHOST-USERSPACE[^\n]*\n/)
    t.comment(`boot ${i} under ${r.accel} in ${r.seconds.toFixed(1)} s`)
    // either disk may be sda (the IDE disks probe in either order); only the SSD has root slots
    t.match(r.serial, /LABHOST-ROOT slot=A dev=sd[ab]1\r?\n/, `boot ${i}: the initramfs mounted slot A`, { serial: r.serial.slice(-3000) })
    if (expectTrial) t.match(r.serial, expectTrial, 'boot 1 is the trial boot')
    else t.notMatch(r.serial, /LABHOST-TRIAL|LABHOST-ROLLBACK/, 'boot 2: no trial left, no rollback')
    const m = /LABHOST-USERSPACE version=(\S+) slot=(\S+) device=\S+ ssh=(\S+) labhost=(\S+) trial=(\S+)/.exec(r.serial)
    t.same(m?.slice(1), ['1.0.0', 'A', 'active', labhostVersion, 'none'],
      `boot ${i}: multi-user reached, sshd active with the /persistent keys, labhost runs, mark-good ended the trial`)
    const host = /LABHOST-USERSPACE .* hostname=(\S+) static=(\S+) failed=(\S+)/.exec(r.serial)
    t.comment(host?.[0] ?? 'no LABHOST-USERSPACE line with hostname=')
    t.same(host?.slice(1), [HOSTNAME, HOSTNAME, 'none'], `boot ${i}: the host name from /persistent (kernel and systemd-hostnamed's static one), no failed unit`, { line: host?.[0] })
    if (i === 2) {
      const metrics = /LABHOST-METRICS-FILE trigger=(\S*) ([^\n]*)/.exec(r.serial)
      t.ok(metrics && metrics[1] !== '' && metrics[1] !== '0', 'labhost-status.timer fired', { line: metrics?.[0] })
      const lines = (metrics?.[2] ?? '').split('|')
      t.ok(lines.some((l) => /^# TYPE labhost_\w+ gauge/.test(l)), 'its service wrote Prometheus text exposition', { lines })
      t.ok(lines.includes('labhost_info{version="1.0.0",slot="A",flagged="A"} 1'), 'the running version and slot as the host sees them', { lines })
      t.ok(lines.includes('labhost_gpt_healthy 1') && lines.includes('labhost_trial_boots_left -1'), 'a healthy GPT and no trial pending', { lines })
    }
  }
})

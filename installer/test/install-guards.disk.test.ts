// What the installer will not erase, and what it does when it is done:
// - disks.eraseForeignData: a disk holding someone's data (a foreign GPT, an MBR table, data in
//   its first or last MiB) is refused — both disks byte-identical, whichever of them holds the
//   data — unless install.yaml sets it true; then the plan says what is erased and the install
//   erases it.
// - never a disk with a mounted filesystem (docs/technician.md, what the stick does at the PC), named with --ssd or not,
//   even with eraseForeignData: true.
// - finish: reboot|poweroff: after the report is written the installer reboots or powers off
//   (lib/power.ts: systemctl under systemd, else `reboot -f`). The machine running the tests is
//   never rebooted: every install here runs with a PATH whose first directory holds fake
//   reboot/poweroff/halt/shutdown/systemctl scripts that only record their call, and the test
//   checks that PATH resolves to them before running any install that could reach the call.
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { type CliResult, errorLines, failDiag, hashWhole, labhostArgv, loop, readRange, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'
import { buildImages, type Images } from '../../test-support/update-fixtures.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-install-guards-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

const CONFIG = {
  models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
  disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
  finish: 'none',
}

interface Machine {
  d: string
  ssd: string
  hdd: string
  reports: string
  config: string
  args: (extra?: string[]) => string[]
}

async function machine(t: Test, config: object = CONFIG): Promise<Machine> {
  const d = tmpDir(t)
  fs.mkdirSync(`${d}/sys/class/dmi/id`, { recursive: true })
  for (const [f, v] of [
    ['sys_vendor', 'Dell Inc.'],
    ['product_name', 'OptiPlex 7010'],
    ['product_serial', 'CN0GUARD7'],
  ])
    fs.writeFileSync(`${d}/sys/class/dmi/id/${f}`, `${v}\n`)
  const ssd = await loop(t, sparseFile(`${d}/ssd.img`, 480 * MiB), { directIo: true })
  const hdd = await loop(t, sparseFile(`${d}/hdd.img`, 40 * MiB), { directIo: true })
  fs.writeFileSync(`${d}/install.yaml`, YAML.stringify(config))
  const m = { d, ssd, hdd, reports: `${d}/reports`, config: `${d}/install.yaml` }
  return {
    ...m,
    args: (extra = []) => [
      'install',
      '--config',
      m.config,
      '--image',
      images.v1,
      '--ssd',
      ssd,
      '--hdd',
      hdd,
      '--sys-root',
      `${d}/sys`,
      '--report-dir',
      m.reports,
      '--trusted-key',
      images.keys.publicKeyFile,
      ...extra,
    ],
  }
}

const hashes = (m: Machine) => ({ ssd: hashWhole(m.ssd), hdd: hashWhole(m.hdd) })

/**
 * Every test here works on machines of its own: they run side by side, in one group (tap's jobs)
 * declared at the end of this file. An install spends most of its time waiting (sgdisk alone
 * sleeps about 2 s per disk while the kernel re-reads the table).
 */
const sideBySide: [string, (t: Test) => Promise<void>][] = []
const test = (name: string, fn: (t: Test) => Promise<void>) => void sideBySide.push([name, fn])
const withErase = (erase: boolean) => ({ ...CONFIG, disks: { ...CONFIG.disks, eraseForeignData: erase } })

/** A marker the foreign data carries, and whether the disk still holds it. */
const MARK = Buffer.from("somebody else's data, not labhost's")
const putMark = (dev: string, offset: number) => {
  const fd = fs.openSync(dev, 'r+')
  fs.writeSync(fd, MARK, 0, MARK.length, offset)
  fs.fsyncSync(fd)
  fs.closeSync(fd)
}
const hasMark = (dev: string, offset: number) => readRange(dev, offset, MARK.length).equals(MARK)

const foreign: { name: string; disk: 'ssd' | 'hdd'; make: (dev: string) => Promise<number>; what: RegExp }[] = [
  {
    name: 'a GPT with a Windows partition on the SSD',
    disk: 'ssd',
    what: /holds a GPT with 1 partition\(s\): Windows/,
    make: async (dev) => {
      await run('sgdisk', ['-n', '1:2048:+100M', '-c', '1:Windows', dev])
      putMark(dev, 2048 * 512 + 4096)
      return 2048 * 512 + 4096
    },
  },
  {
    name: 'an MBR partition table on the HDD',
    disk: 'hdd',
    what: /holds an MBR partition table with 1 partition\(s\)/,
    make: async (dev) => {
      // sector 0: one primary partition of type 0x83 from LBA 2048, 10 MiB, and the 0x55AA signature
      const mbr = Buffer.alloc(512)
      mbr[446 + 4] = 0x83
      mbr.writeUInt32LE(2048, 446 + 8)
      mbr.writeUInt32LE(20480, 446 + 12)
      mbr.writeUInt16LE(0xaa55, 510)
      const fd = fs.openSync(dev, 'r+')
      fs.writeSync(fd, mbr, 0, 512, 0)
      fs.closeSync(fd)
      putMark(dev, 2048 * 512)
      return 2048 * 512
    },
  },
  {
    name: 'data in the last MiB of the HDD only (RAID metadata)',
    disk: 'hdd',
    what: /holds data in its last MiB/,
    make: async (dev) => {
      putMark(dev, 40 * MiB - 8192)
      return 40 * MiB - 8192
    },
  },
]

for (const f of foreign) {
  test(`eraseForeignData: ${f.name}: refused by default with both disks byte-identical; erased when allowed`, async (t) => {
    const m = await machine(t)
    const dev = m[f.disk]
    const markAt = await f.make(dev)
    const before = hashes(m)

    const r = await runCli(m.args())
    t.equal(r.code, ExitCode.diskHasData, 'exit 54 diskHasData', failDiag(r))
    t.equal(errorLines(r).length, 1, 'one error line')
    t.match(errorLines(r)[0], new RegExp(`the ${f.disk.toUpperCase()} ${dev} .*${f.what.source}`), 'names the disk and what it holds')
    t.match(r.stderr, /hint: set disks\.eraseForeignData: true in .*install\.yaml to erase it, or wipe it first; nothing was written/)
    t.same(hashes(m), before, 'SSD and HDD byte-identical (also the disk that holds no foreign data)')
    fs.writeFileSync(m.config, YAML.stringify(withErase(false)))
    t.equal((await runCli(m.args())).code, ExitCode.diskHasData, 'eraseForeignData: false, said explicitly: refused too')
    t.same(hashes(m), before, 'still byte-identical')

    fs.writeFileSync(m.config, YAML.stringify(withErase(true)))
    const dry = await runCli([...m.args(), '--dry-run'])
    t.equal(dry.code, 0, 'eraseForeignData: true: the dry run plans it', failDiag(dry))
    t.match(dry.stdout, new RegExp(`${f.disk.toUpperCase()}: ${dev} .*\\n {2}erases: everything: `), 'the plan says everything on it is erased')
    t.same(hashes(m), before, '--dry-run wrote nothing')
    const ok = await runCli([...m.args(), '--json'])
    t.equal(ok.code, 0, 'the install runs', failDiag(ok))
    t.notOk(hasMark(dev, markAt), 'the foreign data is gone')
    const gpt = readGpt(openGptDisk(m.ssd))
    t.equal(slotStatus(gpt).active, 'A', 'the SSD boots slot A')
    t.ok(
      readRange(m.ssd, Number(gpt.entries[0]!.firstLba) * 512, fs.statSync(`${images.v1}/root.img`).size).equals(fs.readFileSync(`${images.v1}/root.img`)),
      'slot A holds the image',
    )
    t.same(
      readGpt(openGptDisk(m.hdd)).entries.map((e) => e.name),
      ['user'],
      'the HDD holds the user partition',
    )
  })
}

test('a disk with a mounted filesystem is never a target, even with eraseForeignData: true', async (t) => {
  // 1. a filesystem on the whole SSD device, mounted (read-only, so its bytes hold still)
  const m = await machine(t, withErase(true))
  await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', m.ssd])
  const mnt = tmpDir(t)
  await run('mount', ['-o', 'ro', m.ssd, mnt])
  t.teardown(() => run('umount', [mnt]).catch(() => {}))
  const before = hashes(m)
  const r = await runCli(m.args())
  t.equal(r.code, ExitCode.diskIsBootMedium, `--ssd names a disk mounted at ${mnt}: refused (exit 55)`, failDiag(r))
  t.equal(errorLines(r).length, 1, 'one error line')
  t.match(errorLines(r)[0], new RegExp(`--ssd ${m.ssd} `))
  t.same(hashes(m), before, 'SSD and HDD byte-identical')
  await run('umount', [mnt])

  // 2. an imaged SSD whose /persistent is mounted through a loop device over its byte range (how
  //    labhost itself and this machine's tools mount partitions of a loop device: no partition nodes)
  const first = await runCli(m.args())
  t.equal(first.code, 0, 'unmounted, the SSD is imaged', failDiag(first))
  const persistent = readGpt(openGptDisk(m.ssd)).entries.find((e) => e.name === 'persistent')!
  // (loop(): detached at teardown only while it still backs the SSD's file. A second, plain detach
  // here once detached whatever loop device another test had been given that name by then.)
  const part = await loop(t, m.ssd, { offset: Number(persistent.firstLba) * 512, sizeLimit: Number(persistent.lastLba - persistent.firstLba + 1n) * 512 })
  await run('mount', ['-o', 'ro', part, mnt])
  const held = hashes(m)
  const again = await runCli(m.args())
  t.equal(again.code, ExitCode.diskIsBootMedium, `a partition of --ssd mounted at ${mnt} (through ${part}): refused (exit 55)`, failDiag(again))
  t.same(hashes(m), held, 'SSD and HDD byte-identical')
  await run('umount', [mnt])
})

// ---- finish: reboot / poweroff ----------------------------------------------------------------

const POWER_TOOLS = ['reboot', 'poweroff', 'halt', 'shutdown', 'systemctl', 'telinit']

/** A PATH whose first directory holds recording fakes of every power tool; the calls go to `log`. */
async function fakePowerPath(t: Test, reports: string): Promise<{ env: Record<string, string>; calls: () => string[] }> {
  const bin = tmpDir(t, 'labhost-fake-power-')
  const log = path.join(bin, 'calls.log')
  for (const tool of POWER_TOOLS) {
    // one line per call: the command, its arguments, and how many reports the stick held by then
    fs.writeFileSync(
      path.join(bin, tool),
      `#!/bin/sh\necho "$(basename "$0") $* | reports: $(ls '${reports}' 2>/dev/null | grep -c '\\.json$')" >> '${log}'\nexit 0\n`,
      { mode: 0o755 },
    )
  }
  const env = { PATH: `${bin}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` }
  for (const tool of POWER_TOOLS) {
    const found = (await execa('sh', ['-c', `command -v ${tool}`], { env, reject: false })).stdout.trim()
    if (found !== path.join(bin, tool))
      throw new Error(`the fake ${tool} is not the one PATH finds (${found}): not running an install that could power this machine off`)
  }
  return { env, calls: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : []) }
}

const runCliWith = async (args: string[], env: Record<string, string>): Promise<CliResult> => {
  const r = await execa(...labhostArgv(...args), { reject: false, env })
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
}

// lib/power.ts: through systemd when it runs the host, else the immediate form
const expectedCall = (action: string) => (fs.existsSync('/run/systemd/system') ? `systemctl ${action}` : `${action} -f`)

test('finish: reboot — planned, then called once after the reports are written; --finish-file and --no-finish only record it', async (t) => {
  const m = await machine(t, { ...CONFIG, finish: 'reboot' })
  const power = await fakePowerPath(t, m.reports)

  const dry = await runCliWith([...m.args(), '--dry-run'], power.env)
  t.equal(dry.code, 0, failDiag(dry))
  t.match(dry.stdout, /then: gptmbr in the SSD's MBR, .*report, reboot\n/, 'the plan ends with: reboot')
  t.same(power.calls(), [], '--dry-run reboots nothing')

  const r = await runCliWith([...m.args(), '--json'], power.env)
  t.equal(r.code, 0, 'install exits 0', failDiag(r))
  t.match(JSON.parse(r.stdout), { finish: 'reboot' }, 'the report says reboot')
  t.match(r.stderr, /installed test 1\.0\.0 on .*\n.*reboot (now|via systemd)/, 'it says what it is about to do')
  t.same(power.calls(), [`${expectedCall('reboot')} | reports: 1`], `exactly one call, ${expectedCall('reboot')}, after the report was on the stick`)
  const onStick = fs.readdirSync(m.reports).filter((f) => f.endsWith('.json'))
  t.match(JSON.parse(fs.readFileSync(path.join(m.reports, onStick[0]!), 'utf8')), { finish: 'reboot' })

  // the stick's init passes --finish-file: labhost writes what to do and the init does it after unmounting
  const finishFile = path.join(m.d, 'finish')
  const viaFile = await runCliWith([...m.args(), '--finish-file', finishFile], power.env)
  t.equal(viaFile.code, 0, failDiag(viaFile))
  t.equal(fs.readFileSync(finishFile, 'utf8'), 'reboot\n', '--finish-file: the file says reboot')
  const noFinish = await runCliWith([...m.args(), '--no-finish'], power.env)
  t.equal(noFinish.code, 0, failDiag(noFinish))
  t.equal(power.calls().length, 1, '--finish-file and --no-finish: no further call')
})

test('finish: poweroff calls poweroff; a refused install powers nothing off (the PC stays on, showing the reason)', async (t) => {
  const m = await machine(t, { ...CONFIG, finish: 'poweroff' })
  const power = await fakePowerPath(t, m.reports)
  const r = await runCliWith(m.args(), power.env)
  t.equal(r.code, 0, failDiag(r))
  t.same(power.calls(), [`${expectedCall('poweroff')} | reports: 1`], `one call: ${expectedCall('poweroff')}`)

  const refused = await machine(t, { ...CONFIG, models: [{ vendor: 'LENOVO', product: 'ThinkCentre M920' }], finish: 'reboot' })
  const power2 = await fakePowerPath(t, refused.reports)
  const before = hashes(refused)
  const no = await runCliWith(refused.args(), power2.env)
  t.equal(no.code, ExitCode.modelRejected, 'the model is refused', failDiag(no))
  t.same(power2.calls(), [], 'no reboot after a refusal')
  t.same(hashes(refused), before, 'both disks byte-identical')
})

t.test('installs and refusals on machines of their own, side by side', { jobs: sideBySide.length }, async (t) => {
  for (const [name, fn] of sideBySide) t.test(name, fn)
})

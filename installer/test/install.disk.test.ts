// labhost install on loop devices (the disks named with --ssd/--hdd; property matching is in
// disks.unit.test.ts and the VM tests) and a DMI tree laid out like /sys/class/dmi/id: a blank
// SSD+HDD are imaged, a re-run keeps the identity, and every refusal leaves both disks
// byte-identical with its own exit code and a refusal report on the "stick".
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { describeDisk } from '../../lib/blockdev.ts'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { errorLines, failDiag, hashWhole, labhostArgv, loop, readRange, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { findGptmbr } from '../../bootloader/mbr.ts'
import { slotStatus } from '../../bootloader/slots.ts'
import { cacheKeys } from '../../image-build/cache-keys.ts'
import { buildImage } from '../../image-build/build.ts'
import { generateKeyPair, type Manifest } from '../../image-format/manifest.ts'
import { readPartitionFiles } from '../../test-support/host-disks.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-install-test-')
let keys: { privateKeyFile: string; publicKeyFile: string }
let image = ''
let manifest: Manifest

t.before(async () => {
  keys = cacheKeys()
  const built = await buildImage('test', { out: `${dir}/image`, keyFile: keys.privateKeyFile })
  image = `${dir}/image`
  manifest = built.manifest
  fs.renameSync(`${image}/root.img`, `${dir}/raw.img`) // the stick carries the compressed transport only; the raw image is what slot A must hold
})

const CONFIG = {
  models: [
    { vendor: 'Dell Inc.', product: 'OptiPlex 7010' },
    { vendor: 'LENOVO', productPattern: '10A[0-9]S0[0-9]{2}00' },
  ],
  disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
  finish: 'none',
}

interface Machine {
  d: string
  ssd: string
  hdd: string
  sys: string
  reports: string
  config: string
  args: (extra?: string[]) => string[]
}

/** `from`: start from a copy of that machine's disks and stick (sparse; taken while nothing writes them). */
async function machine(t: Test, o: { product?: string; ssdMiB?: number; config?: object; from?: Machine } = {}): Promise<Machine> {
  const d = tmpDir(t)
  fs.mkdirSync(`${d}/sys/class/dmi/id`, { recursive: true })
  for (const [f, v] of [
    ['sys_vendor', 'Dell Inc.'],
    ['product_name', o.product ?? 'OptiPlex 7010'],
    ['product_serial', 'CN0TEST42'],
  ])
    fs.writeFileSync(`${d}/sys/class/dmi/id/${f}`, `${v}\n`)
  if (o.from) {
    for (const f of ['ssd.img', 'hdd.img']) await run('cp', ['--sparse=always', `${o.from.d}/${f}`, `${d}/${f}`])
    if (fs.existsSync(o.from.reports)) fs.cpSync(o.from.reports, `${d}/reports`, { recursive: true })
  }
  const ssd = await loop(t, o.from ? `${d}/ssd.img` : sparseFile(`${d}/ssd.img`, (o.ssdMiB ?? 480) * MiB), { directIo: true })
  const hdd = await loop(t, o.from ? `${d}/hdd.img` : sparseFile(`${d}/hdd.img`, 40 * MiB), { directIo: true })
  fs.writeFileSync(`${d}/install.yaml`, YAML.stringify(o.config ?? CONFIG))
  const m = { d, ssd, hdd, sys: `${d}/sys`, reports: `${d}/reports`, config: `${d}/install.yaml` }
  return {
    ...m,
    args: (extra = []) => [
      'install',
      '--config',
      m.config,
      '--image',
      image,
      '--ssd',
      ssd,
      '--hdd',
      hdd,
      '--sys-root',
      m.sys,
      '--report-dir',
      m.reports,
      '--trusted-key',
      keys.publicKeyFile,
      ...extra,
    ],
  }
}

const hashes = (m: Machine) => [hashWhole(m.ssd), hashWhole(m.hdd)]

const persistentFiles = (m: Machine) =>
  readPartitionFiles(m.ssd, 'persistent', ['machine-uuid', 'ssh/ssh_host_ed25519_key.pub', 'ssh/ssh_host_rsa_key.pub', 'install-report.json'])

let rawImage: Buffer | undefined
const raw = () => (rawImage ??= fs.readFileSync(`${dir}/raw.img`))

/**
 * Every test but the mid-write kill works on machines of its own: they run side by side, in one
 * group (tap's jobs) declared at the end of this file. An install spends most of its time
 * waiting (sgdisk alone sleeps about 2 s per disk while the kernel re-reads the table).
 */
const sideBySide: [string, (t: Test) => Promise<void>][] = []
const test = (name: string, fn: (t: Test) => Promise<void>) => void sideBySide.push([name, fn])

test('blank SSD + HDD: dry run writes nothing; install partitions, writes slot A, gptmbr, identity, reports', async (t) => {
  const m = await machine(t)
  const before = hashes(m)
  const dry = await runCli([...m.args(), '--dry-run'])
  t.equal(dry.code, 0, 'dry run exits 0', failDiag(dry))
  t.match(dry.stdout, /machine: Dell Inc\. \/ OptiPlex 7010 \(serial CN0TEST42\)/)
  t.match(dry.stdout, /SSD: .*\n {2}erases: nothing \(the disk is blank\)/)
  t.match(dry.stdout, / 1 rootA .* write the root image/)
  t.match(dry.stdout, / 1 user .*\/qcow2\/user .*new ext4 6c1d1a2b-0a11-4b5e-9c3a-0000000000f6/)
  t.match(dry.stdout, /BIOS \(none\): no changes/)
  t.match(dry.stdout, /dry run: nothing was written/)
  t.same(hashes(m), before, '--dry-run: both disks byte-identical')

  const r = await runCli([...m.args(), '--json'])
  t.equal(r.code, 0, 'install exits 0', failDiag(r))
  const report = JSON.parse(r.stdout)
  t.same(
    report.steps.map((s: { step: string }) => s.step),
    [
      'check machine, image and disks',
      'BIOS settings',
      'partition the SSD',
      'partition the HDD',
      'write the root image to slot A',
      'install gptmbr',
      'identity and report',
    ],
  )
  t.equal(report.identity.created, true)
  t.match(report.identity.sshHostKeys, { ed25519: /^SHA256:/, rsa: /^SHA256:/ })

  const sg = await run('sgdisk', ['-v', m.ssd])
  t.match(sg.stdout, /No problems found/, 'sgdisk -v: SSD GPT valid')
  const gpt = readGpt(openGptDisk(m.ssd))
  t.same(
    gpt.entries.map((e) => [e.number, e.name, e.partGuid.toLowerCase()]),
    [
      [1, 'rootA', '6c1d1a2b-0a11-4b5e-9c3a-00000000000a'],
      [2, 'rootB', '6c1d1a2b-0a11-4b5e-9c3a-00000000000b'],
      [3, 'persistent', '6c1d1a2b-0a11-4b5e-9c3a-000000000003'],
      [4, 'log', '6c1d1a2b-0a11-4b5e-9c3a-000000000004'],
      [5, 'backing', '6c1d1a2b-0a11-4b5e-9c3a-000000000005'],
    ],
  )
  t.equal(slotStatus(gpt).active, 'A', 'slot A is flagged to boot')
  const slotA = gpt.entries[0]!
  t.ok(readRange(m.ssd, Number(slotA.firstLba) * 512, manifest.image.size).equals(raw()), 'slot A holds the image')
  t.ok(readRange(m.ssd, 0, 440).equals(fs.readFileSync(findGptmbr()).subarray(0, 440)), 'gptmbr boot code in the MBR')
  t.same(
    readGpt(openGptDisk(m.hdd)).entries.map((e) => e.name),
    ['user'],
  )
  const blkid = await run('blkid', ['-p', '-o', 'value', '-s', 'UUID', '-O', String(Number(readGpt(openGptDisk(m.hdd)).entries[0]!.firstLba) * 512), m.hdd])
  t.equal(blkid.stdout.trim(), '6c1d1a2b-0a11-4b5e-9c3a-0000000000f6', 'HDD user filesystem has the fixed UUID')

  const files = await persistentFiles(m)
  t.match(files['machine-uuid'], /^[0-9a-f-]{36}\n$/)
  t.match(files['ssh/ssh_host_ed25519_key.pub'], /^ssh-ed25519 /)
  t.match(files['ssh/ssh_host_rsa_key.pub'], /^ssh-rsa /)
  t.equal(JSON.parse(files['install-report.json']!).identity.machineUuid, files['machine-uuid']!.trim(), 'report on /persistent')
  const onStick = fs.readdirSync(m.reports)
  t.equal(onStick.length, 1, 'one report on the stick')
  t.match(JSON.parse(fs.readFileSync(`${m.reports}/${onStick[0]}`, 'utf8')), { machine: { product: 'OptiPlex 7010' }, image: { version: manifest.version } })

  // Re-running on the imaged machine keeps the identity; --new-identity replaces it.
  const again = await runCli([...m.args(), '--json'])
  t.equal(again.code, 0, 're-run exits 0', failDiag(again))
  t.match(again.stderr, /erases: the earlier labhost install, except persistent/)
  t.equal(JSON.parse(again.stdout).identity.created, false, 'identity kept')
  t.same(
    await persistentFiles(m).then((f) => [f['machine-uuid'], f['ssh/ssh_host_ed25519_key.pub']]),
    [files['machine-uuid'], files['ssh/ssh_host_ed25519_key.pub']],
    'same machine UUID and host key',
  )
  const fresh = await runCli([...m.args(), '--new-identity', '--json'])
  t.equal(fresh.code, 0, failDiag(fresh))
  t.equal(JSON.parse(fresh.stdout).identity.created, true)
  t.not((await persistentFiles(m))['machine-uuid'], files['machine-uuid'], '--new-identity: a new machine UUID')
})

test('BIOS settings through install: planned in --dry-run, applied and reported by the install', async (t) => {
  const m = await machine(t, { config: { ...CONFIG, bios: { settings: { Virtualization: 'Enabled' } } } })
  const fw = `${m.sys}/class/firmware-attributes/dell-wmi-sysman`
  fs.mkdirSync(`${fw}/attributes/Virtualization`, { recursive: true })
  for (const [f, v] of [
    ['type', 'enumeration'],
    ['current_value', 'Disabled'],
    ['possible_values', 'Disabled;Enabled'],
  ])
    fs.writeFileSync(`${fw}/attributes/Virtualization/${f}`, `${v}\n`)
  fs.writeFileSync(`${fw}/attributes/pending_reboot`, '0\n')
  const dry = await runCli([...m.args(), '--dry-run'])
  t.equal(dry.code, 0, failDiag(dry))
  t.match(dry.stdout, /BIOS \(sysfs .*dell-wmi-sysman\): Virtualization Disabled -> Enabled/)
  t.equal(fs.readFileSync(`${fw}/attributes/Virtualization/current_value`, 'utf8'), 'Disabled\n', 'dry run: BIOS untouched')
  const r = await runCli([...m.args(), '--json'])
  t.equal(r.code, 0, failDiag(r))
  t.match(JSON.parse(r.stdout).bios, { backend: 'sysfs', changes: [{ name: 'Virtualization', from: 'Disabled', to: 'Enabled' }] })
  t.equal(fs.readFileSync(`${fw}/attributes/Virtualization/current_value`, 'utf8'), 'Enabled')
})

test("hostname: from install.yaml onto /persistent and into the report, kept on a re-install, the stick's reports named by it", async (t) => {
  // no hostname setting: none written, the report is named by the serial (a machine of its own, beside the other)
  const withoutSetting = (async () => {
    const plain = await machine(t)
    t.equal((await runCli([...plain.args(), '--json'])).code, 0)
    t.equal((await readPartitionFiles(plain.ssd, 'persistent', ['hostname'])).hostname, '', "no /persistent/hostname: the image's own name stands")
    t.match(fs.readdirSync(plain.reports), [/^CN0TEST42-.*\.json$/], 'the report is named by the serial')
  })()
  const m = await machine(t, { config: { ...CONFIG, hostname: { pattern: 'lab-{serial}' } } })
  const hostnameOf = async () => (await readPartitionFiles(m.ssd, 'persistent', ['hostname'])).hostname
  const stickReport = (before: string[]) => fs.readdirSync(m.reports).filter((f) => !before.includes(f))
  const dry = await runCli([...m.args(), '--dry-run'])
  t.match(dry.stdout, /^hostname: lab-cn0test42 \(hostname\.pattern lab-\{serial\}\)$/m, 'the plan names the host')
  const r = await runCli([...m.args(), '--json'])
  t.equal(r.code, 0, failDiag(r))
  t.same(JSON.parse(r.stdout).hostname, { name: 'lab-cn0test42', from: 'hostname.pattern lab-{serial}', kept: false }, 'the report carries it')
  t.equal(await hostnameOf(), 'lab-cn0test42\n', '/persistent/hostname, next to machine-uuid and the SSH host keys')
  const first = stickReport([])
  t.match(first, [/^lab-cn0test42-\d{4}-\d\d-\d\dT[\d-]+Z\.json$/], 'the report on the stick is named by the host name')

  // the inventory now names this PC otherwise: a re-install keeps the name it has, like its keys
  fs.writeFileSync(m.config, YAML.stringify({ ...CONFIG, hostname: { pattern: 'lab-{serial}', inventory: [{ serial: 'cn0test42', name: 'r101-pc07' }] } }))
  const again = await runCli([...m.args(), '--json'])
  t.equal(again.code, 0, failDiag(again))
  t.match(again.stderr, /hostname: r101-pc07 \(hostname\.inventory\.0 \(serial cn0test42\)\); a name already on the kept \/persistent stays/)
  t.match(again.stderr, /hostname: kept lab-cn0test42 from \/persistent \(install\.yaml would give r101-pc07: --new-identity takes that\)/)
  t.same(JSON.parse(again.stdout).hostname, { name: 'lab-cn0test42', from: '/persistent/hostname (an earlier install)', kept: true })
  t.equal(await hostnameOf(), 'lab-cn0test42\n', 'kept on re-install')
  t.match(stickReport(first), [/^lab-cn0test42-/], 'the second report: the same name, another time')
  const fresh = await runCli([...m.args(), '--new-identity', '--json'])
  t.equal(fresh.code, 0, failDiag(fresh))
  t.same(
    JSON.parse(fresh.stdout).hostname,
    { name: 'r101-pc07', from: 'hostname.inventory.0 (serial cn0test42)', kept: false },
    "--new-identity: the inventory's name",
  )
  t.equal(await hostnameOf(), 'r101-pc07\n')
  await withoutSetting
})

const rerunSucceeds = async (t: Test, m: Machine, cut: string) => {
  const again = await runCli([...m.args(), '--json'])
  t.equal(again.code, 0, `re-run after a cut at "${cut}" succeeds`, failDiag(again))
  const gpt = readGpt(openGptDisk(m.ssd))
  t.equal(slotStatus(gpt).active, 'A')
  t.ok(readRange(m.ssd, Number(gpt.entries[0]!.firstLba) * 512, manifest.image.size).equals(raw()), 'slot A holds the image')
  t.match((await persistentFiles(m))['machine-uuid'], /^[0-9a-f-]{36}\n$/, 'identity present')
}

test('an install cut off after any step succeeds when run again', async (t) => {
  // each cut on a machine of its own, side by side
  const cuts = ['BIOS settings', 'partition the SSD', 'partition the HDD', 'write the root image to slot A', 'install gptmbr']
  await Promise.all(
    cuts.map(async (cut) => {
      const m = await machine(t)
      const r = await execa(process.execPath, [path.join(import.meta.dirname, '../../cli/bin.ts'), ...m.args()], {
        reject: false,
        env: { LABHOST_FAULT_AFTER_STEP: cut },
      })
      t.equal(r.signal, 'SIGKILL', `cut after "${cut}"`, failDiag(r))
      await rerunSucceeds(t, m, cut)
    }),
  )
})

test('cuts inside the partitioning: a table the cut left damaged is rewritten, and what only the stick knows is its own work is re-imaged, keeping /persistent', async (t) => {
  // a first run (a re-run keeps its /persistent): the same install for every case, so made once
  // and each case starts from a copy of its disks
  const first = await machine(t)
  t.equal((await runCli([...first.args(), '--json'])).code, 0)
  const uuid = (await persistentFiles(first))['machine-uuid']
  t.match(uuid, /^[0-9a-f-]{36}\n$/)
  const cutRerun = async (damage: (m: Machine) => void, withRecord: boolean) => {
    const m = await machine(t, { from: first })
    // then a re-run cut after partitioning
    const cut = await execa(process.execPath, [path.join(import.meta.dirname, '../../cli/bin.ts'), ...m.args()], {
      reject: false,
      env: { LABHOST_FAULT_AFTER_STEP: 'partition the HDD' },
    })
    t.equal(cut.signal, 'SIGKILL')
    t.ok(fs.existsSync(`${m.reports}/unfinished-install.json`), 'the stick remembers the unfinished install')
    damage(m)
    if (!withRecord) fs.rmSync(`${m.reports}/unfinished-install.json`)
    return { m, uuid, again: await runCli([...m.args(), '--json']) }
  }
  const zero = (file: string, lbas: number[]) => {
    const fd = fs.openSync(file, 'r+')
    const size = describeDisk(file).sizeBytes // fstat of a block device says 0
    for (const lba of lbas) fs.writeSync(fd, Buffer.alloc(512), 0, 512, lba >= 0 ? lba * 512 : size + lba * 512)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  // three machines of their own, side by side:
  // 1. the SSD's primary GPT gone, its backup whole: recognisably labhost's, so no record needed;
  //    sgdisk alone would refuse to zap it ("Invalid partition data!")
  // 2. both GPT headers gone, the primary array left: no GPT, yet data — the stick's record says it is its own
  const [one, ...headersGone] = await Promise.all([
    cutRerun((m) => zero(m.ssd, [0, 1, 2]), false),
    ...[true, false].map(async (withRecord) => ({ withRecord, ...(await cutRerun((m) => zero(m.ssd, [1, -1]), withRecord)) })),
  ])
  t.equal(one!.again.code, 0, 'primary GPT gone: the re-run completes', { stderr: one!.again.stderr })
  t.equal((await persistentFiles(one!.m))['machine-uuid'], one!.uuid, 'identity kept')
  for (const { withRecord, m, uuid, again } of headersGone) {
    if (withRecord) {
      t.equal(again.code, 0, 'no valid GPT, with the record: the re-run completes', failDiag(again))
      t.match(
        again.stderr,
        /SSD: .*\n {2}erases: the unfinished install this stick started at \S+ \(an MBR partition table with 1 partition\(s\)\), except persistent/,
        'no GPT, only the protective MBR: foreign to anyone but the stick',
      )
      t.notOk(fs.existsSync(`${m.reports}/unfinished-install.json`), 'the record is gone once the install completed')
      t.equal((await persistentFiles(m))['machine-uuid'], uuid, 'the identity the unfinished run kept is kept again')
    } else {
      t.equal(again.code, ExitCode.diskHasData, 'without the record: refused as foreign data', failDiag(again))
    }
  }
})

const refusals: { name: string; setup: (t: Test) => Promise<{ m: Machine; extra?: string[] }>; code: number; message: RegExp }[] = [
  {
    name: 'model not on the list',
    setup: async (t) => ({ m: await machine(t, { product: 'OptiPlex 9999' }) }),
    code: ExitCode.modelRejected,
    message: /"Dell Inc\. \/ OptiPlex 9999", which .* does not list/,
  },
  {
    name: 'SSD too small',
    setup: async (t) => ({ m: await machine(t, { ssdMiB: 300 }) }),
    code: ExitCode.diskTooSmall,
    message: /smaller than disks\.ssd\.minSizeGiB/,
  },
  {
    name: 'SSD with existing partitions',
    setup: async (t) => {
      const m = await machine(t)
      await run('sgdisk', ['-n', '1:2048:+100M', '-c', '1:Windows', m.ssd])
      return { m }
    },
    code: ExitCode.diskHasData,
    message: /holds a GPT with 1 partition\(s\): Windows/,
  },
  {
    name: 'HDD with a filesystem and no partition table',
    setup: async (t) => {
      const m = await machine(t)
      await run('mkfs.ext4', ['-q', '-F', m.hdd])
      return { m }
    },
    code: ExitCode.diskHasData,
    message: /the HDD .* holds data in its first MiB/,
  },
  {
    name: 'the stick as the SSD',
    setup: async (t) => {
      const m = await machine(t)
      return { m, extra: ['--stick', m.ssd] }
    },
    code: ExitCode.diskIsBootMedium,
    message: /installer's own medium/,
  },
  {
    name: 'malformed install.yaml',
    setup: async (t) => {
      const m = await machine(t)
      fs.writeFileSync(m.config, 'models:\n  - vendor: Dell Inc.\n    product: [unclosed\n')
      return { m }
    },
    code: ExitCode.configInvalid,
    message: /install\.yaml: not valid YAML/,
  },
  {
    name: 'config key with a wrong type',
    setup: async (t) => ({ m: await machine(t, { config: { ...CONFIG, disks: { ...CONFIG.disks, ssd: { rotational: 'no', minSizeGiB: 1 } } } }) }),
    code: ExitCode.configInvalid,
    message: /install\.yaml: disks\.ssd\.rotational: .*found value "no"/,
  },
  {
    name: 'a hostname pattern this machine has no value for',
    setup: async (t) => ({ m: await machine(t, { config: { ...CONFIG, hostname: { pattern: 'lab-{asset}' } } }) }),
    code: ExitCode.hostnameUnavailable,
    message: /install\.yaml: hostname\.pattern: "lab-\{asset\}" gives no name for this machine: \{asset\} has no usable value \(asset absent\)/,
  },
  {
    name: 'image signed by another key',
    setup: async (t) => {
      const m = await machine(t)
      return { m, extra: ['--trusted-key', generateKeyPair(`${tmpDir(t)}/other`).publicKeyFile] }
    },
    code: ExitCode.signatureInvalid,
    message: /signature does not match/,
  },
]

test('refusals', async (t) => {
  t.jobs = refusals.length // each on a machine of its own, side by side too
  for (const c of refusals) {
    t.test(`refused: ${c.name}; both disks byte-identical, reason on the stick`, async (t) => {
      const { m, extra = [] } = await c.setup(t)
      const before = hashes(m)
      const r = await runCli([...m.args(), ...extra])
      t.equal(r.code, c.code, `exit ${c.code}`, failDiag(r))
      t.match(r.stderr, c.message)
      t.match(r.stderr, /hint: .*/)
      t.equal(errorLines(r).length, 1, 'one error line')
      t.same(hashes(m), before, 'SSD and HDD unchanged')
      const reports = fs.existsSync(m.reports) ? fs.readdirSync(m.reports) : []
      t.equal(reports.length, 1, 'a refusal report on the stick')
      t.match(reports[0], /^CN0TEST42-refused-/, "named by the machine's serial")
      t.match(JSON.parse(fs.readFileSync(`${m.reports}/${reports[0]}`, 'utf8')), { result: 'refused', exitCode: c.code })
    })
  }
})

t.test('installs and refusals on machines of their own, side by side', { jobs: sideBySide.length }, async (t) => {
  for (const [name, fn] of sideBySide) t.test(name, fn)
})

// Alone, after the side-by-side group: nothing else may stretch the 300 ms into the image write.
t.test('an install killed in the middle of the image write succeeds when run again', async (t) => {
  // SIGKILL while slot A is being written (its own TMPDIR: what a killed run leaves there is seen)
  const m = await machine(t)
  const tmp = tmpDir(t)
  const child = execa(...labhostArgv(...m.args()), { reject: false, env: { TMPDIR: tmp } })
  let err = ''
  child.stderr!.on('data', (d) => {
    err += String(d)
  })
  while (!/step: write the root image/.test(err) && child.exitCode === null) await sleep(20)
  await sleep(300)
  child.kill('SIGKILL')
  const r = await child
  t.equal(r.signal, 'SIGKILL', 'killed mid-write')
  t.same(fs.readdirSync(tmp), [], 'the killed run left nothing in its temporary directory (the zstd FIFO is unlinked once open)')
  await rerunSucceeds(t, m, 'mid-write')
})

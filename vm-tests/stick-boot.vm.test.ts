// The USB installer stick in a lab-PC-shaped VM (emulated USB stick, SSD with rotation_rate=1,
// HDD with rotation_rate=7200, DMI strings): it boots, `labhost install` picks the disks by
// their properties, images them unattended and powers off; the PC then boots the lab host
// image from the SSD. One stick for both firmware types (the image's layout has an EFI system
// partition): the first PC boots it by legacy BIOS (SeaBIOS; gptmbr + extlinux go onto its SSD),
// the second is UEFI-only (OVMF on q35, no CSM, an empty variable store at every boot: the
// selector from the image goes onto its SSD's ESP and it boots by the removable-media path).
// The second PC gets its own name, identity and report (a re-run keeping the identity is an
// installer disk test). Every refusal leaves the disks byte-identical, the PC on with the reason
// on screen, and the reason in reports/ on the stick.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { hashWhole, runCli, sparseFile, tmpDir } from '../test-support/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { bootUntilPowerOff, uefiVarsCopy, type VmDisk, type VmSpec } from './qemu.ts'
import { readPartitionFiles } from '../test-support/host-disks.ts'
import { leanEspRecipe } from './fixtures/lean-image.ts'

const MiB = 1 << 20
const DELL = { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' }
const CONFIG = {
  models: [DELL].map((m) => ({ vendor: m.manufacturer, product: m.product })),
  disks: { ssd: { rotational: false, minSizeGiB: 0.55 }, hdd: { rotational: true, minSizeGiB: 0.05 } },
  // a room's stick: PCs named by their serial, one of them by the inventory (by the MAC of its NIC, QEMU's first)
  hostname: { pattern: 'lab-{serial}', inventory: [{ mac: '52:54:00:12:34:56', name: 'r101-pc02' }] },
  finish: 'poweroff',
}
const PC1 = { ...DELL, serial: 'CZC4120AB1' }
const PC2 = { ...DELL, serial: 'CZC4120AB2' }

const dir = tmpDir(t, 'labhost-vm-stick-')
let stickTemplate = ''

t.before(async () => {
  // the test key (npm test's prebuild put this image into the cache with it)
  const key = cacheKeys().privateKeyFile
  // the lean test image with an ESP (fixtures/lean-image.ts): the stick carries labhost itself, the PC need not
  const b = await runCli(['image', 'build', leanEspRecipe(`${dir}/lean-esp.yaml`), '--out', `${dir}/image`, '--signing-key', key])
  if (b.code !== 0) throw new Error(`image build: ${b.stderr}`)
  fs.writeFileSync(`${dir}/install.yaml`, YAML.stringify(CONFIG))
  const s = await runCli(['image', 'stick', '--image', `${dir}/image`, '--config', `${dir}/install.yaml`, '--out', `${dir}/stick.img`, '--signing-key', key])
  if (s.code !== 0) throw new Error(`image stick: ${s.stderr}`)
  stickTemplate = `${dir}/stick.img`
})

async function newStick(t: Test): Promise<string> {
  const f = `${tmpDir(t)}/stick.img`
  await run('cp', ['--sparse=always', stickTemplate, f])
  return f
}

/** mtools' view of the stick's FAT data partition (its second GPT entry). */
async function stickData(stick: string): Promise<{ image: string; env: Record<string, string> }> {
  const first = Number(/First sector: (\d+)/.exec((await run('sgdisk', ['-i', '2', stick])).stdout)?.[1])
  return { image: `${stick}@@${first * 512}`, env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } as Record<string, string> }
}

async function stickFile(stick: string, file: string): Promise<string> {
  const { image, env } = await stickData(stick)
  return (await run('mtype', ['-i', image, `::/${file}`], { env })).stdout
}

async function stickReports(stick: string): Promise<string[]> {
  const { image, env } = await stickData(stick)
  return (await run('mdir', ['-b', '-i', image, '::/reports'], { env })).stdout
    .split('\n')
    .map((l) => l.trim().replace(/^.*\//, ''))
    .filter((l) => l.endsWith('.json'))
}

const ssdDisk = (file: string, bootIndex = 1): VmDisk => ({ file, bus: 'ide-hd', rotationRate: 1, bootIndex })
const hddDisk = (file: string): VmDisk => ({ file, bus: 'ide-hd', rotationRate: 7200, bootIndex: 2 })

/** A UEFI-only PC's firmware: OVMF with a fresh, empty variable store (nothing depends on NVRAM). */
const uefi = (): Pick<VmSpec, 'uefi' | 'memoryMb'> => ({ memoryMb: 1024, uefi: { vars: uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-'))) } })

async function bootStick(t: Test, stick: string, disks: VmDisk[], smbios: VmSpec['smbios'] = PC1, more: Partial<VmSpec> = {}) {
  const r = await bootUntilPowerOff(
    { smbios, ...more, disks: [{ file: stick, bus: 'usb-storage', bootIndex: 0 }, ...disks] },
    600_000,
    /labhost install refused \(exit \d+\)/,
  )
  t.comment(`stick boot (${more.uefi ? 'UEFI' : 'BIOS'}) under ${r.accel} in ${r.seconds.toFixed(1)} s`)
  t.match(r.serial, /LABHOST-STICK-INSTALL-START config=\/data\/install\.yaml/, 'the stick started labhost install', { serial: r.serial.slice(-3000) })
  return { ...r, exit: Number(/LABHOST-STICK-INSTALL-END exit=(\d+)/.exec(r.serial)?.[1] ?? NaN) }
}

const persistentFiles = (ssd: string) =>
  readPartitionFiles(ssd, 'persistent', ['machine-uuid', 'ssh/ssh_host_ed25519_key', 'ssh/ssh_host_rsa_key.pub', 'install-report.json', 'hostname'])

t.test(
  'blank SSD + HDD: installed unattended on a BIOS PC and on a UEFI-only PC from the same stick, each SSD then boots; each PC gets its own name, identity and report',
  async (t) => {
    const d = tmpDir(t)
    const ssd = sparseFile(`${d}/ssd.img`, 640 * MiB)
    const hdd = sparseFile(`${d}/hdd.img`, 64 * MiB)
    const stick = await newStick(t)
    const r = await bootStick(t, stick, [ssdDisk(ssd), hddDisk(hdd)])
    t.equal(r.exit, 0, 'labhost install exit 0', { serial: r.serial.slice(-4000) })
    t.ok(r.poweredOff, 'the PC powered off by itself (finish: poweroff)')
    t.match(r.serial, /legacy BIOS firmware/, 'the plan says the PC boots by legacy BIOS')
    const log = await stickFile(stick, 'reports/install.log')
    t.match(log, /SSD: \/dev\/sd\w \(QEMU HARDDISK, serial QM0000\d/, 'the SSD was found by its properties')
    t.match(log, /HDD: \/dev\/sd\w .*rotational\)/, 'the HDD too')
    t.match(log, /step: write the root image to slot A/)
    t.match(await stickReports(stick), [/^lab-czc4120ab1-[\dT-]+Z\.json$/], 'the install report is on the stick, named by the host name')
    const files = await persistentFiles(ssd)
    t.match(files['machine-uuid'], /^[0-9a-f-]{36}\n$/, 'machine UUID on /persistent')
    t.match(files['ssh/ssh_host_ed25519_key'], /BEGIN OPENSSH PRIVATE KEY/, 'SSH host keys on /persistent')
    t.equal(files.hostname, 'lab-czc4120ab1\n', "the host name from install.yaml's pattern and the DMI serial on /persistent")
    t.match(JSON.parse(files['install-report.json']!), {
      machine: { vendor: 'Dell Inc.', product: 'OptiPlex 7010', serial: 'CZC4120AB1' },
      identity: { created: true },
      hostname: { name: 'lab-czc4120ab1', kept: false },
    })

    // the next PC of the room, from the same stick: UEFI-only, another serial and a NIC (no network:
    // restricted, no forwards), another name (the inventory's for its MAC), its own identity and report
    const ssd2 = sparseFile(`${d}/ssd2.img`, 640 * MiB)
    const hdd2 = sparseFile(`${d}/hdd2.img`, 64 * MiB)
    const second = await bootStick(t, stick, [ssdDisk(ssd2), hddDisk(hdd2)], PC2, { net: { forwards: [] }, ...uefi() })
    t.match(second.serial, /LABHOST-STICK-ROOT /, "second PC: the stick system started from the stick's ESP", { serial: second.serial.slice(-3000) })
    t.equal(second.exit, 0, 'second PC: labhost install exit 0', { serial: second.serial.slice(-4000) })
    t.match(second.serial, /UEFI firmware/, 'the plan says the PC boots by UEFI')
    t.match(second.serial, /step: install the UEFI selector/, "the selector went onto the SSD's ESP")
    t.ok(second.poweredOff, 'the PC powered off by itself (finish: poweroff)')
    const files2 = await persistentFiles(ssd2)
    t.equal(files2.hostname, 'r101-pc02\n', "second PC: the inventory's name for the MAC of its NIC")
    t.match(files2['machine-uuid'], /^[0-9a-f-]{36}\n$/)
    t.not(files2['machine-uuid'], files['machine-uuid'], 'another machine UUID')
    t.not(files2['ssh/ssh_host_ed25519_key'], files['ssh/ssh_host_ed25519_key'], 'other SSH host keys')
    t.not(files2['ssh/ssh_host_rsa_key.pub'], files['ssh/ssh_host_rsa_key.pub'])
    const reports = (await stickReports(stick)).sort()
    t.comment(`reports on the stick: ${reports.join(' ')}`)
    t.match(reports, [/^lab-czc4120ab1-/, /^r101-pc02-/], 'two reports on the stick, one per PC, told apart by name')
    const onStick = await Promise.all(reports.map(async (f) => JSON.parse(await stickFile(stick, `reports/${f}`))))
    t.same(
      onStick.map((x) => [x.hostname.name, x.machine.serial, x.machine.nics.map((n: { mac: string }) => n.mac), x.identity.machineUuid]),
      [
        ['lab-czc4120ab1', 'CZC4120AB1', [], files['machine-uuid']!.trim()],
        ['r101-pc02', 'CZC4120AB2', ['52:54:00:12:34:56'], files2['machine-uuid']!.trim()],
      ],
      'each report names its PC, its NICs and identity',
    )

    t.equal(JSON.parse(files['install-report.json']!).firmware, 'bios', 'the first report records a BIOS PC')
    t.equal(JSON.parse(files2['install-report.json']!).firmware, 'uefi', 'the second a UEFI one')

    const host = await bootUntilPowerOff({ smbios: DELL, disks: [ssdDisk(ssd), hddDisk(hdd)] }, 300_000)
    t.comment(`SSD boot (BIOS) in ${host.seconds.toFixed(1)} s`)
    t.match(host.serial, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, 'the BIOS PC boots the lab host image from slot A of the SSD', {
      serial: host.serial.slice(-3000),
    })
    t.notMatch(host.serial, /LABHOST-SELECTOR/, 'through gptmbr and extlinux (a disk with an ESP boots on SeaBIOS too)')
    for (const m of ['/persistent', '/var/log', '/qcow2/backing', '/qcow2/user'])
      t.match(host.serial, new RegExp(`LABHOST-MOUNT ${m}\\b`), `fstab mounts ${m} by UUID`)
    // a new machine's variable store: the SSD boots by the removable-media path alone, no NVRAM entry
    const host2 = await bootUntilPowerOff({ smbios: PC2, ...uefi(), disks: [ssdDisk(ssd2), hddDisk(hdd2)] }, 300_000)
    t.comment(`SSD boot (UEFI) in ${host2.seconds.toFixed(1)} s`)
    t.match(host2.serial, /LABHOST-SELECTOR slot=A /, "the UEFI PC's SSD: its selector picked slot A", { serial: host2.serial.slice(-3000) })
    t.match(host2.serial, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, 'and the lab host image runs from slot A')

    // (a re-run from the stick keeps the identity and the name: installer/test/install.disk.test.ts
    // runs it on loop devices; a stick boot here costs 45 s of npm test)
  },
)

// One refusal per way the PC's own hardware is read (DMI, the disks' sysfs, their contents); a
// missing HDD and a too-small SSD are refused by the same selection code, tested on loop devices
// and a sysfs tree in installer/test/ (each boot here costs half a minute of npm test).
const refusals: { name: string; disks: (d: string) => Promise<VmDisk[]>; smbios?: typeof DELL; code: number; message: RegExp }[] = [
  {
    name: 'a model not on the list',
    smbios: { manufacturer: 'Dell Inc.', product: 'OptiPlex 9020' },
    disks: async (d) => [ssdDisk(sparseFile(`${d}/ssd.img`, 640 * MiB)), hddDisk(sparseFile(`${d}/hdd.img`, 64 * MiB))],
    code: ExitCode.modelRejected,
    message: /"Dell Inc\. \/ OptiPlex 9020", which \/data\/install\.yaml does not list/,
  },
  {
    name: 'two candidate SSDs',
    disks: async (d) => [
      ssdDisk(sparseFile(`${d}/ssd.img`, 640 * MiB)),
      ssdDisk(sparseFile(`${d}/ssd2.img`, 700 * MiB), 3),
      hddDisk(sparseFile(`${d}/hdd.img`, 64 * MiB)),
    ],
    code: ExitCode.diskAmbiguous,
    message: /2 disks fit the SSD/,
  },
  {
    name: 'an SSD with existing partitions',
    disks: async (d) => {
      const ssd = sparseFile(`${d}/ssd.img`, 640 * MiB)
      await run('sgdisk', ['-n', '1:2048:+64M', '-c', '1:Windows', '-n', '2:0:+64M', '-c', '2:Recovery', ssd])
      return [ssdDisk(ssd), hddDisk(sparseFile(`${d}/hdd.img`, 64 * MiB))]
    },
    code: ExitCode.diskHasData,
    message: /holds a GPT with 2 partition\(s\): Windows, Recovery/,
  },
]

for (const c of refusals) {
  t.test(`refused: ${c.name}; every disk byte-identical, the reason on the stick`, async (t) => {
    const disks = await c.disks(tmpDir(t))
    const before = disks.map((x) => hashWhole(x.file))
    const stick = await newStick(t)
    const r = await bootStick(t, stick, disks, c.smbios)
    t.equal(r.exit, c.code, `labhost install exit ${c.code}`, { serial: r.serial.slice(-3000) })
    t.match(r.serial, /labhost install refused/, 'the PC stays on, showing the refusal')
    t.same(
      disks.map((x) => hashWhole(x.file)),
      before,
      'all disks byte-identical',
    )
    t.match(await stickFile(stick, 'reports/install.log'), c.message, 'the reason is in reports/install.log on the stick')
    t.equal((await stickReports(stick)).length, 1, 'a refusal report on the stick')
  })
}

// A room imaged by network boot (labhost netboot), with the parts a lab runs: in a network
// namespace, the lab's own DHCP server (busybox udhcpd, which knows nothing of PXE) hands out
// addresses; beside it, on the image server, dnsmasq in proxy-DHCP mode adds the boot file and
// serves iPXE by TFTP, and `labhost image serve --accept-reports` serves the netboot directory
// and takes the PCs' reports. Each PC is QEMU with its NIC on a tap in that network.
// - A blank BIOS PC, network first: the NIC's option ROM (QEMU's is iPXE itself, so the TFTP step
//   to undionly.kpxe that a PC's Intel/Realtek PXE ROM takes does not run here) → boot.ipxe → the
//   installer's kernel and initramfs → labhost install --netboot → report, log and boot-local
//   marker on the server → reboot; booted from the network again, boot.ipxe finds the marker and
//   exits to the SSD, which boots slot A.
// - A blank UEFI-only PC, disk first: the blank SSD falls through to the firmware's own PXE (OVMF's,
//   a virtio NIC without an option ROM), which fetches snponly.efi from dnsmasq's TFTP; that iPXE
//   goes on as above; its SSD then boots the selector.
// (Refused, declined and listed PCs, a server that takes no reports, bad input: the same
// `labhost install --netboot` against the same server in installer/test/install-netboot.disk.test.ts,
// without the boot; /init's handling of each outcome: image-build/test/netboot-init.unit.test.ts.)
import fs from 'node:fs'
import type { ResultPromise } from 'execa'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { labhostCommand, runCli, sparseFile, tmpDir } from '../test-support/test-helpers.ts'
import { createLab, type Lab } from '../test-support/netns.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { bootUntilPowerOff, uefiVarsCopy, type VmDisk, type VmSpec } from './qemu.ts'
import { leanEspRecipe } from './fixtures/lean-image.ts'

const MiB = 1 << 20
const DELL = { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' }
const SUBNET = '10.79.0'
const SERVER = `${SUBNET}.1`
const URL_BASE = `http://${SERVER}:8080`
const CONFIG = {
  models: [{ vendor: DELL.manufacturer, product: DELL.product }],
  disks: { ssd: { rotational: false, minSizeGiB: 0.55 }, hdd: { rotational: true, minSizeGiB: 0.05 } },
  hostname: { pattern: 'lab-{serial}' },
  netboot: {},
  finish: 'reboot',
}

const dir = tmpDir(t, 'labhost-vm-netboot-')
const out = `${dir}/netboot`
let lab: Lab
const logs: Record<string, string[]> = { serve: [], dnsmasq: [], udhcpd: [] }
const daemons: ResultPromise[] = []

function collect(name: string, p: ResultPromise): void {
  daemons.push(p)
  p.all?.on('data', (d: Buffer) => logs[name]!.push(...d.toString().split('\n').filter(Boolean)))
}

t.before(async () => {
  const key = cacheKeys().privateKeyFile
  const b = await runCli(['image', 'build', leanEspRecipe(`${dir}/lean-esp.yaml`), '--out', `${dir}/image`, '--signing-key', key])
  if (b.code !== 0) throw new Error(`image build: ${b.stderr}`)
  fs.writeFileSync(`${dir}/install.yaml`, YAML.stringify(CONFIG))
  const n = await runCli([
    'netboot',
    '--image',
    `${dir}/image`,
    '--config',
    `${dir}/install.yaml`,
    '--url',
    URL_BASE,
    '--out',
    out,
    '--signing-key',
    key,
    '--server-address',
    SERVER,
    '--interface',
    'eth0',
  ])
  if (n.code !== 0) throw new Error(`labhost netboot: ${n.stderr}`)
  t.comment(n.stdout.trim())

  // member 0: the image server (labhost image serve + dnsmasq); member 1: the lab's DHCP server
  lab = await createLab('nb', 1, { subnet: SUBNET })
  const [server, dhcp] = lab.members as [(typeof lab.members)[0], (typeof lab.members)[0]]
  const [exe, ...pre] = labhostCommand()
  collect('serve', lab.spawn(server, exe, [...pre, 'image', 'serve', out, '--host', SERVER, '--port', '8080', '--accept-reports', 'reports']))
  collect('dnsmasq', lab.spawn(server, 'dnsmasq', ['-k', `--conf-file=${out}/dnsmasq.conf`, '--pid-file=', '--log-facility=-', '--user=root']))
  fs.writeFileSync(
    `${dir}/udhcpd.conf`,
    [
      `start ${SUBNET}.100`,
      `end ${SUBNET}.150`,
      'interface eth0',
      `lease_file ${dir}/udhcpd.leases`,
      'option subnet 255.255.255.0',
      'option lease 3600',
      '',
    ].join('\n'),
  )
  fs.writeFileSync(`${dir}/udhcpd.leases`, '')
  collect('udhcpd', lab.spawn(dhcp, 'busybox', ['udhcpd', '-f', `${dir}/udhcpd.conf`]))
  for (const until = Date.now() + 30_000; !logs.serve!.some((l) => /serving .* at http/.test(l));) {
    if (Date.now() > until) throw new Error(`labhost image serve did not start: ${logs.serve!.join('\n')}`)
    await new Promise((r) => setTimeout(r, 100))
  }
})

t.teardown(async () => {
  for (const d of daemons) d.kill('SIGKILL')
  await lab?.close()
  for (const [name, lines] of Object.entries(logs)) if (process.env.LABHOST_VM_DEBUG) console.error(`--- ${name}\n${lines.join('\n')}`)
})

const reports = () => fs.readdirSync(`${out}/reports`).sort()
const ssdDisk = (file: string, bootIndex: number): VmDisk => ({ file, bus: 'ide-hd', rotationRate: 1, bootIndex })
const hddDisk = (file: string): VmDisk => ({ file, bus: 'ide-hd', rotationRate: 7200, bootIndex: 5 })
let taps = 0

async function pcBoot(t: Test, what: string, spec: Omit<VmSpec, 'tap'>, mac: string, nicBootIndex: number, until?: RegExp) {
  const ifname = `tap${taps++}`
  await lab.addTap(ifname)
  // UEFI: the firmware's own PXE (TFTP of snponly.efi, then iPXE); BIOS: the NIC's iPXE ROM (SeaBIOS has no PXE of its own)
  const nic = spec.uefi ? 'firmware-pxe' : 'ipxe-rom'
  // a boot took at most 110 s here (under load); a PC whose network boot went nowhere waits at
  // "No bootable device" until this ends it
  const r = await bootUntilPowerOff({ ...spec, tap: { ns: lab.switchNs, ifname, mac, bootIndex: nicBootIndex, nic } }, 480_000, until)
  t.comment(`${what} under ${r.accel} in ${r.seconds.toFixed(1)} s`)
  return r
}

t.test('a blank BIOS PC (network first) installs over the network, then boots its SSD; the server has its report', async (t) => {
  const d = tmpDir(t)
  const ssd = sparseFile(`${d}/ssd.img`, 640 * MiB)
  const hdd = sparseFile(`${d}/hdd.img`, 64 * MiB)
  const mac = '52:54:00:4e:42:01'
  const spec = { smbios: { ...DELL, serial: 'CZCNET0001' }, memoryMb: 1536, disks: [ssdDisk(ssd, 1), hddDisk(hdd)] }
  const r = await pcBoot(t, 'network install (BIOS)', spec, mac, 0, /labhost install refused \(exit \d+\)/)
  t.match(r.serial, new RegExp(`LABHOST-NETBOOT-START url=${URL_BASE}/? mac=${mac}`), 'iPXE booted the installer from the server', {
    serial: r.serial.slice(-4000),
  })
  t.match(r.serial, /LABHOST-NETBOOT-INSTALL-END exit=0/, 'labhost install exit 0', { serial: r.serial.slice(-4000) })
  t.ok(r.poweredOff, 'the PC rebooted by itself (finish: reboot; QEMU ends at the reboot)')
  const files = reports()
  t.comment(`reports on the server: ${files.join(' ')}`)
  const report = files.find((f) => /^lab-czcnet0001-.*\.json$/.test(f))
  t.ok(report, 'the install report is on the server, named by the host name')
  t.match(JSON.parse(fs.readFileSync(`${out}/reports/${report}`, 'utf8')), {
    firmware: 'bios',
    machine: { serial: 'CZCNET0001' },
    netboot: { bootMac: mac },
    image: { version: '1.0.0' },
  })
  t.ok(
    files.some((f) => /^lab-czcnet0001-.*\.log$/.test(f)),
    'its log too',
  )
  t.ok(files.includes(`${mac.replace(/:/g, '')}.boot-local`), 'and the boot-local marker for its MAC')

  const served = logs.serve!.length
  const again = await pcBoot(t, 'network boot of the imaged PC (BIOS)', spec, mac, 0)
  t.match(again.serial, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, 'booted from the network again, it goes on to its SSD: slot A runs', {
    serial: again.serial.slice(-3000),
  })
  t.notMatch(again.serial, /LABHOST-NETBOOT-START/, 'the installer did not start')
  t.notOk(
    logs.serve!.slice(served).some((l) => /\b\d{3} \/vmlinuz /.test(l)),
    'the kernel was not even fetched',
  )
})

t.test('a blank UEFI-only PC (disk first) falls through to PXE, installs, then boots its SSD by the selector', async (t) => {
  const d = tmpDir(t)
  const ssd = sparseFile(`${d}/ssd.img`, 640 * MiB)
  const hdd = sparseFile(`${d}/hdd.img`, 64 * MiB)
  const mac = '52:54:00:4e:42:02'
  const vars = uefiVarsCopy(d)
  const spec = { smbios: { ...DELL, serial: 'CZCNET0002' }, memoryMb: 1536, uefi: { vars }, disks: [ssdDisk(ssd, 0), hddDisk(hdd)] }
  const r = await pcBoot(t, 'network install (UEFI)', spec, mac, 1, /labhost install refused \(exit \d+\)/)
  t.match(r.serial, /LABHOST-NETBOOT-INSTALL-END exit=0/, 'labhost install exit 0', { serial: r.serial.slice(-4000) })
  t.ok(
    logs.dnsmasq!.some((l) => /sent .*snponly\.efi/.test(l)),
    "the firmware's PXE fetched snponly.efi from dnsmasq's TFTP (then iPXE took over)",
  )
  t.match(r.serial, /UEFI firmware/, 'the plan says the PC boots by UEFI')
  t.ok(
    reports().some((f) => /^lab-czcnet0002-.*\.json$/.test(f)),
    'its report is on the server',
  )
  const host = await pcBoot(t, 'SSD boot (UEFI)', spec, mac, 1)
  t.match(host.serial, /LABHOST-SELECTOR slot=A /, "the SSD's selector picked slot A", { serial: host.serial.slice(-3000) })
  t.match(host.serial, /LABHOST-USERSPACE version=1\.0\.0 slot=A/)
})

// The QEMU side of the VM driver: boot a machine from raw disk images, capture the serial
// console, and wait until the guest powers off (or a timeout says it never did).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { chooseAccel, type Accel } from './accel.ts'

export interface VmDisk {
  file: string
  /** ide-hd: the BIOS boot disk; virtio-blk lets tests give a 4Kn logical block size. */
  bus: 'ide-hd' | 'virtio-blk' | 'usb-storage'
  rotationRate?: number
  logicalBlockSize?: 512 | 4096
  readOnly?: boolean
  /** The image file's format (default raw): qcow2 for a user volume on a VM base image. */
  format?: 'raw' | 'qcow2'
  /** SeaBIOS boot order: lower boots first. */
  bootIndex?: number
  /**
   * Record every write and flush the guest sends to this disk into this file (QEMU's
   * blklogwrites driver, dm-log-writes format; vm-tests/write-log.ts reads it).
   */
  writeLog?: string
}

export interface VmSpec {
  disks: VmDisk[]
  memoryMb?: number
  /** Virtual CPUs (default 1); under TCG each is a host thread. */
  cpus?: number
  /** DMI system vendor / product (and serial number), as `-smbios type=1` sets them. */
  smbios?: { manufacturer: string; product: string; serial?: string }
  accel?: Accel
  /**
   * A virtio NIC on QEMU user networking, restricted: the guest reaches nothing but the
   * forwards listed here (guest address 10.0.2.100:port -> this machine's 127.0.0.1:port).
   */
  net?: { forwards: { guestPort: number; hostPort: number }[] }
  /**
   * Instead: an e1000 NIC (QEMU's iPXE in its option ROM, as a PC's PXE ROM) on a tap device that
   * already exists in network namespace `ns` (plugged into a lab's bridge); QEMU runs in that
   * namespace. `bootIndex`: its place in the firmware's boot order (network boot).
   */
  tap?: {
    ns: string
    ifname: string
    mac: string
    bootIndex?: number
    /**
     * firmware-pxe: a virtio NIC without QEMU's iPXE option ROM, so UEFI firmware boots it by its
     * own PXE (OVMF's, over its virtio-net driver), which fetches the boot file by TFTP as a
     * real PC's firmware does. Default: e1000 with its iPXE ROM.
     */
    nic?: 'ipxe-rom' | 'firmware-pxe'
  }
  /**
   * UEFI instead of SeaBIOS: a q35 machine with OVMF (Debian's ovmf, no CSM) and this writable
   * copy of its variable store (uefiVarsCopy) — a PC of the kind labs buy now.
   */
  uefi?: { vars: string }
  /**
   * A second serial port (the guest's ttyS1) the harness writes to: a fault-enabled guest waits
   * on it at its hold points (lib/faults.ts holdAt). Needs a driver that can send (QEMU).
   */
  holdPort?: boolean
}

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd'
const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd'

/** A fresh, empty UEFI variable store for one machine (no boot entries: OVMF finds the removable-media path). */
export function uefiVarsCopy(dir: string): string {
  if (!fs.existsSync(OVMF_CODE)) throw new Error(`${OVMF_CODE} is missing: install Debian package ovmf (scripts/setup.sh does)`)
  const vars = path.join(dir, 'OVMF_VARS.fd')
  fs.copyFileSync(OVMF_VARS, vars)
  return vars
}

export interface BootResult {
  serial: string
  accel: Accel
  poweredOff: boolean
  timedOut: boolean
  seconds: number
  stderr: string
}

/**
 * `machine.reboot`: 'exit' ends QEMU when the guest reboots (a boot test ends there); 'restart'
 * keeps the machine running across reboots and resets. `machine.qmp`: a QMP control socket.
 */
export function qemuArgs(spec: VmSpec, accel: Accel, serialFile: string, machine: { reboot?: 'exit' | 'restart'; qmp?: string; hold?: string } = {}): string[] {
  const args = [
    '-machine',
    spec.uefi ? 'q35' : 'pc',
    '-accel',
    accel,
    '-m',
    String(spec.memoryMb ?? 512),
    '-display',
    'none',
    '-serial',
    `file:${serialFile}`,
    '-monitor',
    'none',
  ]
  if ((machine.reboot ?? 'exit') === 'exit') args.push('-no-reboot')
  if (spec.cpus && spec.cpus > 1) args.push('-smp', String(spec.cpus))
  if (spec.uefi) args.push('-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,file=${spec.uefi.vars}`)
  if (machine.qmp) args.push('-qmp', `unix:${machine.qmp},server=on,wait=off`)
  // COM2, after the console's COM1: the guest's ttyS1
  if (machine.hold) args.push('-serial', `unix:${machine.hold},server=on,wait=off`)
  if (spec.tap) {
    const { ifname, mac, bootIndex, nic } = spec.tap
    const device = nic === 'firmware-pxe' ? 'virtio-net-pci,romfile=' : 'e1000'
    args.push(
      '-netdev',
      `tap,id=n0,ifname=${ifname},script=no,downscript=no`,
      '-device',
      `${device},netdev=n0,mac=${mac}${bootIndex !== undefined ? `,bootindex=${bootIndex}` : ''}`,
    )
  } else if (spec.net) {
    // cmd: runs one `nc` per guest connection (a tcp: chardev would be one connection, opened
    // when QEMU starts, shared by every guest connection)
    const fwd = spec.net.forwards.map((f) => `,guestfwd=tcp:10.0.2.100:${f.guestPort}-cmd:busybox nc 127.0.0.1 ${f.hostPort}`).join('')
    args.push('-netdev', `user,id=n0,restrict=on${fwd}`, '-device', 'virtio-net-pci,netdev=n0')
  } else {
    args.push('-nic', 'none')
  }
  if (accel === 'kvm') args.push('-cpu', 'host')
  if (spec.smbios)
    args.push(
      '-smbios',
      `type=1,manufacturer=${spec.smbios.manufacturer.replace(/,/g, ',,')},product=${spec.smbios.product.replace(/,/g, ',,')}${spec.smbios.serial !== undefined ? `,serial=${spec.smbios.serial.replace(/,/g, ',,')}` : ''}`,
    )
  if (spec.disks.some((d) => d.bus === 'usb-storage')) args.push('-device', 'qemu-xhci,id=xhci')
  let ide = 0
  spec.disks.forEach((d, i) => {
    if (d.writeLog) {
      fs.writeFileSync(d.writeLog, '')
      args.push(
        '-blockdev',
        `driver=file,node-name=f${i},filename=${d.file}`,
        '-blockdev',
        `driver=file,node-name=l${i},filename=${d.writeLog}`,
        '-blockdev',
        `driver=blklogwrites,node-name=d${i},file=f${i},log=l${i},log-sector-size=512`,
      )
    } else {
      args.push('-drive', `file=${d.file},format=${d.format ?? 'raw'},if=none,id=d${i}${d.readOnly ? ',readonly=on' : ''}`)
    }
    const bs =
      (d.logicalBlockSize ? `,logical_block_size=${d.logicalBlockSize},physical_block_size=${d.logicalBlockSize}` : '') +
      (d.bootIndex !== undefined ? `,bootindex=${d.bootIndex}` : '')
    if (d.bus === 'ide-hd') {
      // the pc machine has two IDE buses with two units each; q35 six AHCI ports, one disk each
      args.push(
        '-device',
        `ide-hd,drive=d${i},${spec.uefi ? `bus=ide.${ide}` : `bus=ide.${ide >> 1},unit=${ide & 1}`},rotation_rate=${d.rotationRate ?? 1}${bs}`,
      )
      ide++
    } else if (d.bus === 'virtio-blk') args.push('-device', `virtio-blk-pci,drive=d${i}${bs}`)
    else args.push('-device', `usb-storage,bus=xhci.0,drive=d${i},removable=on${d.bootIndex !== undefined ? `,bootindex=${d.bootIndex}` : ''}`)
  })
  return args
}

/**
 * Boot until the guest powers off (qemu exits), the serial console shows `until`, or
 * `timeoutMs` passes; the QEMU process is always ended.
 */
export async function bootUntilPowerOff(spec: VmSpec, timeoutMs: number, until?: RegExp): Promise<BootResult> {
  const accel = spec.accel ?? (await chooseAccel())
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-vm-'))
  const serialFile = path.join(dir, 'serial.log')
  const started = Date.now()
  const readSerial = () => (fs.existsSync(serialFile) ? fs.readFileSync(serialFile, 'latin1') : '')
  let sawMarker = false
  try {
    // ip netns exec execs QEMU: the process killed on a timeout is QEMU itself
    const [cmd, ...pre] = spec.tap ? ['ip', 'netns', 'exec', spec.tap.ns, 'qemu-system-x86_64'] : ['qemu-system-x86_64']
    const vm = execa(cmd!, [...pre, ...qemuArgs(spec, accel, serialFile)], { reject: false, timeout: timeoutMs, killSignal: 'SIGKILL' })
    const poll = until
      ? setInterval(() => {
          if (until.test(readSerial())) {
            sawMarker = true
            vm.kill('SIGKILL')
          }
        }, 500)
      : undefined
    const r = await vm
    if (poll) clearInterval(poll)
    const serial = readSerial()
    const timedOut = r.timedOut === true && !sawMarker
    return { serial, accel, poweredOff: r.exitCode === 0 && !r.timedOut, timedOut, seconds: (Date.now() - started) / 1000, stderr: String(r.stderr ?? '') }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

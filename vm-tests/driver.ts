// The VM driver interface the fault-injection campaign runs on: start a machine from raw disk
// images, follow its serial console, reset it hard, power it off, and copy its disks aside.
// QEMU (over QMP) is always there; VirtualBox (over VBoxManage) is used when it is installed.
import fs from 'node:fs'
import type { VmSpec } from './qemu.ts'

export interface RunningVm {
  /** Everything the serial console printed since the machine started. */
  serial(): string
  /** Hard reset, as the reset button (no shutdown, caches in the guest lost). */
  reset(): Promise<void>
  /** Pull the plug; resolves once the machine is gone. */
  powerOff(): Promise<void>
  /** True once the machine stopped by itself (the guest powered off) or was powered off. */
  exited(): boolean
  /** Write to the guest's second serial port (VmSpec.holdPort); absent where the driver cannot. */
  send?(text: string): void
}

export interface VmDriver {
  readonly name: 'qemu' | 'virtualbox'
  /** Its machines can have a hold port (VmSpec.holdPort) and send to it. */
  readonly holds?: boolean
  /** How the CPU is run: kvm/tcg for QEMU, the hypervisor for VirtualBox. */
  accel(): Promise<string>
  /** Power on. Guest reboots and resets keep the same machine running. */
  start(spec: VmSpec, serialFile: string): Promise<RunningVm>
}

/** Follows a growing serial log file without re-reading it. */
export class SerialTail {
  private file: string
  private offset = 0
  private text = ''

  constructor(file: string) {
    this.file = file
  }

  read(): string {
    if (!fs.existsSync(this.file)) return this.text
    const fd = fs.openSync(this.file, 'r')
    try {
      const size = fs.fstatSync(fd).size
      if (size > this.offset) {
        const b = Buffer.alloc(size - this.offset)
        fs.readSync(fd, b, 0, b.length, this.offset)
        this.offset = size
        this.text += b.toString('latin1')
      }
    } finally {
      fs.closeSync(fd)
    }
    return this.text
  }
}

// The VirtualBox implementation of the VM driver, over VBoxManage: the raw disk images are
// attached through VMDK descriptors whose one FLAT extent is the raw file itself (no copy, so the
// campaign reads the same bytes it would with QEMU), serial port 1 goes to a file, `controlvm
// reset` is the reset button. Used when VBoxManage is installed; NOT exercised on the machines
// this project's CI runs on (no VirtualBox there), see docs/reliability.md.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { execa, execaSync } from 'execa'
import type { VmSpec } from './qemu.ts'
import { SerialTail, type RunningVm, type VmDriver } from './driver.ts'

const vbox = async (...args: string[]) => (await execa('VBoxManage', args)).stdout

function vmdkDescriptor(raw: string): string {
  const sectors = Math.floor(fs.statSync(raw).size / 512)
  const cylinders = Math.min(16383, Math.floor(sectors / (16 * 63)))
  return [
    '# Disk DescriptorFile',
    'version=1',
    'CID=fffffffe',
    'parentCID=ffffffff',
    'createType="monolithicFlat"',
    '',
    `RW ${sectors} FLAT "${path.resolve(raw)}" 0`,
    '',
    '#DDB',
    'ddb.virtualHWVersion = "4"',
    'ddb.adapterType="ide"',
    `ddb.geometry.cylinders="${cylinders}"`,
    'ddb.geometry.heads="16"',
    'ddb.geometry.sectors="63"',
    '',
  ].join('\n')
}

export class VirtualBoxDriver implements VmDriver {
  readonly name = 'virtualbox' as const

  async accel(): Promise<string> {
    return `virtualbox ${(await vbox('--version')).trim()}`
  }

  async start(spec: VmSpec, serialFile: string): Promise<RunningVm> {
    if (spec.net) throw new Error('the VirtualBox driver has no guest forwards (QEMU guestfwd); run network campaigns with --driver qemu')
    if (spec.disks.some((d) => d.writeLog || d.logicalBlockSize === 4096)) throw new Error('write logs and 4Kn disks need --driver qemu')
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-vbox-'))
    const name = path.basename(dir)
    fs.writeFileSync(serialFile, '')
    await vbox('createvm', '--name', name, '--ostype', 'Linux_64', '--register', '--basefolder', dir)
    const media: string[] = []
    const attached: string[][] = []
    try {
      await vbox(
        'modifyvm',
        name,
        '--memory',
        String(spec.memoryMb ?? 512),
        '--firmware',
        'bios',
        '--nic1',
        'none',
        '--uart1',
        '0x3F8',
        '4',
        '--uartmode1',
        'file',
        path.resolve(serialFile),
        '--boot1',
        'disk',
        '--boot2',
        'none',
        '--boot3',
        'none',
        '--boot4',
        'none',
      )
      if (spec.smbios) {
        await vbox('setextradata', name, 'VBoxInternal/Devices/pcbios/0/Config/DmiSystemVendor', spec.smbios.manufacturer)
        await vbox('setextradata', name, 'VBoxInternal/Devices/pcbios/0/Config/DmiSystemProduct', spec.smbios.product)
      }
      await vbox('storagectl', name, '--name', 'SATA', '--add', 'sata', '--portcount', String(Math.max(1, spec.disks.length)), '--bootable', 'on')
      if (spec.disks.some((d) => d.bus === 'usb-storage')) await vbox('storagectl', name, '--name', 'USB', '--add', 'usb')
      // the BIOS boots the first SATA port: order the disks by bootIndex
      const order = [...spec.disks].sort((a, b) => (a.bootIndex ?? 99) - (b.bootIndex ?? 99))
      let port = 0
      for (const [i, d] of order.entries()) {
        const vmdk = path.join(dir, `disk${i}.vmdk`)
        fs.writeFileSync(vmdk, vmdkDescriptor(d.file))
        media.push(vmdk)
        const usb = d.bus === 'usb-storage'
        const where = usb ? ['--storagectl', 'USB', '--port', '0', '--device', '0'] : ['--storagectl', 'SATA', '--port', String(port++), '--device', '0']
        await vbox(
          'storageattach',
          name,
          ...where,
          '--type',
          'hdd',
          '--medium',
          vmdk,
          ...(usb ? [] : ['--nonrotational', (d.rotationRate ?? 1) === 1 ? 'on' : 'off']),
        )
        attached.push(where)
      }
      await vbox('startvm', name, '--type', 'headless')
    } catch (e) {
      await this.remove(name, attached, media)
      throw e
    }
    const tail = new SerialTail(serialFile)
    let gone = false
    return {
      serial: () => tail.read(),
      reset: async () => {
        if (!gone) await vbox('controlvm', name, 'reset')
      },
      powerOff: async () => {
        if (!gone) {
          await execa('VBoxManage', ['controlvm', name, 'poweroff'], { reject: false })
          for (let i = 0; i < 100 && machineState(name) !== 'poweroff'; i++) await sleep(200)
        }
        gone = true
        await this.remove(name, attached, media)
        fs.rmSync(dir, { recursive: true, force: true })
      },
      exited: () => {
        if (!gone) {
          const r = machineState(name)
          if (r === 'poweroff' || r === 'aborted') gone = true
        }
        return gone
      },
    }
  }

  /** Detach and forget the descriptors first: `unregistervm --delete` would delete attached media, here the raw disks. */
  private async remove(name: string, attached: string[][], media: string[]): Promise<void> {
    for (const where of attached) await execa('VBoxManage', ['storageattach', name, ...where, '--medium', 'none'], { reject: false })
    for (const m of media) await execa('VBoxManage', ['closemedium', 'disk', m], { reject: false })
    await execa('VBoxManage', ['unregistervm', name, '--delete'], { reject: false })
  }
}

/** The machine state, synchronously (RunningVm.exited is a plain check). */
function machineState(name: string): string | undefined {
  const r = execaSync('VBoxManage', ['showvminfo', name, '--machinereadable'], { reject: false })
  return String(r.stdout).match(/^VMState="([^"]+)"/m)?.[1]
}

// Which VM driver runs the campaign: QEMU, or VirtualBox where it is installed. (Apart from
// driver.ts, which both drivers import: the drivers are loaded only when chosen.)
import { execa } from 'execa'
import type { VmDriver } from './driver.ts'

export async function vboxManageAvailable(): Promise<boolean> {
  const r = await execa('VBoxManage', ['--version'], { reject: false }).catch(() => null)
  return r?.exitCode === 0
}

/** `qemu`, `virtualbox`, or `auto`: VirtualBox where VBoxManage works, QEMU otherwise. */
export async function chooseDriver(name: string = 'auto'): Promise<VmDriver> {
  if (name === 'qemu' || (name === 'auto' && !(await vboxManageAvailable()))) return new (await import('./qemu-driver.ts')).QemuDriver()
  if (name === 'virtualbox' || name === 'auto') {
    if (!(await vboxManageAvailable())) throw new Error('--driver virtualbox: VBoxManage is not installed here')
    return new (await import('./virtualbox-driver.ts')).VirtualBoxDriver()
  }
  throw new Error(`unknown driver ${name}: use qemu, virtualbox or auto`)
}

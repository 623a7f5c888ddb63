// The UEFI selector (DESIGN §7): one unified kernel image for \EFI\BOOT\BOOTX64.EFI on the ESP.
// UEFI firmware ignores the legacy-BIOS-bootable attribute that gptmbr reads, so this small Linux
// (Debian's kernel, a busybox initramfs with kexec) applies gptmbr's rule — the one flagged root
// entry of the primary array — and kexecs that slot's own kernel and initramfs. The slot switch
// stays the one-sector write on both firmware types, kernels stay inside their slots, and the ESP
// is written by the installer only. Made as bookworm allows (no ukify): objcopy puts the
// sections onto systemd's EFI stub (package systemd-boot-efi).
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import type { Layout } from '../lib/layout.ts'
import { kernelFromPackage, unpackDebianPackage } from './debian-packages.ts'
import { buildInitramfs } from './initramfs.ts'
import { selectorInit } from './initramfs-init.ts'

/** Disk and file-system drivers the selector needs to read the GPT and mount a slot (AHCI, IDE, NVMe, virtio). */
export const SELECTOR_MODULES = ['ahci', 'ata_piix', 'sd_mod', 'nvme', 'virtio_blk', 'virtio_pci', 'ext4', 'crc32c_generic']
// the last console= is /dev/console, where the selector's init prints: the serial line, as the slots' own images do
export const SELECTOR_CMDLINE = 'console=tty0 console=ttyS0,115200 panic=-1 quiet'
const STUB = 'usr/lib/systemd/boot/efi/linuxx64.efi.stub'
/** Where an image for a layout with an ESP carries its selector (relative to the root). */
export const SELECTOR_IN_IMAGE = 'boot/efi/BOOTX64.EFI'

export interface SelectorOptions {
  layout: Layout
  out: string
  kernelPackage?: string
  log?: (line: string) => void
}

/** kexec and every shared library it loads, as initramfs files (Debian's kexec links Xen's libraries). */
async function kexecFiles(): Promise<{ path: string; data: Buffer; mode: number }[]> {
  const kexec = ['/sbin/kexec', '/usr/sbin/kexec'].find((p) => fs.existsSync(p))
  if (!kexec) throw new LabhostError('packageMissing', 'kexec is not installed: the UEFI selector needs it', 'install Debian package kexec-tools (scripts/setup.sh does)')
  const { stdout } = await run('ldd', [kexec])
  const libs = [...stdout.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)].map((m) => m[1]!)
  const missing = /^\s*(\S+) => not found/m.exec(stdout)
  if (missing) throw new LabhostError('packageMissing', `kexec needs ${missing[1]}, which is not installed`, 'reinstall kexec-tools with its dependencies')
  return [kexec, ...libs].map((f) => ({ path: f.slice(1), data: fs.readFileSync(f), mode: 0o755 }))
}

export async function buildSelector(o: SelectorOptions): Promise<{ file: string; bytes: number; sha256: string; kernel: string }> {
  const log = o.log ?? (() => {})
  const kernel = await kernelFromPackage(o.kernelPackage ?? 'linux-image-amd64')
  log(`selector: kernel ${kernel.version}, initramfs with kexec and ${SELECTOR_MODULES.join(' ')}`)
  const initrd = await buildInitramfs({ modulesDir: kernel.modulesDir, modules: SELECTOR_MODULES, init: selectorInit(o.layout), files: await kexecFiles() })
  await makeUki({ vmlinuz: kernel.vmlinuz, initrd, cmdline: SELECTOR_CMDLINE, name: 'labhost selector', out: o.out })
  const data = fs.readFileSync(o.out)
  return { file: o.out, bytes: data.length, sha256: crypto.createHash('sha256').update(data).digest('hex'), kernel: kernel.version }
}

/**
 * A unified kernel image: systemd's EFI stub with the kernel, the initramfs and the command line
 * as sections, bootable by any UEFI firmware as \EFI\BOOT\BOOTX64.EFI.
 */
export async function makeUki(o: { vmlinuz: string; initrd: Buffer; cmdline: string; name: string; out: string }): Promise<void> {
  const stub = path.join(await unpackDebianPackage('systemd-boot-efi'), STUB)
  if (!fs.existsSync(stub)) throw new LabhostError('notFound', `systemd-boot-efi holds no ${STUB}`, 'the package layout changed; check dpkg -c of the .deb')
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-uki-'))
  try {
    const part = (name: string, data: string | Buffer) => {
      const f = path.join(work, name)
      fs.writeFileSync(f, data)
      return f
    }
    const osrel = part('osrel', `NAME="${o.name}"\nID=labhost\n`)
    const cmdline = part('cmdline', o.cmdline)
    const initrdFile = part('initrd', o.initrd)
    // the stub's own sections end below 0x20000; the kernel goes at 32 MiB and the initramfs
    // at the next 16 MiB boundary after it
    const initrdVma = 0x2000000 + Math.ceil((fs.statSync(o.vmlinuz).size + 1) / 0x1000000) * 0x1000000
    fs.mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true })
    await run('objcopy', [
      '--add-section', `.osrel=${osrel}`, '--change-section-vma', '.osrel=0x20000',
      '--add-section', `.cmdline=${cmdline}`, '--change-section-vma', '.cmdline=0x30000',
      '--add-section', `.linux=${o.vmlinuz}`, '--change-section-vma', '.linux=0x2000000',
      '--add-section', `.initrd=${initrdFile}`, '--change-section-vma', `.initrd=0x${initrdVma.toString(16)}`,
      stub, o.out,
    ])
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

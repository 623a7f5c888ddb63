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
import { kernelFromPackage, unpackDebianPackage, type DebianKernel } from './debian-packages.ts'
import { buildInitramfs } from './initramfs.ts'
import { selectorInit } from './initramfs-init.ts'

/** Disk and file-system drivers the selector needs to read the GPT and mount a slot (AHCI, IDE, NVMe, virtio). */
export const SELECTOR_MODULES = ['ahci', 'ata_piix', 'sd_mod', 'nvme', 'virtio_blk', 'virtio_pci', 'ext4', 'crc32c_generic']
// the last console= is /dev/console, where the selector's init prints: the serial line, as the slots' own images do
export const SELECTOR_CMDLINE = 'console=tty0 console=ttyS0,115200 panic=-1 quiet'
const STUB = 'usr/lib/systemd/boot/efi/linuxx64.efi.stub'

export interface SelectorOptions {
  layout: Layout
  out: string
  kernelPackage?: string
  log?: (line: string) => void
}

/** kexec and every shared library it loads, as initramfs files (Debian's kexec links Xen's libraries). */
async function kexecFiles(): Promise<{ path: string; data: Buffer; mode: number }[]> {
  const kexec = ['/sbin/kexec', '/usr/sbin/kexec'].find((p) => fs.existsSync(p))
  if (!kexec)
    throw new LabhostError('packageMissing', 'kexec is not installed: the UEFI selector needs it', 'install Debian package kexec-tools (scripts/setup.sh does)')
  const { stdout } = await run('ldd', [kexec])
  const libs = [...stdout.matchAll(/(?:=>\s*)?(\/\S+)\s+\(0x/g)].map((m) => m[1]!)
  const missing = /^\s*(\S+) => not found/m.exec(stdout)
  if (missing) throw new LabhostError('packageMissing', `kexec needs ${missing[1]}, which is not installed`, 'reinstall kexec-tools with its dependencies')
  return [kexec, ...libs].map((f) => ({ path: f.slice(1), data: fs.readFileSync(f), mode: 0o755 }))
}

/** The selector's kernel and its initramfs (the init that picks the flagged slot and kexecs it). */
async function selectorParts(o: Omit<SelectorOptions, 'out'>): Promise<{ kernel: DebianKernel; initrd: Buffer }> {
  const kernel = await kernelFromPackage(o.kernelPackage ?? 'linux-image-amd64')
  o.log?.(`selector: kernel ${kernel.version}, initramfs with kexec and ${SELECTOR_MODULES.join(' ')}`)
  const initrd = await buildInitramfs({ modulesDir: kernel.modulesDir, modules: SELECTOR_MODULES, init: selectorInit(o.layout), files: await kexecFiles() })
  return { kernel, initrd }
}

const sha256 = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex')

export async function buildSelector(o: SelectorOptions): Promise<{ file: string; bytes: number; sha256: string; kernel: string }> {
  const { kernel, initrd } = await selectorParts(o)
  await makeUki({ vmlinuz: kernel.vmlinuz, initrd, cmdline: SELECTOR_CMDLINE, name: 'labhost selector', out: o.out })
  const data = fs.readFileSync(o.out)
  return { file: o.out, bytes: data.length, sha256: sha256(data), kernel: kernel.version }
}

/**
 * Prototype (`labhost image selector --shim`; the installer does not use it yet): the selector for
 * PCs with Secure Boot on and only Microsoft's keys, made of Debian's signed parts. Debian's shim
 * (signed by Microsoft's UEFI CA) at the removable-media path starts Debian's GRUB beside it; that
 * GRUB reads grub.cfg from its built-in prefix \EFI\debian and boots Debian's kernel (verified
 * through shim) with the selector's initramfs (not verified). Under Secure Boot that kernel is
 * locked down, and the selector's `kexec -s` accepts the slot's kernel only if it carries a
 * signature the kernel trusts: Debian's, through the CA shim hands on (MokListRT). Measured with
 * scripts/secure-boot-probe.ts (docs/design.md "Secure Boot"). The files go into `outDir` as the ESP's tree.
 */
export const SHIM_SELECTOR_FILES = {
  shim: 'EFI/BOOT/BOOTX64.EFI',
  grub: 'EFI/BOOT/grubx64.efi',
  grubCfg: 'EFI/debian/grub.cfg',
  kernel: 'EFI/labhost/vmlinuz',
  initrd: 'EFI/labhost/initrd.img',
} as const

export async function buildShimSelector(
  o: Omit<SelectorOptions, 'out'> & { outDir: string },
): Promise<{ dir: string; kernel: string; shim: string; grub: string; files: { path: string; bytes: number; sha256: string }[] }> {
  const { kernel, initrd } = await selectorParts(o)
  const shimPkg = await unpackDebianPackage('shim-signed')
  const grubPkg = await unpackDebianPackage('grub-efi-amd64-signed')
  const shim = path.join(shimPkg, 'usr/lib/shim/shimx64.efi.signed')
  const grub = path.join(grubPkg, 'usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed')
  for (const f of [shim, grub]) {
    if (!fs.existsSync(f))
      throw new LabhostError('notFound', `${path.basename(f)} is missing from its Debian package`, 'the package layout changed; check dpkg -c of the .deb')
  }
  const F = SHIM_SELECTOR_FILES
  // GRUB stops at its prompt when a command fails; the selector's own failures reboot after 10 s, so
  // this does too (that path is not exercised by the probe: every measured boot got past `boot`)
  const grubCfg = [
    '# labhost selector (Secure Boot): shim, then GRUB, then the kernel with the selector initramfs, all from Debian',
    `linux /${F.kernel} ${SELECTOR_CMDLINE}`,
    `initrd /${F.initrd}`,
    'boot',
    'echo "LABHOST-INITRAMFS-FAIL GRUB could not start the selector kernel"',
    'sleep 10',
    'reboot',
    '',
  ].join('\n')
  const contents: [string, Buffer][] = [
    [F.shim, fs.readFileSync(shim)],
    [F.grub, fs.readFileSync(grub)],
    [F.grubCfg, Buffer.from(grubCfg)],
    [F.kernel, fs.readFileSync(kernel.vmlinuz)],
    [F.initrd, initrd],
  ]
  const files = contents.map(([rel, data]) => {
    const to = path.join(o.outDir, rel)
    fs.mkdirSync(path.dirname(to), { recursive: true })
    fs.writeFileSync(to, data)
    return { path: rel, bytes: data.length, sha256: sha256(data) }
  })
  const version = (dir: string) => path.basename(dir).split('_')[1] ?? '?'
  return { dir: o.outDir, kernel: kernel.version, shim: version(shimPkg), grub: version(grubPkg), files }
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
      '--add-section',
      `.osrel=${osrel}`,
      '--change-section-vma',
      '.osrel=0x20000',
      '--add-section',
      `.cmdline=${cmdline}`,
      '--change-section-vma',
      '.cmdline=0x30000',
      '--add-section',
      `.linux=${o.vmlinuz}`,
      '--change-section-vma',
      '.linux=0x2000000',
      '--add-section',
      `.initrd=${initrdFile}`,
      '--change-section-vma',
      `.initrd=0x${initrdVma.toString(16)}`,
      stub,
      o.out,
    ])
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

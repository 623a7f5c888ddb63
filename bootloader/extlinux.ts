// extlinux inside a root filesystem: /boot/extlinux/{extlinux.conf,ldlinux.sys,ldlinux.c32} and
// the VBR in the filesystem's first sector. Installed into a mounted filesystem, so the same
// image boots from either slot (extlinux addresses sectors relative to the partition start).
import fs from 'node:fs'
import path from 'node:path'
import { run } from '../lib/exec.ts'

export type ExtlinuxEntry =
  | { label: string; kernel: string; initrd?: string; append: string }
  /** A COM32 module from /boot/extlinux, e.g. poweroff.c32. */
  | { label: string; com32: string }

export interface ExtlinuxConfig {
  /** Serial console (port 0 = ttyS0) for headless lab PCs and VM tests. */
  serial?: { port: number; baud: number }
  entries: ExtlinuxEntry[]
}

export function renderExtlinuxConf(cfg: ExtlinuxConfig): string {
  const lines: string[] = []
  if (cfg.serial) lines.push(`SERIAL ${cfg.serial.port} ${cfg.serial.baud}`)
  lines.push(`DEFAULT ${cfg.entries[0]?.label ?? 'linux'}`, 'PROMPT 0', 'TIMEOUT 0', '')
  for (const e of cfg.entries) {
    lines.push(`LABEL ${e.label}`)
    if ('com32' in e) {
      lines.push(`  COM32 ${e.com32}`, '')
      continue
    }
    lines.push(`  KERNEL ${e.kernel}`)
    if (e.initrd) lines.push(`  INITRD ${e.initrd}`)
    lines.push(`  APPEND ${e.append}`, '')
  }
  return lines.join('\n')
}

/**
 * Mind the filesystem: syslinux 6.04 fails to load files from ext4 with 1 KiB blocks and extents
 * ("failed: I/O error"); make root filesystems with 4 KiB blocks (mkfs.ext4 -b 4096).
 */
export async function installExtlinux(mountDir: string, cfg: ExtlinuxConfig, o: { cpu?: number } = {}): Promise<void> {
  const dir = path.join(mountDir, 'boot/extlinux')
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, 'extlinux.conf'), renderExtlinuxConf(cfg))
  if (o.cpu === undefined) await run('extlinux', ['--install', dir])
  else await run('taskset', ['-c', String(o.cpu), 'extlinux', '--install', dir])
}

// A busybox initramfs: static busybox, chosen kernel modules (loaded in dependency order by the
// init script), an /init script and extra files, packed as a gzip'd newc cpio.
import fs from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { LabhostError } from '../lib/errors.ts'
import { parentDirs, writeCpio, type CpioEntry } from './cpio.ts'
import { resolveModules } from './kmod.ts'

export const BUSYBOX_PATHS = ['/bin/busybox', '/usr/bin/busybox']
/** Where module files sit in the initramfs, and the list the init script loads in order. */
export const INITRAMFS_MODULE_DIR = 'lib/modules'
export const INITRAMFS_MODULE_LIST = 'etc/labhost/modules'

export interface InitramfsSpec {
  /** Extracted kernel module tree (lib/modules/<version>). */
  modulesDir?: string
  modules?: string[]
  init: string
  files?: { path: string; data: Buffer; mode?: number }[]
}

export function findBusybox(): string {
  const p = BUSYBOX_PATHS.find((b) => fs.existsSync(b))
  if (!p) throw new LabhostError('notFound', 'busybox is not installed', 'install Debian package busybox-static (scripts/setup.sh does)')
  return p
}

export async function buildInitramfs(spec: InitramfsSpec): Promise<Buffer> {
  const files: { path: string; data: Buffer; mode?: number }[] = [
    { path: 'bin/busybox', data: fs.readFileSync(findBusybox()), mode: 0o755 },
    { path: 'init', data: Buffer.from(spec.init), mode: 0o755 },
    ...(spec.files ?? []),
  ]
  const moduleFiles = spec.modules?.length ? await resolveModules(spec.modulesDir ?? '', spec.modules) : []
  for (const m of moduleFiles) files.push({ path: `${INITRAMFS_MODULE_DIR}/${path.basename(m)}`, data: fs.readFileSync(m) })
  files.push({ path: INITRAMFS_MODULE_LIST, data: Buffer.from(moduleFiles.map((m) => path.basename(m)).join('\n') + '\n') })
  const entries: CpioEntry[] = [
    ...parentDirs([...files.map((f) => f.path), 'dev/x', 'proc/x', 'sys/x', 'mnt/x', 'tmp/x', 'run/x']),
    { path: 'dev/console', type: 'chardev', major: 5, minor: 1 },
    { path: 'bin/sh', type: 'symlink', target: 'busybox' },
    ...files.map((f) => ({ path: f.path, type: 'file' as const, data: f.data, mode: f.mode })),
  ]
  // mtime 0 in the gzip header too, so the same inputs give the same bytes.
  return zlib.gzipSync(writeCpio(entries), { level: 9 })
}

/** Shell lines for an init script: load the listed modules in order. */
export const LOAD_MODULES_SH = `while read -r m; do [ -n "$m" ] && insmod /${INITRAMFS_MODULE_DIR}/$m 2>/dev/null; done < /${INITRAMFS_MODULE_LIST}`

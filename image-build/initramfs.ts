// A busybox initramfs: static busybox, chosen kernel modules (loaded in dependency order by the
// init script), an /init script and extra files, packed as a compressed newc cpio. With a tree
// (the network installer: the stick's whole root) the tree's content goes in as well.
import fs from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import zlib from 'node:zlib'
import { LabhostError } from '../lib/errors.ts'
import { cpioChunks, parentDirs, writeCpio, type CpioEntry } from './cpio.ts'
import { resolveModules } from './kmod.ts'

export const BUSYBOX_PATHS = ['/bin/busybox', '/usr/bin/busybox']
/** Where module files sit in the initramfs, and the list the init script loads in order. */
export const INITRAMFS_MODULE_DIR = 'lib/modules'
export const INITRAMFS_MODULE_LIST = 'etc/labhost/modules'
/**
 * zstd level of a zstd initramfs: 35 MB for labhost's 112 MB against 41 MB at gzip -6 (plan
 * netboot.md §9). Its window (8 MiB, no long mode) is far inside what the kernel's unzstd takes.
 */
export const INITRAMFS_ZSTD_LEVEL = 12
// one frame with a checksum; no long mode (its window can reach 128 MiB, which the kernel's
// unzstd would have to allocate while it unpacks the initramfs)
const ZSTD_PARAMS = {
  [zlib.constants.ZSTD_c_compressionLevel]: INITRAMFS_ZSTD_LEVEL,
  [zlib.constants.ZSTD_c_checksumFlag]: 1,
  [zlib.constants.ZSTD_c_enableLongDistanceMatching]: 0,
}

export interface InitramfsSpec {
  /** Extracted kernel module tree (lib/modules/<version>). */
  modulesDir?: string
  modules?: string[]
  init: string
  files?: { path: string; data: Buffer; mode?: number }[]
  /**
   * A directory whose whole content goes in (directories, files with their modes, symlinks); its
   * bin/busybox and bin/sh serve when it has them. `files`, the modules and /init win over it.
   */
  tree?: string
  /** gzip (the default: the bytes of every root image's initramfs) or zstd. */
  compression?: 'gzip' | 'zstd'
}

export function findBusybox(): string {
  const p = BUSYBOX_PATHS.find((b) => fs.existsSync(b))
  if (!p) throw new LabhostError('notFound', 'busybox is not installed', 'install Debian package busybox-static (scripts/setup.sh does)')
  return p
}

/** The initramfs in memory: for the small ones (a root image's, the UEFI selector's). */
export async function buildInitramfs(spec: InitramfsSpec): Promise<Buffer> {
  const cpio = writeCpio(await initramfsEntries(spec))
  // mtime 0 in the gzip header too, so the same inputs give the same bytes.
  if ((spec.compression ?? 'gzip') === 'gzip') return zlib.gzipSync(cpio, { level: 9 })
  return zlib.zstdCompressSync(cpio, { params: ZSTD_PARAMS })
}

/**
 * The initramfs streamed into `out` (returns its size): a tree's files are read one at a time as
 * the compressor takes them, so a root of ~170 MB is never held in memory, raw or packed.
 */
export async function writeInitramfs(spec: InitramfsSpec, out: string): Promise<number> {
  const entries = await initramfsEntries(spec)
  const compressor = (spec.compression ?? 'gzip') === 'gzip' ? zlib.createGzip({ level: 9 }) : zlib.createZstdCompress({ params: ZSTD_PARAMS })
  const written = pipeline(compressor, fs.createWriteStream(out))
  written.catch(() => {}) // awaited below; a failed write also fails the chunk being written
  // Each piece taken before the next, and end() only once all are: Node's zstd stream compresses
  // a last piece that arrives after end() with ZSTD_e_end and then ends the stream with another,
  // an extra empty frame, depending on timing.
  for (const chunk of cpioChunks(entries)) await new Promise<void>((resolve, reject) => compressor.write(chunk, (e) => (e ? reject(e) : resolve())))
  compressor.end()
  await written
  return fs.statSync(out).size
}

async function initramfsEntries(spec: InitramfsSpec): Promise<CpioEntry[]> {
  const tree = spec.tree ? treeEntries(spec.tree) : []
  const inTree = new Set(tree.map((e) => e.path))
  const files: { path: string; data: Buffer; mode?: number }[] = [
    ...(inTree.has('bin/busybox') ? [] : [{ path: 'bin/busybox', data: fs.readFileSync(findBusybox()), mode: 0o755 }]),
    { path: 'init', data: Buffer.from(spec.init), mode: 0o755 },
    ...(spec.files ?? []),
  ]
  const moduleFiles = spec.modules?.length ? await resolveModules(spec.modulesDir ?? '', spec.modules) : []
  for (const m of moduleFiles) files.push({ path: `${INITRAMFS_MODULE_DIR}/${path.basename(m)}`, data: fs.readFileSync(m) })
  files.push({ path: INITRAMFS_MODULE_LIST, data: Buffer.from(moduleFiles.map((m) => path.basename(m)).join('\n') + '\n') })
  // by path, later wins: the tree's directories keep their modes, our files replace the tree's
  const byPath = new Map<string, CpioEntry>()
  for (const e of [
    ...parentDirs([...files.map((f) => f.path), 'dev/x', 'proc/x', 'sys/x', 'mnt/x', 'tmp/x', 'run/x']),
    // the kernel opens /dev/console for /init before anything is mounted
    { path: 'dev/console', type: 'chardev' as const, major: 5, minor: 1 },
    { path: 'bin/sh', type: 'symlink' as const, target: 'busybox' },
    ...tree,
    ...files.map((f) => ({ path: f.path, type: 'file' as const, data: f.data, mode: f.mode })),
  ])
    byPath.set(e.path, e)
  for (const f of files) {
    const parent = parentDirs([f.path]).find((d) => byPath.get(d.path)?.type !== 'dir')
    if (parent)
      throw new LabhostError('configInvalid', `${spec.tree}/${parent.path} is not a directory: ${f.path} cannot go under it`, 'make it a directory in the tree')
  }
  return [...byPath.values()]
}

/** Everything under `root` as cpio entries (paths relative to it), files to be read when written. */
function treeEntries(root: string): CpioEntry[] {
  const entries: CpioEntry[] = []
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name
      const full = path.join(root, p)
      const st = fs.lstatSync(full)
      const mode = st.mode & 0o7777
      if (st.isDirectory()) {
        entries.push({ path: p, type: 'dir', mode })
        walk(p)
      } else if (st.isFile()) entries.push({ path: p, type: 'file', data: { file: full, size: st.size }, mode })
      else if (st.isSymbolicLink()) entries.push({ path: p, type: 'symlink', target: fs.readlinkSync(full) })
      else
        throw new LabhostError(
          'configInvalid',
          `${full} is neither a file, a directory nor a symlink`,
          'an initramfs tree holds no device nodes, fifos or sockets',
        )
    }
  }
  walk('')
  return entries
}

/** Shell lines for an init script: load the listed modules in order. */
export const LOAD_MODULES_SH = `while read -r m; do [ -n "$m" ] && insmod /${INITRAMFS_MODULE_DIR}/$m 2>/dev/null; done < /${INITRAMFS_MODULE_LIST}`

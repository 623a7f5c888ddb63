// A newc ("070701") cpio archive writer for initramfs images. Reproducible by construction:
// entries sorted by path, mtime 0, inode numbers by position, uid/gid 0.

export type CpioEntry =
  | { path: string; type: 'dir'; mode?: number }
  | { path: string; type: 'file'; data: Buffer; mode?: number }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'chardev'; major: number; minor: number; mode?: number }

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFCHR = 0o020000

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4)
}

function header(fields: number[], name: string): Buffer {
  const nameBuf = Buffer.from(name + '\0', 'utf8')
  const hex = fields.map((f) => (f >>> 0).toString(16).padStart(8, '0')).join('')
  const h = Buffer.from('070701' + hex, 'latin1')
  return Buffer.concat([h, nameBuf, pad4(h.length + nameBuf.length)])
}

export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  const parts: Buffer[] = []
  sorted.forEach((e, i) => {
    const name = e.path.replace(/^\/+/, '')
    let mode: number
    let data: Buffer = Buffer.alloc(0)
    let rdevMajor = 0
    let rdevMinor = 0
    switch (e.type) {
      case 'dir':
        mode = S_IFDIR | (e.mode ?? 0o755)
        break
      case 'file':
        mode = S_IFREG | (e.mode ?? 0o644)
        data = e.data
        break
      case 'symlink':
        mode = S_IFLNK | 0o777
        data = Buffer.from(e.target, 'utf8')
        break
      case 'chardev':
        mode = S_IFCHR | (e.mode ?? 0o600)
        rdevMajor = e.major
        rdevMinor = e.minor
        break
    }
    const nlink = e.type === 'dir' ? 2 : 1
    const nameLen = Buffer.byteLength(name, 'utf8') + 1
    parts.push(header([i + 1, mode, 0, 0, nlink, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameLen, 0], name), data, pad4(data.length))
  })
  parts.push(header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], 'TRAILER!!!'))
  return Buffer.concat(parts)
}

/** Every parent directory of the given paths, so the archive is self-contained. */
export function parentDirs(paths: readonly string[]): CpioEntry[] {
  const dirs = new Set<string>()
  for (const p of paths) {
    const parts = p.replace(/^\/+/, '').split('/')
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'))
  }
  return [...dirs].map((d) => ({ path: d, type: 'dir' as const }))
}

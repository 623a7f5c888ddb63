// A newc ("070701") cpio archive writer for initramfs images. Reproducible by construction:
// entries sorted by path, mtime 0, inode numbers by position, uid/gid 0.
import fs from 'node:fs'
import { LabhostError } from '../lib/errors.ts'

/** A file's content: bytes, or a file on disk read only as the archive is written (a whole root tree need not sit in memory). */
export type CpioData = Buffer | { file: string; size: number }

export type CpioEntry =
  | { path: string; type: 'dir'; mode?: number }
  | { path: string; type: 'file'; data: CpioData; mode?: number }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'chardev'; major: number; minor: number; mode?: number }

const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFCHR = 0o020000
const READ_CHUNK = 1 << 20

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4)
}

function header(fields: number[], name: string): Buffer {
  const nameBuf = Buffer.from(name + '\0', 'utf8')
  const hex = fields.map((f) => (f >>> 0).toString(16).padStart(8, '0')).join('')
  const h = Buffer.from('070701' + hex, 'latin1')
  return Buffer.concat([h, nameBuf, pad4(h.length + nameBuf.length)])
}

/** A file's bytes in pieces; its size must still be the one its header announced. */
function* fileChunks(data: { file: string; size: number }): Generator<Buffer> {
  const fd = fs.openSync(data.file, 'r')
  try {
    let done = 0
    while (done < data.size) {
      // a new buffer each time: the stream may still hold the previous one
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, data.size - done))
      const n = fs.readSync(fd, buf, 0, buf.length, done)
      if (n === 0) break
      done += n
      yield n === buf.length ? buf : buf.subarray(0, n)
    }
    const now = fs.fstatSync(fd).size
    if (done !== data.size || now !== data.size)
      throw new LabhostError('io', `${data.file} changed size while it was packed into a cpio archive (${data.size} → ${now} bytes)`, 'build again')
  } finally {
    fs.closeSync(fd)
  }
}

/** The archive as a sequence of pieces, for a stream (a compressor) to take one at a time. */
export function* cpioChunks(entries: readonly CpioEntry[]): Generator<Buffer> {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  for (const [i, e] of sorted.entries()) {
    const name = e.path.replace(/^\/+/, '')
    let mode: number
    let data: CpioData = Buffer.alloc(0)
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
    const size = Buffer.isBuffer(data) ? data.length : data.size
    const nlink = e.type === 'dir' ? 2 : 1
    const nameLen = Buffer.byteLength(name, 'utf8') + 1
    yield header([i + 1, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, nameLen, 0], name)
    if (Buffer.isBuffer(data)) yield data
    else yield* fileChunks(data)
    yield pad4(size)
  }
  yield header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], 'TRAILER!!!')
}

export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  return Buffer.concat([...cpioChunks(entries)])
}

/** The entries of a newc archive (dirs, files, symlinks, character devices; other types are refused), in archive order. */
export function readCpio(archive: Buffer): CpioEntry[] {
  const entries: CpioEntry[] = []
  const align = (n: number) => n + ((4 - (n % 4)) % 4)
  let at = 0
  for (;;) {
    if (archive.toString('latin1', at, at + 6) !== '070701') throw new LabhostError('io', `not a newc cpio archive at byte ${at}`, 'rebuild the initramfs')
    const f = Array.from({ length: 13 }, (_, i) => parseInt(archive.toString('latin1', at + 6 + i * 8, at + 14 + i * 8), 16))
    const [mode, size, major, minor, nameLen] = [f[1]!, f[6]!, f[9]!, f[10]!, f[11]!]
    const name = archive.toString('utf8', at + 110, at + 110 + nameLen - 1)
    const dataAt = align(at + 110 + nameLen)
    const data = archive.subarray(dataAt, dataAt + size)
    at = align(dataAt + size)
    if (name === 'TRAILER!!!') return entries
    const type = mode & S_IFMT
    if (type === S_IFDIR) entries.push({ path: name, type: 'dir', mode: mode & 0o7777 })
    else if (type === S_IFREG) entries.push({ path: name, type: 'file', data, mode: mode & 0o7777 })
    else if (type === S_IFLNK) entries.push({ path: name, type: 'symlink', target: data.toString('utf8') })
    else if (type === S_IFCHR) entries.push({ path: name, type: 'chardev', major, minor, mode: mode & 0o7777 })
    else
      throw new LabhostError(
        'io',
        `cpio entry ${name} has file type ${type.toString(8)}: only directories, files, symlinks and character devices are read`,
        'rebuild the initramfs',
      )
  }
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

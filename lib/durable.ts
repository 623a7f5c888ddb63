// Small files replaced so that a power cut leaves the old or the new content, never a mix:
// write a temporary file, fsync it, rename it over the old one, fsync the directory.
import fs from 'node:fs'
import path from 'node:path'

/** Replace a small file atomically and durably (write, fsync, rename, fsync the directory). */
export function writeDurable(file: string, data: string | Buffer): void {
  const tmp = `${file}.tmp`
  const fd = fs.openSync(tmp, 'w', 0o644)
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  syncDir(path.dirname(file))
}

export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r')
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

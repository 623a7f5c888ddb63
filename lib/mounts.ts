// Is a byte range of a disk mounted? A slot about to be written must not be: neither through the
// kernel's node for its partition (/dev/sda2) nor through a loop device over its range (how this
// project reaches the partitions of image files and loop disks).
import fs from 'node:fs'
import path from 'node:path'
import { sysfsBlockDir } from './blockdev.ts'

const read = (f: string) => {
  try {
    return fs.readFileSync(f, 'utf8').trim()
  } catch {
    return ''
  }
}

/**
 * What `diskPath` is, for comparing with a loop device's backing file: a block device's sysfs
 * directory, and a file's real path (an image file, or the file behind a loop disk at offset 0).
 */
function identify(p: string): { sysfs?: string; file?: string } {
  const real = fs.realpathSync(p)
  const st = fs.statSync(real)
  if (!st.isBlockDevice()) return { file: real }
  const sysfs = fs.realpathSync(sysfsBlockDir(st.rdev))
  const backing = read(`${sysfs}/loop/backing_file`).replace(/ \(deleted\)$/, '')
  const file = backing && Number(read(`${sysfs}/loop/offset`)) === 0 && fs.existsSync(backing) ? fs.realpathSync(backing) : undefined
  return { sysfs, file }
}

/** The mounted device (as /proc/self/mounts names it) whose range on `diskPath` starts at `firstByte`, or null. */
export function mountedAt(diskPath: string, firstByte: number, mountsFile = '/proc/self/mounts'): string | null {
  const disk = identify(diskPath)
  for (const line of read(mountsFile).split('\n')) {
    const dev = line.split(' ')[0] ?? ''
    if (!dev.startsWith('/dev/') || !fs.existsSync(dev)) continue
    let sys: string
    try {
      const st = fs.statSync(dev)
      if (!st.isBlockDevice()) continue
      sys = fs.realpathSync(sysfsBlockDir(st.rdev))
    } catch {
      continue
    }
    // a partition node of the disk, starting at that byte
    if (disk.sysfs && path.dirname(sys) === disk.sysfs && Number(read(`${sys}/start`)) * 512 === firstByte) return dev
    // a loop device over the disk (its file, or its device node) at that offset
    const backing = read(`${sys}/loop/backing_file`).replace(/ \(deleted\)$/, '')
    if (!backing || Number(read(`${sys}/loop/offset`)) !== firstByte || !fs.existsSync(backing)) continue
    const b = identify(backing)
    if ((b.file && b.file === disk.file) || (b.sysfs && b.sysfs === disk.sysfs)) return dev
  }
  return null
}

// Sector-level access to a disk: a block device or a plain image file, opened the same way.
// Reads go through pread; the durable single-sector write is one O_DIRECT write(2) followed by
// fsync on block devices (done by dd, which owns an aligned buffer) and pwrite + fdatasync on files.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from './errors.ts'
import { run } from './exec.ts'

export interface DiskInfo {
  path: string
  isBlockDevice: boolean
  sizeBytes: number
  /** Logical sector size; for image files, the one given or 512. */
  sectorSize: number
}

export function sysfsBlockDir(rdev: number): string {
  // Linux dev_t: major in bits 8..19, minor in bits 0..7 and 20..31.
  const major = (rdev >> 8) & 0xfff
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
  return `/sys/dev/block/${major}:${minor}`
}

function readSysfsNumber(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim())
}

export function describeDisk(diskPath: string, fileSectorSize?: number): DiskInfo {
  let st: fs.Stats
  try {
    st = fs.statSync(diskPath)
  } catch (e) {
    throw new LabhostError('notFound', `disk ${diskPath} does not exist`, 'check the path or the device name (lsblk lists disks)', {}, { cause: e })
  }
  if (st.isBlockDevice()) {
    const dir = sysfsBlockDir(st.rdev)
    return {
      path: diskPath,
      isBlockDevice: true,
      sizeBytes: readSysfsNumber(path.join(dir, 'size')) * 512,
      sectorSize: readSysfsNumber(path.join(dir, 'queue/logical_block_size')),
    }
  }
  if (!st.isFile()) {
    throw new LabhostError('notFound', `${diskPath} is neither a block device nor an image file`, 'name a disk such as /dev/sda or a disk image file')
  }
  return { path: diskPath, isBlockDevice: false, sizeBytes: st.size, sectorSize: fileSectorSize ?? 512 }
}

/**
 * One write(2) of one sector with O_DIRECT|O_DSYNC, then fsync: the device sees exactly that
 * sector (a buffered write would reach it as a whole page). O_DIRECT needs a buffer aligned to
 * the logical sector; Node cannot ask for one, so the sector is copied to successive offsets of
 * a larger buffer until the kernel accepts the address (a misaligned O_DIRECT write fails with
 * EINVAL before any I/O). Returns false where O_DIRECT is not possible, for the caller's fallback.
 */
function writeOneSectorDirect(device: string, byteOffset: number, data: Buffer): boolean {
  const { O_WRONLY, O_DIRECT, O_DSYNC } = fs.constants
  if (O_DIRECT === undefined) return false
  let fd: number
  try {
    fd = fs.openSync(device, O_WRONLY | O_DIRECT | O_DSYNC)
  } catch {
    return false
  }
  try {
    const pool = Buffer.allocUnsafeSlow(data.length + 8192)
    for (let at = 0; at <= 8192; at += 16) {
      const buf = pool.subarray(at, at + data.length)
      data.copy(buf)
      try {
        const n = fs.writeSync(fd, buf, 0, buf.length, byteOffset)
        if (n !== buf.length) throw new LabhostError('io', `short write to ${device}`, 'check the disk')
        fs.fsyncSync(fd)
        return true
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e
      }
    }
    return false
  } finally {
    fs.closeSync(fd)
  }
}

export class Disk {
  readonly info: DiskInfo
  private fd: number

  private constructor(info: DiskInfo, fd: number) {
    this.info = info
    this.fd = fd
  }

  static open(diskPath: string, opts: { sectorSize?: number } = {}): Disk {
    const info = describeDisk(diskPath, opts.sectorSize)
    if (info.sectorSize !== 512 && info.sectorSize !== 4096) {
      throw new LabhostError(
        'sectorSizeUnsupported',
        `${diskPath} has ${info.sectorSize}-byte logical sectors`,
        'labhost supports 512-byte and 4096-byte (4Kn) disks',
      )
    }
    try {
      return new Disk(info, fs.openSync(diskPath, 'r'))
    } catch (e) {
      throw new LabhostError('io', `cannot open ${diskPath}: ${(e as Error).message}`, 'run as root and check the device exists', {}, { cause: e })
    }
  }

  get sectorSize(): number {
    return this.info.sectorSize
  }

  get lastLba(): bigint {
    return BigInt(Math.floor(this.info.sizeBytes / this.info.sectorSize)) - 1n
  }

  read(offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length)
    let done = 0
    while (done < length) {
      const n = fs.readSync(this.fd, buf, done, length - done, offset + done)
      if (n === 0) {
        throw new LabhostError(
          'io',
          `short read on ${this.info.path} at byte ${offset + done}`,
          'the disk is smaller than its partition table says; check the device',
        )
      }
      done += n
    }
    return buf
  }

  readSectors(lba: bigint, count: number): Buffer {
    return this.read(Number(lba) * this.sectorSize, count * this.sectorSize)
  }

  /**
   * Write exactly one logical sector durably. This is the primitive the slot switch commits with:
   * one write(2) of one sector, O_DIRECT|O_DSYNC on a block device.
   */
  async writeSectorDurable(lba: bigint, data: Buffer): Promise<void> {
    if (data.length !== this.sectorSize) {
      throw new LabhostError('internal', `refusing a ${data.length}-byte write to a ${this.sectorSize}-byte sector`, 'this is a bug in labhost')
    }
    if (this.info.isBlockDevice) {
      if (writeOneSectorDirect(this.info.path, Number(lba) * this.sectorSize, data)) return
      // O_DIRECT write, then fsync before dd exits (busybox dd, on the hosts, has no oflag=dsync)
      await run(
        'dd',
        [`of=${this.info.path}`, `bs=${this.sectorSize}`, `seek=${lba}`, 'count=1', 'iflag=fullblock', 'oflag=direct', 'conv=notrunc,fsync', 'status=none'],
        { input: data },
      )
      return
    }
    const fd = fs.openSync(this.info.path, 'r+')
    try {
      const n = fs.writeSync(fd, data, 0, data.length, Number(lba) * this.sectorSize)
      if (n !== data.length) throw new LabhostError('io', `short write to ${this.info.path}`, 'check free space and the disk')
      fs.fdatasyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  }

  close(): void {
    fs.closeSync(this.fd)
  }
}

/** Copy a whole file into another file or device at a byte offset (test fixtures, image assembly). */
export function copyFileInto(src: string, dst: string, offset: number): void {
  const inFd = fs.openSync(src, 'r')
  const outFd = fs.openSync(dst, 'r+')
  try {
    const buf = Buffer.alloc(4 << 20)
    let pos = 0
    for (;;) {
      const n = fs.readSync(inFd, buf, 0, buf.length, pos)
      if (n === 0) break
      fs.writeSync(outFd, buf, 0, n, offset + pos)
      pos += n
    }
    fs.fsyncSync(outFd)
  } finally {
    fs.closeSync(inFd)
    fs.closeSync(outFd)
  }
}

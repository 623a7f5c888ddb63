// Bulk I/O on a disk range that bypasses the page cache: O_DIRECT positional reads and writes
// from Node's thread pool, into buffers that O_DIRECT accepts, and zeroing of whole ranges
// without sending the zeros (BLKZEROOUT through `blkdiscard --zeroout`). The image writer
// (image-format/slot-writer.ts) streams slots through it; a plain image file is served the same
// way, with buffered I/O where its file system has no O_DIRECT.
import fs from 'node:fs'
import { promisify } from 'node:util'
import { LabhostError } from './errors.ts'
import { runStatus } from './exec.ts'

/** Every O_DIRECT transfer is a multiple of this, and so is every position (512 and 4Kn disks). */
export const DIRECT_ALIGN = 4096
const WASM_PAGE = 65536
const readAt = promisify(fs.read)
const writeAt = promisify(fs.write)
const fdatasync = promisify(fs.fdatasync)

/**
 * `count` buffers of `size` bytes at page-aligned addresses. Node has no aligned allocation, but
 * WebAssembly memory starts on a page of its own, so views into one Memory at multiples of 64 KiB
 * are aligned for any logical sector size. The memory is shared (a SharedArrayBuffer), so worker
 * threads can hash the buffers without a copy (lib/worker-pool.ts).
 */
export function alignedBuffers(count: number, size: number): Buffer[] {
  const stride = Math.ceil(size / WASM_PAGE) * WASM_PAGE
  const pages = (stride * count) / WASM_PAGE
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true })
  return Array.from({ length: count }, (_, i) => Buffer.from(memory.buffer, i * stride, size))
}

export const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to

export class DirectFile {
  readonly path: string
  readonly fd: number
  /** false: the file system refused O_DIRECT (a tmpfs image file); I/O goes through the cache. */
  readonly direct: boolean
  readonly isBlockDevice: boolean

  private constructor(file: string, fd: number, direct: boolean, isBlockDevice: boolean) {
    this.path = file
    this.fd = fd
    this.direct = direct
    this.isBlockDevice = isBlockDevice
  }

  static open(file: string, mode: 'read' | 'write'): DirectFile {
    const { O_RDONLY, O_RDWR, O_DIRECT } = fs.constants
    const flags = mode === 'read' ? O_RDONLY : O_RDWR
    const isBlockDevice = fs.statSync(file).isBlockDevice()
    try {
      if (O_DIRECT !== undefined) return new DirectFile(file, fs.openSync(file, flags | O_DIRECT), true, isBlockDevice)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw ioError(file, mode, e)
    }
    try {
      return new DirectFile(file, fs.openSync(file, flags), false, isBlockDevice)
    } catch (e) {
      throw ioError(file, mode, e)
    }
  }

  /** Read exactly `length` bytes at `position` (both multiples of DIRECT_ALIGN) into `buf`. */
  async read(buf: Buffer, length: number, position: number): Promise<void> {
    const done = await readUpTo(this.fd, buf, length, position).catch((e) => {
      throw ioError(this.path, 'read', e)
    })
    if (done < length)
      throw new LabhostError(
        'io',
        `${this.path} ends at byte ${position + done}, before the image does`,
        'the disk is smaller than its partition table says; check the device',
      )
  }

  async write(buf: Buffer, length: number, position: number): Promise<void> {
    let done = 0
    while (done < length) {
      const { bytesWritten } = await writeAt(this.fd, buf, done, length - done, position + done).catch((e) => {
        throw ioError(this.path, 'write', e)
      })
      done += bytesWritten
    }
  }

  /**
   * Make `length` bytes at `position` read as zeros. On a block device the kernel zeroes the range
   * itself (BLKZEROOUT: WRITE ZEROES on a disk that has it, a hole punched under a loop device);
   * where that is missing (busybox, a plain file) the zeros are written.
   */
  async zero(position: number, length: number, zeros: Buffer): Promise<'kernel' | 'written'> {
    if (this.isBlockDevice && length >= 4 * zeros.length) {
      // a fast path only: blkdiscard missing or refusing means the zeros are written instead
      const r = await runStatus('blkdiscard', ['--force', '--zeroout', '--offset', String(position), '--length', String(length), this.path])
      if (r.exitCode === 0) return 'kernel'
    }
    for (let at = 0; at < length; at += zeros.length) await this.write(zeros, Math.min(zeros.length, length - at), position + at)
    return 'written'
  }

  async sync(): Promise<void> {
    await fdatasync(this.fd).catch((e) => {
      throw ioError(this.path, 'sync', e)
    })
  }

  close(): void {
    fs.closeSync(this.fd)
  }
}

/** Read `length` bytes at `position` into `buf`, fewer only at the end of the file; returns the count. */
export async function readUpTo(fd: number, buf: Buffer, length: number, position: number): Promise<number> {
  let done = 0
  while (done < length) {
    const { bytesRead } = await readAt(fd, buf, done, length - done, position + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  return done
}

function ioError(file: string, what: string, e: unknown): LabhostError {
  return new LabhostError(
    'io',
    `${what} on ${file} failed: ${(e as Error).message}`,
    'check the disk (dmesg) and run as root; only the target slot was written, nothing was switched',
    {},
    { cause: e },
  )
}

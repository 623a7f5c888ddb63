// A device node for one partition of a disk: the kernel's own node (/dev/sda3, /dev/nvme0n1p3)
// when the disk is a block device whose partition table the kernel has read, else a loop device
// over the byte range (image files, and loop devices, whose partitions get no nodes here).
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { sysfsBlockDir } from './blockdev.ts'
import { withLoop, withMount } from './loop.ts'

export interface PartitionRange {
  number: number
  firstLba: number
  lastLba: number
}

/** The kernel's node for partition `p` of block device `diskPath`, if it has one with that range. */
export function kernelPartitionNode(diskPath: string, p: PartitionRange, sectorSize: number): string | null {
  const st = fs.statSync(diskPath)
  if (!st.isBlockDevice()) return null
  const dir = fs.realpathSync(sysfsBlockDir(st.rdev))
  for (const sub of fs.readdirSync(dir)) {
    const f = (name: string) => {
      try {
        return Number(fs.readFileSync(path.join(dir, sub, name), 'utf8').trim())
      } catch {
        return NaN
      }
    }
    if (f('partition') === p.number && f('start') === (p.firstLba * sectorSize) / 512 && f('size') === ((p.lastLba - p.firstLba + 1) * sectorSize) / 512) {
      return fs.existsSync(`/dev/${sub}`) ? `/dev/${sub}` : null
    }
  }
  return null
}

export async function withPartitionDevice<T>(diskPath: string, p: PartitionRange, sectorSize: number, fn: (dev: string) => Promise<T>): Promise<T> {
  // the kernel's node appears shortly after a re-read of the partition table
  for (let i = 0; i < 10 && fs.statSync(diskPath).isBlockDevice() && !/\/loop\d+$/.test(diskPath); i++) {
    const node = kernelPartitionNode(diskPath, p, sectorSize)
    if (node) return fn(node)
    await sleep(200)
  }
  return withLoop(diskPath, { offset: p.firstLba * sectorSize, sizeLimit: (p.lastLba - p.firstLba + 1) * sectorSize, sectorSize }, fn)
}

export async function withPartitionMounted<T>(
  diskPath: string,
  p: PartitionRange,
  sectorSize: number,
  fn: (dir: string) => Promise<T>,
  opts: { readOnly?: boolean } = {},
): Promise<T> {
  return withPartitionDevice(diskPath, p, sectorSize, (dev) => withMount(dev, fn, opts))
}

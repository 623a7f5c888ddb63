// Partitioning by the layout: the two root slots as entries 1 and 2 (one sector of the entry
// array, as the slot switch needs), then the layout's partitions of that disk, with the fixed
// PARTUUIDs and names; filesystems with the fixed UUIDs.
import fs from 'node:fs'
import { describeDisk } from '../lib/blockdev.ts'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import type { Layout, LayoutPartition } from '../lib/layout.ts'
import { withPartitionDevice } from '../lib/partition-dev.ts'

export type DiskRole = 'ssd' | 'hdd'

export interface PlannedPartition {
  number: number
  name: string
  partuuid: string
  firstLba: number
  /** Inclusive; 0 = up to the end of the disk. */
  lastLba: number
  fsUuid?: string
  mount?: string
  /** The EFI system partition (FAT, GPT type EF00) instead of a Linux ext4 one. */
  esp?: boolean
}

/** GPT type of the EFI system partition (C12A7328-F81F-11D2-BA4B-00A0C93EC93B), as sgdisk names it. */
export const ESP_TYPE_CODE = 'ef00'

const MiB = 1 << 20

/** The partitions of one disk, placed from 1 MiB on; `rest` takes what is left. */
export function planDisk(layout: Layout, role: DiskRole, diskBytes: number, sectorSize: number): PlannedPartition[] {
  const perMiB = MiB / sectorSize
  const diskUsableEnd = Math.floor(diskBytes / sectorSize) - 1 - Math.ceil(16384 / sectorSize) - 1
  // the ESP takes the last whole MiBs of the SSD (entry numbers after the others: the root slots stay 1 and 2)
  const esp = role === 'ssd' ? layout.esp : undefined
  const espFirst = esp ? Math.floor((diskUsableEnd + 1) / perMiB) * perMiB - esp.sizeMiB * perMiB : 0
  const usableEnd = esp ? espFirst - 1 : diskUsableEnd
  const out: PlannedPartition[] = []
  let next = perMiB
  const add = (name: string, partuuid: string, sizeMiB: number | 'rest', extra: Partial<PlannedPartition> = {}) => {
    const last = sizeMiB === 'rest' ? Math.floor((usableEnd + 1) / perMiB) * perMiB - 1 : next + sizeMiB * perMiB - 1
    if (last > usableEnd || last < next) {
      throw new LabhostError(
        'diskTooSmall',
        `the ${role.toUpperCase()} (${(diskBytes / MiB).toFixed(0)} MiB) is too small for partition ${name} of the layout`,
        'use a larger disk or a layout with smaller partitions',
      )
    }
    out.push({ number: out.length + 1, name, partuuid, firstLba: next, lastLba: last, ...extra })
    next = last + 1
  }
  if (role === 'ssd') {
    add(layout.slots.A.name, layout.slots.A.partuuid, layout.slotSizeMiB)
    add(layout.slots.B.name, layout.slots.B.partuuid, layout.slotSizeMiB)
  }
  const parts = layout.partitions.filter((p: LayoutPartition) => p.disk === role)
  parts.forEach((p, i) => {
    if (p.sizeMiB === 'rest' && i < parts.length - 1) {
      throw new LabhostError(
        'configInvalid',
        `layout: partition ${p.name} takes the rest of the ${role.toUpperCase()} but is not its last partition`,
        'give it a size in MiB, or move it last on its disk',
      )
    }
    add(p.name, p.partuuid, p.sizeMiB, { fsUuid: p.fsUuid, mount: p.mount })
  })
  if (esp) {
    if (espFirst < next) {
      throw new LabhostError(
        'diskTooSmall',
        `the SSD (${(diskBytes / MiB).toFixed(0)} MiB) is too small for the EFI system partition of the layout`,
        'use a larger disk or a layout with smaller partitions',
      )
    }
    out.push({ number: out.length + 1, name: esp.name, partuuid: esp.partuuid, firstLba: espFirst, lastLba: espFirst + esp.sizeMiB * perMiB - 1, esp: true })
  }
  return out
}

export function sgdiskArgs(plan: PlannedPartition[], bootSlot: 'A' | 'B' | null): string[] {
  const args = ['--zap-all', '--clear']
  for (const p of plan) {
    args.push(
      '-n',
      `${p.number}:${p.firstLba}:${p.lastLba}`,
      '-c',
      `${p.number}:${p.name}`,
      '-u',
      `${p.number}:${p.partuuid}`,
      '-t',
      `${p.number}:${p.esp ? ESP_TYPE_CODE : '8300'}`,
    )
  }
  if (bootSlot) args.push('-A', `${bootSlot === 'A' ? 1 : 2}:set:2`)
  return args
}

/**
 * A fresh GPT by the plan. The old GPT regions are zeroed first (MBR, primary header and array;
 * backup array and header), never a byte of a partition: sgdisk refuses to zap a table it finds
 * damaged ("Invalid partition data!"), which is just what a power cut in an earlier run leaves.
 */
export async function partitionDisk(target: string, plan: PlannedPartition[], bootSlot: 'A' | 'B' | null): Promise<void> {
  const { sizeBytes, sectorSize } = describeDisk(target)
  const arraySectors = Math.ceil((128 * 128) / sectorSize)
  const fd = fs.openSync(target, 'r+')
  try {
    const zeros = Buffer.alloc((2 + arraySectors) * sectorSize)
    fs.writeSync(fd, zeros, 0, zeros.length, 0)
    fs.writeSync(fd, zeros, 0, (1 + arraySectors) * sectorSize, sizeBytes - (1 + arraySectors) * sectorSize)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  await run('sgdisk', [...sgdiskArgs(plan, bootSlot), target])
}

/** mkfs.ext4 with the fixed UUID on a partition (its kernel node, or a loop device over its range). */
export async function makeFilesystem(diskFile: string, p: PlannedPartition, sectorSize: number): Promise<void> {
  if (p.esp) {
    // FAT, volume id from the PARTUUID's first 8 hex digits (fixed, as the ext4 UUIDs are)
    await withPartitionDevice(diskFile, p, sectorSize, (dev) => run('mkfs.vfat', ['-n', 'EFI', '-i', p.partuuid.slice(0, 8), dev]))
    return
  }
  if (!p.fsUuid) return
  await withPartitionDevice(diskFile, p, sectorSize, (dev) => run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-U', p.fsUuid!, '-L', p.name, dev]))
}

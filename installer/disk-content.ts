// What a target disk holds before the installer touches it: nothing (zeros where partition
// tables and filesystem signatures live), an earlier labhost install (the layout's fixed
// PARTUUIDs in a valid GPT — a re-run keeps what the config says to keep), or anything else,
// which is only erased when the config allows it.
import { Disk } from '../lib/blockdev.ts'
import { readGpt, openGptDisk } from '../bootloader/gpt.ts'
import type { PlannedPartition } from './partition.ts'

export type DiskContent =
  { kind: 'blank' } | { kind: 'labhost'; partitions: { number: number; name: string; firstLba: number; lastLba: number }[] } | { kind: 'foreign'; what: string }

const MiB = 1 << 20
const isZero = (b: Buffer) => b.every((x) => x === 0)

export function classifyDisk(diskPath: string, plan: PlannedPartition[]): DiskContent {
  const disk = openGptDisk(diskPath)
  try {
    const gpt = readGpt(disk)
    const used = gpt.entries.filter((e) => e.typeGuid !== '00000000-0000-0000-0000-000000000000')
    if (used.length) {
      const ours = plan.every((p) => used.some((e) => e.partGuid.toLowerCase() === p.partuuid.toLowerCase()))
      if (ours && used.length === plan.length) {
        return { kind: 'labhost', partitions: used.map((e) => ({ number: e.number, name: e.name, firstLba: Number(e.firstLba), lastLba: Number(e.lastLba) })) }
      }
      return { kind: 'foreign', what: `a GPT with ${used.length} partition(s): ${used.map((e) => e.name || e.partGuid).join(', ')}` }
    }
    return probeRaw(disk)
  } finally {
    disk.close()
  }
}

function probeRaw(disk: Disk): DiskContent {
  const size = disk.info.sizeBytes
  const head = disk.read(0, Math.min(MiB, size))
  if (head.length >= 512 && head.readUInt16LE(510) === 0xaa55) {
    const parts = [0, 1, 2, 3].filter((i) => head[446 + i * 16 + 4] !== 0)
    if (parts.length) return { kind: 'foreign', what: `an MBR partition table with ${parts.length} partition(s)` }
  }
  if (!isZero(head)) return { kind: 'foreign', what: 'data in its first MiB (a filesystem or boot code)' }
  if (size > 2 * MiB && !isZero(disk.read(size - MiB, MiB))) return { kind: 'foreign', what: 'data in its last MiB (a backup GPT or RAID metadata)' }
  return { kind: 'blank' }
}

/** The filesystem UUID of an ext4 superblock at `byteOffset`, or null when there is none. */
export function ext4UuidAt(diskPath: string, byteOffset: number): string | null {
  const disk = Disk.open(diskPath)
  try {
    const sb = disk.read(byteOffset + 1024, 1024)
    if (sb.readUInt16LE(0x38) !== 0xef53) return null
    const h = sb.subarray(0x68, 0x78).toString('hex')
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
  } finally {
    disk.close()
  }
}

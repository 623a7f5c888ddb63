// Which disks the installer writes: the machine's disks as the kernel lists them, matched
// against the config's declared properties (rotational, size range, model/serial pattern), never
// the medium the installer runs from, and never a guess between two that match equally.
import fs from 'node:fs'
import path from 'node:path'
import { sysfsBlockDir } from '../lib/blockdev.ts'
import { LabhostError } from '../lib/errors.ts'
import { fullMatch } from '../lib/pattern.ts'
import type { DiskMatch } from './config.ts'

export interface BlockDisk {
  /** Kernel name: sda, nvme0n1, loop3. */
  name: string
  path: string
  sizeBytes: number
  sectorSize: number
  rotational: boolean
  removable: boolean
  usb: boolean
  model: string
  serial: string
}

const GiB = 2 ** 30
const read = (f: string): string => {
  try {
    return fs.readFileSync(f, 'utf8').trim()
  } catch {
    return ''
  }
}

/** The unit serial number page (SCSI/ATA VPD 0x80), for disks without a `serial` attribute. */
function vpdSerial(file: string): string {
  try {
    const b = fs.readFileSync(file)
    return b.length > 4
      ? b
          .subarray(4, 4 + b[3]!)
          .toString('latin1')
          .trim()
      : ''
  } catch {
    return ''
  }
}

export function describeBlockDisk(name: string, sysRoot = '/sys'): BlockDisk {
  const dir = path.join(sysRoot, 'class/block', name)
  const realDir = fs.existsSync(dir) ? fs.realpathSync(dir) : dir
  return {
    name,
    path: `/dev/${name}`,
    sizeBytes: Number(read(path.join(dir, 'size')) || 0) * 512,
    sectorSize: Number(read(path.join(dir, 'queue/logical_block_size')) || 512),
    rotational: read(path.join(dir, 'queue/rotational')) === '1',
    removable: read(path.join(dir, 'removable')) === '1',
    usb: realDir.includes('/usb'),
    model: read(path.join(dir, 'device/model')),
    serial: read(path.join(dir, 'device/serial')) || vpdSerial(path.join(dir, 'device/vpd_pg80')),
  }
}

/** Whole disks, without loop, RAM, optical, device-mapper and MD devices, and empty ones. */
export function listDisks(sysRoot = '/sys'): BlockDisk[] {
  const dir = path.join(sysRoot, 'block')
  return fs
    .readdirSync(dir)
    .filter((n) => !/^(loop|ram|zram|sr|fd|dm-|md|nbd)/.test(n))
    .sort()
    .map((n) => describeBlockDisk(n, sysRoot))
    .filter((d) => d.sizeBytes > 0)
}

/** The kernel name of the disk a device path belongs to (its own name for a whole disk). */
export function diskNameOf(devPath: string): string {
  const st = fs.statSync(devPath)
  const dir = fs.realpathSync(sysfsBlockDir(st.rdev))
  return fs.existsSync(path.join(dir, 'partition')) ? path.basename(path.dirname(dir)) : path.basename(dir)
}

/**
 * The disk a mounted device lives on and, for a loop device over a block device (a partition's
 * byte range of a loop disk: partition nodes of loop devices do not appear), that device's disk.
 */
function disksUnder(dev: string, out: Set<string>, depth = 0): void {
  const name = diskNameOf(dev)
  out.add(name)
  const backing = read(`/sys/block/${name}/loop/backing_file`)
  if (depth < 8 && backing.startsWith('/dev/') && fs.existsSync(backing) && fs.statSync(backing).isBlockDevice()) disksUnder(backing, out, depth + 1)
}

/** Disks holding a mounted filesystem (the running system's medium) plus the named stick. */
export function bootMedia(stick?: string, mountsFile = '/proc/self/mounts'): Set<string> {
  const out = new Set<string>()
  if (stick) out.add(stick.replace(/^\/dev\//, ''))
  for (const line of read(mountsFile).split('\n')) {
    const dev = line.split(' ')[0] ?? ''
    if (!dev.startsWith('/dev/')) continue
    try {
      disksUnder(dev, out)
    } catch {
      // a device node that went away: not a disk we could pick anyway
    }
  }
  return out
}

const matches = (pattern: string | undefined, v: string) => pattern === undefined || fullMatch(pattern, v)
export const describe = (d: BlockDisk) =>
  `${d.path} (${d.model || 'no model'}, serial ${d.serial || 'none'}, ${(d.sizeBytes / GiB).toFixed(1)} GiB${d.rotational ? ', rotational' : ''})`

/**
 * The one disk for `role` among `disks`. Refuses (each with its own exit code) when none has the
 * declared kind, when the only ones are too small or too large, when two or more fit, or when the
 * only fitting disk is the boot medium.
 */
export function selectDisk(role: 'ssd' | 'hdd', m: DiskMatch, disks: BlockDisk[], excluded: Set<string>): BlockDisk {
  const label = role.toUpperCase()
  const kind = disks.filter((d) => d.rotational === m.rotational && (m.usb || !d.usb) && matches(m.model, d.model) && matches(m.serial, d.serial))
  const fits = (d: BlockDisk) => d.sizeBytes >= m.minSizeGiB * GiB && (m.maxSizeGiB === undefined || d.sizeBytes <= m.maxSizeGiB * GiB)
  const candidates = kind.filter((d) => !excluded.has(d.name) && fits(d))
  if (candidates.length === 1) return candidates[0]!
  const seen = disks.map(describe).join('; ') || 'none'
  const range = `${m.minSizeGiB}${m.maxSizeGiB !== undefined ? `..${m.maxSizeGiB}` : '+'} GiB`
  if (candidates.length > 1) {
    throw new LabhostError(
      'diskAmbiguous',
      `${candidates.length} disks fit the ${label} (${m.rotational ? 'rotational' : 'non-rotational'}, ${range}): ${candidates.map(describe).join('; ')}`,
      `narrow disks.${role} in install.yaml with maxSizeGiB, model or serial so exactly one matches; nothing was written`,
    )
  }
  const bootOnly = kind.filter((d) => excluded.has(d.name) && fits(d))
  if (bootOnly.length) {
    throw new LabhostError(
      'diskIsBootMedium',
      `the only disk that fits the ${label} is the installer's own medium ${bootOnly.map(describe).join('; ')} (or holds a mounted filesystem)`,
      `connect the ${label} (the stick, and a disk in use, are never a target; unmount it if it is yours to erase); nothing was written`,
    )
  }
  const wrongSize = kind.filter((d) => !excluded.has(d.name))
  if (wrongSize.length) {
    throw new LabhostError(
      'diskTooSmall',
      `no ${label} of ${range}: found ${wrongSize.map(describe).join('; ')}`,
      `fit a larger ${label} or change disks.${role}.minSizeGiB in install.yaml; nothing was written`,
    )
  }
  throw new LabhostError(
    'diskMissing',
    `no ${m.rotational ? 'rotational' : 'non-rotational'} disk${m.model ? ` with model /${m.model}/` : ''}${m.serial ? ` with serial /${m.serial}/` : ''} for the ${label} (disks seen: ${seen})`,
    `connect the ${label}, or correct disks.${role} in install.yaml; nothing was written`,
  )
}

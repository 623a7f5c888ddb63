// Crash-point replay: given the disk before an update and the guest's recorded writes and
// flushes (write-log.ts), visit every state a power cut could leave — every flush epoch, and in
// each epoch every combination of its writes landing or not, per logical sector — and decide
// offline what would boot, with the rules of DESIGN §1: gptmbr takes the flagged entry of the
// primary array without any check, the kernel sees no partitions unless the primary header and
// array CRCs are right, and our initramfs mounts the slot flagged in the primary GPT. A state
// boots the old or the new version only if that slot holds a complete image.
//
// Reduction (sound for these rules): what decides the outcome is the bytes of the primary GPT
// region and whether each slot holds a whole image. Sectors outside the GPT regions and slots
// cannot change it, and a slot's many data writes matter only as "all landed" or "not all".
// The state partition is left out: the initramfs boots on when it cannot read it.
//
// On a UEFI PC (firmware 'uefi') the chain starts in the firmware instead of gptmbr: OVMF takes
// the primary GPT when its header and array CRCs are right, else the backup GPT — and then
// rewrites the primary from it (EDK2's PartitionDxe restores a damaged table from the good one)
// — and starts \EFI\BOOT\BOOTX64.EFI from the ESP; the selector's kernel then needs the (now)
// valid primary GPT, and its init takes the one flagged root entry, as gptmbr would. So the
// backup GPT region (array and header at the end of the disk) is part of the state there.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { arrayCrc, headerCrcOf, LEGACY_BOOTABLE_BIT } from '../bootloader/gpt.ts'
import type { LoggedWrite } from './write-log.ts'

export interface SlotImage {
  name: string
  /** SHA-256 of each chunk of the image, and the chunk size (from its manifest). */
  chunks: string[]
  chunkSize: number
  size: number
}

export interface ReplayInput {
  /** The disk before the update (a raw image file). */
  before: string
  writes: LoggedWrite[]
  sectorSize: number
  /** The two root slots: byte range on the disk. */
  slots: { A: { offset: number; bytes: number }; B: { offset: number; bytes: number } }
  old: SlotImage
  new: SlotImage
  /** The PC's firmware (default bios: gptmbr's rules). */
  firmware?: 'bios' | 'uefi'
}

export type Outcome = { boots: 'old' | 'new'; slot: 'A' | 'B' } | { boots: 'nothing'; why: string }

export interface ReplayReport {
  epochs: number
  states: number
  old: number
  new: number
  bricked: { epoch: number; afterWrite: number; why: string }[]
  /** UEFI: states that boot because the firmware rewrote an invalid primary GPT from the backup. */
  restored?: number
}

/** The primary GPT region: protective MBR, header, a 128-entry array (LBA 0..33 at 512 bytes). */
function primaryRegionBytes(ss: number): number {
  return ss * 2 + 128 * 128
}

/** What boots from a disk whose primary region is `region` and whose slots are or are not whole. */
export function judge(region: Buffer, ss: number, slots: ReplayInput['slots'], whole: Record<'A' | 'B', 'old' | 'new' | null>): Outcome {
  const header = region.subarray(ss, ss * 2)
  // gptmbr: no signature or CRC check, the array where the header says, every used entry
  const entriesLba = Number(header.readBigUInt64LE(72))
  const count = header.readUInt32LE(80)
  const size = header.readUInt32LE(84)
  if (size < 128 || count === 0 || entriesLba * ss + count * size > region.length)
    return { boots: 'nothing', why: 'gptmbr: the header points to no entry array' }
  const array = region.subarray(entriesLba * ss, entriesLba * ss + count * size)
  const flagged: { first: number }[] = []
  for (let i = 0; i < count; i++) {
    const e = array.subarray(i * size, (i + 1) * size)
    if (e.subarray(0, 16).every((b) => b === 0)) continue
    if ((e.readBigUInt64LE(48) >> LEGACY_BOOTABLE_BIT) & 1n) flagged.push({ first: Number(e.readBigUInt64LE(32)) })
  }
  if (flagged.length !== 1) return { boots: 'nothing', why: flagged.length ? 'gptmbr: Multiple active partitions' : 'gptmbr: Missing OS' }
  const slot = (['A', 'B'] as const).find((s) => slots[s].offset === flagged[0]!.first * ss)
  if (!slot) return { boots: 'nothing', why: `gptmbr: the flagged partition at LBA ${flagged[0]!.first} is no root slot` }
  // the kernel: primary header and array CRCs, or no partitions at all (no `gpt` parameter)
  const headerSize = header.readUInt32LE(12)
  if (header.subarray(0, 8).toString('latin1') !== 'EFI PART' || header.readUInt32LE(16) !== headerCrcOf(header, headerSize))
    return { boots: 'nothing', why: 'kernel: primary GPT header CRC wrong, no partitions' }
  if (header.readUInt32LE(88) !== arrayCrc(array)) return { boots: 'nothing', why: 'kernel: primary entry array CRC wrong, no partitions' }
  const version = whole[slot]
  if (!version) return { boots: 'nothing', why: `slot ${slot} is flagged but does not hold a whole image` }
  return { boots: version, slot }
}

/** GPT type of the EFI system partition, C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored on disk. */
const ESP_TYPE = Buffer.from('28732ac11ff8d211ba4b00a0c93ec93b', 'hex')
/** The backup GPT region: a 128-entry array and the header in the last sector. */
const backupRegionBytes = (ss: number) => 128 * 128 + ss

/**
 * What boots on a UEFI PC: `primary` is the primary region (as for judge), `backup` the last
 * backupRegionBytes of the disk, `diskBytes` the disk's size.
 */
export function judgeUefi(
  primary: Buffer,
  backup: Buffer,
  diskBytes: number,
  ss: number,
  slots: ReplayInput['slots'],
  whole: Record<'A' | 'B', 'old' | 'new' | null>,
): Outcome & { restored?: boolean } {
  const regionStart = diskBytes - backup.length
  const valid = (header: Buffer, arrayAt: (lba: number, bytes: number) => Buffer | null) => {
    const headerSize = header.readUInt32LE(12)
    if (
      header.subarray(0, 8).toString('latin1') !== 'EFI PART' ||
      headerSize < 92 ||
      headerSize > ss ||
      header.readUInt32LE(16) !== headerCrcOf(header, headerSize)
    )
      return null
    const array = arrayAt(Number(header.readBigUInt64LE(72)), header.readUInt32LE(80) * header.readUInt32LE(84))
    return array && header.readUInt32LE(88) === arrayCrc(array) ? array : null
  }
  let region = primary
  let restored = false
  if (!valid(primary.subarray(ss, 2 * ss), (lba, n) => (lba * ss + n <= primary.length ? primary.subarray(lba * ss, lba * ss + n) : null))) {
    const header = backup.subarray(backup.length - ss)
    const array = valid(header, (lba, n) =>
      lba * ss >= regionStart && lba * ss + n <= diskBytes ? backup.subarray(lba * ss - regionStart, lba * ss - regionStart + n) : null,
    )
    if (!array || array.length > primary.length - 2 * ss) return { boots: 'nothing', why: 'firmware: neither the primary nor the backup GPT is valid, no ESP' }
    // the firmware rewrites the primary from the backup: its header with the LBAs swapped, the
    // array right after it
    region = Buffer.from(primary)
    const h = Buffer.from(header)
    h.writeBigUInt64LE(header.readBigUInt64LE(32), 24)
    h.writeBigUInt64LE(header.readBigUInt64LE(24), 32)
    h.writeBigUInt64LE(2n, 72)
    h.writeUInt32LE(headerCrcOf(h, h.readUInt32LE(12)), 16)
    h.copy(region, ss)
    array.copy(region, 2 * ss)
    restored = true
  }
  const header = region.subarray(ss, 2 * ss)
  const entriesLba = Number(header.readBigUInt64LE(72))
  const size = header.readUInt32LE(84)
  let esp = false
  for (let i = 0; i < header.readUInt32LE(80) && !esp; i++) esp = region.subarray(entriesLba * ss + i * size, entriesLba * ss + i * size + 16).equals(ESP_TYPE)
  if (!esp) return { boots: 'nothing', why: 'firmware: no EFI system partition in the GPT' }
  // the selector applies gptmbr's rule to the primary array the kernel accepted
  const o = judge(region, ss, slots, whole)
  return { ...(o.boots === 'nothing' ? { boots: 'nothing' as const, why: o.why.replace(/^gptmbr:/, 'selector:') } : o), ...(restored ? { restored } : {}) }
}

/** Which image a slot holds entirely, if any, from its bytes. */
function wholeImage(slot: Buffer, images: SlotImage[]): 'old' | 'new' | null {
  for (const [i, img] of images.entries()) {
    if (img.size > slot.length) continue
    let ok = true
    for (let c = 0; c < img.chunks.length && ok; c++) {
      const piece = slot.subarray(c * img.chunkSize, Math.min((c + 1) * img.chunkSize, img.size))
      ok = crypto.createHash('sha256').update(piece).digest('hex') === img.chunks[c]
    }
    if (ok) return i === 0 ? 'old' : 'new'
  }
  return null
}

export function replay(input: ReplayInput): ReplayReport {
  const ss = input.sectorSize
  const disk = fs.readFileSync(input.before)
  const regionBytes = primaryRegionBytes(ss)
  const uefi = input.firmware === 'uefi'
  // the sectors whose bytes decide what boots: the primary region, and on UEFI the backup's
  const backupStart = disk.length - backupRegionBytes(ss)
  const ranges = uefi
    ? [
        [0, regionBytes],
        [backupStart, disk.length],
      ]
    : [[0, regionBytes]]
  const images = [input.old, input.new]
  const report: ReplayReport = { epochs: 0, states: 0, old: 0, new: 0, bricked: [], ...(uefi ? { restored: 0 } : {}) }
  const slotOf = (w: LoggedWrite): 'A' | 'B' | null =>
    (['A', 'B'] as const).find((s) => w.offset < input.slots[s].offset + input.slots[s].bytes && w.offset + w.length > input.slots[s].offset) ?? null
  const slotBytes = (s: 'A' | 'B') => disk.subarray(input.slots[s].offset, input.slots[s].offset + input.slots[s].bytes)
  let whole: Record<'A' | 'B', 'old' | 'new' | null> = { A: wholeImage(slotBytes('A'), images), B: wholeImage(slotBytes('B'), images) }
  const apply = (w: LoggedWrite) => {
    if (w.data) w.data.copy(disk, w.offset)
    else disk.fill(0, w.offset, w.offset + w.length) // a discard: read back as zeros here
  }

  let epochStart = 0
  const visitEpoch = (end: number, epoch: number) => {
    const ws = input.writes.slice(epochStart, end).filter((w) => !w.flush || w.length > 0)
    // per primary-region sector: the values it may hold after a cut in this epoch
    const choices = new Map<number, Buffer[]>()
    for (const w of ws) {
      for (const [from, to] of ranges)
        for (let off = Math.max(w.offset, from!); off < Math.min(w.offset + w.length, to!); off += ss) {
          const sector = off / ss
          const list = choices.get(sector) ?? [Buffer.from(disk.subarray(off, off + ss))]
          const v = w.data ? w.data.subarray(off - w.offset, off - w.offset + ss) : Buffer.alloc(ss)
          if (!list.some((x) => x.equals(v))) list.push(Buffer.from(v))
          choices.set(sector, list)
        }
    }
    // the primary region as the epoch found it; then the epoch lands in full: per slot, whole
    // before it and whole once all its writes of the epoch are there
    const region = Buffer.from(disk.subarray(0, regionBytes))
    const backupRegion = Buffer.from(disk.subarray(backupStart))
    const touched = new Set(ws.map(slotOf).filter((s) => s !== null))
    const before = { ...whole }
    for (const w of input.writes.slice(epochStart, end)) apply(w)
    const after = { ...whole }
    for (const s of touched) after[s] = wholeImage(slotBytes(s), images)
    const slotOptions = (s: 'A' | 'B') => (touched.has(s) ? [...new Set([before[s], after[s], null])] : [before[s]])
    const sectors = [...choices.keys()]
    const combos = sectors.reduce((n, s) => n * choices.get(s)!.length, 1)
    for (let c = 0; c < combos; c++) {
      let k = c
      for (const s of sectors) {
        const list = choices.get(s)!
        if (s * ss < regionBytes) list[k % list.length]!.copy(region, s * ss)
        else list[k % list.length]!.copy(backupRegion, s * ss - backupStart)
        k = Math.floor(k / list.length)
      }
      for (const a of slotOptions('A')) {
        for (const b of slotOptions('B')) {
          const o = uefi ? judgeUefi(region, backupRegion, disk.length, ss, input.slots, { A: a, B: b }) : judge(region, ss, input.slots, { A: a, B: b })
          report.states++
          if ('restored' in o && o.restored && o.boots !== 'nothing') report.restored!++
          if (o.boots === 'nothing') report.bricked.push({ epoch, afterWrite: epochStart, why: o.why })
          else report[o.boots]++
        }
      }
    }
    whole = after
    epochStart = end
  }
  input.writes.forEach((w, i) => {
    if (w.flush || w.fua) visitEpoch(i + 1, report.epochs++)
  })
  visitEpoch(input.writes.length, report.epochs++)
  return report
}

/** The disk as it is once the first `count` recorded writes have landed (for booting a state). */
export function materialize(before: string, writes: LoggedWrite[], count: number, out: string): string {
  fs.copyFileSync(before, out)
  const fd = fs.openSync(out, 'r+')
  try {
    for (const w of writes.slice(0, count)) {
      if (w.data && w.data.length) fs.writeSync(fd, w.data, 0, w.data.length, w.offset)
      else if (!w.data) fs.writeSync(fd, Buffer.alloc(w.length), 0, w.length, w.offset)
    }
  } finally {
    fs.closeSync(fd)
  }
  return out
}

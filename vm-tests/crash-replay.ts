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
}

export type Outcome = { boots: 'old' | 'new'; slot: 'A' | 'B' } | { boots: 'nothing'; why: string }

export interface ReplayReport {
  epochs: number
  states: number
  old: number
  new: number
  bricked: { epoch: number; afterWrite: number; why: string }[]
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
  if (size < 128 || count === 0 || entriesLba * ss + count * size > region.length) return { boots: 'nothing', why: 'gptmbr: the header points to no entry array' }
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
  if (header.subarray(0, 8).toString('latin1') !== 'EFI PART' || header.readUInt32LE(16) !== headerCrcOf(header, headerSize)) return { boots: 'nothing', why: 'kernel: primary GPT header CRC wrong, no partitions' }
  if (header.readUInt32LE(88) !== arrayCrc(array)) return { boots: 'nothing', why: 'kernel: primary entry array CRC wrong, no partitions' }
  const version = whole[slot]
  if (!version) return { boots: 'nothing', why: `slot ${slot} is flagged but does not hold a whole image` }
  return { boots: version, slot }
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
  const images = [input.old, input.new]
  const report: ReplayReport = { epochs: 0, states: 0, old: 0, new: 0, bricked: [] }
  const slotOf = (w: LoggedWrite): 'A' | 'B' | null => (['A', 'B'] as const).find((s) => w.offset < input.slots[s].offset + input.slots[s].bytes && w.offset + w.length > input.slots[s].offset) ?? null
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
      for (let off = Math.max(w.offset, 0); off < Math.min(w.offset + w.length, regionBytes); off += ss) {
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
        list[k % list.length]!.copy(region, s * ss)
        k = Math.floor(k / list.length)
      }
      for (const a of slotOptions('A')) {
        for (const b of slotOptions('B')) {
          const o = judge(region, ss, input.slots, { A: a, B: b })
          report.states++
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

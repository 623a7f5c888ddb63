// Reading and validating a GPT: protective MBR, primary and backup headers and entry arrays.
// Validation follows what the consumers of the table check: the kernel's efi.c (signature,
// header CRC, my_lba, usable range, entry size, entry-array CRC) and gptmbr (nothing at all).
import crypto from 'node:crypto'
import zlib from 'node:zlib'
import { Disk } from '../lib/blockdev.ts'
import { LabhostError } from '../lib/errors.ts'
import { guidFromBytes, ZERO_GUID } from './guid.ts'

export const GPT_SIGNATURE = 'EFI PART'
export const HEADER_MIN_SIZE = 92
export const ENTRY_NAME_OFFSET = 56
export const ENTRY_NAME_BYTES = 72
export const ENTRY_ATTR_OFFSET = 48
/** Attribute bit 2: legacy BIOS bootable, the bit gptmbr looks for (byte 48, mask 0x04). */
export const LEGACY_BOOTABLE_BIT = 2n
const MAX_ARRAY_BYTES = 4 * 1024 * 1024

export interface GptHeader {
  revision: number
  headerSize: number
  headerCrc: number
  myLba: bigint
  alternateLba: bigint
  firstUsableLba: bigint
  lastUsableLba: bigint
  diskGuid: string
  entriesLba: bigint
  entryCount: number
  entrySize: number
  entriesCrc: number
}

export interface GptSide {
  which: 'primary' | 'backup'
  /** Where the header was read. */
  headerLba: bigint
  header: GptHeader | null
  /** The header sector as read (for telling whether the table changed since it was read). */
  headerSector: Buffer
  /** The raw entry array (entryCount × entrySize bytes), when the header was readable. */
  entries: Buffer | null
  problems: string[]
}

export interface GptEntry {
  /** 0-based slot in the entry array. */
  index: number
  /** 1-based partition number, as sgdisk and the kernel count. */
  number: number
  typeGuid: string
  partGuid: string
  firstLba: bigint
  lastLba: bigint
  attributes: bigint
  name: string
  /** Length of the name in UTF-16 units, up to (not including) its NUL terminator. */
  nameUnits: number
  legacyBootable: boolean
}

export interface ProtectiveMbr {
  signatureOk: boolean
  protectiveEntry: boolean
  diskSignature: number
}

export interface Gpt {
  path: string
  sectorSize: number
  lastLba: bigint
  mbr: ProtectiveMbr
  primary: GptSide
  backup: GptSide
  /** Partitions from the primary array when it is valid, else from the backup. */
  entries: GptEntry[]
  /** Indices of array sectors whose bytes differ between primary and backup (both readable). */
  differingSectors: number[]
  /** Header fields on which a valid primary and a valid backup disagree. */
  mismatches: string[]
  /**
   * What is wrong with the partitions themselves (from the array `entries` came from): an entry
   * that ends before it starts, lies outside the usable range, or overlaps another. The kernel
   * and gptmbr accept such a table; labhost writes nothing on a disk that has one.
   */
  layoutProblems: string[]
}

export function isValid(side: GptSide): boolean {
  return side.header !== null && side.entries !== null && side.problems.length === 0
}

export function arrayCrc(entries: Buffer): number {
  return zlib.crc32(entries) >>> 0
}

export function headerCrcOf(sector: Buffer, headerSize: number): number {
  const h = Buffer.from(sector.subarray(0, headerSize))
  h.writeUInt32LE(0, 16)
  return zlib.crc32(h) >>> 0
}

export function parseHeader(sector: Buffer): GptHeader | null {
  if (sector.toString('latin1', 0, 8) !== GPT_SIGNATURE) return null
  return {
    revision: sector.readUInt32LE(8),
    headerSize: sector.readUInt32LE(12),
    headerCrc: sector.readUInt32LE(16),
    myLba: sector.readBigUInt64LE(24),
    alternateLba: sector.readBigUInt64LE(32),
    firstUsableLba: sector.readBigUInt64LE(40),
    lastUsableLba: sector.readBigUInt64LE(48),
    diskGuid: guidFromBytes(sector.subarray(56, 72)),
    entriesLba: sector.readBigUInt64LE(72),
    entryCount: sector.readUInt32LE(80),
    entrySize: sector.readUInt32LE(84),
    entriesCrc: sector.readUInt32LE(88),
  }
}

export function parseEntryName(entry: Buffer): { name: string; units: number } {
  const field = entry.subarray(ENTRY_NAME_OFFSET, ENTRY_NAME_OFFSET + ENTRY_NAME_BYTES)
  let units = 0
  while (units < ENTRY_NAME_BYTES / 2 && field.readUInt16LE(units * 2) !== 0) units++
  return { name: field.toString('utf16le', 0, units * 2), units }
}

export function parseEntries(entries: Buffer, entrySize: number): GptEntry[] {
  const out: GptEntry[] = []
  for (let index = 0; index * entrySize < entries.length; index++) {
    const e = entries.subarray(index * entrySize, (index + 1) * entrySize)
    const typeGuid = guidFromBytes(e.subarray(0, 16))
    if (typeGuid === ZERO_GUID) continue
    const attributes = e.readBigUInt64LE(ENTRY_ATTR_OFFSET)
    const { name, units } = parseEntryName(e)
    out.push({
      index,
      number: index + 1,
      typeGuid,
      partGuid: guidFromBytes(e.subarray(16, 32)),
      firstLba: e.readBigUInt64LE(32),
      lastLba: e.readBigUInt64LE(40),
      attributes,
      name,
      nameUnits: units,
      legacyBootable: ((attributes >> LEGACY_BOOTABLE_BIT) & 1n) === 1n,
    })
  }
  return out
}

function readSide(disk: Disk, which: 'primary' | 'backup', headerLba: bigint): GptSide {
  const ss = disk.sectorSize
  const sector = disk.readSectors(headerLba, 1)
  const side: GptSide = { which, headerLba, header: null, headerSector: sector, entries: null, problems: [] }
  const h = parseHeader(sector)
  if (!h) {
    side.problems.push(`no GPT signature at LBA ${headerLba}`)
    return side
  }
  side.header = h
  const p = side.problems
  if (h.headerSize < HEADER_MIN_SIZE || h.headerSize > ss) {
    p.push(`header size ${h.headerSize} is outside ${HEADER_MIN_SIZE}..${ss}`)
    return side
  }
  if (headerCrcOf(sector, h.headerSize) !== h.headerCrc) p.push('header CRC32 does not match')
  if (h.myLba !== headerLba) p.push(`header says it is at LBA ${h.myLba}, but it was read at LBA ${headerLba}`)
  if (h.lastUsableLba > disk.lastLba || h.firstUsableLba > h.lastUsableLba + 1n) {
    p.push(`usable range ${h.firstUsableLba}..${h.lastUsableLba} does not fit a disk whose last LBA is ${disk.lastLba}`)
  }
  const sizeOk = h.entrySize >= 128 && (h.entrySize & (h.entrySize - 1)) === 0
  const arrayBytes = h.entryCount * h.entrySize
  if (!sizeOk) p.push(`entry size ${h.entrySize} is not 128 × 2^n`)
  if (arrayBytes === 0 || arrayBytes > MAX_ARRAY_BYTES) p.push(`entry array of ${arrayBytes} bytes is not plausible`)
  const arraySectors = BigInt(Math.ceil(arrayBytes / ss))
  if (h.entriesLba < 2n || h.entriesLba + arraySectors - 1n > disk.lastLba) {
    p.push(`entry array at LBA ${h.entriesLba} (+${arraySectors} sectors) lies outside the disk`)
  } else if (h.entriesLba + arraySectors - 1n >= h.firstUsableLba && h.entriesLba <= h.lastUsableLba) {
    // a partition could then overwrite the table that describes it
    p.push(`entry array at LBA ${h.entriesLba} (+${arraySectors} sectors) lies inside the usable range ${h.firstUsableLba}..${h.lastUsableLba}`)
  }
  const headers = [0n, h.myLba, h.alternateLba] // the protective MBR and both GPT headers
  if (headers.some((lba) => h.firstUsableLba <= lba && lba <= h.lastUsableLba)) {
    p.push(`usable range ${h.firstUsableLba}..${h.lastUsableLba} covers the MBR or a GPT header (LBA ${headers.join(', ')})`)
  }
  if (!sizeOk || p.some((m) => m.startsWith('entry array'))) return side
  const entries = disk.read(Number(h.entriesLba) * ss, arrayBytes)
  side.entries = entries
  if (arrayCrc(entries) !== h.entriesCrc) p.push('entry-array CRC32 does not match')
  return side
}

function readProtectiveMbr(disk: Disk): ProtectiveMbr {
  const s = disk.read(0, 512)
  let protectiveEntry = false
  for (let i = 0; i < 4; i++) if (s[446 + i * 16 + 4] === 0xee) protectiveEntry = true
  return { signatureOk: s.readUInt16LE(510) === 0xaa55, protectiveEntry, diskSignature: s.readUInt32LE(440) }
}

/** Read everything; never throws for a damaged table (problems are listed per side). */
export function readGpt(disk: Disk): Gpt {
  const primary = readSide(disk, 'primary', 1n)
  const backup = readSide(disk, 'backup', disk.lastLba)
  const differingSectors: number[] = []
  if (primary.entries && backup.entries) {
    const ss = disk.sectorSize
    const n = Math.max(primary.entries.length, backup.entries.length)
    for (let off = 0; off < n; off += ss) {
      if (!primary.entries.subarray(off, off + ss).equals(backup.entries.subarray(off, off + ss))) differingSectors.push(off / ss)
    }
  }
  const mismatches = isValid(primary) && isValid(backup) ? compareHeaders(primary.header!, backup.header!, disk.lastLba) : []
  const source = isValid(primary) ? primary : isValid(backup) ? backup : null
  const entries = source ? parseEntries(source.entries!, source.header!.entrySize) : []
  return {
    path: disk.info.path,
    sectorSize: disk.sectorSize,
    lastLba: disk.lastLba,
    mbr: readProtectiveMbr(disk),
    primary,
    backup,
    entries,
    differingSectors,
    mismatches,
    layoutProblems: source ? layoutProblems(entries, source.header!) : [],
  }
}

/** How a partition is named in messages: its number and its name, quoted and escaped (the name is the disk's word, not ours). */
export function describeEntry(e: GptEntry): string {
  return `partition ${e.number} ${JSON.stringify(e.name)}`
}

/**
 * Partition boundaries checked before anything is written by them: each entry inside the
 * header's usable range with first <= last, and no two entries sharing a sector. A CRC-valid
 * table says nothing about this, and an update that trusted it wrote over the running slot.
 */
export function layoutProblems(entries: GptEntry[], h: GptHeader): string[] {
  const out: string[] = []
  const sane: GptEntry[] = []
  for (const e of entries) {
    if (e.firstLba > e.lastLba) out.push(`${describeEntry(e)} ends at LBA ${e.lastLba}, before it starts at LBA ${e.firstLba}`)
    else if (e.firstLba < h.firstUsableLba || e.lastLba > h.lastUsableLba) {
      out.push(`${describeEntry(e)} (LBA ${e.firstLba}..${e.lastLba}) lies outside the usable range ${h.firstUsableLba}..${h.lastUsableLba}`)
    } else sane.push(e)
  }
  sane.sort((a, b) => (a.firstLba < b.firstLba ? -1 : a.firstLba > b.firstLba ? 1 : a.index - b.index))
  let reach: GptEntry | null = null // the entry that ends furthest among those seen so far
  for (const e of sane) {
    if (reach && e.firstLba <= reach.lastLba) {
      out.push(`${describeEntry(e)} (LBA ${e.firstLba}..${e.lastLba}) overlaps ${describeEntry(reach)} (LBA ${reach.firstLba}..${reach.lastLba})`)
    }
    if (!reach || e.lastLba > reach.lastLba) reach = e
  }
  return out
}

/**
 * The partition table exactly as read (both headers and arrays): the updater compares it at its
 * commit with the one it planned against, so a table changed in between is never switched.
 */
export function gptFingerprint(gpt: Gpt): string {
  const h = crypto.createHash('sha256')
  for (const side of [gpt.primary, gpt.backup]) h.update(side.headerSector).update(side.entries ?? Buffer.alloc(0))
  return h.digest('hex')
}

/** Refuse a table whose partition boundaries cannot be trusted (see layoutProblems). */
export function requireSaneLayout(gpt: Gpt): void {
  if (gpt.layoutProblems.length) {
    throw new LabhostError(
      'gptLayoutInvalid',
      `the partitions on ${gpt.path} cannot be trusted: ${gpt.layoutProblems.join('; ')}`,
      're-partition the disk with the labhost layout (the installer does this), or fix the table with sgdisk; nothing was written',
      { problems: gpt.layoutProblems },
    )
  }
}

function compareHeaders(p: GptHeader, b: GptHeader, lastLba: bigint): string[] {
  const out: string[] = []
  if (p.alternateLba !== lastLba) out.push(`primary header names its backup at LBA ${p.alternateLba}, but the disk ends at LBA ${lastLba}`)
  if (b.alternateLba !== 1n) out.push(`backup header names its primary at LBA ${b.alternateLba}, not 1`)
  const same: (keyof GptHeader)[] = ['diskGuid', 'firstUsableLba', 'lastUsableLba', 'entryCount', 'entrySize', 'entriesCrc']
  for (const k of same) if (p[k] !== b[k]) out.push(`${k} differs: primary ${String(p[k])}, backup ${String(b[k])}`)
  return out
}

/**
 * Open a disk for GPT work. Block devices report their logical sector size; for image files
 * without an explicit size, the sector size is the one at which a GPT signature is found.
 */
export function openGptDisk(diskPath: string, sectorSize?: number): Disk {
  const disk = Disk.open(diskPath, { sectorSize })
  if (disk.info.isBlockDevice || sectorSize !== undefined) return disk
  if (disk.info.sizeBytes >= 8192 && disk.read(512, 8).toString('latin1') !== GPT_SIGNATURE && disk.read(4096, 8).toString('latin1') === GPT_SIGNATURE) {
    disk.close()
    return Disk.open(diskPath, { sectorSize: 4096 })
  }
  return disk
}

export function requireValidGpt(gpt: Gpt): void {
  if (!isValid(gpt.primary)) {
    throw new LabhostError(
      'gptPrimaryInvalid',
      `primary GPT on ${gpt.path} is invalid: ${gpt.primary.problems.join('; ')}`,
      'the kernel will not see partitions; restore it with `labhost slots repair` if the backup is valid, nothing was written',
      { problems: gpt.primary.problems },
    )
  }
  if (!isValid(gpt.backup)) {
    throw new LabhostError(
      'gptBackupInvalid',
      `backup GPT on ${gpt.path} is invalid: ${gpt.backup.problems.join('; ')}`,
      'rebuild it from the primary with `labhost slots repair`; nothing was written',
      { problems: gpt.backup.problems },
    )
  }
}

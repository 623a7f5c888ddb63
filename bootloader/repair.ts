// Bring primary and backup GPT back into agreement. The valid primary is the source of truth
// (its entry sector is the switch's commit point); a valid backup rebuilds a broken primary.
// Array sectors go first and the header last, so an interrupted repair can simply be re-run.
import { LabhostError } from '../lib/errors.ts'
import type { Disk } from '../lib/blockdev.ts'
import { headerCrcOf, isValid, type Gpt, type GptSide } from './gpt.ts'
import type { SectorWrite } from './sector-writes.ts'

export interface RepairPlan {
  disk: string
  source: 'primary' | 'backup' | null
  writes: SectorWrite[]
}

function rebuiltHeader(disk: Disk, source: GptSide, myLba: bigint, alternateLba: bigint, entriesLba: bigint): Buffer {
  const ss = disk.sectorSize
  const src = disk.readSectors(source.headerLba, 1)
  const h = Buffer.alloc(ss)
  const size = source.header!.headerSize
  src.copy(h, 0, 0, size)
  h.writeBigUInt64LE(myLba, 24)
  h.writeBigUInt64LE(alternateLba, 32)
  h.writeBigUInt64LE(entriesLba, 72)
  h.writeUInt32LE(headerCrcOf(h, size), 16)
  return h
}

export function planRepair(disk: Disk, gpt: Gpt): RepairPlan {
  const ss = disk.sectorSize
  const pValid = isValid(gpt.primary)
  const bValid = isValid(gpt.backup)
  if (!pValid && !bValid) {
    throw new LabhostError(
      'gptPrimaryInvalid',
      `neither GPT on ${gpt.path} is valid (primary: ${gpt.primary.problems.join('; ')}; backup: ${gpt.backup.problems.join('; ')})`,
      'nothing to repair from; re-partition the disk (the installer does this) or restore the table from a saved copy (sgdisk --load-backup); nothing was written',
    )
  }
  if (pValid && bValid && gpt.differingSectors.length === 0 && gpt.mismatches.length === 0) return { disk: gpt.path, source: null, writes: [] }
  const source = pValid ? gpt.primary : gpt.backup
  const target = pValid ? gpt.backup : gpt.primary
  const sh = source.header!
  if (pValid && sh.alternateLba !== disk.lastLba) {
    throw new LabhostError(
      'gptMismatch',
      `the primary GPT on ${gpt.path} places its backup at LBA ${sh.alternateLba} but the disk ends at LBA ${disk.lastLba} (was the disk resized?)`,
      'move the backup to the end of the disk with `sgdisk -e`, then re-run; nothing was written',
    )
  }
  const arraySectors = BigInt(Math.ceil(source.entries!.length / ss))
  const targetHeader = target.header
  const reuse =
    targetHeader !== null &&
    targetHeader.entrySize === sh.entrySize &&
    targetHeader.entryCount === sh.entryCount &&
    !target.problems.some((p) => p.startsWith('entry array') || p.startsWith('header says'))
  let entriesLba: bigint
  if (pValid) entriesLba = reuse ? targetHeader!.entriesLba : disk.lastLba - arraySectors
  else entriesLba = 2n
  const myLba = pValid ? disk.lastLba : 1n
  const alternateLba = pValid ? 1n : disk.lastLba
  if (pValid ? entriesLba <= sh.lastUsableLba : entriesLba + arraySectors > sh.firstUsableLba) {
    throw new LabhostError(
      'gptMismatch',
      `a rebuilt ${target.which} entry array at LBA ${entriesLba} would overlap the usable area of ${gpt.path}`,
      'restore the table with sgdisk (sgdisk -e, or --load-backup); nothing was written',
    )
  }
  const writes: SectorWrite[] = []
  for (let i = 0n; i < arraySectors; i++) {
    const lba = entriesLba + i
    const current = disk.readSectors(lba, 1)
    const next = Buffer.from(current)
    source.entries!.copy(next, 0, Number(i) * ss, Math.min(Number(i + 1n) * ss, source.entries!.length))
    if (!next.equals(current))
      writes.push({ region: pValid ? 'backup-array' : 'primary-array', lba, data: next, why: `copy array sector ${i} from the ${source.which}` })
  }
  const header = rebuiltHeader(disk, source, myLba, alternateLba, entriesLba)
  if (!header.equals(disk.readSectors(myLba, 1))) {
    writes.push({
      region: pValid ? 'backup-header' : 'primary-header',
      lba: myLba,
      data: header,
      why: `rebuild the ${target.which} header from the ${source.which}`,
    })
  }
  return { disk: gpt.path, source: source.which, writes }
}

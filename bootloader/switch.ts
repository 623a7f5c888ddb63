// The slot switch of DESIGN §3: one logical sector of the primary entry array is rewritten with
// the bootable bit moved from one root entry to the other and 4 compensation bytes in a root
// entry's unused name tail, so the array CRC32 the header stores stays right. That one write is
// the commit point; the backup array's copy of the sector follows.
import { LabhostError } from '../lib/errors.ts'
import type { Disk } from '../lib/blockdev.ts'
import { forgeXor } from './crc-forge.ts'
import {
  arrayCrc,
  ENTRY_ATTR_OFFSET,
  ENTRY_NAME_BYTES,
  ENTRY_NAME_OFFSET,
  LEGACY_BOOTABLE_BIT,
  readGpt,
  requireSaneLayout,
  requireValidGpt,
  type Gpt,
  type GptEntry,
} from './gpt.ts'
import { applySectorWrites, describeWrite, type SectorWrite } from './sector-writes.ts'
import { DEFAULT_SLOT_NAMES, findRootSlots, slotStatus, type SlotId, type SlotNames } from './slots.ts'
import { fault } from '../lib/faults.ts'

/** Offset inside an entry of the 4 compensation bytes: the last 4 bytes of the name field. */
export const COMPENSATION_OFFSET = ENTRY_NAME_OFFSET + ENTRY_NAME_BYTES - 4
/** A name may use at most this many UTF-16 units so that its NUL ends before the compensation bytes. */
export const MAX_NAME_UNITS_WITH_ROOM = (ENTRY_NAME_BYTES - 4) / 2 - 1

export interface SwitchPlan {
  disk: string
  sectorSize: number
  from: SlotId
  to: SlotId
  /** Nothing to switch: `to` is already the flagged slot (writes may still mirror a stale backup). */
  alreadyActive: boolean
  /** Index of the array sector holding both root entries. */
  arraySector: number
  compensationSlot: SlotId
  compensationBytes: string
  /** Byte offsets within the sector that change. */
  changedOffsets: number[]
  writes: SectorWrite[]
}

function hasRoom(e: GptEntry): boolean {
  return e.nameUnits <= MAX_NAME_UNITS_WITH_ROOM
}

export function planSwitch(disk: Disk, gpt: Gpt, to: SlotId, names: SlotNames = DEFAULT_SLOT_NAMES): SwitchPlan {
  requireValidGpt(gpt)
  requireSaneLayout(gpt)
  const ss = gpt.sectorSize
  const ph = gpt.primary.header!
  const bh = gpt.backup.header!
  const entries = gpt.primary.entries!
  const roots = findRootSlots(gpt, names)
  const sectorOf = (e: GptEntry) => Math.floor((e.index * ph.entrySize) / ss)
  const arraySector = sectorOf(roots.A)
  if (sectorOf(roots.B) !== arraySector) {
    throw new LabhostError(
      'slotsSplitSectors',
      `root entries ${roots.A.number} and ${roots.B.number} on ${gpt.path} lie in different sectors of the entry array (${arraySector} and ${sectorOf(roots.B)})`,
      'a one-sector switch needs both root entries in one sector: re-partition with the root slots as adjacent entries (1 and 2); nothing was written',
    )
  }
  const status = slotStatus(gpt, names)
  if (status.active === null) {
    throw new LabhostError(
      'slotFlagsAmbiguous',
      `cannot tell the active slot on ${gpt.path}: ${status.problem}`,
      'exactly one root slot must carry the legacy-bootable bit; inspect with `labhost slots status` and fix by hand (sgdisk -A); nothing was written',
    )
  }
  if (gpt.mismatches.length || gpt.differingSectors.some((s) => s !== arraySector)) {
    throw new LabhostError(
      'gptMismatch',
      `primary and backup GPT on ${gpt.path} disagree beyond the root-slot sector: ${[...gpt.mismatches, ...gpt.differingSectors.map((s) => `array sector ${s} differs`)].join('; ')}`,
      'run `labhost slots repair` to rebuild the backup from the primary; nothing was written',
    )
  }
  const from = status.active
  const compensationSlot: SlotId = hasRoom(roots.A)
    ? 'A'
    : hasRoom(roots.B)
      ? 'B'
      : (() => {
          throw new LabhostError(
            'nameTailFull',
            `the names of both root entries on ${gpt.path} are longer than ${MAX_NAME_UNITS_WITH_ROOM} characters, leaving no room for the CRC compensation bytes`,
            `rename the root partitions to ${MAX_NAME_UNITS_WITH_ROOM} characters or fewer (sgdisk -c); nothing was written`,
          )
        })()

  const sectorStart = arraySector * ss
  const primaryLba = ph.entriesLba + BigInt(arraySector)
  const backupLba = bh.entriesLba + BigInt(arraySector)
  const oldPrimarySector = disk.readSectors(primaryLba, 1)
  const newArray = Buffer.from(entries)
  if (to !== from) {
    const flip = (e: GptEntry, set: boolean) => {
      const off = e.index * ph.entrySize + ENTRY_ATTR_OFFSET
      const attrs = newArray.readBigUInt64LE(off)
      const bit = 1n << LEGACY_BOOTABLE_BIT
      newArray.writeBigUInt64LE(set ? attrs | bit : attrs & ~bit, off)
    }
    flip(roots[from], false)
    flip(roots[to], true)
    const compOffset = roots[compensationSlot].index * ph.entrySize + COMPENSATION_OFFSET
    const c = forgeXor(newArray.length, compOffset, (arrayCrc(newArray) ^ ph.entriesCrc) >>> 0)
    if (!naiveSwitchInjected()) for (let i = 0; i < 4; i++) newArray[compOffset + i]! ^= c[i]!
  }
  if (arrayCrc(newArray) !== ph.entriesCrc && !naiveSwitchInjected()) throw new Error('CRC compensation failed to preserve the array CRC')

  const arrayPart = newArray.subarray(sectorStart, Math.min(sectorStart + ss, newArray.length))
  const newPrimarySector = Buffer.from(oldPrimarySector)
  arrayPart.copy(newPrimarySector, 0)
  const newBackupSector = disk.readSectors(backupLba, 1)
  const backupWasStale = !newBackupSector.subarray(0, arrayPart.length).equals(arrayPart)
  arrayPart.copy(newBackupSector, 0)

  const changedOffsets: number[] = []
  for (let i = 0; i < ss; i++) if (oldPrimarySector[i] !== newPrimarySector[i]) changedOffsets.push(i)
  const compOffsetInSector = roots[compensationSlot].index * ph.entrySize + COMPENSATION_OFFSET - sectorStart
  const writes: SectorWrite[] = []
  if (changedOffsets.length)
    writes.push({ region: 'primary-array', lba: primaryLba, data: newPrimarySector, why: `commit: boot slot ${to} instead of ${from}` })
  if (backupWasStale) writes.push({ region: 'backup-array', lba: backupLba, data: newBackupSector, why: 'mirror the primary sector into the backup array' })
  return {
    disk: gpt.path,
    sectorSize: ss,
    from,
    to,
    alreadyActive: from === to,
    arraySector,
    compensationSlot,
    compensationBytes: newPrimarySector.subarray(compOffsetInSector, compOffsetInSector + 4).toString('hex'),
    changedOffsets,
    writes,
  }
}

/**
 * Fault injection (lib/faults.ts; test builds only): the naive switch, flags flipped and the array
 * CRC left wrong. It must brick a host, and the fault-injection campaign must say so.
 */
function naiveSwitchInjected(): boolean {
  return fault('SKIP_CRC_COMPENSATION') === '1'
}

/** One write of a switch plan as data (--json): the LBA as a decimal string; with `hex`, the sector's bytes. */
export type WriteData = { region: SectorWrite['region']; lba: string; bytes: number; why: string; hex?: string }
export type SwitchPlanData = Omit<SwitchPlan, 'writes'> & { writes: WriteData[] }

export function switchPlanData(plan: Readonly<SwitchPlan>, o: { hex?: boolean } = {}): SwitchPlanData {
  return { ...plan, writes: plan.writes.map((w) => ({ ...describeWrite(w), ...(o.hex ? { hex: w.data.toString('hex') } : {}) }) as WriteData) }
}

/**
 * A switch plan for people, as `labhost slots switch` and `labhost update --dry-run` print it:
 * the sector, its CRC compensation bytes, each write in order.
 */
export function renderSwitch(
  plan: Readonly<Omit<SwitchPlan, 'writes'>> & { writes: readonly Pick<SectorWrite | WriteData, 'region' | 'lba' | 'why'>[] },
  dryRun: boolean,
): string[] {
  return [
    `disk ${plan.disk} (${plan.sectorSize}-byte sectors): slot ${plan.from} -> slot ${plan.to}${plan.alreadyActive ? ' (already active)' : ''}`,
    `  root entries share array sector ${plan.arraySector}; CRC compensation in slot ${plan.compensationSlot}'s name tail: ${plan.compensationBytes}`,
    ...plan.writes.map((w) => `  ${dryRun ? 'would write' : 'wrote'} ${w.region} LBA ${w.lba}: ${w.why}`),
    ...(plan.writes.length === 0 ? ['  nothing to write'] : []),
  ]
}

/** Apply a switch plan, then read the disk back and prove the new state. */
export async function applySwitch(disk: Disk, plan: SwitchPlan, names: SlotNames = DEFAULT_SLOT_NAMES, log?: (l: string) => void): Promise<void> {
  await applySectorWrites(disk, plan.writes, log)
  const after = slotStatus(readGpt(disk), names)
  if (!after.primaryValid || !after.backupValid || after.active !== plan.to || !after.tablesAgree) {
    throw new LabhostError(
      'io',
      `after switching ${plan.disk} to slot ${plan.to} the disk reads back wrong (active ${after.active}, primary ${after.primaryValid ? 'valid' : 'invalid'}, backup ${after.backupValid ? 'valid' : 'invalid'})`,
      'the device did not keep what was written; check it (sgdisk -v, dmesg) before trusting it',
    )
  }
}

// The two root slots of a disk, found by their GPT partition names, and what state they are in.
import { LabhostError } from '../lib/errors.ts'
import { isValid, type Gpt, type GptEntry } from './gpt.ts'

export type SlotId = 'A' | 'B'
export interface SlotNames {
  A: string
  B: string
}
export const DEFAULT_SLOT_NAMES: SlotNames = { A: 'rootA', B: 'rootB' }

export function otherSlot(s: SlotId): SlotId {
  return s === 'A' ? 'B' : 'A'
}

export interface RootSlots {
  A: GptEntry
  B: GptEntry
}

export function findRootSlots(gpt: Gpt, names: SlotNames = DEFAULT_SLOT_NAMES): RootSlots {
  const pick = (id: SlotId) => {
    const matches = gpt.entries.filter((e) => e.name === names[id])
    if (matches.length !== 1) {
      throw new LabhostError(
        'slotsNotFound',
        `${gpt.path} has ${matches.length === 0 ? 'no' : matches.length} partition${matches.length === 1 ? '' : 's'} named "${names[id]}" (root slot ${id})`,
        `partition the disk with the labhost layout (one "${names.A}" and one "${names.B}"), or pass --slot-names; nothing was written`,
      )
    }
    return matches[0]!
  }
  return { A: pick('A'), B: pick('B') }
}

export interface SlotInfo {
  id: SlotId
  number: number
  name: string
  partGuid: string
  firstLba: string
  lastLba: string
  bootable: boolean
}

export interface SlotStatus {
  disk: string
  sectorSize: number
  /** The slot gptmbr boots: the only flagged root entry; null if none or both are flagged. */
  active: SlotId | null
  slots: SlotInfo[]
  primaryValid: boolean
  backupValid: boolean
  primaryProblems: string[]
  backupProblems: string[]
  /** Primary and backup hold the same array and consistent headers. */
  tablesAgree: boolean
  differingSectors: number[]
  mismatches: string[]
  /** Entries other than the root slots that carry the legacy-bootable bit (gptmbr refuses to boot then). */
  otherFlagged: number[]
  /** Partition boundaries that cannot be trusted (gpt.ts layoutProblems): labhost writes nothing then. */
  layoutProblems: string[]
  problem: string | null
}

export function slotStatus(gpt: Gpt, names: SlotNames = DEFAULT_SLOT_NAMES): SlotStatus {
  let slots: SlotInfo[] = []
  let problem: string | null = null
  let rootNumbers: number[] = []
  try {
    const r = findRootSlots(gpt, names)
    rootNumbers = [r.A.number, r.B.number]
    slots = (['A', 'B'] as const).map((id) => ({
      id,
      number: r[id].number,
      name: r[id].name,
      partGuid: r[id].partGuid,
      firstLba: r[id].firstLba.toString(),
      lastLba: r[id].lastLba.toString(),
      bootable: r[id].legacyBootable,
    }))
  } catch (e) {
    problem = (e as Error).message
  }
  const flagged = slots.filter((s) => s.bootable)
  const otherFlagged = gpt.entries.filter((e) => e.legacyBootable && !rootNumbers.includes(e.number)).map((e) => e.number)
  if (!problem && flagged.length !== 1) problem = flagged.length === 0 ? 'no root slot is flagged bootable' : 'both root slots are flagged bootable'
  if (!problem && otherFlagged.length) problem = `partition(s) ${otherFlagged.join(', ')} also carry the legacy-bootable bit`
  if (!problem && gpt.layoutProblems.length) problem = `the partition boundaries cannot be trusted: ${gpt.layoutProblems.join('; ')}`
  return {
    disk: gpt.path,
    sectorSize: gpt.sectorSize,
    active: flagged.length === 1 && otherFlagged.length === 0 ? flagged[0]!.id : null,
    slots,
    primaryValid: isValid(gpt.primary),
    backupValid: isValid(gpt.backup),
    primaryProblems: gpt.primary.problems,
    backupProblems: gpt.backup.problems,
    tablesAgree: gpt.differingSectors.length === 0 && gpt.mismatches.length === 0,
    differingSectors: gpt.differingSectors,
    mismatches: gpt.mismatches,
    otherFlagged,
    layoutProblems: gpt.layoutProblems,
    problem,
  }
}

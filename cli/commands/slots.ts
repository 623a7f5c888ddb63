// labhost slots status|switch|repair: the root slots of a disk and the one-sector switch.
import fs from 'node:fs'
import { LabhostError } from '../../lib/errors.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { planRepair } from '../../bootloader/repair.ts'
import { applySectorWrites, describeWrite } from '../../bootloader/sector-writes.ts'
import { DEFAULT_SLOT_NAMES, slotStatus, type SlotId, type SlotNames, type SlotStatus } from '../../bootloader/slots.ts'
import { applySwitch, planSwitch, renderSwitch, switchPlanData } from '../../bootloader/switch.ts'
import { diskIdentity, withDiskLock } from '../../lib/disk-lock.ts'
import { readBootInfo, readTrial, type HostPaths } from '../../updater/host-state.ts'
import { defineCommand, pathValue, valueOf, type CommandResult, type Context, type Options } from '../command.ts'
import { hostPaths, PATH_OPTIONS } from './host.ts'

const DISK_OPTIONS = {
  disk: {
    type: 'string',
    value: 'DEV|FILE',
    required: true,
    schema: pathValue(),
    description: 'the disk (a block device or a disk image file) whose GPT holds the root slots',
  },
  'sector-size': {
    type: 'string',
    value: '512|4096',
    defaultText: "the device's; an image file is read as 512 unless a GPT is found at 4096",
    schema: valueOf(
      (s) => (s === '512' ? 512 : s === '4096' ? 4096 : undefined),
      'is neither 512 nor 4096',
      'image files are read as 512 unless a GPT is found at 4096',
    ),
    description: 'read the disk with this logical sector size',
  },
  'slot-names': {
    type: 'string',
    value: 'A,B',
    default: `${DEFAULT_SLOT_NAMES.A},${DEFAULT_SLOT_NAMES.B}`,
    description: 'the GPT partition names of root slots A and B',
    schema: valueOf(
      (s): SlotNames | undefined => {
        const [a, b, ...rest] = s.split(',')
        return a && b && !rest.length ? { A: a, B: b } : undefined
      },
      'is not two names',
      'give them as A,B, e.g. --slot-names rootA,rootB',
    ),
  },
} as const satisfies Options

// What writes the GPT (switch, repair) also needs: the host's files, to see a pending trial, and
// the way to overrule it.
const WRITE_OPTIONS = {
  ...DISK_OPTIONS,
  ...PATH_OPTIONS,
  'ignore-trial': {
    type: 'boolean',
    description: 'write the GPT even while a trial is pending on the disk this host booted from (its rollback may then undo or fight the write)',
  },
} as const satisfies Options

/**
 * A trial pending on this host's boot disk: its initramfs will count boots and roll back by the
 * sector it saved, so a hand-made switch or repair now would be undone or fight it. Refused
 * unless --ignore-trial. Disks other than the one this host booted from have no trial here.
 */
function refuseDuringTrial(diskPath: string, paths: HostPaths, ignore: boolean): void {
  const trial = readTrial(paths)
  if (!trial || ignore) return
  let booted: string
  try {
    booted = readBootInfo(paths).disk
  } catch {
    return
  }
  if (booted && fs.existsSync(booted) && diskIdentity(booted) === diskIdentity(diskPath)) {
    throw new LabhostError(
      'trialPending',
      `slot ${trial.slot} of ${diskPath} is on trial (${trial.bootsLeft} boot(s) left, version ${trial.version})`,
      'let the trial end (labhost mark-good, or the rollback), or pass --ignore-trial to write the GPT anyway; nothing was written',
    )
  }
}

function formatStatus(s: SlotStatus): string {
  const lines = [`disk ${s.disk} (${s.sectorSize}-byte sectors)`]
  for (const slot of s.slots) {
    lines.push(
      `  slot ${slot.id}: partition ${slot.number} "${slot.name}" PARTUUID ${slot.partGuid} LBA ${slot.firstLba}-${slot.lastLba}${slot.bootable ? '  [bootable]' : ''}`,
    )
  }
  lines.push(`  active: ${s.active ?? 'none'}`)
  lines.push(`  primary GPT: ${s.primaryValid ? 'valid' : `INVALID (${s.primaryProblems.join('; ')})`}`)
  lines.push(`  backup GPT: ${s.backupValid ? 'valid' : `INVALID (${s.backupProblems.join('; ')})`}`)
  lines.push(
    `  primary and backup: ${s.tablesAgree ? 'agree' : `DIFFER (${[...s.mismatches, ...s.differingSectors.map((x) => `array sector ${x}`)].join('; ')}) — run labhost slots repair`}`,
  )
  for (const p of s.layoutProblems) lines.push(`  partitions: ${p}`)
  if (s.problem) lines.push(`  problem: ${s.problem}`)
  return lines.join('\n')
}

export const slotsStatus = defineCommand({
  name: 'slots status',
  summary: 'show the root slots, which one boots, and whether primary and backup GPT agree',
  usage: 'labhost slots status --disk DEV|FILE [options]',
  notes: 'exit 0: a slot is flagged to boot, both GPTs are valid and agree, the partitions are as a labhost layout has them; else 1 (the problems are listed)',
  options: DISK_OPTIONS,
  dryRun: { readsOnly: true },
  async run(values) {
    const disk = openGptDisk(values.disk, values['sector-size'])
    try {
      const status = slotStatus(readGpt(disk), values['slot-names'])
      const healthy = status.active !== null && status.primaryValid && status.backupValid && status.tablesAgree && status.layoutProblems.length === 0
      return { data: status, human: formatStatus(status), exitCode: healthy ? 0 : 1 }
    } finally {
      disk.close()
    }
  },
})

export const slotsSwitch = defineCommand({
  name: 'slots switch',
  summary: 'make the other root slot boot, with one sector write (DESIGN §3)',
  usage: 'labhost slots switch --disk DEV|FILE --to A|B [options]',
  options: {
    ...WRITE_OPTIONS,
    to: {
      type: 'string',
      value: 'A|B',
      required: true,
      description: 'the slot to boot next (a or b also do)',
      schema: valueOf(
        (s): SlotId | undefined => (s.toUpperCase() === 'A' ? 'A' : s.toUpperCase() === 'B' ? 'B' : undefined),
        'is not a slot',
        'use --to A or --to B',
      ),
    },
  },
  dryRun: { plan: 'print the switch plan (the sector, its CRC compensation bytes, each write in order)' },
  async run(values, _pos, ctx) {
    const { disk: path, 'sector-size': sectorSize, 'slot-names': names, to } = values
    const act = async () => {
      refuseDuringTrial(path, hostPaths(values), values['ignore-trial'])
      return switchSlots(path, sectorSize, names, to, ctx)
    }
    // the same lock as labhost update: never a switch in the middle of an update's write
    return ctx.dryRun ? act() : withDiskLock(path, 'labhost slots switch', act)
  },
})

async function switchSlots(path: string, sectorSize: number | undefined, names: SlotNames, to: SlotId, ctx: Context): Promise<CommandResult> {
  const disk = openGptDisk(path, sectorSize)
  try {
    const plan = planSwitch(disk, readGpt(disk), to, names)
    const data = { ...switchPlanData(plan), dryRun: ctx.dryRun }
    const human = renderSwitch(plan, ctx.dryRun).join('\n')
    if (!ctx.dryRun) {
      ctx.log(`switching ${plan.disk} from slot ${plan.from} to slot ${plan.to}`)
      await applySwitch(disk, plan, names, ctx.log)
    }
    return { data, human }
  } finally {
    disk.close()
  }
}

export const slotsRepair = defineCommand({
  name: 'slots repair',
  summary: 'rebuild the backup GPT from a valid primary (or the primary from a valid backup)',
  usage: 'labhost slots repair --disk DEV|FILE [options]',
  options: WRITE_OPTIONS,
  dryRun: { plan: 'print which table is rebuilt from which and each sector it would write' },
  async run(values, _pos, ctx) {
    const { disk: path, 'sector-size': sectorSize } = values
    const act = async () => {
      refuseDuringTrial(path, hostPaths(values), values['ignore-trial'])
      return repairGpt(path, sectorSize, ctx)
    }
    return ctx.dryRun ? act() : withDiskLock(path, 'labhost slots repair', act)
  },
})

async function repairGpt(path: string, sectorSize: number | undefined, ctx: Context): Promise<CommandResult> {
  const disk = openGptDisk(path, sectorSize)
  try {
    const plan = planRepair(disk, readGpt(disk))
    if (!ctx.dryRun) await applySectorWrites(disk, plan.writes, ctx.log)
    const human =
      plan.writes.length === 0
        ? `disk ${plan.disk}: primary and backup GPT agree, nothing to repair`
        : [
            `disk ${plan.disk}: repairing from the ${plan.source}`,
            ...plan.writes.map((w) => `  ${ctx.dryRun ? 'would write' : 'wrote'} ${w.region} LBA ${w.lba}: ${w.why}`),
          ].join('\n')
    return { data: { ...plan, writes: plan.writes.map(describeWrite), dryRun: ctx.dryRun }, human }
  } finally {
    disk.close()
  }
}

// labhost slots status|switch|repair: the root slots of a disk and the one-sector switch.
import fs from 'node:fs'
import { LabhostError } from '../../lib/errors.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { planRepair } from '../../bootloader/repair.ts'
import { applySectorWrites, describeWrite } from '../../bootloader/sector-writes.ts'
import { DEFAULT_SLOT_NAMES, slotStatus, type SlotId, type SlotNames, type SlotStatus } from '../../bootloader/slots.ts'
import { applySwitch, planSwitch } from '../../bootloader/switch.ts'
import { diskIdentity, withDiskLock } from '../../lib/disk-lock.ts'
import { readBootInfo, readTrial, type HostPaths } from '../../updater/host-state.ts'
import { requireString, type Command, type CommandResult, type Context, type OptionSpec } from '../command.ts'
import { hostPaths, PATH_OPTIONS } from './host.ts'

const DISK_OPTIONS: OptionSpec = {
  disk: { type: 'string' },
  'sector-size': { type: 'string' },
  'slot-names': { type: 'string' },
}

function diskArgs(values: Record<string, unknown>, cmd: Command): { disk: string; sectorSize?: number; names: SlotNames } {
  const disk = requireString(values, 'disk', cmd)
  const ssRaw = values['sector-size']
  let sectorSize: number | undefined
  if (typeof ssRaw === 'string') {
    sectorSize = Number(ssRaw)
    if (sectorSize !== 512 && sectorSize !== 4096) throw new LabhostError('usage', `--sector-size ${ssRaw} is not 512 or 4096`, 'image files are read as 512 unless a GPT is found at 4096')
  }
  let names = DEFAULT_SLOT_NAMES
  if (typeof values['slot-names'] === 'string') {
    const [a, b, ...rest] = values['slot-names'].split(',')
    if (!a || !b || rest.length) throw new LabhostError('usage', `--slot-names "${values['slot-names']}" is not two names`, 'give them as A,B, e.g. --slot-names rootA,rootB')
    names = { A: a, B: b }
  }
  return { disk, sectorSize, names }
}

// What writes the GPT (switch, repair) also needs: the host's files, to see a pending trial, and
// the way to overrule it.
const WRITE_OPTIONS: OptionSpec = { ...DISK_OPTIONS, ...PATH_OPTIONS, 'ignore-trial': { type: 'boolean', default: false } }

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
    throw new LabhostError('trialPending', `slot ${trial.slot} of ${diskPath} is on trial (${trial.bootsLeft} boot(s) left, version ${trial.version})`,
      'let the trial end (labhost mark-good, or the rollback), or pass --ignore-trial to write the GPT anyway; nothing was written')
  }
}

function formatStatus(s: SlotStatus): string {
  const lines = [`disk ${s.disk} (${s.sectorSize}-byte sectors)`]
  for (const slot of s.slots) {
    lines.push(`  slot ${slot.id}: partition ${slot.number} "${slot.name}" PARTUUID ${slot.partGuid} LBA ${slot.firstLba}-${slot.lastLba}${slot.bootable ? '  [bootable]' : ''}`)
  }
  lines.push(`  active: ${s.active ?? 'none'}`)
  lines.push(`  primary GPT: ${s.primaryValid ? 'valid' : `INVALID (${s.primaryProblems.join('; ')})`}`)
  lines.push(`  backup GPT: ${s.backupValid ? 'valid' : `INVALID (${s.backupProblems.join('; ')})`}`)
  lines.push(`  primary and backup: ${s.tablesAgree ? 'agree' : `DIFFER (${[...s.mismatches, ...s.differingSectors.map((x) => `array sector ${x}`)].join('; ')}) — run labhost slots repair`}`)
  for (const p of s.layoutProblems) lines.push(`  partitions: ${p}`)
  if (s.problem) lines.push(`  problem: ${s.problem}`)
  return lines.join('\n')
}

export const slotsStatus: Command = {
  name: 'slots status',
  summary: 'show the root slots, which one boots, and whether primary and backup GPT agree',
  usage: 'labhost slots status --disk DEV|FILE [--sector-size 512|4096] [--slot-names rootA,rootB] [--json]',
  options: DISK_OPTIONS,
  async run(values) {
    const { disk: path, sectorSize, names } = diskArgs(values, this)
    const disk = openGptDisk(path, sectorSize)
    try {
      const status = slotStatus(readGpt(disk), names)
      const healthy = status.active !== null && status.primaryValid && status.backupValid && status.tablesAgree && status.layoutProblems.length === 0
      return { data: status, human: formatStatus(status), exitCode: healthy ? 0 : 1 }
    } finally {
      disk.close()
    }
  },
}

export const slotsSwitch: Command = {
  name: 'slots switch',
  summary: 'make the other root slot boot, with one sector write (DESIGN §3)',
  usage: 'labhost slots switch --disk DEV|FILE --to A|B [--sector-size 512|4096] [--slot-names rootA,rootB] [--ignore-trial] [--dry-run] [--json]',
  options: { ...WRITE_OPTIONS, to: { type: 'string' } },
  async run(values, _pos, ctx) {
    const { disk: path, sectorSize, names } = diskArgs(values, this)
    const to = requireString(values, 'to', this).toUpperCase()
    if (to !== 'A' && to !== 'B') throw new LabhostError('usage', `--to ${to} is not a slot`, 'use --to A or --to B')
    const act = async () => {
      refuseDuringTrial(path, hostPaths(values), values['ignore-trial'] === true)
      return switchSlots(path, sectorSize, names, to, ctx)
    }
    // the same lock as labhost update: never a switch in the middle of an update's write
    return ctx.dryRun ? act() : withDiskLock(path, 'labhost slots switch', act)
  },
}

async function switchSlots(path: string, sectorSize: number | undefined, names: SlotNames, to: SlotId, ctx: Context): Promise<CommandResult> {
  const disk = openGptDisk(path, sectorSize)
  try {
    const plan = planSwitch(disk, readGpt(disk), to, names)
    const data = { ...plan, writes: plan.writes.map(describeWrite), dryRun: ctx.dryRun }
    const human = [
      `disk ${plan.disk} (${plan.sectorSize}-byte sectors): slot ${plan.from} -> slot ${plan.to}${plan.alreadyActive ? ' (already active)' : ''}`,
      `  root entries share array sector ${plan.arraySector}; CRC compensation in slot ${plan.compensationSlot}'s name tail: ${plan.compensationBytes}`,
      ...plan.writes.map((w) => `  ${ctx.dryRun ? 'would write' : 'wrote'} ${w.region} LBA ${w.lba}: ${w.why}`),
      ...(plan.writes.length === 0 ? ['  nothing to write'] : []),
    ].join('\n')
    if (!ctx.dryRun) {
      ctx.log(`switching ${plan.disk} from slot ${plan.from} to slot ${plan.to}`)
      await applySwitch(disk, plan, names, ctx.log)
    }
    return { data, human }
  } finally {
    disk.close()
  }
}

export const slotsRepair: Command = {
  name: 'slots repair',
  summary: 'rebuild the backup GPT from a valid primary (or the primary from a valid backup)',
  usage: 'labhost slots repair --disk DEV|FILE [--sector-size 512|4096] [--ignore-trial] [--dry-run] [--json]',
  options: WRITE_OPTIONS,
  async run(values, _pos, ctx) {
    const { disk: path, sectorSize } = diskArgs(values, this)
    const act = async () => {
      refuseDuringTrial(path, hostPaths(values), values['ignore-trial'] === true)
      return repairGpt(path, sectorSize, ctx)
    }
    return ctx.dryRun ? act() : withDiskLock(path, 'labhost slots repair', act)
  },
}

async function repairGpt(path: string, sectorSize: number | undefined, ctx: Context): Promise<CommandResult> {
  const disk = openGptDisk(path, sectorSize)
  try {
    const plan = planRepair(disk, readGpt(disk))
    if (!ctx.dryRun) await applySectorWrites(disk, plan.writes, ctx.log)
    const human = plan.writes.length === 0 ? `disk ${plan.disk}: primary and backup GPT agree, nothing to repair`
      : [`disk ${plan.disk}: repairing from the ${plan.source}`, ...plan.writes.map((w) => `  ${ctx.dryRun ? 'would write' : 'wrote'} ${w.region} LBA ${w.lba}: ${w.why}`)].join('\n')
    return { data: { ...plan, writes: plan.writes.map(describeWrite), dryRun: ctx.dryRun }, human }
  } finally {
    disk.close()
  }
}

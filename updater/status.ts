// labhost status: slots, versions, the booted and the flagged slot, trial state and the last
// update result — as an object for --json and as a node_exporter textfile for Prometheus.
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { slotStatus, type SlotStatus } from '../bootloader/slots.ts'
import { readBootInfo, readLastResult, readTrial, readVersion, type BootInfo, type HostPaths, type TrialInfo } from './host-state.ts'
import { LABHOST_VERSION } from '../lib/labhost-version.ts'

export interface HostStatus {
  /** The labhost executable that gathered this status. */
  labhost: string
  /** The running root image's version (/etc/labhost/version). */
  version: string | null
  booted: BootInfo | null
  gpt: SlotStatus | null
  trial: TrialInfo | null
  lastResult: Record<string, string> | null
  problems: string[]
}

export function gatherStatus(p: HostPaths, diskOverride?: string): HostStatus {
  const problems: string[] = []
  let booted: BootInfo | null = null
  try {
    booted = readBootInfo(p)
  } catch (e) {
    problems.push((e as Error).message)
  }
  const diskPath = diskOverride ?? booted?.disk
  let gpt: SlotStatus | null = null
  if (diskPath) {
    try {
      const disk = openGptDisk(diskPath)
      try {
        gpt = slotStatus(readGpt(disk))
      } finally {
        disk.close()
      }
      if (gpt.problem) problems.push(gpt.problem)
      if (!gpt.tablesAgree) problems.push('primary and backup GPT disagree (labhost slots repair)')
      if (booted && gpt.active && booted.slot !== gpt.active) problems.push(`running slot ${booted.slot}, but slot ${gpt.active} is flagged to boot next`)
    } catch (e) {
      problems.push((e as Error).message)
    }
  }
  return { labhost: LABHOST_VERSION, version: readVersion(p), booted, gpt, trial: readTrial(p), lastResult: readLastResult(p), problems }
}

const label = (v: string) => v.replace(/["\\\n]/g, '_')

export function renderPrometheus(s: HostStatus): string {
  const lines = [
    '# HELP labhost_info The running labhost root image.',
    '# TYPE labhost_info gauge',
    `labhost_info{version="${label(s.version ?? 'unknown')}",slot="${s.booted?.slot ?? 'unknown'}",flagged="${s.gpt?.active ?? 'none'}"} 1`,
    '# HELP labhost_trial_boots_left Boots left before an unconfirmed slot is rolled back (-1: no trial).',
    '# TYPE labhost_trial_boots_left gauge',
    `labhost_trial_boots_left ${s.trial ? s.trial.bootsLeft : -1}`,
    '# HELP labhost_gpt_healthy 1 when both GPTs are valid, agree and exactly one root slot is flagged.',
    '# TYPE labhost_gpt_healthy gauge',
    `labhost_gpt_healthy ${s.gpt && s.gpt.primaryValid && s.gpt.backupValid && s.gpt.tablesAgree && s.gpt.active ? 1 : 0}`,
    '# HELP labhost_last_update_result The last trial outcome (good, rolled-back).',
    '# TYPE labhost_last_update_result gauge',
    `labhost_last_update_result{result="${label(s.lastResult?.RESULT ?? 'none')}",version="${label(s.lastResult?.VERSION ?? '')}"} 1`,
    '# HELP labhost_problems Number of problems labhost status sees.',
    '# TYPE labhost_problems gauge',
    `labhost_problems ${s.problems.length}`,
  ]
  return lines.join('\n') + '\n'
}

export function renderHuman(s: HostStatus): string {
  return [
    `version ${s.version ?? 'unknown'}, running slot ${s.booted?.slot ?? 'unknown'}${s.booted ? ` (${s.booted.device})` : ''}`,
    `next boot: slot ${s.gpt?.active ?? 'unknown'}`,
    `trial: ${s.trial ? `slot ${s.trial.slot}, ${s.trial.bootsLeft} boot(s) left, version ${s.trial.version}` : 'none'}`,
    `last result: ${s.lastResult ? Object.entries(s.lastResult).map(([k, v]) => `${k.toLowerCase()}=${v}`).join(' ') : 'none'}`,
    ...s.problems.map((p) => `problem: ${p}`),
  ].join('\n')
}

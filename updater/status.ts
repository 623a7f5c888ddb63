// labhost status: slots, versions, the booted and the flagged slot, trial state and the last
// update result — as an object for --json and as a node_exporter textfile for Prometheus.
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { slotStatus, type SlotStatus } from '../bootloader/slots.ts'
import { readBootInfo, readLastResult, readTrial, readVersion, type BootInfo, type HostPaths, type TrialInfo } from './host-state.ts'
import { LABHOST_VERSION } from '../lib/labhost-version.ts'
import { DECISIONS, readLastCheck, type LastCheck } from './channel.ts'

export interface HostStatus {
  /** The labhost executable that gathered this status. */
  labhost: string
  /** The running root image's version (/etc/labhost/version). */
  version: string | null
  booted: BootInfo | null
  gpt: SlotStatus | null
  trial: TrialInfo | null
  lastResult: Record<string, string> | null
  /** The last `labhost update --channel` check (updater/rollout.ts). */
  channel: LastCheck | null
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
  return {
    labhost: LABHOST_VERSION,
    version: readVersion(p),
    booted,
    gpt,
    trial: readTrial(p),
    lastResult: readLastResult(p),
    channel: readLastCheck(p.stateRoot),
    problems,
  }
}

const label = (v: string) => v.replace(/["\\\n]/g, '_')

/** Seconds since the epoch of an ISO time, or null. */
const seconds = (iso: string | undefined): number | null => {
  const t = iso ? Date.parse(iso) : NaN
  return Number.isNaN(t) ? null : t / 1000
}

/**
 * The node_exporter textfile (Prometheus text exposition), after Prometheus' naming conventions:
 * the `labhost_` prefix, units in the name (`_seconds`, `_ratio`), times as `_timestamp_seconds`,
 * text as labels of an `_info` gauge whose value is 1, states as one 0/1 series per state, and a
 * HELP and TYPE line for each. Labels take few values per host (a version, a slot, a result): the
 * machine is the scrape's `instance`, never a label here.
 */
export function renderPrometheus(s: HostStatus): string {
  const lines: string[] = []
  const metric = (name: string, help: string, samples: [labels: Record<string, string> | null, value: number][]) => {
    if (!samples.length) return
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`)
    for (const [labels, value] of samples) {
      const l = labels
        ? `{${Object.entries(labels)
            .map(([k, v]) => `${k}="${label(v)}"`)
            .join(',')}}`
        : ''
      lines.push(`${name}${l} ${value}`)
    }
  }
  const gptHealthy = s.gpt && s.gpt.primaryValid && s.gpt.backupValid && s.gpt.tablesAgree && s.gpt.active ? 1 : 0
  metric('labhost_build_info', 'The labhost executable that wrote these metrics (its version as a label).', [[{ version: s.labhost }, 1]])
  metric('labhost_image_info', 'The running root image: its version, the slot it runs from and the slot flagged to boot next.', [
    [{ version: s.version ?? 'unknown', slot: s.booted?.slot ?? 'unknown', next_slot: s.gpt?.active ?? 'none' }, 1],
  ])
  metric('labhost_trial_pending', '1 while an updated slot is on trial (not yet confirmed by labhost mark-good).', [[null, s.trial ? 1 : 0]])
  metric('labhost_trial_boots_left', 'Boots left before the slot on trial is rolled back (0 without a trial).', [[null, s.trial ? s.trial.bootsLeft : 0]])
  metric('labhost_gpt_healthy', '1 when both GPTs are valid, agree and exactly one root slot is flagged.', [[null, gptHealthy]])
  const r = s.lastResult
  if (r) {
    metric('labhost_last_update_info', "The outcome of the last update's trial (result good or rolled-back) and the version it was for.", [
      [{ result: r.RESULT ?? 'unknown', version: r.VERSION ?? 'unknown' }, 1],
    ])
    const at = seconds(r.MARKED_AT ?? r.ROLLED_BACK_AT)
    metric(
      'labhost_last_update_timestamp_seconds',
      "When the last update's trial ended (marked good or rolled back), seconds since the epoch.",
      at === null ? [] : [[null, at]],
    )
    const took = Number(r.UPDATE_SECONDS)
    metric(
      'labhost_last_update_duration_seconds',
      'How long the last update took to write, verify and switch.',
      r.UPDATE_SECONDS && Number.isFinite(took) ? [[null, took]] : [],
    )
  }
  metric('labhost_problems', 'Number of problems labhost status sees.', [[null, s.problems.length]])
  const c = s.channel
  if (c) {
    const at = seconds(c.checkedAt)
    metric(
      'labhost_channel_last_check_timestamp_seconds',
      'When labhost update --channel last checked the channel, seconds since the epoch.',
      at === null ? [] : [[null, at]],
    )
    metric(
      'labhost_channel_decision',
      'What the last channel check decided: 1 for the decision taken, 0 for the others.',
      DECISIONS.map((d) => [{ decision: d }, c.decision === d ? 1 : 0]),
    )
    metric('labhost_channel_serial', 'The serial number of the channel document last checked.', [[null, c.serial]])
    metric('labhost_channel_info', 'The image version the channel named at the last check.', [[{ version: c.version }, 1]])
    metric('labhost_channel_share_ratio', "The share of hosts the channel's rollout stage takes in (0 to 1).", [[null, c.share / 100]])
  }
  return lines.join('\n') + '\n'
}

export function renderHuman(s: HostStatus): string {
  return [
    `version ${s.version ?? 'unknown'}, running slot ${s.booted?.slot ?? 'unknown'}${s.booted ? ` (${s.booted.device})` : ''}`,
    `next boot: slot ${s.gpt?.active ?? 'unknown'}`,
    `trial: ${s.trial ? `slot ${s.trial.slot}, ${s.trial.bootsLeft} boot(s) left, version ${s.trial.version}` : 'none'}`,
    `last result: ${
      s.lastResult
        ? Object.entries(s.lastResult)
            .map(([k, v]) => `${k.toLowerCase()}=${v}`)
            .join(' ')
        : 'none'
    }`,
    ...s.problems.map((p) => `problem: ${p}`),
  ].join('\n')
}

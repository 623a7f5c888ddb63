// labhost update --channel URL: a host schedules its own update from a signed channel document
// (updater/channel.ts). It takes part in the rollout when its rollout point — a stable hash of its
// machine UUID with the image's name and version, as a number from 0 to 100 — is below the
// channel's share: the hosts in at 5 % are still in at 25 % (the point does not change, the bar
// rises), and each version picks its own first hosts (the version is hashed in). Then it updates
// inside the maintenance window, with the normal update's checks and exit codes.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { LabhostError } from '../lib/errors.ts'
import { compareVersions } from '../lib/version.ts'
import { readPublicKey } from '../image-format/manifest.ts'
import { readLastResult, readVersion } from './host-state.ts'
import { formatWindow, imageLocation, type Decision, inWindow, readChannel, refuseReplay, rememberSerial, writeLastCheck, type Channel } from './channel.ts'
import { runUpdate, type UpdateOptions, type UpdateResult } from './update.ts'

export const DEFAULT_MACHINE_UUID_FILE = '/persistent/machine-uuid'

/**
 * Where a host stands in a rollout of `name` `version`: SHA-256 of the machine UUID (lower case),
 * the name and the version, its first 48 bits as a fraction of 2^48, times 100. The host takes
 * part when this is below the share in percent.
 */
export function rolloutPoint(machineUuid: string, name: string, version: string): number {
  const h = crypto.createHash('sha256').update(`labhost-rollout\n${machineUuid.trim().toLowerCase()}\n${name}\n${version}`).digest()
  return (h.readUIntBE(0, 6) / 2 ** 48) * 100
}

export const inRollout = (point: number, share: number): boolean => point < share

export function readMachineUuid(file: string): string {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8').trim()
  } catch (e) {
    throw new LabhostError(
      'notFound',
      `${file} cannot be read (${(e as Error).message}): the machine UUID decides whether this host is in a rollout stage`,
      'the installer writes it on /persistent; without it this host cannot follow a channel (update it from a URL instead)',
      {},
      { cause: e },
    )
  }
  if (!/^[0-9A-Fa-f-]{32,36}$/.test(text))
    throw new LabhostError(
      'io',
      `${file} holds no machine UUID (${JSON.stringify(text.slice(0, 40))})`,
      'the installer writes one; reinstall with --new-identity or restore the file',
    )
  return text
}

export interface ChannelUpdateOptions extends Omit<UpdateOptions, 'source'> {
  channel: string
  machineUuidFile: string
  /** The clock the window is judged by (a test seam); default: now. */
  now?: Date
  ignoreWindow?: boolean
}

export interface ChannelOutcome {
  channel: {
    url: string
    serial: number
    createdAt: string
    image: Channel['image'] & { location: string }
    share: number
    window: string | null
    paused: boolean
  }
  host: { machineUuid: string; rolloutPoint: number; inStage: boolean; version: string | null; windowOpen: boolean; checkedAt: string }
  decision: Decision
  reason: string
  /** The update that ran (or its plan, with dryRun), when the decision was to update. */
  update?: UpdateResult
  /** Reboot into the new slot now: inside the window (or without one). */
  mayReboot: boolean
}

/** Fetch and verify the channel, decide, and (deciding to) run the update. */
export async function runChannelUpdate(o: ChannelUpdateOptions): Promise<ChannelOutcome> {
  const now = o.now ?? new Date()
  const channel = await readChannel(o.channel, readPublicKey(o.trustedKey), { ...o.fetch, log: o.log })
  refuseReplay(channel, o.channel, o.paths.stateRoot)
  const machineUuid = readMachineUuid(o.machineUuidFile)
  const point = rolloutPoint(machineUuid, channel.image.name, channel.image.version)
  const inStage = inRollout(point, channel.share)
  const windowOpen = !channel.window || inWindow(channel.window, now)
  const version = readVersion(o.paths)
  const location = imageLocation(channel, o.channel)
  const c = channel
  const out: ChannelOutcome = {
    channel: {
      url: o.channel,
      serial: c.serial,
      createdAt: c.createdAt,
      image: { ...c.image, location },
      share: c.share,
      window: c.window ? formatWindow(c.window) : null,
      paused: c.paused,
    },
    host: { machineUuid, rolloutPoint: point, inStage, version, windowOpen, checkedAt: now.toISOString() },
    decision: 'update',
    reason: '',
    mayReboot: false,
  }
  const decide = (d: Decision, reason: string) => {
    out.decision = d
    out.reason = reason
    return out
  }
  const lastResult = readLastResult(o.paths)
  const target = `${c.image.name} ${c.image.version}`
  if (c.paused) decide('paused', `the channel is paused (serial ${c.serial}); no update starts`)
  else if (!inStage) decide('not-in-stage', `not in this rollout stage: rollout point ${point.toFixed(2)} is not below the share ${c.share} %`)
  else if (version === c.image.version) decide('up-to-date', `up to date: running ${target}`)
  else if (version !== null && compareVersions(version, c.image.version) > 0 && !o.allowDowngrade)
    decide('newer-running', `running ${version}, newer than the channel's ${target} (--allow-downgrade to follow the channel down)`)
  else if (lastResult?.RESULT === 'rolled-back' && lastResult.VERSION === c.image.version)
    decide(
      'rolled-back-here',
      `${target} was rolled back on this host (${lastResult.REASON ?? 'its trial failed'}); not trying it again until the channel names another version`,
    )
  else if (!windowOpen && !o.ignoreWindow) decide('waiting-for-window', `waiting for the window ${formatWindow(c.window!)}; it is ${now.toString()}`)
  else
    decide(
      'update',
      `in the rollout (point ${point.toFixed(2)} below ${c.share} %)${windowOpen ? '' : ', outside the window (--ignore-window)'}: updating to ${target} from ${location}`,
    )
  out.mayReboot = windowOpen
  const record = (d: Decision) => {
    if (!o.dryRun) writeLastCheck(o.paths.stateRoot, { checkedAt: now.toISOString(), decision: d, serial: c.serial, version: c.image.version, share: c.share })
  }
  if (!o.dryRun) rememberSerial(c, o.channel, o.paths.stateRoot)
  if (out.decision !== 'update') {
    record(out.decision)
    return out
  }
  o.log?.(out.reason)
  try {
    out.update = await runUpdate({ ...o, source: location, expect: { name: c.image.name, version: c.image.version } })
  } catch (e) {
    record('update-failed')
    throw e
  }
  if (!o.dryRun) out.decision = 'updated'
  record(out.decision)
  return out
}

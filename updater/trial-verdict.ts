// The verdict on a trial boot, taken on the booted host with nobody at it. The initramfs counts
// boots; that catches a version that does not reach userspace, but not one that boots and is
// unhealthy (sshd or the network broken): it would stay, on trial, unreachable. `labhost
// trial-check` runs the image's health checks (/etc/labhost/trial.yaml) until they all pass —
// the slot is marked good — or until the deadline after boot passes — the saved pre-switch
// sector is written back (the one-sector protocol, DESIGN §3, as the initramfs's rollback does)
// and the host reboots into the previous version. Peers: systemd's boot assessment, RAUC's advice
// to pair the boot counter with a watchdog.
import fs from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { arrayCrc, openGptDisk, parseEntries, readGpt } from '../bootloader/gpt.ts'
import { applySectorWrites } from '../bootloader/sector-writes.ts'
import { slotStatus, type SlotId } from '../bootloader/slots.ts'
import { loadConfig } from '../lib/config.ts'
import { withDiskLock } from '../lib/disk-lock.ts'
import { LabhostError } from '../lib/errors.ts'
import { runStatus } from '../lib/exec.ts'
import { TRIAL_DIR, TRIAL_FILE } from '../image-format/trial-state.ts'
import { markGood, parseShellVars, readBootInfo, readTrial, type HostPaths } from './host-state.ts'
import { syncDir, writeDurable } from '../lib/durable.ts'

export const TRIAL_CONFIG = '/etc/labhost/trial.yaml'

export const TrialConfigSchema = z
  .object({
    deadlineSeconds: z
      .number()
      .int()
      .min(30)
      .max(86_400)
      .default(600)
      .describe("seconds after boot (the kernel's uptime) by which every check must pass, else the slot is rolled back"),
    intervalSeconds: z.number().int().min(1).max(600).default(5).describe('pause between two rounds of checks'),
    checks: z
      .array(
        z
          .object({
            name: z.string().min(1).max(64).describe('what is checked, for the log and the rollback reason'),
            run: z.array(z.string().min(1)).min(1).describe('a command and its arguments (no shell); exit 0 means healthy'),
            timeoutSeconds: z.number().int().min(1).max(600).default(30).describe('a check that runs longer has failed'),
          })
          .strict(),
      )
      .default([])
      .describe('the health checks; with none, the slot is marked good as soon as userspace runs this'),
  })
  .strict()
  .describe('labhost trial.yaml: the health verdict on a trial boot (labhost trial-check)')
export type TrialConfig = z.infer<typeof TrialConfigSchema>

export interface VerdictOptions {
  paths: HostPaths
  config: TrialConfig
  log?: (line: string) => void
  /** Seconds since boot (default: /proc/uptime). */
  uptime?: () => number
  sleep?: (ms: number) => Promise<void>
  /** Run the checks and say the verdict; write nothing (neither mark good nor roll back). */
  dryRun?: boolean
}

export interface Verdict {
  verdict: 'no-trial' | 'good' | 'rolled-back'
  slot: string
  reason: string
}

export function loadTrialConfig(file: string): TrialConfig {
  return fs.existsSync(file) ? loadConfig(file, TrialConfigSchema) : TrialConfigSchema.parse({})
}

/** Whether the booted slot is on trial (a verdict is due). */
export function trialPendingHere(paths: HostPaths): boolean {
  const trial = readTrial(paths)
  try {
    return trial !== null && trial.slot === readBootInfo(paths).slot
  } catch {
    return false
  }
}

/** A configuration whose one check fails with `why` and whose deadline has passed: a rollback now. */
export function failingConfig(why: string): TrialConfig {
  return { deadlineSeconds: 0, intervalSeconds: 1, checks: [{ name: why, run: ['false'], timeoutSeconds: 5 }] }
}

const bootUptime = () => Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0])

/** The first check that fails, with what it said; null when all pass. */
async function failingCheck(config: TrialConfig): Promise<string | null> {
  for (const c of config.checks) {
    // a check's exit status is its answer: one that cannot start or runs over has failed
    const r = await runStatus(c.run[0]!, c.run.slice(1), { timeoutMs: c.timeoutSeconds * 1000, all: true })
    if (r.exitCode !== 0) {
      const said = r.all.trim().split('\n').pop()?.slice(0, 200) ?? ''
      const why = r.timedOut ? `ran over ${c.timeoutSeconds} s` : r.startError ? `could not be started (${r.startError})` : `exited ${r.exitCode ?? r.signal}`
      return `${c.name} (${c.run.join(' ')}) ${why}${said ? `: ${said}` : ''}`
    }
  }
  return null
}

export async function judgeTrial(o: VerdictOptions): Promise<Verdict> {
  const log = o.log ?? (() => {})
  const uptime = o.uptime ?? bootUptime
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)))
  const boot = readBootInfo(o.paths)
  const trial = readTrial(o.paths)
  if (!trial || trial.slot !== boot.slot)
    return { verdict: 'no-trial', slot: boot.slot, reason: trial ? `the trial is for slot ${trial.slot}, slot ${boot.slot} runs` : 'no trial pending' }
  log(`slot ${boot.slot} (version ${trial.version}) is on trial: ${o.config.checks.length} check(s), deadline ${o.config.deadlineSeconds} s after boot`)
  for (;;) {
    const failing = await failingCheck(o.config)
    if (failing === null) {
      if (o.dryRun) return { verdict: 'good', slot: boot.slot, reason: `every check passes: slot ${boot.slot} would be marked good` }
      const r = markGood(o.paths)
      log(`LABHOST-TRIAL-GOOD ${r.reason}`)
      return { verdict: 'good', slot: boot.slot, reason: r.reason }
    }
    const now = uptime()
    if (now >= o.config.deadlineSeconds) {
      const reason = `health check failed at ${Math.round(now)} s after boot (deadline ${o.config.deadlineSeconds} s): ${failing}`
      log(`LABHOST-TRIAL-FAILED ${reason}`)
      if (o.dryRun) return { verdict: 'rolled-back', slot: boot.slot, reason: `${reason}; would roll back` }
      const to = await rollBack(o.paths, reason)
      log(`LABHOST-TRIAL-ROLLED-BACK from=${boot.slot} to=${to}`)
      return { verdict: 'rolled-back', slot: boot.slot, reason }
    }
    log(`not healthy yet (${Math.round(now)} s after boot): ${failing}`)
    await sleep(Math.min(o.config.intervalSeconds, o.config.deadlineSeconds - now + 0.1) * 1000)
  }
}

/**
 * Write back the sector the update saved before its switch (primary, then the backup mirror),
 * after checking that the disk still holds the sector the switch wrote and that the saved one
 * keeps the array's CRC and flags exactly the other root slot; then record the result and end
 * the trial. Holds the disk's lock. Returns the slot that boots next.
 */
export async function rollBack(paths: HostPaths, reason: string): Promise<SlotId> {
  const boot = readBootInfo(paths)
  return withDiskLock(boot.disk, 'labhost trial-check (rollback)', async () => {
    const dir = path.join(paths.stateRoot, TRIAL_DIR)
    const vars = parseShellVars(fs.readFileSync(path.join(paths.stateRoot, TRIAL_FILE), 'utf8'))
    const committed = fs.readFileSync(path.join(dir, 'committed.sector'))
    const rollback = fs.readFileSync(path.join(dir, 'rollback.sector'))
    const disk = openGptDisk(boot.disk)
    let to: SlotId
    try {
      const gpt = readGpt(disk)
      const ph = gpt.primary.header
      const bh = gpt.backup.header
      const ss = disk.sectorSize
      const refuse = (why: string) =>
        new LabhostError(
          'gptChanged',
          `not rolling back slot ${boot.slot} of ${boot.disk}: ${why}`,
          'inspect with `labhost slots status`; switch by hand with `labhost slots switch --ignore-trial` if the other slot is good; nothing was written',
        )
      if (!ph || !bh || !gpt.primary.entries) throw refuse('its GPT headers cannot be read')
      const arraySectors = BigInt(Math.ceil(gpt.primary.entries.length / ss))
      const primaryLba = BigInt(/^\d+$/.test(vars.PRIMARY_LBA ?? '') ? vars.PRIMARY_LBA! : -1)
      const backupLba = BigInt(/^\d+$/.test(vars.BACKUP_LBA ?? '') ? vars.BACKUP_LBA! : -1)
      const index = primaryLba - ph.entriesLba
      if (index < 0n || index >= arraySectors || backupLba !== bh.entriesLba + index) {
        throw refuse(`the saved sector addresses (LBA ${primaryLba}, ${backupLba}) are not one sector of the two entry arrays`)
      }
      if (committed.length !== ss || rollback.length !== ss) throw refuse(`the saved sectors are not ${ss} bytes`)
      if (!disk.readSectors(primaryLba, 1).equals(committed)) throw refuse('the GPT sector is not the one the update wrote')
      const restored = Buffer.from(gpt.primary.entries)
      const at = Number(index) * ss
      rollback.copy(restored, at, 0, Math.min(ss, restored.length - at))
      if (arrayCrc(restored) !== ph.entriesCrc) throw refuse("the saved sector would not keep the entry array's CRC")
      const after = slotStatus({ ...gpt, entries: parseEntries(restored, ph.entrySize) })
      if (after.active === null || after.active === boot.slot)
        throw refuse(`the saved sector would not boot the other slot (${after.problem ?? `it flags ${after.active}`})`)
      to = after.active
      await applySectorWrites(disk, [
        { region: 'primary-array', lba: primaryLba, data: rollback, why: `roll back: boot slot ${to} instead of ${boot.slot}` },
        { region: 'backup-array', lba: backupLba, data: rollback, why: 'mirror into the backup array' },
      ])
    } finally {
      disk.close()
    }
    const keep = ['VERSION', 'FROM_VERSION', 'UPDATED_AT']
      .filter((k) => vars[k])
      .map((k) => `${k}=${vars[k]}\n`)
      .join('')
    writeDurable(
      path.join(dir, 'last-result'),
      `RESULT=rolled-back\nFROM=${boot.slot}\nTO=${to}\n${keep}REASON=${reason.replace(/[^\x20-\x7e]/g, '?')}\nROLLED_BACK_AT=${new Date().toISOString()}\n`,
    )
    fs.rmSync(path.join(paths.stateRoot, TRIAL_FILE))
    syncDir(dir)
    return to
  })
}

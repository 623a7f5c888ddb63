// What a running host knows about itself: the slot its initramfs booted (/run/labhost/boot), the
// installed version, and the trial state on the state partition. Paths can be pointed elsewhere
// for tests and for inspecting a disk from outside.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { writeDurable, syncDir } from '../lib/durable.ts'
import { TRIAL_DIR, TRIAL_FILE } from '../image-format/trial-state.ts'

export interface HostPaths {
  /** The initramfs's record of what it booted. */
  bootFile: string
  /** Mount point of the state partition (the layout's stateMount). */
  stateRoot: string
  versionFile: string
}

export const DEFAULT_PATHS: HostPaths = { bootFile: '/run/labhost/boot', stateRoot: '/var/log', versionFile: '/etc/labhost/version' }

export function parseShellVars(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\n')
      .map((l) => /^([A-Z_]+)=(.*)$/.exec(l.trim()))
      .filter((m) => m !== null)
      .map((m) => [m![1]!, m![2]!]),
  )
}

export interface BootInfo {
  slot: 'A' | 'B'
  device: string
  disk: string
}

export function readBootInfo(p: HostPaths): BootInfo {
  if (!fs.existsSync(p.bootFile)) {
    throw new LabhostError(
      'notFound',
      `${p.bootFile} is missing: this system was not booted by the labhost initramfs`,
      'run it on a labhost host (booted by its initramfs); `labhost slots status --disk DEV` reads the slots of any disk',
    )
  }
  const v = parseShellVars(fs.readFileSync(p.bootFile, 'utf8'))
  if (v.SLOT !== 'A' && v.SLOT !== 'B') throw new LabhostError('io', `${p.bootFile} names no slot`, 'reboot; the initramfs rewrites it at every boot')
  return { slot: v.SLOT, device: v.DEVICE ?? '', disk: v.DISK ?? '' }
}

export interface TrialInfo {
  slot: string
  bootsLeft: number
  version: string
}

export function readTrial(p: HostPaths): TrialInfo | null {
  const f = path.join(p.stateRoot, TRIAL_FILE)
  if (!fs.existsSync(f)) return null
  const v = parseShellVars(fs.readFileSync(f, 'utf8'))
  return { slot: v.TRIAL_SLOT ?? '', bootsLeft: Number(v.BOOTS_LEFT ?? 0), version: v.VERSION ?? '' }
}

export function readLastResult(p: HostPaths): Record<string, string> | null {
  const f = path.join(p.stateRoot, TRIAL_DIR, 'last-result')
  return fs.existsSync(f) ? parseShellVars(fs.readFileSync(f, 'utf8')) : null
}

export function readVersion(p: HostPaths): string | null {
  return fs.existsSync(p.versionFile) ? fs.readFileSync(p.versionFile, 'utf8').trim() : null
}

/** The running image's name: the first word of /etc/labhost/recipe (beside the version file), which image builds write. */
export function readImageName(p: HostPaths): string | null {
  const f = path.join(path.dirname(p.versionFile), 'recipe')
  return fs.existsSync(f) ? fs.readFileSync(f, 'utf8').trim().split(/\s+/)[0] || null : null
}

/** End a trial: the booted slot is good. Returns what was done (with dryRun: would be done; nothing is written). */
export function markGood(p: HostPaths, o: { dryRun?: boolean } = {}): { marked: boolean; slot: string; reason: string } {
  const boot = readBootInfo(p)
  const trial = readTrial(p)
  if (!trial) return { marked: false, slot: boot.slot, reason: 'no trial pending' }
  if (trial.slot !== boot.slot) {
    return { marked: false, slot: boot.slot, reason: `the trial is for slot ${trial.slot}, but slot ${boot.slot} is running` }
  }
  if (o.dryRun) return { marked: false, slot: boot.slot, reason: `slot ${boot.slot} (version ${trial.version}) would be marked good` }
  const dir = path.join(p.stateRoot, TRIAL_DIR)
  const record = parseShellVars(fs.readFileSync(path.join(p.stateRoot, TRIAL_FILE), 'utf8'))
  const carried = ['FROM_VERSION', 'UPDATED_AT', 'UPDATE_SECONDS']
    .filter((k) => record[k])
    .map((k) => `${k}=${record[k]}\n`)
    .join('')
  writeDurable(path.join(dir, 'last-result'), `RESULT=good\nSLOT=${boot.slot}\nVERSION=${trial.version}\n${carried}MARKED_AT=${new Date().toISOString()}\n`)
  fs.rmSync(path.join(p.stateRoot, TRIAL_FILE))
  syncDir(dir)
  return { marked: true, slot: boot.slot, reason: `slot ${boot.slot} (version ${trial.version}) marked good` }
}

// The stick's memory of installs it started and has not finished, per disk: written durably to the
// report directory before the first disk write, removed once the install completed. A re-run
// after a power cut reads it, so a disk the cut left half-partitioned by this stick (a GPT
// without its backup, a backup without its primary, a filesystem half made) is recognised as
// its own unfinished work and imaged again — never mistaken for somebody's data and refused —
// and the partitions that install kept are kept again.
import fs from 'node:fs'
import path from 'node:path'
import { syncDir, writeDurable } from '../lib/durable.ts'
import type { BlockDisk } from './disks.ts'

export const UNFINISHED_FILE = 'unfinished-install.json'

/** Per disk, so a stick taken from one half-imaged PC to the next still knows both. */
export interface UnfinishedInstall {
  disks: { role: string; identity: string; kept: string[]; startedAt: string }[]
}

/** A disk as the stick recognises it again after a reboot (kernel names may change; serials do not). */
export function diskIdentity(d: BlockDisk): string {
  return d.serial ? `${d.model}|${d.serial}|${d.sizeBytes}` : `${d.name}|${d.sizeBytes}`
}

export function readUnfinished(reportDir: string | undefined): UnfinishedInstall | null {
  if (!reportDir) return null
  try {
    const r = JSON.parse(fs.readFileSync(path.join(reportDir, UNFINISHED_FILE), 'utf8')) as UnfinishedInstall
    return Array.isArray(r.disks) ? r : null
  } catch {
    // none, or torn by the very power cut it is for: then the disks are judged as they are
    return null
  }
}

function writeUnfinished(reportDir: string, record: UnfinishedInstall): void {
  fs.mkdirSync(reportDir, { recursive: true })
  writeDurable(path.join(reportDir, UNFINISHED_FILE), JSON.stringify(record, null, 2) + '\n')
}

/** Record these disks as being installed (replacing what the record said of them). */
export function markUnfinished(reportDir: string, disks: UnfinishedInstall['disks']): void {
  const others = (readUnfinished(reportDir)?.disks ?? []).filter((d) => !disks.some((x) => x.identity === d.identity))
  writeUnfinished(reportDir, { disks: [...others, ...disks] })
}

/** These disks are done: forget them (and the file, when no other disk is left in it). */
export function clearUnfinished(reportDir: string, identities: string[]): void {
  const left = (readUnfinished(reportDir)?.disks ?? []).filter((d) => !identities.includes(d.identity))
  if (left.length) return writeUnfinished(reportDir, { disks: left })
  fs.rmSync(path.join(reportDir, UNFINISHED_FILE), { force: true })
  syncDir(reportDir)
}

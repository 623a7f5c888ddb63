// The trial-boot state the initramfs reads (image-build/initramfs-init.ts): a shell-readable
// file on the state partition, plus the two GPT sectors it needs to roll back without any
// arithmetic — the sector as the switch wrote it (to check nothing else changed since) and the
// sector as it was before (switching back restores it byte for byte, DESIGN §3).
import fs from 'node:fs'
import path from 'node:path'
import { writeDurable } from '../lib/durable.ts'

/** Where the trial state lives, under the state partition's mount (the log partition); the initramfs reads it there too. */
export const TRIAL_DIR = 'labhost'
export const TRIAL_FILE = 'labhost/trial'

export interface TrialState {
  slot: 'A' | 'B'
  bootsLeft: number
  version: string
  primaryLba: bigint
  backupLba: bigint
  committedSector: Buffer
  rollbackSector: Buffer
  /** For the record: what ran before, when the update was written and how long it took. */
  fromVersion?: string | null
  updatedAt?: Date
  updateSeconds?: number
}

const safe = (v: string) => v.replace(/[^0-9A-Za-z.+~:-]/g, '')

/** Write the state under a mounted state partition; the trial file goes last (it arms the trial). */
export function writeTrialState(stateRoot: string, s: TrialState): void {
  const dir = path.join(stateRoot, TRIAL_DIR)
  fs.mkdirSync(dir, { recursive: true })
  writeDurable(path.join(dir, 'committed.sector'), s.committedSector)
  writeDurable(path.join(dir, 'rollback.sector'), s.rollbackSector)
  writeDurable(
    path.join(stateRoot, TRIAL_FILE),
    [
      `TRIAL_SLOT=${s.slot}`,
      `BOOTS_LEFT=${s.bootsLeft}`,
      `VERSION=${safe(s.version)}`,
      `PRIMARY_LBA=${s.primaryLba}`,
      `BACKUP_LBA=${s.backupLba}`,
      ...(s.fromVersion ? [`FROM_VERSION=${safe(s.fromVersion)}`] : []),
      ...(s.updatedAt ? [`UPDATED_AT=${safe(s.updatedAt.toISOString())}`] : []),
      ...(s.updateSeconds !== undefined ? [`UPDATE_SECONDS=${s.updateSeconds.toFixed(1)}`] : []),
      '',
    ].join('\n'),
  )
}

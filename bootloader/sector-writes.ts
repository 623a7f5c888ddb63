// A plan's writes: whole logical sectors, applied strictly in order, each durable before the next.
import type { Disk } from '../lib/blockdev.ts'
import { holdAt } from '../lib/faults.ts'

export interface SectorWrite {
  region: 'primary-array' | 'primary-header' | 'backup-array' | 'backup-header' | 'mbr'
  lba: bigint
  data: Buffer
  why: string
}

export async function applySectorWrites(disk: Disk, writes: readonly SectorWrite[], log: (line: string) => void = () => {}): Promise<void> {
  for (const w of writes) {
    // fault injection (test builds only): the campaign resets the machine while it waits here
    holdAt(w.region)
    log(`writing ${w.region} LBA ${w.lba} (${w.data.length} bytes): ${w.why}`)
    await disk.writeSectorDurable(w.lba, w.data)
  }
  holdAt('written')
}

export function describeWrite(w: SectorWrite): Record<string, unknown> {
  return { region: w.region, lba: w.lba.toString(), bytes: w.data.length, why: w.why }
}

// The installer's memory of installs it started and has not finished, per disk: written durably
// to the report store (the stick's reports/, or the image server's for a network install) before
// the first disk write, removed once the install completed. A re-run after a power cut reads it,
// so a disk the cut left half-partitioned by this installer (a GPT without its backup, a backup
// without its primary, a filesystem half made) is recognised as its own unfinished work and
// imaged again — never mistaken for somebody's data and refused — and the partitions that
// install kept are kept again.
import type { BlockDisk } from './disks.ts'
import type { ReportStore } from './report-store.ts'

export const UNFINISHED_FILE = 'unfinished-install.json'

/** Per disk, so a stick taken from one half-imaged PC to the next still knows both. */
export interface UnfinishedInstall {
  disks: { role: string; identity: string; kept: string[]; startedAt: string }[]
}

/** A disk as the installer recognises it again after a reboot (kernel names may change; serials do not). */
export function diskIdentity(d: BlockDisk): string {
  return d.serial ? `${d.model}|${d.serial}|${d.sizeBytes}` : `${d.name}|${d.sizeBytes}`
}

const fileOf = (store: ReportStore) => `${store.ownPrefix}${UNFINISHED_FILE}`

export async function readUnfinished(store: ReportStore | undefined): Promise<UnfinishedInstall | null> {
  if (!store) return null
  const text = await store.read(fileOf(store))
  if (text === null) return null
  try {
    const r = JSON.parse(text) as UnfinishedInstall
    return Array.isArray(r.disks) && r.disks.length ? r : null
  } catch {
    // torn by the very power cut it is for: then the disks are judged as they are
    return null
  }
}

/** Record these disks as being installed (replacing what the record said of them). */
export async function markUnfinished(store: ReportStore, disks: UnfinishedInstall['disks']): Promise<void> {
  const others = ((await readUnfinished(store))?.disks ?? []).filter((d) => !disks.some((x) => x.identity === d.identity))
  await store.write(fileOf(store), JSON.stringify({ disks: [...others, ...disks] }, null, 2) + '\n')
}

/** These disks are done: forget them (and the file, when no other disk is left in it). */
export async function clearUnfinished(store: ReportStore, identities: string[]): Promise<void> {
  const left = ((await readUnfinished(store))?.disks ?? []).filter((d) => !identities.includes(d.identity))
  if (left.length) return store.write(fileOf(store), JSON.stringify({ disks: left }, null, 2) + '\n')
  await store.remove(fileOf(store), '{ "disks": [] }\n')
}

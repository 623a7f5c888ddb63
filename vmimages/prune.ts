// Overlay hygiene: plan, then apply. The rules, in order:
// 1. A user volume whose base was replaced or removed (a *.qcow2 in the backing directory that the
//    catalogue no longer lists, or a file gone from it) is useless — a qcow2 overlay is valid only
//    on the exact base it was made on — and is deleted, unless a running QEMU holds it open (its
//    image lock) or a volume resting on it is kept.
// 2. Disk pressure: while free space on the user partition is below the reserve, the least
//    recently written volume on a current base (mtime) that no QEMU holds and nothing rests on is
//    deleted, one at a time, until the reserve is met or none is left. Without a reserve (0), no
//    volume on a current base is ever touched.
// 3. A base the catalogue no longer lists is deleted when no volume under the user directory rests
//    on it any more (and none there is unreadable), and no QEMU holds it open.
// Volumes whose chain ends outside the backing directory, volumes without a backing file, and
// files qemu-img cannot read are never touched. Every deletion renames the file to a hidden name
// first, checks the lock again on it (a VM started since the plan finds no file, one started
// before holds the lock), and only then unlinks it — or renames it back.
import fs from 'node:fs'
import path from 'node:path'
import { lockDisk } from '../lib/disk-lock.ts'
import { LabhostError } from '../lib/errors.ts'
import { syncDir } from '../lib/durable.ts'
import { readCatalogue } from './catalogue.ts'
import { holder } from './qcow2.ts'
import { freeBytes } from './space.ts'
import { scanBases, scanVolumes, type Volume, type VolumeClass } from './volumes.ts'

export interface PruneOptions {
  backingDir: string
  userDir: string
  catalogue: string
  /** Free bytes wanted on the user partition; 0: no pressure rule. */
  reserveBytes: number
  log?: (line: string) => void
}

export interface VolumeStep {
  path: string
  class: VolumeClass
  base: string | null
  /** The user volume it rests on directly, if any. */
  parent: string | null
  bytes: number
  mtime: string
  action: 'delete' | 'keep'
  reason: string
}

export interface BaseStep {
  path: string
  current: boolean
  action: 'delete' | 'keep'
  reason: string
}

export interface PrunePlan {
  backingDir: string
  userDir: string
  volumes: VolumeStep[]
  bases: BaseStep[]
  /** The pressure rule: bytes wanted free on the user partition, free now, free after the plan (estimated). */
  reserve: { wantBytes: number; freeBytes: number; freeAfterBytes: number; met: boolean }
}

export interface PruneResult extends PrunePlan {
  applied: boolean
  /** Deletions the plan made that were not done (a VM opened the file since the plan). */
  skipped: { path: string; reason: string }[]
}

const iso = (ms: number) => new Date(ms).toISOString()

async function lockState(file: string): Promise<string | null> {
  const h = await holder(file)
  return h.state === 'free' ? null : h.state === 'in-use' ? 'in use by a running QEMU (image lock held)' : `kept: its lock could not be checked (${h.detail})`
}

export async function planPrune(o: PruneOptions): Promise<PrunePlan> {
  const catalogue = readCatalogue(o.catalogue)
  const bases = scanBases(o.backingDir, catalogue)
  const volumes = await scanVolumes(o.userDir, o.backingDir, bases)
  const children = new Map<string, Volume[]>()
  for (const v of volumes) if (v.parent) children.set(v.parent, [...(children.get(v.parent) ?? []), v])
  const steps = new Map<string, VolumeStep>()
  const step = (v: Volume, action: 'delete' | 'keep', reason: string) =>
    steps.set(v.path, { path: v.path, class: v.class, base: v.base, parent: v.parent, bytes: v.bytes, mtime: iso(v.mtimeMs), action, reason })
  const deleted = (p: string) => steps.get(p)?.action === 'delete'
  const childKept = (v: Volume) => (children.get(v.path) ?? []).some((c) => !deleted(c.path))
  const depth = (v: Volume): number => (v.parent ? 1 + depth(volumes.find((p) => p.path === v.parent)!) : 0)
  const byDepth = [...volumes].sort((a, b) => depth(b) - depth(a))
  const freed = () => volumes.filter((v) => deleted(v.path) && v.links === 1).reduce((n, v) => n + v.bytes, 0)

  for (const v of volumes) {
    if (v.class === 'current') step(v, 'keep', `rests on the current base ${path.basename(v.base!)}`)
    else if (v.class === 'foreign') step(v, 'keep', `rests on ${v.base}, outside ${o.backingDir}: not labhost's`)
    else if (v.class === 'standalone') step(v, 'keep', 'no backing file: not an overlay')
    else if (v.class === 'unreadable') step(v, 'keep', `unreadable: ${v.error}`)
  }
  // rule 1: volumes on replaced or removed bases, the ones resting on others first
  for (const v of byDepth.filter((x) => x.class === 'stale')) {
    if (childKept(v)) {
      step(v, 'keep', 'a volume resting on it is kept')
      continue
    }
    const busy = await lockState(v.path)
    const gone = !fs.existsSync(v.base!)
    step(v, busy ? 'keep' : 'delete', busy ?? `its base ${path.basename(v.base!)} was ${gone ? 'removed' : 'replaced (not in the catalogue)'}`)
  }
  // rule 2: the reserve, least recently written first
  const freeNow = freeBytes(o.userDir)
  const checked = new Set<string>()
  while (o.reserveBytes > 0 && freeNow + freed() < o.reserveBytes) {
    const next = volumes
      .filter((v) => v.class === 'current' && !deleted(v.path) && !checked.has(v.path) && !childKept(v))
      .sort((a, b) => a.mtimeMs - b.mtimeMs)[0]
    if (!next) break
    checked.add(next.path)
    const busy = await lockState(next.path)
    if (busy) step(next, 'keep', `rests on the current base ${path.basename(next.base!)}; ${busy}`)
    else step(next, 'delete', `for the reserve: least recently written (mtime ${iso(next.mtimeMs)}) on the current base ${path.basename(next.base!)}`)
  }
  // rule 3: bases nobody rests on any more
  const unreadable = volumes.filter((v) => v.class === 'unreadable')
  const baseSteps: BaseStep[] = []
  for (const b of bases) {
    if (b.current) {
      baseSteps.push({ path: b.path, current: true, action: 'keep', reason: 'in the catalogue' })
      continue
    }
    const resting = volumes.filter((v) => v.base === b.path && !deleted(v.path))
    let reason: string | null = null
    if (resting.length)
      reason = `${resting.length} volume(s) rest on it: ${resting
        .slice(0, 3)
        .map((v) => v.path)
        .join(', ')}${resting.length > 3 ? ', …' : ''}`
    else if (unreadable.length) reason = `a volume under ${o.userDir} could not be read, so what rests on it is unknown: ${unreadable[0]!.path}`
    else reason = await lockState(b.path)
    baseSteps.push({ path: b.path, current: false, action: reason ? 'keep' : 'delete', reason: reason ?? 'not in the catalogue, and no volume rests on it' })
  }
  const freeAfter = freeNow + freed()
  return {
    backingDir: o.backingDir,
    userDir: o.userDir,
    volumes: byDepth.map((v) => steps.get(v.path)!),
    bases: baseSteps,
    reserve: { wantBytes: o.reserveBytes, freeBytes: freeNow, freeAfterBytes: freeAfter, met: freeAfter >= o.reserveBytes },
  }
}

/**
 * Delete `file` unless a QEMU holds it: rename it to a hidden name in its directory (a VM starting
 * now finds nothing to open), check the lock on it, then unlink it or rename it back.
 */
async function deleteUnlessHeld(file: string): Promise<string | null> {
  const dir = path.dirname(file)
  const aside = path.join(dir, `.${path.basename(file)}.labhost-delete`)
  fs.renameSync(file, aside)
  const busy = await lockState(aside)
  if (busy) {
    if (!fs.existsSync(file)) fs.renameSync(aside, file)
    syncDir(dir)
    return busy
  }
  fs.unlinkSync(aside)
  syncDir(dir)
  return null
}

export async function applyPrune(plan: PrunePlan, o: PruneOptions): Promise<PruneResult> {
  const skipped: { path: string; reason: string }[] = []
  const kept = new Set(plan.volumes.filter((v) => v.action === 'keep').map((v) => v.path))
  const keep = (p: string, reason: string) => {
    skipped.push({ path: p, reason })
    kept.add(p)
  }
  // children come before their parents in the plan; a parent whose child stayed stays too
  for (const v of plan.volumes.filter((x) => x.action === 'delete')) {
    if (plan.volumes.some((c) => c.parent === v.path && kept.has(c.path))) {
      keep(v.path, 'a volume resting on it was kept')
      continue
    }
    const busy = await deleteUnlessHeld(v.path)
    if (busy) keep(v.path, busy)
    else o.log?.(`deleted ${v.path}: ${v.reason}`)
  }
  for (const b of plan.bases.filter((x) => x.action === 'delete')) {
    const resting = plan.volumes.filter((v) => v.base === b.path && kept.has(v.path))
    if (resting.length) {
      skipped.push({ path: b.path, reason: `${resting.length} volume(s) rest on it` })
      continue
    }
    const busy = await deleteUnlessHeld(b.path)
    if (busy) skipped.push({ path: b.path, reason: busy })
    else o.log?.(`deleted the base ${b.path}: ${b.reason}`)
  }
  const free = freeBytes(o.userDir)
  return { ...plan, reserve: { ...plan.reserve, freeAfterBytes: free, met: free >= plan.reserve.wantBytes }, applied: true, skipped }
}

/** labhost vm-image prune: the plan under the backing directory's lock (one pull or prune at a time), applied unless dryRun. */
export async function pruneVmImages(o: PruneOptions & { dryRun: boolean }): Promise<PruneResult> {
  for (const [flag, dir] of [
    ['--dir', o.backingDir],
    ['--user-dir', o.userDir],
  ] as const) {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
      throw new LabhostError(
        'notFound',
        `${flag} ${dir} is not a directory`,
        'give the backing and user directories (default /qcow2/backing, /qcow2/user); nothing was changed',
      )
  }
  const lock = await lockDisk(o.backingDir, 'labhost vm-image prune')
  try {
    const plan = await planPrune(o)
    return o.dryRun ? { ...plan, applied: false, skipped: [] } : await applyPrune(plan, o)
  } finally {
    await lock.release()
  }
}

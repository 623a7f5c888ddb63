// What lies in /qcow2/backing and /qcow2/user, and what rests on what. A user volume is a qcow2
// overlay: valid only on the exact base it was created on, so it belongs to the base at the end
// of its backing chain (overlays on overlays are followed inside the user directory). The scan
// only reads headers (`qemu-img info -U`, which neither waits for nor disturbs a running VM).
import fs from 'node:fs'
import path from 'node:path'
import { isLabhostError } from '../lib/errors.ts'
import type { CatalogueEntry } from './catalogue.ts'
import { imageInfo } from './qcow2.ts'

/**
 * current: its base is in the catalogue. stale: its base is a base file labhost no longer lists,
 * or one that is gone from the backing directory. foreign: its chain ends outside the backing
 * directory. standalone: no backing file (not an overlay). unreadable: qemu-img could not read it.
 * Only current and stale volumes are ever deleted.
 */
export type VolumeClass = 'current' | 'stale' | 'foreign' | 'standalone' | 'unreadable'

export interface Volume {
  path: string
  class: VolumeClass
  /** The base at the end of its chain (absolute); null for standalone and unreadable volumes. */
  base: string | null
  /** The next file in its chain when that is another user volume. */
  parent: string | null
  /** Bytes it occupies (allocated blocks); what deleting it frees, unless it has other links. */
  bytes: number
  links: number
  /** Last modification (ms): the last time a VM wrote to it. */
  mtimeMs: number
  error?: string
}

export interface BaseFile {
  path: string
  current: boolean
  bytes: number
}

/** Regular *.qcow2 files under `dir`, at any depth (symlinks are not followed; hidden files are labhost's temporaries). */
function qcow2Files(dir: string): string[] {
  const out: string[] = []
  const walk = (d: string, depth: number) => {
    if (depth > 8) return
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.name.startsWith('.')) continue
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p, depth + 1)
      else if (e.isFile() && e.name.endsWith('.qcow2')) out.push(p)
    }
  }
  walk(dir, 0)
  return out.sort()
}

const real = (p: string): string => {
  try {
    return fs.realpathSync(p)
  } catch {
    return path.resolve(p)
  }
}

/** The bases in `backingDir` (its *.qcow2 files, not in subdirectories), current when the catalogue lists them. */
export function scanBases(backingDir: string, catalogue: CatalogueEntry[]): BaseFile[] {
  const listed = new Set(catalogue.map((e) => real(e.file)))
  return fs
    .readdirSync(backingDir, { withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.startsWith('.') && e.name.endsWith('.qcow2'))
    .map((e) => {
      const p = real(path.join(backingDir, e.name))
      return { path: p, current: listed.has(p), bytes: fs.statSync(p).blocks * 512 }
    })
    .sort((a, b) => a.path.localeCompare(b.path))
}

/** Every qcow2 volume under `userDir` with the base it rests on, classified against the bases. */
export async function scanVolumes(userDir: string, backingDir: string, bases: BaseFile[]): Promise<Volume[]> {
  const backing = real(backingDir)
  const currentBases = new Set(bases.filter((b) => b.current).map((b) => b.path))
  const files = qcow2Files(real(userDir))
  const infos = new Map<string, { backing: string | null; error?: string }>()
  for (const f of files) {
    try {
      const info = await imageInfo(f, { shared: true })
      infos.set(f, { backing: info.format === 'qcow2' && info.backingFile ? real(info.backingFile) : null })
    } catch (e) {
      if (!isLabhostError(e)) throw e
      infos.set(f, { backing: null, error: e.message })
    }
  }
  return files.map((f) => {
    const st = fs.statSync(f)
    const own = infos.get(f)!
    const common = { path: f, bytes: st.blocks * 512, links: st.nlink, mtimeMs: st.mtimeMs }
    if (own.error) return { ...common, class: 'unreadable', base: null, parent: null, error: own.error }
    if (!own.backing) return { ...common, class: 'standalone', base: null, parent: null }
    // follow the chain through other user volumes to the file it ends on
    let at = own.backing
    const seen = new Set([f])
    while (infos.has(at) && !seen.has(at)) {
      seen.add(at)
      const next = infos.get(at)!
      if (next.error) return { ...common, class: 'unreadable', base: null, parent: own.backing, error: `its backing volume ${at} is unreadable` }
      if (!next.backing) return { ...common, class: 'foreign', base: at, parent: own.backing }
      at = next.backing
    }
    if (seen.has(at)) return { ...common, class: 'unreadable', base: null, parent: own.backing, error: 'its backing chain is a loop' }
    const parent = infos.has(own.backing) ? own.backing : null
    if (path.dirname(at) !== backing) return { ...common, class: 'foreign', base: at, parent }
    return { ...common, class: currentBases.has(at) ? 'current' : 'stale', base: at, parent }
  })
}

// labhost vm-image pull: a signed base image onto this host's backing partition. Plan first —
// signature, kind, names, version against the catalogue, room — and refuse before a byte is
// downloaded; then download into a hidden temporary file beside the bases (every chunk checked
// against the signed manifest as it arrives), fsync, rename it into place, fsync the directory,
// and replace the catalogue durably. A power cut leaves the old set or the new one: before the
// catalogue is replaced the new file is not listed (a leftover is verified and reused by the next
// pull, or deleted by prune as an unlisted base); a leftover temporary file is resumed.
import fs from 'node:fs'
import path from 'node:path'
import { isLabhostError, LabhostError } from '../lib/errors.ts'
import { lockDisk } from '../lib/disk-lock.ts'
import type { Progress } from '../lib/progress.ts'
import { compareVersions } from '../lib/version.ts'
import { matchesPart, readPublicKey } from '../image-format/manifest.ts'
import { syncDir } from '../lib/durable.ts'
import { DEFAULT_FETCH, type FetchOptions, type TransferStats } from '../image-format/source.ts'
import { readCatalogue, withBase, writeCatalogue } from './catalogue.ts'
import { downloadBase, type Downloaded } from './download.ts'
import { clearTorrents, fetchBaseTorrent, torrentIdOf, torrentPartialBytes, torrentPull, type VmTorrentOptions } from './torrent-pull.ts'
import { applyPrune, planPrune, type PruneResult } from './prune.ts'
import { checkBaseImage } from './publish.ts'
import { openBaseSource, type BaseSource } from './source.ts'
import { freeBytes, gib } from './space.ts'

export interface PullOptions {
  source: string
  trustedKey: string
  backingDir: string
  userDir: string
  catalogue: string
  fetch?: FetchOptions
  /** BitTorrent (vmimages/torrent-pull.ts) where a .torrent is published beside the base; absent: HTTP only. */
  torrent?: VmTorrentOptions
  allowDowngrade?: boolean
  /** Run the overlay hygiene afterwards (labhost vm-image prune), with this reserve. */
  prune: boolean
  reserveBytes: number
  dryRun?: boolean
  log?: (line: string) => void
  progress?: Progress
}

export interface PullPlan {
  source: string
  name: string
  version: string
  displayName: string
  os: string
  default: boolean
  size: number
  sha256: string
  /** install: download it; catalogue-only: the file is in place and verified (a pull cut off before its catalogue); current: nothing to do. */
  action: 'install' | 'catalogue-only' | 'current'
  /** How an install downloads: BitTorrent when a .torrent is published beside the base (and --http is not given). */
  method: 'torrent' | 'http' | null
  file: string
  tempFile: string
  previous: { version: string; file: string } | null
  /** Bytes of an interrupted pull's temporary file (its verified prefix is kept). */
  resumableBytes: number
  needBytes: number
  freeBytes: number
}

export interface PullResult {
  plan: PullPlan
  dryRun: boolean
  download?: Downloaded
  transfer?: TransferStats
  prune?: PruneResult
}

/** Room kept beyond the image itself: the catalogue's new copy and the file system's own metadata for a large file. */
export const ROOM_MARGIN = 16 << 20

/** Temporary files of pulls (ours: `.NAME.qcow2.partial`). */
const TEMP = /^\..+\.qcow2\.partial$/

/**
 * BitTorrent, and HTTP when it stalls — except for a host that keeps to its building's peers: a
 * building whose hosts all fell back to the server would pull a copy each over its uplink.
 */
async function pullTorrentOrHttp(source: BaseSource, torrent: Buffer, tempFile: string, o: PullOptions): Promise<Downloaded> {
  const t = o.torrent!
  try {
    return await torrentPull(source, torrent, o.backingDir, tempFile, { ...t, log: o.log })
  } catch (e) {
    if (!isLabhostError(e) || e.code !== 'downloadFailed' || t.peers === 'building') throw e
    o.log?.(`${e.message}; pulling over HTTP instead`)
    // the download of this base is given up; the other current bases' go on seeding
    await clearTorrents(o.backingDir, new Set(readCatalogue(o.catalogue).map((e) => torrentIdOf(e.sha256))))
    return downloadBase(source, tempFile, { progress: o.progress })
  }
}

export async function pullVmImage(o: PullOptions): Promise<PullResult> {
  const trusted = readPublicKey(o.trustedKey)
  for (const [flag, dir] of [
    ['--dir', o.backingDir],
    ['--user-dir', o.userDir],
  ] as const) {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
      throw new LabhostError(
        'notFound',
        `${flag} ${dir} is not a directory`,
        'the installer creates /qcow2/backing and /qcow2/user; give existing directories; nothing was written',
      )
  }
  const lock = await lockDisk(o.backingDir, 'labhost vm-image pull')
  try {
    const source = await openBaseSource(o.source, trusted, o.fetch ?? DEFAULT_FETCH)
    const m = source.manifest
    const entries = readCatalogue(o.catalogue)
    const file = path.join(path.resolve(o.backingDir), m.image.file)
    const tempFile = path.join(path.resolve(o.backingDir), `.${m.image.file}.partial`)
    const before = entries.find((e) => e.name === m.name) ?? null
    let action: PullPlan['action'] = 'install'
    if (before) {
      const cmp = compareVersions(m.version, before.version)
      if (cmp === 0 && before.sha256 !== m.image.sha256) {
        throw new LabhostError(
          'notNewer',
          `${m.name} ${m.version} is installed already with other bytes (sha256 ${before.sha256.slice(0, 16)}…, the source's ${m.image.sha256.slice(0, 16)}…)`,
          'a version names one content: publish the new bytes under a new --version; nothing was written',
        )
      }
      if (cmp < 0 && !o.allowDowngrade) {
        throw new LabhostError(
          'notNewer',
          `${source.manifestWhere} is ${m.name} ${m.version}, older than the installed ${before.version}`,
          'pass --allow-downgrade to go back; nothing was written',
        )
      }
      if (cmp === 0 && before.file === file && fs.existsSync(file) && fs.statSync(file).size === m.image.size) action = 'current'
    }
    if (action === 'install' && fs.existsSync(file)) {
      // a pull cut off between its rename and its catalogue, or a file somebody put there
      if (!matchesPart(file, m.image).ok) {
        throw new LabhostError(
          'hashMismatch',
          `${file} exists and is not ${m.name} ${m.version} as signed`,
          `move it out of ${o.backingDir}; nothing was written`,
        )
      }
      action = 'catalogue-only'
    }
    const torrent = action === 'install' && o.torrent ? await fetchBaseTorrent(source) : null
    const method = action !== 'install' ? null : torrent ? 'torrent' : 'http'
    const resumableBytes =
      method === 'torrent'
        ? torrentPartialBytes(o.backingDir, torrentIdOf(m.image.sha256), m.image.file)
        : method === 'http' && fs.existsSync(tempFile)
          ? fs.statSync(tempFile).blocks * 512
          : 0
    const needBytes = action === 'install' ? Math.max(0, m.image.size - resumableBytes) + ROOM_MARGIN : 0
    const free = freeBytes(o.backingDir)
    const plan: PullPlan = {
      source: source.manifestWhere,
      name: m.name,
      version: m.version,
      displayName: m.displayName,
      os: m.os,
      default: m.default,
      size: m.image.size,
      sha256: m.image.sha256,
      action,
      method,
      file,
      tempFile,
      previous: before ? { version: before.version, file: before.file } : null,
      resumableBytes,
      needBytes,
      freeBytes: free,
    }
    if (needBytes > free) {
      throw new LabhostError(
        'noRoom',
        `${o.backingDir} has ${gib(free)} free; ${m.name} ${m.version} needs ${gib(needBytes)} (${m.image.size} bytes${resumableBytes ? `, ${resumableBytes} of them on disk already` : ''}, plus ${ROOM_MARGIN >> 20} MiB)`,
        'free space on the backing partition (labhost vm-image prune removes bases no volume rests on); nothing was downloaded or written',
        { plan },
      )
    }
    if (o.dryRun) return { plan, dryRun: true }
    let download: Downloaded | undefined
    if (action === 'install') {
      // temporary files of other pulls (a base since replaced) are no use to this one
      for (const n of fs.readdirSync(o.backingDir))
        if (TEMP.test(n) && path.join(path.resolve(o.backingDir), n) !== tempFile) fs.rmSync(path.join(o.backingDir, n), { force: true })
      // downloads of replaced bases go; this one's (resumed) and the other current bases' (seeding) stay
      await clearTorrents(o.backingDir, new Set([torrentIdOf(m.image.sha256), ...entries.filter((e) => e.name !== m.name).map((e) => torrentIdOf(e.sha256))]))
      try {
        o.log?.(`pulling ${m.name} ${m.version} (${gib(m.image.size)}) from ${source.where}${torrent ? ' over BitTorrent' : ''}`)
        download = torrent ? await pullTorrentOrHttp(source, torrent, tempFile, o) : await downloadBase(source, tempFile, { progress: o.progress })
        // signed, so checked when published: checked again here, before it goes where VMs find it
        await checkBaseImage(tempFile, `${source.where} (downloaded)`)
      } catch (e) {
        fs.rmSync(tempFile, { force: true })
        syncDir(o.backingDir)
        throw e
      }
      fs.renameSync(tempFile, file)
      syncDir(o.backingDir)
    }
    if (action !== 'current') {
      writeCatalogue(o.catalogue, withBase(entries, m, file))
      o.log?.(`${o.catalogue}: ${m.name} is ${m.version}${before ? ` (was ${before.version})` : ''}`)
    }
    let prune: PruneResult | undefined
    if (o.prune) {
      const po = { backingDir: o.backingDir, userDir: o.userDir, catalogue: o.catalogue, reserveBytes: o.reserveBytes, log: o.log }
      prune = await applyPrune(await planPrune(po), po)
    }
    return { plan, dryRun: false, download, transfer: source.stats, prune }
  } finally {
    await lock.release()
  }
}

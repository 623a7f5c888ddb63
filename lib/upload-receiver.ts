// The PUT side of the image server (`labhost image serve --accept-reports`): a lab PC installing
// over the network stores its install report, log and boot-local marker in one directory. Only
// plain names of three kinds, bounded in size and number; a file appears whole or not at all
// (written to a temporary name, synced, renamed), and the PC hears 201/204 only once the file and
// its directory entry are on disk: the unfinished-install record must survive a power cut of the
// server before the PC writes its first sector.
import crypto from 'node:crypto'
import fs from 'node:fs'
import type http from 'node:http'
import path from 'node:path'
import { LabhostError } from './errors.ts'

export interface UploadLimits {
  /** One file's bytes (413 above). */
  maxBytes: number
  /** Entries in the directory once the file is stored (507 above). */
  maxFiles: number
  /** Bytes of the directory's files once the file is stored (507 above). */
  maxTotalBytes: number
}

export const DEFAULT_UPLOAD_LIMITS: UploadLimits = {
  maxBytes: 4 << 20,
  maxFiles: 20_000,
  maxTotalBytes: 512 << 20,
}

/** The names a PC may store: a report (.json), a log, a marker; no path, no dotfile, no `..`. */
export const UPLOAD_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(json|log|boot-local)$/

// a dot name: never served by GET, never counted, never a name a PC may PUT
const TEMP_PREFIX = '.upload-'
const TEMP_NAME = /^\.upload-[0-9a-f]{16}$/

/** The directory PUTs go to, with what uploads under way have reserved of its limits. */
export interface UploadDir {
  /** Its real path (symlinks resolved once, at start). */
  real: string
  /** Its path in URLs: `/reports`, `/netboot/reports`. */
  urlPath: string
  limits: UploadLimits
  pending: { files: number; bytes: number }
  /** The limit checks, one after another: two PCs cannot both take the last place. */
  checking: Promise<unknown>
}

/**
 * The upload directory `dir` (relative to the served root, or absolute inside it), checked once:
 * an existing directory strictly inside the root, reached without a symlink and without a dot
 * name (GET refuses those, and a PC reads its marker back). Temporary files a crash left mid-upload
 * are removed.
 */
export function openUploadDir(root: string, realRoot: string, dir: string, limits: Partial<UploadLimits> = {}): UploadDir {
  const rel = path.relative(path.resolve(root), path.resolve(root, dir))
  const hint = 'name a directory inside the served directory (mkdir it first), reached without a symlink'
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) throw new LabhostError('usage', `upload directory ${dir} is not inside ${root}`, hint)
  if (rel.split(path.sep).some((s) => s.startsWith('.')))
    throw new LabhostError('usage', `upload directory ${dir} has a dot name in its path (never served)`, hint)
  const wanted = path.join(realRoot, rel)
  let real: string
  try {
    real = fs.realpathSync(wanted)
  } catch (e) {
    throw new LabhostError('usage', `upload directory ${dir} does not exist in ${root}`, hint, {}, { cause: e })
  }
  // a symlink anywhere below the root would send the PCs' files elsewhere
  if (real !== wanted) throw new LabhostError('usage', `upload directory ${dir} is reached through a symlink (to ${real})`, hint)
  if (!fs.statSync(real).isDirectory()) throw new LabhostError('usage', `upload directory ${dir} is not a directory`, hint)
  for (const name of fs.readdirSync(real)) if (TEMP_NAME.test(name)) fs.rmSync(path.join(real, name), { force: true })
  return {
    real,
    urlPath: '/' + rel.split(path.sep).join('/'),
    limits: {
      maxBytes: limits.maxBytes ?? DEFAULT_UPLOAD_LIMITS.maxBytes,
      maxFiles: limits.maxFiles ?? DEFAULT_UPLOAD_LIMITS.maxFiles,
      maxTotalBytes: limits.maxTotalBytes ?? DEFAULT_UPLOAD_LIMITS.maxTotalBytes,
    },
    pending: { files: 0, bytes: 0 },
    checking: Promise.resolve(),
  }
}

export interface UploadResult {
  /** 201 stored (new name), 204 stored (replaced); else the refusal. */
  status: number
  /** Body bytes stored (0 unless stored). */
  bytes: number
}

/** The directory's entries and its files' bytes, without uploads under way (their temporary files). */
async function usage(dir: string): Promise<{ files: number; bytes: number }> {
  const entries = (await fs.promises.readdir(dir, { withFileTypes: true })).filter((e) => !e.name.startsWith(TEMP_PREFIX))
  const sizes = await Promise.all(
    entries.map((e) =>
      e.isFile()
        ? fs.promises.lstat(path.join(dir, e.name)).then(
            (s) => s.size,
            () => 0,
          )
        : 0,
    ),
  )
  return { files: entries.length, bytes: sizes.reduce((a, b) => a + b, 0) }
}

/** Reserve room for `bytes` under `name`, or the status that refuses it (507). */
async function reserve(dir: UploadDir, name: string, bytes: number): Promise<{ files: number; bytes: number } | { status: number }> {
  const now = await usage(dir.real)
  const old = await fs.promises.lstat(path.join(dir.real, name)).catch(() => null)
  const files = old ? 0 : 1
  const after = {
    files: now.files + dir.pending.files + files,
    bytes: now.bytes - (old?.isFile() ? old.size : 0) + dir.pending.bytes + bytes,
  }
  if (after.files > dir.limits.maxFiles || after.bytes > dir.limits.maxTotalBytes) return { status: 507 }
  dir.pending.files += files
  dir.pending.bytes += bytes
  return { files, bytes }
}

/** fsync a directory without holding up the server's other requests. */
async function syncDirAsync(dir: string): Promise<void> {
  const h = await fs.promises.open(dir, 'r')
  try {
    await h.sync()
  } finally {
    await h.close()
  }
}

/**
 * Store the body of the PUT `req` as `name` in `dir`; the caller answers with the status. Refused
 * before a byte is read: a bad name (403), no Content-Length (411, a chunked body is not taken),
 * too big (413), no room (507). A body that ends before its Content-Length (the PC gone) is 400;
 * a full disk is 507, a directory of that name 409; none leaves anything behind. The caller
 * should close the connection after a refusal: the body was not read (or not all of it).
 */
export async function receiveUpload(req: http.IncomingMessage, dir: UploadDir, name: string): Promise<UploadResult> {
  if (!UPLOAD_NAME.test(name)) return { status: 403, bytes: 0 }
  const declared = req.headers['content-length']
  if (declared === undefined || !/^\d+$/.test(declared)) return { status: 411, bytes: 0 }
  const size = Number(declared)
  if (size > dir.limits.maxBytes) return { status: 413, bytes: 0 }
  const reserving = dir.checking.then(() => reserve(dir, name, size))
  dir.checking = reserving.catch(() => {})
  const room = await reserving
  if ('status' in room) return { status: room.status, bytes: 0 }
  const tmp = path.join(dir.real, TEMP_PREFIX + crypto.randomBytes(8).toString('hex'))
  const final = path.join(dir.real, name)
  let renamed = false
  try {
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants
    const h = await fs.promises.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644)
    let received = 0
    let writeError: unknown = null
    try {
      try {
        for await (const chunk of req as AsyncIterable<Buffer>) {
          received += chunk.length
          if (received > size) break
          await h.write(chunk).catch((e: unknown) => (writeError = e))
          if (writeError) break
        }
      } catch {
        return { status: 400, bytes: 0 } // the connection ended mid-body (the PC gone, the request timeout)
      }
      if (writeError) throw writeError
      if (received !== size) return { status: 400, bytes: 0 }
      await h.sync()
    } finally {
      await h.close()
    }
    const existed = await fs.promises
      .lstat(final)
      .then(() => true)
      .catch(() => false)
    // rename replaces the directory entry: a symlink at `name` is replaced, its target untouched
    try {
      await fs.promises.rename(tmp, final)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EISDIR') return { status: 409, bytes: 0 } // a directory of that name
      throw e
    }
    renamed = true
    await syncDirAsync(dir.real)
    return { status: existed ? 204 : 201, bytes: size }
  } catch (e) {
    // the server's disk full: the PC hears so (507), as for the directory's own limits
    if (!renamed && ['ENOSPC', 'EDQUOT'].includes((e as NodeJS.ErrnoException).code ?? '')) return { status: 507, bytes: 0 }
    throw e
  } finally {
    dir.pending.files -= room.files
    dir.pending.bytes -= room.bytes
    if (!renamed) await fs.promises.rm(tmp, { force: true })
  }
}

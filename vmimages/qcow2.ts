// What labhost asks QEMU's own tools about qcow2 files: the format and backing file (`qemu-img
// info`), consistency (`qemu-img check`), and whether a running QEMU holds the file open (its
// image locks). Paths are always made absolute first: QEMU reads `json:{…}` or `nbd:…` at the start
// of a file name as options, never after a leading slash.
import path from 'node:path'
import { LabhostError, isLabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'

export interface ImageInfo {
  format: string
  virtualSize: number
  clusterSize: number | null
  /** The backing file as the image names it (absolute: resolved against the image's directory); null: none. */
  backingFile: string | null
}

const abs = (file: string) => path.resolve(file)

/**
 * `qemu-img info` of `file`. shared: with -U, which reads the header even while a VM writes the
 * image (our scan must not fail on, nor disturb, a running VM); without it, QEMU first takes its
 * read lock.
 */
export async function imageInfo(file: string, o: { shared: boolean }): Promise<ImageInfo> {
  const f = abs(file)
  const { stdout } = await run('qemu-img', ['info', ...(o.shared ? ['-U'] : []), '--output=json', f])
  let j: Record<string, unknown>
  try {
    j = JSON.parse(stdout) as Record<string, unknown>
  } catch (e) {
    throw new LabhostError(
      'toolFailed',
      `qemu-img info ${f} printed no JSON`,
      'is qemu-utils installed and working?',
      { stdout: stdout.slice(0, 200) },
      { cause: e },
    )
  }
  const backing = typeof j['backing-filename'] === 'string' ? (j['backing-filename'] as string) : null
  return {
    format: String(j.format),
    virtualSize: Number(j['virtual-size']),
    clusterSize: typeof j['cluster-size'] === 'number' ? j['cluster-size'] : null,
    backingFile: backing === null ? null : path.resolve(path.dirname(f), backing),
  }
}

/** `qemu-img check`: null when it finds nothing, else its complaint (corruption, leaked clusters, unreadable). */
export async function checkImage(file: string): Promise<string | null> {
  try {
    await run('qemu-img', ['check', '-f', 'qcow2', abs(file)])
    return null
  } catch (e) {
    if (!isLabhostError(e) || e.code !== 'toolFailed' || e.details.notInstalled) throw e
    const stderr = String(e.details.stderr ?? e.message)
    const exit = e.details.exitCode
    // qemu-img check: 1 could not check, 2 corrupt, 3 leaked clusters (harmless but not clean)
    const what = exit === 2 ? 'corrupt' : exit === 3 ? 'has leaked clusters (qemu-img check -r leaks repairs them)' : 'cannot be checked'
    const first = stderr.split('\n').find((l) => l.trim()) ?? ''
    return `${what} (qemu-img check exit ${exit}${first ? `: ${first.trim().slice(0, 120)}` : ''})`
  }
}

export type Holder = 'free' | 'in-use' | 'unknown'

/** QEMU's answer when another process holds the image: "Failed to get "write" lock" / "Failed to get shared "write" lock". */
const LOCK_ERROR = /Failed to get (shared )?"[a-z ]+" lock/

/**
 * Whether a running QEMU has `file` open, by its image locks (OFD locks on the file, taken by
 * every QEMU since 2.10). `qemu-io -f raw` opens the file read-write without interpreting it —
 * nothing is written — and so asks for write permission: a VM writing to an overlay holds the
 * write lock, and a VM running on a base holds it open with writes by others forbidden, so both
 * refuse it. (`qemu-img info` without -U only asks to read: it fails on an overlay in use but
 * succeeds on a base in use; checked on Debian 12's QEMU 7.2.) `unknown`: any other failure —
 * treated as in use by the callers.
 */
export async function holder(file: string): Promise<{ state: Holder; detail?: string }> {
  try {
    await run('qemu-io', ['-f', 'raw', '-c', 'quit', abs(file)])
    return { state: 'free' }
  } catch (e) {
    if (!isLabhostError(e) || e.code !== 'toolFailed' || e.details.notInstalled) throw e
    const stderr = String(e.details.stderr ?? e.message)
    return LOCK_ERROR.test(stderr) ? { state: 'in-use' } : { state: 'unknown', detail: stderr.split('\n').filter(Boolean).slice(-1)[0] ?? e.message }
  }
}

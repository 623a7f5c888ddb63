// One writer per disk: `labhost update`, `slots switch` and `slots repair` hold this lock while
// they plan and write. It is a Unix socket bound to a name in Linux's abstract namespace, derived
// from the disk's identity: the kernel frees the name the instant its holder dies, however it
// dies (an OOM kill or SIGKILL leaves nothing stale behind — a lock file did, and then every later
// update was refused), and it needs no file system, no tool and no clean-up. A process that finds
// the name taken asks the holder who it is, for the error message.
// Scope: one network namespace (the host's; a command run inside another namespace does not see it).
import fs from 'node:fs'
import net from 'node:net'
import { LabhostError } from './errors.ts'

export interface DiskLock {
  /** The abstract socket name (without its leading NUL), e.g. labhost-disk-lock/blk-1795. */
  name: string
  release(): Promise<void>
}

/** The same for every path of one disk: the device number of a block device, else the file's inode. */
export function diskIdentity(diskPath: string): string {
  const st = fs.statSync(diskPath)
  return st.isBlockDevice() ? `blk-${st.rdev}` : `file-${st.dev}-${st.ino}`
}

export function diskLockName(diskPath: string): string {
  return `labhost-disk-lock/${diskIdentity(diskPath)}`
}

/** Take the disk's lock for `what` (say "labhost update"), or refuse with exit 35 (busy) naming the holder. */
export async function lockDisk(diskPath: string, what: string): Promise<DiskLock> {
  const name = diskLockName(diskPath)
  const server = net.createServer((c) => c.end(`pid ${process.pid} (${what})\n`))
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ path: `\0${name}` }, () => resolve())
    })
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e
    const holder = await askHolder(name)
    throw new LabhostError(
      'busy',
      `${diskPath} is in use by another labhost process${holder ? `: ${holder}` : ''}`,
      'wait for it to finish and try again (the lock is freed when its holder exits, also when it is killed); nothing was written',
      { lock: name, holder },
      { cause: e },
    )
  }
  server.unref()
  return { name, release: () => new Promise((resolve) => server.close(() => resolve())) }
}

/** Run `fn` holding the disk's lock; the lock is released when it returns or throws. */
export async function withDiskLock<T>(diskPath: string, what: string, fn: () => Promise<T>): Promise<T> {
  const lock = await lockDisk(diskPath, what)
  try {
    return await fn()
  } finally {
    await lock.release()
  }
}

function askHolder(name: string): Promise<string> {
  return new Promise((resolve) => {
    let said = ''
    const c = net.connect({ path: `\0${name}` })
    const done = () =>
      resolve(
        said
          .trim()
          .slice(0, 200)
          .replace(/[^\x20-\x7e]/g, '?'),
      )
    c.setTimeout(1000, () => c.destroy())
    c.on('data', (d) => {
      said += String(d)
    })
    c.on('close', done)
    c.on('error', () => {})
  })
}

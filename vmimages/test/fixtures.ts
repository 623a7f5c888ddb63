// Shared by the VM image disk tests: small qcow2 bases with known contents (qemu-img, qemu-io),
// ext4 file systems on loop devices for the backing and user partitions (so free space and
// fsync are real), a paused QEMU holding an image's lock, and snapshots of a directory's bytes.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { execa } from 'execa'
import type { Test } from 'tap'
import { run } from '../../lib/exec.ts'
import { loop, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'

/** A standalone qcow2 of `virtualMiB` with `dataMiB` written in 1 MiB runs of `pattern`, every other MiB. */
export async function makeBase(file: string, o: { dataMiB: number; pattern: number; virtualMiB?: number }): Promise<string> {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, `${o.virtualMiB ?? 256}M`])
  const writes = Array.from({ length: o.dataMiB }, (_, i) => ['-c', `write -q -P ${(o.pattern + i) & 0xff} ${2 * i}M 1M`]).flat()
  if (writes.length) await run('qemu-io', ['-f', 'qcow2', ...writes, file])
  return file
}

/** A qcow2 overlay on `base`, with `dataMiB` of its own. */
export async function makeOverlay(file: string, base: string, dataMiB = 0): Promise<string> {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', file])
  if (dataMiB) await run('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x5a 0 ${dataMiB}M`, file])
  return file
}

/** An ext4 file system of `mib` on a loop device, mounted; unmounted and detached at teardown. */
export async function loopFs(t: Test, mib: number): Promise<string> {
  const d = tmpDir(t, 'labhost-vmfs-')
  const img = sparseFile(path.join(d, 'fs.img'), mib << 20)
  const mnt = path.join(d, 'mnt')
  fs.mkdirSync(mnt)
  const dev = await loop(t, img)
  await run('mkfs.ext4', ['-q', '-F', dev])
  await run('mount', [dev, mnt])
  // registered after the loop's teardown, so it runs first (tap runs teardowns in reverse order)
  t.teardown(() => run('umount', [mnt]))
  return mnt
}

/** A paused QEMU with `file` as a drive (no guest runs, no CPU used): it holds the image's locks until teardown kills it. */
export async function qemuHolding(t: Test, file: string): Promise<{ kill(): Promise<void> }> {
  const child = execa('qemu-system-x86_64', ['-S', '-display', 'none', '-nodefaults', '-drive', `file=${file},if=none,id=d0,format=qcow2`], { reject: false })
  let killed = false
  const kill = async () => {
    if (killed) return
    killed = true
    child.kill('SIGKILL')
    await child
  }
  t.teardown(kill)
  // QEMU holds the image once /proc/locks shows its OFD locks on the file's inode (it takes them as
  // it opens the image): read from the kernel, not with labhost's own lock check, which the tests
  // are there to judge
  const st = fs.statSync(file)
  const major = (st.dev >> 8) & 0xfff
  const minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00)
  const id = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`
  const locked = () =>
    fs
      .readFileSync('/proc/locks', 'utf8')
      .split('\n')
      .some((l) => /\bOFDLCK\b/.test(l) && l.split(/\s+/).includes(id))
  for (const end = Date.now() + 15_000; !locked(); await sleep(50)) {
    if (Date.now() > end || child.exitCode !== null) throw new Error(`QEMU did not lock ${file} (${id} not in /proc/locks)`)
  }
  return { kill }
}

/** Every file under `dir` (hidden ones too) with its SHA-256, mode and size: equal snapshots mean nothing was written. */
export function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of (fs.readdirSync(dir, { recursive: true }) as string[]).sort()) {
    const p = path.join(dir, name)
    const st = fs.lstatSync(p)
    if (name === 'lost+found' || name.startsWith('lost+found/')) continue
    out[name] = st.isFile()
      ? `${st.size} ${crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex')} ${st.mtimeMs}`
      : st.isDirectory()
        ? 'dir'
        : 'other'
  }
  return out
}

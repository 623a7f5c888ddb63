// Loop devices and mounts, always released in `finally`: tests and image builds attach files
// (or byte ranges of files, as partitions of loop devices do not appear here) and mount them.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { run } from './exec.ts'

export interface LoopOptions {
  offset?: number
  sizeLimit?: number
  sectorSize?: number
  directIo?: boolean
  readOnly?: boolean
}

export async function attachLoop(file: string, o: LoopOptions = {}): Promise<string> {
  const args = ['--find', '--show']
  if (o.offset !== undefined) args.push('--offset', String(o.offset))
  if (o.sizeLimit !== undefined) args.push('--sizelimit', String(o.sizeLimit))
  if (o.sectorSize !== undefined) args.push('--sector-size', String(o.sectorSize))
  if (o.directIo) args.push('--direct-io=on')
  if (o.readOnly) args.push('--read-only')
  const { stdout } = await run('losetup', [...args, file])
  return stdout.trim()
}

export async function detachLoop(dev: string): Promise<void> {
  await run('losetup', ['--detach', dev])
}

export async function withLoop<T>(file: string, o: LoopOptions, fn: (dev: string) => Promise<T>): Promise<T> {
  const dev = await attachLoop(file, o)
  try {
    return await fn(dev)
  } finally {
    await detachLoop(dev)
  }
}

export async function withMount<T>(dev: string, fn: (dir: string) => Promise<T>, opts: { readOnly?: boolean; options?: string } = {}): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-mnt-'))
  const o = [opts.readOnly ? 'ro' : '', opts.options ?? ''].filter(Boolean).join(',')
  await run('mount', [...(o ? ['-o', o] : []), dev, dir])
  try {
    return await fn(dir)
  } finally {
    await run('umount', [dir])
    fs.rmdirSync(dir)
  }
}

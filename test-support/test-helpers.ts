// Helpers shared by the tests: temp dirs and loop devices released on teardown (also when a test
// fails), byte-range hashes to prove what a command did not touch, a seeded PRNG, and the CLI.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { attachLoop, detachLoop, type LoopOptions } from '../lib/loop.ts'

export interface Teardown {
  teardown(fn: () => unknown): void
}

export const REPO_ROOT = path.resolve(import.meta.dirname, '..')

export function tmpDir(t: Teardown, prefix = 'labhost-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

export async function loop(t: Teardown, file: string, o: LoopOptions = {}): Promise<string> {
  const dev = await attachLoop(file, o)
  const own = fs.realpathSync(file)
  t.teardown(async () => {
    // detached only while it still backs this file: a device detached already (a CI run once saw
    // one gone before its test's teardown) may have been attached again by a test beside this one
    const back = await execa('losetup', ['--list', '--noheadings', '-O', 'BACK-FILE', dev], { reject: false })
    if (
      String(back.stdout)
        .trim()
        .replace(/ \(deleted\)$/, '') === own
    )
      await detachLoop(dev)
  })
  return dev
}

export function sparseFile(file: string, bytes: number): string {
  fs.writeFileSync(file, '')
  fs.truncateSync(file, bytes)
  return file
}

export function readRange(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const b = Buffer.alloc(length)
    fs.readSync(fd, b, 0, length, offset)
    return b
  } finally {
    fs.closeSync(fd)
  }
}

export function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex')
}

/** The whole device or file, hashed (used to prove a refusal wrote nothing). */
export function hashWhole(file: string): string {
  return hashRange(file, 0, Infinity)
}

/** SHA-256 of `length` bytes of `file` from byte `start` (fewer where the file ends). */
export function hashRange(file: string, start: number, length: number): string {
  const h = crypto.createHash('sha256')
  const fd = fs.openSync(file, 'r')
  try {
    const b = Buffer.alloc(4 << 20)
    for (let done = 0; done < length;) {
      const n = fs.readSync(fd, b, 0, Math.min(b.length, length - done), start + done)
      if (n === 0) break
      h.update(b.subarray(0, n))
      done += n
    }
  } finally {
    fs.closeSync(fd)
  }
  return h.digest('hex')
}

/** XOR bytes into a file or device in place. */
export function xorRange(file: string, offset: number, mask: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const b = Buffer.alloc(mask.length)
    fs.readSync(fd, b, 0, b.length, offset)
    for (let i = 0; i < b.length; i++) b[i]! ^= mask[i]!
    fs.writeSync(fd, b, 0, b.length, offset)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Indices of `unit`-sized blocks in which two equal-length buffers differ. */
export function differingBlocks(a: Buffer, b: Buffer, unit: number): number[] {
  const out: number[] = []
  for (let off = 0; off < a.length; off += unit) if (!a.subarray(off, off + unit).equals(b.subarray(off, off + unit))) out.push(off / unit)
  return out
}

/** mulberry32: small, seeded, reproducible. */
export function prng(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let x = s
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

export function seedFromEnv(): number {
  const s = process.env.LABHOST_SEED
  return s ? Number(s) : crypto.randomInt(2 ** 31)
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

/**
 * How the tests start labhost: the built executable when LABHOST_TEST_EXE names it (npm test
 * builds dist/labhost first and sets it: the product is what is tested), else the source
 * (`node cli/bin.ts`, for a single test file run by hand): [file, ...arguments].
 */
export function labhostCommand(...args: string[]): [string, ...string[]] {
  const exe = process.env.LABHOST_TEST_EXE
  return exe ? [exe, ...args] : [process.execPath, path.join(REPO_ROOT, 'cli/bin.ts'), ...args]
}

/** labhostCommand as execa's (file, arguments) pair: `execa(...labhostArgv('update', url), options)`. */
export function labhostArgv(...args: string[]): [string, string[]] {
  const [file, ...rest] = labhostCommand(...args)
  return [file, rest]
}

/** A run's `labhost: error:` lines (one, for a refusal). */
export function errorLines(r: { stderr: unknown }): string[] {
  return String(r.stderr)
    .split('\n')
    .filter((l) => l.startsWith('labhost: error:'))
}

/**
 * What a failed assertion on a run shows: its error and hint lines first (a CI log may keep only
 * the head of a long diagnostic), or its last lines when it printed none, then the whole stderr.
 */
export function failDiag(r: { stderr: unknown }): { error: string[]; stderr: string } {
  const stderr = String(r.stderr)
  const lines = stderr.split('\n').filter((l) => l.trim())
  const errors = lines.filter((l) => /^(labhost: error:|\s*hint:)/.test(l))
  return { error: errors.length ? errors : lines.slice(-5), stderr }
}

export async function runCli(args: string[]): Promise<CliResult> {
  const [file, ...rest] = labhostCommand(...args)
  const r = await execa(file, rest, { reject: false })
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
}

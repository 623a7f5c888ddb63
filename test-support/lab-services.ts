// The services of a test lab's server namespace, shared by the fleet (fleet-fixtures.ts) and the
// campus (campus-fixtures.ts): opentracker tracking whitelisted info hashes only, `labhost image
// serve`, and waiting for a long-running process to say it is ready.
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { ResultPromise } from 'execa'
import type { LabMember } from './netns.ts'
import { labhostCommand } from './test-helpers.ts'

export const HTTP_PORT = 8080
export const TRACKER_PORT = 6969

type Spawn = (m: LabMember, cmd: string, args: string[]) => ResultPromise

/** Wait until a long-running process printed `pattern` (or ended, or `ms` passed). */
export async function waitFor(p: ResultPromise, pattern: RegExp, ms: number, what: string): Promise<void> {
  let seen = ''
  let ended = false
  p.all?.on('data', (d: Buffer) => {
    seen += d.toString()
  })
  void p.then(() => {
    ended = true
  })
  for (const until = Date.now() + ms; !pattern.test(seen); await sleep(50)) {
    if (ended || Date.now() > until) throw new Error(`${what} did not start: ${seen.trim().slice(-500) || (ended ? 'it exited' : 'no output')}`)
  }
}

/** SIGTERM to each (a `labhost image seed` then ends its aria2c), up to `graceMs` to end, then SIGKILL to what is left. */
export async function stopProcesses(processes: ResultPromise[], graceMs: number): Promise<void> {
  for (const p of processes) p.kill('SIGTERM')
  await Promise.race([Promise.allSettled(processes), sleep(graceMs)])
  for (const p of processes) p.kill('SIGKILL')
}

export interface Tracker {
  process: ResultPromise
  url: string
  /** Add an info hash to the whitelist (opentracker reloads it on SIGHUP). */
  allow(infoHash: string): Promise<void>
}

/** opentracker on `m` (it drops to `nobody` inside a chroot made under `dir`), tracking `infoHashes` only. */
export async function startTracker(spawn: Spawn, m: LabMember, dir: string, infoHashes: string[], port = TRACKER_PORT): Promise<Tracker> {
  const chroot = fs.mkdtempSync(path.join(dir, 'tracker-'))
  fs.chmodSync(chroot, 0o755)
  fs.writeFileSync(path.join(chroot, 'whitelist'), infoHashes.map((h) => `${h}\n`).join(''))
  const conf = path.join(chroot, '..', `${path.basename(chroot)}.conf`)
  fs.writeFileSync(conf, 'access.whitelist /whitelist\n')
  const p = spawn(m, 'opentracker', ['-i', m.ip, '-p', String(port), '-P', String(port), '-d', chroot, '-f', conf])
  await sleep(300) // opentracker binds at once; give it the moment
  return {
    process: p,
    url: `http://${m.ip}:${port}/announce`,
    async allow(infoHash) {
      fs.appendFileSync(path.join(chroot, 'whitelist'), `${infoHash}\n`)
      p.kill('SIGHUP')
      await sleep(500)
    },
  }
}

/** `labhost image serve DIR` on `m` (with `extra` options), ready when it says so; its URL. */
export async function startServe(
  spawn: Spawn,
  m: LabMember,
  servedDir: string,
  port = HTTP_PORT,
  extra: string[] = [],
): Promise<{ process: ResultPromise; url: string }> {
  const [labhost, ...cli] = labhostCommand()
  const p = spawn(m, labhost, [...cli, 'image', 'serve', servedDir, '--host', m.ip, '--port', String(port), ...extra])
  await waitFor(p, /serving /, 30_000, 'labhost image serve')
  return { process: p, url: `http://${m.ip}:${port}` }
}

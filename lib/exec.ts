// The one place external tools (sgdisk, mkfs.ext4, extlinux, losetup, dd, qemu) are run.
// A failure becomes a LabhostError carrying the command line, exit code and the stderr tail.
import { execa, type Options } from 'execa'
import { LabhostError } from './errors.ts'

export interface RunResult {
  stdout: string
  stderr: string
}

export interface RunOptions {
  input?: string | Buffer
  cwd?: string
  env?: Record<string, string>
  timeoutMs?: number
  /** Raw stdout as a Buffer (for binary output). */
  binary?: boolean
}

function tail(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join('\n')
}

export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const options: Options = {
    input: opts.input,
    cwd: opts.cwd,
    env: opts.env,
    timeout: opts.timeoutMs,
    reject: false,
    stripFinalNewline: false,
    encoding: opts.binary ? 'buffer' : 'utf8',
  }
  const r = await execa(cmd, args, options)
  if (r.failed) {
    const missing = (r as { code?: string }).code === 'ENOENT'
    const commandLine = [cmd, ...args].join(' ')
    if (missing) {
      throw new LabhostError('toolFailed', `${cmd} is not installed`,
        `install it (scripts/setup.sh installs every tool labhost needs)`, { command: commandLine })
    }
    const stderr = String(r.stderr ?? '')
    const why = r.timedOut ? `timed out after ${opts.timeoutMs} ms` : `exited with ${r.exitCode ?? r.signal}`
    throw new LabhostError('toolFailed', `${commandLine} ${why}: ${tail(stderr, 3).replace(/\n/g, ' | ')}`,
      `see the command's output above; the disk may need inspection with sgdisk -v`,
      { command: commandLine, exitCode: r.exitCode, stderr: tail(stderr) })
  }
  return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') }
}


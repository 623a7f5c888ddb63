// BIOS settings from install.yaml, through the kernel's firmware-attributes class (DESIGN §5;
// Documentation/ABI/testing/sysfs-class-firmware-attributes: dell-wmi-sysman, think-lmi,
// hp-bioscfg) or Dell Command | Configure (`cctk`). Read every current value, change only what
// differs, read back to verify, report pending_reboot. The admin password comes from a file, is
// never logged, and is cleared from the firmware session after use.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { runStatus, toolError } from '../lib/exec.ts'
import type { InstallConfig } from './config.ts'

export interface BiosChange {
  name: string
  from: string
  to: string
}

export interface BiosPlan {
  backend: 'sysfs' | 'cctk' | 'none'
  /** Where: the firmware-attributes directory, or the cctk executable. */
  where: string | null
  changes: BiosChange[]
  unchanged: string[]
}

export interface BiosResult extends BiosPlan {
  pendingReboot: boolean | null
}

interface Backend {
  name: 'sysfs' | 'cctk'
  where: string
  read(attr: string): Promise<string>
  check(attr: string, value: string): Promise<void>
  write(changes: BiosChange[], password: string | null): Promise<void>
  pendingReboot(): Promise<boolean | null>
}

const fail = (message: string, hint: string, cause?: unknown) => new LabhostError('biosFailed', message, hint, {}, { cause })

function sysfsBackend(dir: string): Backend {
  const attrDir = (a: string) => path.join(dir, 'attributes', a)
  const readFile = (f: string) => fs.readFileSync(f, 'utf8').replace(/\n$/, '')
  const admin = path.join(dir, 'authentication', 'Admin')
  return {
    name: 'sysfs',
    where: dir,
    async read(a) {
      if (!fs.existsSync(path.join(attrDir(a), 'current_value'))) {
        const known = fs.existsSync(path.join(dir, 'attributes'))
          ? fs
              .readdirSync(path.join(dir, 'attributes'))
              .filter((x) => x !== 'pending_reboot')
              .slice(0, 12)
              .join(', ')
          : 'none'
        throw fail(
          `the firmware has no BIOS attribute ${a} (${dir}; some it has: ${known})`,
          'correct bios.settings in install.yaml for this model; nothing was written',
        )
      }
      return readFile(path.join(attrDir(a), 'current_value'))
    },
    async check(a, v) {
      const type = fs.existsSync(path.join(attrDir(a), 'type')) ? readFile(path.join(attrDir(a), 'type')) : ''
      if (type === 'enumeration') {
        const possible = readFile(path.join(attrDir(a), 'possible_values'))
          .split(';')
          .filter(Boolean)
        if (!possible.includes(v))
          throw fail(
            `BIOS attribute ${a} cannot be ${JSON.stringify(v)} (possible: ${possible.join(', ')})`,
            'correct bios.settings in install.yaml; nothing was written',
          )
      } else if (type === 'integer') {
        const n = Number(v)
        const lo = Number(readFile(path.join(attrDir(a), 'min_value')))
        const hi = Number(readFile(path.join(attrDir(a), 'max_value')))
        if (!Number.isInteger(n) || n < lo || n > hi)
          throw fail(
            `BIOS attribute ${a} must be an integer in ${lo}..${hi}, not ${JSON.stringify(v)}`,
            'correct bios.settings in install.yaml; nothing was written',
          )
      }
    },
    async write(changes, password) {
      const needsPassword = fs.existsSync(path.join(admin, 'is_enabled')) && readFile(path.join(admin, 'is_enabled')) === '1'
      if (needsPassword && password === null)
        throw fail('the BIOS has an admin password and install.yaml names no bios.passwordFile', 'add bios.passwordFile to install.yaml; nothing was written')
      if (needsPassword) fs.writeFileSync(path.join(admin, 'current_password'), password!)
      try {
        for (const c of changes) {
          try {
            fs.writeFileSync(path.join(attrDir(c.name), 'current_value'), c.to)
          } catch (e) {
            throw fail(
              `the firmware refused ${c.name}=${c.to}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
              'check the BIOS admin password file and the value; settings before it may be changed',
              e,
            )
          }
        }
      } finally {
        // the password stays in the firmware session until cleared
        if (needsPassword) fs.writeFileSync(path.join(admin, 'current_password'), '')
      }
    },
    async pendingReboot() {
      const f = path.join(dir, 'attributes', 'pending_reboot')
      return fs.existsSync(f) ? readFile(f) === '1' : null
    },
  }
}

/**
 * `text` with the password taken out: as given and trimmed (output is trimmed before it is
 * shown), and any `ValSetupPwd=…` cctk echoes from its command line, whatever it holds.
 */
function redact(text: string, secret: string | undefined): string {
  let out = text.replace(/(ValSetupPwd\s*[=:]\s*)\S+/gi, '$1***')
  for (const s of secret ? [secret, secret.trim()] : []) if (s) out = out.split(s).join('***')
  return out
}

function cctkBackend(exe: string): Backend {
  const cctk = async (args: string[], secret?: string) => {
    // every error keeps the password out, also the cause: its command line is the redacted one
    const shown = args.map((a) => redact(a, secret))
    let r
    try {
      r = await runStatus(exe, args)
    } catch (e) {
      // execa's own refusals (an argument it cannot pass) quote the command line
      const said = redact((e as Error).message, secret)
      throw fail(`${exe} could not be run: ${said}`, 'check the cctk executable and the BIOS admin password file; nothing was changed', new Error(said))
    }
    if (r.startError) {
      const e = toolError(exe, shown, r)
      throw fail(`${exe} could not be run: ${e.message}`, `${e.hint}; nothing was changed`, e)
    }
    return { code: r.exitCode ?? -1, out: redact(`${r.stdout}\n${r.stderr}`, secret).trim() }
  }
  return {
    name: 'cctk',
    where: exe,
    async read(a) {
      const r = await cctk([`--${a}`])
      const m = new RegExp(`^${a}=(.*)$`, 'm').exec(r.out)
      if (r.code !== 0 || !m)
        throw fail(`cctk cannot read ${a}: ${r.out.split('\n')[0]}`, 'correct bios.settings in install.yaml for this model; nothing was written')
      return m[1]!.trim()
    },
    async check() {
      // cctk validates values itself, before it changes anything
    },
    async write(changes, password) {
      const args = changes.map((c) => `--${c.name}=${c.to}`)
      // cctk takes the setup password only as an argument: this one short-lived call is where it
      // can be seen (in /proc/PID/cmdline, by root on the installer's own system); reads go without
      if (password !== null) args.push(`--ValSetupPwd=${password}`)
      const r = await cctk(args, password ?? undefined)
      if (r.code !== 0)
        throw fail(
          `cctk refused the settings (exit ${r.code}): ${r.out.split('\n').slice(-1)[0]}`,
          'check the BIOS admin password file and the values; the other settings were left as they were',
        )
    },
    async pendingReboot() {
      return null
    },
  }
}

function findCctk(): string | null {
  for (const p of ['/opt/dell/dcc/cctk', ...(process.env.PATH ?? '').split(':').map((d) => path.join(d, 'cctk'))]) {
    if (fs.existsSync(p)) return p
  }
  return null
}

function chooseBackend(config: InstallConfig['bios'], sysRoot: string): Backend | null {
  const classDir = path.join(sysRoot, 'class', 'firmware-attributes')
  const sysfs = fs.existsSync(classDir)
    ? fs
        .readdirSync(classDir)
        .map((d) => path.join(classDir, d))
        .find((d) => fs.existsSync(path.join(d, 'attributes')))
    : undefined
  if (config.backend === 'sysfs' || (config.backend === 'auto' && sysfs)) {
    if (!sysfs)
      throw fail(
        `bios.backend is sysfs but ${classDir} has no firmware (no dell-wmi-sysman, think-lmi or hp-bioscfg driver loaded)`,
        'load the vendor driver or use bios.backend: cctk; nothing was written',
      )
    return sysfsBackend(sysfs)
  }
  const exe = config.backend === 'none' ? null : findCctk()
  if (config.backend === 'cctk' && !exe)
    throw fail(
      'bios.backend is cctk but no cctk executable was found (/opt/dell/dcc/cctk or PATH)',
      'put Dell Command | Configure on the stick or use bios.backend: sysfs; nothing was written',
    )
  return exe ? cctkBackend(exe) : null
}

/** Read the current values and decide what to change; writes nothing. */
export async function planBios(config: InstallConfig['bios'], sysRoot = '/sys'): Promise<BiosPlan> {
  const names = Object.keys(config.settings)
  const backend = names.length ? chooseBackend(config, sysRoot) : null
  if (!backend) {
    if (names.length && config.backend !== 'none')
      throw fail(
        `install.yaml asks for BIOS settings (${names.join(', ')}) but this machine has neither the firmware-attributes class nor cctk`,
        'load the vendor driver, add cctk to the stick, or set bios.backend: none; nothing was written',
      )
    return { backend: 'none', where: null, changes: [], unchanged: [] }
  }
  const changes: BiosChange[] = []
  const unchanged: string[] = []
  for (const [name, to] of Object.entries(config.settings)) {
    const from = await backend.read(name)
    if (from === to) {
      unchanged.push(name)
      continue
    }
    await backend.check(name, to)
    changes.push({ name, from, to })
  }
  return { backend: backend.name, where: backend.where, changes, unchanged }
}

const MAX_PASSWORD_BYTES = 1024

/**
 * The BIOS admin password: the one line of `file` (a final newline dropped). Every refusal names
 * the file and what is wrong with it, never a byte of its content.
 */
function readPassword(file: string): string {
  let bytes: Buffer
  try {
    const fd = fs.openSync(file, 'r')
    try {
      bytes = Buffer.alloc(MAX_PASSWORD_BYTES + 1)
      bytes = bytes.subarray(0, fs.readSync(fd, bytes, 0, bytes.length, 0))
    } finally {
      fs.closeSync(fd)
    }
  } catch (e) {
    throw fail(
      `bios.passwordFile ${file} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      'put the password file next to install.yaml; nothing was changed',
      e,
    )
  }
  const hint = 'put the BIOS admin password alone on the first line of the file (its content is not shown); nothing was changed'
  if (bytes.length > MAX_PASSWORD_BYTES) throw fail(`bios.passwordFile ${file} is longer than ${MAX_PASSWORD_BYTES} bytes: not a password file`, hint)
  const text = bytes.toString('utf8').replace(/\r?\n$/, '')
  const lines = text.split(/\r?\n/).length
  if (lines > 1) throw fail(`bios.passwordFile ${file} holds ${lines} lines, where the password is one`, hint)
  if (text === '') throw fail(`bios.passwordFile ${file} is empty`, hint)
  if (/[\x00-\x1f\x7f]/.test(text)) throw fail(`bios.passwordFile ${file} holds a control character (a password is printable text)`, hint)
  return text
}

/** Apply a plan and read every changed value back. */
export async function applyBios(plan: BiosPlan, config: InstallConfig['bios'], configFile: string, sysRoot = '/sys'): Promise<BiosResult> {
  if (plan.backend === 'none' || !plan.changes.length) return { ...plan, pendingReboot: plan.backend === 'none' ? null : false }
  const backend = plan.backend === 'sysfs' ? sysfsBackend(plan.where!) : cctkBackend(plan.where!)
  let password = config.passwordFile ? readPassword(path.resolve(path.dirname(configFile), config.passwordFile)) : null
  await backend.write(plan.changes, password)
  password = null
  for (const c of plan.changes) {
    const now = await backend.read(c.name)
    if (now !== c.to)
      throw fail(
        `BIOS attribute ${c.name} reads ${JSON.stringify(now)} after writing ${JSON.stringify(c.to)}`,
        'the firmware did not take the setting; check it in the BIOS setup',
      )
  }
  return { ...plan, pendingReboot: await backend.pendingReboot() }
}

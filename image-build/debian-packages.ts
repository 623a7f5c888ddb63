// Debian packages as build inputs, fetched with the machine's own apt configuration (so its
// mirror is whatever the apt sources say) and unpacked with dpkg-deb -x into a cache.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'

/**
 * Where downloaded packages and built images are kept: $LABHOST_CACHE, else the source tree's
 * .cache (from source), else the user's cache directory (the single executable, which has no
 * tree of its own: $XDG_CACHE_HOME/labhost or ~/.cache/labhost).
 */
export function cacheRoot(): string {
  if (process.env.LABHOST_CACHE) return process.env.LABHOST_CACHE
  if (import.meta.dirname) return path.resolve(import.meta.dirname, '../.cache')
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'labhost')
}

async function aptGet(args: string[], cwd?: string): Promise<string> {
  return (await run('apt-get', ['-q', '-o', 'APT::Sandbox::User=root', ...args], { cwd, timeoutMs: 15 * 60_000 })).stdout
}

/** The concrete package a metapackage (e.g. linux-image-amd64) depends on. */
export async function resolveMetapackage(name: string): Promise<string> {
  const { stdout } = await run('apt-cache', ['depends', name])
  const dep = /Depends: (linux-image-[^\s]+)/.exec(stdout)?.[1]
  if (!dep) {
    throw new LabhostError('notFound', `apt knows no package ${name}`, 'run `apt-get update` (scripts/setup.sh does) and check the apt sources')
  }
  return dep
}

/** Download and unpack one package; returns the unpack directory. Cached by package file name. */
export async function unpackDebianPackage(name: string): Promise<string> {
  const debDir = path.join(cacheRoot(), 'debs')
  fs.mkdirSync(debDir, { recursive: true })
  const isDeb = (f: string) => f.startsWith(`${name}_`) && f.endsWith('.deb')
  let deb = fs.readdirSync(debDir).find(isDeb)
  if (!deb) {
    // downloaded into a directory of this process's own, then renamed in: a build beside this one
    // never meets a half-written .deb
    const dl = path.join(debDir, `.tmp-${process.pid}`)
    fs.rmSync(dl, { recursive: true, force: true })
    fs.mkdirSync(dl)
    try {
      await aptGet(['download', name], dl)
      deb = fs.readdirSync(dl).find(isDeb)
      if (!deb) throw new LabhostError('notFound', `apt-get download ${name} produced no .deb`, 'check the apt sources and the network to the Debian mirror')
      fs.renameSync(path.join(dl, deb), path.join(debDir, deb))
    } finally {
      fs.rmSync(dl, { recursive: true, force: true })
    }
  }
  const out = path.join(cacheRoot(), 'unpacked', deb.replace(/\.deb$/, ''))
  if (!fs.existsSync(out)) {
    const tmp = `${out}.tmp-${process.pid}`
    fs.rmSync(tmp, { recursive: true, force: true })
    fs.mkdirSync(tmp, { recursive: true })
    await run('dpkg-deb', ['-x', path.join(debDir, deb), tmp])
    renameUnlessThere(tmp, out)
  }
  return out
}

/** Rename `tmp` to `out`; if a process beside this one put `out` there first, its copy stays and `tmp` goes. */
function renameUnlessThere(tmp: string, out: string): void {
  try {
    fs.renameSync(tmp, out)
  } catch (e) {
    if (!fs.existsSync(out)) throw e
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

export interface DebianKernel {
  version: string
  vmlinuz: string
  modulesDir: string
}

/** The current Debian kernel (linux-image-amd64's dependency), unpacked. */
export async function debianKernel(): Promise<DebianKernel> {
  return kernelFromPackage('linux-image-amd64')
}

/** A kernel package (or a metapackage such as linux-image-amd64), unpacked. */
export async function kernelFromPackage(name: string): Promise<DebianKernel> {
  const pkg = /^linux-image-\d/.test(name) ? name : await resolveMetapackage(name)
  const root = await unpackDebianPackage(pkg)
  const version = pkg.replace(/^linux-image-/, '')
  const vmlinuz = path.join(root, 'boot', `vmlinuz-${version}`)
  const modulesDir = path.join(root, 'lib/modules', version)
  if (!fs.existsSync(vmlinuz) || !fs.existsSync(modulesDir)) {
    throw new LabhostError('notFound', `${pkg} holds no vmlinuz-${version} and modules`, 'the package layout changed; check dpkg -c of the .deb')
  }
  return { version, vmlinuz, modulesDir }
}

/** This machine's Debian release, e.g. bookworm. */
export function machineSuite(): string {
  const osr = fs.readFileSync('/etc/os-release', 'utf8')
  return /^VERSION_CODENAME=(.*)$/m.exec(osr)?.[1]?.replace(/"/g, '') ?? 'unknown'
}

/**
 * The Debian mirror of this machine's apt sources that serves `suite` (deb822 .sources files
 * and the one-line sources.list format). Never a built-in host name.
 */
export function debianMirror(suite: string): string {
  const found: string[] = []
  const dir = '/etc/apt/sources.list.d'
  const deb822 = fs.existsSync(dir)
    ? fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.sources'))
        .map((f) => path.join(dir, f))
    : []
  for (const f of deb822) {
    for (const stanza of fs.readFileSync(f, 'utf8').split(/\n\s*\n/)) {
      const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'mi').exec(stanza)?.[1]?.trim() ?? ''
      if (/^\s*Enabled:\s*no/im.test(stanza)) continue
      if (field('Types').split(/\s+/).includes('deb') && field('Suites').split(/\s+/).includes(suite) && field('Components').split(/\s+/).includes('main')) {
        found.push(...field('URIs').split(/\s+/).filter(Boolean))
      }
    }
  }
  const list = '/etc/apt/sources.list'
  if (fs.existsSync(list)) {
    for (const line of fs.readFileSync(list, 'utf8').split('\n')) {
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$/.exec(line.trim())
      if (m && m[2] === suite && m[3]!.split(/\s+/).includes('main')) found.push(m[1]!)
    }
  }
  if (!found.length) {
    throw new LabhostError(
      'configInvalid',
      `no apt source of this machine serves ${suite} main`,
      `add a deb source for ${suite} to /etc/apt/sources.list.d, or use this machine's release`,
    )
  }
  return found[0]!
}

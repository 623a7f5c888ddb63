// The catalogue of VM base images on a host: a small INI file the lab's VM launcher reads, one
// section per base — name, display name, OS type, default, plus version, file, size and SHA-256.
// Replaced whole and durably (write a temporary file, fsync, rename, fsync the directory): a power
// cut leaves the old catalogue or the new one. labhost writes it; a file it cannot read back
// exactly is refused (exit 72) rather than half-understood and rewritten.
import fs from 'node:fs'
import { LabhostError } from '../lib/errors.ts'
import { writeDurable } from '../lib/durable.ts'
import { BaseName, type VmManifest } from './manifest.ts'

export interface CatalogueEntry {
  name: string
  displayName: string
  osType: string
  default: boolean
  version: string
  /** The base's absolute path (what `qemu-img create -b` is given). */
  file: string
  size: number
  sha256: string
}

export const DEFAULT_CATALOGUE = '/qcow2/backing/catalogue.ini'

const KEYS: Record<string, keyof CatalogueEntry> = {
  name: 'name',
  display_name: 'displayName',
  os_type: 'osType',
  default: 'default',
  version: 'version',
  file: 'file',
  size: 'size',
  sha256: 'sha256',
}

const HEADER = '# VM base images on this host: written by `labhost vm-image pull`, replaced whole; do not edit.\n'

export function formatCatalogue(entries: CatalogueEntry[]): string {
  const sections = [...entries]
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((e) =>
      [`[${e.name}]`, ...Object.entries(KEYS).map(([key, field]) => `${key}=${field === 'default' ? (e.default ? 'true' : 'false') : String(e[field])}`)].join(
        '\n',
      ),
    )
  return `${HEADER}${sections.map((s) => `\n${s}\n`).join('')}`
}

export function parseCatalogue(text: string, where: string): CatalogueEntry[] {
  const bad = (line: number, why: string) =>
    new LabhostError(
      'catalogueInvalid',
      `${where}:${line}: ${why}`,
      'the catalogue is written by labhost only: restore it, or remove it and pull the bases again; nothing was changed',
    )
  const entries: CatalogueEntry[] = []
  let current: Record<string, string> | null = null
  let startLine = 0
  const finish = () => {
    if (!current) return
    const missing = Object.keys(KEYS).filter((k) => current![k] === undefined)
    if (missing.length) throw bad(startLine, `section [${current.__section}] lacks ${missing.join(', ')}`)
    if (current.name !== current.__section) throw bad(startLine, `section [${current.__section}] has name=${current.name}`)
    if (!/^(true|false)$/.test(current.default!)) throw bad(startLine, `default=${current.default} is neither true nor false`)
    if (!/^\d+$/.test(current.size!)) throw bad(startLine, `size=${current.size} is not a number`)
    if (!/^[0-9a-f]{64}$/.test(current.sha256!)) throw bad(startLine, `sha256=${current.sha256} is not a SHA-256`)
    if (!current.file!.startsWith('/')) throw bad(startLine, `file=${current.file} is not an absolute path`)
    entries.push({
      name: current.name!,
      displayName: current.display_name!,
      osType: current.os_type!,
      default: current.default === 'true',
      version: current.version!,
      file: current.file!,
      size: Number(current.size),
      sha256: current.sha256!,
    })
  }
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return
    const section = /^\[(.*)\]$/.exec(line)
    if (section) {
      finish()
      if (!BaseName.safeParse(section[1]).success) throw bad(i + 1, `[${section[1]}] is not a base name`)
      if (entries.some((e) => e.name === section[1])) throw bad(i + 1, `[${section[1]}] appears twice`)
      current = { __section: section[1]! }
      startLine = i + 1
      return
    }
    const kv = /^([a-z0-9_]+)=(.*)$/.exec(line)
    if (!kv || !current) throw bad(i + 1, `${JSON.stringify(line.slice(0, 60))} is not key=value inside a section`)
    if (!(kv[1]! in KEYS)) throw bad(i + 1, `unknown key ${kv[1]}`)
    if (current[kv[1]!] !== undefined) throw bad(i + 1, `${kv[1]} given twice`)
    current[kv[1]!] = kv[2]!
  })
  finish()
  return entries
}

/** The catalogue's entries; none when the file does not exist yet. */
export function readCatalogue(file: string): CatalogueEntry[] {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw new LabhostError(
      'catalogueInvalid',
      `${file} cannot be read: ${(e as Error).message}`,
      'check the path and its permissions; nothing was changed',
      {},
      { cause: e },
    )
  }
  return parseCatalogue(text, file)
}

export function writeCatalogue(file: string, entries: CatalogueEntry[]): void {
  writeDurable(file, formatCatalogue(entries))
}

/**
 * The entries with `m` installed as `file`: its section replaces the one of the same name (a new
 * version of a base replaces the old one); a base published as default makes every other not.
 */
export function withBase(entries: CatalogueEntry[], m: VmManifest, file: string): CatalogueEntry[] {
  const entry: CatalogueEntry = {
    name: m.name,
    displayName: m.displayName,
    osType: m.os,
    default: m.default,
    version: m.version,
    file,
    size: m.image.size,
    sha256: m.image.sha256,
  }
  return [...entries.filter((e) => e.name !== m.name).map((e) => (m.default ? { ...e, default: false } : e)), entry]
}

// Where an install leaves what the technician or the admin reads afterwards (the report, a
// refusal's reason, the log, the record of an unfinished install): a directory on the stick, or
// for a network install the image server's reports directory, written by HTTP PUT (labhost image
// serve --accept-reports). The server's directory is shared by a whole room of PCs, so a record
// that belongs to one PC carries that PC's boot MAC in its name (`ownPrefix`).
import fs from 'node:fs'
import path from 'node:path'
import { syncDir, writeDurable } from '../lib/durable.ts'
import { LabhostError } from '../lib/errors.ts'

export interface ReportStore {
  /** For messages: the directory or URL. */
  where: string
  /** Prefix of the names of this PC's own records ('' on a stick, which one technician carries). */
  ownPrefix: string
  /** The file's text, or null when there is none. */
  read(name: string): Promise<string | null>
  /** Store the file whole and durably (a power cut leaves the old or the new text). */
  write(name: string, text: string): Promise<void>
  /** Forget the file; a store that cannot delete (HTTP) replaces it with `emptied`. */
  remove(name: string, emptied: string): Promise<void>
}

export function dirStore(dir: string): ReportStore {
  return {
    where: dir,
    ownPrefix: '',
    read: async (name) => {
      try {
        return fs.readFileSync(path.join(dir, name), 'utf8')
      } catch {
        return null
      }
    },
    write: async (name, text) => {
      fs.mkdirSync(dir, { recursive: true })
      writeDurable(path.join(dir, name), text)
    },
    remove: async (name) => {
      fs.rmSync(path.join(dir, name), { force: true })
      if (fs.existsSync(dir)) syncDir(dir)
    },
  }
}

/** The MAC as iPXE's `${netX/mac:hexraw}` writes it: twelve lower-case hex digits. */
export const hexrawMac = (mac: string): string => mac.toLowerCase().replace(/[^0-9a-f]/g, '')

const ATTEMPTS = 5
const TIMEOUT_MS = 20_000

async function request(url: string, init: RequestInit): Promise<Response> {
  let last: unknown
  for (let i = 0; i < ATTEMPTS; i++) {
    try {
      const r = await fetch(url, { ...init, signal: AbortSignal.timeout(TIMEOUT_MS) })
      // a server error or an overloaded server may pass; a refusal (4xx) will not
      if (r.status < 500) return r
      last = new Error(`HTTP ${r.status}`)
    } catch (e) {
      last = e
    }
    await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** i))
  }
  throw last
}

/**
 * The server's reports directory at `baseUrl` (ending in /). Writes are PUTs the server stores
 * durably before it answers; this PC's records are prefixed with its boot MAC.
 */
export function httpStore(baseUrl: string, bootMac: string): ReportStore {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`
  const urlOf = (name: string) => new URL(encodeURIComponent(name), base).toString()
  const failed = (what: string, url: string, e: unknown) =>
    new LabhostError(
      'downloadFailed',
      `${what} ${url} failed: ${e instanceof Error ? e.message : String(e)}`,
      'the image server must be reachable and run `labhost image serve DIR --accept-reports SUBDIR` for this reports directory',
      {},
      { cause: e },
    )
  return {
    where: base,
    ownPrefix: `${hexrawMac(bootMac)}-`,
    read: async (name) => {
      const url = urlOf(name)
      let r: Response
      try {
        r = await request(url, {})
      } catch (e) {
        throw failed('GET', url, e)
      }
      if (r.status === 404) return null
      if (!r.ok) throw failed('GET', url, new Error(`HTTP ${r.status}`))
      return await r.text()
    },
    write: async (name, text) => {
      const url = urlOf(name)
      let r: Response
      try {
        r = await request(url, { method: 'PUT', body: text, headers: { 'content-type': 'application/octet-stream' } })
      } catch (e) {
        throw failed('PUT', url, e)
      }
      if (!r.ok) throw failed('PUT', url, new Error(`HTTP ${r.status} ${(await r.text()).trim()}`))
    },
    remove: async (name, emptied) => {
      const url = urlOf(name)
      try {
        const r = await request(url, { method: 'PUT', body: emptied })
        if (!r.ok) throw new Error(`HTTP ${r.status}`)
      } catch (e) {
        throw failed('PUT', url, e)
      }
    },
  }
}

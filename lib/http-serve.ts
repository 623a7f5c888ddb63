// The static HTTP(S) server for image directories (`labhost image serve`, the demo, the tests): GET
// and HEAD with Range, so `labhost update URL` can resume and fetch single chunks. The HTTP side
// (Range, conditional GET, headers, error pages) is the `send` package — what Express's static
// serving is built on — behind Node's http/https server; this file decides which file a request
// may have: only regular files whose real path is inside the directory, no dotfiles, no private
// keys. Any static server with Range support (nginx) serves an image directory as well.
// A fault hook lets tests answer with errors or cut a response short, as real networks do. With
// `uploads`, one directory also takes PUTs of reports (lib/upload-receiver.ts); nothing else is written.
import fs from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import send from 'send'
import { openUploadDir, receiveUpload, type UploadLimits } from './upload-receiver.ts'

export interface ServedRequest {
  method: string
  /** The decoded path, control characters escaped (safe to log). */
  path: string
  range: string | null
  /** 0 when the connection closed before an answer was sent. */
  status: number
  /** Body bytes of the file sent, or stored by a PUT (error pages not counted). */
  bytes: number
}

/** What to do with one request, decided before it is answered. */
export interface Fault {
  status?: number
  /** Send only this many body bytes, then drop the connection. */
  dropAfter?: number
  /** Answer 200 with the whole file even when a Range was asked for. */
  ignoreRange?: boolean
}

/**
 * Limits against clients that hold connections without using them. The defaults suit a lab LAN:
 * a request's headers arrive in milliseconds there, and a host that is downloading reads all the
 * time (labhost's own client gives up on a connection silent for 30 s).
 */
export interface ServeLimits {
  /** The whole request head must have arrived this long after the connection began (slowloris). */
  headersTimeoutMs: number
  /** The whole request (head and any body) must have arrived by then; a download may take longer. */
  requestTimeoutMs: number
  /** A connection on which nothing moved for this long (a client that stopped reading) is closed. */
  idleTimeoutMs: number
  /** An idle keep-alive connection is closed after this long. */
  keepAliveTimeoutMs: number
  /** Connections beyond this many are closed at once (each download holds a socket and a file). */
  maxConnections: number
  /** A TLS handshake must be over by then. */
  tlsHandshakeTimeoutMs: number
}

export const DEFAULT_LIMITS: ServeLimits = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  idleTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 512,
  tlsHandshakeTimeoutMs: 10_000,
}

export interface ServeOptions {
  host?: string
  port?: number
  fault?: (req: { path: string; range: string | null; index: number }) => Fault | undefined
  /** Called when a response is over (sent, or its connection closed). */
  onRequest?: (req: ServedRequest) => void
  /** Serve https with this certificate (chain) and key, PEM. */
  tls?: { cert: string | Buffer; key: string | Buffer }
  /** Keep every request in `requests` (tests); a long-running server counts them only. Default true. */
  keepRequests?: boolean
  limits?: Partial<ServeLimits>
  /**
   * Take PUTs of reports into this directory (relative to the root; it must exist inside it,
   * reached without a symlink): `PUT /<dir>/<name>`, names and limits as lib/upload-receiver.ts
   * says. Any other PUT is 405, as without this option.
   */
  uploads?: { dir: string } & Partial<UploadLimits>
}

export interface Server {
  url: string
  port: number
  /** Every request answered so far (empty with keepRequests: false). */
  requests: ServedRequest[]
  /** With ServeOptions.uploads: the directory's real path and its URL. */
  uploads: { dir: string; url: string } | null
  /** `uploaded`: files stored by PUTs. */
  totals: { requests: number; bytes: number; uploaded: number }
  close(): Promise<void>
}

/** `s` with control characters (C0, DEL, C1, line and paragraph separators) and backslashes escaped: one log line stays one. */
export function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029\\]/g, (c) => {
    if (c === '\\') return '\\\\'
    if (c === '\r') return '\\r'
    if (c === '\n') return '\\n'
    if (c === '\t') return '\\t'
    const code = c.charCodeAt(0)
    return code > 0xff ? `\\u${code.toString(16).padStart(4, '0')}` : `\\x${code.toString(16).padStart(2, '0')}`
  })
}

/** The request target's path, percent-decoded; null when it is not one (a malformed %-escape, `*`). */
function requestPath(target: string): string | null {
  let p = target
  if (!p.startsWith('/')) {
    try {
      p = new URL(p).pathname // absolute form: GET http://host/path
    } catch {
      return null
    }
  }
  const q = p.search(/[?#]/)
  if (q >= 0) p = p.slice(0, q)
  try {
    return decodeURIComponent(p)
  } catch {
    return null
  }
}

// Private keys are never served, whatever the directory holds: by name (labhost image keygen
// writes NAME.key; TLS keys, PKCS#12 bundles, SSH keys), and by content for small files (a key
// under any other name: `-----BEGIN … PRIVATE KEY-----`, OpenSSH, PGP).
const PRIVATE_KEY_NAME = /\.(key|p12|pfx|jks|keystore)$|^id_(rsa|dsa|ecdsa|ed25519)(_sk)?$|^ssh_host_\w+_key$/i
const PRIVATE_KEY_TEXT = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----/
const SNIFF_BYTES = 64 << 10

async function isPrivateKey(file: string, size: number): Promise<boolean> {
  if (PRIVATE_KEY_NAME.test(path.basename(file))) return true
  if (size > SNIFF_BYTES) return false
  const h = await fs.promises.open(file, 'r')
  try {
    const { buffer, bytesRead } = await h.read(Buffer.alloc(size), 0, size, 0)
    return PRIVATE_KEY_TEXT.test(buffer.subarray(0, bytesRead).toString('latin1'))
  } finally {
    await h.close()
  }
}

const isDotName = (s: string) => s.length > 1 && s.startsWith('.')

/**
 * The file a decoded request path may have, as a path relative to the real root, or the status
 * that refuses it: `..` and dotfiles (403), anything whose real path (symlinks resolved) is not
 * inside the root (403), not a regular file (404), a private key (403).
 */
async function resolveFile(realRoot: string, decoded: string): Promise<{ rel: string } | { status: number }> {
  if (decoded.includes('\0')) return { status: 400 }
  const segments = decoded.split('/')
  if (segments.includes('..') || segments.some(isDotName)) return { status: 403 }
  let real: string
  try {
    real = await fs.promises.realpath(path.join(realRoot, ...segments))
  } catch (e) {
    return { status: (e as NodeJS.ErrnoException).code === 'EACCES' ? 403 : 404 }
  }
  const inside = realRoot.endsWith(path.sep) ? realRoot : realRoot + path.sep
  if (!real.startsWith(inside)) return { status: real === realRoot ? 404 : 403 }
  const rel = path.relative(realRoot, real)
  if (rel.split(path.sep).some(isDotName)) return { status: 403 }
  const stat = await fs.promises.stat(real).catch(() => null)
  if (!stat?.isFile()) return { status: 404 }
  if (await isPrivateKey(real, stat.size)) return { status: 403 }
  return { rel }
}

/**
 * Count the body bytes written to `res` and, for a fault, stop after `dropAfter` of them: the
 * bytes written reach the client, then the connection ends early.
 */
function meter(res: http.ServerResponse, record: ServedRequest, dropAfter: number | undefined): void {
  const write = res.write.bind(res) as (chunk: unknown, ...rest: unknown[]) => boolean
  let dropped = false
  ;(res as unknown as { write: typeof write }).write = (chunk, ...rest) => {
    if (dropped) return false
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Uint8Array)
    if (dropAfter !== undefined && record.bytes + buf.length >= dropAfter) {
      dropped = true
      const part = buf.subarray(0, dropAfter - record.bytes)
      record.bytes += part.length
      res.flushHeaders()
      // end, not destroy: what was written reaches the client first; the file stream is
      // destroyed when the response closes, as for any connection that ends early
      write(part, () => res.socket?.end())
      return false
    }
    record.bytes += buf.length
    return write(chunk, ...rest)
  }
}

export async function serveDirectory(root: string, o: ServeOptions = {}): Promise<Server> {
  const limits = { ...DEFAULT_LIMITS, ...o.limits }
  const realRoot = fs.realpathSync(root)
  const uploads = o.uploads ? openUploadDir(root, realRoot, o.uploads.dir, o.uploads) : null
  const requests: ServedRequest[] = []
  const totals = { requests: 0, bytes: 0, uploaded: 0 }
  const keep = o.keepRequests ?? true

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const decoded = requestPath(req.url ?? '/')
    const range = typeof req.headers.range === 'string' ? req.headers.range : null
    const record: ServedRequest = {
      method: printable(req.method ?? ''),
      path: printable(decoded ?? req.url ?? ''),
      range: range === null ? null : printable(range),
      status: 0,
      bytes: 0,
    }
    const index = totals.requests++
    if (keep) requests.push(record)
    res.once('close', () => {
      record.status = res.headersSent ? res.statusCode : 0
      totals.bytes += record.bytes
      o.onRequest?.(record)
    })
    const answer = (status: number, headers: http.OutgoingHttpHeaders = {}) => {
      const body = `${http.STATUS_CODES[status] ?? 'error'}\n`
      res
        .writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), ...headers })
        .end(req.method === 'HEAD' ? undefined : body)
    }
    if (decoded === null) return answer(400)
    const fault = o.fault?.({ path: record.path, range, index }) ?? {}
    if (fault.status) return answer(fault.status)
    const slash = decoded.lastIndexOf('/')
    const toUploads = uploads !== null && decoded.slice(0, slash) === uploads.urlPath
    if (req.method === 'PUT' && toUploads) {
      const r = await receiveUpload(req, uploads, decoded.slice(slash + 1))
      if (r.status === 201 || r.status === 204) {
        record.bytes = r.bytes
        totals.uploaded++
      }
      if (res.destroyed) return
      if (r.status === 204) return res.writeHead(204).end()
      // a refused body was not read (or not all of it): the connection cannot carry another request
      return answer(r.status, r.status === 201 ? {} : { connection: 'close' })
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return answer(405, { allow: toUploads ? 'GET, HEAD, PUT' : 'GET, HEAD' })
    const found = await resolveFile(realRoot, decoded)
    if ('status' in found) return answer(found.status)
    if (res.destroyed) return
    meter(res, record, fault.dropAfter)
    const urlPath = '/' + found.rel.split(path.sep).map(encodeURIComponent).join('/')
    send(req, urlPath, { root: realRoot, dotfiles: 'deny', index: false, acceptRanges: !fault.ignoreRange })
      // an error of send's (a file gone since, a read error mid-way) is answered here: send's own
      // error page would try to change headers already sent
      .on('error', (e: { status?: number; headers?: Record<string, string> }) => {
        if (res.headersSent) res.destroy()
        else answer(e.status ?? 500, e.headers ?? {})
      })
      .pipe(res)
  }
  const handler: http.RequestListener = (req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500, { 'content-length': 0 }).end()
      else res.destroy()
    })
  }

  const serverOptions: http.ServerOptions = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // how often Node checks the two timeouts above (its default, 30 s, would let a slow client
    // hold its connection up to that much longer)
    connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
  }
  const server = o.tls
    ? https.createServer({ ...serverOptions, cert: o.tls.cert, key: o.tls.key, handshakeTimeout: limits.tlsHandshakeTimeoutMs }, handler)
    : http.createServer(serverOptions, handler)
  server.maxConnections = limits.maxConnections
  // no 'timeout' listener: Node destroys the idle socket
  server.setTimeout(limits.idleTimeoutMs)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const port = (server.address() as AddressInfo).port
  const url = `${o.tls ? 'https' : 'http'}://${o.host ?? '127.0.0.1'}:${port}`
  return {
    url,
    port,
    uploads: uploads && { dir: uploads.real, url: url + uploads.urlPath.split('/').map(encodeURIComponent).join('/') + '/' },
    requests,
    totals,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

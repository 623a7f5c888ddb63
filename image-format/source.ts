// Where an update comes from: a local image directory (or its manifest.json), or an http(s) URL
// of one. Either way the caller gets the manifest text first — to verify before any write — and
// then the compressed transport file as a byte stream. Over HTTP that stream survives server
// errors and dropped connections: it waits with backoff and resumes with a Range request from
// the first byte it does not have yet, so a resumed download never starts over.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import tls from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Got, HTTPError, Response } from 'got'
import { LabhostError, type ErrorCode } from '../lib/errors.ts'
import { parseSignedManifest, readSignedManifest, type Manifest } from './manifest.ts'

export interface FetchOptions {
  /** Failed attempts in a row (no byte gained) before giving up. */
  retries: number
  /** First wait after a failure; doubles each time, at most 30 s. */
  backoffMs: number
  /** Connect timeout and the longest a connection may stay silent. */
  timeoutMs: number
  /**
   * A PEM file of certificate authorities trusted for https besides Node's own list (a lab's
   * internal CA); aria2c is given it too.
   */
  caFile?: string
  log?: (line: string) => void
}

export const DEFAULT_FETCH: FetchOptions = { retries: 6, backoffMs: 1000, timeoutMs: 30_000 }

export interface TransferStats {
  /** HTTP requests made for the transport file (1 when nothing went wrong). */
  requests: number
  /** Requests that continued with Range after a failure, from the first byte not yet received. */
  resumes: number
  /** Body bytes received from the network (all requests, including bytes a server resent). */
  bytes: number
  failures: string[]
  /** A BitTorrent download (updater/torrent.ts): its file, how long it took, the aria2c left seeding. */
  torrent?: { url: string; file: string; seconds: number; seederPid: number | null; seedMinutes: number }
}

/** What every source has: the verified manifest, where it and the transport file are, the counters. */
interface SourceCommon {
  /** The manifest's file or URL, for messages. */
  readonly manifestWhere: string
  readonly manifest: Manifest
  /** The transport file's path or URL (for a delta, what it takes from the disk and downloads). */
  readonly transportWhere: string
  /** Counters of the downloads (one object, shared by an http source and what is made from it). */
  readonly stats: TransferStats
}

/** The transport file's URL and the fetch options of a downloaded source. */
export type Remote = Readonly<{ url: string; fetch: FetchOptions }>

/**
 * Where an image's bytes come from, one kind each: a raw image file the writer reads straight into
 * its buffers (a build directory, an unpacked copy), a local zstd transport file, the transport
 * file over http(s) (streamed, resumed), a delta (updater/delta.ts: a raw stream of chunks from the
 * disk and downloaded frames), or the transport file downloaded with BitTorrent (updater/torrent.ts).
 */
export type UpdateSource =
  | (SourceCommon & { readonly kind: 'local-raw'; readonly file: string })
  | (SourceCommon & { readonly kind: 'local-zstd'; readonly file: string })
  | (SourceCommon & { readonly kind: 'http'; readonly remote: Remote })
  | (SourceCommon & { readonly kind: 'delta'; readonly remote: Remote; readonly chunks: () => AsyncIterable<Buffer> })
  | (SourceCommon & { readonly kind: 'torrent'; readonly remote: Remote; readonly file: string })

export type SourceKind = UpdateSource['kind']
export type HttpSource = Extract<UpdateSource, { kind: 'http' }>

/** For the exhaustive switches over a union's kinds: a kind nobody handles fails to compile. */
export function unhandledKind(x: never): never {
  throw new Error(`unhandled kind ${JSON.stringify((x as { kind?: unknown }).kind)}`)
}

/** The http source an update was opened from, if it was (a delta or a torrent needs one). */
export function httpSource(source: UpdateSource): HttpSource | null {
  switch (source.kind) {
    case 'http':
      return source
    case 'local-raw':
    case 'local-zstd':
    case 'delta':
    case 'torrent':
      return null
    default:
      return unhandledKind(source)
  }
}

/** The transport file of an http source from its first byte, resumed across failures. */
export function downloadTransport(source: HttpSource): AsyncIterable<Buffer> {
  return resumableDownload(source.remote.url, { start: 0, end: source.manifest.transport.size, whole: true }, source.remote.fetch, source.stats)
}

export const isUrl = (s: string): boolean => /^https?:\/\//i.test(s)

/**
 * The manifest is checked against `trusted` as it is read: its signature before any other field
 * (exit 30 for a forged one, whatever else it holds), then its shape (31).
 */
export async function openSource(spec: string, trusted: crypto.KeyObject, fetch: FetchOptions = DEFAULT_FETCH): Promise<UpdateSource> {
  return isUrl(spec) ? openHttpSource(spec, trusted, fetch) : openLocalSource(spec, trusted)
}

function openLocalSource(spec: string, trusted: crypto.KeyObject): UpdateSource {
  if (!fs.existsSync(spec)) throw new LabhostError('notFound', `${spec} does not exist`, 'name an image directory, its manifest.json, or an http(s) URL of one')
  const manifestFile = fs.statSync(spec).isDirectory() ? path.join(spec, 'manifest.json') : spec
  const manifest = readSignedManifest(manifestFile, trusted)
  const dir = path.dirname(manifestFile)
  const stats = { requests: 0, resumes: 0, bytes: 0, failures: [] }
  // The raw image, when it is there at its full size, saves the decompression (a build
  // directory, an unpacked copy); its chunks are checked all the same.
  const raw = path.join(dir, path.basename(manifest.image.file))
  if (fs.existsSync(raw) && fs.statSync(raw).size === manifest.image.size) {
    return { kind: 'local-raw', manifestWhere: manifestFile, manifest, transportWhere: raw, file: raw, stats }
  }
  const transport = path.join(dir, path.basename(manifest.transport.file))
  if (!fs.existsSync(transport)) throw new LabhostError('notFound', `${transport} is missing`, 'copy the whole image directory; nothing was written')
  return { kind: 'local-zstd', manifestWhere: manifestFile, manifest, transportWhere: transport, file: transport, stats }
}

/** `URL/` and `URL` (a directory) mean `URL/manifest.json`; a URL ending in .json is the manifest. */
export function manifestUrl(spec: string): string {
  const u = new URL(spec)
  if (!u.pathname.endsWith('.json')) u.pathname = u.pathname.replace(/\/?$/, '/manifest.json')
  return u.toString()
}

// got is loaded on the first download only: it is a third of the CLI's start-up time, and most
// commands (and updates from a directory) never use it.
let gotModule: Promise<Got> | undefined
const loadGot = () => (gotModule ??= import('got').then((m) => m.default))

/** The HTTP status of a got HTTPError (an answer outside 2xx), else undefined. */
function httpStatus(e: unknown): number | undefined {
  return e instanceof Error && e.name === 'HTTPError' ? (e as HTTPError).response.statusCode : undefined
}

// OpenSSL's verdicts on a server certificate (and Node's host-name check): no retry mends them
const TLS_TRUST_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_REVOKED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
])

function untrusted(url: string, o: FetchOptions, e: unknown, what: string): LabhostError | null {
  const err = e as { code?: string; message?: string }
  if (!err.code || !TLS_TRUST_ERRORS.has(err.code)) return null
  const hint =
    err.code === 'ERR_TLS_CERT_ALTNAME_INVALID'
      ? `use the host name the certificate names in the URL, or give the server a certificate for this one; ${what}`
      : o.caFile
        ? `${o.caFile} does not vouch for this server: give the CA certificate that signed its certificate with --ca PEM; ${what}`
        : `give the CA certificate that signed the server's certificate with --ca PEM; ${what}`
  return new LabhostError('tlsUntrusted', `${url}: the server's certificate is not trusted (${err.code}: ${err.message})`, hint, {}, { cause: e })
}

const caLists = new Map<string, string[]>()

/** got's https options: Node's own CA list, and the --ca file's certificates (read once). */
function httpsOptions(o: FetchOptions): { certificateAuthority?: string[] } {
  if (!o.caFile) return {}
  let list = caLists.get(o.caFile)
  if (!list) {
    if (!fs.existsSync(o.caFile))
      throw new LabhostError(
        'notFound',
        `--ca ${o.caFile} does not exist`,
        "give a PEM file of the CA certificate(s) that signed the image server's certificate; nothing was written",
      )
    const pem = fs.readFileSync(o.caFile, 'utf8')
    if (!/-----BEGIN CERTIFICATE-----/.test(pem))
      throw new LabhostError('usage', `--ca ${o.caFile} holds no PEM certificate`, 'give a PEM file (-----BEGIN CERTIFICATE-----); nothing was written')
    caLists.set(o.caFile, (list = [...tls.rootCertificates, pem]))
  }
  return { certificateAuthority: list }
}

const retriableStatus = (status: number) => status >= 500 || status === 408 || status === 429

function describe(e: unknown): string {
  const status = httpStatus(e)
  if (status !== undefined) return `HTTP ${status}`
  const err = e as { code?: string; message?: string }
  return err.code ? `${err.code}: ${err.message}` : String(err.message ?? e)
}

function isRetriable(e: unknown): boolean {
  const status = httpStatus(e)
  if (status !== undefined) return retriableStatus(status)
  if (TLS_TRUST_ERRORS.has((e as { code?: string }).code ?? '')) return false
  return !(e instanceof LabhostError)
}

function backoff(o: FetchOptions, failures: number): number {
  return Math.min(30_000, o.backoffMs * 2 ** (failures - 1))
}

function gaveUp(url: string, o: FetchOptions, last: unknown, what: string): LabhostError {
  if (last instanceof LabhostError) return last
  const tlsError = untrusted(url, o, last, what)
  if (tlsError) return tlsError
  const status = httpStatus(last)
  if (status !== undefined && !retriableStatus(status)) {
    const code = status === 404 ? 'notFound' : 'downloadFailed'
    return new LabhostError(
      code,
      `${url}: the server answered HTTP ${status}`,
      `check the URL and that the image is published there; ${what}`,
      {},
      { cause: last },
    )
  }
  return new LabhostError(
    'downloadFailed',
    `${url}: giving up after ${o.retries} failed attempts in a row (last: ${describe(last)})`,
    `check the network and the server, then run the same command again; ${what}`,
    {},
    { cause: last },
  )
}

const gotOptions = (o: FetchOptions) => ({
  https: httpsOptions(o),
  retry: { limit: 0 },
  decompress: false,
  timeout: { connect: o.timeoutMs, socket: o.timeoutMs, response: o.timeoutMs },
})

/**
 * The largest manifest.json fetched (it is read before its signature can be checked). A manifest
 * lists a SHA-256 per 1 MiB chunk and a frame size per chunk: 64 GiB of image make 65,536 of each,
 * about 5.6 MiB of pretty-printed JSON; 16 MiB holds images up to about 180 GiB.
 */
export const MANIFEST_MAX_BYTES = 16 << 20

/** How far an unverified download may go: `maxBytes`, and the error code that refuses more. */
export interface FetchLimit {
  maxBytes: number
  /** The refusal's code (default downloadFailed) and what it says was not done. */
  code?: ErrorCode
  what?: string
}

const mib = (n: number) => `${+(n / 2 ** 20).toFixed(2)} MiB`

function tooLarge(url: string, limit: FetchLimit, got: string): LabhostError {
  return new LabhostError(
    limit.code ?? 'downloadFailed',
    `${url} is larger than the ${limit.maxBytes}-byte (${mib(limit.maxBytes)}) cap for it (${got}); stopped reading`,
    `what the server sends there is no part of a labhost image directory: check the URL and what is published; ${limit.what ?? 'nothing was written'}`,
  )
}

async function fetchText(url: string, o: FetchOptions, limit?: FetchLimit): Promise<string> {
  return (await fetchBytes(url, o, limit)).toString('utf8')
}

/**
 * A small file (a manifest, a .torrent, the block index) whole, with the same retries and backoff
 * as the image. With `limit`, a response whose Content-Length is larger is refused before its
 * body is read, and one without is read only up to the cap.
 */
export async function fetchBytes(url: string, o: FetchOptions, limit?: FetchLimit): Promise<Buffer> {
  const got = await loadGot()
  for (let failures = 0; ;) {
    const stream = got.stream(url, gotOptions(o))
    try {
      const response = await new Promise<Response>((resolve, reject) => {
        stream.once('response', resolve)
        stream.once('error', reject)
      })
      const declared = Number(response.headers['content-length'])
      if (limit && declared > limit.maxBytes) throw tooLarge(url, limit, `Content-Length ${declared}`)
      const parts: Buffer[] = []
      let n = 0
      for await (const data of stream as AsyncIterable<Buffer>) {
        n += data.length
        if (limit && n > limit.maxBytes) throw tooLarge(url, limit, `more than ${limit.maxBytes} bytes sent`)
        parts.push(data)
      }
      return Buffer.concat(parts, n)
    } catch (e) {
      failures++
      if (!isRetriable(e) || failures >= o.retries) throw gaveUp(url, o, e, limit?.what ?? 'nothing was written')
      const wait = backoff(o, failures)
      o.log?.(`${url}: ${describe(e)}; retrying in ${(wait / 1000).toFixed(1)} s`)
      await sleep(wait)
    } finally {
      stream.destroy()
    }
  }
}

async function openHttpSource(spec: string, trusted: crypto.KeyObject, o: FetchOptions): Promise<HttpSource> {
  httpsOptions(o) // a bad --ca is refused before any request
  const mUrl = manifestUrl(spec)
  const manifest = parseSignedManifest(await fetchText(mUrl, o, { maxBytes: MANIFEST_MAX_BYTES, code: 'manifestInvalid' }), trusted, mUrl)
  const tUrl = new URL(path.posix.basename(manifest.transport.file), mUrl).toString()
  const stats: TransferStats = { requests: 0, resumes: 0, bytes: 0, failures: [] }
  return { kind: 'http', manifestWhere: mUrl, manifest, transportWhere: tUrl, stats, remote: { url: tUrl, fetch: o } }
}

/**
 * The bytes start..end-1 of `url`, across as many requests as it takes: asked for with `Range:
 * bytes=start-(end-1)` (a plain GET when `want.whole`: the file is all of 0..end-1), and after an
 * error, a timeout or a connection that ends early, after a wait, for the rest the same way. A
 * server that ignores Range (200 instead of 206) is read from its first byte, the bytes before the
 * wanted ones skipped and the ones after them not read.
 */
export async function* resumableDownload(
  url: string,
  want: { start: number; end: number; whole?: boolean },
  o: FetchOptions,
  stats: TransferStats,
): AsyncGenerator<Buffer> {
  const size = want.end
  let offset = want.start
  let failures = 0
  const got = await loadGot()
  while (offset < size) {
    const ranged = offset > 0 || !want.whole
    const stream = got.stream(url, { ...gotOptions(o), headers: ranged ? { range: `bytes=${offset}-${size - 1}` } : {} })
    stats.requests++
    if (offset > want.start) stats.resumes++
    const gainedFrom = offset
    try {
      const response = await new Promise<Response>((resolve, reject) => {
        stream.once('response', resolve)
        stream.once('error', reject)
      })
      let skip = 0
      if (ranged && response.statusCode === 206) {
        const start = /^bytes (\d+)-/.exec(String(response.headers['content-range'] ?? ''))?.[1]
        if (Number(start) !== offset)
          throw new LabhostError(
            'downloadFailed',
            `${url}: asked for bytes from ${offset}, the server sent ${response.headers['content-range'] ?? 'no Content-Range'}`,
            'serve the image from a plain HTTP server; nothing was switched',
          )
      } else if (ranged) {
        skip = offset
      }
      for await (const data of stream as AsyncIterable<Buffer>) {
        stats.bytes += data.length
        let piece = data
        if (skip) {
          const n = Math.min(skip, piece.length)
          skip -= n
          piece = piece.subarray(n)
          if (!piece.length) continue
        }
        if (offset + piece.length > size) piece = piece.subarray(0, size - offset)
        offset += piece.length
        if (piece.length) yield piece
        if (offset >= size) break
      }
      if (offset < size) throw new Error(`connection ended at byte ${offset} of ${size}`)
    } catch (e) {
      if (!isRetriable(e)) {
        if (httpStatus(e) === 416) {
          throw new LabhostError(
            'downloadFailed',
            `${url} is shorter than its manifest says (no bytes from ${offset} of ${size})`,
            'the published transport file is truncated: publish the image again; nothing was switched',
            {},
            { cause: e },
          )
        }
        throw e instanceof LabhostError ? e : gaveUp(url, o, e, 'nothing was switched')
      }
      if (offset > gainedFrom) failures = 0
      failures++
      stats.failures.push(`${describe(e)} at byte ${offset}`)
      if (failures >= o.retries) throw gaveUp(url, o, e, 'nothing was switched')
      const wait = backoff(o, failures)
      o.log?.(`${url}: ${describe(e)} at byte ${offset} of ${size}; resuming in ${(wait / 1000).toFixed(1)} s`)
      await sleep(wait)
    } finally {
      stream.destroy()
    }
  }
}

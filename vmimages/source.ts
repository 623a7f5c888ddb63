// Where a VM base image comes from: a directory that `labhost vm-image publish` wrote (or its
// manifest.json), or an http(s) URL of one. The signed manifest is read first, with a size cap,
// and verified before anything else; the base's bytes then come as a stream from any offset
// (a resumed download starts where the verified bytes end). Over HTTP it is the updater's
// resumable download (image-format/source.ts): retries with backoff, Range from the first missing byte.
import type crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import {
  DEFAULT_FETCH,
  fetchBytes,
  isUrl,
  MANIFEST_MAX_BYTES,
  manifestUrl,
  resumableDownload,
  type FetchOptions,
  type TransferStats,
} from '../image-format/source.ts'
import { parseSignedVmManifest, VM_MANIFEST_FILE, type VmManifest } from './manifest.ts'

export interface BaseSource {
  /** The manifest's file or URL, for messages. */
  manifestWhere: string
  manifest: VmManifest
  /** The base file's path or URL. */
  where: string
  /** The base file's bytes from `start` to its signed size (never more). */
  read(start: number): AsyncIterable<Buffer>
  /** Set for an http(s) source: the .torrent is published beside the file. */
  url?: string
  fetch: FetchOptions
  stats: TransferStats
}

export async function openBaseSource(spec: string, trusted: crypto.KeyObject, fetch: FetchOptions = DEFAULT_FETCH): Promise<BaseSource> {
  const stats: TransferStats = { requests: 0, resumes: 0, bytes: 0, failures: [] }
  if (isUrl(spec)) {
    const mUrl = manifestUrl(spec)
    const text = (await fetchBytes(mUrl, fetch, { maxBytes: MANIFEST_MAX_BYTES, code: 'manifestInvalid' })).toString('utf8')
    const manifest = parseSignedVmManifest(text, trusted, mUrl)
    // the name was checked against the schema: a plain file name, resolved beside the manifest
    const url = new URL(manifest.image.file, mUrl).toString()
    return {
      manifestWhere: mUrl,
      manifest,
      where: url,
      url,
      fetch,
      stats,
      read: (start) => resumableDownload(url, { start, end: manifest.image.size, whole: start === 0 }, fetch, stats),
    }
  }
  if (!fs.existsSync(spec))
    throw new LabhostError(
      'notFound',
      `${spec} does not exist`,
      'name a directory written by `labhost vm-image publish`, its manifest.json, or an http(s) URL of one; nothing was written',
    )
  const manifestFile = fs.statSync(spec).isDirectory() ? path.join(spec, VM_MANIFEST_FILE) : spec
  let text: string
  try {
    if (fs.statSync(manifestFile).size > MANIFEST_MAX_BYTES) throw new Error(`larger than ${MANIFEST_MAX_BYTES} bytes`)
    text = fs.readFileSync(manifestFile, 'utf8')
  } catch (e) {
    throw new LabhostError(
      'manifestInvalid',
      `${manifestFile} is not a readable manifest: ${(e as Error).message}`,
      'point at the manifest.json written by `labhost vm-image publish`; nothing was written',
      {},
      { cause: e },
    )
  }
  const manifest = parseSignedVmManifest(text, trusted, manifestFile)
  const file = path.join(path.dirname(manifestFile), manifest.image.file)
  return {
    manifestWhere: manifestFile,
    manifest,
    where: file,
    fetch,
    stats,
    read: async function* (start) {
      if (!fs.existsSync(file)) throw new LabhostError('notFound', `${file} is missing`, 'copy the whole published directory; nothing was installed')
      if (start < manifest.image.size)
        yield* fs.createReadStream(file, { start, end: manifest.image.size - 1, highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>
    },
  }
}

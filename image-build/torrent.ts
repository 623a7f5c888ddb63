// labhost image publish: a BitTorrent metainfo file for an image's transport copy, next to its
// signed manifest (root.img.zst → root.img.zst.torrent), made by mktorrent. The torrent is not
// signed and need not be: a host checks what it downloaded against the signed manifest.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { readManifest } from './manifest.ts'

export interface PublishOptions {
  /** Announce URLs (http://tracker:6969/announce); the first is the primary. */
  trackers: string[]
  /** HTTP URLs of the transport file that peers may also download from (BEP 19 web seeds). */
  webSeeds?: string[]
  /** log2 of the piece size; default 20 (1 MiB pieces). */
  pieceSizeLog2?: number
}

export interface Published {
  torrentFile: string
  infoHash: string
  pieces: number
}

export const torrentFileFor = (transportFile: string): string => `${transportFile}.torrent`

/** Info hash (hex) of a .torrent file, as aria2c reads it. */
export async function infoHash(torrentFile: string): Promise<string> {
  const { stdout } = await run('aria2c', ['--show-files=true', torrentFile])
  const m = /Info Hash:\s*([0-9a-f]{40})/i.exec(stdout)
  if (!m) throw new LabhostError('manifestInvalid', `${torrentFile} is not a torrent aria2c can read`, 'make it again with `labhost image publish`')
  return m[1]!.toLowerCase()
}

export async function publishImage(imageDir: string, o: PublishOptions): Promise<Published> {
  if (!o.trackers.length) throw new LabhostError('usage', 'labhost image publish needs at least one --tracker URL', 'e.g. --tracker http://10.0.0.1:6969/announce')
  for (const u of [...o.trackers, ...(o.webSeeds ?? [])]) {
    if (!/^(https?|udp):\/\/[^/]/.test(u)) throw new LabhostError('usage', `${u} is not a tracker or web seed URL`, 'use http://HOST:PORT/announce (or udp://) for trackers and http(s):// for web seeds')
  }
  const manifest = readManifest(path.join(imageDir, 'manifest.json'))
  const transport = path.join(imageDir, path.basename(manifest.transport.file))
  if (!fs.existsSync(transport) || fs.statSync(transport).size !== manifest.transport.size) {
    throw new LabhostError('notFound', `${transport} is missing or not the size its manifest says`, 'publish a complete image directory (labhost image build --out DIR)')
  }
  const out = torrentFileFor(transport)
  fs.rmSync(out, { force: true })
  const pieceLog2 = o.pieceSizeLog2 ?? 20
  // -d: no creation date, so the same image and trackers give the same torrent (and info hash)
  await run('mktorrent', ['-d', '-l', String(pieceLog2), ...o.trackers.flatMap((t) => ['-a', t]), ...(o.webSeeds ?? []).flatMap((w) => ['-w', w]), '-o', out, transport])
  return { torrentFile: out, infoHash: await infoHash(out), pieces: Math.ceil(manifest.transport.size / 2 ** pieceLog2) }
}

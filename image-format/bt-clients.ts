// The two BitTorrent clients labhost can run for a download (image-format/torrent-download.ts):
// aria2c, and a small client of labhost's own on libtorrent (libtorrent-client.py, run by Debian's
// python3 with python3-libtorrent). aria2c unchokes 3 peers and 1 more by tit-for-tat, with no
// setting for it: when a whole lab downloads at once, a host that falls behind is choked by peers
// that no longer want its pieces until they are done (measured: the last of 32 hosts 2.3x the
// time of one host alone). libtorrent's client unchokes every interested peer.
import fs from 'node:fs'
import path from 'node:path'
import sea from 'node:sea'
import { runStatus } from '../lib/exec.ts'

export const BT_CLIENTS = ['aria2c', 'libtorrent'] as const
export type BtClient = (typeof BT_CLIENTS)[number]

/** What a caller may ask for: a client, or `auto` (libtorrent where it is installed, else aria2c). */
export const BT_CLIENT_CHOICES = ['auto', ...BT_CLIENTS] as const
export type BtClientChoice = (typeof BT_CLIENT_CHOICES)[number]

/**
 * The client where none is named (`labhost update --torrent`, `vm-image pull`): labhost's libtorrent
 * client where the host has it — it keeps the last host of a lab near the first when the whole lab
 * downloads at once (aria2c's tit-for-tat chokes it, above).
 */
export const DEFAULT_BT_CLIENT: BtClientChoice = 'auto'

/** The Python labhost's libtorrent client runs on (Debian's, which python3-libtorrent is built for). */
export const PYTHON3 = '/usr/bin/python3'

/**
 * The client `choice` stands for. `auto`: labhost's libtorrent client where Debian's python3 can
 * import libtorrent (host images built from the recipe since python3-libtorrent is in it), else
 * aria2c (hosts installed from older images), with the reason for the log.
 */
export async function chooseBtClient(choice: BtClientChoice = DEFAULT_BT_CLIENT): Promise<{ client: BtClient; why: string }> {
  if (choice !== 'auto') return { client: choice, why: 'asked for' }
  const r = await runStatus(PYTHON3, ['-c', 'import libtorrent'], { timeoutMs: 30_000 })
  return r.exitCode === 0
    ? { client: 'libtorrent', why: 'auto: python3-libtorrent is installed' }
    : { client: 'aria2c', why: `auto: python3-libtorrent is not installed${r.startError ? ` (${PYTHON3}: ${r.startError})` : ''}` }
}

/** The SEA asset (scripts/build.ts) and source file of labhost's libtorrent client. */
export const LIBTORRENT_CLIENT = 'libtorrent-client.py'

/** The client's Python source: beside this file, or the executable's asset. */
export function libtorrentClientSource(): string {
  if (sea.isSea()) return sea.getAsset(LIBTORRENT_CLIENT, 'utf8')
  return fs.readFileSync(path.join(import.meta.dirname ?? '.', LIBTORRENT_CLIENT), 'utf8')
}

/** The largest rate a client takes: libtorrent's rate settings are 32-bit signed integers (2047M fits). */
export const RATE_MAX = 2 ** 31 - 1

/** aria2c's rate notation (500K, 30M; K and M are 1024 and 1024²) in bytes per second. */
export function rateBytes(rate: string): number {
  const m = /^(\d+)([KM]?)$/.exec(rate)
  if (!m) throw new Error(`rateBytes: ${rate} is not a rate`)
  return Number(m[1]) * (m[2] === 'M' ? 1024 ** 2 : m[2] === 'K' ? 1024 : 1)
}

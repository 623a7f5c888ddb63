// The two BitTorrent clients labhost can run for a download (image-format/torrent-download.ts):
// aria2c, and a small client of labhost's own on libtorrent (libtorrent-client.py, run by Debian's
// python3 with python3-libtorrent). aria2c unchokes 3 peers and 1 more by tit-for-tat, with no
// setting for it: when a whole lab downloads at once, a host that falls behind is choked by peers
// that no longer want its pieces until they are done (measured: the last of 32 hosts 2.3x the
// time of one host alone). libtorrent's client unchokes every interested peer.
import fs from 'node:fs'
import path from 'node:path'
import sea from 'node:sea'

export const BT_CLIENTS = ['aria2c', 'libtorrent'] as const
export type BtClient = (typeof BT_CLIENTS)[number]

/** The client where none is named (--bt-client). */
export const DEFAULT_BT_CLIENT: BtClient = 'aria2c'

/** The SEA asset (scripts/build.ts) and source file of labhost's libtorrent client. */
export const LIBTORRENT_CLIENT = 'libtorrent-client.py'

/** The client's Python source: beside this file, or the executable's asset. */
export function libtorrentClientSource(): string {
  if (sea.isSea()) return sea.getAsset(LIBTORRENT_CLIENT, 'utf8')
  return fs.readFileSync(path.join(import.meta.dirname ?? '.', LIBTORRENT_CLIENT), 'utf8')
}

/** aria2c's rate notation (500K, 30M; K and M are 1024 and 1024²) in bytes per second. */
export function rateBytes(rate: string): number {
  const m = /^(\d+)([KM]?)$/.exec(rate)
  if (!m) throw new Error(`rateBytes: ${rate} is not a rate`)
  return Number(m[1]) * (m[2] === 'M' ? 1024 ** 2 : m[2] === 'K' ? 1024 : 1)
}

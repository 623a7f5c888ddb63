// One part of a lab's copy from the server: with `--peers upstream --upstream-part K/N` a lab has N
// upstream hosts instead of one, and host K fetches only the K-th N-th of the file's pieces from
// the server (plain HTTP Range requests: the server stays static files), into the file aria2c then
// opens; aria2c checks every piece it finds there (--check-integrity) and offers those that match to
// the lab, and takes the other parts from the lab's peers. A lab's one upstream host passes each
// piece on several times over its own port (aria2c has no super-seeding); N of them, each with a
// different part, bring the file into the lab N times as fast and pass on a part each, while the
// server still sends about one copy. The bytes are only put where aria2c will judge them: nothing
// of them is trusted before aria2c's SHA-1 pieces and then the signed manifest have checked them.
// A host run again (a download cut off, a host restarted with its download directory kept) fetches
// only the pieces of its part that the file does not already hold whole (their SHA-1 in the torrent).
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { readUpTo } from '../lib/direct-io.ts'
import { LabhostError } from '../lib/errors.ts'
import { resumableDownload, type Remote, type TransferStats } from '../image-format/source.ts'
import { torrentPieces, upstreamPartRange, type UpstreamPart } from '../image-format/torrent.ts'

/**
 * Fetch part `part` of `fileUrl` (`want`, described by the checked `torrent`) over HTTP into
 * `dir/want.name`, leaving every other byte of a file already there as it is; pieces of the part
 * the file already holds (their SHA-1 matches the torrent's) are not fetched again, the others in
 * one Range request per run of them. The requests and bytes count in `stats` (the update's HTTP
 * transfer). Returns the bytes fetched.
 */
export async function fetchUpstreamPart(
  remote: Remote,
  fileUrl: string,
  torrent: Buffer,
  want: { name: string; size: number },
  part: UpstreamPart,
  dir: string,
  stats: TransferStats,
  log: (line: string) => void,
): Promise<number> {
  const { pieceLength, hashes } = torrentPieces(torrent)
  const { start, end } = upstreamPartRange(want.size, pieceLength, part)
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, want.name)
  // aria2c's control file would name only the pieces it had before: without it, aria2c checks them all
  fs.rmSync(`${file}.aria2`, { force: true })
  if (start === end) return 0
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600)
  try {
    const st = fs.fstatSync(fd)
    if (!st.isFile()) throw new LabhostError('io', `${file} is not a regular file`, `remove it, or give --download-dir a directory of labhost's own`)
    const had = st.size
    if (had < want.size) fs.ftruncateSync(fd, want.size) // the rest a hole until aria2c fills it
    // a file just made holds nothing to check (a part of a large file would take seconds to hash)
    const runs = had ? await missingRuns(fd, hashes, pieceLength, start, end) : [{ start, end }]
    const missing = runs.reduce((n, r) => n + r.end - r.start, 0)
    const what = `part ${part.index} of ${part.of} of ${want.name} (bytes ${start}-${end - 1})`
    if (!missing) {
      log(`${what} is already here whole: nothing fetched from the server`)
      return 0
    }
    log(`fetching ${what} from the server, for the lab${missing < end - start ? ` (${missing} bytes of it; the rest is here already)` : ''}`)
    for (const r of runs) {
      let at = r.start
      for await (const data of resumableDownload(fileUrl, r, remote.fetch, stats)) {
        fs.writeSync(fd, data, 0, data.length, at)
        at += data.length
      }
    }
    return missing
  } finally {
    fs.closeSync(fd)
  }
}

/** The byte ranges of the pieces in [start, end) that the file `fd` does not hold whole (SHA-1 against `hashes`), adjacent ones joined. */
async function missingRuns(fd: number, hashes: Buffer, pieceLength: number, start: number, end: number): Promise<{ start: number; end: number }[]> {
  const runs: { start: number; end: number }[] = []
  const buf = Buffer.alloc(pieceLength)
  for (let at = start; at < end; at += pieceLength) {
    const length = Math.min(pieceLength, end - at)
    const n = await readUpTo(fd, buf, length, at)
    const piece = at / pieceLength
    const whole =
      n === length &&
      crypto
        .createHash('sha1')
        .update(buf.subarray(0, length))
        .digest()
        .equals(hashes.subarray(20 * piece, 20 * piece + 20))
    if (whole) continue
    const last = runs.at(-1)
    if (last && last.end === at) last.end = at + length
    else runs.push({ start: at, end: at + length })
  }
  return runs
}

// One part of a lab's copy from the server: with `--peers upstream --upstream-part K/N` a lab has N
// upstream hosts instead of one, and host K fetches only the K-th N-th of the file's pieces from
// the server (plain HTTP Range requests: the server stays static files), into the file aria2c then
// opens; aria2c checks every piece it finds there (--check-integrity) and offers those that match to
// the lab, and takes the other parts from the lab's peers. A lab's one upstream host passes each
// piece on several times over its own port (aria2c has no super-seeding); N of them, each with a
// different part, bring the file into the lab N times as fast and pass on a part each, while the
// server still sends about one copy. The bytes are only put where aria2c will judge them: nothing
// of them is trusted before aria2c's SHA-1 pieces and then the signed manifest have checked them.
import fs from 'node:fs'
import path from 'node:path'
import { resumableDownload, type Remote, type TransferStats } from '../image-format/source.ts'
import { torrentPieceLength, upstreamPartRange, type UpstreamPart } from '../image-format/torrent.ts'

/**
 * Fetch part `part` of `fileUrl` (`want`, described by the checked `torrent`) over HTTP into
 * `dir/want.name`, leaving every other byte of a file already there as it is (a download cut off
 * resumes with what it had); the requests and bytes count in `stats` (the update's HTTP
 * transfer). Returns the bytes of the part.
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
  const { start, end } = upstreamPartRange(want.size, torrentPieceLength(torrent), part)
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, want.name)
  // aria2c's control file would name only the pieces it had before: without it, aria2c checks them all
  fs.rmSync(`${file}.aria2`, { force: true })
  if (start === end) return 0
  log(`fetching part ${part.index} of ${part.of} of ${want.name} (bytes ${start}-${end - 1}) from the server, for the lab`)
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600)
  try {
    if (fs.fstatSync(fd).size < want.size) fs.ftruncateSync(fd, want.size) // the rest a hole until aria2c fills it
    let at = start
    for await (const data of resumableDownload(fileUrl, { start, end }, remote.fetch, stats)) {
      fs.writeSync(fd, data, 0, data.length, at)
      at += data.length
    }
  } finally {
    fs.closeSync(fd)
  }
  return end - start
}

// An upstream host's part (--upstream-part K/N) comes from the server over HTTP into the file aria2c
// then opens. Run again with the file still there (a download cut off, a host restarted with its
// download directory kept), the host fetches only the pieces of its part the file does not hold
// whole — by the torrent's SHA-1 of each piece — one Range request per run of them, and leaves every
// byte outside its part as it was. A real .torrent (mktorrent) and the project's own file server
// on the loopback.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { serveDirectory } from '../../lib/http-serve.ts'
import { DEFAULT_FETCH, type TransferStats } from '../../image-format/source.ts'
import { makeTorrent, upstreamPartRange } from '../../image-format/torrent.ts'
import { fetchUpstreamPart } from '../upstream-part.ts'
import { tmpDir } from '../../test-support/test-helpers.ts'

const PIECE = 32 << 10
const dir = tmpDir(t, 'labhost-upstream-part-')
const served = path.join(dir, 'served')
fs.mkdirSync(served)
const name = 'root.img.zst'
// 10 whole pieces and a short last one
const content = crypto.randomBytes(10 * PIECE + 1234)
fs.writeFileSync(path.join(served, name), content)
const want = { name, size: content.length }

const newStats = (): TransferStats => ({ requests: 0, resumes: 0, bytes: 0, failures: [] })

t.test('a part fetched, then again with what the file already holds', async (t) => {
  const { torrentFile } = await makeTorrent(path.join(served, name), { trackers: ['http://127.0.0.1:1/announce'], pieceSizeLog2: 15 })
  const torrent = fs.readFileSync(torrentFile)
  const server = await serveDirectory(served)
  t.teardown(() => server.close())
  const url = `${server.url}/${name}`
  const remote = { url, fetch: { ...DEFAULT_FETCH, retries: 1 } }
  const lines: string[] = []
  const fetchPart = (index: number, of: number, into: string, stats = newStats()) =>
    fetchUpstreamPart(remote, url, torrent, want, { index, of }, into, stats, (l) => lines.push(l)).then((bytes) => ({ bytes, stats }))

  // part 2 of 3 into an empty directory: exactly its bytes, the rest of the file a hole of zeros
  const host = path.join(dir, 'host')
  const part = upstreamPartRange(want.size, PIECE, { index: 2, of: 3 })
  t.same(part, { start: 3 * PIECE, end: 7 * PIECE }, '11 pieces in 3 parts: part 2 is pieces 3-6')
  let r = await fetchPart(2, 3, host)
  const file = path.join(host, name)
  const got = () => fs.readFileSync(file)
  t.equal(r.bytes, part.end - part.start, 'the whole part fetched')
  t.same([r.stats.requests, r.stats.bytes], [1, part.end - part.start], 'one request, the part only')
  t.ok(got().subarray(part.start, part.end).equals(content.subarray(part.start, part.end)), 'the part holds the served bytes')
  t.equal(got().length, want.size, 'the file has the full size')
  t.ok(got().subarray(0, part.start).equals(Buffer.alloc(part.start)), 'before the part: nothing written')

  // again: the part is whole, nothing is asked of the server
  const before = server.requests.length
  r = await fetchPart(2, 3, host)
  t.same([r.bytes, r.stats.requests, server.requests.length - before], [0, 0, 0], 'nothing fetched when the part is already here')
  t.match(lines.at(-1), /already here whole/, 'says so')

  // the bytes outside the part marked, two pieces of the part damaged (apart): only those two come again
  const marked = got()
  marked.fill(0x5a, 0, part.start)
  for (const at of [part.start + 10, part.start + 2 * PIECE + 99]) marked.writeUInt8(marked.readUInt8(at) ^ 1, at) // its first and third piece
  fs.writeFileSync(file, marked)
  r = await fetchPart(2, 3, host)
  t.equal(r.bytes, 2 * PIECE, 'two pieces fetched')
  t.same(
    server.requests.slice(-2).map((q) => q.range),
    [`bytes=${part.start}-${part.start + PIECE - 1}`, `bytes=${part.start + 2 * PIECE}-${part.start + 3 * PIECE - 1}`],
    'one Range request per damaged piece, nothing else',
  )
  t.ok(got().subarray(part.start, part.end).equals(content.subarray(part.start, part.end)), 'the part is whole again')
  t.ok(got().subarray(0, part.start).equals(Buffer.alloc(part.start, 0x5a)), 'the bytes before the part are left as they were')
  t.match(lines.at(-1), new RegExp(`\\(${2 * PIECE} bytes of it; the rest is here already\\)`), 'the log says how much')

  // the last part ends with the short piece; a file cut off inside it (a download cut off) gets only that piece
  const last = upstreamPartRange(want.size, PIECE, { index: 3, of: 3 })
  r = await fetchPart(3, 3, host)
  t.equal(r.bytes, last.end - last.start, 'part 3 fetched whole into the same file')
  fs.truncateSync(file, want.size - 100)
  r = await fetchPart(3, 3, host)
  t.equal(r.bytes, 1234, 'only the short last piece again')
  t.equal(server.requests.at(-1)?.range, `bytes=${10 * PIECE}-${want.size - 1}`, 'asked from its first byte to the end')
  t.ok(got().equals(Buffer.concat([Buffer.alloc(part.start, 0x5a), content.subarray(part.start)])), 'parts 2 and 3 whole, the rest as it was')
  t.notOk(fs.existsSync(`${file}.aria2`), 'no aria2c control file left to hide pieces from its check')
})

t.test('a file of the download that is a link is not written through', async (t) => {
  const { torrentFile } = await makeTorrent(path.join(served, name), { trackers: ['http://127.0.0.1:1/announce'], pieceSizeLog2: 15 })
  const torrent = fs.readFileSync(torrentFile)
  const host = path.join(dir, 'linked')
  fs.mkdirSync(host)
  const victim = path.join(dir, 'victim')
  fs.writeFileSync(victim, 'keep')
  fs.symlinkSync(victim, path.join(host, name))
  const url = 'http://127.0.0.1:1/none'
  await t.rejects(
    fetchUpstreamPart({ url, fetch: DEFAULT_FETCH }, url, torrent, want, { index: 1, of: 2 }, host, newStats(), () => {}),
    /ELOOP|symbolic/,
  )
  t.equal(fs.readFileSync(victim, 'utf8'), 'keep', 'the link target is untouched')
})

// Delta updates over http:// on the loopback: a host running 1.0.0 fetches only what it lacks of
// 2.0.0, with Range requests for the frames (64 KiB of image each) that hold blocks it has
// nowhere; what it already holds in either slot comes from the disk, whole chunks or blocks. The
// slot is then verified from the disk as in a full update. A damaged frame is refused with slot A,
// the GPT and the state byte-identical; a dropped connection resumes within its range; where a
// delta does not pay, the whole image is downloaded. An image built before frame sizes (a frame
// per chunk) still updates by delta, whole chunks at a time.
import crypto from 'node:crypto'
import fs from 'node:fs'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { copyFileInto } from '../../lib/blockdev.ts'
import { frameSizeOf, framesPerChunk, hashChunks, readPrivateKey, signManifest, type Manifest } from '../../image-format/manifest.ts'
import { writeBlockIndex } from '../../image-format/block-index.ts'
import { compressFramed, frameOffsets } from '../../image-format/zstd-frames.ts'
import { loadRecipe } from '../../image-build/recipe.ts'
import { buildImages, makeHost, protectedParts, slotBHolds, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'
import { activeSlot, serve, transportRequests } from './http-fixtures.ts'
import { deltaSource, mergeGap, planDelta, type RangeReader } from '../delta.ts'
import { DEFAULT_FETCH, type HttpSource } from '../../image-format/source.ts'

const MiB = 1 << 20

/**
 * Sign `d/root.img` as `version` (its transport, block index and manifest beside it), layout of
 * 1.0.0; `oldStyle`: as an image built before frame sizes, a frame per chunk and no frameSize.
 */
async function publishVariant(d: string, version: string, oldStyle = false) {
  const frameSize = oldStyle ? m1.image.chunkSize : frameSizeOf(m1)
  const frames = await compressFramed(`${d}/root.img`, `${d}/root.img.zst`, frameSize, loadRecipe('test').recipe.transport.level)
  writeBlockIndex(`${d}/root.img`, `${d}/root.img.blocks`)
  const img = hashChunks(`${d}/root.img`)
  const tr = hashChunks(`${d}/root.img.zst`)
  const bl = hashChunks(`${d}/root.img.blocks`)
  const m: Manifest = {
    ...m1,
    version,
    image: { ...m1.image, sha256: img.sha256, chunks: img.chunks },
    transport: { ...m1.transport, size: tr.size, sha256: tr.sha256, frameSize: oldStyle ? undefined : frameSize, frames },
    blocks: { ...m1.blocks!, size: bl.size, sha256: bl.sha256 },
  }
  fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(signManifest(m, readPrivateKey(images.keys.privateKeyFile))))
  return { ...img, manifest: m }
}
/** The Range request header for frames first..last of `m`'s transport file. */
const rangeOf = (m: Manifest, first: number, last: number) => {
  const offsets = frameOffsets(m.transport.frames!)
  return `bytes=${offsets[first]}-${offsets[last + 1]! - 1}`
}
const dir = tmpDir(t, 'labhost-delta-update-')
let images: Images
let m1: Manifest
let m2: Manifest

t.before(async () => {
  images = await buildImages(dir)
  m1 = JSON.parse(fs.readFileSync(`${images.v1}/manifest.json`, 'utf8')) as Manifest
  m2 = JSON.parse(fs.readFileSync(`${images.v2}/manifest.json`, 'utf8')) as Manifest
})
/** Chunks of 2.0.0 whose hash is nowhere in 1.0.0: what a host running 1.0.0 lacks. */
const missing = () =>
  m2.image.chunks
    .map((h, i) => [h, i] as const)
    .filter(([h]) => !m1.image.chunks.includes(h))
    .map(([, i]) => i)

t.test('1.0.0 -> 2.0.0: only frames of the chunks 1.0.0 lacks are downloaded; slot B is 2.0.0 exactly', async (t) => {
  const h = await makeHost(t, images)
  const server = await serve(t, images.v2)
  const lacking = missing()
  t.ok(lacking.length > 0 && lacking.length < m2.image.chunks.length / 4, `2.0.0 differs from 1.0.0 in a few chunks (${lacking.length})`)
  // delta is the default from http(s)
  const r = await runCli(['update', `${server.url}/`, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.equal(out.delta.used, true)
  const offsets = frameOffsets(m2.transport.frames!)
  const perChunk = framesPerChunk(m2)
  t.ok(perChunk > 1, `${perChunk} frames per chunk`)
  const lackingBytes = lacking.reduce((n, i) => n + offsets[(i + 1) * perChunk]! - offsets[i * perChunk]!, 0)
  t.ok(out.delta.fetched >= 1 && out.delta.fetched <= lacking.length, `fetched frames of ${out.delta.fetched} chunk(s), at most the ${lacking.length} lacking`)
  t.ok(
    out.delta.fetchBytes > 0 && out.delta.fetchBytes <= lackingBytes + lacking.length * (64 << 10) * 2,
    `asked for ${out.delta.fetchBytes} bytes: their frames at most (and small frames between them), of ${lackingBytes}`,
  )
  t.ok(out.delta.fetchedFrames < lacking.length * perChunk, `${out.delta.fetchedFrames} frames: not all of the lacking chunks'`)
  t.match(out.delta, { frameSize: m2.transport.frameSize, frames: m2.transport.frames!.length })
  t.equal(out.transfer.bytes, out.delta.fetchBytes + m2.blocks!.size, 'received exactly what was asked for, and the block index')
  t.ok(out.transfer.bytes < m2.transport.size / 4, `downloaded ${out.transfer.bytes} of ${m2.transport.size} transport bytes`)
  t.equal(
    out.delta.fromActive + out.delta.fromTarget + out.delta.zero + out.delta.fromBlocks + out.delta.fetched,
    m2.image.chunks.length,
    'every chunk has a source',
  )
  t.ok(out.delta.fromActive > 0, 'chunks taken from slot A')
  for (const q of transportRequests(server)) {
    t.equal(q.status, 206, `a Range request (${q.range})`)
    t.match(q.range, /^bytes=\d+-\d+$/)
  }
  t.equal(transportRequests(server).length, out.delta.requests)
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0 byte for byte')
  t.equal(activeSlot(h.disk), 'B', 'switched to B')
})

t.test('slot B already holds 2.0.0 (an update cut off before its switch): nothing is downloaded', async (t) => {
  const h = await makeHost(t, images)
  copyFileInto(`${images.v2}/root.img`, h.disk, h.plan[1]!.firstLba * 512)
  const server = await serve(t, images.v2)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.match(out.delta, { used: true, fetched: 0, fetchBytes: 0, requests: 0 })
  t.ok(out.delta.fromTarget >= m2.image.chunks.length - out.delta.zero - out.delta.fromActive)
  t.same(transportRequests(server), [], 'the transport file was not requested')
  t.ok(slotBHolds(h, `${images.v2}/root.img`))
  t.equal(activeSlot(h.disk), 'B')
})

t.test('a connection dropped inside a range resumes within it', async (t) => {
  const h = await makeHost(t, images)
  const server = await serve(t, images.v2, (p) => (p.endsWith('.zst') && transportRequests(server).length === 1 ? { dropAfter: 1000 } : undefined))
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  const reqs = transportRequests(server)
  t.equal(reqs[0]!.bytes, 1000, 'the first request was cut after 1000 bytes')
  const first = /^bytes=(\d+)-(\d+)$/.exec(reqs[0]!.range ?? '')!.map(Number)
  t.equal(reqs[1]!.range, `bytes=${first[1]! + 1000}-${first[2]}`, 'the next one asks for the rest of that range')
  t.match(out.transfer, { resumes: 1, bytes: out.delta.fetchBytes + m2.blocks!.size })
  t.ok(slotBHolds(h, `${images.v2}/root.img`))
})

t.test('refused: a damaged frame on the server; slot A, GPT and state untouched', async (t) => {
  const h = await makeHost(t, images)
  const before = protectedParts(h)
  const d = tmpDir(t)
  fs.cpSync(images.v2, d, { recursive: true })
  // every frame of every chunk 1.0.0 lacks damaged: whichever the delta asks for
  const offsets = frameOffsets(m2.transport.frames!)
  const perChunk = framesPerChunk(m2)
  for (const i of missing())
    for (let f = i * perChunk; f < (i + 1) * perChunk; f++) xorRange(`${d}/root.img.zst`, Math.floor((offsets[f]! + offsets[f + 1]!) / 2), Buffer.from([0x10]))
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--delta', ...h.args])
  t.equal(r.code, ExitCode.hashMismatch, 'hash mismatch exit code', failDiag(r))
  t.match(r.stderr, new RegExp(`frame \\d+ \\(of chunk (${missing().join('|')})\\) is not a good zstd frame`))
  t.same(protectedParts(h), before, 'slot A, both GPT regions and the state: byte-identical')
  t.equal(activeSlot(h.disk), 'A')
})

t.test('where the host has nothing of the image, the whole transport file is downloaded in one request', async (t) => {
  const h = await makeHost(t, images)
  // slot A as an unrelated system: no block of 1.0.0 left (a byte changed per chunk would leave
  // the delta all the other blocks)
  const fd = fs.openSync(h.disk, 'r+')
  fs.writeSync(fd, crypto.randomBytes(m1.image.size), 0, m1.image.size, h.plan[0]!.firstLba * 512)
  fs.closeSync(fd)
  const server = await serve(t, images.v2)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.match(out.delta, { used: false, reason: /^a delta would fetch/ })
  t.same(
    transportRequests(server).map((q) => [q.status, q.range]),
    [[200, null]],
  )
  t.equal(out.transfer.bytes, m2.transport.size + m2.blocks!.size, 'the block index, then the whole transport file')
  t.ok(slotBHolds(h, `${images.v2}/root.img`))
})

t.test('an image whose blocks moved (3 new blocks inserted at 5 MiB + 12 KiB): chunks are assembled from blocks of slot A', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  // 3.0.0: 1.0.0 with three new blocks in the middle, everything after them moved by 12 KiB
  const v1 = fs.readFileSync(`${images.v1}/root.img`)
  const at = 5 * MiB + 12 * 1024
  const inserted = crypto.randomBytes(3 * 4096)
  fs.writeFileSync(`${d}/root.img`, Buffer.concat([v1.subarray(0, at), inserted, v1.subarray(at, v1.length - inserted.length)]))
  const img = await publishVariant(d, '3.0.0')
  const moved = img.chunks.filter((c, i) => c !== m1.image.chunks[i] && !m1.image.chunks.includes(c)).length
  t.ok(moved >= 10, `${moved} chunks of 3.0.0 are in no chunk of 1.0.0`)
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.equal(out.delta.used, true)
  t.ok(out.delta.fromBlocks >= moved - 2, `${out.delta.fromBlocks} chunks assembled from blocks of slot A`)
  t.ok(out.delta.fetched <= 2, `${out.delta.fetched} chunk(s) fetched: the one with the new blocks (and the tail)`)
  t.ok(out.delta.patched >= 1, `${out.delta.patched} of them patched: blocks from slot A, the new ones in downloaded frames`)
  t.ok(slotBHolds(h, `${d}/root.img`), 'slot B holds 3.0.0 byte for byte')
  t.equal(activeSlot(h.disk), 'B')
})

t.test('the slot being written lends a chunk only from where it is not yet overwritten', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  // 4.0.0: 1.0.0 with chunks 5 and 9 new; slot B holds chunk 5's bytes at chunk 2 (written before
  // chunk 5 is: unusable) and chunk 9's at chunk 30 (written after: usable)
  const size = m1.image.chunkSize
  const image = Buffer.from(fs.readFileSync(`${images.v1}/root.img`))
  const [c5, c9] = [crypto.randomBytes(size), crypto.randomBytes(size)]
  c5.copy(image, 5 * size)
  c9.copy(image, 9 * size)
  fs.writeFileSync(`${d}/root.img`, image)
  const { manifest: m4 } = await publishVariant(d, '4.0.0')
  const slotB = h.plan[1]!.firstLba * 512
  const fd = fs.openSync(h.disk, 'r+')
  fs.writeSync(fd, c5, 0, size, slotB + 2 * size)
  fs.writeSync(fd, c9, 0, size, slotB + 30 * size)
  fs.closeSync(fd)
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.match(out.delta, { used: true, fetched: 1, patched: 0, fromTarget: 1 }, 'chunk 5 fetched, chunk 9 taken from further on in slot B')
  const perChunk = framesPerChunk(m4)
  t.same(
    transportRequests(server).map((q) => q.range),
    [rangeOf(m4, 5 * perChunk, 6 * perChunk - 1)],
    'one Range request: the frames of chunk 5',
  )
  t.ok(slotBHolds(h, `${d}/root.img`), 'slot B holds 4.0.0 byte for byte')
})

/**
 * 5.0.0: 1.0.0 with random bytes in two blocks of chunk `a` (in its second and its last but one
 * frame) and one of chunk `b` (in its middle frame): chunks of 1.0.0 with the most data in every
 * frame, so that no frame between the changed ones is small enough to be fetched with them.
 */
function fewBlocksChanged(d: string) {
  const perChunk = framesPerChunk(m1)
  const frameSize = frameSizeOf(m1)
  const sizes = m1.transport.frames!
  const least = (i: number) => Math.min(...sizes.slice(i * perChunk, (i + 1) * perChunk))
  const best = m1.image.chunks
    .map((_, i) => i)
    .slice(1, -1)
    .sort((x, y) => least(y) - least(x))
  // apart: whole chunks between them (a frame per chunk, below)
  const [a, b] = [best[0]!, best.find((i) => Math.abs(i - best[0]!) > 2)!].sort((x, y) => x - y) as [number, number]
  const image = Buffer.from(fs.readFileSync(`${images.v1}/root.img`))
  const changed = [a * perChunk + 1, (a + 1) * perChunk - 2, b * perChunk + perChunk / 2]
  // a different block of each frame: the 2nd, 3rd, 4th
  changed.forEach((f, j) => crypto.randomBytes(4096).copy(image, frameSize * f + 4096 * (j + 1)))
  fs.writeFileSync(`${d}/root.img`, image)
  return { a, b, changed, smallest: Math.min(least(a), least(b)) }
}

t.test('a few changed blocks in two chunks: only the 3 frames that hold them are requested; slot B byte for byte', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  const { a, b, changed: frames, smallest } = fewBlocksChanged(d)
  const { manifest: m5 } = await publishVariant(d, '5.0.0')
  t.ok(framesPerChunk(m5) >= 4, `${framesPerChunk(m5)} frames per chunk`)
  t.ok(
    smallest > mergeGap(frameSizeOf(m5)),
    `no frame of chunks ${a} and ${b} is small enough to be fetched with its neighbours (the smallest: ${smallest} bytes)`,
  )
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.same(
    transportRequests(server).map((q) => q.range),
    frames.map((f) => rangeOf(m5, f, f)),
    `one Range request per frame with a changed block: frames ${frames.join(', ')}`,
  )
  const offsets = frameOffsets(m5.transport.frames!)
  t.match(out.delta, {
    used: true,
    fetched: 2,
    patched: 2,
    fetchedFrames: 3,
    requests: 3,
    fetchBytes: frames.reduce((n, f) => n + offsets[f + 1]! - offsets[f]!, 0),
  })
  t.ok(slotBHolds(h, `${d}/root.img`), 'slot B holds 5.0.0 byte for byte')
  t.equal(activeSlot(h.disk), 'B')
})

t.test('a changed block in the first frame (the superblock changes with every version): its frames asked for by Range from byte 0', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  const image = Buffer.from(fs.readFileSync(`${images.v1}/root.img`))
  crypto.randomBytes(4096).copy(image, 4096)
  fs.writeFileSync(`${d}/root.img`, image)
  const { manifest: m6 } = await publishVariant(d, '6.0.0')
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.same(
    transportRequests(server).map((q) => [q.status, q.range]),
    [[206, rangeOf(m6, 0, 0)]],
    'one request, Range: bytes=0-…: frame 0, not the whole file',
  )
  t.equal(out.transfer.bytes, out.delta.fetchBytes + m6.blocks!.size, 'received exactly frame 0 and the block index')
  t.ok(slotBHolds(h, `${d}/root.img`), 'slot B holds 6.0.0 byte for byte')
})

t.test('a patched chunk that does not hash right (a block changed on the disk after the plan) is downloaded whole', async (t) => {
  const d = tmpDir(t)
  const { a } = fewBlocksChanged(d)
  const { manifest: m5 } = await publishVariant(d, '5.0.0')
  // the host's disk: 1.0.0 from byte 0, nothing to take from a slot being written
  const disk = `${d}/disk.img`
  fs.copyFileSync(`${images.v1}/root.img`, disk)
  const slots = { active: { firstByte: 0, bytes: m1.image.size }, target: { firstByte: 0, bytes: 0 } }
  const plan = await planDelta(m5, disk, slots, fs.readFileSync(`${d}/root.img.blocks`))
  const from = plan.chunks[a]!
  if (from.kind !== 'patch') throw new Error(`chunk ${a} is ${from.kind}, not patched`)
  const perChunk = framesPerChunk(m5)
  t.same(from.frames, [1, perChunk - 2], `chunk ${a}: two of its frames downloaded, the rest from the disk`)
  // a block the plan reads from the disk (in 1.0.0's chunk a, which no other chunk of the plan
  // takes) is no longer what the index said
  const block = from.at.find((at) => at >= a * m1.image.chunkSize && at < (a + 1) * m1.image.chunkSize)!
  xorRange(disk, block, Buffer.from([0x01]))
  const asked: string[] = []
  const read: RangeReader = (start, end) => {
    asked.push(`bytes=${start}-${end - 1}`)
    return fs.createReadStream(`${d}/root.img.zst`, { start, end: end - 1 })
  }
  const source: HttpSource = {
    kind: 'http',
    manifestWhere: `${d}/manifest.json`,
    manifest: m5,
    transportWhere: `${d}/root.img.zst`,
    stats: { requests: 0, resumes: 0, bytes: 0, failures: [] },
    remote: { url: `${d}/root.img.zst`, fetch: DEFAULT_FETCH },
  }
  const delta = deltaSource(plan, m5, disk, source, read)
  if (delta.kind !== 'delta') throw new Error(delta.kind)
  const out: Buffer[] = []
  for await (const chunk of delta.chunks()) out.push(Buffer.from(chunk))
  t.ok(Buffer.concat(out).equals(fs.readFileSync(`${d}/root.img`)), 'the stream is 5.0.0 byte for byte')
  t.same(
    asked.filter((r) => r !== rangeOf(m5, a * perChunk, (a + 1) * perChunk - 1)),
    plan.ranges.map((r) => `bytes=${r.start}-${r.end - 1}`),
    "the plan's ranges were asked for, and besides them only chunk a's frames",
  )
  t.equal(asked.filter((r) => r === rangeOf(m5, a * perChunk, (a + 1) * perChunk - 1)).length, 1, `every frame of chunk ${a}, once`)
})

t.test('an image built before frame sizes (a frame per chunk, no frameSize) still updates by delta: whole chunks', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  const { a, b } = fewBlocksChanged(d)
  const { manifest: m5 } = await publishVariant(d, '5.0.0', true)
  t.equal(m5.transport.frameSize, undefined, 'no frameSize in the manifest')
  t.equal(m5.transport.frames!.length, m5.image.chunks.length, 'a frame per chunk')
  const offsets = frameOffsets(m5.transport.frames!)
  t.ok(offsets[b]! - offsets[a + 1]! > mergeGap(m5.image.chunkSize), 'the chunks between them are too large to be fetched with them')
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.match(out.delta, { used: true, fetched: 2, patched: 0, fetchedFrames: 2, frameSize: m5.image.chunkSize, frames: m5.image.chunks.length })
  t.same(
    transportRequests(server).map((q) => q.range),
    [rangeOf(m5, a, a), rangeOf(m5, b, b)],
    `the frames of chunks ${a} and ${b}, whole`,
  )
  t.ok(slotBHolds(h, `${d}/root.img`), 'slot B holds 5.0.0 byte for byte')
  t.equal(activeSlot(h.disk), 'B')
})

t.test('an image without a frame index (built before delta updates) is downloaded whole', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  fs.cpSync(images.v2, d, { recursive: true })
  const m = { ...m2, transport: { ...m2.transport, frames: undefined } }
  fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(signManifest(m, readPrivateKey(images.keys.privateKeyFile))))
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  t.match(JSON.parse(r.stdout).delta, { used: false, reason: /no frame index/ })
  t.same(
    transportRequests(server).map((q) => q.status),
    [200],
  )
  t.ok(slotBHolds(h, `${images.v2}/root.img`))
})

t.test('--dry-run prints the delta plan and writes nothing', async (t) => {
  const h = await makeHost(t, images)
  const before = wholeDisk(h)
  const server = await serve(t, images.v2)
  const r = await runCli(['update', server.url, '--delta', '--dry-run', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  t.match(r.stdout, new RegExp(`would write slot B .*, delta: \\d+ of ${m2.image.chunks.length} chunks`))
  t.same(transportRequests(server), [], 'nothing downloaded')
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
})

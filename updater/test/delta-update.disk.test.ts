// Delta updates over http:// on the loopback: a host running 1.0.0 fetches only the chunks of
// 2.0.0 it does not have, with Range requests for their frames; what it already holds in either
// slot comes from the disk. The slot is then verified from the disk as in a full update. A damaged
// frame is refused with slot A, the GPT and the state byte-identical; a dropped connection
// resumes within its range; where a delta does not pay, the whole image is downloaded.
import crypto from 'node:crypto'
import fs from 'node:fs'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { copyFileInto } from '../../lib/blockdev.ts'
import { hashChunks, readPrivateKey, signManifest, type Manifest } from '../../image-format/manifest.ts'
import { writeBlockIndex } from '../../image-format/block-index.ts'
import { compressFramed, frameOffsets } from '../../image-format/zstd-frames.ts'
import { buildImages, makeHost, protectedParts, slotBHolds, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'
import { activeSlot, serve, transportRequests } from './http-fixtures.ts'

const MiB = 1 << 20

/** Sign `d/root.img` as `version` (its transport, block index and manifest beside it), layout of 1.0.0. */
async function publishVariant(d: string, version: string) {
  const frames = await compressFramed(`${d}/root.img`, `${d}/root.img.zst`, m1.image.chunkSize)
  writeBlockIndex(`${d}/root.img`, `${d}/root.img.blocks`)
  const img = hashChunks(`${d}/root.img`)
  const tr = hashChunks(`${d}/root.img.zst`)
  const bl = hashChunks(`${d}/root.img.blocks`)
  const m: Manifest = {
    ...m1,
    version,
    image: { ...m1.image, sha256: img.sha256, chunks: img.chunks },
    transport: { ...m1.transport, size: tr.size, sha256: tr.sha256, frames },
    blocks: { ...m1.blocks!, size: bl.size, sha256: bl.sha256 },
  }
  fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(signManifest(m, readPrivateKey(images.keys.privateKeyFile))))
  return img
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

t.test('1.0.0 -> 2.0.0: only the frames of the chunks 1.0.0 lacks are downloaded; slot B is 2.0.0 exactly', async (t) => {
  const h = await makeHost(t, images)
  const server = await serve(t, images.v2)
  const lacking = missing()
  t.ok(lacking.length > 0 && lacking.length < m2.image.chunks.length / 4, `2.0.0 differs from 1.0.0 in a few chunks (${lacking.length})`)
  // delta is the default from http(s)
  const r = await runCli(['update', `${server.url}/`, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
  const out = JSON.parse(r.stdout)
  t.equal(out.delta.used, true)
  const offsets = frameOffsets(m2.transport.frames!)
  const lackingBytes = lacking.reduce((n, i) => n + offsets[i + 1]! - offsets[i]!, 0)
  t.ok(out.delta.fetched >= lacking.length, `fetched ${out.delta.fetched} chunk(s), at least the ${lacking.length} lacking`)
  t.ok(
    out.delta.fetchBytes >= lackingBytes && out.delta.fetchBytes <= lackingBytes + lacking.length * (64 << 10) * 2,
    'asked for their frames (and small frames between them at most)',
  )
  t.equal(out.transfer.bytes, out.delta.fetchBytes + m2.blocks!.size, 'received exactly what was asked for, and the block index')
  t.ok(out.transfer.bytes < m2.transport.size / 4, `downloaded ${out.transfer.bytes} of ${m2.transport.size} transport bytes`)
  t.equal(out.delta.fromActive + out.delta.fromTarget + out.delta.zero + out.delta.fetched, m2.image.chunks.length, 'every chunk has a source')
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
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
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
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
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
  const i = missing()[0]!
  const offsets = frameOffsets(m2.transport.frames!)
  xorRange(`${d}/root.img.zst`, Math.floor((offsets[i]! + offsets[i + 1]!) / 2), Buffer.from([0x10]))
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--delta', ...h.args])
  t.equal(r.code, ExitCode.hashMismatch, 'hash mismatch exit code', { stderr: r.stderr })
  t.match(r.stderr, new RegExp(`the frame of chunk ${i} is not a good zstd frame`))
  t.same(protectedParts(h), before, 'slot A, both GPT regions and the state: byte-identical')
  t.equal(activeSlot(h.disk), 'A')
})

t.test('where the host has nothing of the image, the whole transport file is downloaded in one request', async (t) => {
  const h = await makeHost(t, images)
  // slot A as an unrelated system: every chunk of 1.0.0 changed
  for (let i = 0; i < m1.image.chunks.length; i++) xorRange(h.disk, h.plan[0]!.firstLba * 512 + i * m1.image.chunkSize + 17, Buffer.from([0xff]))
  const server = await serve(t, images.v2)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
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
  t.ok(moved > 100, `${moved} chunks of 3.0.0 are in no chunk of 1.0.0`)
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
  const out = JSON.parse(r.stdout)
  t.equal(out.delta.used, true)
  t.ok(out.delta.fromBlocks >= moved - 2, `${out.delta.fromBlocks} chunks assembled from blocks of slot A`)
  t.ok(out.delta.fetched <= 2, `${out.delta.fetched} chunk(s) fetched: the one with the new blocks (and the tail)`)
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
  await publishVariant(d, '4.0.0')
  const slotB = h.plan[1]!.firstLba * 512
  const fd = fs.openSync(h.disk, 'r+')
  fs.writeSync(fd, c5, 0, size, slotB + 2 * size)
  fs.writeSync(fd, c9, 0, size, slotB + 30 * size)
  fs.closeSync(fd)
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
  const out = JSON.parse(r.stdout)
  t.match(out.delta, { used: true, fetched: 1, fromTarget: 1 }, 'chunk 5 fetched, chunk 9 taken from further on in slot B')
  const offsets = frameOffsets(JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8')).transport.frames)
  t.same(
    transportRequests(server).map((q) => q.range),
    [`bytes=${offsets[5]}-${offsets[6]! - 1}`],
    'one Range request: the frame of chunk 5',
  )
  t.ok(slotBHolds(h, `${d}/root.img`), 'slot B holds 4.0.0 byte for byte')
})

t.test('an image without a frame index (built before delta updates) is downloaded whole', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  fs.cpSync(images.v2, d, { recursive: true })
  const m = { ...m2, transport: { ...m2.transport, frames: undefined } }
  fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(signManifest(m, readPrivateKey(images.keys.privateKeyFile))))
  const server = await serve(t, d)
  const r = await runCli(['update', server.url, '--delta', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
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
  t.equal(r.code, 0, 'exit 0', { stderr: r.stderr })
  t.match(r.stdout, new RegExp(`would write slot B .*, delta: \\d+ of ${m2.image.chunks.length} chunks`))
  t.same(transportRequests(server), [], 'nothing downloaded')
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
})

// A delta over BitTorrent (issue 18, item 1): `labhost image publish DIR --delta-from OLD_DIR`
// writes the block index and the transport bytes a host on the old version lacks into a pack, with
// its .torrent and the pack list; `labhost update URL --torrent` on a host running that version
// fetches the pack with aria2c or labhost's libtorrent client (here from its web seed, the image server), plans its delta with the
// index from it, and fetches neither the index nor one of the delta's frames over its own HTTP
// requests; slot B is then 2.0.0 exactly. A pack of other bytes
// is caught by the slot writer against the signed manifest, slot A, the GPT and the state untouched;
// a pack list that points outside the transport file is refused before any download.
// Each run is a network and PID namespace of its own (test-support/isolated.ts).
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { ISOLATED_PORT, updateIsolated } from '../../test-support/isolated.ts'
import { readManifest } from '../../image-format/manifest.ts'
import { buildImages, makeHost, protectedParts, slotBHolds, type Images } from '../../test-support/update-fixtures.ts'
import { deltaPacksFileFor } from '../delta-pack.ts'
import { BT_CLIENTS } from '../../image-format/bt-clients.ts'

const dir = tmpDir(t, 'labhost-delta-torrent-')
let images: Images
let served = ''
let packFile = ''
const TRACKER = 'http://127.0.0.1:1/announce'

t.before(async () => {
  images = await buildImages(dir)
  served = path.join(dir, 'served')
  fs.cpSync(images.v2, served, { recursive: true })
  const r = await runCli([
    'image',
    'publish',
    served,
    '--tracker',
    TRACKER,
    '--web-seed',
    `http://127.0.0.1:${ISOLATED_PORT}/`,
    '--delta-from',
    images.v1,
    '--json',
  ])
  if (r.code !== 0) throw new Error(`publish --delta-from: ${r.stderr}`)
  const out = JSON.parse(r.stdout) as { deltaPacks: { file: string; size: number }[] }
  packFile = out.deltaPacks[0]!.file
})

const args = (h: { args: string[] }, downloads: string) => [
  '--torrent',
  '--download-dir',
  downloads,
  '--seed-minutes',
  '0',
  '--timeout',
  '60',
  '--retries',
  '1',
  '--json',
  ...h.args,
]

t.test('publish --delta-from: one pack, smaller than the transport file, listed with ranges inside it', async (t) => {
  const m = readManifest(path.join(served, 'manifest.json'))
  const list = JSON.parse(fs.readFileSync(deltaPacksFileFor(path.join(served, 'root.img.zst')), 'utf8'))
  t.equal(list.packs.length, 1)
  const p = list.packs[0]
  t.equal(p.file, packFile)
  t.equal(fs.statSync(path.join(served, packFile)).size, p.size)
  t.ok(p.size < m.transport.size / 2, `the pack (${p.size} bytes) is a delta, not the image (${m.transport.size})`)
  t.equal(p.from.sha256, readManifest(path.join(images.v1, 'manifest.json')).image.sha256)
  t.equal(p.from.version, '1.0.0')
  t.equal(p.index, m.blocks!.size, 'the pack starts with the block index')
  t.ok(
    fs
      .readFileSync(path.join(served, packFile))
      .subarray(0, p.index)
      .equals(fs.readFileSync(path.join(served, m.blocks!.file))),
    'byte for byte',
  )
  t.ok(fs.existsSync(path.join(served, `${packFile}.torrent`)), 'its .torrent')
})

for (const client of BT_CLIENTS)
  t.test(`1.0.0 -> 2.0.0 with --torrent --bt-client ${client}: the delta comes from the pack over BitTorrent; slot B is 2.0.0 exactly`, async (t) => {
    const h = await makeHost(t, images)
    const downloads = path.join(tmpDir(t), 'downloads')
    const r = await updateIsolated(served, [...args(h, downloads), '--bt-client', client])
    t.equal(r.code, 0, r.stderr)
    t.match(r.stderr, `with BitTorrent (${client}, asked for; `, `${client} downloaded it`)
    t.ok(
      fs.existsSync(
        path.join(
          downloads,
          fs.readdirSync(downloads).find((d) => d.endsWith('.control'))!,
          `${client}.log`,
        ),
      ),
      `its log, ${client}.log`,
    )
    const out = JSON.parse(r.stdout)
    t.equal(out.delta.used, true)
    t.equal(out.delta.pack, packFile, 'the delta named its pack')
    const m2 = readManifest(path.join(served, 'manifest.json'))
    t.equal(out.transfer.bytes, 0, "labhost's own HTTP requests brought none of the delta's frames, nor the block index (it came in the pack)")
    t.ok(m2.blocks, 'the image has a block index')
    t.ok(slotBHolds(h, path.join(images.v2, 'root.img')), 'slot B holds 2.0.0 byte for byte')
  })

t.test('refused: a pack of other bytes (its own .torrent) — the slot writer catches it; slot A, GPT, state untouched', async (t) => {
  const d = tmpDir(t)
  const bad = path.join(d, 'served')
  fs.cpSync(served, bad, { recursive: true })
  const size = fs.statSync(path.join(bad, packFile)).size
  // the frames after the block index (a damaged index alone sends the host to HTTP instead)
  const list = JSON.parse(fs.readFileSync(deltaPacksFileFor(path.join(bad, 'root.img.zst')), 'utf8'))
  const index: number = list.packs[0].index ?? 0
  t.ok(index < size, 'the pack holds frames after its block index')
  for (let at = index; at < size; at += 1 << 12) xorRange(path.join(bad, packFile), at, Buffer.from([0xff]))
  // a torrent of the damaged pack, so that aria2c takes its bytes (the list stays as published)
  fs.rmSync(path.join(bad, `${packFile}.torrent`))
  await execa('mktorrent', [
    '-d',
    '-l',
    '20',
    '-a',
    TRACKER,
    '-w',
    `http://127.0.0.1:${ISOLATED_PORT}/`,
    '-o',
    path.join(bad, `${packFile}.torrent`),
    path.join(bad, packFile),
  ])
  const h = await makeHost(t, images)
  const before = protectedParts(h)
  const r = await updateIsolated(bad, args(h, path.join(d, 'downloads')))
  t.equal(r.code, ExitCode.hashMismatch, r.stderr)
  t.same(protectedParts(h), before, 'slot A, both GPT regions and the state are unchanged')
})

t.test('refused: a pack list with a range past the end of the transport file, before any download', async (t) => {
  const d = tmpDir(t)
  const bad = path.join(d, 'served')
  fs.cpSync(served, bad, { recursive: true })
  const listFile = deltaPacksFileFor(path.join(bad, 'root.img.zst'))
  const list = JSON.parse(fs.readFileSync(listFile, 'utf8'))
  const last = list.packs[0].ranges.at(-1)
  last[1] += 1 << 30
  list.packs[0].size += 1 << 30
  fs.writeFileSync(listFile, JSON.stringify(list))
  const h = await makeHost(t, images)
  const before = protectedParts(h)
  const r = await updateIsolated(bad, args(h, path.join(d, 'downloads')))
  t.equal(r.code, ExitCode.manifestInvalid, r.stderr)
  t.match(r.stderr, /not a usable delta pack list: .*not ascending inside the \d+-byte transport file/)
  t.same(protectedParts(h), before, 'nothing written')
})

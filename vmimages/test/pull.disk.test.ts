// labhost vm-image publish and pull, with real qemu-img, on ext4 file systems on loop devices:
// publish refuses what is not a standalone, clean, idle qcow2 (exit 70); a published base pulled
// over HTTP is byte for byte the signed one, listed in the catalogue, and a fresh overlay on it
// passes qemu-img check; every refusal — bad signature, hash mismatch, truncated file, wrong kind,
// older version, no room — leaves the backing directory and the catalogue byte-identical; a
// dropped connection and an interrupted pull resume.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { serveDirectory, type Fault } from '../../lib/http-serve.ts'
import { errorLines, failDiag, hashWhole, runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { CHUNK_SIZE, generateKeyPair, keyFingerprint, MANIFEST_FORMAT, readPrivateKey, signManifest } from '../../image-format/manifest.ts'
import { readCatalogue } from '../catalogue.ts'
import { publishVmImage, type PublishedVm } from '../publish.ts'
import { clearTorrents } from '../torrent-pull.ts'
import { loopFs, makeBase, makeOverlay, qemuHolding, snapshot } from './fixtures.ts'
import crypto from 'node:crypto'

const dir = tmpDir(t, 'labhost-vm-pull-')
const keys = generateKeyPair(path.join(dir, 'keys'))
let v1: PublishedVm
let v2: PublishedVm

const publish = async (name: string, version: string, dataMiB: number, pattern: number, isDefault = true) => {
  const src = await makeBase(path.join(dir, `${name}-${version}-src.qcow2`), { dataMiB, pattern })
  return publishVmImage({
    file: src,
    name,
    version,
    os: 'windows',
    displayName: `Windows 11 (${version})`,
    isDefault,
    signingKey: keys.privateKeyFile,
    out: path.join(dir, `pub-${name}-${version}`),
    trackers: ['http://10.77.0.1:6969/announce'],
  })
}

t.before(async () => {
  v1 = await publish('win11', '1.0.0', 6, 0x10)
  v2 = await publish('win11', '2.0.0', 4, 0x40)
})

async function serve(t: Test, root: string, fault?: (path: string, index: number) => Fault | undefined) {
  const s = await serveDirectory(root, { fault: fault ? (r) => fault(r.path, r.index) : undefined })
  t.teardown(() => s.close())
  return s
}

const pull = (source: string, backing: string, user: string, more: string[] = []) =>
  runCli(['vm-image', 'pull', source, '--trusted-key', keys.publicKeyFile, '--dir', backing, '--user-dir', user, '--retries', '2', '--json', '--http', ...more])

/** A copy of a published directory, for damaging. */
function copyOf(t: Test, p: PublishedVm): string {
  const d = tmpDir(t, 'labhost-vm-pub-copy-')
  for (const f of fs.readdirSync(path.dirname(p.manifestFile))) fs.copyFileSync(path.join(path.dirname(p.manifestFile), f), path.join(d, f))
  return d
}

t.test('publish refuses what is not a standalone, clean qcow2 no VM has open (exit 70), writing nothing', async (t) => {
  const d = tmpDir(t)
  const pub = (file: string) =>
    runCli([
      'vm-image',
      'publish',
      file,
      '--name',
      'x',
      '--image-version',
      '1',
      '--os',
      'linux',
      '--signing-key',
      keys.privateKeyFile,
      '--out',
      path.join(d, 'out'),
    ])
  await run('qemu-img', ['create', '-q', '-f', 'raw', path.join(d, 'raw.qcow2'), '16M'])
  const overlay = await makeOverlay(path.join(d, 'overlay.qcow2'), v1.imageFile)
  const truncated = path.join(d, 'truncated.qcow2')
  fs.copyFileSync(v1.imageFile, truncated)
  fs.truncateSync(truncated, 1 << 20)
  const idle = await makeBase(path.join(d, 'busy.qcow2'), { dataMiB: 1, pattern: 1 })
  const cases: [string, string, RegExp][] = [
    ['raw', path.join(d, 'raw.qcow2'), /is a raw image, not qcow2/],
    ['overlay', overlay, /has a backing file of its own/],
    ['truncated', truncated, /corrupt \(qemu-img check exit 2/],
  ]
  for (const [what, file, why] of cases) {
    const r = await pub(file)
    t.equal(r.code, ExitCode.vmImageInvalid, `${what}: exit 70`, failDiag(r))
    t.match(r.stderr, why, what)
    t.equal(errorLines(r).length, 1, `${what}: one error line`)
    t.same(fs.existsSync(path.join(d, 'out')) ? fs.readdirSync(path.join(d, 'out')) : [], [], `${what}: nothing published`)
  }
  await qemuHolding(t, idle)
  const busy = await pub(idle)
  t.equal(busy.code, ExitCode.vmImageInvalid, 'in use by a running QEMU: exit 70')
  t.match(busy.stderr, /in use by a running QEMU/)
})

t.test('publish -> pull over HTTP -> catalogue; a fresh overlay on the pulled base passes qemu-img check', async (t) => {
  const backing = await loopFs(t, 64)
  const user = tmpDir(t)
  const s1 = await serve(t, path.dirname(v1.manifestFile))
  const r = await pull(`${s1.url}/`, backing, user)
  t.equal(r.code, 0, r.stderr)
  const base = path.join(backing, 'win11-1.0.0.qcow2')
  t.equal(hashWhole(base), v1.manifest.image.sha256, 'the pulled base is the signed bytes')
  t.same(fs.readdirSync(backing).sort(), ['catalogue.ini', 'lost+found', 'win11-1.0.0.qcow2'], 'no temporary file left')
  t.same(readCatalogue(path.join(backing, 'catalogue.ini')), [
    {
      name: 'win11',
      displayName: 'Windows 11 (1.0.0)',
      osType: 'windows',
      default: true,
      version: '1.0.0',
      file: base,
      size: v1.manifest.image.size,
      sha256: v1.manifest.image.sha256,
    },
  ])
  const overlay = await makeOverlay(path.join(user, 'alice.qcow2'), base, 1)
  await run('qemu-img', ['check', overlay])
  t.pass('qemu-img check of a new overlay on the pulled base: no errors')
  // the same again is nothing to do
  const again = await pull(`${s1.url}/`, backing, user)
  t.equal(again.code, 0)
  t.equal(JSON.parse(again.stdout).plan.action, 'current')
  // the next version replaces it in the catalogue; the volume on the old base goes, then the old base
  const s2 = await serve(t, path.dirname(v2.manifestFile))
  const r2 = await pull(`${s2.url}/manifest.json`, backing, user)
  t.equal(r2.code, 0, r2.stderr)
  t.same(
    readCatalogue(path.join(backing, 'catalogue.ini')).map((e) => [e.name, e.version, e.file]),
    [['win11', '2.0.0', path.join(backing, 'win11-2.0.0.qcow2')]],
  )
  t.same(fs.readdirSync(backing).sort(), ['catalogue.ini', 'lost+found', 'win11-2.0.0.qcow2'], 'the old base removed by the prune after the pull')
  t.same(fs.readdirSync(user), [], 'the volume on the old base removed')
})

t.test('every refusal leaves the backing directory and the catalogue byte-identical', async (t) => {
  const backing = await loopFs(t, 64)
  const user = tmpDir(t)
  t.equal((await pull(path.dirname(v1.manifestFile), backing, user)).code, 0, 'v1 installed from its directory')
  const before = snapshot(backing)

  const forged = copyOf(t, v2)
  const m = JSON.parse(fs.readFileSync(path.join(forged, 'manifest.json'), 'utf8'))
  fs.writeFileSync(path.join(forged, 'manifest.json'), JSON.stringify({ ...m, default: false }))
  const damaged = copyOf(t, v2)
  xorRange(path.join(damaged, 'win11-2.0.0.qcow2'), 2 * CHUNK_SIZE + 100, Buffer.from([1]))
  const truncated = copyOf(t, v2)
  fs.truncateSync(path.join(truncated, 'win11-2.0.0.qcow2'), v2.manifest.image.size - CHUNK_SIZE / 2)
  const rootKind = tmpDir(t)
  const key = readPrivateKey(keys.privateKeyFile)
  const sha = crypto.createHash('sha256').update('x').digest('hex')
  fs.writeFileSync(
    path.join(rootKind, 'manifest.json'),
    JSON.stringify(
      signManifest(
        {
          format: MANIFEST_FORMAT,
          name: 'test',
          version: '9.0.0',
          recipeHash: sha,
          createdAt: 0,
          layout: { rootFsUuid: '6c1d1a2b-0a11-4b5e-9c3a-0000000000f0', slotSizeMiB: 8, slots: { A: 'rootA', B: 'rootB' } },
          image: { file: 'root.img', size: 5, sha256: sha, chunkSize: CHUNK_SIZE, chunks: [sha] },
          transport: { file: 'root.img.zst', size: 3, sha256: sha, compression: 'zstd' },
          signer: keyFingerprint(crypto.createPublicKey(key)),
        },
        key,
      ),
    ),
  )
  const older = await publish('win11', '0.9.0', 1, 0x70)
  const big = await publish('bigbase', '1.0.0', 40, 0x20)

  const cases: [string, string, number, RegExp][] = [
    ['bad signature', forged, ExitCode.signatureInvalid, /signature does not match/],
    ['hash mismatch', damaged, ExitCode.hashMismatch, /chunk 2 .* does not match the signed manifest/],
    ['truncated file', truncated, ExitCode.downloadFailed, /shorter than its manifest|ended at byte/],
    ['a root image manifest', rootKind, ExitCode.manifestKind, /manifest of a root image .*not of a VM base image/],
    ['an older version', path.dirname(older.manifestFile), ExitCode.notNewer, /older than the installed 1\.0\.0/],
    ['no room', path.dirname(big.manifestFile), ExitCode.noRoom, /has [\d.]+ GiB free; bigbase 1\.0\.0 needs/],
  ]
  for (const [what, pubDir, code, why] of cases) {
    const s = await serve(t, pubDir)
    const r = await pull(`${s.url}/`, backing, user)
    t.equal(r.code, code, `${what}: exit ${code}`, failDiag(r))
    t.match(r.stderr, why, what)
    t.same(snapshot(backing), before, `${what}: backing directory and catalogue byte-identical`)
    if (what === 'no room')
      t.same(
        s.requests.map((q) => q.path),
        ['/manifest.json'],
        'no room: refused before downloading',
      )
  }
  // the same refusals from a directory (no HTTP)
  for (const [what, pubDir, code] of cases.slice(0, 2)) {
    const r = await pull(pubDir, backing, user)
    t.equal(r.code, code, `${what} (directory): exit ${code}`)
    t.same(snapshot(backing), before, `${what} (directory): byte-identical`)
  }
})

t.test('a dropped connection resumes with Range; an interrupted pull keeps its verified bytes', async (t) => {
  const backing = await loopFs(t, 64)
  const user = tmpDir(t)
  const file = path.basename(v2.imageFile)
  // the first request for the base is cut after 1.5 MiB
  const s = await serve(t, path.dirname(v2.manifestFile), (p, i) => (p.endsWith('.qcow2') && i === 1 ? { dropAfter: 1.5 * CHUNK_SIZE } : undefined))
  // a pull cut off before: 2 good chunks, then a third that is wrong
  const temp = path.join(backing, `.${file}.partial`)
  const good = fs.readFileSync(v2.imageFile).subarray(0, 2 * CHUNK_SIZE)
  fs.writeFileSync(temp, Buffer.concat([good, Buffer.alloc(CHUNK_SIZE, 0xee)]))
  const r = await pull(`${s.url}/`, backing, user)
  t.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  t.equal(out.download.resumedBytes, 2 * CHUNK_SIZE, 'the two verified chunks kept, the wrong third fetched again')
  const gets = s.requests.filter((q) => q.path.endsWith('.qcow2'))
  t.equal(gets[0]!.range, `bytes=${2 * CHUNK_SIZE}-${v2.manifest.image.size - 1}`, 'the first request starts after the kept chunks')
  t.equal(gets.length, 2, 'one more request after the drop')
  t.equal(gets[1]!.range, `bytes=${2 * CHUNK_SIZE + 1.5 * CHUNK_SIZE}-${v2.manifest.image.size - 1}`, 'resumed from the first byte not received')
  t.equal(hashWhole(path.join(backing, file)), v2.manifest.image.sha256)
  t.notOk(fs.existsSync(temp), 'the temporary file became the base')
})

t.test('over BitTorrent, a pull killed after aria2c had every piece: the whole download is judged and used, not fetched again', async (t) => {
  const backing = await loopFs(t, 64)
  const user = tmpDir(t)
  const s1 = await serve(t, path.dirname(v1.manifestFile))
  // what an earlier pull's aria2c left: the whole file in its download directory
  const left = path.join(backing, '.torrent', v1.manifest.image.sha256.slice(0, 16), v1.manifest.image.file)
  fs.mkdirSync(path.dirname(left), { recursive: true })
  fs.copyFileSync(v1.imageFile, left)
  const r = await runCli(['vm-image', 'pull', `${s1.url}/`, '--trusted-key', keys.publicKeyFile, '--dir', backing, '--user-dir', user, '--json'])
  t.equal(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout)
  t.match(out.plan, { method: 'torrent' })
  t.match(out.download, { method: 'torrent', downloadedBytes: 0 })
  t.equal(hashWhole(path.join(backing, v1.manifest.image.file)), v1.manifest.image.sha256, 'the base is the signed bytes')
  t.notOk(
    s1.requests.some((q) => q.path.endsWith('.qcow2')),
    'not one request for the base itself',
  )
})

t.test('BitTorrent downloads on the backing partition: those of replaced bases go, the current ones stay (they seed for the lab)', async (t) => {
  const backing = tmpDir(t)
  const root = path.join(backing, '.torrent')
  for (const id of ['aaaa', 'bbbb', 'cccc']) {
    fs.mkdirSync(path.join(root, id), { recursive: true })
    fs.mkdirSync(path.join(root, `${id}.control`))
    fs.writeFileSync(path.join(root, id, 'x.qcow2'), id)
  }
  await clearTorrents(backing, new Set(['aaaa', 'cccc']))
  t.same(fs.readdirSync(root).sort(), ['aaaa', 'aaaa.control', 'cccc', 'cccc.control'])
})

// A VM base image distributed to a campus (issue 22): two buildings of four hosts each (network
// namespaces, 1 Gbit/s switch ports) joined by a 100 Mbit/s link, the image server in building a,
// every host's /qcow2/backing and /qcow2/user ext4 on loop devices. The new base (200 MiB of data)
// goes to all eight at once over BitTorrent, building-aware: one upstream host per building takes
// the server and the tracker, the others only their building's peers (Local Peer Discovery). Each
// building's link then carries about one copy; every copy is the signed bytes; the overlays on the
// old base go, the others stay, and one a running QEMU holds stays with its base. A wrong torrent
// (another file of the same name and size, seeded) and a peer that serves corrupted pieces change
// nothing: the first is refused with the host's disks untouched, the second is ignored.
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { hashWhole, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { generateKeyPair } from '../../image-format/manifest.ts'
import { makeTorrent } from '../../image-format/torrent.ts'
import { startCampus, type CampusLab } from '../../test-support/campus-fixtures.ts'
import { readCatalogue } from '../catalogue.ts'
import { publishVmImage, type PublishedVm } from '../publish.ts'
import { makeBase, makeOverlay, qemuHolding, snapshot } from './fixtures.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-campus-')
const keys = generateKeyPair(path.join(dir, 'keys'))
const served = path.join(dir, 'served')
// building a's first member is the server: createCampus numbers it 10.78.1.1
const TRACKER = 'http://10.78.1.1:6969/announce'
let lab: CampusLab

const publish = async (name: string, version: string, o: { dataMiB: number; pattern: number; virtualMiB?: number; isDefault?: boolean }) =>
  publishVmImage({
    file: await makeBase(path.join(dir, 'src', `${name}-${version}.qcow2`), o),
    name,
    version,
    os: name === 'ubuntu' ? 'linux' : 'windows',
    isDefault: o.isDefault ?? true,
    signingKey: keys.privateKeyFile,
    out: path.join(served, `${name}-${version}`),
    trackers: [TRACKER],
  })

let win1: PublishedVm
let ubuntu: PublishedVm
let win2: PublishedVm
let wrongInfoHash = ''

t.before(async () => {
  win1 = await publish('win11', '1.0.0', { dataMiB: 4, pattern: 0x10 })
  ubuntu = await publish('ubuntu', '1.0.0', { dataMiB: 2, pattern: 0x30, isDefault: false })
  win2 = await publish('win11', '2.0.0', { dataMiB: 200, pattern: 0x40, virtualMiB: 512 })
  // the same signed base behind a .torrent of other bytes of the same name and size
  const wrong = path.join(served, 'win11-2.0.0-wrong')
  fs.cpSync(path.dirname(win2.manifestFile), wrong, { recursive: true })
  const other = path.join(dir, 'other', win2.manifest.image.file)
  fs.mkdirSync(path.dirname(other))
  fs.copyFileSync(win2.imageFile, other)
  xorRange(other, 100 * MiB, Buffer.from([0xff]))
  wrongInfoHash = (await makeTorrent(other, { trackers: [TRACKER] })).infoHash
  fs.copyFileSync(`${other}.torrent`, path.join(wrong, `${win2.manifest.image.file}.torrent`))
  const hashes = [win1, ubuntu, win2].map((p) => p.infoHash)
  lab = await startCampus(dir, served, [...hashes, wrongInfoHash], {
    prefix: 'lhc',
    perBuilding: 4,
    backingMiB: 640,
    userMiB: 64,
    trustedKey: keys.publicKeyFile,
  })
  t.teardown(() => lab.close())
  // every host runs win11 1.0.0 and ubuntu 1.0.0 (over HTTP), with a user volume on each
  await Promise.all(
    lab.hosts.map(async (h) => {
      for (const p of ['win11-1.0.0/', 'ubuntu-1.0.0/']) {
        const r = await lab.pull(h, lab.url + p, ['--http'])
        if (r.exitCode !== 0) throw new Error(`${h.name}: pull ${p}: ${r.all}`)
      }
      await makeOverlay(path.join(h.user, 'alice', 'win11.qcow2'), path.join(h.backing, 'win11-1.0.0.qcow2'), 1)
      await makeOverlay(path.join(h.user, 'bob', 'ubuntu.qcow2'), path.join(h.backing, 'ubuntu-1.0.0.qcow2'), 1)
    }),
  )
})

/** aria2c seeding `file`'s directory with `torrent`, in `ns`, unchecked: a peer of other or damaged bytes. */
function rogueSeeder(ns: string, file: string, torrent: string) {
  const p = execa(
    'ip',
    [
      'netns',
      'exec',
      ns,
      'aria2c',
      `--dir=${path.dirname(file)}`,
      '--bt-seed-unverified=true',
      '--seed-ratio=0.0',
      '--enable-dht=false',
      '--bt-enable-lpd=true',
      '--bt-tracker-interval=2',
      '--summary-interval=0',
      '--console-log-level=error',
      torrent,
    ],
    { reject: false },
  )
  return p
}

for (const [i, client] of (['libtorrent', 'aria2c'] as const).entries())
  t.test(`a .torrent of other bytes (seeded, same name and size), --bt-client ${client}: refused after the download, the host unchanged`, async (t) => {
    const h = lab.hosts[1 + i]!
    const other = path.join(dir, 'other', win2.manifest.image.file)
    const rogue = rogueSeeder(lab.bystander.ns, other, `${other}.torrent`)
    t.teardown(() => {
      rogue.kill('SIGKILL')
    })
    const before = { backing: snapshot(h.backing), user: snapshot(h.user) }
    const r = await lab.pull(h, `${lab.url}win11-2.0.0-wrong/`, ['--peers', 'all', '--timeout', '120', '--bt-client', client])
    t.equal(r.exitCode, ExitCode.hashMismatch, String(r.all))
    t.match(String(r.stderr), `with BitTorrent (${client}, asked for; `, `${client} downloaded it`)
    t.match(String(r.stderr), /delivered other bytes than the signed win11 2\.0\.0: chunk 100 /)
    t.same(snapshot(h.backing), before.backing, 'the backing partition is byte-identical (no base, no catalogue change, no download left)')
    t.same(snapshot(h.user), before.user, 'the user partition is byte-identical')
  })

t.test('building-aware BitTorrent: every host gets the signed bytes, each building link carries about one copy, prune', async (t) => {
  // a peer in building b (not one of the hosts) serving the right torrent with every piece damaged
  // (the client drops them: were one good, the building could take it from there and not over the link)
  const damaged = path.join(dir, 'damaged', win2.manifest.image.file)
  fs.mkdirSync(path.dirname(damaged))
  fs.copyFileSync(win2.imageFile, damaged)
  for (let at = 0; at < win2.manifest.image.size; at += MiB) xorRange(damaged, at, Buffer.from([0x5a]))
  fs.copyFileSync(`${win2.imageFile}.torrent`, `${damaged}.torrent`)
  const rogue = rogueSeeder(lab.bystander.ns, damaged, `${damaged}.torrent`)
  t.teardown(() => {
    rogue.kill('SIGKILL')
  })
  // a running VM on win11 1.0.0 in building b
  const held = lab.hosts[5]!
  const carol = await makeOverlay(path.join(held.user, 'carol', 'win11.qcow2'), path.join(held.backing, 'win11-1.0.0.qcow2'), 1)
  await qemuHolding(t, carol)

  const d = await lab.distribute(`${lab.url}win11-2.0.0/`, 'locality', ['--seed-minutes', '10', '--timeout', '180'])
  const size = win2.manifest.image.size
  t.comment(
    `${d.seconds.toFixed(1)} s; into building a ${(d.linkBytesIn[0]! / size).toFixed(2)} copies, into b ${(d.linkBytesIn[1]! / size).toFixed(2)}; server ${(d.serverBytes / size).toFixed(2)} copies`,
  )
  for (const r of d.results) {
    const h = r.host
    t.equal(r.exitCode, 0, `${h.name} pulled win11 2.0.0`)
    if (r.exitCode !== 0) t.comment(r.output.slice(-1500))
    const j = r.json as { download?: { method: string; client?: string } } | null
    t.equal(j?.download?.method, 'torrent', `${h.name} pulled over BitTorrent`)
    // --bt-client's default (auto): labhost's libtorrent client, which scripts/setup.sh installs
    t.equal(j?.download?.client, 'libtorrent', `${h.name}: with libtorrent, by default`)
    t.equal(hashWhole(path.join(h.backing, win2.manifest.image.file)), win2.manifest.image.sha256, `${h.name}: the signed bytes`)
    const cat = readCatalogue(h.catalogue)
    t.same(
      cat.map((e) => `${e.name} ${e.version}`),
      ['ubuntu 1.0.0', 'win11 2.0.0'],
      `${h.name}: catalogue`,
    )
    t.notOk(fs.existsSync(path.join(h.user, 'alice', 'win11.qcow2')), `${h.name}: the volume on the old base is gone`)
    t.ok(fs.existsSync(path.join(h.user, 'bob', 'ubuntu.qcow2')), `${h.name}: the volume on the other current base stays`)
    t.equal(
      fs.existsSync(path.join(h.backing, 'win11-1.0.0.qcow2')),
      h === held,
      `${h.name}: the old base ${h === held ? 'stays under the running VM' : 'is gone'}`,
    )
  }
  t.ok(fs.existsSync(carol), 'the volume a running QEMU holds stays')
  await run('qemu-img', ['check', '-U', carol])
  for (const [k, bytes] of d.linkBytesIn.entries())
    t.ok(bytes <= 1.5 * size, `building ${'ab'[k]}: ${bytes} bytes came over the link (${(bytes / size).toFixed(2)} copies, at most 1.5)`)
})

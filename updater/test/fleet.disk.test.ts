// The fleet on one machine: a server and 8 hosts in network namespaces, opentracker on the server,
// every host running the real `labhost update --torrent` against its disk on a loop device. Two
// hosts fetch a half each from the server and the others from the lab's peers, so the server sends
// about one copy; an upstream host with a part whose lab has no other part fetches the rest from
// the server; in a lab without an upstream one host turns to the server; a host that loses its link
// mid-transfer finishes; a seeder of corrupted pieces, or a .torrent for other bytes, never gets a
// byte into a slot; `labhost image seed` refuses a directory never published or bytes not signed.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, hashWhole, labhostArgv, runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { infoHash, publishImage } from '../../image-format/torrent.ts'
import { rolloutPoint } from '../rollout.ts'
import { buildImages, protectedParts, slotBHolds, type Images } from '../../test-support/update-fixtures.ts'
import { btArgs, labPart, startFleet, torrentArgs, TRACKER_PORT, type Fleet } from '../../test-support/fleet-fixtures.ts'

const dir = tmpDir(t, 'labhost-fleet-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

/**
 * Every test after the first (which measures how the 8 hosts share the pieces, and so runs alone)
 * has a lab of its own (its own namespaces, disks and processes): they run side by side, in one
 * group (tap's jobs) declared at the end of this file. They spend most of their time waiting: on
 * a throttled download, a link that is down, a stall timeout, announce intervals.
 */
const sideBySide: [string, (t: Test) => Promise<void>][] = []
const test = (name: string, fn: (t: Test) => Promise<void>) => void sideBySide.push([name, fn])

async function fleet(t: Test, hosts: number, prefix: string): Promise<Fleet> {
  const d = tmpDir(t, 'labhost-fleet-run-')
  const f = await startFleet(d, images, { hosts, prefix })
  t.teardown(() => f.close())
  return f
}

t.test('8 hosts update over BitTorrent, two of them upstream hosts with half each: every slot B is 2.0.0, the server sends about one copy', async (t) => {
  const f = await fleet(t, 8, 'lhft')
  // as docs/admin.md advises for a lab: no seeder on the server; two hosts are the lab's upstream
  // hosts (--upstream-part 1/2 and 2/2: each fetches its half from the server), the others fetch
  // from the lab's peers only
  const before = await f.lab.txBytes(f.server)
  const started = Date.now()
  const runs = await Promise.all(f.hosts.map((h, i) => f.update(h, torrentArgs(h, labPart(f, i, 2)))))
  const seconds = (Date.now() - started) / 1000
  const sent = (await f.lab.txBytes(f.server)) - before
  for (const [i, r] of runs.entries()) {
    t.equal(r.exitCode, 0, `host ${i + 1} exit 0`, { output: String(r.all).slice(-2000) })
    const out = JSON.parse(String(r.stdout))
    t.ok(out.transfer.torrent?.file, `host ${i + 1} downloaded with BitTorrent`)
    // --bt-client's default (auto): labhost's libtorrent client, which scripts/setup.sh installs
    t.match(String(r.stderr), /with BitTorrent \(libtorrent, auto: python3-libtorrent is installed; /, `host ${i + 1}: libtorrent, by default`)
    t.ok(slotBHolds(f.hosts[i]!, `${images.v2}/root.img`), `host ${i + 1}: slot B holds 2.0.0`)
    if (i < 2) t.match(String(r.all), `fetched part ${i + 1} of 2 of root.img.zst from the server`, `host ${i + 1} fetched its half from the server`)
    else t.notMatch(String(r.all), /fetched part/, `host ${i + 1} fetched no part from the server`)
  }
  const ratio = sent / f.transportBytes
  t.comment(
    `server sent ${sent} bytes for 8 hosts = ${ratio.toFixed(2)} x the ${f.transportBytes}-byte transport file, last host done after ${seconds.toFixed(1)} s`,
  )
  // plain HTTP sends 8 copies, a capped seeder about 2 (npm run bench); here the upstream hosts alone fetch from the server, a half each
  t.ok(ratio < 1.5, `the server sent ${ratio.toFixed(2)} copies (< 1.5)`)
})

// A lab in transition: every other host runs aria2c (auto on a host without python3-libtorrent: one
// installed from an image older than the recipe's libtorrent; here --bt-client aria2c), the others
// labhost's libtorrent client, for a delta: two upstream hosts (one of each) fetch half the pack
// each from the server, the others only from the lab, whichever client their peers run; every
// slot B is then 2.0.0 byte for byte.
test('8 hosts, half on aria2c and half on libtorrent, fetch the delta pack from each other, two upstream hosts with half each: every slot B is 2.0.0, only the upstream hosts fetch from the server', async (t) => {
  const d = tmpDir(t, 'labhost-fleet-run-')
  const f = await startFleet(d, images, { hosts: 8, prefix: 'lhfl', deltaFrom: images.v1 })
  t.teardown(() => f.close())
  const pack = f.deltaPacks[0]!
  const before = await f.lab.txBytes(f.server)
  const runs = await Promise.all(f.hosts.map((h, i) => f.update(h, btArgs(h, [...labPart(f, i, 2), '--bt-client', i % 2 ? 'aria2c' : 'libtorrent']))))
  const sent = (await f.lab.txBytes(f.server)) - before
  for (const [i, r] of runs.entries()) {
    t.equal(r.exitCode, 0, `host ${i + 1} exit 0`, { output: String(r.all).slice(-2000) })
    const out = JSON.parse(String(r.stdout))
    t.equal(out.delta.pack, pack.file, `host ${i + 1}: the delta came from the pack`)
    const client = i % 2 ? 'aria2c' : 'libtorrent'
    t.match(String(r.stderr), `with BitTorrent (${client}, asked for; `, `host ${i + 1}: ${client} downloaded it`)
    t.ok(slotBHolds(f.hosts[i]!, `${images.v2}/root.img`), `host ${i + 1}: slot B holds 2.0.0`)
    if (i < 2) t.match(String(r.all), `fetched part ${i + 1} of 2 of ${pack.file} from the server`, `host ${i + 1} fetched its half from the server`)
    else t.notMatch(String(r.all), /fetched part|no peer of this lab had/, `host ${i + 1} fetched nothing from the server: the lab's peers gave it the pack`)
  }
  // the pack of the test image is small: the manifests, torrents and pack lists the 8 hosts fetch weigh as much
  t.comment(`server sent ${sent} bytes for 8 hosts, the pack is ${pack.size} bytes`)
})

/** A machine UUID whose rollout point for test 2.0.0 lies in [lo, hi). */
function uuidWithPoint(lo: number, hi: number): string {
  for (;;) {
    const u = crypto.randomUUID()
    const p = rolloutPoint(u, 'test', '2.0.0')
    if (p >= lo && p < hi) return u
  }
}

// Pull mode (issue 18): the hosts check a signed channel themselves. At 25 % exactly the hosts
// whose rollout point lies below 25 update — here two of eight, the delta fetched as a pack over
// BitTorrent — and the others decide "not in this rollout stage", their disks byte-identical;
// then the channel is paused at 100 %, and no host starts an update.
test('a channel rollout at 25 %: exactly the hosts below it update, with a delta over BitTorrent; a pause stops the rest', async (t) => {
  const f = await fleet(t, 8, 'lhfr')
  // the delta pack for hosts on 1.0.0, served (the server is its web seed) and whitelisted
  const pub = await runCli([
    'image',
    'publish',
    f.imageDir,
    '--tracker',
    `http://${f.server.ip}:${TRACKER_PORT}/announce`,
    '--web-seed',
    `${f.url}/`,
    '--delta-from',
    images.v1,
    '--json',
  ])
  t.equal(pub.code, 0, pub.stderr)
  const pack = (JSON.parse(pub.stdout) as { deltaPacks: { file: string }[] }).deltaPacks[0]!.file
  await f.allow(await infoHash(path.join(f.imageDir, `${pack}.torrent`)))
  const channel = path.join(f.imageDir, 'channel.json')
  const publishChannel = async (args: string[]) => {
    const r = await runCli(['channel', 'publish', '--out', channel, '--signing-key', images.keys.privateKeyFile, ...args])
    t.equal(r.code, 0, `channel publish ${args.join(' ')}`, failDiag(r))
  }
  await publishChannel(['--image', 'manifest.json', '--share', '25'])
  const points = [uuidWithPoint(0, 25), uuidWithPoint(0, 25), ...Array.from({ length: 6 }, () => uuidWithPoint(25, 100))]
  const hosts = f.hosts.map((h, i) => {
    const file = path.join(path.dirname(h.downloadDir), 'machine-uuid')
    fs.writeFileSync(file, `${points[i]}\n`)
    return {
      h,
      inStage: i < 2,
      args: btArgs(h, ['--machine-uuid-file', file]),
    }
  })
  // `labhost update --channel URL` on a host, in its namespace
  const check = (x: (typeof hosts)[number]) => {
    const [exe, args] = labhostArgv('update', '--channel', `${f.url}/channel.json`, ...x.args, '--json', ...x.h.args)
    return f.lab.spawn(x.h.member, exe, args)
  }
  const before = hosts.map((x) => hashWhole(x.h.disk))
  const runs = await Promise.all(hosts.map(check))
  for (const [i, r] of runs.entries()) {
    const x = hosts[i]!
    t.equal(r.exitCode, 0, `host ${i + 1} exit 0`, { output: String(r.all).slice(-2000) })
    const out = JSON.parse(String(r.stdout))
    if (x.inStage) {
      t.equal(out.decision, 'updated', `host ${i + 1} (rollout point below 25) updated`)
      t.equal(out.update?.delta?.pack, pack, `host ${i + 1}: its delta came as the pack, over BitTorrent`)
      t.ok(slotBHolds(x.h, `${images.v2}/root.img`), `host ${i + 1}: slot B is 2.0.0 byte for byte`)
    } else {
      t.equal(out.decision, 'not-in-stage', `host ${i + 1} (rollout point 25 or more) is not in this stage`)
      t.equal(hashWhole(x.h.disk), before[i], `host ${i + 1}: the whole disk byte-identical`)
    }
  }
  // paused at 100 %: no host that has not updated starts now
  await publishChannel(['--share', '100', '--pause'])
  const paused = await Promise.all(hosts.slice(2).map(check))
  for (const [i, r] of paused.entries()) {
    t.equal(r.exitCode, 0, { output: String(r.all).slice(-2000) })
    t.equal(JSON.parse(String(r.stdout)).decision, 'paused', `host ${i + 3}: paused`)
    t.equal(hashWhole(hosts[i + 2]!.h.disk), before[i + 2], `host ${i + 3}: the whole disk byte-identical`)
  }
})

test('a lab without an upstream: a host that finds no peer with pieces turns to the server, the others fetch from it', async (t) => {
  const f = await fleet(t, 3, 'lhfu')
  const before = await f.lab.txBytes(f.server)
  // every host keeps to the lab; none has the pieces, so after the timeout (and a random part of it) one turns upstream
  const runs = await Promise.all(f.hosts.map((h) => f.update(h, torrentArgs(h, ['--peers', 'building', '--tracker', f.trackerUrl, '--timeout', '10']))))
  const sent = (await f.lab.txBytes(f.server)) - before
  const promoted = runs.filter((r) => String(r.all).includes("as the lab's upstream")).length
  for (const [i, r] of runs.entries()) {
    t.equal(r.exitCode, 0, `host ${i + 1} exit 0`, { output: String(r.all).slice(-2000) })
    t.ok(slotBHolds(f.hosts[i]!, `${images.v2}/root.img`), `host ${i + 1}: slot B holds 2.0.0`)
  }
  t.ok(promoted >= 1, `${promoted} host(s) turned to the server`)
  const copies = sent / f.transportBytes
  t.ok(copies < promoted + 0.5, `the server sent ${copies.toFixed(2)} copies: those of the ${promoted} host(s) that turned to it, the rest came from them`)
})

test('an upstream host with part 1 of 2 whose lab has no other: it turns to the server for the rest, and the server sends one copy', async (t) => {
  const f = await fleet(t, 1, 'lhfp')
  const before = await f.lab.txBytes(f.server)
  const [h] = f.hosts
  const r = await f.update(h!, torrentArgs(h!, ['--peers', 'upstream', '--upstream-part', '1/2', '--timeout', '5']))
  const sent = (await f.lab.txBytes(f.server)) - before
  t.equal(r.exitCode, 0, 'exit 0', { output: String(r.all).slice(-2000) })
  t.match(String(r.all), 'fetched part 1 of 2 of root.img.zst from the server', 'its half from the server first')
  t.match(String(r.all), "as the lab's upstream", 'then, no peer having the other half, the rest from the server too')
  t.ok(slotBHolds(h!, `${images.v2}/root.img`), 'slot B holds 2.0.0')
  const copies = sent / f.transportBytes
  t.ok(copies < 1.25, `the server sent ${copies.toFixed(2)} copies: the half it had is not fetched again`)
})

test('a host whose link goes down mid-transfer resumes when it comes back and finishes', async (t) => {
  const f = await fleet(t, 1, 'lhfn')
  await f.seed()
  const h = f.hosts[0]!
  // slow enough that the link drop falls inside the transfer
  const run = f.update(h, torrentArgs(h, ['--download-limit', `${Math.ceil(f.transportBytes / 8 / 1024)}K`]))
  // the transfer has begun when the client created the file
  const started = () =>
    fs.existsSync(h.downloadDir) &&
    fs
      .readdirSync(h.downloadDir, { recursive: true })
      .map(String)
      .some((n) => n.endsWith('root.img.zst'))
  for (const until = Date.now() + 30_000; Date.now() < until && !started(); await sleep(100));
  t.ok(started(), 'the download began')
  await sleep(1500)
  await f.lab.link(h.member, false)
  t.comment('link down')
  await sleep(4000)
  await f.lab.link(h.member, true)
  t.comment('link up')
  const r = await run
  t.equal(r.exitCode, 0, 'exit 0', { output: String(r.all).slice(-2000) })
  const out = JSON.parse(String(r.stdout))
  t.ok(out.transfer.torrent.seconds > 5, `the download spanned the outage (${out.transfer.torrent.seconds} s)`)
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
})

test('refused: the only seeder serves corrupted pieces; the client never completes, nothing is written', async (t) => {
  const f = await fleet(t, 1, 'lhfc')
  const bad = tmpDir(t)
  for (const n of ['root.img.zst', 'root.img.zst.torrent']) fs.copyFileSync(path.join(f.imageDir, n), path.join(bad, n))
  // a byte changed in every fourth piece, seeded without checking
  for (let at = 1000; at < f.transportBytes; at += 4 << 20) xorRange(path.join(bad, 'root.img.zst'), at, Buffer.from([0x5a]))
  f.seedRaw(bad, ['--check-integrity=false', '--bt-seed-unverified=true'])
  const h = f.hosts[0]!
  const before = { disk: hashWhole(h.disk), ...protectedParts(h) }
  const r = await f.update(h, torrentArgs(h, ['--timeout', '15']))
  t.equal(r.exitCode, ExitCode.downloadFailed, 'download failed exit code', { output: String(r.all).slice(-2000) })
  t.match(String(r.stderr), /BitTorrent download of .* made no progress for 15 s/)
  t.equal(hashWhole(h.disk), before.disk, 'the disk is byte-identical')
})

test('refused: a .torrent for other bytes (seeded in full) is caught by the signed manifest before any write', async (t) => {
  const f = await fleet(t, 1, 'lhfo')
  // the served .torrent now describes a changed transport file, which the server seeds
  const other = tmpDir(t)
  fs.copyFileSync(path.join(f.imageDir, 'manifest.json'), path.join(other, 'manifest.json'))
  fs.copyFileSync(path.join(f.imageDir, 'root.img.zst'), path.join(other, 'root.img.zst'))
  xorRange(path.join(other, 'root.img.zst'), 4096, Buffer.from([0x01]))
  const published = await publishImage(other, { trackers: [`http://${f.server.ip}:${TRACKER_PORT}/announce`] })
  fs.copyFileSync(published.torrentFile, path.join(f.imageDir, 'root.img.zst.torrent'))
  await f.allow(published.infoHash)
  f.seedRaw(other)
  const h = f.hosts[0]!
  const before = hashWhole(h.disk)
  const r = await f.update(h, torrentArgs(h, ['--timeout', '30']))
  t.equal(r.exitCode, ExitCode.hashMismatch, 'hash mismatch exit code', { output: String(r.all).slice(-2000) })
  t.match(String(r.stderr), /is not the signed transport file/)
  t.equal(hashWhole(h.disk), before, 'the disk is byte-identical')
})

test('labhost image seed refuses what it must not seed: a directory never published, a transport file not the signed one', async (t) => {
  const d = tmpDir(t)
  fs.cpSync(images.v2, d, { recursive: true })
  const unpublished = await runCli(['image', 'seed', d])
  t.equal(unpublished.code, ExitCode.notFound, 'not published: exit 3', failDiag(unpublished))
  t.match(unpublished.stderr, /root\.img\.zst\.torrent is missing\n.*hint: make it first: labhost image publish/)
  await publishImage(d, { trackers: ['http://127.0.0.1:6969/announce'] })
  xorRange(path.join(d, 'root.img.zst'), 4096, Buffer.from([0x01]))
  const changed = await runCli(['image', 'seed', d])
  t.equal(changed.code, ExitCode.hashMismatch, 'a changed transport file: exit 32', failDiag(changed))
  t.match(changed.stderr, /is not the transport file its signed manifest names/)
  const rate = await runCli(['image', 'seed', d, '--upload-limit', 'fast'])
  t.equal(rate.code, ExitCode.usage, 'a rate that is no rate: usage error')
})

t.test('labs of their own, side by side', { jobs: sideBySide.length }, async (t) => {
  for (const [name, fn] of sideBySide) t.test(name, fn)
})

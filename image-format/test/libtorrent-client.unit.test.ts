// labhost's libtorrent client (--bt-client libtorrent) through the same wrapper as aria2c
// (aria2Download), without a network: a file already whole in the download directory is checked
// piece by piece and reported complete, and the client seeds on for --seed-minutes; a file with a
// damaged piece and no peer to mend it makes no progress and is given up as a stall; without
// python3-libtorrent the error says so, and `auto` (update's default) takes aria2c instead. Rates in
// aria2c's notation are read as bytes per second.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { chooseBtClient, rateBytes } from '../bt-clients.ts'
import { makeTorrent } from '../torrent.ts'
import { aria2Download, PID_FILE } from '../torrent-download.ts'
import { tmpDir } from '../../test-support/test-helpers.ts'

const SIZE = 300_000

async function published(t: Test) {
  const d = tmpDir(t)
  const src = path.join(d, 'src')
  fs.mkdirSync(src)
  const file = path.join(src, 'pack.bin')
  fs.writeFileSync(file, Buffer.from(Array.from({ length: SIZE }, (_, i) => (i * 7919) % 251)))
  const { torrentFile } = await makeTorrent(file, { trackers: ['http://127.0.0.1:1/announce'] })
  return { d, file, torrent: fs.readFileSync(torrentFile) }
}

const download = (p: { d: string; torrent: Buffer }, stallSeconds: number) =>
  aria2Download({
    client: 'libtorrent',
    torrent: p.torrent,
    name: 'pack.bin',
    size: SIZE,
    dir: path.join(p.d, 'dl'),
    control: path.join(p.d, 'dl.control'),
    lpd: false,
    peerExchange: false,
    seedMinutes: 0,
    seedRatio: 0,
    trackerIntervalSeconds: 0,
    stallSeconds,
    what: 'the test pack',
    otherwise: 'give up',
  })

t.test('the whole file already there: every piece checked, complete; the client ends after 0 minutes of seeding', async (t) => {
  const p = await published(t)
  fs.mkdirSync(path.join(p.d, 'dl'))
  fs.copyFileSync(p.file, path.join(p.d, 'dl', 'pack.bin'))
  const got = await download(p, 20)
  t.equal(got.file, path.join(p.d, 'dl', 'pack.bin'))
  // with --seed-minutes 0 it may be gone already (seederPid null); it ends by itself either way
  const pid = Number(fs.readFileSync(path.join(p.d, 'dl.control', PID_FILE), 'utf8'))
  t.ok(pid > 0, 'its pid for the next run')
  t.ok(got.seederPid === null || got.seederPid === pid, 'the seeder is that process, if still running')
  const log = fs.readFileSync(path.join(p.d, 'dl.control', 'libtorrent.log'), 'utf8')
  t.match(log, /download complete: 300000 bytes/)
  for (let i = 0; i < 50 && fs.existsSync(`/proc/${pid}`); i++) await new Promise((r) => setTimeout(r, 100))
  t.notOk(fs.existsSync(`/proc/${pid}`), 'the client exited')
  t.match(fs.readFileSync(path.join(p.d, 'dl.control', 'libtorrent.log'), 'utf8'), /seeding over/)
})

t.test('a damaged piece and no peer: no progress, given up as a stall; the client is ended', async (t) => {
  const p = await published(t)
  fs.mkdirSync(path.join(p.d, 'dl'))
  const copy = path.join(p.d, 'dl', 'pack.bin')
  fs.copyFileSync(p.file, copy)
  const fd = fs.openSync(copy, 'r+')
  fs.writeSync(fd, Buffer.from([fs.readFileSync(p.file)[SIZE - 10]! ^ 0xff]), 0, 1, SIZE - 10)
  fs.closeSync(fd)
  await t.rejects(download(p, 3), { code: 'downloadFailed', message: /made no progress for 3 s/, details: { stalled: true } })
  t.notOk(fs.existsSync(path.join(p.d, 'dl.control', 'complete')), 'never reported complete')
  const pid = Number(fs.readFileSync(path.join(p.d, 'dl.control', PID_FILE), 'utf8'))
  t.notOk(fs.existsSync(`/proc/${pid}`), 'the client is gone')
})

/** python3 without libtorrent from here on in `t`: a module of that name that cannot be imported, first on python's path. */
function withoutLibtorrent(t: Test, d: string) {
  const fake = path.join(d, 'fake')
  fs.mkdirSync(fake)
  fs.writeFileSync(path.join(fake, 'libtorrent.py'), "raise ImportError('no libtorrent here')\n")
  const was = process.env.PYTHONPATH
  process.env.PYTHONPATH = fake
  t.teardown(() => void (was === undefined ? delete process.env.PYTHONPATH : (process.env.PYTHONPATH = was)))
}

t.test('python3 without libtorrent: a one-line error naming the package and the other client', async (t) => {
  const p = await published(t)
  withoutLibtorrent(t, p.d)
  await t.rejects(download(p, 20), {
    code: 'toolFailed',
    message: /^python3-libtorrent is not installed \(.*no libtorrent here/,
    hint: 'install the python3-libtorrent package (scripts/setup.sh does), or use --bt-client aria2c',
  })
})

t.test('which client: auto is libtorrent where python3 imports it, else aria2c; a named client is taken as named', async (t) => {
  t.same(await chooseBtClient('auto'), { client: 'libtorrent', why: 'auto: python3-libtorrent is installed' })
  t.same(await chooseBtClient('aria2c'), { client: 'aria2c', why: 'asked for' })
  t.same(await chooseBtClient('libtorrent'), { client: 'libtorrent', why: 'asked for' })
  t.same(await chooseBtClient(), { client: 'libtorrent', why: 'auto: python3-libtorrent is installed' }, 'none named: auto')
  t.test('without python3-libtorrent', async (t) => {
    withoutLibtorrent(t, tmpDir(t))
    t.same(await chooseBtClient('auto'), { client: 'aria2c', why: 'auto: python3-libtorrent is not installed' })
    t.same(await chooseBtClient('libtorrent'), { client: 'libtorrent', why: 'asked for' }, 'asked for: taken, and its download says what is missing')
  })
})

t.test("rates in aria2c's notation, in bytes per second", async (t) => {
  t.equal(rateBytes('500K'), 512_000)
  t.equal(rateBytes('30M'), 31_457_280)
  t.equal(rateBytes('7'), 7)
  t.throws(() => rateBytes('fast'))
})

// The .torrent beside a signed manifest is not signed, and it chooses the names aria2c writes: a
// torrent naming its file like labhost's aria2c hook overwrote the hook, one naming it like the
// completion marker hung labhost. Before a client starts, `labhost update --torrent` requires one
// file with the signed transport file's name and size (else exit 39, nothing written, no client
// run); the hook, the marker and the client's log live in a private directory beside the download,
// for aria2c and for labhost's libtorrent client (the default where python3-libtorrent is installed).
// Each run is a private network namespace with only a loopback (unshare): the image server and
// labhost talk over 127.0.0.1 there, and aria2c's multicast peer discovery reaches nothing.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { failDiag, tmpDir } from '../../test-support/test-helpers.ts'
import { ISOLATED_PORT, updateIsolated } from '../../test-support/isolated.ts'
import { publishImage } from '../../image-format/torrent.ts'
import { buildImages, makeHost, protectedParts, slotBHolds, wholeDisk, type Host, type Images } from '../../test-support/update-fixtures.ts'

const dir = tmpDir(t, 'labhost-torrent-check-')
let images: Images
const PORT = ISOLATED_PORT
const tracker = 'http://127.0.0.1:1/announce'

t.before(async () => {
  images = await buildImages(dir)
})

const torrentArgs = (h: Host, downloadRoot: string, extra: string[] = []) => [
  ...extra,
  '--full',
  '--torrent',
  '--download-dir',
  downloadRoot,
  '--seed-minutes',
  '0',
  '--timeout',
  '30',
  '--retries',
  '1',
  '--json',
  ...h.args,
]

/** A served copy of 2.0.0 whose .torrent mktorrent made of `content` (a file or a directory) in `d`. */
async function servedWithTorrent(d: string, content: string): Promise<string> {
  const served = path.join(d, 'served')
  fs.cpSync(images.v2, served, { recursive: true })
  await run('mktorrent', [
    '-d',
    '-l',
    '20',
    '-a',
    tracker,
    '-w',
    `http://127.0.0.1:${PORT}/root.img.zst`,
    '-o',
    path.join(served, 'root.img.zst.torrent'),
    content,
  ])
  return served
}

const files = (d: string) => (fs.existsSync(d) ? fs.readdirSync(d, { recursive: true }).map(String).sort() : [])

const transportSize = () => fs.statSync(path.join(images.v2, 'root.img.zst')).size

const refusals: { name: string; make: (d: string) => string; message: RegExp }[] = [
  {
    name: 'a torrent with two files (one of them the transport file)',
    make: (d) => {
      fs.mkdirSync(path.join(d, 'content', 'root.img.zst'), { recursive: true })
      fs.copyFileSync(path.join(images.v2, 'root.img.zst'), path.join(d, 'content', 'root.img.zst', 'root.img.zst'))
      fs.writeFileSync(path.join(d, 'content', 'root.img.zst', 'on-complete.sh'), '#!/bin/sh\necho owned\n')
      return path.join(d, 'content', 'root.img.zst')
    },
    message: /root\.img\.zst\.torrent describes 2 files/,
  },
  {
    name: 'a torrent whose one file has another name',
    make: (d) => {
      fs.mkdirSync(path.join(d, 'content'))
      fs.copyFileSync(path.join(images.v2, 'root.img.zst'), path.join(d, 'content', 'other.img.zst'))
      return path.join(d, 'content', 'other.img.zst')
    },
    message: /root\.img\.zst\.torrent names its file "other\.img\.zst"/,
  },
  {
    name: "a torrent whose file is named like labhost's aria2c hook",
    make: (d) => {
      fs.mkdirSync(path.join(d, 'content'))
      const f = path.join(d, 'content', 'on-complete.sh')
      fs.writeFileSync(f, Buffer.alloc(transportSize(), '#!/bin/sh\necho owned\n'))
      return f
    },
    message: /root\.img\.zst\.torrent names its file "on-complete\.sh"/,
  },
  {
    name: 'a torrent whose file is named like the completion marker',
    make: (d) => {
      fs.mkdirSync(path.join(d, 'content'))
      fs.copyFileSync(path.join(images.v2, 'root.img.zst'), path.join(d, 'content', 'complete'))
      return path.join(d, 'content', 'complete')
    },
    message: /root\.img\.zst\.torrent names its file "complete"/,
  },
  {
    name: 'a torrent of the right name and the wrong length',
    make: (d) => {
      fs.mkdirSync(path.join(d, 'content'))
      const f = path.join(d, 'content', 'root.img.zst')
      fs.copyFileSync(path.join(images.v2, 'root.img.zst'), f)
      fs.truncateSync(f, transportSize() - 4096)
      return f
    },
    message: new RegExp(`root\\.img\\.zst\\.torrent gives its file ${'\\d+'} bytes; labhost downloads only root\\.img\\.zst of \\d+ bytes`),
  },
]

for (const c of refusals) {
  t.test(`refused before aria2c starts: ${c.name}; exit 39, disk byte-identical`, async (t) => {
    const h = await makeHost(t, images)
    const before = { disk: wholeDisk(h), ...protectedParts(h) }
    const d = tmpDir(t)
    const served = await servedWithTorrent(d, c.make(d))
    const downloads = path.join(d, 'downloads')
    const r = await updateIsolated(served, torrentArgs(h, downloads))
    t.equal(r.code, ExitCode.torrentInvalid, 'exit 39 (torrent invalid)', failDiag(r))
    t.match(r.stderr, c.message)
    t.match(r.stderr, /\n\s*hint: .*nothing was written/)
    t.ok(r.seconds < 20, `refused at once (${r.seconds.toFixed(1)} s with the server's start), not after the 30-s stall`)
    t.same(
      files(downloads).filter((f) => /\.log$|\.py$|on-complete|complete$|other\.img/.test(f)),
      [],
      "no client ever ran: no log, nothing of the torrent's written",
    )
    t.equal(wholeDisk(h), before.disk, 'the disk is byte-identical')
  })
}

t.test('refused: a .torrent over the 8 MiB cap, or no torrent at all (exit 39)', async (t) => {
  const h = await makeHost(t, images)
  const before = wholeDisk(h)
  for (const [what, bytes, message] of [
    ['over the cap', Buffer.alloc(9 << 20, 'd4:info'), /root\.img\.zst\.torrent is larger than the 8388608-byte \(8 MiB\) cap/],
    ['not bencoded', Buffer.from('<html>not found</html>\n'), /root\.img\.zst\.torrent is not a torrent file/],
  ] as const) {
    const d = tmpDir(t)
    const served = path.join(d, 'served')
    fs.cpSync(images.v2, served, { recursive: true })
    fs.writeFileSync(path.join(served, 'root.img.zst.torrent'), bytes)
    const r = await updateIsolated(served, torrentArgs(h, path.join(d, 'downloads')))
    t.equal(r.code, ExitCode.torrentInvalid, `${what}: exit 39`, failDiag(r))
    t.match(r.stderr, message)
    t.same(files(path.join(d, 'downloads')), [], `${what}: nothing in the download directory`)
  }
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
})

// each client: the default (auto: labhost's libtorrent client, python3-libtorrent being installed) and aria2c
for (const [client, extra, logName] of [
  ['the default client', [], 'libtorrent.log'],
  ['aria2c', ['--bt-client', 'aria2c'], 'aria2c.log'],
] as const) {
  t.test(`the published torrent (web seed on the loopback) is accepted by ${client}; the download directory holds only the transport file`, async (t) => {
    const h = await makeHost(t, images)
    const d = tmpDir(t)
    const served = path.join(d, 'served')
    fs.cpSync(images.v2, served, { recursive: true })
    await publishImage(served, { trackers: [tracker], webSeeds: [`http://127.0.0.1:${PORT}/root.img.zst`] })
    const downloads = path.join(d, 'downloads')
    const r = await updateIsolated(served, torrentArgs(h, downloads, [...extra]))
    t.equal(r.code, 0, 'exit 0', failDiag(r))
    const out = JSON.parse(r.stdout)
    t.ok(out.transfer.torrent?.file, 'downloaded with BitTorrent')
    t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
    const downloadDir = path.dirname(out.transfer.torrent.file)
    t.same(
      files(downloadDir).filter((f) => !f.endsWith('.aria2')),
      ['root.img.zst'],
      "the client's directory: the transport file alone",
    )
    const control = files(downloads).filter((f) => f.endsWith(`/${logName}`) || f.endsWith('/on-complete.sh') || f.endsWith('/libtorrent-client.py'))
    t.ok(
      control.some((f) => f.endsWith(`/${logName}`)),
      `${logName}: ${client} downloaded it`,
    )
    t.ok(
      control.length >= 1 && control.every((f) => !f.startsWith(`${path.basename(downloadDir)}/`)),
      `the client's files beside it, not in it (${control.join(', ')})`,
    )
    const hookDir = path.join(downloads, path.dirname(control[0]!))
    t.equal(fs.statSync(hookDir).mode & 0o777, 0o700, 'in a directory only root may enter')
  })
}

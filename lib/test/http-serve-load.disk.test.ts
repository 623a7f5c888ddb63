// labhost image serve under a storm, all on 127.0.0.1: 100 concurrent whole downloads, 200 aborted
// ones, 100 slowloris clients (headers never finished) and 200 malformed requests at once. The
// server stays up, serves a normal download byte for byte during it, closes the slow clients
// after its 10-s header timeout, and its file descriptors and memory return to their baseline.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { DEFAULT_LIMITS } from '../http-serve.ts'
import { abortedDownload, download, randomFile, rawRequest, RSS_BAND, slowClient, startServer, until } from '../../test-support/serve-fixtures.ts'

const dir = tmpDir(t, 'labhost-serve-load-')
const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex')

/** Requests no client of ours sends: each must get a 4xx or a closed connection, never a crash. */
const MALFORMED = [
  'GET /%E0%A4%A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
  'GET /%zz%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
  'GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
  'GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=999999999999-\r\nConnection: close\r\n\r\n',
  'GET /manifest.json HTTP/1.1\r\nConnection: close\r\n\r\n', // no Host
  `GET /manifest.json HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
  'FOO BAR BAZ\r\n\r\n',
  'GET\r\n\r\n',
  'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
  'GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n',
  'DELETE /manifest.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
  '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', // a TLS hello on the plain port
]

t.test('100 downloads, 200 aborted, 100 slow clients and 200 malformed requests at once: up, correct, back to baseline', async (t) => {
  const root = path.join(dir, 'served')
  fs.mkdirSync(root)
  fs.writeFileSync(path.join(root, 'manifest.json'), '{"format":"labhost-manifest/1"}\n')
  const big = randomFile(path.join(root, 'big.bin'), 64 << 20)
  const small = randomFile(path.join(root, 'small.bin'), 4 << 20)
  const [bigSha, smallSha] = [sha(big), sha(small)]
  const s = await startServer(t, root)
  const url = (f: string) => `${s.url}/${f}`

  // warm up (the heap grows to its working size once: V8 frees the buffers of finished and
  // aborted downloads at its next collection, some tens of MiB later), then the baseline
  for (let i = 0; i < 2; i++) await Promise.all(Array.from({ length: 50 }, () => abortedDownload(url('big.bin'))))
  await Promise.all(Array.from({ length: 100 }, () => download(url('small.bin'))))
  await Promise.all(MALFORMED.map((m) => rawRequest(s.port, m, 2000)))
  const alone = await download(url('big.bin'))
  t.equal(alone.sha256, bigSha, 'a download alone')
  await until(() => false, 1000)
  const before = { fds: s.fds(), rss: s.rss() }

  const started = Date.now()
  const slow = Array.from({ length: 100 }, () => slowClient(s.port, 30_000))
  t.teardown(() => slow.forEach((c) => c.destroy()))
  const whole = Promise.all(Array.from({ length: 100 }, () => download(url('small.bin'))))
  const aborted = (async () => {
    for (let wave = 0; wave < 4; wave++) await Promise.all(Array.from({ length: 50 }, () => abortedDownload(url('big.bin'))))
  })()
  // each waits up to 30 s for its answer: beside npm test's VM lane (at nice 15) the storm took 10 s
  // and 138 of 200 answers came after a 5-s wait (CI-like run, 2026-12-03); the claim is the answer, not its speed
  const malformed = Promise.all(Array.from({ length: 200 }, (_, i) => rawRequest(s.port, MALFORMED[i % MALFORMED.length]!, 30_000)))
  const during = await download(url('big.bin'))
  const [wholes, bad] = await Promise.all([whole, malformed, aborted])
  t.equal(
    during.sha256,
    bigSha,
    `a normal 64 MiB download during the storm, byte for byte: ${during.seconds.toFixed(2)} s (alone ${alone.seconds.toFixed(2)} s)`,
  )
  t.ok(during.seconds < 30, 'and it did not crawl')
  t.same(
    wholes.filter((w) => w.status !== 200 || w.sha256 !== smallSha),
    [],
    '100 concurrent downloads: each 200 and byte for byte',
  )
  const unanswered = bad
    .map((r, i) => ({ request: MALFORMED[i % MALFORMED.length]!.slice(0, 60), status: r.status, closedByServer: r.closedByServer, head: r.text.slice(0, 60) }))
    .filter((r) => !(r.status >= 400 && r.status < 500) && !(r.status === 0 && r.closedByServer))
  t.same(unanswered, [], 'every malformed request: a 4xx, or the connection closed')
  t.ok(s.alive(), 'the server process is alive')

  const closedAfter = await Promise.all(slow.map((c) => c.closed))
  const open = closedAfter.filter((x) => x === null).length
  const latest = Math.max(...closedAfter.map((x) => x ?? Infinity))
  t.equal(open, 0, `the server closed all 100 slow clients (the last after ${latest.toFixed(1)} s; header timeout ${DEFAULT_LIMITS.headersTimeoutMs / 1000} s)`)
  t.ok(latest < DEFAULT_LIMITS.headersTimeoutMs / 1000 + 5, 'within the header timeout and its check interval')

  const settled = await until(() => s.fds() <= before.fds, 10_000)
  const after = { fds: s.fds(), rss: s.rss() }
  t.comment(
    `storm ${((Date.now() - started) / 1000).toFixed(1)} s; fds ${before.fds} -> ${after.fds}; RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB`,
  )
  t.ok(settled, `file descriptors back to ${before.fds} (now ${after.fds})`)
  t.ok(after.rss < before.rss + RSS_BAND, `RSS within ${RSS_BAND >> 20} MiB of its baseline (${((after.rss - before.rss) / 2 ** 20).toFixed(1)} MiB more)`)
  const again = await download(url('big.bin'))
  t.equal(again.sha256, bigSha, 'and a download after it')
})

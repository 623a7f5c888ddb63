// labhost image serve against what the network may send it: a malformed percent-encoding or a GET
// of an empty file leaves it serving; symlinks out of its directory, dotfiles and private keys are
// never served; a path cannot forge a line in its log; aborted downloads leave no file handle and
// no memory behind. The server runs as its own process (test-support/serve-fixtures.ts) on 127.0.0.1.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { abortedDownload, download, randomFile, rawGet, rawRequest, RSS_BAND, startServer, until } from '../../test-support/serve-fixtures.ts'

const dir = tmpDir(t, 'labhost-serve-test-')
const root = path.join(dir, 'served')
const outside = path.join(dir, 'outside')
const manifest = '{"format":"labhost-manifest/1"}\n'

t.before(async () => {
  fs.mkdirSync(path.join(root, 'v2'), { recursive: true })
  fs.mkdirSync(outside)
  fs.writeFileSync(path.join(root, 'manifest.json'), manifest)
  fs.writeFileSync(path.join(root, 'empty'), '')
  fs.writeFileSync(path.join(outside, 'secret.txt'), 'not for the lab\n')
  fs.symlinkSync(path.join(outside, 'secret.txt'), path.join(root, 'escape.txt'))
  fs.symlinkSync(outside, path.join(root, 'out'))
  fs.symlinkSync('../manifest.json', path.join(root, 'v2', 'latest.json'))
  fs.writeFileSync(path.join(root, '.htpasswd'), 'admin:x\n')
  fs.mkdirSync(path.join(root, '.git'))
  fs.writeFileSync(path.join(root, '.git', 'config'), '[core]\n')
  const k = await runCli(['image', 'keygen', '--out', path.join(root, 'keys')])
  if (k.code !== 0) throw new Error(k.stderr)
  // a private key under a name that does not say so (a TLS key copied in by hand)
  fs.copyFileSync(path.join(root, 'keys', 'labhost-signing.key'), path.join(root, 'keys', 'server.pem'))
  randomFile(path.join(root, 'big.bin'), 64 << 20)
})

t.test('a malformed percent-encoding is answered 400, and the server goes on serving', async (t) => {
  const s = await startServer(t, root)
  for (const target of ['/%E0%A4%A', '/%zz', '/manifest%', '/%C0%AF']) {
    const r = await rawGet(s.port, target)
    t.equal(r.status, 400, `${target}: 400`)
  }
  t.ok(s.alive(), 'the server process is alive')
  const ok = await rawGet(s.port, '/manifest.json')
  t.equal(ok.status, 200, 'the next request is served')
  t.ok(ok.text.endsWith(manifest), 'with the file')
})

t.test('GET of an empty file: 200 with 0 bytes, and the server goes on serving', async (t) => {
  const s = await startServer(t, root)
  const r = await rawGet(s.port, '/empty')
  t.equal(r.status, 200)
  t.match(r.text, /\r\ncontent-length: 0\r\n/i)
  t.ok(r.text.endsWith('\r\n\r\n'), 'no body')
  t.equal((await rawRequest(s.port, 'HEAD /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).status, 200, 'HEAD 200')
  t.equal((await rawGet(s.port, '/empty', 'Range: bytes=0-\r\n')).status, 416, 'any range of it: 416')
  t.ok(s.alive(), 'the server process is alive')
  t.equal((await rawGet(s.port, '/manifest.json')).status, 200, 'the next request is served')
})

t.test('symlinks that lead out of the directory are refused; one inside it is followed', async (t) => {
  const s = await startServer(t, root)
  for (const target of ['/escape.txt', '/out/secret.txt', '/out/', '/v2/../../outside/secret.txt', '/%2e%2e/outside/secret.txt', '/..%2foutside/secret.txt']) {
    const r = await rawGet(s.port, target)
    t.ok(r.status === 403 || r.status === 404, `${target}: ${r.status}`)
    t.notMatch(r.text, /not for the lab/, `${target}: the file outside is not sent`)
  }
  const inside = await rawGet(s.port, '/v2/latest.json')
  t.equal(inside.status, 200, 'a symlink to a file inside the directory is served')
  t.ok(inside.text.endsWith(manifest))
})

t.test('dotfiles and private keys are refused; the public key is served', async (t) => {
  const s = await startServer(t, root)
  for (const target of ['/.htpasswd', '/.git/config', '/%2egit/config', '/keys/labhost-signing.key', '/keys/server.pem']) {
    const r = await rawGet(s.port, target)
    t.ok(r.status === 403 || r.status === 404, `${target}: ${r.status}`)
    t.notMatch(r.text, /PRIVATE KEY|admin:x|\[core\]/, `${target}: nothing of it is sent`)
  }
  const pub = await rawGet(s.port, '/keys/labhost-signing.pub')
  t.equal(pub.status, 200, 'the public key is served')
  t.match(pub.text, /BEGIN PUBLIC KEY/)
})

t.test('a CR/LF in the path cannot forge a line in the log', async (t) => {
  const s = await startServer(t, root)
  await rawGet(s.port, '/x%0d%0a200%20/forged.img%20bytes=0-%201000000%20bytes%0a')
  await rawGet(s.port, '/x%1b[31mred%e2%80%a8')
  t.ok(await until(() => s.lines().filter((l) => /^\d{3} \//.test(l)).length >= 2, 5000), 'both requests logged')
  const lines = s.lines()
  t.notOk(
    lines.some((l) => /^200 \/forged/.test(l)),
    'no line starts with the forged entry',
    { lines },
  )
  t.ok(
    lines.some((l) => l.includes('/x\\r\\n200 /forged.img')),
    'the request is logged on one line, its control characters escaped',
    { lines },
  )
  t.notOk(
    lines.some((l) => /[\x00-\x08\x0b-\x1f\x7f\u2028]/.test(l)),
    'no control character reaches the log',
  )
})

t.test('200 aborted downloads leave no file handle and no memory behind', async (t) => {
  const s = await startServer(t, root)
  const url = `${s.url}/big.bin`
  // warm up: the first requests load code and grow the heap to its working size (RSS_BAND says
  // why memory is checked within a band and descriptors exactly)
  for (let i = 0; i < 2; i++) await Promise.all(Array.from({ length: 50 }, () => abortedDownload(url)))
  await download(`${s.url}/manifest.json`)
  await until(() => false, 500)
  const before = { fds: s.fds(), rss: s.rss() }
  for (let round = 0; round < 4; round++) await Promise.all(Array.from({ length: 50 }, () => abortedDownload(url)))
  const settled = await until(() => s.fds() <= before.fds, 5000)
  const after = { fds: s.fds(), rss: s.rss() }
  t.comment(`fds ${before.fds} -> ${after.fds}, RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB`)
  t.ok(settled, `file descriptors back to ${before.fds} (now ${after.fds})`)
  t.ok(after.rss < before.rss + RSS_BAND, `RSS within ${RSS_BAND >> 20} MiB of its baseline (${((after.rss - before.rss) / 2 ** 20).toFixed(1)} MiB more)`)
  t.ok(s.alive(), 'the server process is alive')
  const whole = await download(url)
  t.equal(
    whole.sha256,
    crypto
      .createHash('sha256')
      .update(fs.readFileSync(path.join(root, 'big.bin')))
      .digest('hex'),
    'a whole download still succeeds, byte for byte',
  )
})

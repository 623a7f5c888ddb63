// The image server's PUT side (`labhost image serve --accept-reports`): a PC installing over the
// network stores its report, log and marker in one directory and nowhere else. Names outside
// *.json, *.log, *.boot-local, paths, dotfiles and `..` are refused; sizes and counts are bounded;
// a file is whole or absent (a cut body leaves nothing, not even a temporary file); a symlink at
// the name is replaced, its target untouched. Without the option every PUT is 405, as before.
// serveDirectory runs in this process on 127.0.0.1.
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import t, { type Test } from 'tap'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { rawRequest, startServer, until } from '../../test-support/serve-fixtures.ts'
import { serveDirectory, type ServeOptions } from '../http-serve.ts'
import { openUploadDir } from '../upload-receiver.ts'
import { commandSchema } from '../../cli/command.ts'
import { loadCommand } from '../../cli/main.ts'

const dir = tmpDir(t, 'labhost-upload-test-')
let n = 0

/** A fresh served directory with an empty `reports` in it, and a file outside it. */
function layout(): { root: string; reports: string; outside: string } {
  const base = path.join(dir, String(n++))
  const root = path.join(base, 'served')
  const outside = path.join(base, 'outside')
  fs.mkdirSync(path.join(root, 'reports'), { recursive: true })
  fs.mkdirSync(outside)
  fs.writeFileSync(path.join(root, 'manifest.json'), '{"format":"labhost-manifest/1"}\n')
  fs.writeFileSync(path.join(outside, 'secret.json'), 'not for the lab\n')
  return { root, reports: path.join(root, 'reports'), outside }
}

async function serve(t: Test, root: string, o: ServeOptions = { uploads: { dir: 'reports' } }) {
  const s = await serveDirectory(root, o)
  t.teardown(() => s.close())
  return s
}

interface Reply {
  status: number
  headers: http.IncomingHttpHeaders
  text: string
}

/** One request on its own connection; a body is sent with its Content-Length unless `chunked`. */
function request(url: string, method: string, body?: string | Buffer, o: { chunked?: boolean } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = body === undefined || o.chunked ? {} : { 'content-length': Buffer.byteLength(body) }
    const req = http.request(url, { method, agent: false, headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (d: Buffer) => chunks.push(d))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString() }))
      res.on('error', reject)
    })
    req.on('error', reject)
    if (o.chunked && body !== undefined) req.write(body)
    req.end(o.chunked ? undefined : body)
  })
}

const put = (url: string, body: string | Buffer, o?: { chunked?: boolean }) => request(url, 'PUT', body, o)
/** Every name in `d` and below it, sorted. */
const tree = (d: string) => (fs.readdirSync(d, { recursive: true }) as string[]).sort()
const temps = (d: string) => fs.readdirSync(d).filter((f) => f.startsWith('.upload-'))

t.test('a PUT stores the file whole: 201, then 204 when replaced; GET reads it back', async (t) => {
  const { root, reports } = layout()
  const s = await serve(t, root)
  t.equal(s.uploads?.url, `${s.url}/reports/`, 'the upload URL')
  const report = JSON.stringify({ mac: '52:54:00:12:34:56', result: 'installed' }) + '\n'
  const first = await put(`${s.url}/reports/mac-525400123456-install.json`, report)
  t.equal(first.status, 201, 'new: 201')
  t.equal(fs.readFileSync(path.join(reports, 'mac-525400123456-install.json'), 'utf8'), report, 'stored byte for byte')
  const log = Buffer.from(Array.from({ length: 3000 }, (_, i) => `line ${i}\n`).join(''))
  t.equal((await put(`${s.url}/reports/mac-525400123456-install.log`, log)).status, 201)
  t.same(fs.readFileSync(path.join(reports, 'mac-525400123456-install.log')), log)
  const again = await put(`${s.url}/reports/mac-525400123456-install.json`, '{"disks":[]}\n')
  t.equal(again.status, 204, 'replaced: 204')
  t.equal(again.text, '', '204 has no body')
  t.equal(fs.readFileSync(path.join(reports, 'mac-525400123456-install.json'), 'utf8'), '{"disks":[]}\n', 'the new content')
  t.equal((await put(`${s.url}/reports/525400123456.boot-local`, '')).status, 201, 'an empty marker is a file too')
  t.equal(fs.statSync(path.join(reports, '525400123456.boot-local')).size, 0)
  t.same(temps(reports), [], 'no temporary file left')
  t.same(tree(reports), ['525400123456.boot-local', 'mac-525400123456-install.json', 'mac-525400123456-install.log'])
  const got = await request(`${s.url}/reports/mac-525400123456-install.json`, 'GET')
  t.equal(got.status, 200, 'GET of an uploaded file')
  t.equal(got.text, '{"disks":[]}\n')
  t.equal((await request(`${s.url}/reports/525400123456.boot-local`, 'GET')).status, 200, 'the marker reads back (boot.ipxe fetches it)')
  t.equal(s.totals.uploaded, 4, 'four files stored')
  t.match(
    s.requests.filter((q) => q.method === 'PUT').map((q) => [q.status, q.bytes]),
    [
      [201, Buffer.byteLength(report)],
      [201, log.length],
      [204, 13],
      [201, 0],
    ],
    'each PUT recorded with its method, status and bytes',
  )
})

t.test('a name that is not a plain *.json, *.log or *.boot-local is refused and nothing is written', async (t) => {
  const { root, reports } = layout()
  fs.mkdirSync(path.join(reports, 'a'))
  const s = await serve(t, root)
  const before = { root: tree(root), outside: tree(path.dirname(root)) }
  const targets = [
    '/reports/../x.json',
    '/reports/%2e%2e/x.json',
    '/reports/..',
    '/reports/%2e%2e',
    '/reports/.hidden.json',
    '/reports/a/b.json',
    '/reports/a%2fb.json',
    '/reports/x.txt',
    '/reports/x.json.txt',
    '/reports/x.key',
    '/reports/x.json%00',
    '/reports/x%0a.json',
    '/reports/-x.json',
    '/reports/.json',
    '/reports/',
    `/reports/${'a'.repeat(196)}.json`,
    '/reports//x.json',
  ]
  for (const target of targets) {
    const r = await put(`${s.url}${target}`, '{"evil":true}\n')
    t.ok([403, 405].includes(r.status), `${target}: ${r.status}`)
  }
  t.equal((await put(`${s.url}/reports/${'a'.repeat(123)}.json`, '{}\n')).status, 201, 'a 128-character stem is the longest taken')
  fs.rmSync(path.join(reports, `${'a'.repeat(123)}.json`))
  t.same({ root: tree(root), outside: tree(path.dirname(root)) }, before, 'nothing written anywhere')
  t.equal(s.totals.uploaded, 1)
})

t.test('no Content-Length (a chunked body): 411', async (t) => {
  const { root, reports } = layout()
  const s = await serve(t, root)
  const r = await put(`${s.url}/reports/x.json`, '{"chunked":true}\n', { chunked: true })
  t.equal(r.status, 411)
  t.same(tree(reports), [], 'nothing stored')
})

t.test('bytes after the Content-Length never reach the file', async (t) => {
  const { root, reports } = layout()
  const s = await serve(t, root)
  // HTTP/1.1 reads them as the next request: a malformed one, answered 400, the connection closed
  // (here in the same packet as the body, before the server read it: nothing is stored)
  const r = await rawRequest(s.port, 'PUT /reports/x.json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\n{}\nEXTRA BYTES\r\n\r\n')
  t.match(r.text, /HTTP\/1\.1 400 /, '400')
  t.ok(r.closedByServer, 'the connection closed')
  await until(() => false, 300)
  const stored = fs.existsSync(path.join(reports, 'x.json')) ? fs.readFileSync(path.join(reports, 'x.json'), 'utf8') : null
  t.ok(stored === null || stored === '{}\n', `the file is absent or holds the declared bytes only (${JSON.stringify(stored)})`)
  t.same(temps(reports), [], 'no temporary file left')
})

t.test('a body over maxBytes: 413 before a byte of it is read; exactly maxBytes is taken', async (t) => {
  const { root, reports } = layout()
  const s = await serve(t, root)
  // the head only: the server answers without waiting for the body, and closes the connection
  const r = await rawRequest(s.port, `PUT /reports/big.log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${(4 << 20) + 1}\r\n\r\n`)
  t.equal(r.status, 413, '4 MiB + 1: 413')
  t.ok(r.closedByServer, 'the connection closed (its body was never read)')
  t.equal((await put(`${s.url}/reports/big.log`, Buffer.alloc(4 << 20, 'x'))).status, 201, '4 MiB: stored')
  t.equal(fs.statSync(path.join(reports, 'big.log')).size, 4 << 20)
  const small = await serve(t, root, { uploads: { dir: 'reports', maxBytes: 100 } })
  t.equal((await put(`${small.url}/reports/small.json`, Buffer.alloc(101, 'x'))).status, 413, 'maxBytes 100: 101 bytes refused')
  t.same(tree(reports), ['big.log'])
})

t.test('over maxFiles or maxTotalBytes: 507; a replacement counts once', async (t) => {
  const { root, reports } = layout()
  const files = await serve(t, root, { uploads: { dir: 'reports', maxFiles: 2 } })
  t.equal((await put(`${files.url}/reports/a.json`, '{}\n')).status, 201)
  t.equal((await put(`${files.url}/reports/b.json`, '{}\n')).status, 201)
  t.equal((await put(`${files.url}/reports/c.json`, '{}\n')).status, 507, 'a third file: 507')
  t.equal((await put(`${files.url}/reports/a.json`, '{"again":1}\n')).status, 204, 'replacing one of the two: taken')
  t.same(tree(reports), ['a.json', 'b.json'])

  const other = layout()
  const bytes = await serve(t, other.root, { uploads: { dir: 'reports', maxTotalBytes: 100 } })
  t.equal((await put(`${bytes.url}/reports/a.log`, Buffer.alloc(60, 'a'))).status, 201)
  t.equal((await put(`${bytes.url}/reports/b.log`, Buffer.alloc(50, 'b'))).status, 507, '60 + 50 > 100: 507')
  t.equal((await put(`${bytes.url}/reports/a.log`, Buffer.alloc(90, 'a'))).status, 204, 'a.log 60 -> 90: the old bytes do not count')
  t.equal((await put(`${bytes.url}/reports/b.log`, Buffer.alloc(10, 'b'))).status, 201, '90 + 10: taken')
  t.same(tree(other.reports), ['a.log', 'b.log'])
  t.equal(fs.statSync(path.join(other.reports, 'a.log')).size, 90)

  // uploads under way count too: 20 PCs at once into 5 places
  const busy = layout()
  const many = await serve(t, busy.root, { uploads: { dir: 'reports', maxFiles: 5 } })
  const statuses = await Promise.all(Array.from({ length: 20 }, (_, i) => put(`${many.url}/reports/pc${i}.json`, '{}\n').then((r) => r.status)))
  t.equal(statuses.filter((c) => c === 201).length, 5, 'five stored')
  t.equal(statuses.filter((c) => c === 507).length, 15, 'fifteen refused')
  t.equal(fs.readdirSync(busy.reports).length, 5)
})

t.test('a body cut short (the PC gone mid-upload): nothing stored, no temporary file left', async (t) => {
  const { root, reports } = layout()
  const s = await serve(t, root)
  const req = http.request(`${s.url}/reports/cut.json`, { method: 'PUT', agent: false, headers: { 'content-length': 1000 } })
  const closed = new Promise((resolve) => req.on('close', resolve))
  req.on('error', () => {})
  req.write('{"half":')
  // the temporary file exists once the server is reading the body: then the PC goes
  t.ok(await until(() => temps(reports).length === 1, 5000), 'the server is writing the body to a temporary file')
  req.destroy()
  await closed
  t.ok(await until(() => temps(reports).length === 0, 5000), 'the temporary file is removed')
  t.same(tree(reports), [], 'nothing stored')
  // the same with a raw socket that announces more than it sends and half-closes
  const r = await rawRequest(s.port, 'PUT /reports/cut.json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"half":', 300)
  t.equal(r.status, 0, 'no answer while the body is incomplete')
  t.ok(await until(() => temps(reports).length === 0, 5000), 'no temporary file once the client is gone')
  t.same(tree(reports), [])
  t.equal(s.totals.uploaded, 0)
  t.equal((await put(`${s.url}/reports/cut.json`, '{"whole":true}\n')).status, 201, 'the next PUT of that name is stored')
})

t.test('a symlink at the name is replaced by the file; its target is never written', async (t) => {
  const { root, reports, outside } = layout()
  fs.symlinkSync(path.join(outside, 'secret.json'), path.join(reports, 'victim.json'))
  fs.symlinkSync(path.join(outside, 'new.json'), path.join(reports, 'dangling.json'))
  const s = await serve(t, root)
  t.equal((await put(`${s.url}/reports/victim.json`, '{"pc":1}\n')).status, 204, 'a symlink there: replaced (204)')
  t.ok(fs.lstatSync(path.join(reports, 'victim.json')).isFile(), 'a regular file now')
  t.equal(fs.readFileSync(path.join(reports, 'victim.json'), 'utf8'), '{"pc":1}\n')
  t.equal(fs.readFileSync(path.join(outside, 'secret.json'), 'utf8'), 'not for the lab\n', 'the file outside is unchanged')
  t.equal((await put(`${s.url}/reports/dangling.json`, '{"pc":2}\n')).status, 204, 'a dangling symlink: replaced')
  t.ok(fs.lstatSync(path.join(reports, 'dangling.json')).isFile())
  t.notOk(fs.existsSync(path.join(outside, 'new.json')), 'no file made where it pointed')
  t.same(tree(outside), ['secret.json'])
  fs.mkdirSync(path.join(reports, 'dir.json'))
  t.equal((await put(`${s.url}/reports/dir.json`, '{}\n')).status, 409, 'a directory of that name: 409')
  t.same(temps(reports), [])
})

t.test('PUT outside the upload directory, other methods, or no uploads option: 405', async (t) => {
  const { root, reports } = layout()
  fs.mkdirSync(path.join(root, 'other'))
  const s = await serve(t, root)
  for (const target of ['/x.json', '/manifest.json', '/other/x.json', '/reports.json', '/reportsx/x.json']) {
    const r = await put(`${s.url}${target}`, '{}\n')
    t.equal(r.status, 405, `PUT ${target}: 405`)
    t.equal(r.headers.allow, 'GET, HEAD')
  }
  t.equal(fs.readFileSync(path.join(root, 'manifest.json'), 'utf8'), '{"format":"labhost-manifest/1"}\n', 'manifest.json untouched')
  t.equal((await put(`${s.url}/reports/kept.json`, '{}\n')).status, 201)
  for (const method of ['DELETE', 'POST', 'PATCH']) {
    const r = await request(`${s.url}/reports/kept.json`, method, method === 'DELETE' ? undefined : '{}\n')
    t.equal(r.status, 405, `${method} in the upload directory: 405`)
    t.equal(r.headers.allow, 'GET, HEAD, PUT')
  }
  t.same(tree(reports), ['kept.json'], 'still there, unchanged')
  t.equal(fs.readFileSync(path.join(reports, 'kept.json'), 'utf8'), '{}\n')

  const plain = await serve(t, root, {})
  t.equal(plain.uploads, null)
  const r = await put(`${plain.url}/reports/new.json`, '{}\n')
  t.equal(r.status, 405, 'no uploads option: PUT into reports is 405')
  t.equal(r.headers.allow, 'GET, HEAD')
  t.same(tree(reports), ['kept.json'])
})

t.test('the upload directory is checked once, at start', async (t) => {
  const { root, reports, outside } = layout()
  fs.mkdirSync(path.join(root, 'nested', 'deeper'), { recursive: true })
  fs.symlinkSync(outside, path.join(root, 'linked'))
  fs.symlinkSync('reports', path.join(root, 'alias'))
  fs.mkdirSync(path.join(root, '.hidden'))
  fs.writeFileSync(path.join(root, 'file'), '')
  for (const bad of ['.', '', '..', '../outside', outside, 'missing', 'linked', 'alias', '.hidden', 'file'])
    await t.rejects(serveDirectory(root, { uploads: { dir: bad } }), { code: 'usage' }, `${JSON.stringify(bad)}: refused`)
  const nested = await serve(t, root, { uploads: { dir: 'nested/deeper' } })
  t.equal(nested.uploads?.url, `${nested.url}/nested/deeper/`)
  t.equal((await put(`${nested.url}/nested/deeper/x.json`, '{}\n')).status, 201, 'a nested directory')
  const absolute = await serve(t, root, { uploads: { dir: reports } })
  t.equal((await put(`${absolute.url}/reports/x.json`, '{}\n')).status, 201, 'an absolute path inside the root')
  // a temporary file a crash left behind is removed at start; other dot names are not ours
  fs.writeFileSync(path.join(reports, '.upload-0123456789abcdef'), 'half')
  fs.writeFileSync(path.join(reports, '.keep'), '')
  openUploadDir(root, fs.realpathSync(root), 'reports')
  t.same(tree(reports), ['.keep', 'x.json'])
})

t.test('labhost image serve --accept-reports', async (t) => {
  const serve = commandSchema(await loadCommand('image serve'))
  t.match(serve.parse({ 'accept-reports': 'netboot/reports' }), { 'accept-reports': 'netboot/reports', port: 8080 }, 'the option is parsed')
  t.notOk(serve.safeParse({ 'accept-reports': '' }).success, 'an empty value is refused')

  const { root, reports } = layout()
  const missing = await runCli(['image', 'serve', root, '--port', '0', '--accept-reports', 'nowhere'])
  t.equal(missing.code, 2, 'a directory that does not exist: usage error', failDiag(missing))
  t.match(missing.stderr, /--accept-reports nowhere: /)

  const s = await startServer(t, root, ['--accept-reports', 'reports'])
  t.ok(
    s.lines().some((l) => l.includes(`accepting reports (PUT *.json, *.log, *.boot-local) into ${fs.realpathSync(reports)}`)),
    'the upload directory is logged at start',
  )
  t.equal((await put(`${s.url}/reports/pc.json`, '{}\n')).status, 201)
  t.equal((await put(`${s.url}/pc.json`, '{}\n')).status, 405)
  t.equal(fs.readFileSync(path.join(reports, 'pc.json'), 'utf8'), '{}\n')
  t.ok(await until(() => s.lines().some((l) => l.startsWith('201 PUT /reports/pc.json 3 bytes')), 5000), 'the PUT is logged')
})

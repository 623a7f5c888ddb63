// labhost update --full from an http:// URL served on the loopback: the image is written while it
// downloads; server errors are retried, a dropped connection resumes with Range from where it
// stopped, and a download that cannot complete leaves slot A, the GPT and the state untouched.
// https:// from a server a lab CA (made with openssl here) signed: trusted with --ca; an
// untrusted certificate or a wrong host name is refused at once, before any write.
import fs from 'node:fs'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, makeHost, protectedParts, slotBHolds, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'
import { activeSlot, makeLabCa, serve, transportRequests } from './http-fixtures.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-http-update-')
let images: Images
let lab: Awaited<ReturnType<typeof makeLabCa>>

t.before(async () => {
  images = await buildImages(dir)
  lab = await makeLabCa(`${dir}/ca`)
})

t.test('update from http://: one request, written while downloading, B on trial', async (t) => {
  const h = await makeHost(t, images)
  const server = await serve(t, images.v2)
  const r = await runCli(['update', `${server.url}/`, '--full', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const out = JSON.parse(r.stdout)
  t.equal(out.source, `${server.url}/root.img.zst`)
  t.same(out.transfer, { requests: 1, resumes: 0, bytes: fs.statSync(`${images.v2}/root.img.zst`).size, failures: [] })
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
  t.equal(activeSlot(h.disk), 'B')
  t.same(
    server.requests.map((q) => [q.path, q.status]),
    [
      ['/manifest.json', 200],
      ['/root.img.zst', 200],
    ],
  )
})

t.test('server answers 500 three times, then recovers: the update completes', async (t) => {
  const h = await makeHost(t, images)
  let transportErrors = 0
  const server = await serve(t, images.v2, (p) => (p.endsWith('.zst') && transportErrors++ < 3 ? { status: 500 } : undefined))
  const r = await runCli(['update', server.url, '--full', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  t.match(r.stderr, /HTTP 500 at byte 0 .*resuming in 1\.0 s/)
  t.same(
    transportRequests(server).map((q) => q.status),
    [500, 500, 500, 200],
  )
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
  t.equal(activeSlot(h.disk), 'B')
})

t.test('connection dropped mid-way: resumes with Range from the byte it stopped at, does not restart', async (t) => {
  const h = await makeHost(t, images)
  const size = fs.statSync(`${images.v2}/root.img.zst`).size
  const cut = Math.floor(size * 0.4)
  const server = await serve(t, images.v2, (p, i) => (p.endsWith('.zst') && i === 1 ? { dropAfter: cut } : undefined))
  const r = await runCli(['update', `${server.url}/manifest.json`, '--full', '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  const reqs = transportRequests(server)
  t.equal(reqs.length, 2, 'two requests for the transport file')
  t.equal(reqs[0]!.bytes, cut, 'the first one was cut')
  // it resumes from the first byte it had not consumed when the error came: at most what was
  // still buffered in the client (< 1 MiB) is asked for again
  const [, from = NaN, to = NaN] = (/^bytes=(\d+)-(\d+)$/.exec(reqs[1]!.range ?? '') ?? []).map(Number)
  t.equal(to, size - 1, 'up to the last byte')
  t.ok(from > cut - MiB && from <= cut, `the second asks for the rest only: from byte ${from} (cut at ${cut})`)
  t.equal(reqs[1]!.status, 206)
  t.equal(reqs[1]!.bytes, size - from, 'and gets exactly that')
  t.ok(reqs[0]!.bytes + reqs[1]!.bytes < size + MiB, 'nothing like a restart')
  // what the client consumed: the bytes before the resume point, then the rest, once each
  t.match(JSON.parse(r.stdout).transfer, { requests: 2, resumes: 1, bytes: size })
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
})

t.test('a server that ignores Range: the resumed response is read from the start, known bytes skipped', async (t) => {
  const h = await makeHost(t, images)
  const size = fs.statSync(`${images.v2}/root.img.zst`).size
  const server = await serve(t, images.v2, (p, i) => (p.endsWith('.zst') ? (i === 1 ? { dropAfter: Math.floor(size / 3) } : { ignoreRange: true }) : undefined))
  const r = await runCli(['update', server.url, '--full', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  t.same(
    transportRequests(server).map((q) => q.status),
    [200, 200],
  )
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
})

const failures: { name: string; setup: (t: Test) => Promise<{ url: string; args?: string[] }>; code: number; message: RegExp; untouchedDisk: boolean }[] = [
  {
    name: 'truncated file on the server',
    setup: async (t) => {
      const d = tmpDir(t)
      fs.cpSync(images.v2, d, { recursive: true })
      fs.truncateSync(`${d}/root.img.zst`, Math.floor(fs.statSync(`${d}/root.img.zst`).size / 2))
      return { url: (await serve(t, d)).url }
    },
    code: ExitCode.downloadFailed,
    message: /shorter than its manifest says/,
    untouchedDisk: false,
  },
  {
    name: 'bad signature',
    setup: async (t) => {
      const d = tmpDir(t)
      fs.cpSync(images.v2, d, { recursive: true })
      const m = JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8'))
      m.image.size -= 4096
      fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(m))
      return { url: (await serve(t, d)).url }
    },
    code: ExitCode.signatureInvalid,
    message: /signature does not match/,
    untouchedDisk: true,
  },
  {
    name: 'no image at the URL (404)',
    setup: async (t) => ({ url: `${(await serve(t, dir)).url}/nothing/` }),
    code: ExitCode.notFound,
    message: /HTTP 404/,
    untouchedDisk: true,
  },
  {
    name: 'server gone for good',
    setup: async (t) => {
      const s = await serve(t, images.v2)
      await s.close()
      return { url: s.url, args: ['--retries', '2'] }
    },
    code: ExitCode.downloadFailed,
    message: /giving up after 2 failed attempts in a row \(last: ECONNREFUSED/,
    untouchedDisk: true,
  },
  {
    name: 'connection always dropped at the same byte',
    setup: async (t) => {
      const size = fs.statSync(`${images.v2}/root.img.zst`).size
      return {
        url: (await serve(t, images.v2, (p, i) => (p.endsWith('.zst') ? (i === 1 ? { dropAfter: Math.floor(size / 2) } : { dropAfter: 0 }) : undefined))).url,
        args: ['--retries', '3'],
      }
    },
    code: ExitCode.downloadFailed,
    message: /giving up after 3 failed attempts/,
    untouchedDisk: false,
  },
]

t.test('https:// from a server a lab CA signed, trusted with --ca: the update (a delta, by Range) completes', async (t) => {
  const h = await makeHost(t, images)
  const server = await serve(t, images.v2, undefined, lab.server)
  t.match(server.url, /^https:/)
  const r = await runCli(['update', `${server.url}/`, '--ca', lab.ca, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  t.equal(JSON.parse(r.stdout).delta.used, true, 'a delta')
  t.ok(transportRequests(server).length > 0 && transportRequests(server).every((q) => q.status === 206), 'its frames fetched by Range over TLS')
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
  t.equal(activeSlot(h.disk), 'B')
})

const tlsFailures: typeof failures = [
  {
    name: 'https server whose certificate no trusted CA signed (no --ca)',
    setup: async (t) => ({ url: (await serve(t, images.v2, undefined, lab.server)).url }),
    code: ExitCode.tlsUntrusted,
    message:
      /certificate is not trusted \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)[^\n]*\n.*hint: give the CA certificate .* with --ca PEM/,
    untouchedDisk: true,
  },
  {
    name: 'https certificate for another host name (--ca given)',
    setup: async (t) => ({ url: (await serve(t, images.v2, undefined, lab.otherName)).url, args: ['--ca', lab.ca] }),
    code: ExitCode.tlsUntrusted,
    message: /certificate is not trusted \(ERR_TLS_CERT_ALTNAME_INVALID[^\n]*\n.*hint: use the host name the certificate names/,
    untouchedDisk: true,
  },
  {
    name: '--ca file that holds no certificate',
    setup: async (t) => ({ url: (await serve(t, images.v2, undefined, lab.server)).url, args: ['--ca', lab.server.key] }),
    code: ExitCode.usage,
    message: /holds no PEM certificate/,
    untouchedDisk: true,
  },
]
failures.push(...tlsFailures)

for (const c of failures) {
  t.test(`refused: ${c.name}; slot A, GPT and state untouched`, async (t) => {
    const h = await makeHost(t, images)
    const before = { disk: wholeDisk(h), ...protectedParts(h) }
    const { url, args = [] } = await c.setup(t)
    const r = await runCli(['update', url, '--full', ...args, ...h.args])
    t.equal(r.code, c.code, `exit ${c.code}`, failDiag(r))
    t.match(r.stderr, c.message)
    t.match(r.stderr, /hint: /)
    t.same(protectedParts(h), { slotA: before.slotA, gpt: before.gpt, state: before.state }, 'slot A, both GPT regions and the state: byte-identical')
    if (c.untouchedDisk) t.equal(wholeDisk(h), before.disk, 'refused before the first write: the whole disk is byte-identical')
    if (c.code === ExitCode.tlsUntrusted) t.notMatch(r.stderr, /retrying/, 'an untrusted certificate is not retried')
  })
}

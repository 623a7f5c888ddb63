// `--timeout S` against a server that stops sending in the middle of a response and keeps the
// connection open (a hung server, a half-dead link): the update gives up about S seconds after
// the last byte (per attempt, with the backoff between attempts), exits 36 downloadFailed with
// one error line and its hint, and nothing but the inactive slot B may have been written: slot A,
// persistent, log, backing, the MBR and both GPT regions are byte-identical, slot A still boots
// and no trial is armed. The server is a raw TCP one (lib/http-serve.ts cannot stall): it answers
// whole files, but for the chosen path sends the headers and only part of the body, then nothing.
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { errorLines, failDiag, labhostArgv, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, makeHost, slotBHolds, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'
import { activeSlot } from './http-fixtures.ts'
import { markDataPartitions, regionHashes } from './partition-guard.ts'

const dir = tmpDir(t, 'labhost-stalled-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

interface Stalling {
  url: string
  /** When each stalled response sent its last byte (ms since the epoch). */
  stalls: number[]
  requests: { path: string; range: string | null }[]
}

/**
 * Serves `root`. A request for `stallPath` gets its headers and `sendOf(bodyLength, ranged)` bytes
 * of the body, then silence on an open connection (a Range request: 206 for the range asked);
 * all of it when that is the whole body.
 */
async function stallingServer(t: Test, root: string, stallPath: string, sendOf: (bodyLength: number, ranged: boolean) => number): Promise<Stalling> {
  const sockets = new Set<net.Socket>()
  const s: Stalling = { url: '', stalls: [], requests: [] }
  const server = net.createServer((sock) => {
    sockets.add(sock)
    sock.on('close', () => sockets.delete(sock))
    sock.on('error', () => {})
    let head = ''
    sock.on('data', (d) => {
      head += d.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      const [requestLine = '', ...lines] = head.split('\r\n')
      head = ''
      const urlPath = decodeURIComponent(requestLine.split(' ')[1] ?? '/')
      const range = lines.find((l) => /^range:/i.test(l))?.replace(/^range:\s*/i, '') ?? null
      s.requests.push({ path: urlPath, range })
      const file = path.join(root, path.basename(urlPath))
      if (!fs.existsSync(file)) {
        sock.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
        return
      }
      const whole = fs.readFileSync(file)
      const m = range ? /^bytes=(\d+)-(\d*)$/.exec(range) : null
      const from = m ? Number(m[1]) : 0
      const to = m && m[2] ? Number(m[2]) : whole.length - 1
      const body = whole.subarray(from, to + 1)
      const status = m ? `206 Partial Content\r\nContent-Range: bytes ${from}-${to}/${whole.length}` : '200 OK'
      sock.write(`HTTP/1.1 ${status}\r\nContent-Length: ${body.length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n`)
      const n = path.basename(urlPath) === stallPath ? sendOf(body.length, m !== null) : body.length
      if (n >= body.length) {
        sock.end(body)
        return
      }
      sock.write(body.subarray(0, n), () => s.stalls.push(Date.now()))
      // and then nothing: the connection stays open until the client gives up
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const sock of sockets) sock.destroy()
        server.close(() => resolve())
      }),
  )
  s.url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/`
  return s
}

const cases: {
  name: string
  stallPath: string
  args: string[]
  timeout: number
  retries: number
  sendOf: (n: number, ranged: boolean) => number
  anyWrite: boolean
}[] = [
  // a full download: 40 % of the transport file arrives (and is written into slot B), then silence
  {
    name: 'the transport file, full download',
    stallPath: 'root.img.zst',
    args: ['--full'],
    timeout: 3,
    retries: 1,
    sendOf: (n) => Math.floor(n * 0.4),
    anyWrite: true,
  },
  // the resumed request (a Range from where it stopped) stalls at once: two silent attempts, the backoff (1 s) between them
  {
    name: 'the transport file, full download, resumed request silent too',
    stallPath: 'root.img.zst',
    args: ['--full'],
    timeout: 2,
    retries: 2,
    sendOf: (n, ranged) => (ranged ? 0 : Math.floor(n * 0.4)),
    anyWrite: true,
  },
  // a delta: its Range request for a missing chunk stalls halfway (its run from byte 0 goes
  // without a Range header and is answered whole: the client reads what it needs of it)
  {
    name: "a delta's Range request",
    stallPath: 'root.img.zst',
    args: [],
    timeout: 3,
    retries: 1,
    sendOf: (n, ranged) => (ranged ? Math.floor(n / 2) : n),
    anyWrite: true,
  },
  // before any write
  { name: 'the manifest', stallPath: 'manifest.json', args: [], timeout: 3, retries: 1, sendOf: (n) => Math.floor(n / 2), anyWrite: false },
]

for (const c of cases) {
  t.test(
    `a server that stops sending ${c.name}: --timeout ${c.timeout} --retries ${c.retries} gives up in time, exit 36, nothing outside slot B written`,
    async (t) => {
      const h = await makeHost(t, images)
      markDataPartitions(h)
      const before = { disk: wholeDisk(h), regions: regionHashes(h, ['rootB']) }
      const server = await stallingServer(t, images.v2, c.stallPath, c.sendOf)
      const child = execa(...labhostArgv('update', server.url, ...c.args, '--timeout', String(c.timeout), '--retries', String(c.retries), ...h.args), {
        reject: false,
        timeout: 120_000,
      })
      const r = await child
      const ended = Date.now()
      t.equal(r.exitCode, ExitCode.downloadFailed, 'exit 36 downloadFailed', { stderr: r.stderr, timedOut: r.timedOut })
      t.equal(server.stalls.length, c.retries, `${c.retries} stalled response(s)`, { requests: server.requests })
      // from the first stall to the end: one silence of --timeout per attempt, 1 s backoff between
      // attempts, and the process's own end (closing, unlinking; well under 3 s)
      const expected = c.retries * c.timeout + (c.retries - 1) * 1
      const took = (ended - server.stalls[0]!) / 1000
      t.ok(took >= expected - 0.5 && took <= expected + 3, `gave up ${took.toFixed(1)} s after the server went silent (expected about ${expected} s)`)
      const errors = errorLines(r)
      t.equal(errors.length, 1, 'one error line', failDiag(r))
      t.match(errors[0], /giving up after \d+ failed attempts? in a row \(last: .*(timeout|Timeout|ETIMEDOUT)/i, 'it names the timeout')
      t.match(r.stderr, /\n {2}hint: .*nothing was (written|switched)/, 'a hint saying nothing was written or switched')
      t.notMatch(r.stderr, /^\s+at /m, 'no stack trace')
      t.same(
        regionHashes(h, ['rootB']),
        before.regions,
        'slot A, persistent, log, backing and everything outside the partitions (MBR, GPT regions) byte-identical',
      )
      t.equal(activeSlot(h.disk), 'A', 'slot A still boots')
      t.same(fs.readdirSync(h.state), [], 'no trial armed')
      if (!c.anyWrite) t.equal(wholeDisk(h), before.disk, 'refused before the first write: the whole disk byte-identical')
    },
  )
}

t.test('a server that stops sending the block index: after --timeout the delta goes on without it (whole chunks only) and completes', async (t) => {
  const h = await makeHost(t, images)
  const server = await stallingServer(t, images.v2, 'root.img.blocks', (n) => Math.floor(n / 2))
  const r = await execa(...labhostArgv('update', server.url, '--timeout', '3', '--retries', '1', ...h.args), { reject: false, timeout: 120_000 })
  t.equal(r.exitCode, 0, 'exit 0', failDiag(r))
  t.equal(server.stalls.length, 1, 'the block index stalled once')
  t.match(
    r.stderr,
    /root\.img\.blocks: giving up after 1 failed attempts in a row \(last: ETIMEDOUT[^\n]*; matching whole chunks only/,
    'it says why it matches whole chunks only',
  )
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
  t.equal(activeSlot(h.disk), 'B', 'and is flagged to boot')
})

// What an update downloads before it can verify it is capped: a manifest.json far larger than any
// manifest (a 300 MB one took a host to 1.36 GB of memory) or one that never ends is refused with
// exit 31 after at most 16 MiB, the host's memory stays bounded and its disk untouched; a block
// index larger than its signed size is not read past that size (the update goes on, matching
// whole chunks).
import fs from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, labhostCommand, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { MANIFEST_MAX_BYTES } from '../../image-format/source.ts'
import { buildImages, makeHost, slotBHolds, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'
import { serve } from './http-fixtures.ts'

const dir = tmpDir(t, 'labhost-download-limits-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

/** `labhost update` under GNU time: exit code, output, and the peak resident memory of the process. */
async function updateMeasured(args: string[]): Promise<{ code: number; stdout: string; stderr: string; maxRssMiB: number }> {
  const r = await execa('/usr/bin/time', ['-f', 'LABHOST-MAXRSS-KB %M', ...labhostCommand('update', ...args)], { reject: false, timeout: 120_000 })
  const stderr = String(r.stderr)
  const kb = Number(/LABHOST-MAXRSS-KB (\d+)/.exec(stderr)?.[1] ?? NaN)
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: stderr.replace(/LABHOST-MAXRSS-KB \d+\n?/, ''), maxRssMiB: kb / 1024 }
}

/** A server whose manifest.json never ends (chunked, no Content-Length), for one test. */
async function endlessServer(t: Test): Promise<string> {
  const block = Buffer.alloc(1 << 20, 0x20)
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    const pump = () => {
      while (!res.destroyed && res.write(block));
    }
    res.on('drain', pump)
    pump()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  )
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('refused: a 300 MB manifest.json; exit 31 naming the URL and the cap, memory bounded, disk byte-identical', async (t) => {
  const h = await makeHost(t, images)
  const before = wholeDisk(h)
  const d = tmpDir(t)
  sparseFile(`${d}/manifest.json`, 300_000_000)
  const server = await serve(t, d)
  const r = await updateMeasured([`${server.url}/`, '--retries', '1', ...h.args])
  t.equal(r.code, ExitCode.manifestInvalid, 'manifest invalid exit code', failDiag(r))
  t.match(r.stderr, new RegExp(`${server.url}/manifest\\.json is larger than the ${MANIFEST_MAX_BYTES}-byte \\(16 MiB\\) cap`))
  t.match(r.stderr, /\n\s*hint: .*nothing was written/)
  t.ok(r.maxRssMiB < 250, `peak memory of labhost ${r.maxRssMiB.toFixed(0)} MiB (< 250 MiB)`)
  t.ok(server.requests[0]!.bytes < 64 << 20, `the server sent ${server.requests[0]!.bytes} of its 300 MB before the host hung up`)
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
})

t.test('refused: a manifest.json that never ends (no Content-Length); reading stops at the cap', async (t) => {
  const h = await makeHost(t, images)
  const before = wholeDisk(h)
  const url = await endlessServer(t)
  const started = Date.now()
  const r = await updateMeasured([`${url}/`, '--retries', '1', ...h.args])
  t.equal(r.code, ExitCode.manifestInvalid, 'manifest invalid exit code', failDiag(r))
  t.match(r.stderr, /manifest\.json is larger than the 16777216-byte \(16 MiB\) cap for it \(more than 16777216 bytes sent\); stopped reading/)
  t.ok(Date.now() - started < 60_000, 'it stopped by itself')
  t.ok(r.maxRssMiB < 250, `peak memory of labhost ${r.maxRssMiB.toFixed(0)} MiB (< 250 MiB)`)
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
})

t.test('a block index larger than its signed size is not downloaded; the update matches whole chunks and completes', async (t) => {
  const h = await makeHost(t, images)
  const d = tmpDir(t)
  fs.cpSync(images.v2, d, { recursive: true })
  const m = JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8'))
  const big = 200 << 20
  sparseFile(path.join(d, path.basename(m.blocks.file)), big)
  const server = await serve(t, d)
  const r = await updateMeasured([`${server.url}/`, '--json', ...h.args])
  t.equal(r.code, 0, 'exit 0', failDiag(r))
  t.match(
    r.stderr,
    new RegExp(
      `${path.basename(m.blocks.file)} is larger than the ${m.blocks.size}-byte .* cap for it \\(Content-Length ${big}\\); stopped reading.*; matching whole chunks only`,
    ),
  )
  const out = JSON.parse(r.stdout)
  t.ok(out.transfer.bytes < m.transport.size, `${out.transfer.bytes} bytes downloaded, none of the oversized block index counted`)
  t.ok(r.maxRssMiB < 250, `peak memory of labhost ${r.maxRssMiB.toFixed(0)} MiB (< 250 MiB)`)
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
})

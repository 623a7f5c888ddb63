// Wake-on-LAN: the magic packet as a NIC's firmware expects it (6 x 0xFF, then the MAC 16 times,
// 102 bytes, UDP), received here on a loopback socket; MACs from the command line and from
// install reports (machine.nics), refused when malformed or missing.
import dgram from 'node:dgram'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { magicPacket, parseMac, sendWake, targetsFromReports } from '../wake.ts'

/** A UDP socket on 127.0.0.1 collecting what arrives. */
async function receiver(t: Parameters<typeof tmpDir>[0]): Promise<{ port: number; packets: Buffer[]; until(n: number): Promise<void> }> {
  const s = dgram.createSocket('udp4')
  const packets: Buffer[] = []
  s.on('message', (m) => packets.push(m))
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', () => resolve()))
  t.teardown(() => s.close())
  return {
    port: s.address().port,
    packets,
    until: async (n) => {
      for (const end = Date.now() + 5000; packets.length < n && Date.now() < end;) await new Promise((r) => setTimeout(r, 10))
    },
  }
}

const expected = (mac: string) => {
  const m = Buffer.from(mac.replace(/:/g, ''), 'hex')
  const b = Buffer.alloc(102, 0xff)
  for (let i = 0; i < 16; i++) m.copy(b, 6 + 6 * i)
  return b
}

t.test('MACs: three spellings accepted, anything else refused', async (t) => {
  for (const s of ['52:54:00:12:34:56', '52-54-00-12-34-56', '525400123456', '52:54:00:AB:cd:EF']) t.equal(parseMac(s).length, 6, s)
  for (const s of ['52:54:00:12:34', '52:54:00:12:34:5g', '52:54-00:12:34:56', '', 'ff:ff:ff:ff:ff:ff', '01:00:5e:00:00:01', '52:54:00:12:34:56:78']) {
    t.throws(() => parseMac(s), { code: 'usage' }, JSON.stringify(s))
  }
  t.same(magicPacket(parseMac('52:54:00:12:34:56')), expected('52:54:00:12:34:56'))
})

t.test('sendWake: every MAC, `repeat` times, as 102-byte magic packets', async (t) => {
  const r = await receiver(t)
  const macs = ['52:54:00:12:34:56', '00:1a:2b:3c:4d:5e']
  const sent = await sendWake(
    macs.map((mac) => ({ mac, from: 'test' })),
    { address: '127.0.0.1', port: r.port, repeat: 2 },
  )
  t.equal(sent.sent, 4)
  await r.until(4)
  t.equal(r.packets.length, 4)
  t.same(r.packets.map((p) => p.toString('hex')).sort(), [...macs, ...macs].map((m) => expected(m).toString('hex')).sort())
})

t.test('labhost wake --reports: the MACs of every install report, each once', async (t) => {
  const dir = tmpDir(t)
  const report = (name: string, nics: unknown) =>
    fs.writeFileSync(path.join(dir, name), JSON.stringify({ machine: { vendor: 'Dell Inc.', product: 'OptiPlex 7010', nics } }))
  report('pc1.json', [{ name: 'eno1', mac: '52:54:00:00:00:01' }])
  report('pc2.json', [
    { name: 'eno1', mac: '52:54:00:00:00:02' },
    { name: 'enp2s0', mac: '52:54:00:00:00:03' },
  ])
  report('pc2-again.json', [{ name: 'eno1', mac: '52:54:00:00:00:02' }])
  fs.writeFileSync(path.join(dir, 'unfinished-install.json'), '{}')
  // what the stick writes for a PC it refused (no NICs in it): no lab host, passed over
  fs.writeFileSync(
    path.join(dir, 'CZC99-refused-2026-12-01T10-00-00-000Z.json'),
    JSON.stringify({ result: 'refused', code: 'modelRejected', message: 'not on the list' }),
  )
  t.same(
    targetsFromReports(dir).map((x) => x.mac),
    ['52:54:00:00:00:01', '52:54:00:00:00:02', '52:54:00:00:00:03'],
  )
  const r = await receiver(t)
  const cli = await runCli(['wake', '--reports', dir, '--broadcast', '127.0.0.1', '--port', String(r.port), '--repeat', '1', '--json'])
  t.equal(cli.code, 0, cli.stderr)
  await r.until(3)
  t.same(
    r.packets.map((p) => p.toString('hex')).sort(),
    ['52:54:00:00:00:01', '52:54:00:00:00:02', '52:54:00:00:00:03'].map((m) => expected(m).toString('hex')).sort(),
  )
  // a report without MACs (written before labhost recorded them) is named, and nothing is sent
  report('old.json', undefined)
  t.throws(() => targetsFromReports(dir), { code: 'notFound', message: /old\.json/ })
  const old = await runCli(['wake', '--reports', dir, '--broadcast', '127.0.0.1', '--port', String(r.port)])
  t.equal(old.code, ExitCode.notFound)
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(r.packets.length, 3, 'no packet sent for the refused run')
  const bad = await runCli(['wake', 'not-a-mac'])
  t.equal(bad.code, ExitCode.usage)
})

// The channel document and the rollout decision's pure parts: window specs and the local-time
// window (past midnight too), the rollout point (stable across share growth, about share % of
// hosts: checked on 1000 fixed UUIDs, so it cannot flake), signing and the refusals (signature
// first, then the strict schema), the status metrics' names and labels, and the alert rules' shape.
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import YAML from 'yaml'
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { canonicalJson } from '../../image-format/manifest.ts'
import { CHANNEL_FORMAT, ChannelSchema, DECISIONS, inWindow, parseSignedChannel, parseWindow, signChannel, type Channel } from '../channel.ts'
import { inRollout, rolloutPoint } from '../rollout.ts'
import { renderPrometheus, type HostStatus } from '../status.ts'

const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519')
const other = crypto.generateKeyPairSync('ed25519')

const base = (): Omit<Channel, 'signer' | 'signature'> => ({
  format: CHANNEL_FORMAT,
  serial: 7,
  createdAt: '2026-12-01T20:00:00.000Z',
  image: { manifest: 'v2/', name: 'test', version: '2.0.0' },
  share: 25,
  paused: false,
  window: { days: ['Mon', 'Tue', 'Wed', 'Thu', 'Fri'], from: '22:00', to: '05:00' },
})

const codeOf = (f: () => unknown): number | string => {
  try {
    f()
    return 'no error'
  } catch (e) {
    return e instanceof LabhostError ? e.exitCode : String(e)
  }
}

t.test('window specs: ranges, lists, daily, none of the malformed ones', async (t) => {
  t.same(parseWindow('Mon-Fri 22:00-05:00'), { days: ['Mon', 'Tue', 'Wed', 'Thu', 'Fri'], from: '22:00', to: '05:00' })
  t.same(parseWindow('Sat,Sun 08:00-18:00'), { days: ['Sat', 'Sun'], from: '08:00', to: '18:00' })
  t.same(parseWindow('Fri-Mon 00:00-00:00')?.days, ['Mon', 'Fri', 'Sat', 'Sun'], 'a range across the week end')
  t.same(parseWindow('daily 01:00-04:00')?.days.length, 7)
  for (const bad of ['', 'Mon-Fri', 'Mon-Fri 22:00', 'Mon-Fri 24:00-05:00', 'Mo-Fr 22:00-05:00', 'Mon-Fri-Sat 01:00-02:00', 'Mon 1:00-2:00']) {
    t.equal(parseWindow(bad), undefined, `not a window: ${JSON.stringify(bad)}`)
  }
})

t.test('inside the window, in local time; one past midnight belongs to the day it opened', async (t) => {
  const w = parseWindow('Mon-Fri 22:00-05:00')!
  // 2026-12-07 is a Monday; Date(y, m, d, h, min) is local time, as the host's clock is read
  const at = (d: number, h: number, m = 0) => new Date(2026, 11, d, h, m)
  t.ok(inWindow(w, at(7, 22, 0)), 'Mon 22:00: opens')
  t.ok(inWindow(w, at(8, 4, 59)), 'Tue 04:59: Monday night still')
  t.notOk(inWindow(w, at(8, 5, 0)), 'Tue 05:00: closed')
  t.notOk(inWindow(w, at(7, 21, 59)), 'Mon 21:59: not yet')
  t.notOk(inWindow(w, at(7, 3, 0)), 'Mon 03:00: Sunday night is not in the window')
  t.ok(inWindow(w, at(12, 2, 0)), 'Sat 02:00: Friday night')
  t.notOk(inWindow(w, at(12, 22, 30)), 'Sat 22:30: closed')
  const day = parseWindow('Sat,Sun 08:00-18:00')!
  t.ok(inWindow(day, at(13, 12)) && !inWindow(day, at(13, 18)) && !inWindow(day, at(14, 12)), 'a day window: Sun noon in, Sun 18:00 and Mon noon out')
  t.ok(inWindow(parseWindow('Wed 00:00-00:00')!, at(9, 23, 59)) && !inWindow(parseWindow('Wed 00:00-00:00')!, at(10, 0, 1)), 'from = to: the whole day')
})

// 1000 machine UUIDs derived from their index: the same every run
const uuids = Array.from({ length: 1000 }, (_, i) => {
  const h = crypto.createHash('sha256').update(`machine ${i}`).digest('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`
})

t.test('rollout point: about share % of hosts take part, a host in stays in as the share grows', async (t) => {
  const points = uuids.map((u) => rolloutPoint(u, 'host', '2.0.0'))
  t.ok(points.every((p) => p >= 0 && p < 100))
  let previous = new Set<number>()
  for (const share of [0, 5, 25, 50, 100]) {
    const inSet = new Set(points.flatMap((p, i) => (inRollout(p, share) ? [i] : [])))
    // binomial: sd = sqrt(1000 * p * (1 - p)) <= 15.8 hosts; the UUIDs are fixed, so this is a fixed
    // number, and 5 sd (79 hosts) leaves room for any hash that is not broken
    const sd = Math.sqrt(1000 * (share / 100) * (1 - share / 100))
    t.ok(Math.abs(inSet.size - share * 10) <= 5 * sd, `share ${share} %: ${inSet.size} of 1000 hosts (expected ${share * 10} ± ${(5 * sd).toFixed(0)})`)
    t.ok(
      [...previous].every((i) => inSet.has(i)),
      `every host in at the previous stage is in at ${share} %`,
    )
    previous = inSet
  }
  t.equal(previous.size, 1000, '100 %: every host')
  t.equal(rolloutPoint(uuids[0]!.toUpperCase(), 'host', '2.0.0'), points[0], 'the UUID case does not matter')
  t.equal(rolloutPoint(` ${uuids[0]}\n`, 'host', '2.0.0'), points[0], "nor the file's newline")
  // another version picks other first hosts: the 5 % of 3.0.0 are not the 5 % of 2.0.0
  const first = (v: string) => new Set(uuids.filter((u) => rolloutPoint(u, 'host', v) < 5))
  const a = first('2.0.0')
  const b = first('3.0.0')
  t.ok([...a].filter((u) => b.has(u)).length < a.size / 2, 'versions hash differently')
})

t.test('signed channel: verified, then its shape; a changed byte, another key, no signature: refused (exit 43)', async (t) => {
  const c = signChannel(base(), privateKey)
  t.same(parseSignedChannel(JSON.stringify(c), publicKey, 'channel.json'), c)
  t.equal(
    codeOf(() => parseSignedChannel(JSON.stringify(c), other.publicKey, 'channel.json')),
    ExitCode.channelSignatureInvalid,
    'another key',
  )
  for (const [what, change] of [
    ['share', { share: 100 }],
    ['paused', { paused: true }],
    ['serial', { serial: 8 }],
    ['image', { image: { ...c.image, version: '9.9.9' } }],
  ] as const) {
    t.equal(
      codeOf(() => parseSignedChannel(JSON.stringify({ ...c, ...change }), publicKey, 'channel.json')),
      ExitCode.channelSignatureInvalid,
      `${what} changed`,
    )
  }
  const { signature: _, ...unsigned } = c
  t.equal(
    codeOf(() => parseSignedChannel(JSON.stringify(unsigned), publicKey, 'channel.json')),
    ExitCode.channelSignatureInvalid,
    'unsigned',
  )
  t.equal(
    codeOf(() => parseSignedChannel('{"format":', publicKey, 'channel.json')),
    ExitCode.channelInvalid,
    'not JSON',
  )
  t.equal(
    codeOf(() => parseSignedChannel(JSON.stringify({ ...c, signature: 'AAAA' }), publicKey, 'x')),
    ExitCode.channelSignatureInvalid,
    'a signature OpenSSL cannot parse',
  )
})

t.test('a signed document of the wrong shape is channelInvalid (exit 44), naming the field', async (t) => {
  const sign = (v: object) => JSON.stringify(signChannel(v as Channel, privateKey))
  const cases: [string, object, RegExp][] = [
    ['an unknown key', { ...base(), extra: 1 }, /unknown key\(s\) extra/],
    ['share above 100', { ...base(), share: 101 }, /share/],
    ['a bad window time', { ...base(), window: { days: ['Mon'], from: '25:00', to: '01:00' } }, /window\.from/],
    ['a manifest-like format', { ...base(), format: 'labhost-manifest/1' }, /format/],
    ['no paused', { ...base(), paused: undefined }, /paused/],
  ]
  for (const [what, v, message] of cases) {
    try {
      parseSignedChannel(sign(v), publicKey, 'channel.json')
      t.fail(`${what}: accepted`)
    } catch (e) {
      t.equal((e as LabhostError).exitCode, ExitCode.channelInvalid, what)
      t.match((e as Error).message, message, what)
    }
  }
  t.equal(ChannelSchema.safeParse({ ...signChannel(base(), privateKey), window: undefined }).success, true, 'the window is optional')
  t.equal(canonicalJson(signChannel(base(), privateKey)).includes('"signer":"sha256:'), true, 'the signer is named')
})

const status = (over: Partial<HostStatus>): HostStatus => ({
  labhost: '0.9.0',
  version: '1.0.0',
  booted: { slot: 'A', device: '/dev/sda2', disk: '/dev/sda' },
  gpt: null,
  trial: null,
  lastResult: null,
  channel: null,
  problems: [],
  ...over,
})

t.test('metrics: Prometheus names and labels, HELP and TYPE for each, the channel decision', async (t) => {
  const text = renderPrometheus(
    status({
      trial: { slot: 'B', bootsLeft: 2, version: '2.0.0' },
      lastResult: { RESULT: 'rolled-back', VERSION: '2.0.0', ROLLED_BACK_AT: '2026-12-01T20:00:00.000Z', UPDATE_SECONDS: '41.5' },
      channel: { checkedAt: '2026-12-01T21:00:00.000Z', decision: 'waiting-for-window', serial: 12, version: '2.0.0', share: 25 },
    }),
  )
  const lines = text.trimEnd().split('\n')
  const samples = lines.filter((l) => !l.startsWith('#'))
  const names = [...new Set(samples.map((l) => /^(\w+)/.exec(l)![1]!))]
  for (const n of names) {
    t.ok(lines.includes(`# TYPE ${n} gauge`) && lines.some((l) => l.startsWith(`# HELP ${n} `)), `${n}: HELP and TYPE`)
    t.match(n, /^labhost_[a-z_]+$/, `${n}: prefix, snake case`)
    t.notMatch(n, /_(ms|minutes|hours|bytes_total|percent)$/, `${n}: base units`)
  }
  for (const l of samples.filter((x) => x.includes('{'))) {
    const name = /^(\w+)/.exec(l)![1]!
    t.ok(name.endsWith('_info') || name === 'labhost_channel_decision', `labels only on _info gauges and the decision state set: ${l}`)
    t.notMatch(l, /(uuid|host|serial|time|reason)=/, `no high-cardinality label: ${l}`)
  }
  t.ok(samples.includes('labhost_build_info{version="0.9.0"} 1'))
  t.ok(samples.includes('labhost_image_info{version="1.0.0",slot="A",next_slot="none"} 1'))
  t.ok(samples.includes('labhost_trial_pending 1') && samples.includes('labhost_trial_boots_left 2'))
  t.ok(samples.includes('labhost_last_update_info{result="rolled-back",version="2.0.0"} 1'))
  t.ok(samples.includes(`labhost_last_update_timestamp_seconds ${Date.parse('2026-12-01T20:00:00.000Z') / 1000}`))
  t.ok(samples.includes('labhost_last_update_duration_seconds 41.5'))
  t.ok(samples.includes(`labhost_channel_last_check_timestamp_seconds ${Date.parse('2026-12-01T21:00:00.000Z') / 1000}`))
  t.ok(
    samples.includes('labhost_channel_serial 12') &&
      samples.includes('labhost_channel_info{version="2.0.0"} 1') &&
      samples.includes('labhost_channel_share_ratio 0.25'),
  )
  t.same(
    samples.filter((l) => l.startsWith('labhost_channel_decision{')),
    DECISIONS.map((d) => `labhost_channel_decision{decision="${d}"} ${d === 'waiting-for-window' ? 1 : 0}`),
    'one 0/1 series per decision',
  )
  const bare = renderPrometheus(status({}))
  t.notMatch(bare, /labhost_channel_|labhost_last_update_/, 'no channel, no update yet: those series are absent (not -1 or "none")')
  t.match(bare, /\nlabhost_trial_pending 0\n/)
  t.match(bare, /\nlabhost_trial_boots_left 0\n/)
})

t.test('the alert rules: Prometheus rule-file shape, an alert on rolled-back hosts of the channel version', async (t) => {
  const file = path.join(import.meta.dirname, '..', 'prometheus', 'labhost-alerts.yaml')
  const doc = YAML.parse(fs.readFileSync(file, 'utf8')) as { groups: { name: string; rules: Record<string, unknown>[] }[] }
  t.same(Object.keys(doc), ['groups'])
  const rendered = renderPrometheus(
    status({
      lastResult: { RESULT: 'rolled-back', VERSION: '2.0.0' },
      channel: { checkedAt: '2026-12-01T21:00:00.000Z', decision: 'up-to-date', serial: 1, version: '2.0.0', share: 5 },
    }),
  )
  for (const g of doc.groups) {
    t.type(g.name, 'string')
    for (const r of g.rules) {
      t.same(
        Object.keys(r).filter((k) => !['alert', 'expr', 'for', 'labels', 'annotations'].includes(k)),
        [],
        `${String(r.alert)}: only the keys of an alerting rule`,
      )
      t.match(r.alert, /^[A-Za-z_][A-Za-z0-9_]*$/)
      t.type(r.expr, 'string')
      t.match(r.for, /^\d+[smhd]$/)
      // every metric the rule reads is one labhost status writes
      for (const m of String(r.expr).match(/labhost_\w+/g) ?? [])
        t.match(rendered, new RegExp(`\\n${m}[{ ]`), `${String(r.alert)} reads ${m}, which status writes`)
    }
  }
  const rolledBack = doc.groups.flatMap((g) => g.rules).find((r) => r.alert === 'LabhostRolloutRolledBack')
  t.match(rolledBack?.expr, /labhost_last_update_info\{result="rolled-back"\}[^]*labhost_channel_info/)
  t.match((rolledBack?.annotations as Record<string, string>).description, /--pause/)
})

t.test("promtool (Debian's prometheus package), where installed: the rules check, and their unit test fires for the channel version only", async (t) => {
  const dir = path.join(import.meta.dirname, '..', 'prometheus')
  const which = spawnSync('promtool', ['--version'])
  if (which.error) {
    t.comment('promtool is not installed (apt-get install prometheus): the YAML shape test above stands in')
    return
  }
  const check = spawnSync('promtool', ['check', 'rules', 'labhost-alerts.yaml'], { cwd: dir, encoding: 'utf8' })
  t.equal(check.status, 0, 'promtool check rules', { output: check.stdout + check.stderr })
  const test = spawnSync('promtool', ['test', 'rules', 'labhost-alerts.test.yaml'], { cwd: dir, encoding: 'utf8' })
  t.equal(test.status, 0, 'promtool test rules', { output: test.stdout + test.stderr })
})

// labhost update --channel URL against a channel served on the loopback (lib/http-serve.ts): a
// host in the stage, inside the window, updates slot B and arms the trial; the host decides
// "paused", "not in this rollout stage", "waiting for the window" and "up to date" with exit 0
// and leaves its disk byte-identical; a tampered channel (43), one naming another image than its
// manifest (44) and an older serial than the one accepted (45) are refused, disk and state as
// they were. The clock is --now (a test seam), local time like the host's.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { readPrivateKey } from '../../image-format/manifest.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, makeHost, protectedParts, slotBHolds, wholeDisk, type Host, type Images } from '../../test-support/update-fixtures.ts'
import { readTrial } from '../host-state.ts'
import { CHANNEL_FORMAT, signChannel } from '../channel.ts'
import { rolloutPoint } from '../rollout.ts'
import { activeSlot, serve } from './http-fixtures.ts'

const dir = tmpDir(t, 'labhost-channel-update-')
let images: Images

// Mon 2026-12-07 23:00 local time: inside Mon-Fri 22:00-05:00; Tue 12:00 outside
const INSIDE = '2026-12-07T23:00:00'
const OUTSIDE = '2026-12-08T12:00:00'
const WINDOW = 'Mon-Fri 22:00-05:00'

/** A machine UUID whose rollout point for test 2.0.0 lies in [lo, hi). */
function uuidWithPoint(lo: number, hi: number): string {
  for (let i = 0; ; i++) {
    const u = crypto.randomUUID()
    const p = rolloutPoint(u, 'test', '2.0.0')
    if (p >= lo && p < hi) return u
  }
}
const EARLY = uuidWithPoint(0, 5) // in from the first stage on
const LATE = uuidWithPoint(50, 100) // in only at 100 %

t.before(async () => {
  images = await buildImages(dir)
})

/** A server root with the 2.0.0 image under v2/ (hard links: the server follows no symbolic link) and the channel beside it. */
function serverRoot(t: Test): string {
  const root = tmpDir(t)
  fs.mkdirSync(path.join(root, 'v2'))
  for (const f of fs.readdirSync(images.v2)) fs.linkSync(path.join(images.v2, f), path.join(root, 'v2', f))
  return root
}

async function publish(t: Test, root: string, args: string[], file = 'channel.json'): Promise<void> {
  const r = await runCli(['channel', 'publish', '--out', path.join(root, file), '--signing-key', images.keys.privateKeyFile, ...args])
  t.equal(r.code, 0, `channel publish ${args.join(' ')}`, failDiag(r))
}

async function host(t: Test, uuid: string): Promise<Host & { all: string[] }> {
  const h = await makeHost(t, images)
  const file = path.join(path.dirname(h.state), 'machine-uuid')
  fs.writeFileSync(file, `${uuid}\n`)
  return { ...h, all: [...h.args, '--machine-uuid-file', file] }
}

/** Run `update --channel URL …` and expect exit 0 with `decision`, the disk and the trial as they were. */
async function decides(t: Test, h: Host & { all: string[] }, url: string, args: string[], decision: string, human: RegExp) {
  const before = wholeDisk(h)
  const r = await runCli(['update', '--channel', url, ...args, ...h.all])
  t.equal(r.code, 0, `exit 0: ${decision}`, failDiag(r))
  t.match(r.stdout, human)
  const j = await runCli(['update', '--channel', url, '--json', ...args, ...h.all])
  t.equal(JSON.parse(j.stdout).decision, decision, `--json: decision ${decision}`)
  t.equal(wholeDisk(h), before, 'the whole disk byte-identical')
  t.equal(readTrial(h.lib), null, 'no trial armed')
  t.equal(
    fs.readFileSync(path.join(h.state, 'labhost', 'channel-last'), 'utf8').match(/^DECISION=(.*)$/m)?.[1],
    decision,
    'the decision is kept for the metrics',
  )
  return JSON.parse(j.stdout)
}

t.test('in the stage, inside the window: --dry-run plans, then the update writes slot B and arms the trial', async (t) => {
  const root = serverRoot(t)
  await publish(t, root, ['--image', 'v2/', '--share', '5', '--window', WINDOW])
  const server = await serve(t, root)
  const h = await host(t, EARLY)
  const url = `${server.url}/channel.json`
  const before = { disk: wholeDisk(h), state: protectedParts(h).state }
  const plan = await runCli(['update', '--channel', url, '--now', INSIDE, '--dry-run', '--json', ...h.all])
  t.equal(plan.code, 0, failDiag(plan))
  const p = JSON.parse(plan.stdout)
  t.match(p, {
    decision: 'update',
    dryRun: true,
    channel: { serial: 1, share: 5, image: { name: 'test', version: '2.0.0', location: `${server.url}/v2/` } },
    host: { inStage: true, windowOpen: true },
    update: { to: { slot: 'B', version: '2.0.0' } },
  })
  t.ok(p.host.rolloutPoint < 5)
  t.same({ disk: wholeDisk(h), state: protectedParts(h).state }, before, '--dry-run: disk and state byte-identical')
  const human = await runCli(['update', '--channel', url, '--now', INSIDE, '--dry-run', ...h.all])
  t.match(human.stdout, /^channel .*: serial 1, test 2\.0\.0 at 5 %, window Mon,Tue,Wed,Thu,Fri 22:00-05:00 \(local time\)\nwould update: in the rollout/)

  const slotA = protectedParts(h).slotA
  const r = await runCli(['update', '--channel', url, '--now', INSIDE, '--json', ...h.all])
  t.equal(r.code, 0, failDiag(r))
  const out = JSON.parse(r.stdout)
  t.equal(out.decision, 'updated')
  t.equal(out.mayReboot, true, 'inside the window: --reboot would reboot')
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'slot B holds 2.0.0')
  t.equal(activeSlot(h.disk), 'B', 'B boots next')
  t.match(readTrial(h.lib), { slot: 'B', version: '2.0.0' }, 'the trial is armed')
  t.equal(protectedParts(h).slotA, slotA, 'slot A byte-identical')
  t.match(fs.readFileSync(path.join(h.state, 'labhost', 'channel-serial'), 'utf8'), /^SERIAL=1\n/, 'serial 1 accepted')
  const m = await runCli(['status', '--prometheus', '--boot-file', h.lib.bootFile, '--state-root', h.lib.stateRoot, '--version-file', h.lib.versionFile])
  t.match(m.stdout, /\nlabhost_channel_decision\{decision="updated"\} 1\n/)
  t.match(m.stdout, /\nlabhost_channel_serial 1\n/)
  t.match(m.stdout, /\nlabhost_channel_info\{version="2\.0\.0"\} 1\n/)
})

t.test('pause, stage membership, window, up to date: exit 0, nothing written', async (t) => {
  const root = serverRoot(t)
  const server = await serve(t, root)
  const url = `${server.url}/channel.json`
  const early = await host(t, EARLY)
  const late = await host(t, LATE)

  await publish(t, root, ['--image', 'v2/', '--share', '5', '--window', WINDOW, '--pause'])
  await decides(t, early, url, ['--now', INSIDE], 'paused', /\npaused: the channel is paused/)

  await publish(t, root, ['--share', '25']) // resumed (no --pause), image and window kept
  const out = await decides(
    t,
    late,
    url,
    ['--now', INSIDE],
    'not-in-stage',
    /\nnot-in-stage: not in this rollout stage: rollout point \d+\.\d\d is not below the share 25 %/,
  )
  t.equal(out.host.inStage, false)
  t.equal(out.channel.serial, 2)
  await decides(t, early, url, ['--now', OUTSIDE], 'waiting-for-window', /\nwaiting-for-window: waiting for the window Mon,Tue,Wed,Thu,Fri 22:00-05:00/)
  const ignored = await runCli(['update', '--channel', url, '--now', OUTSIDE, '--ignore-window', '--dry-run', '--json', ...early.all])
  t.match(JSON.parse(ignored.stdout), { decision: 'update', mayReboot: false, host: { windowOpen: false } }, '--ignore-window: would update, but not reboot')

  await publish(t, root, ['--share', '100'])
  const all = await runCli(['update', '--channel', url, '--now', INSIDE, '--dry-run', '--json', ...late.all])
  t.match(JSON.parse(all.stdout), { decision: 'update', host: { inStage: true } }, 'at 100 % the late host is in')

  fs.writeFileSync(early.lib.versionFile, '2.0.0\n')
  await decides(t, early, url, ['--now', INSIDE], 'up-to-date', /\nup-to-date: up to date: running test 2\.0\.0/)
})

/** Refused with `code`: the whole disk and the state directory exactly as before. */
async function refused(t: Test, h: Host & { all: string[] }, url: string, code: number, message: RegExp) {
  const before = {
    disk: wholeDisk(h),
    state: fs
      .readdirSync(h.state, { recursive: true })
      .sort()
      .map((f) => {
        const p = path.join(h.state, String(f))
        return fs.statSync(p).isFile() ? `${f}:${fs.readFileSync(p, 'utf8')}` : String(f)
      }),
  }
  const r = await runCli(['update', '--channel', url, '--now', INSIDE, ...h.all])
  t.equal(r.code, code, `exit ${code}`, failDiag(r))
  t.match(r.stderr, message)
  t.equal(wholeDisk(h), before.disk, 'the whole disk byte-identical')
  t.same(
    fs
      .readdirSync(h.state, { recursive: true })
      .sort()
      .map((f) => {
        const p = path.join(h.state, String(f))
        return fs.statSync(p).isFile() ? `${f}:${fs.readFileSync(p, 'utf8')}` : String(f)
      }),
    before.state,
    'the state files as they were',
  )
}

t.test('refused: a tampered channel (43), one signed by another key (43), a replayed older serial (45), an image other than named (44)', async (t) => {
  const root = serverRoot(t)
  const server = await serve(t, root)
  const h = await host(t, EARLY)
  const url = (f: string) => `${server.url}/${f}`

  await publish(t, root, ['--image', 'v2/', '--share', '5'])
  fs.copyFileSync(path.join(root, 'channel.json'), path.join(root, 'old.json'))
  const c = JSON.parse(fs.readFileSync(path.join(root, 'channel.json'), 'utf8'))
  fs.writeFileSync(path.join(root, 'tampered.json'), JSON.stringify({ ...c, share: 100 }))
  await refused(t, h, url('tampered.json'), ExitCode.channelSignatureInvalid, /tampered\.json: the signature does not match/)
  const other = crypto.generateKeyPairSync('ed25519')
  const { signer: _s, signature: _g, ...body } = c
  fs.writeFileSync(path.join(root, 'other-key.json'), JSON.stringify(signChannel(body, other.privateKey)))
  await refused(t, h, url('other-key.json'), ExitCode.channelSignatureInvalid, /signature does not match/)
  // signed by the image key, but naming a version its manifest is not (at 100 %: 3.0.0 hashes the host elsewhere)
  fs.writeFileSync(
    path.join(root, 'wrong-image.json'),
    JSON.stringify(
      signChannel(
        { ...body, serial: 1, share: 100, image: { ...body.image, version: '3.0.0' }, format: CHANNEL_FORMAT },
        readPrivateKey(images.keys.privateKeyFile),
      ),
    ),
  )
  const wrong = await runCli(['update', '--channel', url('wrong-image.json'), '--now', INSIDE, ...h.all])
  t.equal(wrong.code, ExitCode.channelInvalid, 'exit 44', failDiag(wrong))
  t.match(wrong.stderr, /is test 2\.0\.0, but the channel names test 3\.0\.0/)
  t.equal(readTrial(h.lib), null, 'no trial')
  t.equal(activeSlot(h.disk), 'A')

  // the host accepts serial 2 (paused: it updates nothing), then is served serial 1 again
  await publish(t, root, ['--pause'])
  await decides(t, h, url('channel.json'), ['--now', INSIDE], 'paused', /paused/)
  await refused(t, h, url('old.json'), ExitCode.channelReplayed, /old\.json has serial 1 .*but this host accepted serial 2/)
  const show = await runCli(['channel', 'show', url('tampered.json'), '--trusted-key', images.keys.publicKeyFile])
  t.equal(show.code, ExitCode.channelSignatureInvalid, 'channel show refuses it too')
  const ok = await runCli(['channel', 'show', url('channel.json'), '--trusted-key', images.keys.publicKeyFile, '--json'])
  t.match(JSON.parse(ok.stdout), { serial: 2, paused: true, share: 5, image: { manifest: 'v2/', name: 'test', version: '2.0.0' } })
})

t.test('channel publish: the image must be signed by the signing key; serials only go up', async (t) => {
  const root = serverRoot(t)
  const other = crypto.generateKeyPairSync('ed25519')
  fs.writeFileSync(path.join(root, 'other.key'), other.privateKey.export({ format: 'pem', type: 'pkcs8' }))
  const r = await runCli([
    'channel',
    'publish',
    '--out',
    path.join(root, 'channel.json'),
    '--image',
    'v2/',
    '--share',
    '5',
    '--signing-key',
    path.join(root, 'other.key'),
  ])
  t.equal(r.code, ExitCode.signatureInvalid, 'an image no host would take is refused', failDiag(r))
  t.notOk(fs.existsSync(path.join(root, 'channel.json')))
  const first = await runCli(['channel', 'publish', '--out', path.join(root, 'channel.json'), '--share', '5', '--signing-key', images.keys.privateKeyFile])
  t.equal(first.code, ExitCode.usage, 'the first channel needs --image')
  await publish(t, root, ['--image', 'v2/', '--share', '5', '--serial', '10'])
  const lower = await runCli(['channel', 'publish', '--out', path.join(root, 'channel.json'), '--serial', '10', '--signing-key', images.keys.privateKeyFile])
  t.equal(lower.code, ExitCode.usage, 'a serial not above the previous one')
  const dry = await runCli([
    'channel',
    'publish',
    '--out',
    path.join(root, 'channel.json'),
    '--share',
    '25',
    '--dry-run',
    '--signing-key',
    images.keys.privateKeyFile,
  ])
  t.match(dry.stdout, /^would write .*: serial 11,/)
  t.match(JSON.parse(fs.readFileSync(path.join(root, 'channel.json'), 'utf8')), { serial: 10, share: 5 }, '--dry-run wrote nothing')
  const bad = await runCli([
    'channel',
    'publish',
    '--out',
    path.join(root, 'channel.json'),
    '--window',
    'weekdays 22:00-05:00',
    '--signing-key',
    images.keys.privateKeyFile,
  ])
  t.equal(bad.code, ExitCode.usage)
  t.match(bad.stderr, /--window "weekdays 22:00-05:00" is not a window/)
})

// labhost vm-image prune with real qcow2 chains and a real QEMU holding images open (paused, no
// guest): volumes on a replaced base are deleted, but never one a QEMU holds, nor one another kept
// volume rests on; volumes on current bases, standalone volumes and volumes on foreign bases stay;
// the old base goes only when nothing rests on it; --dry-run prints that plan and changes nothing;
// with a reserve, the least recently written volumes on current bases go until it is met.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { generateKeyPair } from '../../image-format/manifest.ts'
import { readCatalogue } from '../catalogue.ts'
import { publishVmImage } from '../publish.ts'
import { pullVmImage } from '../pull.ts'
import { freeBytes, GiB } from '../space.ts'
import type { PruneResult } from '../prune.ts'
import { loopFs, makeBase, makeOverlay, qemuHolding, snapshot } from './fixtures.ts'

const dir = tmpDir(t, 'labhost-vm-prune-')
const keys = generateKeyPair(path.join(dir, 'keys'))
const pubs: string[] = []

t.before(async () => {
  for (const [version, pattern] of [
    ['1.0.0', 0x10],
    ['2.0.0', 0x40],
  ] as const) {
    const src = await makeBase(path.join(dir, `src-${version}.qcow2`), { dataMiB: 2, pattern })
    const p = await publishVmImage({
      file: src,
      name: 'win11',
      version,
      os: 'windows',
      isDefault: true,
      signingKey: keys.privateKeyFile,
      out: path.join(dir, `pub-${version}`),
      trackers: [],
    })
    pubs.push(path.dirname(p.manifestFile))
  }
})

/** A backing directory where win11 1.0.0 was replaced by 2.0.0 (both files still there: pulled without prune). */
async function replacedBase(t: Test, user: string): Promise<{ backing: string; v1: string; v2: string }> {
  const backing = await loopFs(t, 48)
  for (const source of pubs) {
    await pullVmImage({
      source,
      trustedKey: keys.publicKeyFile,
      backingDir: backing,
      userDir: user,
      catalogue: path.join(backing, 'catalogue.ini'),
      prune: false,
      reserveBytes: 0,
    })
  }
  return { backing, v1: path.join(backing, 'win11-1.0.0.qcow2'), v2: path.join(backing, 'win11-2.0.0.qcow2') }
}

const prune = async (backing: string, user: string, more: string[] = []): Promise<{ code: number; out: PruneResult; stderr: string }> => {
  const r = await runCli(['vm-image', 'prune', '--dir', backing, '--user-dir', user, '--json', ...more])
  return { code: r.code, out: JSON.parse(r.stdout), stderr: r.stderr }
}
const actions = (r: PruneResult, user: string) => Object.fromEntries(r.volumes.map((v) => [path.relative(user, v.path), `${v.action}: ${v.reason}`]))

t.test('volumes on the replaced base go, except one a QEMU holds; the old base stays until nothing rests on it', async (t) => {
  const user = tmpDir(t)
  const { backing, v1, v2 } = await replacedBase(t, user)
  const foreignBase = await makeBase(path.join(tmpDir(t), 'foreign.qcow2'), { dataMiB: 1, pattern: 3 })
  await makeOverlay(path.join(user, 'alice/old.qcow2'), v1, 1)
  const busy = await makeOverlay(path.join(user, 'bob/old-busy.qcow2'), v1, 1)
  const carol = await makeOverlay(path.join(user, 'carol/new.qcow2'), v2, 1)
  await makeOverlay(path.join(user, 'carol/new-child.qcow2'), carol, 1)
  const daveParent = await makeOverlay(path.join(user, 'dave/parent.qcow2'), v1, 1)
  await makeOverlay(path.join(user, 'dave/child.qcow2'), daveParent, 1)
  await makeBase(path.join(user, 'erin/standalone.qcow2'), { dataMiB: 1, pattern: 5 })
  await makeOverlay(path.join(user, 'frank/foreign.qcow2'), foreignBase)
  fs.writeFileSync(path.join(user, 'notes.txt'), 'not a volume')
  const vm = await qemuHolding(t, busy)

  const beforeUser = snapshot(user)
  const beforeBacking = snapshot(backing)
  const dry = await prune(backing, user, ['--dry-run'])
  t.equal(dry.code, 0, dry.stderr)
  t.same(snapshot(user), beforeUser, 'dry run: the user directory unchanged (bytes and mtimes)')
  t.same(snapshot(backing), beforeBacking, 'dry run: the backing directory unchanged')
  const plan = actions(dry.out, user)
  t.match(plan, {
    'alice/old.qcow2': /^delete: its base win11-1\.0\.0\.qcow2 was replaced/,
    'bob/old-busy.qcow2': /^keep: in use by a running QEMU/,
    'carol/new.qcow2': /^keep: rests on the current base win11-2\.0\.0\.qcow2/,
    'carol/new-child.qcow2': /^keep: rests on the current base/,
    'dave/child.qcow2': /^delete: its base win11-1\.0\.0\.qcow2 was replaced/,
    'dave/parent.qcow2': /^delete: /,
    'erin/standalone.qcow2': /^keep: no backing file/,
    'frank/foreign.qcow2': /^keep: rests on .*foreign\.qcow2, outside/,
  })
  t.equal(Object.keys(plan).length, 8, 'every volume in the plan, notes.txt not')
  t.same(
    dry.out.bases.map((b) => [path.basename(b.path), b.action]),
    [
      ['win11-1.0.0.qcow2', 'keep'],
      ['win11-2.0.0.qcow2', 'keep'],
    ],
  )
  t.match(dry.out.bases[0]!.reason, /1 volume\(s\) rest on it: .*bob\/old-busy\.qcow2/)
  const human = await runCli(['vm-image', 'prune', '--dir', backing, '--user-dir', user, '--dry-run'])
  t.match(human.stdout, /delete  .*alice\/old\.qcow2/)
  t.match(human.stdout, /dry run: nothing was changed/)

  const r = await prune(backing, user)
  t.equal(r.code, 0, r.stderr)
  const left = (fs.readdirSync(user, { recursive: true }) as string[]).filter((n) => n.endsWith('.qcow2')).sort()
  t.same(left, ['bob/old-busy.qcow2', 'carol/new-child.qcow2', 'carol/new.qcow2', 'erin/standalone.qcow2', 'frank/foreign.qcow2'])
  t.ok(fs.existsSync(v1), "the old base stays: a running VM's volume rests on it")
  t.ok(fs.existsSync(path.join(user, 'notes.txt')))

  await vm.kill()
  const r2 = await prune(backing, user)
  t.equal(r2.code, 0, r2.stderr)
  t.notOk(fs.existsSync(busy), 'once the VM is gone, its volume on the old base is deleted')
  t.notOk(fs.existsSync(v1), 'and then the old base')
  t.ok(fs.existsSync(v2) && fs.existsSync(carol), 'the current base and its volumes stay')
  t.same(
    readCatalogue(path.join(backing, 'catalogue.ini')).map((e) => e.version),
    ['2.0.0'],
  )
  t.same(
    fs.readdirSync(backing).filter((n) => n.startsWith('.')),
    [],
    'no file left renamed aside',
  )
})

t.test('a base nothing rests on is kept while a QEMU holds it open (a VM on it directly)', async (t) => {
  const user = tmpDir(t)
  const { backing, v1 } = await replacedBase(t, user)
  await qemuHolding(t, v1)
  const r = await prune(backing, user)
  t.equal(r.code, 0, r.stderr)
  t.match(r.out.bases[0], { action: 'keep', reason: /in use by a running QEMU/ })
  t.ok(fs.existsSync(v1))
})

t.test('reserve: the least recently written volumes on current bases go until it is met, never one in use', async (t) => {
  const user = await loopFs(t, 64)
  const { backing, v2 } = await replacedBase(t, tmpDir(t))
  const day = 86400
  const now = Math.floor(Date.now() / 1000)
  const vols = []
  for (const name of ['o1-oldest-busy', 'o2', 'o3', 'o4-newest']) vols.push(await makeOverlay(path.join(user, `${name}.qcow2`), v2, 8))
  await qemuHolding(t, vols[0]!)
  vols.forEach((v, i) => fs.utimesSync(v, now - (10 - i) * day, now - (10 - i) * day))
  const free = freeBytes(user)
  const gibOf = (bytes: number) => (bytes / GiB).toFixed(6)

  // 12 MiB more than is free: two 8 MiB volumes must go, the oldest is in use
  const before = snapshot(user)
  const dry = await prune(backing, user, ['--reserve-gib', gibOf(free + (12 << 20)), '--dry-run'])
  t.equal(dry.code, 0, dry.stderr)
  t.same(snapshot(user), before, 'dry run changes nothing')
  const r = await prune(backing, user, ['--reserve-gib', gibOf(free + (12 << 20))])
  t.equal(r.code, 0, r.stderr)
  t.same(actions(r.out, user), actions(dry.out, user), 'the dry run showed what was done')
  t.match(actions(r.out, user), {
    'o1-oldest-busy.qcow2': /^keep: .*in use by a running QEMU/,
    'o2.qcow2': /^delete: for the reserve: least recently written/,
    'o3.qcow2': /^delete: for the reserve/,
    'o4-newest.qcow2': /^keep: rests on the current base/,
  })
  t.same(
    fs
      .readdirSync(user)
      .filter((n) => n.endsWith('.qcow2'))
      .sort(),
    ['o1-oldest-busy.qcow2', 'o4-newest.qcow2'],
  )
  t.ok(r.out.reserve.met && freeBytes(user) >= free + (12 << 20), 'the reserve is met')

  // a reserve that cannot be met: everything deletable goes, the one in use stays, exit 73
  const all = await prune(backing, user, ['--reserve-gib', '1'])
  t.equal(all.code, ExitCode.reserveNotMet, 'exit 73')
  t.same(
    fs.readdirSync(user).filter((n) => n.endsWith('.qcow2')),
    ['o1-oldest-busy.qcow2'],
  )
  t.equal(all.out.reserve.met, false)
})

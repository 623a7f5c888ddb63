// The rollback campaign's offline parts: what it reports of the recorded GPT writes (size, LBA,
// the sectors changed, durability before the next GPT write), where a reset landed, and how the
// aims are drawn.
import t from 'tap'
import { aimHit, gptWrites, phaseOf, rollbackAimOf, ROLLBACK_AIMS } from './rollback-campaign.ts'
import type { LoggedWrite } from './write-log.ts'

const SS = 512
// a tiny disk: LBA 0..33 the primary region (entries at 2..33), LBA 100..132 the backup (header at 132)
const regions = { primary: { first: 0, last: 33 }, backup: { first: 100, last: 132 }, entriesLba: { primary: 2, backup: 100 } }
const fill = (v: number) => Buffer.alloc(SS, v)
const before = (lba: number) => fill(lba === 2 || lba === 100 ? 0xaa : lba & 0xff)
const rollbackSector = fill(0xaa)
const committed = fill(0xcc)

let n = 0
const write = (lba: number, sectors: Buffer[], o: { fua?: boolean } = {}): LoggedWrite => ({
  index: n++,
  offset: lba * SS,
  length: sectors.length * SS,
  data: Buffer.concat(sectors),
  fua: o.fua ?? false,
  flush: false,
  discard: false,
})
const flush = (): LoggedWrite => ({ index: n++, offset: 0, length: 0, data: Buffer.alloc(0), fua: false, flush: true, discard: false })

t.test('one-sector writes: the commit and its mirror, then the rollback and its mirror, each flushed', async (t) => {
  const writes = [
    write(5000, [fill(1)]),
    flush(), // a data write elsewhere: not a GPT write
    write(2, [committed]),
    flush(),
    write(100, [committed]),
    flush(),
    write(2, [rollbackSector]),
    flush(),
    write(100, [rollbackSector]),
    flush(),
  ]
  const g = gptWrites({ writes, sectorSize: SS, before, ...regions, rollbackSector })
  t.same(
    g.map((w) => [w.region, w.lba, w.bytes, w.changed, w.sets, w.durableBeforeNext]),
    [
      ['primary', 2, 512, [2], 'commit', true],
      ['backup', 100, 512, [100], 'commit', true],
      ['primary', 2, 512, [2], 'rollback', true],
      ['backup', 100, 512, [100], 'rollback', true],
    ],
  )
})

t.test('a 4 KiB write of LBA 0-7 that changes only the entries sector is reported as what it is', async (t) => {
  const page = (entries: Buffer) => Array.from({ length: 8 }, (_, i) => (i === 2 ? entries : before(i)))
  const writes = [write(0, page(committed)), flush(), write(100, [committed]), flush(), write(0, page(rollbackSector)), write(100, [rollbackSector]), flush()]
  const g = gptWrites({ writes, sectorSize: SS, before, ...regions, rollbackSector })
  t.same(
    g.map((w) => [w.lba, w.bytes, w.changed, w.sets]),
    [
      [0, 4096, [2], 'commit'],
      [100, 512, [100], 'commit'],
      [0, 4096, [2], 'rollback'],
      [100, 512, [100], 'rollback'],
    ],
  )
  t.same(
    g.map((w) => w.durableBeforeNext),
    [true, true, false, true],
    "the rollback's primary write had no flush before its mirror",
  )
})

t.test('a FUA write is durable by itself; a write that changes nothing is other', async (t) => {
  const writes = [write(2, [committed], { fua: true }), write(1, [before(1)]), write(2, [committed])]
  const g = gptWrites({ writes, sectorSize: SS, before, ...regions, rollbackSector })
  t.same(
    g.map((w) => [w.lba, w.changed, w.sets, w.durableBeforeNext]),
    [
      [2, [2], 'commit', true],
      [1, [], 'other', false],
      [2, [], 'other', false],
    ],
  )
})

t.test('phases and hits', async (t) => {
  t.equal(phaseOf(1, 2, 'boot'), 'trial1:before-count')
  t.equal(phaseOf(1, 2, 'statefs'), 'trial1:before-count', 'the state partition mounted, the countdown not announced')
  t.equal(phaseOf(2, 2, 'trial'), 'trial2:counted')
  t.equal(phaseOf(2, 2, 'root'), 'trial2:counted')
  t.equal(phaseOf(1, 2, 'failing'), 'trial1:userspace')
  t.equal(phaseOf(1, 2, 'failing-exit'), 'trial1:dying')
  t.equal(phaseOf(3, 2, 'boot'), 'rollback:before-write')
  t.equal(phaseOf(3, 2, 'statefs'), 'rollback:before-write')
  t.equal(phaseOf(3, 2, 'rolling-back'), 'rollback:writing')
  t.equal(phaseOf(3, 2, 'rollback'), 'rollback:rebooting')
  t.equal(phaseOf(4, 2, 'boot'), 'good-boot')
  t.ok(aimHit('trial-boot', 2, 'trial2:counted'))
  t.notOk(aimHit('trial-boot', 1, 'trial2:counted'), 'another trial boot is a miss')
  t.notOk(aimHit('trial-boot', 1, 'trial1:userspace'))
  t.ok(aimHit('failing-userspace', 1, 'trial1:userspace'))
  t.notOk(aimHit('failing-userspace', 1, 'trial1:dying'))
  t.ok(aimHit('rollback', null, 'rollback:writing'))
  t.notOk(aimHit('rollback', null, 'good-boot'))
})

t.test('stratified aims take turns and slice their windows; independent ones follow the draw', async (t) => {
  const o = { stratified: true, cycles: 7 }
  t.same(
    [0, 1, 2, 3, 4, 5, 6].map((i) => rollbackAimOf(o, i, 0.99).aim),
    [...ROLLBACK_AIMS, ...ROLLBACK_AIMS, ROLLBACK_AIMS[0]],
  )
  // trial-boot gets resets 0, 3, 6 (three slices), failing-userspace 1, 4 (two)
  t.same(
    [0, 3, 6].map((i) => rollbackAimOf(o, i, 0).fraction(0.5)),
    [0.5 / 3, 1.5 / 3, 2.5 / 3],
  )
  t.same(
    [1, 4].map((i) => rollbackAimOf(o, i, 0).fraction(0)),
    [0, 0.5],
  )
  t.same(
    [0.1, 0.5, 0.9].map((d) => rollbackAimOf({ cycles: 10 }, 0, d).aim),
    ROLLBACK_AIMS,
  )
  // a stratified run over some aims only: they take turns, each over its own slices
  const only = { stratified: true, aims: ['rollback'] as const, cycles: 2 }
  t.same(
    [0, 1].map((i) => rollbackAimOf(only, i, 0.5).aim),
    ['rollback', 'rollback'],
  )
  t.same(
    [0, 1].map((i) => rollbackAimOf(only, i, 0.5).fraction(0.5)),
    [0.25, 0.75],
  )
  t.equal(rollbackAimOf({ aims: ['rollback'], cycles: 2 }, 0, 0.1).aim, 'trial-boot', 'aims restrict only a stratified run')
  t.equal(rollbackAimOf({ cycles: 10 }, 5, 0.9).fraction(0.3), 0.3)
})

// The offline judge of the crash-point replay on a UEFI PC (crash-replay.ts judgeUefi), on GPTs
// that sgdisk wrote: a valid table boots the flagged slot; a primary array whose CRC is wrong is
// replaced by the backup (as OVMF rewrites it) and the backup's flags decide; with both tables
// invalid, or no EFI system partition, nothing boots. The legacy-BIOS judge bricks on the same
// invalid primary (the kernel sees no partitions).
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import { tmpDir, type Teardown } from '../test-support/test-helpers.ts'
import { judge, judgeUefi } from './crash-replay.ts'

const SS = 512
const PRIMARY = SS * 2 + 128 * 128
const BACKUP = 128 * 128 + SS
const MiB = 1 << 20

async function disk(t: Teardown, esp: boolean): Promise<Buffer> {
  const dir = tmpDir(t, 'labhost-judge-')
  const file = path.join(dir, 'disk.img')
  fs.writeFileSync(file, '')
  fs.truncateSync(file, 64 * MiB)
  await execa('sgdisk', [
    '-n',
    '1:2048:+8M',
    '-c',
    '1:rootA',
    '-n',
    '2:0:+8M',
    '-c',
    '2:rootB',
    ...(esp ? ['-n', '3:0:+4M', '-t', '3:ef00'] : []),
    '-A',
    '1:set:2',
    file,
  ])
  return fs.readFileSync(file)
}
const slots = { A: { offset: 2048 * SS, bytes: 8 * MiB }, B: { offset: 2048 * SS + 8 * MiB, bytes: 8 * MiB } }
const whole = { A: 'old', B: 'new' } as const
const regions = (d: Buffer) => [Buffer.from(d.subarray(0, PRIMARY)), Buffer.from(d.subarray(d.length - BACKUP))] as const
/** Flip the bootable attribute of both root entries in an array at `at`, without touching any CRC. */
const naive = (b: Buffer, at: number) => {
  for (const e of [0, 1]) b[at + e * 128 + 48]! ^= 0x04
}

t.test('a valid GPT boots the flagged slot', async (t) => {
  const d = await disk(t, true)
  const [p, b] = regions(d)
  t.same(judgeUefi(p, b, d.length, SS, slots, whole), { boots: 'old', slot: 'A' })
})

t.test('an invalid primary array: the firmware restores the primary from the backup, whose flags decide', async (t) => {
  const d = await disk(t, true)
  const [p, b] = regions(d)
  naive(p, 2 * SS)
  t.same(judgeUefi(p, b, d.length, SS, slots, whole), { boots: 'old', slot: 'A', restored: true }, 'the backup still flags A')
  t.match(judge(p, SS, slots, whole), { boots: 'nothing', why: /kernel: primary entry array CRC wrong/ }, 'on a BIOS PC the same disk bricks')
  // a backup that flags B (its CRCs right) behind the broken primary: B boots
  const file = path.join(tmpDir(t, 'labhost-judge-'), 'b.img')
  fs.writeFileSync(file, d)
  await execa('sgdisk', ['-A', '1:clear:2', '-A', '2:set:2', file])
  const [, flagsB] = regions(fs.readFileSync(file))
  t.same(judgeUefi(p, flagsB, d.length, SS, slots, whole), { boots: 'new', slot: 'B', restored: true }, 'a backup flagging B boots B')
})

t.test('both tables invalid, or no ESP: nothing boots', async (t) => {
  const d = await disk(t, true)
  const [p, b] = regions(d)
  naive(p, 2 * SS)
  naive(b, 0)
  t.match(judgeUefi(p, b, d.length, SS, slots, whole), { boots: 'nothing', why: /neither the primary nor the backup GPT is valid/ })
  const e = await disk(t, false)
  const [pe, be] = regions(e)
  t.match(judgeUefi(pe, be, e.length, SS, slots, whole), { boots: 'nothing', why: /no EFI system partition/ })
  t.same(judge(pe, SS, slots, whole), { boots: 'old', slot: 'A' }, 'which a BIOS PC does not need')
})

t.test('a flagged slot without a whole image does not boot', async (t) => {
  const d = await disk(t, true)
  const [p, b] = regions(d)
  t.match(judgeUefi(p, b, d.length, SS, slots, { A: null, B: 'new' }), { boots: 'nothing', why: /slot A is flagged but does not hold a whole image/ })
})

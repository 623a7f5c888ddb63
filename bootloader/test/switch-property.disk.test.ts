// Property test: many random valid GPTs made by sgdisk (disk sizes, entry counts, root entry
// positions, names, other partitions and their attributes, 512 and 4096-byte sectors).
// A -> B -> A: headers never change, the array CRC stays valid, one sector changes per region,
// and the end state is byte-identical to the start. Reproduce a failure with LABHOST_SEED.
import t from 'tap'
import { Disk } from '../../lib/blockdev.ts'
import { differingBlocks, loop, prng, readRange, seedFromEnv, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { isValid, readGpt, type Gpt } from '../gpt.ts'
import { otherSlot, slotStatus, type SlotId } from '../slots.ts'
import { applySwitch, planSwitch, MAX_NAME_UNITS_WITH_ROOM } from '../switch.ts'
import { makeGptDisk, sgdiskVerify, type PartSpec } from '../../test-support/gpt-fixtures.ts'

const seed = seedFromEnv()
const CASES = Number(process.env.LABHOST_PROPERTY_CASES ?? 60)
const rnd = prng(seed)
const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1))
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!
const ALPHABET = [...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.λäßé']
const name = (max: number) => Array.from({ length: int(1, max) }, () => pick(ALPHABET)).join('')
const OTHER_BITS = [0, 1, 48, 49, 50, 55, 60, 62, 63]

function regions(file: string, gpt: Gpt): { primary: Buffer; backup: Buffer } {
  const ss = gpt.sectorSize
  const primaryEnd = Number(gpt.primary.header!.firstUsableLba) * ss
  const backupStart = Number(gpt.backup.header!.entriesLba) * ss
  const end = (Number(gpt.lastLba) + 1) * ss
  return { primary: readRange(file, 0, primaryEnd), backup: readRange(file, backupStart, end - backupStart) }
}

/** One random case: everything drawn from the PRNG, in the order the draws have always been made (a seed gives the same cases). */
function drawCase(i: number) {
  const sectorSize = rnd() < 0.25 ? 4096 : 512
  const perSector = sectorSize / 128
  const tableEntries = pick([128, 128, int(4, 256), int(perSector, 64)])
  // the root pair: adjacent entries in one array sector
  let k: number
  do k = int(1, tableEntries - 1)
  while (Math.floor((k - 1) / perSector) !== Math.floor(k / perSector))
  const active: SlotId = rnd() < 0.5 ? 'A' : 'B'
  const names = { A: `A${name(MAX_NAME_UNITS_WITH_ROOM - 1)}`, B: `B${name(35)}` }
  const parts: PartSpec[] = [
    { number: k, name: names.A, sizeKiB: int(1, 16) * 64, attrs: active === 'A' ? [2] : [] },
    { number: k + 1, name: names.B, sizeKiB: int(1, 16) * 64, attrs: active === 'B' ? [2] : [] },
  ]
  const used = new Set([k, k + 1])
  for (let n = int(0, Math.min(6, tableEntries - 2)); n > 0; n--) {
    let num: number
    do num = int(1, tableEntries)
    while (used.has(num))
    used.add(num)
    parts.push({ number: num, name: name(36), sizeKiB: int(1, 8) * 64, attrs: OTHER_BITS.filter(() => rnd() < 0.3) })
  }
  const label = `case ${i}: ${sectorSize}B sectors, ${tableEntries} entries, roots at ${k}/${k + 1}, ${parts.length} partitions, ${active} active`
  const diskBytes = int(16, 128) * (1 << 20)
  const ordered = rnd() < 0.5 ? parts : parts.reverse()
  return { sectorSize, tableEntries, active, names, parts: ordered, label, diskBytes }
}

// The cases are drawn first, in order; then made and checked side by side, a few at a time: most
// of a case is sgdisk, which syncs and sleeps while the kernel re-reads the table.
const PARALLEL = 8

t.test(`${CASES} random GPTs, A -> B -> A (seed ${seed})`, async (t) => {
  const cases = Array.from({ length: CASES }, (_, i) => drawCase(i))
  let failed = 0
  const check = async ({ sectorSize, tableEntries, active, names, parts, label, diskBytes }: ReturnType<typeof drawCase>) => {
    const dir = tmpDir(t)
    const file = sparseFile(`${dir}/disk.img`, diskBytes)
    const target = sectorSize === 512 ? file : await loop(t, file, { sectorSize })
    await makeGptDisk(target, { parts, tableEntries })

    const disk = Disk.open(target)
    try {
      const g0 = readGpt(disk)
      const start = regions(target, g0)
      const to = otherSlot(active)
      const plan = planSwitch(disk, g0, to, names)
      await applySwitch(disk, plan, names)
      const g1 = readGpt(disk)
      const mid = regions(target, g1)
      const ok1 =
        isValid(g1.primary) && isValid(g1.backup) && slotStatus(g1, names).active === to && g1.primary.header!.entriesCrc === g0.primary.header!.entriesCrc
      const primaryDiff = differingBlocks(start.primary, mid.primary, sectorSize)
      const backupDiff = differingBlocks(start.backup, mid.backup, sectorSize)
      const arraySector = Number(g0.primary.header!.entriesLba) + plan.arraySector
      const sameEntries =
        JSON.stringify(
          g1.entries.map((e) => ({ ...e, attributes: 0, legacyBootable: 0 })),
          (_k, v) => (typeof v === 'bigint' ? String(v) : v),
        ) ===
        JSON.stringify(
          g0.entries.map((e) => ({ ...e, attributes: 0, legacyBootable: 0 })),
          (_k, v) => (typeof v === 'bigint' ? String(v) : v),
        )
      const verify = await sgdiskVerify(target)
      await applySwitch(disk, planSwitch(disk, g1, active, names), names)
      const end = regions(target, readGpt(disk))
      const fine =
        ok1 &&
        primaryDiff.length === 1 &&
        primaryDiff[0] === arraySector &&
        backupDiff.length === 1 &&
        sameEntries &&
        /No problems found/.test(verify) &&
        end.primary.equals(start.primary) &&
        end.backup.equals(start.backup)
      if (!fine) {
        failed++
        t.fail(label, {
          ok1,
          primaryDiff,
          arraySector,
          backupDiff,
          sameEntries,
          verify,
          roundTrip: end.primary.equals(start.primary) && end.backup.equals(start.backup),
          seed,
        })
      }
    } finally {
      disk.close()
    }
  }
  let next = 0
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < cases.length) await check(cases[next++]!)
    }),
  )
  if (!failed) t.pass(`${CASES} cases held every invariant`)
})

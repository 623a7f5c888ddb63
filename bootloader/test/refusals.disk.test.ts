// Every refusal of DESIGN §3.6: a distinct exit code, a clear message, and a disk whose every
// byte is unchanged.
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, hashWhole, loop, runCli, sparseFile, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { makeGptDisk, rewriteBackupValid, STANDARD_LAYOUT, type GptDiskSpec } from '../../test-support/gpt-fixtures.ts'

const DISK_BYTES = 48 << 20

interface Case {
  name: string
  spec?: GptDiskSpec
  damage?: (dev: string, sectorSize: number) => void
  args?: string[]
  code: number
  message: RegExp
}

const withAttrs = (a: number[], b: number[]): GptDiskSpec => ({
  parts: STANDARD_LAYOUT.parts.map((p) => (p.number === 1 ? { ...p, attrs: a } : p.number === 2 ? { ...p, attrs: b } : p)),
})

const cases: Case[] = [
  {
    name: 'invalid primary entry-array CRC',
    damage: (f, ss) => xorRange(f, 2 * ss + 2 * 128 + 60, Buffer.from([0x01])),
    code: ExitCode.gptPrimaryInvalid,
    message: /primary GPT .* invalid: entry-array CRC32/,
  },
  {
    name: 'invalid primary header CRC',
    damage: (f, ss) => xorRange(f, ss + 40, Buffer.from([0x01])),
    code: ExitCode.gptPrimaryInvalid,
    message: /primary GPT .* invalid: header CRC32/,
  },
  {
    name: 'corrupt backup header',
    damage: (f, ss) => xorRange(f, DISK_BYTES - ss + 20, Buffer.from([0x10])),
    code: ExitCode.gptBackupInvalid,
    message: /backup GPT .* invalid/,
  },
  {
    name: 'root entries in different sectors',
    spec: {
      parts: [
        { number: 1, name: 'rootA', sizeKiB: 8192, attrs: [2] },
        { number: 3, name: 'persistent', sizeKiB: 2048 },
        { number: 40, name: 'rootB', sizeKiB: 8192 },
      ],
    },
    code: ExitCode.slotsSplitSectors,
    message: /different sectors/,
  },
  {
    name: 'name tail without room',
    spec: {
      parts: [
        { number: 1, name: 'rootA-' + 'x'.repeat(30), sizeKiB: 8192, attrs: [2] },
        { number: 2, name: 'rootB-' + 'y'.repeat(30), sizeKiB: 8192 },
      ],
    },
    args: ['--slot-names', `rootA-${'x'.repeat(30)},rootB-${'y'.repeat(30)}`],
    code: ExitCode.nameTailFull,
    message: /no room for the CRC compensation/,
  },
  { name: 'both slots flagged', spec: withAttrs([2], [2]), code: ExitCode.slotFlagsAmbiguous, message: /both root slots are flagged/ },
  { name: 'neither slot flagged', spec: withAttrs([], []), code: ExitCode.slotFlagsAmbiguous, message: /no root slot is flagged/ },
  {
    name: 'another partition flagged too',
    spec: { parts: [...STANDARD_LAYOUT.parts.slice(0, 2), { number: 3, name: 'persistent', sizeKiB: 2048, attrs: [2] }] },
    code: ExitCode.slotFlagsAmbiguous,
    message: /partition\(s\) 3 also carry/,
  },
  {
    name: 'no root slots',
    spec: { parts: [{ number: 1, name: 'data', sizeKiB: 8192 }] },
    code: ExitCode.slotsNotFound,
    message: /no partitions? named "rootA"/,
  },
  {
    name: 'valid backup that disagrees outside the root sector',
    spec: { parts: [...STANDARD_LAYOUT.parts, { number: 9, name: 'user', sizeKiB: 1024 }] },
    damage: (f, ss) =>
      rewriteBackupValid(f, ss, (e) => {
        e[8 * 128 + 56] = 'U'.charCodeAt(0)
      }),
    code: ExitCode.gptMismatch,
    message: /disagree beyond the root-slot sector/,
  },
]

// Each case on a disk of its own: they run side by side (tap's jobs), most of a case being
// sgdisk, which syncs and sleeps while the kernel re-reads the table, and the CLI starting.
t.test('every refusal, on disks of their own, side by side', { jobs: 10 }, async (t) => {
  for (const sectorSize of [512, 4096]) {
    for (const c of cases) {
      // sector layout differs on 4Kn: 32 entries share one sector, so pick an entry beyond it.
      const spec =
        sectorSize === 4096 && c.name === 'root entries in different sectors'
          ? {
              parts: [
                { number: 1, name: 'rootA', sizeKiB: 8192, attrs: [2] },
                { number: 40, name: 'rootB', sizeKiB: 8192 },
              ],
            }
          : (c.spec ?? STANDARD_LAYOUT)
      t.test(`${sectorSize}: ${c.name}`, async (t) => {
        const dir = tmpDir(t)
        const dev = await loop(t, sparseFile(`${dir}/disk.img`, DISK_BYTES), { sectorSize })
        await makeGptDisk(dev, spec)
        c.damage?.(dev, sectorSize)
        const before = hashWhole(dev)
        const r = await runCli(['slots', 'switch', '--disk', dev, '--to', 'B', ...(c.args ?? [])])
        t.equal(r.code, c.code, `exit code ${c.code}`, failDiag(r))
        t.match(r.stderr, c.message)
        t.match(r.stderr, /hint: .*nothing was written/, 'the hint says what to do and that nothing was written')
        t.equal(r.stderr.trim().split('\n').length, 2, 'one error line and one hint line')
        t.equal(hashWhole(dev), before, 'the disk is byte-identical')
        const json = await runCli(['slots', 'switch', '--disk', dev, '--to', 'B', '--json', ...(c.args ?? [])])
        t.equal(JSON.parse(json.stdout).exitCode, c.code, '--json carries the same code')
      })
    }
  }
})

t.test('a missing disk', async (t) => {
  const r = await runCli(['slots', 'status', '--disk', '/dev/does-not-exist'])
  t.equal(r.code, ExitCode.notFound)
  t.match(r.stderr, /does not exist/)
})

t.test('usage errors', async (t) => {
  t.equal((await runCli(['slots', 'switch', '--disk', '/dev/null'])).code, ExitCode.usage, 'missing --to')
  t.equal((await runCli(['slots', 'switch', '--disk', '/dev/null', '--to', 'C'])).code, ExitCode.usage, 'bad slot')
  t.equal((await runCli(['frobnicate'])).code, ExitCode.usage, 'unknown command')
  t.equal((await runCli(['slots', 'status', '--bogus'])).code, ExitCode.usage, 'unknown option')
  const help = await runCli(['slots', 'switch', '--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /usage: labhost slots switch --disk/)
})

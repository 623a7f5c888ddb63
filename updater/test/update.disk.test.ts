// labhost update from a local image directory, on a disk laid out by the test layout: the
// inactive slot and the GPT sector are all it writes, and every bad input leaves the disk,
// the running slot and the state untouched.
import crypto from 'node:crypto'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { FAULTS } from '../../lib/faults.ts'
import { run } from '../../lib/exec.ts'
import { differingBlocks, failDiag, hashWhole, readRange, runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'
import { frameSizeOf, generateKeyPair, hashChunks, readPrivateKey, signManifest, type Manifest } from '../../image-format/manifest.ts'
import { compressFramed } from '../../image-format/zstd-frames.ts'
import { loadRecipe } from '../../image-build/recipe.ts'
import { runUpdate } from '../update.ts'
import { buildImages, layout, makeHost, protectedParts, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-update-test-')
let images: Images
let keys: Images['keys']
let v1 = ''
let v2 = ''

t.before(async () => {
  images = await buildImages(dir)
  ;({ keys, v1, v2 } = images)
})

const host = (t: Test) => makeHost(t, images)

/** A copy of an image directory without root.img, so the update reads the zstd transport file. */
function transportOnly(t: Test, src: string): string {
  const d = tmpDir(t)
  for (const f of ['manifest.json', 'root.img.zst']) fs.copyFileSync(`${src}/${f}`, `${d}/${f}`)
  return d
}

/** A copy of an image directory with its manifest changed and signed again by the trusted key. */
function resigned(t: Test, src: string, change: (m: Manifest) => void): string {
  const d = tmpDir(t)
  fs.cpSync(src, d, { recursive: true })
  const m = JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8')) as Manifest
  change(m)
  fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(signManifest(m, readPrivateKey(keys.privateKeyFile))))
  return d
}

t.test('update 1.0.0 -> 2.0.0 writes slot B and one GPT sector (and its mirror), arms the trial', async (t) => {
  const h = await host(t)
  const before = { head: readRange(h.disk, 0, MiB), tail: readRange(h.disk, fs.statSync(h.disk).size - MiB, MiB), slotA: hashWhole(`${v1}/root.img`) }
  const outsideB = () => {
    const b = h.plan[1]!
    const size = fs.statSync(h.disk).size
    return crypto
      .createHash('sha256')
      .update(readRange(h.disk, MiB, b.firstLba * 512 - MiB))
      .update(readRange(h.disk, (b.lastLba + 1) * 512, size - MiB - (b.lastLba + 1) * 512))
      .digest('hex')
  }
  const outside = outsideB()
  const dry = await runCli(['update', v2, '--dry-run', '--json', ...h.args])
  t.equal(dry.code, 0, 'dry run exits 0', failDiag(dry))
  t.same(JSON.parse(dry.stdout).to.slot, 'B')
  t.equal(readRange(h.disk, 0, MiB).equals(before.head), true, '--dry-run writes nothing')

  const r = await runCli(['update', v2, ...h.args])
  t.equal(r.code, 0, 'update exits 0', failDiag(r))
  const slotB = readRange(h.disk, h.plan[1]!.firstLba * 512, fs.statSync(`${v2}/root.img`).size)
  t.ok(slotB.equals(fs.readFileSync(`${v2}/root.img`)), 'slot B holds the 2.0.0 image')
  t.equal(outsideB(), outside, 'slot A and every other partition: unchanged')
  t.same(differingBlocks(before.head, readRange(h.disk, 0, MiB), 512), [2], 'primary region: only the root-entry sector changed')
  t.same(differingBlocks(before.tail, readRange(h.disk, fs.statSync(h.disk).size - MiB, MiB), 512).length, 1, 'backup region: only its mirror')
  const d = openGptDisk(h.disk)
  t.equal(slotStatus(readGpt(d)).active, 'B', 'B boots next')
  d.close()
  const st = JSON.parse((await runCli(['status', '--json', ...h.args.slice(0, 6)])).stdout)
  t.same(st.trial, { slot: 'B', bootsLeft: 3, version: '2.0.0' }, 'B is on trial')
  const again = await runCli(['update', v2, ...h.args])
  t.equal(again.code, ExitCode.switchNotBooted, 'a second update before rebooting is refused: the switch is not booted yet', failDiag(again))
  t.match(again.stderr, /running slot A, but the GPT flags slot B to boot next/)
  // flags that name no one slot are another failure, with their own code
  await run('sgdisk', ['-A', `${h.plan[0]!.number}:set:2`, h.disk])
  const ambiguous = await runCli(['update', v2, ...h.args])
  t.equal(ambiguous.code, ExitCode.slotFlagsAmbiguous, 'both slots flagged: ambiguous flags, not a pending switch', failDiag(ambiguous))
  t.not(ExitCode.switchNotBooted, ExitCode.slotFlagsAmbiguous)
})

t.test("update --dry-run --json carries the commit sector: its LBA and bytes are what the update then writes there, and the mirror's", async (t) => {
  const h = await host(t)
  const dry = await runCli(['update', v2, '--dry-run', '--json', ...h.args])
  t.equal(dry.code, 0, 'dry run exits 0', failDiag(dry))
  const { commit } = JSON.parse(dry.stdout) as {
    commit: {
      from: string
      to: string
      sectorSize: number
      compensationBytes: string
      rollbackSector: string
      writes: { region: string; lba: string; hex: string }[]
    }
  }
  t.match(commit, { from: 'A', to: 'B', sectorSize: 512, compensationBytes: /^[0-9a-f]{8}$/ }, 'the switch from A to B')
  t.same(
    commit.writes.map((w) => w.region),
    ['primary-array', 'backup-array'],
    'the commit sector, then its mirror',
  )
  const [sector, mirror] = [commit.writes[0]!, commit.writes[1]!]
  t.equal(sector.lba, '2', 'the commit sector: LBA 2, the first sector of the primary entry array')
  t.ok(readRange(h.disk, 2 * 512, 512).equals(Buffer.from(commit.rollbackSector, 'hex')), 'its rollback sector is what the disk holds now')
  t.notOk(readRange(h.disk, 2 * 512, 512).equals(Buffer.from(sector.hex, 'hex')), 'the disk does not hold the commit sector yet')
  const human = await runCli(['update', v2, '--dry-run', ...h.args])
  t.match(
    human.stdout,
    new RegExp(
      `root entries share array sector 0; CRC compensation in slot [AB]'s name tail: ${commit.compensationBytes}\\n.*would write primary-array LBA 2: commit: boot slot B instead of A`,
    ),
    'printed as slots switch --dry-run prints it',
  )

  const r = await runCli(['update', v2, ...h.args])
  t.equal(r.code, 0, 'update exits 0', failDiag(r))
  t.ok(
    readRange(h.disk, Number(sector.lba) * 512, 512).equals(Buffer.from(sector.hex, 'hex')),
    'the update wrote exactly the planned sector at the planned LBA',
  )
  t.ok(readRange(h.disk, Number(mirror.lba) * 512, 512).equals(Buffer.from(mirror.hex, 'hex')), 'and the planned mirror at its LBA')
})

const refusals: { name: string; source: (t: Test) => string; code: number; message: RegExp }[] = [
  {
    name: 'bad signature',
    source: (t) => {
      const d = tmpDir(t)
      fs.cpSync(v2, d, { recursive: true })
      const m = JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8'))
      m.version = '2.0.1'
      fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(m))
      return d
    },
    code: ExitCode.signatureInvalid,
    message: /signature does not match/,
  },
  {
    name: 'signed by another key',
    source: (t) => {
      const d = tmpDir(t)
      const k = generateKeyPair(`${d}/k`)
      fs.cpSync(v2, `${d}/img`, { recursive: true })
      const m = JSON.parse(fs.readFileSync(`${d}/img/manifest.json`, 'utf8'))
      fs.writeFileSync(`${d}/img/manifest.json`, JSON.stringify(signManifest(m, readPrivateKey(k.privateKeyFile))))
      return `${d}/img`
    },
    code: ExitCode.signatureInvalid,
    message: /signature does not match/,
  },
  {
    name: 'manifest for a different layout',
    source: (t) =>
      resigned(t, v2, (m) => {
        m.layout.slots = { A: 'sysA', B: 'sysB' }
      }),
    code: ExitCode.manifestInvalid,
    message: /layout with root slots sysA\/sysB/,
  },
  {
    name: 'image larger than the slot',
    source: (t) =>
      resigned(t, v2, (m) => {
        m.image.size = (layout.slotSizeMiB + 1) * MiB
        m.image.chunks = Array(layout.slotSizeMiB + 1).fill(m.image.chunks[0])
        delete m.transport.frames
        delete m.blocks
      }),
    code: ExitCode.imageTooSmall,
    message: /larger than slot B/,
  },
  { name: 'not newer than the running version', source: () => v1, code: ExitCode.notNewer, message: /1\.0\.0 is not newer than the running 1\.0\.0/ },
  {
    name: 'truncated download',
    source: (t) => {
      const d = transportOnly(t, v2)
      fs.truncateSync(`${d}/root.img.zst`, Math.floor(fs.statSync(`${d}/root.img.zst`).size / 2))
      return d
    },
    code: ExitCode.imageTruncated,
    message: /ends early/,
  },
  {
    name: 'corrupted compressed stream',
    source: (t) => {
      const d = transportOnly(t, v2)
      const f = `${d}/root.img.zst`
      xorRange(f, Math.floor(fs.statSync(f).size / 2), Buffer.from([0xff, 0xff, 0xff, 0xff]))
      return d
    },
    code: ExitCode.hashMismatch,
    message: /not a good zstd stream|does not match the signed manifest/,
  },
  {
    name: 'transport not framed as signed (one zstd stream of the same image)',
    source: (t) => {
      const d = transportOnly(t, v2)
      spawnSync('zstd', ['-q', '-f', '-o', `${d}/root.img.zst`, `${v2}/root.img`])
      return d
    },
    code: ExitCode.hashMismatch,
    message: /not a good zstd stream after 0 of \d+ bytes \(zstd: chunk 0's frames .*do not decompress: frame \d/,
  },
]

for (const c of refusals) {
  t.test(`refused: ${c.name}; running slot, GPT and state untouched`, async (t) => {
    const h = await host(t)
    const source = c.source(t)
    const before = { disk: wholeDisk(h), ...protectedParts(h) }
    const r = await runCli(['update', source, ...h.args])
    t.equal(r.code, c.code, `exit ${c.code}`, failDiag(r))
    t.match(r.stderr, c.message)
    t.match(r.stderr, /hint: /)
    const after = protectedParts(h)
    t.equal(after.slotA, before.slotA, 'running slot A unchanged')
    t.equal(after.gpt, before.gpt, 'GPT regions unchanged')
    t.equal(after.state, before.state, 'no trial armed')
    if (!['truncated download', 'corrupted compressed stream'].includes(c.name))
      t.equal(wholeDisk(h), before.disk, 'refused before writing: the whole disk is byte-identical')
  })
}

for (const readBack of ['during', 'after']) {
  t.test(`hash mismatch in the middle of the stream (--read-back ${readBack}): reported at that chunk, nothing switched`, async (t) => {
    const h = await host(t)
    const m2 = JSON.parse(fs.readFileSync(`${v2}/manifest.json`, 'utf8')) as Manifest
    const d = tmpDir(t)
    fs.copyFileSync(`${v2}/root.img`, `${d}/bad.img`)
    // a chunk of data (not zeros) after the first few
    const chunk = [...Array(40).keys()].find((i) => i >= 5 && readRange(`${v2}/root.img`, i * MiB, MiB).some((b) => b !== 0))!
    xorRange(`${d}/bad.img`, chunk * MiB + 17, Buffer.from([0x40]))
    // framed as the manifest says, the frame sizes and the transport's hash signed: only the
    // image's chunk hashes can tell
    const frames = await compressFramed(`${d}/bad.img`, `${d}/root.img.zst`, frameSizeOf(m2), loadRecipe('test').recipe.transport.level)
    fs.rmSync(`${d}/bad.img`)
    const tr = hashChunks(`${d}/root.img.zst`)
    const signed = signManifest({ ...m2, transport: { ...m2.transport, size: tr.size, sha256: tr.sha256, frames } }, readPrivateKey(keys.privateKeyFile))
    fs.writeFileSync(`${d}/manifest.json`, JSON.stringify(signed))
    const gptBefore = readRange(h.disk, 0, MiB)
    const slotA = readRange(h.disk, h.plan[0]!.firstLba * 512, h.plan[1]!.firstLba * 512 - h.plan[0]!.firstLba * 512)
    const r = await runCli(['update', d, '--read-back', readBack, ...h.args])
    t.equal(r.code, ExitCode.hashMismatch)
    t.match(r.stderr, new RegExp(`reading slot B back from .*: chunk ${chunk} `))
    t.ok(readRange(h.disk, 0, MiB).equals(gptBefore), 'GPT unchanged')
    t.ok(readRange(h.disk, h.plan[0]!.firstLba * 512, slotA.length).equals(slotA), 'active slot A unchanged')
    t.same(fs.readdirSync(h.state), [], 'no trial armed')
  })
}

t.test("the trial's boots come from the signed manifest (the recipe's trial.boots); --trial-boots overrides", async (t) => {
  t.equal((JSON.parse(fs.readFileSync(`${v2}/manifest.json`, 'utf8')) as Manifest).trial?.boots, 3, 'the test recipe signs trial.boots 3 into its manifest')
  const five = resigned(t, v2, (m) => {
    m.trial = { boots: 5 }
  })
  for (const [args, boots] of [
    [[], 5],
    [['--trial-boots', '2'], 2],
  ] as const) {
    const h = await host(t)
    const r = await runCli(['update', five, ...args, ...h.args])
    t.equal(r.code, 0, failDiag(r))
    const st = JSON.parse((await runCli(['status', '--json', ...h.args.slice(0, 6)])).stdout)
    t.same(st.trial, { slot: 'B', bootsLeft: boots, version: '2.0.0' }, `${args.join(' ') || 'no --trial-boots'}: ${boots} boots on trial`)
  }
})

t.test('a byte corrupted on the disk after writing is caught by the read-back', async (t) => {
  const h = await host(t)
  const gptBefore = readRange(h.disk, 0, MiB)
  const corruptAt = h.plan[1]!.firstLba * 512 + 7 * MiB + 3
  let corrupted = 0
  await t.rejects(
    runUpdate({
      source: v2,
      trustedKey: keys.publicKeyFile,
      paths: h.lib,
      // the chunk is corrupted once, between its write and its read-back
      beforeReadBack: (index, at, length) => {
        if (at <= corruptAt && corruptAt < at + length && !corrupted++) xorRange(h.disk, corruptAt, Buffer.from([0x01]))
      },
    }),
    { code: 'hashMismatch', message: /reading slot B back .*: chunk 7 / },
  )
  t.ok(readRange(h.disk, 0, MiB).equals(gptBefore), 'no switch')
  t.same(fs.readdirSync(h.state), [], 'no trial armed')
})

// The mutant check for the test above: an updater that skips the read-back (lib/faults.ts,
// SKIP_READBACK; never in the release build) switches to a slot corrupted after its write. So the
// read-back, not something else, is what refuses it.
t.test('without the read-back (fault SKIP_READBACK) a slot corrupted after its write is switched to', async (t) => {
  for (const mutant of [false, true]) {
    const h = await host(t)
    const corruptAt = h.plan[1]!.firstLba * 512 + 7 * MiB + 3
    if (mutant) process.env[FAULTS.SKIP_READBACK] = '1'
    try {
      const outcome = await runUpdate({
        source: v2,
        trustedKey: keys.publicKeyFile,
        paths: h.lib,
        // corrupted once the write is done, before anything reads it back
        phase: (p) => {
          if (p === 'verify') xorRange(h.disk, corruptAt, Buffer.from([0x01]))
        },
      }).then(
        () => 'switched',
        (e: { code?: string }) => e.code,
      )
      t.equal(outcome, mutant ? 'switched' : 'hashMismatch', mutant ? 'the mutant switches to the corrupted slot' : 'the real updater refuses it')
      const d = openGptDisk(h.disk)
      t.equal(slotStatus(readGpt(d)).active, mutant ? 'B' : 'A', 'the flagged slot afterwards')
      d.close()
    } finally {
      delete process.env[FAULTS.SKIP_READBACK]
    }
  }
})

t.test('--read-back takes during or after; anything else is a usage error before anything is read', async (t) => {
  const h = await host(t)
  const before = wholeDisk(h)
  const r = await runCli(['update', v2, '--read-back', 'sometimes', ...h.args])
  t.equal(r.code, ExitCode.usage)
  t.match(r.stderr, /--read-back "sometimes" is neither during nor after/)
  t.equal(wholeDisk(h), before, 'disk unchanged')
  const ok = await runCli(['update', v2, '--read-back', 'during', '--json', ...h.args])
  t.equal(ok.code, 0, 'with --read-back during the update completes')
  const b = h.plan[1]!
  const m = JSON.parse(fs.readFileSync(`${v2}/manifest.json`, 'utf8')) as Manifest
  t.equal(
    crypto
      .createHash('sha256')
      .update(readRange(h.disk, b.firstLba * 512, m.image.size))
      .digest('hex'),
    m.image.sha256,
    'slot B holds the image',
  )
})

// What keeps an update (and a hand-made switch or repair) from writing where it must not:
// partition boundaries checked before they are trusted, one writer per disk with a lock that dies
// with its holder, no switch during a trial, a table changed under an update never committed,
// and no other image or older version taken by accident. Each refusal leaves the disk byte-identical.
import fs from 'node:fs'
import { execa } from 'execa'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { lockDisk } from '../../lib/disk-lock.ts'
import { run } from '../../lib/exec.ts'
import { failDiag, labhostArgv, loop, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'
import { rewriteGptValid } from '../../test-support/gpt-fixtures.ts'
import { runUpdate } from '../update.ts'
import { buildImages, makeHost, slotBHolds, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'

const dir = tmpDir(t, 'labhost-guards-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

const ENTRY = 128
const setLbas = (entries: Buffer, index: number, first: bigint, last: bigint) => {
  entries.writeBigUInt64LE(first, index * ENTRY + 32)
  entries.writeBigUInt64LE(last, index * ENTRY + 40)
}
const lbasOf = (entries: Buffer, index: number) => ({ first: entries.readBigUInt64LE(index * ENTRY + 32), last: entries.readBigUInt64LE(index * ENTRY + 40) })

// rootA is entry 0, rootB entry 1 (the test layout); each case leaves a CRC-valid GPT
const crafted: { name: string; mutate: (e: Buffer, lastLba: bigint) => void; problem: RegExp }[] = [
  {
    name: 'rootB overlaps the running rootA',
    mutate: (e) => {
      const a = lbasOf(e, 0)
      setLbas(e, 1, a.first + 64n, a.last + 64n)
    },
    problem: /partition 2 "rootB" .* overlaps partition 1 "rootA"/,
  },
  {
    name: 'rootB starts at LBA 0 (over the MBR and the primary GPT)',
    mutate: (e) => {
      const b = lbasOf(e, 1)
      setLbas(e, 1, 0n, b.last - b.first)
    },
    problem: /partition 2 "rootB" .* outside the usable range/,
  },
  {
    name: 'rootB runs past the end of the disk',
    mutate: (e, lastLba) => {
      const b = lbasOf(e, 1)
      setLbas(e, 1, b.first, lastLba + 100n)
    },
    problem: /partition 2 "rootB" .* outside the usable range/,
  },
  {
    name: 'rootB ends before it starts',
    mutate: (e) => {
      const b = lbasOf(e, 1)
      setLbas(e, 1, b.last, b.first)
    },
    problem: /partition 2 "rootB" ends at LBA \d+, before it starts/,
  },
  {
    name: 'rootB overlaps the persistent partition',
    mutate: (e) => {
      const p = lbasOf(e, 2)
      const b = lbasOf(e, 1)
      setLbas(e, 1, b.first, p.first + 10n)
    },
    problem: /overlaps partition 2 "rootB"|partition 3 "persistent" .* overlaps/,
  },
]

for (const c of crafted) {
  t.test(`a CRC-valid GPT where ${c.name}: update, switch and status refuse, nothing written`, async (t) => {
    const h = await makeHost(t, images)
    const d = openGptDisk(h.disk)
    const lastLba = d.lastLba
    d.close()
    rewriteGptValid(h.disk, 512, (e) => c.mutate(e, lastLba))
    const before = wholeDisk(h)

    const up = await runCli(['update', images.v2, ...h.args])
    t.equal(up.code, ExitCode.gptLayoutInvalid, 'update: exit gptLayoutInvalid', failDiag(up))
    t.match(up.stderr, c.problem, 'the message names the partitions')
    t.match(up.stderr, /nothing was written/)
    t.equal(up.stderr.trim().split('\n').length <= 2, true, 'one line and its hint, no stack trace')
    const dry = await runCli(['update', images.v2, '--dry-run', ...h.args])
    t.equal(dry.code, ExitCode.gptLayoutInvalid, 'update --dry-run refuses too')
    const sw = await runCli(['slots', 'switch', '--disk', h.disk, '--to', 'B'])
    t.equal(sw.code, ExitCode.gptLayoutInvalid, 'slots switch: exit gptLayoutInvalid', failDiag(sw))
    const st = await runCli(['slots', 'status', '--disk', h.disk, '--json'])
    t.equal(st.code, 1, 'slots status calls the disk unhealthy')
    t.match(JSON.parse(st.stdout).layoutProblems.join('\n'), c.problem, 'slots status reports the problem')
    t.equal(wholeDisk(h), before, 'the disk is byte-identical')
  })
}

t.test('one writer per disk: update, switch and repair refuse while another holds the disk (exit 35)', async (t) => {
  const h = await makeHost(t, images)
  const before = wholeDisk(h)
  const lock = await lockDisk(h.disk, 'a test holding the disk')
  t.teardown(() => lock.release())
  for (const args of [
    ['update', images.v2, ...h.args],
    ['slots', 'switch', '--disk', h.disk, '--to', 'B'],
    ['slots', 'repair', '--disk', h.disk],
  ]) {
    const r = await runCli(args)
    t.equal(r.code, ExitCode.busy, `${args.slice(0, 2).join(' ')}: exit busy`, failDiag(r))
    t.match(r.stderr, new RegExp(`in use by another labhost process: pid ${process.pid} \\(a test holding the disk\\)`), 'names the holder')
  }
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
  await lock.release()
  const r = await runCli(['update', images.v2, ...h.args])
  t.equal(r.code, 0, 'once released, the update runs', failDiag(r))
})

t.test('a SIGKILLed update leaves no stale lock: the next update runs', async (t) => {
  const h = await makeHost(t, images)
  const child = execa(...labhostArgv('update', images.v2, '--announce-phases', ...h.args), { reject: false })
  let killed = false
  await new Promise<void>((resolve) => {
    child.stderr!.on('data', (d: Buffer) => {
      if (!killed && String(d).includes('LABHOST-PHASE write')) {
        killed = true
        child.kill('SIGKILL')
      }
    })
    void child.then(() => resolve())
  })
  t.ok(killed, 'the update was killed while writing')
  t.equal((await child).signal, 'SIGKILL')
  const r = await runCli(['update', images.v2, ...h.args])
  t.equal(r.code, 0, 'the next update is not refused as busy', failDiag(r))
  t.ok(slotBHolds(h, `${images.v2}/root.img`), 'and completes')
})

t.test('no hand-made switch or repair of the boot disk while a trial is pending, unless --ignore-trial', async (t) => {
  const h = await makeHost(t, images)
  const up = await runCli(['update', images.v2, ...h.args])
  t.equal(up.code, 0, 'update to 2.0.0: slot B on trial', failDiag(up))
  const before = wholeDisk(h)
  const paths = h.args.slice(0, 4) // --boot-file, --state-root: this host's files
  for (const args of [
    ['slots', 'switch', '--disk', h.disk, '--to', 'A', ...paths],
    ['slots', 'repair', '--disk', h.disk, ...paths],
  ]) {
    const r = await runCli(args)
    t.equal(r.code, ExitCode.trialPending, `${args.slice(0, 2).join(' ')}: exit trialPending`, failDiag(r))
    t.match(r.stderr, /slot B of .* is on trial [^]*--ignore-trial/)
  }
  t.equal(wholeDisk(h), before, 'nothing written')
  const other = tmpDir(t)
  fs.cpSync(h.disk, `${other}/copy.img`)
  const elsewhere = await runCli(['slots', 'switch', '--disk', `${other}/copy.img`, '--to', 'A', ...paths])
  t.equal(elsewhere.code, 0, "another disk than the booted one is not held by this host's trial", failDiag(elsewhere))
  const forced = await runCli(['slots', 'switch', '--disk', h.disk, '--to', 'A', '--ignore-trial', ...paths])
  t.equal(forced.code, 0, '--ignore-trial overrules it', failDiag(forced))
})

t.test('a GPT changed while the slot was written is never committed (exit gptChanged, no trial armed)', async (t) => {
  const h = await makeHost(t, images)
  const paths = { bootFile: h.lib.bootFile, stateRoot: h.lib.stateRoot, versionFile: h.lib.versionFile }
  let changed = false
  const err = await runUpdate({
    source: images.v2,
    trustedKey: images.keys.publicKeyFile,
    paths,
    // someone else rewrites the table mid-update (a partitioner that takes no lock): rootB renamed
    beforeReadBack: () => {
      if (changed) return
      changed = true
      rewriteGptValid(h.disk, 512, (e) => {
        e.write('X', ENTRY + 56 + 8, 'utf16le')
      })
    },
  }).then(
    () => null,
    (e: Error) => e,
  )
  t.ok(changed, 'the table was changed during the update')
  t.match(err, { code: 'gptChanged' }, 'the update refuses to commit')
  const d = openGptDisk(h.disk)
  const st = slotStatus(readGpt(d), { A: 'rootA', B: 'rootX' })
  d.close()
  t.equal(st.active, 'A', 'slot A still boots')
  t.same(fs.readdirSync(h.state, { recursive: true }), [], 'no trial was armed')
})

t.test('another image name, and versions in Debian order with hyphenated pre-releases', async (t) => {
  const h = await makeHost(t, images)
  const before = wholeDisk(h)
  const recipeFile = `${h.lib.versionFile.replace(/version$/, 'recipe')}`
  fs.writeFileSync(recipeFile, 'host 0123abcd\n')
  const other = await runCli(['update', images.v2, ...h.args])
  t.equal(other.code, ExitCode.otherImage, 'a "test" image on a host running "host": exit otherImage', failDiag(other))
  t.match(other.stderr, /is image "test", but this host runs image "host"/)
  t.equal(wholeDisk(h), before, 'nothing written')
  const allowed = await runCli(['update', images.v2, '--dry-run', '--allow-other-image', ...h.args])
  t.equal(allowed.code, 0, '--allow-other-image takes it', failDiag(allowed))
  fs.writeFileSync(recipeFile, 'test 0123abcd\n')

  const cases: [running: string, code: number][] = [
    ['2.0.0-rc1', 0],
    ['2.0.0~rc10', 0],
    ['1.99.99', 0],
    ['2.0.0', ExitCode.notNewer],
    ['2.0.0+b1', ExitCode.notNewer],
    ['10.0.0', ExitCode.notNewer],
    ['2.0.0.1', ExitCode.notNewer],
  ]
  for (const [running, code] of cases) {
    fs.writeFileSync(h.lib.versionFile, `${running}\n`)
    const r = await runCli(['update', images.v2, '--dry-run', ...h.args])
    t.equal(r.code, code, `running ${running}, image 2.0.0: ${code === 0 ? 'newer' : 'not newer'}`, failDiag(r))
  }
  t.equal(wholeDisk(h), before, 'nothing written')
})

t.test('a mounted target slot is never written (exit busy)', async (t) => {
  const h = await makeHost(t, images)
  const dev = await loop(t, h.disk)
  fs.writeFileSync(h.lib.bootFile, `SLOT=A\nDEVICE=${dev}\nDISK=${dev}\n`)
  const b = h.plan[1]!
  const slotB = await loop(t, h.disk, { offset: b.firstLba * 512, sizeLimit: (b.lastLba - b.firstLba + 1) * 512 })
  const mnt = tmpDir(t)
  fs.writeFileSync(`${mnt}/.keep`, '')
  await run('mkfs.ext4', ['-q', '-F', slotB])
  const before = wholeDisk(h)
  await run('mount', ['-o', 'ro', slotB, mnt])
  t.teardown(() => run('umount', [mnt]).catch(() => undefined))
  const r = await runCli(['update', images.v2, ...h.args])
  t.equal(r.code, ExitCode.busy, 'exit busy', failDiag(r))
  t.match(r.stderr, new RegExp(`slot B of ${dev} is mounted \\(${slotB}\\)`))
  await run('umount', [mnt])
  t.equal(wholeDisk(h), before, 'the disk is byte-identical')
  const ok = await runCli(['update', images.v2, ...h.args])
  t.equal(ok.code, 0, 'unmounted, the update runs', failDiag(ok))
})

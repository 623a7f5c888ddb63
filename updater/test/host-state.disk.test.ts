// labhost status and mark-good against a host's files laid out in a temp dir and a real GPT.
import fs from 'node:fs'
import t, { type Test } from 'tap'
import { failDiag, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { makeGptDisk, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'
import { writeTrialState } from '../../image-format/trial-state.ts'

async function host(t: Test, slot: 'A' | 'B') {
  const dir = tmpDir(t)
  const disk = sparseFile(`${dir}/disk.img`, 32 << 20)
  await makeGptDisk(disk, STANDARD_LAYOUT)
  fs.writeFileSync(`${dir}/boot`, `SLOT=${slot}\nDEVICE=/dev/sda1\nDISK=${disk}\n`)
  fs.writeFileSync(`${dir}/version`, '1.0.0\n')
  fs.mkdirSync(`${dir}/state`)
  const args = ['--boot-file', `${dir}/boot`, '--state-root', `${dir}/state`, '--version-file', `${dir}/version`]
  return { dir, disk, args }
}

const sector = Buffer.alloc(512)

t.test('status of a healthy host, as JSON and for Prometheus', async (t) => {
  const h = await host(t, 'A')
  const r = await runCli(['status', '--json', ...h.args])
  t.equal(r.code, 0, 'exits 0', failDiag(r))
  const s = JSON.parse(r.stdout)
  t.equal(s.version, '1.0.0')
  t.equal(s.booted.slot, 'A')
  t.equal(s.gpt.active, 'A')
  t.equal(s.trial, null)
  t.same(s.problems, [])
  const p = await runCli(['status', '--prometheus', '--out', `${h.dir}/metrics/labhost.prom`, ...h.args])
  t.equal(p.code, 0)
  const text = fs.readFileSync(`${h.dir}/metrics/labhost.prom`, 'utf8')
  t.match(text, /\nlabhost_image_info\{version="1\.0\.0",slot="A",next_slot="A"\} 1\n/)
  t.match(text, /\nlabhost_trial_pending 0\n/)
  t.match(text, /labhost_gpt_healthy 1/)
})

t.test('mark-good ends a trial of the running slot, once', async (t) => {
  const h = await host(t, 'B')
  writeTrialState(`${h.dir}/state`, {
    slot: 'B',
    bootsLeft: 2,
    version: '2.0.0',
    primaryLba: 2n,
    backupLba: 100n,
    committedSector: sector,
    rollbackSector: sector,
  })
  const before = JSON.parse((await runCli(['status', '--json', ...h.args])).stdout)
  t.same(before.trial, { slot: 'B', bootsLeft: 2, version: '2.0.0' })
  t.match(before.problems.join(), /running slot B, but slot A is flagged/, 'status notices the GPT flags a different slot')
  const m = await runCli(['mark-good', '--json', ...h.args])
  t.equal(m.code, 0)
  t.same(JSON.parse(m.stdout), { marked: true, slot: 'B', reason: 'slot B (version 2.0.0) marked good' })
  t.notOk(fs.existsSync(`${h.dir}/state/labhost/trial`), 'the trial file is gone: the initramfs will not roll back')
  const after = JSON.parse((await runCli(['status', '--json', ...h.args])).stdout)
  t.match(after.lastResult, { RESULT: 'good', SLOT: 'B', VERSION: '2.0.0', MARKED_AT: /^\d{4}-/ })
  const again = JSON.parse((await runCli(['mark-good', '--json', ...h.args])).stdout)
  t.equal(again.marked, false)
  t.equal(again.reason, 'no trial pending')
})

t.test('mark-good does not confirm a trial meant for the other slot', async (t) => {
  const h = await host(t, 'A')
  writeTrialState(`${h.dir}/state`, {
    slot: 'B',
    bootsLeft: 1,
    version: '2.0.0',
    primaryLba: 2n,
    backupLba: 100n,
    committedSector: sector,
    rollbackSector: sector,
  })
  const m = JSON.parse((await runCli(['mark-good', '--json', ...h.args])).stdout)
  t.equal(m.marked, false)
  t.match(m.reason, /trial is for slot B, but slot A is running/)
  t.ok(fs.existsSync(`${h.dir}/state/labhost/trial`), 'trial left in place')
})

t.test('status off a labhost host says so', async (t) => {
  const r = await runCli(['status', '--boot-file', '/nonexistent/boot', '--state-root', '/nonexistent'])
  t.equal(r.code, 1)
  t.match(r.stdout, /not booted by the labhost initramfs/)
})

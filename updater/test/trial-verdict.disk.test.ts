// labhost trial-check on a host disk that a real update left on trial (slot B, 2.0.0): checks
// that pass mark it good; checks still failing at the deadline write the saved sector back (slot
// A boots again, the backup mirrored, the result recorded); a sector that is no longer the one the
// update wrote, or saved addresses that point elsewhere, are refused with the disk unchanged.
import fs from 'node:fs'
import t, { type Test } from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'
import { readLastResult, readTrial } from '../host-state.ts'
import { judgeTrial, TrialConfigSchema } from '../trial-verdict.ts'
import { buildImages, makeHost, wholeDisk, type Host, type Images } from '../../test-support/update-fixtures.ts'

const dir = tmpDir(t, 'labhost-trial-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

/** A host that updated to 2.0.0 and rebooted into slot B, on trial. */
async function onTrial(t: Test): Promise<Host> {
  const h = await makeHost(t, images)
  const up = await runCli(['update', images.v2, ...h.args])
  t.equal(up.code, 0, 'update to 2.0.0', failDiag(up))
  fs.writeFileSync(h.lib.bootFile, `SLOT=B\nDEVICE=${h.device}\nDISK=${h.device}\n`)
  return h
}

const active = (h: Host) => {
  const d = openGptDisk(h.disk)
  try {
    const g = readGpt(d)
    const s = slotStatus(g)
    return { active: s.active, healthy: s.primaryValid && s.backupValid && s.tablesAgree }
  } finally {
    d.close()
  }
}

const config = (checks: string[][], deadlineSeconds = 60) =>
  TrialConfigSchema.parse({ deadlineSeconds, intervalSeconds: 1, checks: checks.map((run, i) => ({ name: `check${i}`, run })) })

t.test('checks that pass: the slot is marked good, nothing else written', async (t) => {
  const h = await onTrial(t)
  const before = wholeDisk(h)
  const v = await judgeTrial({ paths: h.lib, config: config([['true'], ['test', '-d', '/']]), uptime: () => 5 })
  t.equal(v.verdict, 'good')
  t.equal(readTrial(h.lib), null, 'the trial is over')
  t.equal(readLastResult(h.lib)?.RESULT, 'good')
  t.equal(wholeDisk(h), before, 'the disk is unchanged: slot B stays')
})

t.test('a check failing until the deadline: rolled back to slot A by the saved sector, recorded', async (t) => {
  const h = await onTrial(t)
  let now = 10
  let sleeps = 0
  const v = await judgeTrial({
    paths: h.lib,
    config: config([['true'], ['sh', '-c', 'echo sshd is down; exit 3']], 30),
    uptime: () => now,
    sleep: async () => {
      sleeps++
      now += 5
    },
  })
  t.equal(v.verdict, 'rolled-back')
  t.equal(sleeps, 4, 'retried until the deadline (10, 15, 20, 25 s), judged at 30 s')
  t.match(v.reason, /health check failed at 30 s after boot \(deadline 30 s\): check1 \(sh -c echo sshd is down; exit 3\) exited 3: sshd is down/)
  t.same(active(h), { active: 'A', healthy: true }, 'slot A boots next; both GPTs valid and agreeing')
  t.equal(readTrial(h.lib), null, 'the trial is over')
  t.match(readLastResult(h.lib), { RESULT: 'rolled-back', FROM: 'B', TO: 'A', VERSION: '2.0.0', FROM_VERSION: '1.0.0' })
})

t.test('labhost trial-check: exit trialFailed after the rollback; --dry-run writes nothing', async (t) => {
  const h = await onTrial(t)
  const cfg = `${tmpDir(t)}/trial.yaml`
  fs.writeFileSync(cfg, 'deadlineSeconds: 30\nchecks:\n  - name: sshd\n    run: [sh, -c, "exit 1"]\n')
  const paths = h.args.slice(0, 4)
  const before = wholeDisk(h)
  // this machine has been up for more than 30 s: the deadline has passed at the first round
  const dry = await runCli(['trial-check', '--config', cfg, '--dry-run', '--json', ...paths])
  t.equal(dry.code, ExitCode.trialFailed, 'dry run: the verdict is a rollback', failDiag(dry))
  t.equal(wholeDisk(h), before, '--dry-run wrote nothing')
  t.ok(readTrial(h.lib), 'the trial is still pending')
  const dryHuman = await runCli(['trial-check', '--config', cfg, '--dry-run', ...paths])
  t.match(dryHuman.stdout, /^would roll back \(dry run\): health check failed/m, 'the dry run says what it would do')
  t.equal(wholeDisk(h), before, 'and wrote nothing')
  const r = await runCli(['trial-check', '--config', cfg, ...paths])
  t.equal(r.code, ExitCode.trialFailed, 'exit trialFailed', failDiag(r))
  t.match(r.stdout, /rolled-back: health check failed/)
  t.same(active(h), { active: 'A', healthy: true })
  const bad = `${tmpDir(t)}/bad.yaml`
  fs.writeFileSync(bad, 'deadlineSeconds: 5\n')
  const invalid = await runCli(['trial-check', '--config', bad, ...paths])
  t.equal(invalid.code, ExitCode.configInvalid, 'a deadline under 30 s is a config error')
  t.match(invalid.stderr, /bad.yaml: deadlineSeconds: .* found value 5/)
})

t.test('no rollback when the sector is not the one the update wrote, or the saved addresses point elsewhere', async (t) => {
  for (const tamper of ['switched by hand', 'saved LBA points elsewhere'] as const) {
    const h = await onTrial(t)
    if (tamper === 'switched by hand') {
      const sw = await runCli(['slots', 'switch', '--disk', h.disk, '--to', 'A', '--ignore-trial'])
      t.equal(sw.code, 0, 'an admin switched back by hand')
    } else {
      const f = `${h.state}/labhost/trial`
      fs.writeFileSync(f, fs.readFileSync(f, 'utf8').replace(/^PRIMARY_LBA=\d+$/m, 'PRIMARY_LBA=0'))
    }
    const before = wholeDisk(h)
    const err = await judgeTrial({ paths: h.lib, config: config([['false']], 30), uptime: () => 100 }).then(
      () => null,
      (e: Error) => e,
    )
    t.match(
      err,
      {
        code: 'gptChanged',
        message: tamper === 'switched by hand' ? /not the one the update wrote/ : /saved sector addresses \(LBA 0, \d+\) are not one sector/,
      },
      `${tamper}: refused`,
    )
    t.equal(wholeDisk(h), before, `${tamper}: the disk is unchanged`)
  }
})

t.test('no trial pending: nothing to judge', async (t) => {
  const h = await makeHost(t, images)
  const v = await judgeTrial({ paths: h.lib, config: config([['false']], 30), uptime: () => 100 })
  t.equal(v.verdict, 'no-trial')
})

t.test('a trial version whose own trial.yaml is broken is judged unhealthy and rolled back', async (t) => {
  const h = await onTrial(t)
  const bad = `${tmpDir(t)}/trial.yaml`
  fs.writeFileSync(bad, 'deadlineSeconds: [not a number\n')
  const r = await runCli(['trial-check', '--config', bad, ...h.args.slice(0, 4)])
  t.equal(r.code, ExitCode.trialFailed, 'exit trialFailed', failDiag(r))
  t.match(r.stdout, /rolled-back: health check failed .*the trial configuration cannot be used: .*trial\.yaml: not valid YAML/)
  t.same(active(h), { active: 'A', healthy: true }, 'slot A boots next')
  t.match(readLastResult(h.lib), { RESULT: 'rolled-back', REASON: /trial configuration cannot be used/ })
})

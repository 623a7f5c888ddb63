// Exit 34 trialPending from `labhost update` itself: a host that rebooted into the slot an update
// switched to, and has not been marked good yet, refuses the next update — before the first
// write, so the slot it would write (now A, the rollback target) and every other partition, the
// GPT and the trial state stay byte for byte as they were. Once marked good the same update runs.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, makeHost, wholeDisk, type Images } from '../../test-support/update-fixtures.ts'
import { activeSlot } from './http-fixtures.ts'
import { markDataPartitions, regionHashes } from './partition-guard.ts'

const dir = tmpDir(t, 'labhost-trial-pending-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

/** Every file under the state root with its content: the trial and its record must not move. */
const stateFiles = (root: string) =>
  Object.fromEntries(
    (fs.readdirSync(root, { recursive: true }) as string[])
      .sort()
      .filter((f) => fs.statSync(path.join(root, f)).isFile())
      .map((f) => [f, fs.readFileSync(path.join(root, f), 'utf8')]),
  )

t.test('update while the running slot is on trial: exit 34, one line, nothing written anywhere', async (t) => {
  const h = await makeHost(t, images)
  markDataPartitions(h)
  const up = await runCli(['update', images.v2, ...h.args])
  t.equal(up.code, 0, 'update to 2.0.0: slot B on trial', failDiag(up))
  // the reboot into B: the initramfs and boot report say slot B runs 2.0.0; the trial is B's
  fs.writeFileSync(h.lib.bootFile, fs.readFileSync(h.lib.bootFile, 'utf8').replace('SLOT=A', 'SLOT=B'))
  fs.writeFileSync(h.lib.versionFile, '2.0.0\n')
  const status = JSON.parse((await runCli(['status', '--json', ...h.args.slice(0, 6)])).stdout)
  t.match(status, { trial: { slot: 'B' } }, 'labhost status: slot B on trial')
  t.equal(activeSlot(h.disk), 'B')

  const before = { disk: wholeDisk(h), regions: regionHashes(h), state: stateFiles(h.state) }
  const attempts: [string, string[]][] = [
    ['a downgrade to 1.0.0 (into slot A, the rollback target)', ['update', images.v1, '--allow-downgrade', ...h.args]],
    ['the same version again', ['update', images.v2, ...h.args]],
    ['--dry-run', ['update', images.v1, '--allow-downgrade', '--dry-run', ...h.args]],
  ]
  for (const [what, args] of attempts) {
    const r = await runCli(args)
    t.equal(r.code, ExitCode.trialPending, `${what}: exit 34`, failDiag(r))
    t.match(
      r.stderr,
      /^labhost: error: slot B is still on trial \(\d+ boot\(s\) left\)\n {2}hint: wait for labhost mark-good .*nothing was written\n?$/,
      `${what}: one error line and its hint, nothing else`,
    )
  }
  const json = await runCli(['update', images.v1, '--allow-downgrade', '--json', ...h.args])
  t.match(JSON.parse(json.stdout), { error: 'trialPending', exitCode: 34 }, '--json carries the code')
  t.same(regionHashes(h), before.regions, 'slot A, slot B, persistent, log, backing and everything outside them (MBR, GPT regions) byte-identical')
  t.equal(wholeDisk(h), before.disk, 'the whole disk byte-identical')
  t.same(stateFiles(h.state), before.state, 'the trial state and every other state file unchanged')
  t.equal(activeSlot(h.disk), 'B', 'slot B still flagged')

  const good = await runCli(['mark-good', ...h.args.slice(0, 6)])
  t.equal(good.code, 0, 'mark-good', failDiag(good))
  const after = await runCli(['update', images.v1, '--allow-downgrade', ...h.args])
  t.equal(after.code, 0, 'marked good: the same update runs', failDiag(after))
  t.equal(activeSlot(h.disk), 'A', 'and switches to slot A')
})

// A resumed campaign must continue the seed's sequence where the cut-off run left it: the number
// of draws each recorded cycle took (drawsOf) is checked against a real soak report by
// recomputing every cycle's aim (across resumed runs too) and the uniform reset instants of the
// last run (they depend on its calibration) from the seed.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { prng } from '../test-support/test-helpers.ts'
import { aimOf, drawsOf, fractionOf, type CampaignReport } from './campaign.ts'

const results = path.join(import.meta.dirname, 'results')
const reports = fs.readdirSync(results).filter((f) => /^soak-seed\d+-\d+-cycles\.json$/.test(f))

t.ok(reports.length > 0, 'a soak report to check against')
for (const f of reports) {
  t.test(f, async (t) => {
    const report = JSON.parse(fs.readFileSync(path.join(results, f), 'utf8')) as CampaignReport
    // every run continues the sequence (a resumed run replays the draws of the records before
    // it); the uniform instants follow the calibration of the report's last run only
    const records = report.records
    const lastRun = report.runs?.at(-1)?.firstCycle ?? 0
    const rnd = prng(report.seed)
    let aims = 0
    let instants = 0
    let nth = 0
    for (const r of records) {
      if (r.aim === 'calibration') {
        t.equal(drawsOf(r), 0)
        continue
      }
      const draws = Array.from({ length: drawsOf(r) }, () => rnd())
      const o = { stratified: report.aims === 'stratified', commitWeight: 0.4, cycles: report.cycles }
      if (aimOf(o, nth, draws[0]!) !== r.aim) t.fail(`cycle ${r.cycle}: the seed gives another aim than the record's ${r.aim}`)
      else aims++
      if (r.aim === 'uniform' && r.resetAtMs !== null && report.calibration && r.cycle >= lastRun) {
        // the harness waits for the drawn instant, then resets: the record is the drawn instant plus the latency
        const drawn = fractionOf(o, nth, draws[1]!) * (report.calibration.updateMs + 1000)
        if (r.resetAtMs < drawn - 5 || r.resetAtMs > drawn + 1000)
          t.fail(`cycle ${r.cycle}: reset at ${r.resetAtMs} ms, the seed gives ${Math.round(drawn)} ms`)
        else instants++
      }
      nth++
    }
    t.equal(aims, records.filter((r) => r.aim !== 'calibration').length, `every aim follows from seed ${report.seed} (${aims})`)
    // (a short last run, e.g. one cut off after a few cycles, has only a few)
    const timed = records.filter((r) => r.aim === 'uniform' && r.resetAtMs !== null && r.cycle >= lastRun).length
    t.ok(report.calibration && timed > 0, 'the last run reset at uniform instants', { timed })
    t.equal(instants, timed, `uniform reset instants of the last run follow from the seed (${instants})`)
  })
}

t.test('stratified aims: half the resets at the commit, each slice of each window reset once', async (t) => {
  for (const cycles of [1, 2, 9, 10, 37]) {
    const rnd = prng(cycles * 7919)
    const o = { stratified: true, commitWeight: 0.4, cycles }
    const byAim: Record<string, number[]> = { commit: [], uniform: [] }
    for (let nth = 0; nth < cycles; nth++) byAim[aimOf(o, nth, rnd())]!.push(fractionOf(o, nth, rnd()))
    t.equal(byAim.commit!.length, Math.ceil(cycles / 2), `${cycles} cycles: ${Math.ceil(cycles / 2)} at the commit`)
    for (const [aim, fractions] of Object.entries(byAim)) {
      const slices = fractions.map((f) => Math.floor(f * fractions.length)).sort((a, b) => a - b)
      t.same(
        slices,
        fractions.map((_, k) => k),
        `${cycles} cycles, ${aim}: one reset in each of ${fractions.length} slices`,
      )
    }
  }
  t.equal(fractionOf({ cycles: 10 }, 3, 0.25), 0.25, 'not stratified: the draw itself')
})

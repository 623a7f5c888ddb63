// A resumed campaign must continue the seed's sequence where the cut-off run left it: the number
// of draws each recorded cycle took (drawsOf) is checked against a real soak report by
// recomputing every cycle's aim (across resumed runs too) and the uniform reset instants of the
// last run (they depend on its calibration) from the seed.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { prng } from '../lib/test-helpers.ts'
import { drawsOf, type CampaignReport } from './campaign.ts'

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
    for (const r of records) {
      if (r.aim === 'calibration') {
        t.equal(drawsOf(r), 0)
        continue
      }
      const draws = Array.from({ length: drawsOf(r) }, () => rnd())
      if ((draws[0]! < 0.4 ? 'commit' : 'uniform') !== r.aim) t.fail(`cycle ${r.cycle}: the seed gives another aim than the record's ${r.aim}`)
      else aims++
      if (r.aim === 'uniform' && r.resetAtMs !== null && report.calibration && r.cycle >= lastRun) {
        // the harness waits for the drawn instant, then resets: the record is the drawn instant plus the latency
        const drawn = draws[1]! * (report.calibration.updateMs + 1000)
        if (r.resetAtMs < drawn - 5 || r.resetAtMs > drawn + 1000) t.fail(`cycle ${r.cycle}: reset at ${r.resetAtMs} ms, the seed gives ${Math.round(drawn)} ms`)
        else instants++
      }
    }
    t.equal(aims, records.filter((r) => r.aim !== 'calibration').length, `every aim follows from seed ${report.seed} (${aims})`)
    t.ok(instants > 3, `uniform reset instants follow from the seed (${instants})`)
  })
}

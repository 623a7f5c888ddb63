// install.yaml's patterns (DMI product, disk model and serial) run on RE2's linear-time engine:
// the same answers as a JavaScript RegExp on ordinary patterns, bounded time on pathological ones.
import { execa } from 'execa'
import t from 'tap'
import { fullMatch, patternProblem } from '../pattern.ts'

const cases: [string, string][] = [
  ['OptiPlex 70[0-9]0', 'OptiPlex 7010'],
  ['OptiPlex 70[0-9]0', 'OptiPlex 7010 AIO'],
  ['OptiPlex 70[0-9]0', 'xOptiPlex 7010'],
  ['10A[0-9]S0[0-9]{2}00', '10A7S01200'],
  ['10A[0-9]S0[0-9]{2}00', '10A7S0120'],
  ['Samsung.*', 'Samsung SSD 870'],
  ['Samsung.*', 'WD Blue'],
  ['.*SSD.*', 'Samsung SSD 870'],
  ['S[0-9A-Z]+|WD-[0-9]+', 'WD-123'],
  ['S[0-9A-Z]+|WD-[0-9]+', 'WD-123x'],
  ['(?i)samsung.*', 'SAMSUNG MZ7'],
  ['ST1000DM0(10|03)', 'ST1000DM003'],
  ['ST1000DM0(10|03)', 'ST1000DM0'],
  ['a?', ''],
  ['\\d+', '42'],
  ['\\w+ \\w+', 'Dell Inc.'],
]

t.test('ordinary patterns match as a JavaScript RegExp matches the whole value', async (t) => {
  for (const [p, v] of cases) {
    const js = new RegExp(`^(?:${p.replace('(?i)', '')})$`, p.startsWith('(?i)') ? 'i' : '').test(v)
    t.equal(fullMatch(p, v), js, `/${p}/ against ${JSON.stringify(v)}: ${js}`)
  }
})

t.test('patterns the engine does not take are named with the reason', async (t) => {
  t.equal(patternProblem('OptiPlex 70[0-9]0'), null)
  for (const p of ['(a)\\1', '(?=x)y', '(?<!a)b', '[z-a]', '(', 'a{1001}']) t.match(patternProblem(p), /\S/, `${p}: refused`)
})

// a product name of 40 a's and a b: backtracking tries 2^40 ways to split the a's before it fails
const EVIL = '(a+)+'
const VALUE = 'a'.repeat(40) + 'b'

t.test('a pathological pattern is answered at once', async (t) => {
  const started = performance.now()
  t.equal(fullMatch(EVIL, VALUE), false)
  t.equal(fullMatch(EVIL, 'a'.repeat(100_000)), true)
  const ms = performance.now() - started
  t.ok(ms < 1000, `answered in ${ms.toFixed(0)} ms`)
})

t.test('... where a JavaScript RegExp does not return (the old way, for comparison)', async (t) => {
  const r = await execa(process.execPath, ['-e', `new RegExp(${JSON.stringify(`^(?:${EVIL})$`)}).test(${JSON.stringify(VALUE)})`], {
    timeout: 3000,
    reject: false,
  })
  t.ok(r.timedOut, 'RegExp still running after 3 s: killed')
})

// npm test: every *.{unit,disk,vm}.test.ts file under tap. Unit and disk tests run two at a time;
// VM tests one at a time (two cores: never two VM suites at once). Ends with `N passed, N failed`.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { execa } from 'execa'

const root = path.resolve(import.meta.dirname, '..')
const { values, positionals } = parseArgs({ options: { kind: { type: 'string', multiple: true } }, allowPositionals: true })
const kinds = values.kind?.length ? values.kind : ['unit', 'disk', 'vm']

const all = (fs.globSync('**/*.test.ts', { cwd: root, exclude: (p) => p.includes('node_modules') || p.startsWith('scratch') }) as string[]).sort()
const pick = (kind: string) => all.filter((f) => f.endsWith(`.${kind}.test.ts`) && (positionals.length === 0 || positionals.some((p) => f.includes(p))))

if (process.getuid?.() !== 0 && kinds.some((k) => k !== 'unit')) {
  console.error('disk and vm tests need root (loop devices, mounts, QEMU): run as root, or `npm run test:unit`')
  process.exit(2)
}

// The type check is part of the test run: strict TypeScript, no unused code.
const tsc = await execa('tsc', ['--noEmit', '-p', root], { cwd: root, reject: false, all: true, preferLocal: true })
if (tsc.exitCode !== 0) {
  console.log(String(tsc.all))
  console.log('0 passed, 1 failed')
  process.exit(1)
}

// Disk and VM tests use the single executable (images carry it): build it once, up front.
if (kinds.some((k) => k !== 'unit')) {
  const b = await execa(process.execPath, [path.join(root, 'scripts/build.ts')], { cwd: root, reject: false, all: true })
  if (b.exitCode !== 0) {
    console.log(String(b.all))
    console.log('0 passed, 1 failed')
    process.exit(1)
  }
}

const totals = { pass: 0, fail: 0, skip: 0, todo: 0 }
let tapFailed = false
const groups: { files: string[]; jobs: number; timeout: number }[] = [
  { files: [...(kinds.includes('unit') ? pick('unit') : []), ...(kinds.includes('disk') ? pick('disk') : [])], jobs: 2, timeout: 600 },
  { files: kinds.includes('vm') ? pick('vm') : [], jobs: 1, timeout: 1800 },
]
for (const g of groups) {
  if (!g.files.length) continue
  const p = execa('tap', [`--jobs=${g.jobs}`, `--timeout=${g.timeout}`, ...g.files], { cwd: root, reject: false, all: true, preferLocal: true })
  p.all?.pipe(process.stdout)
  const r = await p
  const summary = /# \{ ([^}]*) \}/.exec(String(r.all ?? ''))?.[1] ?? ''
  for (const kv of summary.split(',')) {
    const [k, v] = kv.split(':').map((s) => s.trim())
    if (k && k in totals) totals[k as keyof typeof totals] += Number(v)
  }
  if (r.exitCode !== 0) tapFailed = true
}
if (tapFailed && totals.fail === 0) totals.fail = 1 // tap failed without counting a failure (crash, timeout)
console.log(`${totals.pass} passed, ${totals.fail} failed${totals.skip ? `, ${totals.skip} skipped` : ''}`)
process.exit(totals.fail > 0 || totals.pass === 0 ? 1 : 0)

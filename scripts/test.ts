// npm test: every *.{unit,disk,vm}.test.ts file under tap. VM tests one at a time (two cores:
// never two VM suites at once), unit and disk tests beside them. Ends with `N passed, N failed`.
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

// Every test starts `labhost` (node cli/bin.ts) dozens of times: Node's compile cache keeps the
// compiled (type-stripped) modules between starts — 0.9 s per start to 0.6 s on this machine.
process.env.NODE_COMPILE_CACHE ??= path.join(root, '.cache/node-compile-cache')

// Before any test, side by side (two cores; each of these is mostly one thread): the type check
// (strict TypeScript, no unused code), the format check (.prettierrc.json; `npm run format`
// applies it: checked, never rewritten here), and for disk and VM tests the single executable
// (images carry it) — the release build and the fault-enabled one (lib/faults.ts) that the
// campaign's mutants run; and tap's own build.
const step =
  (cmd: string, args: string[], hint = '') =>
  async () => {
    const r = await execa(cmd, args, { cwd: root, reject: false, all: true, preferLocal: true })
    return r.exitCode === 0 ? null : `${String(r.all)}${hint}`
  }
const builds = async () => {
  for (const flags of [[], ['--faults']]) {
    const failed = await step(process.execPath, [path.join(root, 'scripts/build.ts'), ...flags])()
    if (failed) return failed
  }
  return null
}
const failures = (
  await Promise.all([
    step('tsc', ['--noEmit', '-p', root])(),
    step('prettier', ['--check', '**/*.ts'], '\nrun `npm run format`')(),
    kinds.some((k) => k !== 'unit') ? builds() : null,
    // tap rebuilds itself for our plugin set on its first run; two tap runs at once would race on it
    step('tap', ['build'])(),
  ])
).filter((f) => f !== null)
if (failures.length) {
  console.log(failures.join('\n'))
  console.log('0 passed, 1 failed')
  process.exit(1)
}
if (kinds.some((k) => k !== 'unit')) {
  // ...and the tests start that executable, not the source (test-support/test-helpers.ts,
  // labhostCommand): what ships is what is tested. It keeps its image cache where the source does.
  process.env.LABHOST_TEST_EXE = path.join(root, 'dist/labhost')
  process.env.LABHOST_CACHE ??= path.join(root, '.cache')
}

const totals = { pass: 0, fail: 0, skip: 0, todo: 0 }
const laneSeconds: string[] = [] // each lane's wall time, printed before the summary (the 30-minute budget)
let tapFailed = false
const vmFiles = kinds.includes('vm') ? pick('vm') : []
const otherFiles = [...(kinds.includes('unit') ? pick('unit') : []), ...(kinds.includes('disk') ? pick('disk') : [])]
// Two cores: the VM tests run one at a time on one, and the unit and disk tests beside them on
// the other (one at a time then; two at a time when there is no VM test to share with). Beside
// the VM tests, the other lane runs at a low priority (nice 15): QEMU under TCG is one busy
// thread that the whole VM lane waits on, while the disk tests have slack and a core of their own.
const groups: { name: string; files: string[]; jobs: number; timeout: number; live: boolean }[] = [
  { name: 'VM tests', files: vmFiles, jobs: 1, timeout: 1800, live: true },
  { name: 'unit and disk tests', files: otherFiles, jobs: vmFiles.length ? 1 : 2, timeout: 900, live: !vmFiles.length },
]
await Promise.all(
  groups
    .filter((g) => g.files.length)
    .map(async (g) => {
      const started = Date.now()
      let prebuilt = ''
      // (nice 15: several disk tests now run parts side by side; with the lane at nice 5 the VM lane
      // took about 100 s longer in a CI run, while the disk lane finished 8 minutes before it)
      const beside = !g.live ? ['nice', '-n', '15'] : []
      if (g.name === 'unit and disk tests' && vmFiles.some((f) => f.includes('host-image'))) {
        // (at full priority: the second VM test waits for the campaign's images it builds first)
        const b = await execa(process.execPath, [path.join(root, 'scripts/prebuild-images.ts')], { cwd: root, reject: false, all: true })
        prebuilt = `# prebuild: ${String(b.all ?? '')
          .trim()
          .split('\n')
          .pop()}\n`
      }
      const tap = [...beside, 'tap', `--jobs=${g.jobs}`, `--timeout=${g.timeout}`, ...g.files]
      const p = execa(tap[0]!, tap.slice(1), { cwd: root, reject: false, all: true, preferLocal: true })
      if (g.live) p.all?.pipe(process.stdout)
      const r = await p
      // the group that ran beside the live one prints when it is done, in one piece
      if (!g.live) console.log(`\n# ---- ${g.name} (ran beside the VM tests) ----\n${prebuilt}${String(r.all ?? '')}\n# ---- end of ${g.name} ----\n`)
      const summary = /# \{ ([^}]*) \}/.exec(String(r.all ?? ''))?.[1] ?? ''
      for (const kv of summary.split(',')) {
        const [k, v] = kv.split(':').map((x) => x.trim())
        if (k && k in totals) totals[k as keyof typeof totals] += Number(v)
      }
      if (r.exitCode !== 0) tapFailed = true
      laneSeconds.push(`${g.name} ${Math.round((Date.now() - started) / 1000)} s`)
    }),
)
if (tapFailed && totals.fail === 0) totals.fail = 1 // tap failed without counting a failure (crash, timeout)
console.log(`# wall time: ${laneSeconds.join(', ')}; whole run ${Math.round(process.uptime())} s`)
console.log(`${totals.pass} passed, ${totals.fail} failed${totals.skip ? `, ${totals.skip} skipped` : ''}`)
process.exit(totals.fail > 0 || totals.pass === 0 ? 1 : 0)

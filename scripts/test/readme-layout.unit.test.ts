// The README's folder table matches the code: every top-level folder of source files has a row,
// every row names a folder that exists, and every file a row names in backticks (`name.ts`,
// `name.yaml`, `dir/`) is there, in that folder or below it (a path with a slash may also be
// the repository's, as `scripts/setup.sh` in the .ci/ row).
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { REPO_ROOT } from '../../test-support/test-helpers.ts'

const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8')
const section = readme.slice(readme.indexOf('## Folder layout'), readme.indexOf('\n## ', readme.indexOf('## Folder layout') + 1))
const rows = [...section.matchAll(/^\| `([^`]+)\/` \| (.*) \|$/gm)].map((m) => ({ folder: m[1]!, text: m[2]! }))

t.test('every folder with source files has a row, every row a folder', async (t) => {
  t.ok(rows.length > 5, 'the table was found', { section: section.slice(0, 300) })
  const withSources = fs
    .readdirSync(REPO_ROOT, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !d.name.startsWith('.') && !['node_modules', 'dist', 'scratch', 'reports'].includes(d.name))
    .filter((d) => (fs.globSync('**/*.{ts,sh,yaml,json}', { cwd: path.join(REPO_ROOT, d.name) }) as string[]).length > 0)
    .map((d) => d.name)
    .sort()
  t.same(
    withSources.filter((f) => !rows.some((r) => r.folder === f)),
    [],
    'no source folder without a row',
  )
  t.same(
    rows.filter((r) => !fs.existsSync(path.join(REPO_ROOT, r.folder))).map((r) => r.folder),
    [],
    'no row for a folder that does not exist',
  )
})

t.test('every file a row names is in its folder', async (t) => {
  for (const r of rows) {
    const files = fs.globSync('**/*', { cwd: path.join(REPO_ROOT, r.folder) }) as string[]
    const named = [...r.text.matchAll(/`([\w.*-]+(?:\/[\w.*-]+)*\/?)`/g)].map((m) => m[1]!).filter((n) => /\.(ts|sh|yaml|json)$|\/$/.test(n))
    for (const n of named) {
      const want = n.replace(/\/$/, '')
      const found = n.includes('*')
        ? files.some((f) => path.matchesGlob(f, want) || path.matchesGlob(f, `**/${want}`))
        : files.some((f) => f === want || f.endsWith(`/${want}`)) || (want.includes('/') && fs.existsSync(path.join(REPO_ROOT, want)))
      t.ok(found, `${r.folder}/: ${n}`)
    }
  }
})

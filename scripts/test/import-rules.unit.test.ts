// The import rules of scripts/import-rules.ts hold for the repository, and the check can fail:
// on a small tree of its own it reports an upward import, a peer import, production code
// importing test code, and a cycle.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { REPO_ROOT, tmpDir } from '../../test-support/test-helpers.ts'
import { checkImports } from '../import-rules.ts'

t.test('the repository keeps its import rules', async (t) => {
  t.same(
    checkImports(REPO_ROOT).map((b) => `${b.from} -> ${b.to}: ${b.why}`),
    [],
    'no breach',
  )
})

t.test('the check reports each kind of breach', async (t) => {
  const root = tmpDir(t, 'labhost-import-rules-')
  const file = (rel: string, ...imports: string[]) => {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true })
    fs.writeFileSync(path.join(root, rel), imports.map((i) => `import { x } from '${i}'\n`).join('') + 'export const x = 1\n')
  }
  file('lib/ok.ts')
  file('bootloader/gpt.ts', '../lib/ok.ts')
  file('lib/up.ts', '../bootloader/gpt.ts') // upward
  file('installer/install.ts', '../updater/update.ts') // peer
  file('updater/update.ts', '../image-format/source.ts', './test/fixture.ts') // production -> test
  file('updater/test/fixture.ts')
  file('image-format/source.ts', './a.ts')
  file('image-format/a.ts', './b.ts')
  file('image-format/b.ts', './a.ts') // cycle a <-> b
  file('updater/test/update.unit.test.ts', '../../installer/install.ts', '../../test-support/test-helpers.ts') // tests may
  file('test-support/test-helpers.ts', '../lib/ok.ts')
  file('cli/main.ts', '../test-support/test-helpers.ts') // production -> test support
  const got = checkImports(root)
    .map((b) => `${b.from} -> ${b.to}: ${b.why}`)
    .sort()
  t.same(got, [
    'cli/main.ts -> test-support/test-helpers.ts: production code imports test support',
    'image-format/a.ts -> image-format/b.ts: an import cycle',
    'installer/install.ts -> updater/update.ts: installer/ may import only lib, bootloader, image-format',
    'lib/up.ts -> bootloader/gpt.ts: lib/ may import only nothing of ours',
    'updater/update.ts -> updater/test/fixture.ts: production code imports test code',
  ])
})

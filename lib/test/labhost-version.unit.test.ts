import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { REPO_ROOT } from '../../test-support/test-helpers.ts'
import { LABHOST_VERSION } from '../labhost-version.ts'

t.test("LABHOST_VERSION is package.json's version", async (t) => {
  t.equal(LABHOST_VERSION, JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')).version)
})

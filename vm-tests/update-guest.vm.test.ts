// labhost update run by the host itself: the test image (1.0.0, slot A) updates to 2.0.0 from a
// local image directory, reboots into slot B on trial, and marks it good.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import YAML from 'yaml'
import { tmpDir } from '../lib/test-helpers.ts'
import { buildImage } from '../image-build/build.ts'
import { generateKeyPair } from '../image-build/manifest.ts'
import { loadRecipe, RECIPES_DIR } from '../image-build/recipe.ts'
import { bootUntilPowerOff } from './qemu.ts'
import { buildHostDisks, stageSelfUpdate } from './fixtures/host-disks.ts'

t.test('1.0.0 in A updates itself to 2.0.0 in B, boots it on trial, marks it good', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-update-')
  const keys = generateKeyPair(`${dir}/keys`)
  const v1 = await buildImage('test', { out: `${dir}/v1`, keyFile: keys.privateKeyFile })
  const r = YAML.parse(fs.readFileSync(path.join(RECIPES_DIR, 'test.yaml'), 'utf8'))
  fs.writeFileSync(`${dir}/test-2.yaml`, YAML.stringify({ ...r, version: '2.0.0', layout: path.join(RECIPES_DIR, r.layout) }))
  const v2 = await buildImage(`${dir}/test-2.yaml`, { out: `${dir}/v2`, keyFile: keys.privateKeyFile })
  const layout = loadRecipe('test').layout
  const disks = await buildHostDisks(dir, layout, path.join(path.dirname(v1.manifestFile), 'root.img'), { slots: ['A'], flag: 'A', restMiB: 96 })
  await stageSelfUpdate(disks, path.dirname(v2.manifestFile), 'v2', '--trial-boots 2')
  const vm = { disks: [{ file: disks.ssd, bus: 'ide-hd' as const, rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd' as const, rotationRate: 7200 }] }

  const first = await bootUntilPowerOff(vm, 600_000)
  t.comment(`boot 1 under ${first.accel} in ${first.seconds.toFixed(1)} s`)
  t.match(first.serial, /LABHOST-USERSPACE version=1\.0\.0 slot=A/)
  t.match(first.serial, /LABHOST-UPDATE-EXIT 0/, 'labhost update succeeded in the guest', { serial: first.serial.slice(-3000) })
  const st1 = JSON.parse(/LABHOST-STATUS (\{.*\})/.exec(first.serial)?.[1] ?? '{}')
  t.equal(st1.gpt?.active, 'B', 'after the update, B boots next')
  t.same(st1.trial, { slot: 'B', bootsLeft: 2, version: '2.0.0' })

  const second = await bootUntilPowerOff(vm, 300_000)
  t.comment(`boot 2 under ${second.accel} in ${second.seconds.toFixed(1)} s`)
  t.match(second.serial, /LABHOST-TRIAL slot=B left=1/, 'B boots on trial')
  t.match(second.serial, /LABHOST-USERSPACE version=2\.0\.0 slot=B/, 'running 2.0.0 from B', { serial: second.serial.slice(-3000) })
  t.match(second.serial, /LABHOST-MARK slot B \(version 2\.0\.0\) marked good/)
  const st2 = JSON.parse(/LABHOST-STATUS (\{.*\})/.exec(second.serial)?.[1] ?? '{}')
  t.match(st2.lastResult, { RESULT: 'good', SLOT: 'B', VERSION: '2.0.0', FROM_VERSION: '1.0.0', UPDATE_SECONDS: /^\d/ })
  t.equal(st2.version, '2.0.0')
  t.same(st2.problems, [])
})

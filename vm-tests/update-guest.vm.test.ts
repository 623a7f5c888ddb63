// labhost update run by the host itself, in QEMU, five boots (the initramfs's trial and rollback
// and labhost mark-good, end to end):
//  1. 1.0.0 (slot A) updates from a local directory to 1.5.0, a deliberately broken image whose
//     userspace dies at once (never marks good), and reboots with --reboot;
//  2. 1.5.0 boots on trial in B, dies (kernel panic, reboot);
//  3. the trial is used up: the initramfs switches back to A by itself and reboots;
//  4. 1.0.0 again, status reports the rollback; it updates to 2.0.0 over HTTP from a server on
//     this machine's loopback, reached through QEMU user networking only, and reboots;
//  5. 2.0.0 boots on trial in B, the health hook marks it good, status reports it.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { serveDirectory } from '../lib/http-serve.ts'
import { tmpDir } from '../test-support/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildImage } from '../image-build/build.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildHostDisks, GUEST_SERVER, stageUpdatePlan, statusLines } from '../test-support/host-disks.ts'
import { leanRecipe, stageLabhost } from './fixtures/lean-image.ts'

t.test('broken 1.5.0 rolls back to 1.0.0 by itself; 2.0.0 over HTTP boots on trial and is marked good', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-update-')
  const keys = cacheKeys()
  const build = async (name: string, change: Parameters<typeof leanRecipe>[1]) =>
    path.dirname((await buildImage(leanRecipe(`${dir}/recipes/${name}.yaml`, change), { out: `${dir}/${name}`, keyFile: keys.privateKeyFile })).manifestFile)
  const v1 = await build('v1', () => {})
  const broken = await build('broken', (r) => {
    r.version = '1.5.0'
    r.files = [
      ...(r.files ?? []).filter((f) => f.path !== '/sbin/init'),
      { path: '/sbin/init', mode: '0755', content: '#!/bin/sh\necho "LABHOST-BROKEN version=$(cat /etc/labhost/version)"\nexit 1\n' },
    ]
  })
  const v2 = await build('v2', (r) => {
    r.version = '2.0.0'
  })
  const served = `${dir}/served`
  fs.mkdirSync(served)
  fs.cpSync(v2, `${served}/v2`, { recursive: true })
  const server = await serveDirectory(served)
  t.teardown(() => server.close())

  const disks = await buildHostDisks(dir, loadRecipe('test').layout, `${v1}/root.img`, { slots: ['A'], flag: 'A', restMiB: 160 })
  await stageLabhost(disks)
  await stageUpdatePlan(disks, {
    images: { broken },
    steps: [
      { name: 'broken', args: '/qcow2/backing/broken --trial-boots 1 --reboot' },
      { name: 'v2', args: `${GUEST_SERVER}/v2/ --trial-boots 2 --reboot` },
    ],
  })
  const vm: VmSpec = {
    disks: [
      { file: disks.ssd, bus: 'ide-hd', rotationRate: 1 },
      { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 },
    ],
    net: { forwards: [{ guestPort: 8080, hostPort: server.port }] },
  }
  const boot = async (n: number) => {
    const r = await bootUntilPowerOff(vm, 600_000)
    t.comment(`boot ${n} under ${r.accel} in ${r.seconds.toFixed(1)} s`)
    t.notOk(r.timedOut, `boot ${n} ended by itself`, { serial: r.serial.slice(-3000) })
    return r.serial
  }

  const gptBefore = fs.readFileSync(disks.ssd).subarray(0, 34 * 512)
  const b1 = await boot(1)
  t.match(b1, /LABHOST-USERSPACE version=1\.0\.0 slot=A/)
  t.match(b1, /LABHOST-STEP broken/)
  t.notMatch(b1, /LABHOST-UPDATE-EXIT/, 'labhost update --reboot rebooted the VM', { serial: b1.slice(-3000) })

  const b2 = await boot(2)
  t.match(b2, /LABHOST-TRIAL slot=B left=0/, 'the broken image boots on trial')
  t.match(b2, /LABHOST-BROKEN version=1\.5\.0/, 'its userspace dies without marking good')

  const b3 = await boot(3)
  t.match(b3, /LABHOST-ROLLBACK from=B to=A/, 'the initramfs rolls back by itself', { serial: b3.slice(-3000) })
  t.ok(
    fs
      .readFileSync(disks.ssd)
      .subarray(0, 34 * 512)
      .equals(gptBefore),
    'the primary GPT region is byte for byte what it was before the update',
  )

  const b4 = await boot(4)
  t.match(b4, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, '1.0.0 runs again')
  const [rolledBack] = statusLines(b4)
  t.match(rolledBack?.lastResult, { RESULT: 'rolled-back', FROM: 'B', TO: 'A', VERSION: '1.5.0', FROM_VERSION: '1.0.0' }, 'labhost status reports the rollback')
  t.equal(rolledBack?.gpt?.active, 'A')
  t.match(rolledBack?.gpt, { primaryValid: true, backupValid: true, tablesAgree: true }, 'both GPTs valid and in agreement after the rollback')
  t.match(b4, /LABHOST-STEP v2/)
  t.notMatch(b4, /LABHOST-UPDATE-EXIT/, 'the HTTP update succeeded and rebooted', { serial: b4.slice(-3000) })
  // a delta update (the default): manifest, block index, then Range requests for the chunks 1.0.0 lacks
  const [manifestReq, blocksReq, ...transportReqs] = server.requests
  t.same(
    [manifestReq?.path, manifestReq?.status, blocksReq?.path, blocksReq?.status],
    ['/v2/manifest.json', 200, '/v2/root.img.blocks', 200],
    'the guest fetched the manifest and the block index from the loopback server',
  )
  t.ok(
    transportReqs.length > 0 && transportReqs.every((q) => q.path === '/v2/root.img.zst' && q.status === 206),
    'then only Range requests for the transport file',
    { requests: server.requests },
  )
  const transportBytes = transportReqs.reduce((n, q) => n + q.bytes, 0)
  t.ok(transportBytes < fs.statSync(path.join(served, 'v2/root.img.zst')).size / 4, `a delta: ${transportBytes} transport bytes`)

  const b5 = await boot(5)
  t.match(b5, /LABHOST-TRIAL slot=B left=1/)
  t.match(b5, /LABHOST-USERSPACE version=2\.0\.0 slot=B/)
  t.match(b5, /LABHOST-MARK slot B \(version 2\.0\.0\) marked good/)
  const [good] = statusLines(b5)
  t.equal(good?.version, '2.0.0')
  t.equal(good?.gpt?.active, 'B', '2.0.0 is active')
  t.equal(good?.trial, null, 'no trial pending')
  t.match(good?.lastResult, { RESULT: 'good', SLOT: 'B', VERSION: '2.0.0', FROM_VERSION: '1.0.0', UPDATE_SECONDS: /^\d/ })
  t.same(good?.problems, [])
})

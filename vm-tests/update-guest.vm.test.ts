// labhost update run by the host itself over the network, in QEMU, two boots (the trial and
// labhost mark-good, end to end):
//  1. 1.0.0 (slot A) updates to 2.0.0 over HTTP from a server on this machine's loopback, reached
//     through QEMU user networking only (a delta: manifest, block index, Range requests), and
//     reboots with --reboot;
//  2. 2.0.0 boots on trial in B, the health hook marks it good, status reports it.
// A version that dies on trial and is rolled back by the initramfs: rollback-campaign.vm.test.ts
// (BIOS, with a reset inside the rollback), uefi-boot.vm.test.ts (OVMF) and host-image.vm.test.ts
// (a failed health check on the systemd host image).
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

t.test('2.0.0 over HTTP (a delta) boots on trial and is marked good', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-update-')
  const keys = cacheKeys()
  const build = async (name: string, change: Parameters<typeof leanRecipe>[1]) =>
    path.dirname((await buildImage(leanRecipe(`${dir}/recipes/${name}.yaml`, change), { out: `${dir}/${name}`, keyFile: keys.privateKeyFile })).manifestFile)
  const v1 = await build('v1', () => {})
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
    steps: [{ name: 'v2', args: `${GUEST_SERVER}/v2/ --trial-boots 2 --reboot` }],
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

  const b1 = await boot(1)
  t.match(b1, /LABHOST-USERSPACE version=1\.0\.0 slot=A/)
  t.match(b1, /LABHOST-STEP v2/)
  t.notMatch(b1, /LABHOST-UPDATE-EXIT/, 'the HTTP update succeeded and rebooted', { serial: b1.slice(-3000) })
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

  const b2 = await boot(2)
  t.match(b2, /LABHOST-TRIAL slot=B left=1/)
  t.match(b2, /LABHOST-USERSPACE version=2\.0\.0 slot=B/)
  t.match(b2, /LABHOST-MARK slot B \(version 2\.0\.0\) marked good/)
  const [good] = statusLines(b2)
  t.equal(good?.version, '2.0.0')
  t.equal(good?.gpt?.active, 'B', '2.0.0 is active')
  t.equal(good?.trial, null, 'no trial pending')
  t.match(good?.lastResult, { RESULT: 'good', SLOT: 'B', VERSION: '2.0.0', FROM_VERSION: '1.0.0', UPDATE_SECONDS: /^\d/ })
  t.same(good?.problems, [])
})

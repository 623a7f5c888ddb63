// UEFI-only PCs (issue 17): OVMF on q35, no CSM, and a fresh (empty) variable store at every
// boot, so nothing depends on an NVRAM boot entry. A host whose ESP holds only the selector
// (\EFI\BOOT\BOOTX64.EFI, image-build/selector.ts) updates itself A -> B and B -> A with the
// one-sector switch; the version it updated to in slot A dies in userspace and is rolled back to B
// by its initramfs's trial, as on a BIOS PC (five boots). The first update is `labhost update` run
// by the host itself over the network: from an HTTP server on this machine's loopback, reached
// through QEMU user networking only, as a delta (manifest, block index, Range requests); 2.0.0
// then boots on trial and the hook's `labhost mark-good` ends the trial (the trial and mark-good
// end to end; on a BIOS PC every cycle of the campaign does the same from a local file). The
// installer stick on a UEFI-only PC (an unattended install, then the SSD boots through the
// selector the image carried) and a disk with an ESP booting on SeaBIOS are in
// stick-boot.vm.test.ts: one stick for both firmware types.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { serveDirectory } from '../lib/http-serve.ts'
import { tmpDir } from '../test-support/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { loadLayout } from '../lib/layout.ts'
import { buildImage } from '../image-build/build.ts'
import { buildSelector } from '../image-build/selector.ts'
import { buildCampaignImages } from './campaign.ts'
import { buildHostDisks, GUEST_SERVER, stageUpdatePlan, statusLines } from '../test-support/host-disks.ts'
import { leanBrokenRecipe, stageLabhost, TEST_ESP_LAYOUT } from './fixtures/lean-image.ts'
import { bootUntilPowerOff, uefiVarsCopy } from './qemu.ts'

t.test('UEFI (OVMF, no CSM): a host updates A -> B -> A over the one-sector switch; the failing trial in A rolls back to B by itself', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-uefi-')
  const keys = cacheKeys()
  const layout = loadLayout(TEST_ESP_LAYOUT)
  // the lean 1.0.0 and 2.0.0 test images (the campaign's) and a 1.5.0 whose userspace dies at once
  // (all prebuilt into the cache by npm test: scripts/prebuild-images.ts)
  const { dirs } = await buildCampaignImages(path.join(dir, 'images'))
  const build = async (name: string, recipe: (file: string) => string) =>
    path.dirname((await buildImage(recipe(`${dir}/recipes/${name}.yaml`), { out: `${dir}/${name}`, keyFile: keys.privateKeyFile })).manifestFile)
  const broken = await build('broken', leanBrokenRecipe)
  // 2.0.0 on a server on the loopback
  const served = `${dir}/served`
  fs.mkdirSync(served)
  fs.cpSync(dirs['2.0.0']!, `${served}/v2`, { recursive: true })
  const server = await serveDirectory(served)
  t.teardown(() => server.close())
  const selector = await buildSelector({ layout, out: path.join(dir, 'BOOTX64.EFI'), log: (l) => t.comment(l) })
  t.comment(`selector: ${selector.bytes} bytes, kernel ${selector.kernel}`)
  const disks = await buildHostDisks(dir, layout, `${dirs['1.0.0']}/root.img`, { slots: ['A'], flag: 'A', restMiB: 200, selector: selector.file })
  t.equal(disks.ssdPlan.find((p) => p.esp)?.number, 6, 'the ESP is the last entry; the root slots stay entries 1 and 2')
  await stageLabhost(disks)
  await stageUpdatePlan(disks, {
    images: { broken },
    steps: [
      { name: 'v2', args: `${GUEST_SERVER}/v2/ --trial-boots 2 --reboot` },
      { name: 'broken', args: '/qcow2/backing/broken --allow-downgrade --trial-boots 1 --reboot' },
    ],
  })
  const boot = async (n: number) => {
    const r = await bootUntilPowerOff(
      {
        memoryMb: 768,
        disks: [
          { file: disks.ssd, bus: 'ide-hd', rotationRate: 1 },
          { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 },
        ],
        uefi: { vars: uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-'))) },
        net: { forwards: [{ guestPort: 8080, hostPort: server.port }] },
      },
      600_000,
    )
    t.comment(`boot ${n} under ${r.accel} in ${r.seconds.toFixed(1)} s`)
    t.notOk(r.timedOut, `boot ${n} ended by itself`, { serial: r.serial.slice(-3000) })
    return r.serial
  }
  const gpt = () => fs.readFileSync(disks.ssd).subarray(0, 34 * 512)
  const b1 = await boot(1)
  t.match(b1, /LABHOST-SELECTOR slot=A /, 'boot 1: the selector picked slot A')
  t.match(b1, /LABHOST-USERSPACE version=1\.0\.0 slot=A/)
  t.match(b1, /LABHOST-STEP v2/)
  t.notMatch(b1, /LABHOST-UPDATE-EXIT/, 'the HTTP update succeeded and labhost update --reboot rebooted the VM', { serial: b1.slice(-3000) })
  // a delta update (the default from http): manifest, block index, then Range requests for the chunks 1.0.0 lacks
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
  // the primary GPT with B flagged: what the rollback below must restore, byte for byte
  const gptOfB = gpt()
  const b2 = await boot(2)
  t.match(b2, /LABHOST-SELECTOR slot=B /, 'boot 2: after the one-sector switch the selector picks slot B')
  t.match(b2, /LABHOST-TRIAL slot=B left=1/, '2.0.0 boots on trial')
  t.match(b2, /LABHOST-USERSPACE version=2\.0\.0 slot=B/, 'A -> B: 2.0.0 runs')
  t.match(b2, /LABHOST-MARK slot B \(version 2\.0\.0\) marked good/)
  const [good] = statusLines(b2)
  t.equal(good?.version, '2.0.0')
  t.equal(good?.gpt?.active, 'B', '2.0.0 is active')
  t.equal(good?.trial, null, 'no trial pending')
  t.match(good?.lastResult, { RESULT: 'good', SLOT: 'B', VERSION: '2.0.0', FROM_VERSION: '1.0.0', UPDATE_SECONDS: /^\d/ })
  t.same(good?.problems, [])
  t.match(b2, /LABHOST-STEP broken/)
  t.notMatch(b2, /LABHOST-UPDATE-EXIT/, 'labhost update --reboot rebooted the VM', { serial: b2.slice(-3000) })
  const b3 = await boot(3)
  t.match(b3, /LABHOST-SELECTOR slot=A /, 'boot 3: B -> A, the selector picks slot A')
  t.match(b3, /LABHOST-TRIAL slot=A left=0/, 'the broken 1.5.0 boots on trial')
  t.match(b3, /LABHOST-BROKEN version=1\.5\.0/, 'its userspace dies without marking good')
  const b4 = await boot(4)
  t.match(b4, /LABHOST-ROLLBACK from=A to=B/, 'boot 4: its initramfs rolls back by itself', { serial: b4.slice(-3000) })
  t.ok(gpt().equals(gptOfB), 'the primary GPT region is byte for byte what it was before the update to 1.5.0')
  const b5 = await boot(5)
  t.match(b5, /LABHOST-SELECTOR slot=B /, 'boot 5: the selector picks slot B again')
  t.match(b5, /LABHOST-USERSPACE version=2\.0\.0 slot=B/, '2.0.0 runs again')
  t.match(statusLines(b5)[0]?.lastResult, { RESULT: 'rolled-back', FROM: 'A', TO: 'B', VERSION: '1.5.0' }, 'labhost status reports the rollback')
  t.match(statusLines(b5).at(-1), {
    version: '2.0.0',
    gpt: { active: 'B', primaryValid: true, backupValid: true, tablesAgree: true },
    trial: null,
    problems: [],
  })
})

// UEFI-only PCs (issue 17): OVMF on q35, no CSM, and a fresh (empty) variable store at every
// boot, so nothing depends on an NVRAM boot entry. A host whose ESP holds only the selector
// (\EFI\BOOT\BOOTX64.EFI, image-build/selector.ts) updates itself A -> B and B -> A with the
// one-sector switch; a version whose userspace dies is rolled back by its initramfs's trial, as on
// a BIOS PC. The installer stick on a UEFI-only PC (an unattended install, then the SSD boots
// through the selector the image carried) and a disk with an ESP booting on SeaBIOS are in
// stick-boot.vm.test.ts: one stick for both firmware types.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { tmpDir } from '../test-support/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { loadLayout } from '../lib/layout.ts'
import { buildImage } from '../image-build/build.ts'
import { buildSelector } from '../image-build/selector.ts'
import { buildCampaignImages } from './campaign.ts'
import { buildHostDisks, stageUpdatePlan, statusLines } from '../test-support/host-disks.ts'
import { leanBrokenRecipe, leanRecipe, stageLabhost, TEST_ESP_LAYOUT } from './fixtures/lean-image.ts'
import { bootUntilPowerOff, uefiVarsCopy } from './qemu.ts'

t.test('UEFI (OVMF, no CSM): a host updates A -> B -> A over the one-sector switch; a failing trial rolls back by itself', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-uefi-')
  const keys = cacheKeys()
  const layout = loadLayout(TEST_ESP_LAYOUT)
  // the lean 1.0.0 and 2.0.0 test images (the campaign's), a 1.5.0 whose userspace dies at once,
  // and a 3.0.0 (all prebuilt into the cache by npm test: scripts/prebuild-images.ts)
  const { dirs } = await buildCampaignImages(path.join(dir, 'images'))
  const build = async (name: string, recipe: (file: string) => string) =>
    path.dirname((await buildImage(recipe(`${dir}/recipes/${name}.yaml`), { out: `${dir}/${name}`, keyFile: keys.privateKeyFile })).manifestFile)
  const broken = await build('broken', leanBrokenRecipe)
  const v3 = await build('v3', (f) =>
    leanRecipe(f, (r) => {
      r.version = '3.0.0'
    }),
  )
  const selector = await buildSelector({ layout, out: path.join(dir, 'BOOTX64.EFI'), log: (l) => t.comment(l) })
  t.comment(`selector: ${selector.bytes} bytes, kernel ${selector.kernel}`)
  const disks = await buildHostDisks(dir, layout, `${dirs['1.0.0']}/root.img`, { slots: ['A'], flag: 'A', restMiB: 200, selector: selector.file })
  t.equal(disks.ssdPlan.find((p) => p.esp)?.number, 6, 'the ESP is the last entry; the root slots stay entries 1 and 2')
  await stageLabhost(disks)
  await stageUpdatePlan(disks, {
    images: { broken, v2: dirs['2.0.0']!, v3 },
    steps: [
      { name: 'broken', args: '/qcow2/backing/broken --trial-boots 1 --reboot' },
      { name: 'v2', args: '/qcow2/backing/v2 --trial-boots 2 --reboot' },
      { name: 'v3', args: '/qcow2/backing/v3 --trial-boots 2 --reboot' },
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
      },
      600_000,
    )
    t.comment(`boot ${n} under ${r.accel} in ${r.seconds.toFixed(1)} s`)
    t.notOk(r.timedOut, `boot ${n} ended by itself`, { serial: r.serial.slice(-3000) })
    return r.serial
  }
  const gptBefore = fs.readFileSync(disks.ssd).subarray(0, 34 * 512)
  const b1 = await boot(1)
  t.match(b1, /LABHOST-SELECTOR slot=A /, 'boot 1: the selector picked slot A')
  t.match(b1, /LABHOST-USERSPACE version=1\.0\.0 slot=A/)
  t.match(b1, /LABHOST-STEP broken/)
  t.notMatch(b1, /LABHOST-UPDATE-EXIT/, 'labhost update --reboot rebooted the VM', { serial: b1.slice(-3000) })
  const b2 = await boot(2)
  t.match(b2, /LABHOST-SELECTOR slot=B /, 'boot 2: after the one-sector switch the selector picks slot B')
  t.match(b2, /LABHOST-TRIAL slot=B left=0/, 'the broken 1.5.0 boots on trial')
  t.match(b2, /LABHOST-BROKEN version=1\.5\.0/, 'its userspace dies without marking good')
  const b3 = await boot(3)
  t.match(b3, /LABHOST-ROLLBACK from=B to=A/, 'boot 3: its initramfs rolls back by itself', { serial: b3.slice(-3000) })
  t.ok(
    fs
      .readFileSync(disks.ssd)
      .subarray(0, 34 * 512)
      .equals(gptBefore),
    'the primary GPT region is byte for byte what it was before the update',
  )
  const b4 = await boot(4)
  t.match(b4, /LABHOST-SELECTOR slot=A /, 'boot 4: the selector picks slot A again')
  t.match(b4, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, '1.0.0 runs again')
  t.match(statusLines(b4)[0]?.lastResult, { RESULT: 'rolled-back', FROM: 'B', TO: 'A', VERSION: '1.5.0' }, 'labhost status reports the rollback')
  t.match(b4, /LABHOST-STEP v2/)
  const b5 = await boot(5)
  t.match(b5, /LABHOST-SELECTOR slot=B /, 'boot 5: slot B')
  t.match(b5, /LABHOST-USERSPACE version=2\.0\.0 slot=B/, 'A -> B: 2.0.0 runs')
  t.match(b5, /LABHOST-MARK slot B \(version 2\.0\.0\) marked good/)
  t.match(b5, /LABHOST-STEP v3/)
  const b6 = await boot(6)
  t.match(b6, /LABHOST-SELECTOR slot=A /, 'boot 6: slot A')
  t.match(b6, /LABHOST-USERSPACE version=3\.0\.0 slot=A/, 'B -> A: 3.0.0 runs')
  t.match(b6, /LABHOST-MARK slot A \(version 3\.0\.0\) marked good/)
  t.match(statusLines(b6).at(-1), {
    version: '3.0.0',
    gpt: { active: 'A', primaryValid: true, backupValid: true, tablesAgree: true },
    trial: null,
    problems: [],
  })
})

// UEFI-only PCs (issue 17): OVMF on q35, no CSM, and a fresh (empty) variable store at every
// boot, so nothing depends on an NVRAM boot entry. (1) A host whose ESP holds only the selector
// (\EFI\BOOT\BOOTX64.EFI, image-build/selector.ts) updates itself A -> B and B -> A with the
// one-sector switch; a version whose userspace dies is rolled back by its initramfs's trial, as on
// a BIOS PC; and the same disk boots on SeaBIOS through gptmbr. (2) The installer stick boots,
// installs unattended and the SSD then boots through the selector the image carried.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import YAML from 'yaml'
import { REPO_ROOT, runCli, sparseFile, tmpDir } from '../test-support/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { loadLayout } from '../lib/layout.ts'
import { buildImage } from '../image-build/build.ts'
import { buildSelector } from '../image-build/selector.ts'
import { buildCampaignImages } from './campaign.ts'
import { buildHostDisks, readPartitionFiles, stageUpdatePlan, statusLines } from '../test-support/host-disks.ts'
import { leanRecipe, stageLabhost } from './fixtures/lean-image.ts'

const MiB = 1 << 20
/** The test layout with an EFI system partition (the shipped test-esp.yaml). */
const TEST_ESP_LAYOUT = path.join(REPO_ROOT, 'image-build/layouts/test-esp.yaml')
const DELL = { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' }
import { bootUntilPowerOff, uefiVarsCopy, type VmSpec } from './qemu.ts'

t.test('UEFI (OVMF, no CSM): a host updates A -> B -> A over the one-sector switch; a failing trial rolls back by itself; BIOS boots the same disk', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-uefi-')
  const keys = cacheKeys()
  const layout = loadLayout(TEST_ESP_LAYOUT)
  // the lean 1.0.0 and 2.0.0 test images (the campaign's, prebuilt into the cache by npm test),
  // a 1.5.0 whose userspace dies at once, and a 3.0.0
  const { dirs } = await buildCampaignImages(path.join(dir, 'images'))
  const build = async (name: string, change: Parameters<typeof leanRecipe>[1]) =>
    path.dirname((await buildImage(leanRecipe(`${dir}/recipes/${name}.yaml`, change), { out: `${dir}/${name}`, keyFile: keys.privateKeyFile })).manifestFile)
  const broken = await build('broken', (r) => {
    r.version = '1.5.0'
    r.files = [...(r.files ?? []).filter((f) => f.path !== '/sbin/init'),
      { path: '/sbin/init', mode: '0755', content: '#!/bin/sh\necho "LABHOST-BROKEN version=$(cat /etc/labhost/version)"\nexit 1\n' }]
  })
  const v3 = await build('v3', (r) => { r.version = '3.0.0' })
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
  const spec = (uefi: boolean): VmSpec => ({
    memoryMb: 768,
    disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }],
    ...(uefi ? { uefi: { vars: uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-'))) } } : {}),
  })
  const boot = async (n: number, uefi = true) => {
    const r = await bootUntilPowerOff(spec(uefi), 600_000)
    t.comment(`boot ${n} (${uefi ? 'UEFI' : 'BIOS'}) under ${r.accel} in ${r.seconds.toFixed(1)} s`)
    t.notOk(r.timedOut, `boot ${n} ended by itself`, { serial: r.serial.slice(-3000) })
    return r.serial
  }
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
  t.match(statusLines(b6).at(-1), { version: '3.0.0', gpt: { active: 'A', primaryValid: true, backupValid: true, tablesAgree: true }, trial: null, problems: [] })
  // one disk for both firmware types: gptmbr and extlinux find the same flagged slot
  const b7 = await boot(7, false)
  t.notMatch(b7, /LABHOST-SELECTOR/, 'boot 7 (SeaBIOS): no selector on the BIOS path')
  t.match(b7, /LABHOST-USERSPACE version=3\.0\.0 slot=A/, 'the legacy-BIOS PC boots the same disk into 3.0.0 in slot A')
})

t.test('UEFI (OVMF, no CSM): the stick boots, installs unattended (ESP with the selector from the image), and the SSD then boots', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-uefi-stick-')
  // the lean test image, for a layout with an ESP: it then carries the selector (/boot/efi/BOOTX64.EFI)
  const recipe = leanRecipe(path.join(dir, 'lean-esp.yaml'), (r) => { r.layout = TEST_ESP_LAYOUT; r.imageSizeMiB = 64 })
  const key = cacheKeys().privateKeyFile
  const b = await runCli(['image', 'build', recipe, '--out', `${dir}/image`, '--key', key])
  t.equal(b.code, 0, 'image build (lean, ESP layout)', { stderr: b.stderr.slice(-2000) })
  fs.writeFileSync(`${dir}/install.yaml`, YAML.stringify({
    models: [{ vendor: DELL.manufacturer, product: DELL.product }],
    disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.05 } },
    finish: 'poweroff',
  }))
  const s = await runCli(['image', 'stick', '--image', `${dir}/image`, '--config', `${dir}/install.yaml`, '--out', `${dir}/stick.img`, '--key', key])
  t.equal(s.code, 0, 'image stick', { stderr: s.stderr.slice(-2000) })
  const ssd = sparseFile(`${dir}/ssd.img`, 512 * MiB)
  const hdd = sparseFile(`${dir}/hdd.img`, 64 * MiB)
  const vars = uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-')))
  const disks: VmSpec['disks'] = [{ file: ssd, bus: 'ide-hd', rotationRate: 1, bootIndex: 1 }, { file: hdd, bus: 'ide-hd', rotationRate: 7200, bootIndex: 2 }]
  const install = await bootUntilPowerOff({ memoryMb: 1024, smbios: DELL, uefi: { vars }, disks: [{ file: `${dir}/stick.img`, bus: 'usb-storage', bootIndex: 0 }, ...disks] },
    600_000, /labhost install refused \(exit \d+\)/)
  t.comment(`stick under UEFI: install done in ${install.seconds.toFixed(1)} s under ${install.accel}`)
  t.match(install.serial, /LABHOST-STICK-ROOT /, 'the stick system started from the stick\'s ESP', { serial: install.serial.slice(-3000) })
  t.match(install.serial, /LABHOST-STICK-INSTALL-END exit=0/, 'labhost install exit 0', { serial: install.serial.slice(-4000) })
  t.match(install.serial, /UEFI firmware/, 'the plan says the PC boots by UEFI')
  t.match(install.serial, /step: install the UEFI selector/, 'the selector went onto the SSD\'s ESP')
  t.ok(install.poweredOff, 'the PC powered off by itself (finish: poweroff)')

  // a new machine's variable store: the SSD boots by the removable-media path alone, no NVRAM entry
  const host = await bootUntilPowerOff({ memoryMb: 768, smbios: DELL, uefi: { vars: uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-'))) }, disks }, 300_000, /LABHOST-USERSPACE[^\n]*\n/)
  t.match(host.serial, /LABHOST-SELECTOR slot=A /, 'the SSD\'s selector picked slot A', { serial: host.serial.slice(-3000) })
  t.match(host.serial, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, 'the installed host runs from slot A')
  const report = JSON.parse((await readPartitionFiles(ssd, 'persistent', ['install-report.json']))['install-report.json']!)
  t.equal(report.firmware, 'uefi', 'the install report records the firmware type')
})

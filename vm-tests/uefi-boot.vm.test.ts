// UEFI-only PCs (issue 17, first part): a host disk with an EFI system partition holding only the
// selector at \EFI\BOOT\BOOTX64.EFI boots under OVMF (q35, no CSM, an empty variable store: no
// NVRAM boot entry) into the flagged root slot; the one-sector switch (`labhost slots switch`)
// moves it to the other slot, whose own kernel then starts; and the same disk still boots on a
// legacy-BIOS PC through gptmbr. The selector is image-build/selector.ts.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import YAML from 'yaml'
import { copyFileInto } from '../lib/blockdev.ts'
import { REPO_ROOT, runCli, sparseFile, tmpDir } from '../lib/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { buildSelector } from '../image-build/selector.ts'
import { buildCampaignImages } from './campaign.ts'
import { buildHostDisks, readPartitionFiles } from './fixtures/host-disks.ts'
import { leanRecipe } from './fixtures/lean-image.ts'

const MiB = 1 << 20
const DELL = { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' }
import { bootUntilPowerOff, uefiVarsCopy, type VmSpec } from './qemu.ts'

t.test('UEFI (OVMF, no CSM): the selector on the ESP boots the flagged slot; the one-sector switch moves it; BIOS boots the same disk', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-uefi-')
  const layout = { ...loadRecipe('test').layout, esp: { name: 'esp', partuuid: '6c1d1a2b-0a11-4b5e-9c3a-0000000000e5', sizeMiB: 32 } }
  // the lean 1.0.0 and 2.0.0 test images (the campaign's, prebuilt into the cache by npm test)
  const { dirs } = await buildCampaignImages(path.join(dir, 'images'))
  const selector = await buildSelector({ layout, out: path.join(dir, 'BOOTX64.EFI'), log: (l) => t.comment(l) })
  t.comment(`selector: ${selector.bytes} bytes, kernel ${selector.kernel}`)
  const disks = await buildHostDisks(dir, layout, `${dirs['1.0.0']}/root.img`, { slots: ['A'], flag: 'A', selector: selector.file })
  copyFileInto(`${dirs['2.0.0']}/root.img`, disks.ssd, disks.ssdPlan[1]!.firstLba * 512)
  const esp = disks.ssdPlan.find((p) => p.esp)
  t.ok(esp && esp.number === 6, 'the ESP is the last entry; the root slots stay entries 1 and 2')

  const spec = (uefi: boolean): VmSpec => ({
    memoryMb: 768,
    disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }],
    ...(uefi ? { uefi: { vars: uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-'))) } } : {}),
  })
  const boot = async (uefi: boolean, expect: { version: string; slot: string }) => {
    const r = await bootUntilPowerOff(spec(uefi), 300_000, /LABHOST-USERSPACE[^\n]*\n/)
    const what = `${uefi ? 'UEFI' : 'BIOS'} boot, slot ${expect.slot} flagged`
    t.comment(`${what}: userspace after ${r.seconds.toFixed(1)} s under ${r.accel}`)
    if (uefi) t.match(r.serial, new RegExp(`LABHOST-SELECTOR slot=${expect.slot} `), `${what}: the selector picked slot ${expect.slot}`, { serial: r.serial.slice(-3000) })
    else t.notMatch(r.serial, /LABHOST-SELECTOR/, `${what}: no selector on the BIOS path (gptmbr, extlinux)`)
    t.match(r.serial, new RegExp(`LABHOST-ROOT slot=${expect.slot} `), `${what}: the slot's own initramfs mounted slot ${expect.slot}`)
    t.match(r.serial, new RegExp(`LABHOST-USERSPACE version=${expect.version.replace(/\./g, '\\.')} slot=${expect.slot}`), `${what}: ${expect.version} runs`, { serial: r.serial.slice(-3000) })
  }
  await boot(true, { version: '1.0.0', slot: 'A' })
  const sw = await runCli(['slots', 'switch', '--disk', disks.ssd, '--to', 'B', '--json'])
  t.equal(sw.code, 0, 'labhost slots switch --to B', { stderr: sw.stderr })
  t.equal(JSON.parse(sw.stdout).writes[0].region, 'primary-array', 'the commit is the one array sector')
  await boot(true, { version: '2.0.0', slot: 'B' })
  await boot(false, { version: '2.0.0', slot: 'B' })
})

t.test('UEFI (OVMF, no CSM): the stick boots, installs unattended (ESP with the selector from the image), and the SSD then boots', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-uefi-stick-')
  // the lean test image, for a layout with an ESP: it then carries the selector (/boot/efi/BOOTX64.EFI)
  const layoutFile = path.join(dir, 'layout-esp.yaml')
  const base = YAML.parse(fs.readFileSync(path.join(REPO_ROOT, 'image-build/layouts/test.yaml'), 'utf8'))
  fs.writeFileSync(layoutFile, YAML.stringify({ ...base, esp: { name: 'esp', partuuid: '6c1d1a2b-0a11-4b5e-9c3a-0000000000e5', sizeMiB: 32 } }))
  const recipe = leanRecipe(path.join(dir, 'lean-esp.yaml'), (r) => { r.layout = layoutFile; r.imageSizeMiB = 64 })
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

// UEFI-only PCs (issue 17, first part): a host disk with an EFI system partition holding only the
// selector at \EFI\BOOT\BOOTX64.EFI boots under OVMF (q35, no CSM, an empty variable store: no
// NVRAM boot entry) into the flagged root slot; the one-sector switch (`labhost slots switch`)
// moves it to the other slot, whose own kernel then starts; and the same disk still boots on a
// legacy-BIOS PC through gptmbr. The selector is image-build/selector.ts.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { copyFileInto } from '../lib/blockdev.ts'
import { runCli, tmpDir } from '../lib/test-helpers.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { buildSelector } from '../image-build/selector.ts'
import { buildCampaignImages } from './campaign.ts'
import { buildHostDisks } from './fixtures/host-disks.ts'
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

// Crash-point replay of one real update, on a legacy-BIOS PC and on a UEFI one: the (lean) test
// image (1.0.0 in A) updates itself to 2.0.0 in QEMU while QEMU records every write and flush it
// sends to the SSD; then every state a power cut could leave is judged offline (crash-replay.ts,
// with the firmware's rules) — each must boot 1.0.0 or 2.0.0 — and a sample of states is booted
// for real to check the judgement. A switch that skips the CRC compensation, injected into the
// recording (the commit sector and its mirror), must be caught both offline and by the boot. On
// UEFI the sample includes the naive switch cut before its mirror write: OVMF finds the primary
// GPT invalid and rewrites it from the backup, so that state boots 1.0.0 — judged and booted.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { REPO_ROOT, tmpDir } from '../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildImage } from '../image-build/build.ts'
import type { Manifest } from '../image-format/manifest.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { buildSelector } from '../image-build/selector.ts'
import { loadLayout } from '../lib/layout.ts'
import { bootUntilPowerOff, uefiVarsCopy, type VmDisk, type VmSpec } from './qemu.ts'
import { buildHostDisks, stageUpdatePlan } from '../test-support/host-disks.ts'
import { stageLabhost } from './fixtures/lean-image.ts'
import { leanRecipe } from '../test-support/lean-recipe.ts'
import { materialize, replay, type ReplayInput } from './crash-replay.ts'
import { readWriteLog } from './write-log.ts'

for (const firmware of ['bios', 'uefi'] as const) {
  t.test(`${firmware}: every crash point of a recorded update boots 1.0.0 or 2.0.0; a naive switch is caught`, async (t) => {
    const uefi = firmware === 'uefi'
    const dir = tmpDir(t, `labhost-vm-replay-${firmware}-`)
    const keys = cacheKeys()
    const build = async (name: string, version: string) =>
      path.dirname(
        (
          await buildImage(
            leanRecipe(`${dir}/${name}.yaml`, (r) => {
              r.version = version
            }),
            { out: `${dir}/${name}`, keyFile: keys.privateKeyFile },
          )
        ).manifestFile,
      )
    const v1 = await build('v1', '1.0.0')
    const v2 = await build('v2', '2.0.0')
    const layout = uefi ? loadLayout(path.join(REPO_ROOT, 'image-build/layouts/test-esp.yaml')) : loadRecipe('test').layout
    const selector = uefi ? (await buildSelector({ layout, out: path.join(dir, 'BOOTX64.EFI') })).file : undefined
    const disks = await buildHostDisks(dir, layout, `${v1}/root.img`, { slots: ['A'], flag: 'A', restMiB: 160, selector })
    await stageLabhost(disks)
    await stageUpdatePlan(disks, { images: { v2 }, steps: [{ name: 'v2', args: '/qcow2/backing/v2 --reboot' }] })
    const before = `${dir}/ssd-before.img`
    fs.copyFileSync(disks.ssd, before)
    const hdd: VmDisk = { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }
    // every boot on a fresh UEFI variable store: nothing depends on NVRAM
    const machine = (ssd: VmDisk): VmSpec => ({
      disks: [ssd, hdd],
      ...(uefi ? { memoryMb: 768, uefi: { vars: uefiVarsCopy(fs.mkdtempSync(path.join(dir, 'vars-'))) } } : {}),
    })
    const rec = await bootUntilPowerOff(machine({ file: disks.ssd, bus: 'ide-hd', rotationRate: 1, writeLog: `${dir}/ssd.log` }), 600_000)
    t.comment(`recorded boot under ${rec.accel} in ${rec.seconds.toFixed(1)} s`)
    t.match(rec.serial, /LABHOST-STEP v2/)
    t.notMatch(rec.serial, /LABHOST-UPDATE-EXIT/, 'the update ran and rebooted', { serial: rec.serial.slice(-3000) })
    if (uefi) t.match(rec.serial, /LABHOST-SELECTOR slot=A /, 'booted through the selector')

    const writes = readWriteLog(`${dir}/ssd.log`)
    const after = materialize(before, writes, writes.length, `${dir}/replayed.img`)
    t.ok(fs.readFileSync(after).equals(fs.readFileSync(disks.ssd)), 'the recording replays to exactly the disk QEMU left')
    const d = openGptDisk(before)
    const gpt = readGpt(d)
    d.close()
    const range = (n: number) => ({
      offset: Number(gpt.entries[n]!.firstLba) * 512,
      bytes: Number(gpt.entries[n]!.lastLba - gpt.entries[n]!.firstLba + 1n) * 512,
    })
    const image = (d: string) => {
      const m = JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8')) as Manifest
      return { name: m.version, chunks: m.image.chunks, chunkSize: m.image.chunkSize, size: m.image.size }
    }
    const input: ReplayInput = { before, writes, sectorSize: 512, slots: { A: range(0), B: range(1) }, old: image(v1), new: image(v2), firmware }
    const report = replay(input)
    t.comment(
      `${writes.length} writes and flushes, ${report.epochs} flush epochs, ${report.states} crash states: old ${report.old}, new ${report.new}, bricked ${report.bricked.length}` +
        (uefi ? `, booting after the firmware restored the primary GPT ${report.restored}` : ''),
    )
    t.same(report.bricked, [], 'no crash state bricks the host')
    t.ok(report.old > 0 && report.new > 0, 'some states boot 1.0.0, the last ones 2.0.0')
    if (uefi) t.equal(report.restored, 0, 'the real switch never leaves the primary GPT invalid (the firmware never has to restore it)')

    // The naive switch: the same commit and mirror, but only the attribute bytes flipped (no compensation).
    const beforeBytes = fs.readFileSync(before)
    const changes = (w: (typeof writes)[number], at: number) =>
      w.offset <= at &&
      w.offset + w.length >= at + 512 &&
      !!w.data &&
      !w.data.subarray(at - w.offset, at + 512 - w.offset).equals(beforeBytes.subarray(at, at + 512))
    const commitIndex = writes.findIndex((w) => changes(w, 1024))
    t.ok(commitIndex > 0, `found the commit write (#${commitIndex})`)
    t.equal(writes[commitIndex]!.length, 512, 'the commit reaches the disk as one 512-byte write (DESIGN §3.4)')
    t.equal(writes[commitIndex]!.offset, 1024, 'at LBA 2, the sector holding both root entries')
    const mirrorAt = Number(gpt.backup.header!.entriesLba) * 512
    const mirrorIndex = writes.findIndex((w, i) => i > commitIndex && changes(w, mirrorAt))
    t.ok(mirrorIndex > commitIndex, `found the mirror write into the backup array (#${mirrorIndex})`)
    const naive = writes.map((w) => ({ ...w }))
    for (const [i, at] of [
      [commitIndex, 1024],
      [mirrorIndex, mirrorAt],
    ] as const) {
      const w = naive[i]!
      const sector = Buffer.from(beforeBytes.subarray(w.offset, w.offset + w.length))
      for (const entry of [0, 1]) sector[at - w.offset + entry * 128 + 48]! ^= 0x04
      w.data = sector
    }
    const bad = replay({ ...input, writes: naive })
    t.ok(bad.bricked.length > 0, `the naive switch is caught offline: ${bad.bricked.length} bricked state(s), e.g. ${bad.bricked[0]?.why}`)

    // An updater that commits before the slot is durable: the same writes, but no flush (and no
    // FUA) between the slot's last data write and the commit. (Skipping only labhost's fdatasync
    // is not enough to show it here: the trial state is fsynced on the same disk before the commit,
    // and that flush makes the slot durable too.) The replay's flush epochs must catch it.
    const slotB = input.slots.B
    const lastSlotWrite = writes.findLastIndex(
      (w, i) => i < commitIndex && !!w.data && w.length > 0 && w.offset < slotB.offset + slotB.bytes && w.offset + w.length > slotB.offset,
    )
    t.ok(
      lastSlotWrite > 0 && writes.slice(lastSlotWrite, commitIndex).some((w) => w.flush),
      "the real update flushes between the slot's last write and the commit",
    )
    const unsynced = writes.map((w, i) => (i > lastSlotWrite && i <= commitIndex ? { ...w, flush: false, fua: false } : w))
    const early = replay({ ...input, writes: unsynced })
    t.ok(
      early.bricked.some((b) => /does not hold a whole image/.test(b.why)),
      `a commit before the slot is durable is caught offline: ${early.bricked.length} bricked state(s), e.g. ${early.bricked[0]?.why}`,
    )

    // Boot a sample: the end (2.0.0 on trial; BIOS) and the naive end (no boot). (A state before the
    // commit boots 1.0.0: every reset of the campaign before the commit shows that for real.)
    // each ends at the first verdict on the console: userspace up, the initramfs giving up, or the
    // firmware finding nothing to boot (OVMF then starts its shell)
    const verdict = /LABHOST-USERSPACE version=\S+ slot=[AB]|LABHOST-INITRAMFS-FAIL|Shell> |No bootable option/
    const boot = async (file: string) => (await bootUntilPowerOff(machine({ file, bus: 'ide-hd', rotationRate: 1 }), 300_000, verdict)).serial
    // (under OVMF the final state is the one uefi-boot.vm.test.ts boots after its own update to
    // 2.0.0 from the same staged plan: it is not booted a second time here)
    if (!uefi) {
      const end = await boot(materialize(before, writes, writes.length, `${dir}/end.img`))
      t.match(end, /LABHOST-USERSPACE version=2\.0\.0 slot=B/, 'the final state boots 2.0.0, as judged')
      // the naive end state under BIOS (the state the campaign's naive-switch mutant, `npm run
      // vm-tests -- --mutant naive-switch`, leaves): gptmbr takes the flagged entry without a CRC
      // check, the kernel then takes neither GPT, and the initramfs gives up on its slots
      const broken = await boot(materialize(before, naive, naive.length, `${dir}/naive.img`))
      t.notMatch(broken, /LABHOST-USERSPACE/, 'the naive end state does not boot, as judged')
      t.match(broken, /no partitions named/, 'the initramfs found no root slots: the kernel took neither GPT', { serial: broken.slice(-3000) })
      t.match(broken, /LABHOST-INITRAMFS-FAIL/, 'and said so with its own failure marker (not a timeout)')
    }
    // the naive end state under OVMF: booted up to the firmware turning to its shell (the shell's
    // own countdown is not waited out)
    if (uefi) {
      const shell = /LABHOST-USERSPACE version=\S+ slot=[AB]|LABHOST-INITRAMFS-FAIL|Shell> |No bootable option|Boot\d+ "EFI Internal Shell"/
      const broken = (
        await bootUntilPowerOff(machine({ file: materialize(before, naive, naive.length, `${dir}/naive.img`), bus: 'ide-hd', rotationRate: 1 }), 300_000, shell)
      ).serial
      t.notMatch(broken, /LABHOST-USERSPACE/, 'the naive end state does not boot, as judged')
      t.match(broken, /Shell> |No bootable option|"EFI Internal Shell"/, 'the firmware finds no valid GPT and no ESP')

      // the naive commit without its mirror: primary invalid, backup valid and still 1.0.0's
      const judged = replay({ ...input, writes: naive.slice(0, mirrorIndex) })
      t.ok(judged.restored! > 0 && judged.bricked.length === 0, 'judged: the firmware restores the primary GPT from the backup and boots', { judged })
      const file = materialize(before, naive, mirrorIndex, `${dir}/naive-no-mirror.img`)
      const mid = await boot(file)
      t.match(mid, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, 'booted: OVMF took the backup GPT and 1.0.0 came up', { serial: mid.slice(-3000) })
      const m = openGptDisk(file)
      const restored = readGpt(m)
      m.close()
      t.ok(
        restored.primary.header !== null && restored.primary.problems.length === 0,
        'and the primary GPT on the disk is valid again (rewritten by the firmware)',
        { problems: restored.primary.problems },
      )
    }
  })
}

// Crash-point replay of one real update: the (lean) test image (1.0.0 in A) updates itself to 2.0.0 in
// QEMU while QEMU records every write and flush it sends to the SSD; then every state a power
// cut could leave is judged offline (crash-replay.ts) — each must boot 1.0.0 or 2.0.0 — and a
// sample of states is booted for real to check the judgement. A switch that skips the CRC
// compensation, injected into the recording, must be caught both offline and by the boot.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { tmpDir } from '../lib/test-helpers.ts'
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildImage } from '../image-build/build.ts'
import type { Manifest } from '../image-build/manifest.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { bootUntilPowerOff, type VmSpec } from './qemu.ts'
import { buildHostDisks, stageUpdatePlan } from './fixtures/host-disks.ts'
import { leanRecipe, stageLabhost } from './fixtures/lean-image.ts'
import { materialize, replay, type ReplayInput } from './crash-replay.ts'
import { readWriteLog } from './write-log.ts'

t.test('every crash point of a recorded update boots 1.0.0 or 2.0.0; a naive switch is caught', async (t) => {
  const dir = tmpDir(t, 'labhost-vm-replay-')
  const keys = cacheKeys()
  const build = async (name: string, version: string) =>
    path.dirname((await buildImage(leanRecipe(`${dir}/${name}.yaml`, (r) => { r.version = version }), { out: `${dir}/${name}`, keyFile: keys.privateKeyFile })).manifestFile)
  const v1 = await build('v1', '1.0.0')
  const v2 = await build('v2', '2.0.0')
  const disks = await buildHostDisks(dir, loadRecipe('test').layout, `${v1}/root.img`, { slots: ['A'], flag: 'A', restMiB: 160 })
  await stageLabhost(disks)
  await stageUpdatePlan(disks, { images: { v2 }, steps: [{ name: 'v2', args: '/qcow2/backing/v2 --reboot' }] })
  const before = `${dir}/ssd-before.img`
  fs.copyFileSync(disks.ssd, before)
  const hdd = { file: disks.hdd, bus: 'ide-hd' as const, rotationRate: 7200 }
  const rec = await bootUntilPowerOff({ disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1, writeLog: `${dir}/ssd.log` }, hdd] }, 600_000)
  t.comment(`recorded boot under ${rec.accel} in ${rec.seconds.toFixed(1)} s`)
  t.match(rec.serial, /LABHOST-STEP v2/)
  t.notMatch(rec.serial, /LABHOST-UPDATE-EXIT/, 'the update ran and rebooted', { serial: rec.serial.slice(-3000) })

  const writes = readWriteLog(`${dir}/ssd.log`)
  const after = materialize(before, writes, writes.length, `${dir}/replayed.img`)
  t.ok(fs.readFileSync(after).equals(fs.readFileSync(disks.ssd)), 'the recording replays to exactly the disk QEMU left')
  const gpt = readGpt(openGptDisk(before))
  const range = (n: number) => ({ offset: Number(gpt.entries[n]!.firstLba) * 512, bytes: Number(gpt.entries[n]!.lastLba - gpt.entries[n]!.firstLba + 1n) * 512 })
  const image = (d: string) => {
    const m = JSON.parse(fs.readFileSync(`${d}/manifest.json`, 'utf8')) as Manifest
    return { name: m.version, chunks: m.image.chunks, chunkSize: m.image.chunkSize, size: m.image.size }
  }
  const input: ReplayInput = { before, writes, sectorSize: 512, slots: { A: range(0), B: range(1) }, old: image(v1), new: image(v2) }
  const report = replay(input)
  t.comment(`${writes.length} writes and flushes, ${report.epochs} flush epochs, ${report.states} crash states: old ${report.old}, new ${report.new}, bricked ${report.bricked.length}`)
  t.same(report.bricked, [], 'no crash state bricks the host')
  t.ok(report.old > 0 && report.new > 0, 'some states boot 1.0.0, the last ones 2.0.0')

  // The naive switch: the same commit, but only the attribute bytes flipped (no compensation).
  const commitIndex = writes.findIndex((w) => w.offset <= 1024 && w.offset + w.length > 1024 && w.data && !w.data.subarray(1024 - w.offset, 1536 - w.offset).equals(fs.readFileSync(before).subarray(1024, 1536)))
  t.ok(commitIndex > 0, `found the commit write (#${commitIndex})`)
  t.equal(writes[commitIndex]!.length, 512, 'the commit reaches the disk as one 512-byte write (DESIGN §3.4)')
  t.equal(writes[commitIndex]!.offset, 1024, 'at LBA 2, the sector holding both root entries')
  const naive = writes.map((w) => ({ ...w }))
  const sector = Buffer.from(fs.readFileSync(before).subarray(naive[commitIndex]!.offset, naive[commitIndex]!.offset + naive[commitIndex]!.length))
  for (const entry of [0, 1]) sector[1024 - naive[commitIndex]!.offset + entry * 128 + 48]! ^= 0x04
  naive[commitIndex]!.data = sector
  const bad = replay({ ...input, writes: naive })
  t.ok(bad.bricked.length > 0, `the naive switch is caught offline: ${bad.bricked.length} bricked state(s), e.g. ${bad.bricked[0]?.why}`)

  // Boot a sample: just before the commit (1.0.0), the end (2.0.0 on trial), the naive end (no boot).
  // each ends at the first verdict on the console: userspace up, or the initramfs giving up
  const verdict = /LABHOST-USERSPACE version=\S+ slot=[AB]|LABHOST-INITRAMFS-FAIL/
  const boot = async (file: string) => (await bootUntilPowerOff({ disks: [{ file, bus: 'ide-hd', rotationRate: 1 }, hdd] } satisfies VmSpec, 300_000, verdict)).serial
  const pre = await boot(materialize(before, writes, commitIndex, `${dir}/pre-commit.img`))
  t.match(pre, /LABHOST-USERSPACE version=1\.0\.0 slot=A/, 'the state just before the commit boots 1.0.0, as judged')
  const end = await boot(materialize(before, writes, writes.length, `${dir}/end.img`))
  t.match(end, /LABHOST-USERSPACE version=2\.0\.0 slot=B/, 'the final state boots 2.0.0, as judged')
  const broken = await boot(materialize(before, naive, naive.length, `${dir}/naive.img`))
  t.notMatch(broken, /LABHOST-USERSPACE/, 'the naive end state does not boot, as judged')
  t.match(broken, /LABHOST-INITRAMFS-FAIL/, 'the initramfs finds no partitions')
})

// npm run demo: the main job on an embedded default, as far as it is built today:
// a two-slot disk with the real boot chain, booted in QEMU, switched to B, booted again.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { main as cli } from '../cli/main.ts'
import { bootUntilPowerOff, type VmSpec } from '../vm-tests/qemu.ts'
import { buildBootChainDisk, buildSlotImages, parseBootReport } from '../vm-tests/fixtures/boot-chain-disk.ts'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-demo-'))
const disk = path.join(dir, 'disk.img')
const say = (s: string) => console.log(`demo: ${s}`)
try {
  say('building two root slot images (Debian kernel + busybox initramfs, extlinux installed)')
  await buildBootChainDisk(disk, await buildSlotImages(dir))
  const spec: VmSpec = { disks: [{ file: disk, bus: 'ide-hd' }] }
  let failed = false
  for (const [i, expect] of (['A', 'B', 'A'] as const).entries()) {
    if (i > 0) {
      say(`labhost slots switch --disk ${disk} --to ${expect}`)
      if ((await cli(['slots', 'switch', '--disk', disk, '--to', expect])) !== 0) failed = true
    }
    const r = await bootUntilPowerOff(spec, 240_000)
    const rep = parseBootReport(r.serial)
    const parts = Object.entries(rep.disks.sda?.parts ?? {}).map(([d, n]) => `${d}:${n}`).join(' ')
    say(`booted slot ${rep.slot ?? '?'} under ${r.accel} in ${r.seconds.toFixed(1)} s; the kernel sees ${parts || 'no partitions'}`)
    if (rep.slot !== expect || !parts) failed = true
  }
  say(failed ? 'FAILED' : 'booted A, switched to B with one sector write, booted B, switched back, booted A')
  process.exitCode = failed ? 1 : 0
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}

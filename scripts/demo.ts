// npm run demo: the main job on the embedded default. Builds the `test` image twice (1.0.0 and
// 1.1.0, signed) and an installer stick with 1.0.0; boots the stick in QEMU on a blank
// Dell-shaped PC with a virtual SSD and HDD, where `labhost install` images them unattended and
// powers off; serves 1.1.0 over HTTP on this machine's loopback; boots the PC from its SSD, where
// the host runs `labhost update http://… --reboot` through QEMU user networking; boots 1.1.0 on
// trial in slot B and marks it good. `--firmware uefi`: the same on a UEFI-only PC (q35 + OVMF, no
// CSM): the images are built for a layout with an EFI system partition, the stick boots from its
// ESP, the installer puts the image's selector on the SSD's ESP, and the SSD boots through it.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { buildImage } from '../image-build/build.ts'
import { generateKeyPair } from '../image-format/manifest.ts'
import { loadRecipe, writeRecipeVariant } from '../image-build/recipe.ts'
import { serveDirectory } from '../lib/http-serve.ts'
import { parseArgs } from 'node:util'
import { bootUntilPowerOff, uefiVarsCopy, type VmSpec } from '../vm-tests/qemu.ts'
import { GUEST_SERVER, stageUpdatePlan } from '../test-support/host-disks.ts'
import { buildStick } from '../image-build/stick.ts'
import { planDisk } from '../installer/partition.ts'

const root = path.resolve(import.meta.dirname, '..')
const { values } = parseArgs({ options: { firmware: { type: 'string', default: 'bios' } } })
if (values.firmware !== 'bios' && values.firmware !== 'uefi') {
  console.error(`demo: --firmware ${values.firmware} is neither bios nor uefi`)
  process.exit(2)
}
const uefi = values.firmware === 'uefi'
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-demo-'))
const say = (s: string) => console.log(`demo: ${s}`)
let failed = false
try {
  say('building dist/labhost (the images and the stick carry it)')
  await execa(process.execPath, [path.join(root, 'scripts/build.ts')], { stdio: 'inherit' })
  const keys = generateKeyPair(path.join(dir, 'keys'))
  // for a UEFI PC: the test layout with an EFI system partition (the image then carries the selector)
  // (the 12 MiB selector then rides in the image too: the test image grows to its slot's size)
  const withEsp = (r: { layout: string; imageSizeMiB: number }) => {
    if (!uefi) return
    r.layout = path.join(root, 'image-build/layouts/test-esp.yaml')
    r.imageSizeMiB = 192
  }
  const v1Recipe = writeRecipeVariant('test', path.join(dir, 'test-1.0.0.yaml'), withEsp)
  const v2Recipe = writeRecipeVariant('test', path.join(dir, 'test-1.1.0.yaml'), (r) => {
    r.version = '1.1.0'
    withEsp(r)
  })
  const v1 = await buildImage(v1Recipe, { out: path.join(dir, 'v1'), keyFile: keys.privateKeyFile })
  say(`built test ${v1.manifest.version}: ${v1.manifest.image.size >> 20} MiB, ${v1.manifest.transport.size >> 20} MiB zstd, ${v1.seconds.toFixed(1)} s`)
  const v2 = await buildImage(v2Recipe, { out: path.join(dir, 'v2'), keyFile: keys.privateKeyFile })
  say(`built test ${v2.manifest.version}`)

  // The technician's part: a stick with 1.0.0 and install.yaml, booted on a blank Dell PC.
  const config = path.join(dir, 'install.yaml')
  fs.writeFileSync(
    config,
    'models: [{ vendor: Dell Inc., product: OptiPlex 7010 }]\ndisks:\n  ssd: { rotational: false, minSizeGiB: 0.5 }\n  hdd: { rotational: true, minSizeGiB: 0.05 }\nfinish: poweroff\n',
  )
  const stick = await buildStick({ imageDir: path.join(dir, 'v1'), config, out: path.join(dir, 'stick.img'), keyFile: keys.privateKeyFile })
  say(`built the installer stick ${stick.out} (${stick.sizeBytes >> 20} MiB) with 1.0.0 and install.yaml`)
  const ssd = path.join(dir, 'ssd.img')
  const hdd = path.join(dir, 'hdd.img')
  for (const [f, mib] of [
    [ssd, 640],
    [hdd, 64],
  ] as const) {
    fs.writeFileSync(f, '')
    fs.truncateSync(f, mib << 20)
  }
  // the PC's firmware: SeaBIOS, or OVMF with its own variable store (kept across its boots)
  const firmware: Partial<VmSpec> = uefi ? { uefi: { vars: uefiVarsCopy(dir) }, memoryMb: 1024 } : {}
  say(`boot 0: a blank Dell OptiPlex 7010 (SSD + HDD, ${uefi ? 'UEFI only' : 'legacy BIOS'}) boots the stick; labhost install runs unattended`)
  const inst = await bootUntilPowerOff(
    {
      ...firmware,
      smbios: { manufacturer: 'Dell Inc.', product: 'OptiPlex 7010' },
      disks: [
        { file: stick.out, bus: 'usb-storage', bootIndex: 0 },
        { file: ssd, bus: 'ide-hd', rotationRate: 1, bootIndex: 1 },
        { file: hdd, bus: 'ide-hd', rotationRate: 7200, bootIndex: 2 },
      ],
    },
    600_000,
    /labhost install refused/,
  )
  const instExit = /LABHOST-STICK-INSTALL-END exit=(\d+)/.exec(inst.serial)?.[1]
  say(`installed under ${inst.accel} in ${inst.seconds.toFixed(1)} s: labhost install exit ${instExit ?? '?'}${inst.poweredOff ? ', powered off' : ''}`)
  if (instExit !== '0') throw new Error(`the install failed:\n${inst.serial.slice(-3000)}`)
  const layout = loadRecipe(v1Recipe).layout
  const disks = { ssd, hdd, ssdPlan: planDisk(layout, 'ssd', fs.statSync(ssd).size, 512), hddPlan: planDisk(layout, 'hdd', fs.statSync(hdd).size, 512) }

  const server = await serveDirectory(path.join(dir, 'v2'))
  say(`serving ${path.join(dir, 'v2')} at ${server.url} (the guest sees it as ${GUEST_SERVER})`)
  await stageUpdatePlan(disks, { steps: [{ name: 'v1.1.0', args: `${GUEST_SERVER}/ --reboot` }] })

  const boot = async (expect: { version: string; slot: string }) => {
    const res = await bootUntilPowerOff(
      {
        ...firmware,
        disks: [
          { file: disks.ssd, bus: 'ide-hd', rotationRate: 1 },
          { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 },
        ],
        net: { forwards: [{ guestPort: 8080, hostPort: server.port }] },
      },
      600_000,
    )
    const m = /LABHOST-USERSPACE version=(\S+) slot=([AB])/.exec(res.serial)
    const mounts = [...res.serial.matchAll(/LABHOST-MOUNT (\S+)/g)].map((x) => x[1]).join(' ')
    say(
      `booted under ${res.accel} in ${res.seconds.toFixed(1)} s${uefi ? ` (UEFI: the selector picked slot ${/LABHOST-SELECTOR slot=([AB])/.exec(res.serial)?.[1] ?? '?'})` : ''}: version ${m?.[1] ?? '?'} from slot ${m?.[2] ?? '?'}; mounted ${mounts || 'nothing'}`,
    )
    if (m?.[1] !== expect.version || m?.[2] !== expect.slot) failed = true
    return res.serial
  }
  say(
    `boot 1: 1.0.0 runs \`labhost update ${GUEST_SERVER}/ --reboot\` (signature, a delta: the block index and only the chunks 1.0.0 lacks, chunk hashes, read-back, one-sector switch)`,
  )
  const first = await boot({ version: '1.0.0', slot: 'A' })
  const exit = /LABHOST-UPDATE-EXIT \S+ (\d+)/.exec(first)?.[1]
  say(
    exit === undefined
      ? `labhost update finished and rebooted the VM (${server.requests.length} HTTP requests, ${server.requests.reduce((n, q) => n + q.bytes, 0)} bytes served)`
      : `labhost update FAILED with exit ${exit}`,
  )
  if (exit !== undefined) failed = true
  say('boot 2: slot B on trial; the health check runs `labhost mark-good`')
  const second = await boot({ version: '1.1.0', slot: 'B' })
  say(/LABHOST-MARK (.*)/.exec(second)?.[1]?.trim() ?? 'not marked good')
  if (!/LABHOST-MARK slot B/.test(second)) failed = true
  await server.close() // QEMU connects its forward when it starts: the server outlives the boots
  say(
    failed
      ? 'FAILED'
      : 'built, installed from the stick onto SSD+HDD, booted 1.0.0 from A, updated to 1.1.0 over HTTP into B, booted it on trial, marked it good',
  )
} catch (e) {
  failed = true
  console.error(`demo: ${(e as Error).message}`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
  process.exit(failed ? 1 : 0)
}

// npm run demo: the main job on the embedded default, as far as labhost has grown.
// Builds the `test` image twice (versions 1.0.0 and 1.1.0, signed), lays out a virtual SSD and
// HDD by the test layout with 1.0.0 in slot A (`labhost install` will do this step once the
// installer issue lands), serves 1.1.0 over HTTP on this machine's loopback, boots the host in
// QEMU where it runs `labhost update http://… --reboot` through QEMU user networking, reboots
// into 1.1.0 on trial in slot B, and marks it good.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { buildImage } from '../image-build/build.ts'
import { generateKeyPair } from '../image-build/manifest.ts'
import { loadRecipe, writeRecipeVariant } from '../image-build/recipe.ts'
import { serveDirectory } from '../lib/http-serve.ts'
import { bootUntilPowerOff } from '../vm-tests/qemu.ts'
import { buildHostDisks, GUEST_SERVER, stageUpdatePlan } from '../vm-tests/fixtures/host-disks.ts'

const root = path.resolve(import.meta.dirname, '..')
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-demo-'))
const say = (s: string) => console.log(`demo: ${s}`)
let failed = false
try {
  if (!fs.existsSync(path.join(root, 'dist/labhost'))) {
    say('building dist/labhost (the images carry it)')
    await execa(process.execPath, [path.join(root, 'scripts/build.ts')], { stdio: 'inherit' })
  }
  const keys = generateKeyPair(path.join(dir, 'keys'))
  const v2Recipe = writeRecipeVariant('test', path.join(dir, 'test-1.1.0.yaml'), (r) => { r.version = '1.1.0' })
  const v1 = await buildImage('test', { out: path.join(dir, 'v1'), keyFile: keys.privateKeyFile })
  say(`built test ${v1.manifest.version}: ${v1.manifest.image.size >> 20} MiB, ${v1.manifest.transport.size >> 20} MiB zstd, ${v1.seconds.toFixed(1)} s`)
  const v2 = await buildImage(v2Recipe, { out: path.join(dir, 'v2'), keyFile: keys.privateKeyFile })
  say(`built test ${v2.manifest.version}`)

  const layout = loadRecipe('test').layout
  const disks = await buildHostDisks(dir, layout, path.join(dir, 'v1/root.img'), { slots: ['A'], flag: 'A', restMiB: 96 })
  say(`virtual SSD ${disks.ssd} (${disks.ssdPlan.map((p) => p.name).join(', ')}) and HDD ${disks.hdd} (${disks.hddPlan.map((p) => p.name).join(', ')}); 1.0.0 in slot A`)

  const server = await serveDirectory(path.join(dir, 'v2'))
  say(`serving ${path.join(dir, 'v2')} at ${server.url} (the guest sees it as ${GUEST_SERVER})`)
  await stageUpdatePlan(disks, { steps: [{ name: 'v1.1.0', args: `${GUEST_SERVER}/ --reboot` }] })

  const boot = async (expect: { version: string; slot: string }) => {
    const res = await bootUntilPowerOff({
      disks: [{ file: disks.ssd, bus: 'ide-hd', rotationRate: 1 }, { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 }],
      net: { forwards: [{ guestPort: 8080, hostPort: server.port }] },
    }, 600_000)
    const m = /LABHOST-USERSPACE version=(\S+) slot=([AB])/.exec(res.serial)
    const mounts = [...res.serial.matchAll(/LABHOST-MOUNT (\S+)/g)].map((x) => x[1]).join(' ')
    say(`booted under ${res.accel} in ${res.seconds.toFixed(1)} s: version ${m?.[1] ?? '?'} from slot ${m?.[2] ?? '?'}; mounted ${mounts || 'nothing'}`)
    if (m?.[1] !== expect.version || m?.[2] !== expect.slot) failed = true
    return res.serial
  }
  say(`boot 1: 1.0.0 runs \`labhost update ${GUEST_SERVER}/ --reboot\` (signature, download written as it streams, chunk hashes, read-back, one-sector switch)`)
  const first = await boot({ version: '1.0.0', slot: 'A' })
  const exit = /LABHOST-UPDATE-EXIT \S+ (\d+)/.exec(first)?.[1]
  say(exit === undefined ? `labhost update finished and rebooted the VM (${server.requests.length} HTTP requests)` : `labhost update FAILED with exit ${exit}`)
  if (exit !== undefined) failed = true
  await server.close()
  say('boot 2: slot B on trial; the health check runs `labhost mark-good`')
  const second = await boot({ version: '1.1.0', slot: 'B' })
  say(/LABHOST-MARK (.*)/.exec(second)?.[1]?.trim() ?? 'not marked good')
  if (!/LABHOST-MARK slot B/.test(second)) failed = true
  say(failed ? 'FAILED' : 'built, laid out SSD+HDD, booted 1.0.0 from A, updated to 1.1.0 over HTTP into B, booted it on trial, marked it good')
} catch (e) {
  failed = true
  console.error(`demo: ${(e as Error).message}`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
  process.exit(failed ? 1 : 0)
}

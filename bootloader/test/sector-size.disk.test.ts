// Exit 27 sectorSizeUnsupported: a disk whose logical sectors are neither 512 nor 4096 bytes
// (a loop device with --sector-size 1024 or 2048 here) is refused by every command that opens
// it — slots status/switch/repair, bootloader mbr, update and install — before any read of the
// table is trusted, and every byte of it is left as it was. The disk is a real labhost host disk
// (GPT made at 512 bytes, 1.0.0 in slot A) seen through the wrong sector size, so a command that
// went on would find something to write.
import fs from 'node:fs'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, hashWhole, loop, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, makeHostIn, type Images } from '../../test-support/update-fixtures.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-sector-size-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

const refusal = (t: Test, r: { code: number; stderr: string }, dev: string, size: number, what: string) => {
  t.equal(r.code, ExitCode.sectorSizeUnsupported, `${what}: exit 27`, failDiag(r))
  t.match(
    r.stderr,
    new RegExp(`labhost: error: ${dev} has ${size}-byte logical sectors\\n {2}hint: labhost supports 512-byte and 4096-byte \\(4Kn\\) disks\\n?$`),
    `${what}: one error line and its hint`,
  )
}

for (const sectorSize of [1024, 2048]) {
  t.test(`${sectorSize}-byte logical sectors: slots, bootloader mbr and update refuse, the disk byte-identical`, async (t) => {
    const d = tmpDir(t)
    const h = await makeHostIn(d, images, (file) => loop(t, file, { sectorSize }))
    t.equal(
      fs.readFileSync(`/sys/block/${h.device.replace('/dev/', '')}/queue/logical_block_size`, 'utf8').trim(),
      String(sectorSize),
      'the loop device reports the sector size',
    )
    const before = hashWhole(h.device)
    const commands: [string, string[]][] = [
      ['slots status', ['slots', 'status', '--disk', h.device]],
      ['slots switch', ['slots', 'switch', '--disk', h.device, '--to', 'B']],
      ['slots repair', ['slots', 'repair', '--disk', h.device]],
      ['bootloader mbr', ['bootloader', 'mbr', '--disk', h.device]],
      ['update', ['update', images.v2, ...h.args]],
      ['update --dry-run', ['update', images.v2, '--dry-run', ...h.args]],
    ]
    for (const [what, args] of commands) refusal(t, await runCli(args), h.device, sectorSize, what)
    const json = await runCli(['slots', 'switch', '--disk', h.device, '--to', 'B', '--json'])
    t.match(JSON.parse(json.stdout), { error: 'sectorSizeUnsupported', exitCode: 27 }, '--json carries the code')
    t.equal(hashWhole(h.device), before, 'the disk is byte-identical')
    t.same(fs.readdirSync(h.state), [], 'no trial state written')
  })
}

t.test('install onto an SSD with 2048-byte sectors: exit 27, both disks byte-identical, the reason on the stick', async (t) => {
  const d = tmpDir(t)
  fs.mkdirSync(`${d}/sys/class/dmi/id`, { recursive: true })
  for (const [f, v] of [
    ['sys_vendor', 'Dell Inc.'],
    ['product_name', 'OptiPlex 7010'],
  ])
    fs.writeFileSync(`${d}/sys/class/dmi/id/${f}`, `${v}\n`)
  fs.writeFileSync(
    `${d}/install.yaml`,
    YAML.stringify({
      models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
      disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 }, eraseForeignData: true },
      finish: 'none',
    }),
  )
  const ssd = await loop(t, sparseFile(`${d}/ssd.img`, 480 * MiB), { sectorSize: 2048 })
  const hdd = await loop(t, sparseFile(`${d}/hdd.img`, 40 * MiB))
  const before = [hashWhole(ssd), hashWhole(hdd)]
  const r = await runCli([
    'install',
    '--config',
    `${d}/install.yaml`,
    '--image',
    images.v1,
    '--ssd',
    ssd,
    '--hdd',
    hdd,
    '--sys-root',
    `${d}/sys`,
    '--report-dir',
    `${d}/reports`,
    '--trusted-key',
    images.keys.publicKeyFile,
  ])
  refusal(t, r, ssd, 2048, 'install')
  t.same([hashWhole(ssd), hashWhole(hdd)], before, 'SSD and HDD byte-identical')
  const reports = fs.readdirSync(`${d}/reports`)
  t.equal(reports.length, 1, 'a refusal report on the stick')
  t.match(JSON.parse(fs.readFileSync(`${d}/reports/${reports[0]}`, 'utf8')), { result: 'refused', exitCode: 27 })
})

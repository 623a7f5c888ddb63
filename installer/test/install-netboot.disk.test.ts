// labhost install --netboot: the installer a PC booted from the network takes install.yaml and
// the image from the server, and leaves its report, log and boot-local marker in the server's
// reports directory (labhost image serve --accept-reports). Merely booting from the network must
// never wipe a PC: install.yaml's netboot: gate images blank PCs and listed ones, declines any
// other (exit 59, disks byte-identical, marker uploaded so it boots its disk from then on).
// A refusal (an unlisted model) is reported to the server with the disks byte-identical.
// The PCs are loop devices and a sysfs tree; the server is `labhost image serve` on the loopback.
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { errorLines, failDiag, hashWhole, labhostCommand, loop, readRange, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { infoHash } from '../../image-format/torrent.ts'
import { startServer, type ServerProcess } from '../../test-support/serve-fixtures.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'
import { buildImages, type Images } from '../../test-support/update-fixtures.ts'

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-install-netboot-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

const CONFIG = {
  models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
  disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
  finish: 'none',
}

/** A netboot directory as `labhost netboot` lays it out (install.yaml, image/, reports/), served with uploads into reports/. */
async function netbootServer(
  t: Test,
  config: object,
  serveArgs = ['--accept-reports', 'reports'],
): Promise<{ out: string; server: ServerProcess; reports: () => string[] }> {
  const out = tmpDir(t)
  fs.mkdirSync(`${out}/image`)
  for (const f of fs.readdirSync(images.v1)) if (fs.statSync(`${images.v1}/${f}`).isFile()) fs.linkSync(`${images.v1}/${f}`, `${out}/image/${f}`)
  fs.mkdirSync(`${out}/reports`)
  fs.writeFileSync(`${out}/install.yaml`, YAML.stringify(config))
  const server = await startServer(t, out, serveArgs)
  return { out, server, reports: () => fs.readdirSync(`${out}/reports`).sort() }
}

interface Pc {
  ssd: string
  hdd: string
  mac: string
  args: (url: string, extra?: string[]) => string[]
}

async function pc(t: Test, mac: string, product = 'OptiPlex 7010', serial = 'CN0NETB01'): Promise<Pc> {
  const d = tmpDir(t)
  fs.mkdirSync(`${d}/sys/class/dmi/id`, { recursive: true })
  for (const [f, v] of [
    ['sys_vendor', 'Dell Inc.'],
    ['product_name', product],
    ['product_serial', serial],
  ])
    fs.writeFileSync(`${d}/sys/class/dmi/id/${f}`, `${v}\n`)
  const ssd = await loop(t, sparseFile(`${d}/ssd.img`, 480 * MiB), { directIo: true })
  const hdd = await loop(t, sparseFile(`${d}/hdd.img`, 40 * MiB), { directIo: true })
  return {
    ssd,
    hdd,
    mac,
    args: (url, extra = []) => [
      'install',
      '--netboot',
      url,
      '--boot-mac',
      mac,
      '--ssd',
      ssd,
      '--hdd',
      hdd,
      '--sys-root',
      `${d}/sys`,
      '--trusted-key',
      images.keys.publicKeyFile,
      ...extra,
    ],
  }
}

const hashes = (p: Pc) => ({ ssd: hashWhole(p.ssd), hdd: hashWhole(p.hdd) })
const hexraw = (mac: string) => mac.replace(/:/g, '')
const slotAHoldsV1 = (p: Pc) => {
  const gpt = readGpt(openGptDisk(p.ssd))
  const img = fs.readFileSync(`${images.v1}/root.img`)
  return slotStatus(gpt).active === 'A' && readRange(p.ssd, Number(gpt.entries[0]!.firstLba) * 512, img.length).equals(img)
}

const sideBySide: [string, (t: Test) => Promise<void>][] = []
const test = (name: string, fn: (t: Test) => Promise<void>) => void sideBySide.push([name, fn])

test('a blank PC installs from the server and leaves report, log and boot-local marker there; booted again, it is declined untouched', async (t) => {
  const s = await netbootServer(t, { ...CONFIG, netboot: {} })
  const p = await pc(t, '52:54:00:12:34:01')
  const url = `${s.server.url}/`

  const dry = await runCli([...p.args(url), '--dry-run'])
  t.equal(dry.code, 0, failDiag(dry))
  t.match(dry.stdout, /network install \(boot NIC 52:54:00:12:34:01\): may be imaged because its disks are all blank/)
  t.same(s.reports(), [], '--dry-run uploads nothing')

  const r = await runCli([...p.args(url), '--json'])
  t.equal(r.code, 0, 'installed', failDiag(r))
  t.ok(slotAHoldsV1(p), 'slot A holds the image and boots first')
  const files = s.reports()
  const report = files.find((f) => /^CN0NETB01-.*\.json$/.test(f))
  t.ok(report, `the report is on the server (${files.join(', ')})`)
  const parsed = JSON.parse(fs.readFileSync(`${s.out}/reports/${report}`, 'utf8'))
  t.equal(parsed.netboot.bootMac, '52:54:00:12:34:01', 'the report names the boot NIC')
  t.match(parsed.netboot.why, /blank/)
  t.equal(parsed.image.version, '1.0.0')
  const log = files.find((f) => /^CN0NETB01-.*\.log$/.test(f))
  t.ok(log, 'the install log is on the server')
  t.match(fs.readFileSync(`${s.out}/reports/${log}`, 'utf8'), /step: write the root image to slot A/)
  t.ok(files.includes(`${hexraw(p.mac)}.boot-local`), 'the boot-local marker for its MAC')
  const record = files.filter((f) => f.includes('unfinished'))
  t.same(record, [`${hexraw(p.mac)}-unfinished-install.json`], "the unfinished-install record is this PC's own")
  t.same(JSON.parse(fs.readFileSync(`${s.out}/reports/${record[0]}`, 'utf8')).disks, [], 'and emptied once it was done (HTTP has no delete)')
  fs.rmSync(`${s.out}/reports/${hexraw(p.mac)}.boot-local`)

  // the same PC network-boots again (the marker gone): its disks hold labhost now
  const before = hashes(p)
  const again = await runCli(p.args(url))
  t.equal(again.code, ExitCode.notToBeImaged, 'declined (exit 59)', failDiag(again))
  t.equal(errorLines(again).length, 1, 'one error line')
  t.match(
    errorLines(again)[0],
    /network-booted the installer, and .*install\.yaml does not let it be imaged: .* holds a GPT with 5 partition\(s\): rootA, rootB, persistent, log, backing; .* holds a GPT with 1 partition\(s\): user$/,
  )
  t.match(again.stderr, /hint: it boots on from its own disk, untouched; to image it, list its MAC or serial under netboot\.imageListed/)
  t.same(hashes(p), before, 'SSD and HDD byte-identical')
  t.ok(fs.existsSync(`${s.out}/reports/${hexraw(p.mac)}.boot-local`), 'the marker is uploaded again: the next boot goes to its disk')
  t.ok(
    s.reports().some((f) => /^CN0NETB01-declined-.*\.json$/.test(f)),
    'the decline is recorded on the server',
  )
})

test('a listed PC (by serial) is imaged again, keeping /persistent and its identity; a listed MAC too', async (t) => {
  const first = await netbootServer(t, { ...CONFIG, netboot: {} })
  const p = await pc(t, '52:54:00:12:34:02', 'OptiPlex 7010', 'CN0LISTED')
  const r1 = await runCli([...p.args(`${first.server.url}/`), '--json'])
  t.equal(r1.code, 0, failDiag(r1))
  const id1 = JSON.parse(r1.stdout).identity.machineUuid

  for (const entry of [{ serial: 'CN0LISTED' }, { mac: '52-54-00-12-34-02' }]) {
    const s = await netbootServer(t, { ...CONFIG, netboot: { imageBlank: false, imageListed: [entry] } })
    const r = await runCli([...p.args(`${s.server.url}/`), '--json'])
    t.equal(r.code, 0, `listed by ${Object.keys(entry)[0]}: imaged again`, failDiag(r))
    const report = JSON.parse(r.stdout)
    t.match(report.netboot.why, /is listed in .*netboot\.imageListed/)
    t.equal(report.identity.machineUuid, id1, 'the machine UUID on the kept /persistent stays')
    t.equal(report.identity.created, false)
    t.ok(slotAHoldsV1(p))
  }
})

test('a PC with data on a disk is declined by default (disks byte-identical); imageBlank: false declines even a blank one', async (t) => {
  const s = await netbootServer(t, { ...CONFIG, netboot: {} })
  const p = await pc(t, '52:54:00:12:34:03')
  const fd = fs.openSync(p.hdd, 'r+')
  fs.writeSync(fd, Buffer.from("a teacher's files"), 0, 17, 4096)
  fs.closeSync(fd)
  const before = hashes(p)
  const r = await runCli(p.args(`${s.server.url}/`))
  t.equal(r.code, ExitCode.notToBeImaged, failDiag(r))
  t.match(errorLines(r)[0], new RegExp(`${p.hdd} .* holds data in its first MiB`))
  t.same(hashes(p), before, 'SSD and HDD byte-identical')
  t.ok(s.reports().includes(`${hexraw(p.mac)}.boot-local`))

  const blank = await pc(t, '52:54:00:12:34:04')
  const s2 = await netbootServer(t, { ...CONFIG, netboot: { imageBlank: false } })
  const b2 = hashes(blank)
  const r2 = await runCli(blank.args(`${s2.server.url}/`))
  t.equal(r2.code, ExitCode.notToBeImaged, failDiag(r2))
  t.match(errorLines(r2)[0], /netboot\.imageBlank is false and it is not listed/)
  t.same(hashes(blank), b2)
})

test('an unlisted model is refused with its reason on the server, no marker, disks byte-identical', async (t) => {
  const s = await netbootServer(t, { ...CONFIG, netboot: {} })
  const p = await pc(t, '52:54:00:12:34:05', 'OptiPlex 9020', 'CZC9020X')
  const before = hashes(p)
  const r = await runCli(p.args(`${s.server.url}/`))
  t.equal(r.code, ExitCode.modelRejected, 'exit 51', failDiag(r))
  t.same(hashes(p), before, 'SSD and HDD byte-identical')
  const files = s.reports()
  const refused = files.find((f) => /^CZC9020X-refused-.*\.json$/.test(f))
  t.ok(refused, `the refusal is on the server (${files.join(', ')})`)
  t.equal(JSON.parse(fs.readFileSync(`${s.out}/reports/${refused}`, 'utf8')).error, 'modelRejected')
  t.ok(
    files.some((f) => /^CZC9020X-.*\.log$/.test(f)),
    'and its log',
  )
  t.notOk(files.includes(`${hexraw(p.mac)}.boot-local`), 'no marker: the admin looks at it, the PC does not boot away')
})

test('a server that does not accept reports: the install stops before its first disk write', async (t) => {
  const s = await netbootServer(t, { ...CONFIG, netboot: {} }, [])
  const p = await pc(t, '52:54:00:12:34:06')
  const before = hashes(p)
  const r = await runCli(p.args(`${s.server.url}/`))
  t.equal(r.code, ExitCode.downloadFailed, 'exit 36', failDiag(r))
  t.match(errorLines(r)[0], /PUT .*\/reports\/525400123406-unfinished-install\.json failed: HTTP 405/)
  t.same(hashes(p), before, 'SSD and HDD byte-identical')
})

test('a server that stops taking reports once the disks are being written: exit 62, the PC installed, no refusal recorded', async (t) => {
  const s = await netbootServer(t, { ...CONFIG, netboot: {} })
  const p = await pc(t, '52:54:00:12:34:08')
  const reports = `${s.out}/reports`
  const running = runCli(p.args(`${s.server.url}/`))
  // the unfinished-install record is stored just before the first disk write: from then on every
  // PUT fails (the reports directory is a file now)
  const record = `${reports}/${hexraw(p.mac)}-unfinished-install.json`
  for (const until = Date.now() + 60_000; Date.now() < until && !fs.existsSync(record);) await new Promise((r) => setTimeout(r, 50))
  t.ok(fs.existsSync(record), 'the record of the unfinished install is on the server')
  fs.renameSync(reports, `${reports}.gone`)
  fs.writeFileSync(reports, 'not a directory\n')
  const r = await running
  t.equal(r.code, ExitCode.installedNotRecorded, 'exit 62', failDiag(r))
  t.equal(errorLines(r).length, 1, 'one error line')
  t.match(
    errorLines(r)[0],
    new RegExp(`^labhost: error: installed test 1\\.0\\.0 on ${p.ssd} \\+ ${p.hdd}, but http://[^ ]+/reports/ did not take its record: `),
  )
  t.match(r.stderr, /hint: the disks are complete and the report is on the SSD \(\/persistent\/install-report\.json\)/)
  t.ok(slotAHoldsV1(p), 'slot A holds the image and boots first')
  fs.rmSync(reports)
  fs.renameSync(`${reports}.gone`, reports)
  t.same(
    s.reports().filter((f) => !f.includes('unfinished')),
    [],
    'no report, no refusal and no marker: the server took none',
  )
})

test('bad command lines and a bad install.yaml on the server', async (t) => {
  const p = await pc(t, '52:54:00:12:34:07')
  const s = await netbootServer(t, { ...CONFIG, netboot: { imageListed: [{ mac: 'not-a-mac' }] } })
  const before = hashes(p)
  const bad = await runCli(p.args(`${s.server.url}/`))
  t.equal(bad.code, ExitCode.configInvalid, failDiag(bad))
  t.match(errorLines(bad)[0], /\/install\.yaml: netboot\.imageListed\.0\.mac: a MAC address such as 52:54:00:12:34:56; found value "not-a-mac"/)
  const noMac = await runCli(['install', '--netboot', `${s.server.url}/`])
  t.equal(noMac.code, ExitCode.usage)
  t.match(noMac.stderr, /--netboot goes with --boot-mac/)
  const both = await runCli(['install', '--netboot', `${s.server.url}/`, '--boot-mac', p.mac, '--config', '/etc/hosts'])
  t.equal(both.code, ExitCode.usage)
  t.match(both.stderr, /--netboot and --config contradict each other/)
  const badMac = await runCli(['install', '--netboot', `${s.server.url}/`, '--boot-mac', '52:54:00'])
  t.equal(badMac.code, ExitCode.usage)
  t.match(badMac.stderr, /--boot-mac 52:54:00 is not a MAC address/)
  t.same(hashes(p), before)
})

// Over BitTorrent: `labhost netboot --torrent` publishes a .torrent in image/ and says so in
// netboot.json; the server seeds (labhost image seed), opentracker tracks. Everything runs in a
// network and PID namespace of its own (its only interface the loopback), so the seeders end with
// it and nothing reaches any network.
test('with the netboot directory made for BitTorrent, the image comes from the seeder, not over HTTP; slot A is the image', async (t) => {
  const d = tmpDir(t)
  fs.writeFileSync(`${d}/install.yaml`, YAML.stringify({ ...CONFIG, netboot: {} }))
  const out = `${d}/netboot`
  const made = await runCli([
    'netboot',
    '--image',
    images.v1,
    '--config',
    `${d}/install.yaml`,
    '--url',
    'http://127.0.0.1:8080',
    '--out',
    out,
    '--signing-key',
    images.keys.privateKeyFile,
    '--interface',
    'lo',
    '--torrent',
    '--tracker',
    'http://127.0.0.1:6969/announce',
    '--seed-minutes',
    '0',
  ])
  t.equal(made.code, 0, failDiag(made))
  t.match(JSON.parse(fs.readFileSync(`${out}/netboot.json`, 'utf8')).torrent, { tracker: 'http://127.0.0.1:6969/announce', seedMinutes: 0 })
  const torrent = fs.readdirSync(`${out}/image`).find((f) => f.endsWith('.torrent'))!
  fs.mkdirSync(`${d}/tracker`, { mode: 0o755 })
  fs.writeFileSync(`${d}/tracker/whitelist`, `${await infoHash(`${out}/image/${torrent}`)}\n`)
  fs.writeFileSync(`${d}/tracker.conf`, 'access.whitelist /whitelist\n')
  const p = await pc(t, '52:54:00:12:34:08')
  const script = [
    'ip link set lo up || exit 90',
    `opentracker -i 127.0.0.1 -p 6969 -P 6969 -d ${d}/tracker -f ${d}/tracker.conf >/dev/null 2>&1 &`,
    `$LABHOST image serve ${out} --port 8080 --accept-reports reports 2>${d}/serve.log &`,
    `$LABHOST image seed ${out}/image --tracker-interval 2 2>${d}/seed.log &`,
    `for i in $(seq 300); do grep -q serving ${d}/serve.log && grep -q seeding ${d}/seed.log && break; sleep 0.1; done`,
    'sleep 3',
    `$LABHOST "$@"`,
  ].join('\n')
  const args = [...p.args('http://127.0.0.1:8080/'), '--download-dir', `${d}/bt`, '--json']
  const r = await execa('unshare', ['--net', '--pid', '--kill-child', '--', 'sh', '-c', script, 'sh', ...args], {
    reject: false,
    timeout: 180_000,
    env: { LABHOST: labhostCommand().join(' ') },
  })
  t.equal(r.exitCode, 0, 'installed', { stderr: String(r.stderr).slice(-3000) })
  t.match(String(r.stderr), /downloaded root\.img\.zst with BitTorrent in/, 'the image came by BitTorrent')
  const served = fs.readFileSync(`${d}/serve.log`, 'utf8')
  t.notMatch(served, /^\d+ \/image\/root\.img\.zst /m, 'and not one byte of it over HTTP')
  t.match(served, /^200 \/image\/root\.img\.zst\.torrent /m, 'the .torrent did')
  t.ok(slotAHoldsV1(p), 'slot A holds the image')
  t.ok(
    fs.readdirSync(path.join(out, 'reports')).some((f) => /^CN0NETB01-.*\.json$/.test(f)),
    'the report is on the server',
  )
})

t.test('side by side', { jobs: 3 }, async (t) => {
  for (const [name, fn] of sideBySide) t.test(name, fn)
})

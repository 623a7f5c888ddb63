// labhost netboot: the directory a lab's image server serves for network installs. Everything the
// PCs would refuse is refused first, with OUT not created: a URL iPXE cannot fetch (https), an
// image whose signature does not verify, an install.yaml the installer would reject, a server
// address no interface holds. A good run writes what boot.ipxe, the installer and dnsmasq need,
// and netboot.json lists each file with its hash; made --torrent, its installer carries aria2c.
// (Booting it: vm-tests/netboot.vm.test.ts.)
import crypto from 'node:crypto'
import fs from 'node:fs'
import t from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { errorLines, failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, type Images } from '../../test-support/update-fixtures.ts'

const dir = tmpDir(t, 'labhost-netboot-test-')
let images: Images
const CONFIG = {
  models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
  disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
  netboot: { imageListed: [{ serial: 'CZC1' }] },
}

t.before(async () => {
  images = await buildImages(dir)
  fs.writeFileSync(`${dir}/install.yaml`, YAML.stringify(CONFIG))
})

const args = (out: string, over: Record<string, string> = {}) => {
  const o = {
    image: images.v1,
    config: `${dir}/install.yaml`,
    url: 'http://10.1.2.3:8080/netboot',
    out,
    'signing-key': images.keys.privateKeyFile,
    'server-address': '10.1.2.3',
    interface: 'eth0',
    ...over,
  }
  return ['netboot', ...Object.entries(o).flatMap(([k, v]) => (v === '' ? [] : [`--${k}`, v]))]
}
const errorLine = (stderr: string) => errorLines({ stderr })[0] ?? ''

t.test('refused before OUT is written: https, a bad signature, a bad install.yaml, an address no interface holds', async (t) => {
  const out = `${tmpDir(t)}/nb`
  const https = await runCli(args(out, { url: 'https://10.1.2.3/netboot' }))
  t.equal(https.code, ExitCode.usage, failDiag(https))
  t.match(errorLine(https.stderr), /netboot URL "https:\/\/10\.1\.2\.3\/netboot" /)

  const otherKey = `${tmpDir(t)}/other`
  t.equal((await runCli(['image', 'keygen', '--out', otherKey])).code, 0)
  const sig = await runCli(args(out, { 'signing-key': `${otherKey}/labhost-signing.key` }))
  t.equal(sig.code, ExitCode.signatureInvalid, 'an image not signed by the key the installer will trust: exit 30', failDiag(sig))

  fs.writeFileSync(`${dir}/bad.yaml`, YAML.stringify({ ...CONFIG, netboot: { imageListed: [{ mac: 'nope' }] } }))
  const bad = await runCli(args(out, { config: `${dir}/bad.yaml` }))
  t.equal(bad.code, ExitCode.configInvalid, failDiag(bad))
  t.match(errorLine(bad.stderr), /bad\.yaml: netboot\.imageListed\.0\.mac: a MAC address/)

  const noIf = await runCli(args(out, { interface: '', 'server-address': '10.255.254.253' }))
  t.equal(noIf.code, ExitCode.usage, failDiag(noIf))
  t.match(errorLine(noIf.stderr), /no interface of this machine holds 10\.255\.254\.253/)
  t.notOk(fs.existsSync(out), 'OUT was never created')
})

t.test(
  'a netboot directory (--torrent): boot.ipxe, kernel and initramfs with aria2c, install.yaml, the image and its .torrent, reports/, iPXE for TFTP, dnsmasq.conf, netboot.json',
  async (t) => {
    const out = `${tmpDir(t)}/nb`
    const r = await runCli([...args(out), '--torrent', '--tracker', 'http://10.1.2.3:6969/announce', '--seed-minutes', '5', '--json'])
    t.equal(r.code, 0, failDiag(r))
    const data = JSON.parse(r.stdout)
    t.match(data.gate, /blank PCs are imaged; listed: CZC1/)
    const ipxe = fs.readFileSync(`${out}/boot.ipxe`, 'utf8')
    t.match(ipxe, /^#!ipxe\n/)
    t.match(ipxe, /set base http:\/\/10\.1\.2\.3:8080\/netboot\n/)
    const conf = fs.readFileSync(`${out}/dnsmasq.conf`, 'utf8')
    t.match(conf, /^interface=eth0$/m)
    t.match(conf, /^dhcp-range=10\.1\.2\.3,proxy$/m)
    t.match(conf, new RegExp(`^tftp-root=${out}/tftp$`, 'm'))
    t.match(conf, /^pxe-service=tag:ipxe,x86PC,"labhost network install",http:\/\/10\.1\.2\.3:8080\/netboot\/boot\.ipxe$/m)
    t.same(fs.readFileSync(`${out}/install.yaml`, 'utf8'), fs.readFileSync(`${dir}/install.yaml`, 'utf8'))
    t.same(fs.readdirSync(`${out}/reports`), [], 'an empty reports/')
    t.same(fs.readdirSync(`${out}/tftp`).sort(), ['ipxe.efi', 'snponly.efi', 'undionly.kpxe'])
    const manifest = JSON.parse(fs.readFileSync(`${out}/netboot.json`, 'utf8'))
    t.equal(manifest.url, 'http://10.1.2.3:8080/netboot')
    t.same(manifest.image, { name: 'test', version: '1.0.0' })
    for (const f of manifest.files as { path: string; sha256: string; size: number }[]) {
      const bytes = fs.readFileSync(`${out}/${f.path}`)
      t.equal(crypto.createHash('sha256').update(bytes).digest('hex'), f.sha256, `${f.path}: its hash`)
      t.equal(bytes.length, f.size)
    }
    t.ok(
      manifest.files.some((f: { path: string }) => f.path === 'image/manifest.json'),
      'the image is in image/',
    )
    t.same(manifest.torrent, { tracker: 'http://10.1.2.3:6969/announce', seedMinutes: 5 })
    t.ok(fs.existsSync(`${out}/image/root.img.zst.torrent`), 'the .torrent beside the image')
    // the installer system the PCs boot: labhost and aria2c, each running with what the initramfs holds
    const root = tmpDir(t)
    await run('sh', ['-c', `zstd -dc '${out}/initrd.img' | busybox cpio -id`], { cwd: root })
    for (const [tool, says] of [
      ['/usr/sbin/labhost', /^labhost \d/],
      ['/usr/bin/aria2c', /^aria2 version /],
    ] as const) {
      const v = await run('chroot', [root, tool, '--version'])
      t.match(v.stdout, says, `${tool} runs from the initramfs`)
    }
  },
)

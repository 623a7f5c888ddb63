// The network installer's initramfs (docs/plans/netboot.md §0, §6): made from the stick recipe's
// cached build, it is one zstd frame the kernel can unpack (checksum, a window far below the
// kernel's limit) holding the stick's tree without /boot, the same labhost executable, /init,
// udhcpc's script, the image's own NIC and disk modules and their list; the kernel beside it is
// the image's. Then its /init runs under busybox with stubs for the hardware, the network and
// labhost: the NIC by BOOTIF, the fallbacks, no lease, and what each exit code leads to.
import crypto from 'node:crypto'
import fs from 'node:fs'
import zlib from 'node:zlib'
import t from 'tap'
import { run, runStatus } from '../../lib/exec.ts'
import { failDiag, tmpDir } from '../../test-support/test-helpers.ts'
import { buildImage } from '../build.ts'
import { cacheKeys } from '../cache-keys.ts'
import { readCpio } from '../cpio.ts'
import { findBusybox, INITRAMFS_MODULE_LIST } from '../initramfs.ts'
import { netbootInit, UDHCPC_SCRIPT_PATH, udhcpcScript } from '../initramfs-init.ts'
import { buildNetbootInitrd, type NetbootInitrd } from '../netboot-initrd.ts'

const dir = tmpDir(t, 'labhost-netboot-initrd-test-')
const busybox = findBusybox()
let rootImg = ''
let built: NetbootInitrd
let listing: string[] = []
const x = `${dir}/x`

const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex')
/** A file of the stick image, by debugfs (as the builder reads it, without a mount). */
async function fromImage(p: string): Promise<string> {
  const to = `${dir}/image-${p.replace(/\//g, '_')}`
  await run('debugfs', ['-R', `dump ${p} ${to}`, rootImg])
  return to
}

t.before(async () => {
  const stick = await buildImage('stick', { out: `${dir}/stick`, keyFile: cacheKeys().privateKeyFile })
  rootImg = `${dir}/stick/root.img`
  t.comment(`stick image ${stick.cached ? 'from the cache' : 'built'} in ${stick.seconds.toFixed(1)} s`)
  const started = Date.now()
  built = await buildNetbootInitrd({ rootImg, out: `${dir}/out` })
  t.comment(`initrd.img: ${built.bytes} bytes (${(built.bytes / 2 ** 20).toFixed(1)} MiB) in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  await run('sh', ['-c', `zstd -dc '${built.initrd}' > '${dir}/initrd.cpio'`])
  listing = (await run('sh', ['-c', `${busybox} cpio -t < '${dir}/initrd.cpio'`])).stdout.trim().split('\n')
  fs.mkdirSync(x)
  await run('sh', ['-c', `${busybox} cpio -i -d < '${dir}/initrd.cpio'`], { cwd: x })
})

t.test('one zstd frame with a checksum and a small window: what the kernel (CONFIG_RD_ZSTD) unpacks', async (t) => {
  t.equal(built.initrd, `${dir}/out/initrd.img`)
  t.equal(built.bytes, fs.statSync(built.initrd).size)
  t.same(fs.readdirSync(`${dir}/out`).sort(), ['initrd.img', 'vmlinuz'], 'nothing else left in out')
  const lv = (await run('zstd', ['-lv', built.initrd])).stdout
  t.match(lv, /# Zstandard Frames: 1\b/, 'one frame')
  t.match(lv, /Check: XXH64/)
  const windowBytes = Number(/Window Size: .*\((\d+) B\)/.exec(lv)?.[1])
  t.ok(windowBytes > 0 && windowBytes <= 8 << 20, `window ${windowBytes} B: no long mode`)
  t.ok(built.bytes < 80 << 20, `${built.bytes} bytes: the plan's ~55 MB, not the 170 MB tree`)
})

t.test("the stick's tree without /boot, the same labhost, /init, udhcpc's script", async (t) => {
  for (const p of ['init', 'usr/sbin/labhost', 'bin/busybox', 'dev/console', 'etc/labhost/trusted.pub', UDHCPC_SCRIPT_PATH, INITRAMFS_MODULE_LIST])
    t.ok(listing.includes(p), p)
  t.same(
    listing.filter((p) => /^(boot|lost\+found)(\/|$)/.test(p)),
    [],
    'no /boot (the kernel is served beside it), no lost+found',
  )
  t.ok(fs.statSync(`${x}/init`).mode & 0o100, '/init is executable')
  t.equal(fs.readFileSync(`${x}/init`, 'utf8'), netbootInit())
  t.equal(sha(`${x}/usr/sbin/labhost`), sha(await fromImage('/usr/sbin/labhost')), "labhost is the stick image's")
  t.ok(fs.statSync(`${x}/usr/sbin/labhost`).mode & 0o100, 'executable')
  t.equal(fs.statSync(`${x}/usr/lib/openssh/ssh-keysign`).mode & 0o7777, 0o4755, 'setuid kept (debugfs rdump drops it; the builder puts it back)')
  t.equal(fs.readFileSync(`${x}/${UDHCPC_SCRIPT_PATH}`, 'utf8'), udhcpcScript())
  t.ok(fs.statSync(`${x}/${UDHCPC_SCRIPT_PATH}`).mode & 0o100, "udhcpc's script is executable")
  t.equal(sha(built.vmlinuz), sha(await fromImage('/boot/vmlinuz')), "vmlinuz is the image's kernel")
  for (const f of ['init', UDHCPC_SCRIPT_PATH]) {
    const r = await runStatus(busybox, ['sh', '-n', `${x}/${f}`])
    t.equal(r.exitCode, 0, `busybox sh -n accepts /${f}`, failDiag(r))
  }
})

t.test("the NIC and disk modules of the image's own initramfs, in its load order", async (t) => {
  const list = fs.readFileSync(`${x}/${INITRAMFS_MODULE_LIST}`, 'utf8').trim().split('\n')
  for (const m of ['e1000.ko', 'virtio_net.ko', 'e1000e.ko', 'r8169.ko', 'ahci.ko', 'sd_mod.ko', 'virtio_blk.ko', 'ext4.ko', 'vfat.ko'])
    t.ok(list.includes(m), m)
  for (const m of list) t.ok(listing.includes(`lib/modules/${m}`), `lib/modules/${m} is there`)
  const imageInitrd = readCpio(zlib.gunzipSync(fs.readFileSync(await fromImage('/boot/initrd.img'))))
  const imageList = imageInitrd.find((e) => e.path === INITRAMFS_MODULE_LIST)
  t.same(
    list.join('\n') + '\n',
    imageList?.type === 'file' && Buffer.isBuffer(imageList.data) ? imageList.data.toString('utf8') : null,
    'the same list, the same order',
  )
  const e1000 = imageInitrd.find((e) => e.path === 'lib/modules/e1000.ko')
  t.ok(e1000?.type === 'file' && Buffer.isBuffer(e1000.data) && e1000.data.equals(fs.readFileSync(`${x}/lib/modules/e1000.ko`)), 'the same module files')
})

/** Stubs standing in for the hardware, busybox's network applets and the power switch. */
const STUBS = `say() { echo "say: $*"; }
ip() { echo "ip $*"; case "$*" in *"addr show"*) echo "    inet 10.9.0.7/24 brd 10.9.0.255 scope global";; esac; }
udhcpc() { echo "udhcpc $*"; return \${DHCP_RC:-0}; }
wget() { echo "wget $*"; return \${WGET_RC:-0}; }
sync() { :; }
sleep() { case "$1" in 60|3600) echo "sleep $1"; exit 0;; esac; }
poweroff() { echo "POWEROFF $*"; exit 0; }
reboot() { echo "REBOOT $*"; exit 0; }
`

/** The packed /init's fail() and stay(), then its lines `from` (inclusive) to `to` (exclusive), its paths moved into `d`. */
function initPart(d: string, from: string, to?: string): string {
  const lines = fs.readFileSync(`${x}/init`, 'utf8').split('\n')
  const at = (start: string) => lines.findIndex((l) => l.startsWith(start))
  const a = at(from)
  const b = to ? at(to) : lines.length
  return [...lines.slice(at('# a failure switches the PC off'), at('stay() {') + 1), ...lines.slice(a, b)]
    .join('\n')
    .replaceAll('/proc/cmdline', `${d}/cmdline`)
    .replaceAll('/sys/class/net', `${d}/net`)
    .replaceAll('/usr/sbin/labhost', `${d}/labhost`)
    .replaceAll('/run/labhost/', `${d}/run/`)
}

async function sh(script: string, env: Record<string, string> = {}): Promise<string> {
  const r = await runStatus(busybox, ['sh', '-c', script], { env: { ...process.env, ...env } as Record<string, string>, timeoutMs: 30_000 })
  if (r.exitCode !== 0) throw new Error(`busybox sh exited ${r.exitCode}: ${r.stderr}`)
  return r.stdout
}

t.test('/init under busybox: the NIC by BOOTIF, else one with a link; no URL, NIC or lease: off, never a reboot', async (t) => {
  const d = tmpDir(t)
  const nic = (name: string, mac: string, carrier: string | null) => {
    fs.mkdirSync(`${d}/net/${name}`, { recursive: true })
    fs.writeFileSync(`${d}/net/${name}/address`, `${mac}\n`)
    if (carrier !== null) fs.writeFileSync(`${d}/net/${name}/carrier`, `${carrier}\n`)
  }
  nic('lo', '00:00:00:00:00:00', '1')
  nic('eth0', '52:54:00:aa:00:01', '1')
  nic('eth1', '52:54:00:aa:00:02', null) // down: reading carrier fails
  const part = STUBS + initPart(d, 'URL=""; MAC=""', '# labhost writes the finish action')
  const boot = (cmdline: string, env: Record<string, string> = {}) => {
    fs.writeFileSync(`${d}/cmdline`, `${cmdline}\n`)
    return sh(part, env)
  }
  const url = 'http://10.9.0.1:8080/nb/'

  let out = await boot(`console=ttyS0,115200 panic=-1 quiet labhost.url=${url} BOOTIF=01-52-54-00-AA-00-02`)
  t.match(out, '\nudhcpc -i eth1 -n -t 20 -T 2 -s /etc/labhost/udhcpc.script\n', 'the BOOTIF NIC, link or not yet')
  t.match(out, `LABHOST-NETBOOT-START url=${url} mac=52:54:00:aa:00:02 if=eth1 ip=10.9.0.7\n`)

  out = await boot(`labhost.url=${url}`)
  t.match(out, `LABHOST-NETBOOT-START url=${url} mac=52:54:00:aa:00:01 if=eth0 ip=10.9.0.7\n`, 'no BOOTIF: the first NIC with a link, and its MAC')
  t.notMatch(out, /dev lo\b|-i lo\b/, 'never lo')

  out = await boot(`labhost.url=${url} BOOTIF=01-52-54-00-aa-00-09`)
  t.match(out, 'say: no NIC has the BOOTIF MAC 52:54:00:aa:00:09: using eth0')
  t.match(
    out,
    `LABHOST-NETBOOT-START url=${url} mac=52:54:00:aa:00:09 if=eth0`,
    'after 15 s: a NIC with a link; the server still knows the PC by the BOOTIF MAC',
  )

  out = await boot(`labhost.url=${url} BOOTIF=01-52-54-00-aa-00-02`, { DHCP_RC: '1' })
  t.match(out, 'LABHOST-NETBOOT-FAIL no DHCP lease on eth1\nPOWEROFF -f\n')
  t.notMatch(out, /REBOOT|LABHOST-NETBOOT-START/)

  out = await boot('BOOTIF=01-52-54-00-aa-00-02')
  t.match(out, 'LABHOST-NETBOOT-FAIL no labhost.url= on the kernel command line\nPOWEROFF -f\n')

  fs.writeFileSync(`${d}/net/eth0/carrier`, '0\n')
  out = await boot(`labhost.url=${url}`)
  t.match(out, 'LABHOST-NETBOOT-FAIL no network interface (BOOTIF MAC not given, and none with a link)\nPOWEROFF -f\n')
  t.notMatch(out, 'REBOOT')
})

t.test("/init under busybox: labhost's exit code: 0 per the finish file, 59 reboots only with the marker served, any other stays on", async (t) => {
  const d = tmpDir(t)
  fs.mkdirSync(`${d}/run`)
  // labhost install: writes the finish file as the real one does on success
  fs.writeFileSync(`${d}/labhost`, '#!/bin/sh\necho "labhost $*"\n[ -n "$FINISH" ] && echo "$FINISH" > "$7"\nexit $CODE\n', { mode: 0o755 })
  const part = `${STUBS}URL=http://10.9.0.1:8080/nb/\nMAC=52:54:00:aa:00:02\n${initPart(d, '( /usr/sbin/labhost install')}`
  const install = (env: Record<string, string>) => {
    fs.rmSync(`${d}/run/finish`, { force: true })
    return sh(part, env)
  }

  let out = await install({ CODE: '0', FINISH: 'reboot' })
  t.match(out, `labhost install --netboot http://10.9.0.1:8080/nb/ --boot-mac 52:54:00:aa:00:02 --finish-file ${d}/run/finish\n`)
  t.match(out, 'LABHOST-NETBOOT-INSTALL-END exit=0\nREBOOT -f\n')
  t.match(fs.readFileSync(`${d}/run/install.log`, 'utf8'), 'labhost install --netboot', "the installer's output is kept in /run/labhost/install.log")
  t.match(await install({ CODE: '0', FINISH: 'poweroff' }), 'LABHOST-NETBOOT-INSTALL-END exit=0\nPOWEROFF -f\n')
  out = await install({ CODE: '0', FINISH: 'none' })
  t.match(out, 'labhost install done (finish: none): this PC may be switched off or restarted\nsleep 60\n')
  t.notMatch(out, /REBOOT|POWEROFF/)
  out = await install({ CODE: '0' }) // no finish file: the same
  t.match(out, 'labhost install done (finish: none)')
  t.notMatch(out, /REBOOT|POWEROFF/)

  out = await install({ CODE: '59', WGET_RC: '0' })
  t.match(
    out,
    'LABHOST-NETBOOT-INSTALL-END exit=59\nLABHOST-NETBOOT-DECLINED\nwget -q -T 10 -O /dev/null http://10.9.0.1:8080/nb/reports/525400aa0002.boot-local\nREBOOT -f\n',
  )
  out = await install({ CODE: '59', WGET_RC: '1' })
  t.match(out, 'LABHOST-NETBOOT-DECLINED\n')
  t.match(out, 'say: the server does not serve http://10.9.0.1:8080/nb/reports/525400aa0002.boot-local')
  t.match(out, 'POWEROFF -f\n')
  t.notMatch(out, 'REBOOT', 'no marker on the server: a reboot would loop')

  for (const code of ['51', '1', '36']) {
    out = await install({ CODE: code })
    t.match(
      out,
      `LABHOST-NETBOOT-INSTALL-END exit=${code}\nlabhost install refused (exit ${code}): the reason is in the server's reports/\nsleep 60\n`,
      `exit ${code}`,
    )
    t.notMatch(out, /REBOOT|POWEROFF/, `exit ${code}: stays on`)
  }
})

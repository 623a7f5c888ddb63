// labhost netboot: the directory a lab's image server serves so that PCs install by network boot.
// The installer system is the stick's (same recipe, same labhost executable) packed as one
// initramfs; iPXE fetches it by boot.ipxe; dnsmasq in proxy-DHCP mode points PXE firmware at iPXE
// over TFTP without touching the lab's own DHCP server. Everything the PCs need is checked here,
// before the directory is written: the image's signature, install.yaml, the URL.
//
//   OUT/boot.ipxe  vmlinuz  initrd.img     what iPXE fetches (HTTP)
//   OUT/install.yaml  image/               what the installer fetches (HTTP)
//   OUT/reports/                           where PCs PUT reports (labhost image serve --accept-reports reports)
//   OUT/tftp/undionly.kpxe  snponly.efi  ipxe.efi    iPXE for PXE firmware (dnsmasq's TFTP)
//   OUT/dnsmasq.conf  netboot.json
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { fileDigest, readPrivateKey, verifyImageDir } from '../image-format/manifest.ts'
import { loadInstallConfig } from '../installer/config.ts'
import { buildImage } from './build.ts'
import { unpackDebianPackage } from './debian-packages.ts'
import { buildNetbootInitrd } from './netboot-initrd.ts'
import { checkNetbootUrl, renderDnsmasqConf, renderIpxeScript, type LocalBoot, type NetbootManifest } from './netboot-files.ts'
import { loadRecipe, writeRecipeVariant } from './recipe.ts'
import { publishImage } from '../image-format/torrent.ts'
import { run } from '../lib/exec.ts'

export interface NetbootOptions {
  /** The signed root image directory (manifest.json and its transport file). */
  imageDir: string
  /** install.yaml, with its netboot: gate. */
  config: string
  /** The URL the PCs reach OUT at: plain http (iPXE of Debian has no TLS). */
  url: string
  out: string
  /** The image's signing key: it signs the installer system too, which trusts its public half. */
  keyFile: string
  /** The server's IPv4 address and interface on the PCs' network (default: the URL's host, and the interface holding it). */
  serverAddress?: string
  interface?: string
  /** Where dnsmasq will find tftp/ (default: OUT/tftp's absolute path). */
  tftpRoot?: string
  localBoot?: LocalBoot
  efi?: 'snponly' | 'ipxe'
  /**
   * The image over BitTorrent too: a .torrent (these trackers, no web seed) in image/, and
   * netboot.json says so; the server seeds (labhost image seed OUT/image) and every PC seeds for
   * the room while it installs and `seedMinutes` after.
   */
  torrent?: { trackers: string[]; seedMinutes: number }
  log?: (line: string) => void
}

export interface NetbootResult {
  out: string
  manifest: NetbootManifest
  dnsmasqConf: string
  gate: string
}

/**
 * aria2c and the libraries it needs beyond the stick's (Debian 12): what the installer system of a
 * netboot directory made --torrent carries, so the PCs fetch the image from each other. About
 * 20 MB more in the initramfs (libicu72, by libxml2, is most of it).
 */
export const ARIA2_PACKAGES = [
  'aria2',
  'libaria2-0',
  'libc-ares2',
  'libgmp10',
  'libgnutls30',
  'libnettle8',
  'libhogweed6',
  'libidn2-0',
  'libp11-kit0',
  'libffi8',
  'libtasn1-6',
  'libunistring2',
  'libsqlite3-0',
  'libssh2-1',
  'libxml2',
  'libicu72',
]

/** What ARIA2_PACKAGES add to the stick's root filesystem (about 30 MiB, with room). */
const ARIA2_MIB = 48

const IPXE_FILES = [
  { name: 'undionly.kpxe', from: 'usr/lib/ipxe/undionly.kpxe' },
  { name: 'snponly.efi', from: 'usr/lib/ipxe/snponly.efi' },
  { name: 'ipxe.efi', from: 'boot/ipxe.efi' },
]

/** The interface holding `address` on this machine, or null. */
async function interfaceOf(address: string): Promise<string | null> {
  const { stdout } = await run('ip', ['-o', '-4', 'addr', 'show'])
  for (const line of stdout.split('\n')) {
    const m = /^\d+:\s+(\S+)\s+inet\s+([\d.]+)\//.exec(line)
    if (m?.[2] === address) return m[1]!
  }
  return null
}

/** Hard link when OUT is on the same filesystem (an image is hundreds of MB), else copy. */
function place(from: string, to: string): void {
  fs.rmSync(to, { force: true })
  try {
    fs.linkSync(from, to)
  } catch {
    fs.copyFileSync(from, to)
  }
}

export async function buildNetboot(o: NetbootOptions): Promise<NetbootResult> {
  const log = o.log ?? (() => {})
  const url = checkNetbootUrl(o.url)
  const host = new URL(url).hostname
  const serverAddress = o.serverAddress ?? host
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(serverAddress))
    throw new LabhostError(
      'usage',
      `the netboot URL names ${host}, not an IPv4 address, and no --server-address was given`,
      "give --server-address: the server's IPv4 address on the PCs' network (dnsmasq's proxy DHCP answers there)",
    )
  const iface = o.interface ?? (await interfaceOf(serverAddress))
  if (!iface)
    throw new LabhostError(
      'usage',
      `no interface of this machine holds ${serverAddress}`,
      "give --interface: the server's interface on the PCs' network (dnsmasq.conf names it; the file may be for another machine)",
    )
  // everything the PCs would refuse is refused here first
  const publicKey = crypto.createPublicKey(readPrivateKey(o.keyFile))
  const manifest = verifyImageDir(path.join(o.imageDir, 'manifest.json'), publicKey)
  const config = loadInstallConfig(o.config)
  const gate = config.netboot
    ? `blank PCs ${config.netboot.imageBlank ? 'are' : 'are not'} imaged; listed: ${config.netboot.imageListed.map((e) => e.mac ?? e.serial).join(', ') || 'none'}`
    : 'no netboot: in install.yaml: blank PCs are imaged, any other boots its own disk'

  fs.mkdirSync(o.out, { recursive: true })
  const out = fs.realpathSync(o.out)
  for (const d of ['image', 'reports', 'tftp']) fs.mkdirSync(path.join(out, d), { recursive: true })
  fs.copyFileSync(o.config, path.join(out, 'install.yaml'))
  for (const f of ['manifest.json', manifest.transport.file, `${manifest.transport.file}.torrent`]) {
    if (fs.existsSync(path.join(o.imageDir, f))) place(path.join(o.imageDir, f), path.join(out, 'image', f))
  }
  if (o.torrent) {
    // a .torrent of our own (unlinked first: the one placed may be the image directory's, hard-linked)
    fs.rmSync(path.join(out, 'image', `${manifest.transport.file}.torrent`), { force: true })
    const published = await publishImage(path.join(out, 'image'), { trackers: o.torrent.trackers })
    log(`image/${path.basename(published.torrentFile)}: info hash ${published.infoHash}`)
  }

  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-netboot-'))
  try {
    log(`building the installer system (recipe stick${o.torrent ? ', with aria2c' : ''}) and its initramfs`)
    await buildImage(installerSystemRecipe(work, !!o.torrent), { out: path.join(work, 'sys'), keyFile: o.keyFile, log })
    const initrd = await buildNetbootInitrd({ rootImg: path.join(work, 'sys/root.img'), out, log })
    log(`initrd.img: ${(initrd.bytes / 2 ** 20).toFixed(1)} MiB`)
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }

  const ipxe = fs.existsSync('/usr/lib/ipxe/undionly.kpxe') ? '/' : await unpackDebianPackage('ipxe')
  for (const f of IPXE_FILES) {
    const from = [path.join(ipxe, f.from), path.join('/', f.from)].find((p) => fs.existsSync(p))
    if (!from) throw new LabhostError('notFound', `iPXE's ${f.name} is not in Debian's ipxe package (${f.from})`, 'check the apt sources: Debian ships ipxe')
    fs.copyFileSync(from, path.join(out, 'tftp', f.name))
  }

  const cmdline = loadRecipe('stick').recipe.kernel?.cmdline ?? ''
  fs.writeFileSync(path.join(out, 'boot.ipxe'), renderIpxeScript({ baseUrl: url, kernelArgs: cmdline, localBoot: o.localBoot ?? 'exit' }))
  const dnsmasqConf = renderDnsmasqConf({
    serverAddress,
    interface: iface,
    tftpRoot: o.tftpRoot ?? path.join(out, 'tftp'),
    bootScriptUrl: `${url}/boot.ipxe`,
    efi: o.efi,
  })
  fs.writeFileSync(path.join(out, 'dnsmasq.conf'), dnsmasqConf)

  const listed = [
    'boot.ipxe',
    'vmlinuz',
    'initrd.img',
    'install.yaml',
    ...fs.readdirSync(path.join(out, 'image')).map((f) => `image/${f}`),
    ...IPXE_FILES.map((f) => `tftp/${f.name}`),
  ]
  const netboot: NetbootManifest = {
    url,
    image: { name: manifest.name, version: manifest.version },
    ...(o.torrent && { torrent: { tracker: o.torrent.trackers[0]!, seedMinutes: o.torrent.seedMinutes } }),
    files: listed.map((p) => ({ path: p, ...fileDigest(path.join(out, p)) })),
  }
  fs.writeFileSync(path.join(out, 'netboot.json'), JSON.stringify(netboot, null, 2) + '\n')
  return { out, manifest: netboot, dnsmasqConf, gate }
}

/** The installer system's recipe: the stick's, or with `torrent` a variant in `dir` that adds aria2c. */
export function installerSystemRecipe(dir: string, torrent: boolean): string {
  if (!torrent) return 'stick'
  return writeRecipeVariant('stick', path.join(dir, 'stick-bittorrent.yaml'), (r) => {
    r.base.packages = [...r.base.packages, ...ARIA2_PACKAGES.filter((p) => !r.base.packages.includes(p))]
    r.imageSizeMiB += ARIA2_MIB
    // the layout's slot size bounds the image; this system never goes into a slot (it becomes the initramfs)
    r.layout = path.join(path.dirname(r.layout), 'default.yaml')
  })
}

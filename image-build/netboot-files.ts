// The text files of a netboot directory (docs/plans/netboot.md, 2 and 3): boot.ipxe, which iPXE
// runs on each PC, the dnsmasq proxy-DHCP + TFTP config for the server, and the shape of
// netboot.json. Pure: image-build/netboot.ts writes them. Every value that lands in them is
// checked here first, since a space, quote or `$` would silently change what iPXE or dnsmasq does.
import { z } from 'zod'
import { LabhostError } from '../lib/errors.ts'
import { checkSchema, ManifestSchema, Sha256Hex } from '../image-format/manifest.ts'

/** What a PC that must not be imaged does from boot.ipxe: `exit` to the firmware, or (BIOS only) `sanboot` the first disk. */
export type LocalBoot = 'exit' | 'sanboot'

export interface IpxeScriptSpec {
  /** The netboot directory's URL (checkNetbootUrl). */
  baseUrl: string
  /** The stick's kernel command line (its recipe's kernel.cmdline). */
  kernelArgs: string
  localBoot: LocalBoot
}

export interface DnsmasqSpec {
  /** The netboot server's IPv4 address on the PCs' network: dnsmasq's proxy range names the subnet by it. */
  serverAddress: string
  interface: string
  /** The directory dnsmasq serves by TFTP (undionly.kpxe, snponly.efi, ipxe.efi). */
  tftpRoot: string
  /** boot.ipxe's URL, handed to iPXE in the proxy offer. */
  bootScriptUrl: string
  /** The UEFI iPXE: snponly.efi drives the NIC through the firmware's driver; ipxe.efi brings its own. */
  efi?: 'snponly' | 'ipxe'
}

// characters that end or change a word in boot.ipxe (settings expansion, `;`) or a field of a
// dnsmasq line (`,`, quotes), or that WHATWG URL parsing rewrites behind our back (`\` → `/`)
const UNSAFE = /[\s"'`$\\{};,]|\p{Cc}/u

const show = (c: string) => (/\s/.test(c) ? 'whitespace' : /\p{Cc}/u.test(c) ? 'a control character' : JSON.stringify(c))

function urlProblem(url: string): string | null {
  const bad = UNSAFE.exec(url)?.[0]
  if (bad !== undefined) return `contains ${show(bad)}, which would break boot.ipxe or the dnsmasq line`
  if (/^https:/i.test(url)) return "is https: Debian's iPXE (1.0.0+git-20190125) has no HTTPS; the image is verified by its signature, not by TLS"
  if (!/^http:\/\//i.test(url)) return 'is not an http:// URL'
  if (/^http:\/\/[/?#]|^http:\/\/$/i.test(url)) return 'has no host'
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return 'is not a URL'
  }
  if (u.username || u.password) return "contains a user name or password: it is written into boot.ipxe and every PC's kernel command line"
  // boot.ipxe appends file paths to the base, which a query or fragment would swallow
  if (/[?#]/.test(url)) return 'has a query or fragment'
  return null
}

/** `url` as boot.ipxe and dnsmasq take it: http://, a host, nothing that breaks either file; no trailing slash. */
export function checkNetbootUrl(url: string): string {
  const problem = urlProblem(url)
  if (problem) {
    throw new LabhostError(
      'usage',
      `netboot URL ${JSON.stringify(url)} ${problem}`,
      'give the plain http:// URL the PCs reach the netboot directory at, such as http://10.1.2.3/netboot (no user, query or special characters)',
      { url },
    )
  }
  return new URL(url).href.replace(/\/+$/, '')
}

/** `name` if it can be a Linux network interface's name (IFNAMSIZ: at most 15 characters). */
export function checkInterfaceName(name: string): string {
  if (/^[A-Za-z0-9_.:-]{1,15}$/.test(name) && name !== '.' && name !== '..') return name
  throw new LabhostError(
    'usage',
    `network interface ${JSON.stringify(name)} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . : -)`,
    "name the server's interface on the PCs' network as `ip -brief address` lists it, such as eth0",
    { interface: name },
  )
}

/** `address` if it is an IPv4 address in dotted-quad form (no leading zeros: some tools read those as octal). */
export function checkServerAddress(address: string): string {
  const parts = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address)?.slice(1)
  if (parts?.every((p) => Number(p) <= 255 && (p === '0' || !p.startsWith('0')))) return address
  throw new LabhostError(
    'usage',
    `server address ${JSON.stringify(address)} is not an IPv4 address such as 10.1.2.3`,
    "give the netboot server's own IPv4 address on the PCs' network",
    { address },
  )
}

/** `dir` if dnsmasq reads it whole as tftp-root: absolute, and no comma (its interface field), quote, `#` or space. */
function checkTftpRoot(dir: string): string {
  if (/^\/[^\s"'#,\\\p{Cc}]*$/u.test(dir)) return dir
  throw new LabhostError(
    'usage',
    `TFTP directory ${JSON.stringify(dir)} is not an absolute path without spaces, quotes, commas, # or backslashes`,
    'put the netboot directory at a plain path, such as /srv/labhost/netboot',
    { dir },
  )
}

// set by boot.ipxe itself: a second one on the command line would contradict it
const OWN_ARGS = ['initrd=', 'labhost.url=', 'BOOTIF=']

/** The kernel arguments as words iPXE passes on unchanged (no expansion, no `||`, `&&`, `;` or `#` tokens). */
function checkKernelArgs(args: string): string[] {
  const words = args.split(/\s+/).filter(Boolean)
  const bad = words.find((w) => !/^[A-Za-z0-9_.,:=/+@%~-]+$/.test(w) || OWN_ARGS.some((a) => w.startsWith(a)))
  if (bad === undefined) return words
  throw new LabhostError(
    'usage',
    `kernel argument ${JSON.stringify(bad)} cannot go into boot.ipxe`,
    `keep the stick's kernel.cmdline to plain words (letters, digits, _ . , : = / + @ % ~ -), without ${OWN_ARGS.join(' ')} (boot.ipxe sets those)`,
    { argument: bad },
  )
}

/**
 * boot.ipxe: a PC with a `<mac>.boot-local` marker in reports/ boots its own disk; any other loads
 * the installer's kernel and initrd. Only commands Debian's iPXE 1.0.0+git-20190125 has.
 */
export function renderIpxeScript(spec: IpxeScriptSpec): string {
  const base = checkNetbootUrl(spec.baseUrl)
  const args = checkKernelArgs(spec.kernelArgs)
  // `initrd=initrd.img` is how the 2019 iPXE (efi_file) hands the initrd to the EFI stub; harmless on BIOS
  const kernel = ['kernel ${base}/vmlinuz initrd=initrd.img', ...args, 'labhost.url=${base}/ BOOTIF=01-${netX/mac:hexhyp} || goto failed'].join(' ')
  // some BIOSes hang on `exit` (INT 18h); sanboot boots the first disk instead, UEFI still exits
  const local = spec.localBoot === 'sanboot' ? 'iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 || exit' : 'exit'
  return [
    '#!ipxe',
    '# generated by labhost netboot: a PC with reports/<mac>.boot-local boots its own disk, any other the installer',
    `set base ${base}`,
    // a trailing `||` is an empty command: a missing marker (404) is no failure
    'imgfetch --name seen ${base}/reports/${netX/mac:hexraw}.boot-local && goto local ||',
    kernel,
    'initrd ${base}/initrd.img || goto failed',
    'boot || goto failed',
    ':local',
    'imgfree',
    local,
    ':failed',
    'echo labhost: the network install could not start, booting the local disk',
    'sleep 10',
    'exit',
    '',
  ].join('\n')
}

/**
 * dnsmasq.conf: proxy DHCP (PXE options only, the lab's DHCP server keeps giving addresses) and
 * TFTP for the iPXE binaries; iPXE itself (user class "iPXE") gets boot.ipxe's URL, so no loop.
 */
export function renderDnsmasqConf(spec: DnsmasqSpec): string {
  const efi = `${spec.efi ?? 'snponly'}.efi`
  return [
    '# generated by labhost netboot: proxy DHCP and TFTP for network installs.',
    "# The lab's own DHCP server keeps handing out addresses; this only adds the boot file to its offers.",
    'port=0',
    `interface=${checkInterfaceName(spec.interface)}`,
    'bind-interfaces',
    `dhcp-range=${checkServerAddress(spec.serverAddress)},proxy`,
    'dhcp-no-override',
    'log-dhcp',
    'enable-tftp',
    `tftp-root=${checkTftpRoot(spec.tftpRoot)}`,
    'dhcp-userclass=set:ipxe,iPXE',
    // one service per architecture and no pxe-prompt: no menu to wait through; BC_EFI (7) is what
    // x86-64 UEFI firmware (OVMF too) sends, x86-64_EFI (9) what some others do. PXE firmware gets
    // iPXE by TFTP; iPXE (a chained one, or a NIC's own ROM) gets boot.ipxe's URL the same way, as
    // its boot server's file: a proxy offer's dhcp-boot file alone was "Nothing to boot" for the
    // 2019 iPXE (tried in QEMU)
    ...(['x86PC', 'BC_EFI', 'x86-64_EFI'] as const).flatMap((arch) => [
      `pxe-service=tag:!ipxe,${arch},"labhost network install",${arch === 'x86PC' ? 'undionly.kpxe' : efi}`,
      `pxe-service=tag:ipxe,${arch},"labhost network install",${checkNetbootUrl(spec.bootScriptUrl)}`,
    ]),
    '',
  ].join('\n')
}

const count = z.number().int().nonnegative()
// a file of the netboot directory, relative to it: plain names, no `..`, no hidden files
const netbootPath = z
  .string()
  .max(255)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._+-]*(\/[A-Za-z0-9][A-Za-z0-9._+-]*)*$/, 'a path inside the netboot directory (plain names, no .., not hidden)')

/** netboot.json: what a netbooted installer fetches, written by `labhost netboot`. .strict(): a new field is a new format. */
export const NetbootManifestSchema = z
  .object({
    url: z.string().superRefine((url, ctx) => {
      const problem = urlProblem(url)
      if (problem) ctx.addIssue({ code: 'custom', message: `the netboot URL ${problem}` })
      else if (checkNetbootUrl(url) !== url) ctx.addIssue({ code: 'custom', message: `not in the form labhost netboot writes: ${checkNetbootUrl(url)}` })
    }),
    image: z.object({ name: ManifestSchema.shape.name, version: ManifestSchema.shape.version }).strict(),
    torrent: z
      .object({
        tracker: z.string().regex(/^(https?|udp):\/\/[^/\s]+(\/\S*)?$/, 'a tracker announce URL (http, https or udp)'),
        seedMinutes: count,
      })
      .strict()
      .optional(),
    files: z.array(z.object({ path: netbootPath, sha256: Sha256Hex, size: count }).strict()).min(1),
  })
  .strict()
  .superRefine((m, ctx) => {
    const paths = m.files.map((f) => f.path)
    const twice = paths.find((p, i) => paths.indexOf(p) !== i)
    if (twice !== undefined) ctx.addIssue({ code: 'custom', path: ['files'], message: `${twice} is listed twice` })
  })

export type NetbootManifest = z.infer<typeof NetbootManifestSchema>

/** `v` (netboot.json from `where`) as a NetbootManifest, or manifestInvalid naming the first field that is wrong. */
export function parseNetbootManifest(v: unknown, where: string): NetbootManifest {
  return checkSchema(NetbootManifestSchema, v, where, 'write the netboot directory again with `labhost netboot` of this labhost version')
}

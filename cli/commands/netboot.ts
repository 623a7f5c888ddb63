// labhost netboot: prepare the directory an image server serves so that a lab's PCs install by
// network boot (image-build/netboot.ts), and say what to run next.
import { buildNetboot } from '../../image-build/netboot.ts'
import { defineCommand, oneOf, pathValue, SIGNING_KEY, text, url, wholeNumber } from '../command.ts'

export const netboot = defineCommand({
  name: 'netboot',
  summary: "prepare a directory for network installs: the stick's installer as kernel + initramfs, boot.ipxe, the image, install.yaml, dnsmasq.conf",
  usage: 'labhost netboot --image DIR --config install.yaml --url URL --out DIR --signing-key KEY [options]',
  notes:
    "Serve OUT with `labhost image serve OUT --accept-reports reports` (or any web server that accepts PUT into reports/), and run dnsmasq with OUT/dnsmasq.conf on the PCs' network: proxy DHCP, so the lab's DHCP server stays as it is. install.yaml's netboot: says which PCs may be imaged (default: blank ones); any other boots its own disk.",
  options: {
    image: {
      type: 'string',
      value: 'DIR',
      required: true,
      schema: pathValue(),
      description: 'the signed root image (a directory labhost image build made) the PCs install',
    },
    config: {
      type: 'string',
      value: 'FILE',
      required: true,
      schema: pathValue(),
      description: 'install.yaml: models, disks, finish, and netboot: (which PCs may be imaged); labhost schema install',
    },
    url: {
      type: 'string',
      value: 'URL',
      required: true,
      schema: text(),
      description: "the plain http:// URL the PCs reach OUT at, such as http://10.1.2.3/netboot (Debian's iPXE speaks no https)",
    },
    out: { type: 'string', value: 'DIR', required: true, schema: pathValue(), description: 'the directory to write (files in it are replaced)' },
    'signing-key': { ...SIGNING_KEY, aliases: ['key'] },
    'server-address': {
      type: 'string',
      value: 'IPV4',
      schema: text(),
      defaultText: "the URL's host",
      description: "the server's IPv4 address on the PCs' network (dnsmasq's proxy DHCP)",
    },
    interface: {
      type: 'string',
      value: 'NAME',
      schema: text(),
      defaultText: 'the interface holding the server address',
      description: "the server's interface on the PCs' network, named in dnsmasq.conf",
    },
    'tftp-root': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      defaultText: 'OUT/tftp',
      description: 'where dnsmasq finds tftp/ on the server, when OUT is copied elsewhere',
    },
    'local-boot': {
      type: 'string',
      value: 'HOW',
      schema: oneOf(['exit', 'sanboot'] as const),
      defaultText: 'exit',
      description:
        'how an imaged PC leaves iPXE for its disk: exit (back to the firmware boot order) or sanboot (BIOS: boot disk 0x80; for firmware that hangs on exit)',
    },
    efi: {
      type: 'string',
      value: 'WHICH',
      schema: oneOf(['snponly', 'ipxe'] as const),
      defaultText: 'snponly',
      description: "UEFI PCs' iPXE: snponly (the firmware's own NIC driver) or ipxe (iPXE's drivers)",
    },
    torrent: {
      type: 'boolean',
      description: "the image over BitTorrent as well: the PCs of a room fetch it from each other and the server's seeder (labhost image seed OUT/image)",
    },
    tracker: {
      type: 'string',
      value: 'URL',
      multiple: true,
      schema: url(['http:', 'https:', 'udp:'], 'http://10.1.2.3:6969/announce'),
      description: 'with --torrent: the BitTorrent tracker the .torrent names (the server can run opentracker)',
    },
    'seed-minutes': {
      type: 'string',
      value: 'N',
      schema: wholeNumber(0, 24 * 60),
      default: '10',
      description: 'with --torrent: how long each PC seeds for the room after its install, before its finish (reboot, power off)',
    },
  },
  requires: [
    ['tracker', 'torrent'],
    ['torrent', 'tracker'],
  ],
  dryRun: { refused: 'it writes only --out' },
  async run(values, _pos, ctx) {
    const r = await buildNetboot({
      imageDir: values.image,
      config: values.config,
      url: values.url,
      out: values.out,
      keyFile: values['signing-key'],
      serverAddress: values['server-address'],
      interface: values.interface,
      tftpRoot: values['tftp-root'],
      localBoot: values['local-boot'],
      efi: values.efi,
      torrent: values.torrent ? { trackers: values.tracker, seedMinutes: values['seed-minutes'] } : undefined,
      log: ctx.log,
    })
    // labhost image serve serves a directory at /: the one whose subdirectory is the URL's path
    const urlPath = new URL(r.manifest.url).pathname.replace(/^\/+|\/+$/g, '')
    const port = new URL(r.manifest.url).port || '80'
    const root = urlPath && r.out.endsWith(`/${urlPath}`) ? r.out.slice(0, -urlPath.length - 1) || '/' : urlPath ? null : r.out
    const serve = root
      ? `  labhost image serve ${root} --host 0.0.0.0 --port ${port} --accept-reports ${urlPath ? `${urlPath}/` : ''}reports`
      : `  serve ${r.out} at ${r.manifest.url}/ with PUT allowed into reports/ only (labhost image serve serves a directory at /)`
    const human = [
      `netboot directory ${r.out}: ${r.manifest.image.name} ${r.manifest.image.version} at ${r.manifest.url}/`,
      `which PCs are imaged: ${r.gate}`,
      'next, on the server:',
      serve,
      `  cp ${r.out}/dnsmasq.conf /etc/dnsmasq.d/labhost-netboot.conf && systemctl restart dnsmasq`,
      ...(r.manifest.torrent ? [`  labhost image seed ${r.out}/image    # and the tracker at ${r.manifest.torrent.tracker} (opentracker)`] : []),
      `then power on the PCs (network boot enabled); reports arrive in ${r.out}/reports/`,
    ].join('\n')
    return { data: r, human }
  },
})

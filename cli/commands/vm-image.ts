// labhost vm-image publish|pull|prune and labhost wake: the lab's VM base images (vmimages/).
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { DEFAULT_FETCH } from '../../image-format/source.ts'
import { DEFAULT_CATALOGUE } from '../../vmimages/catalogue.ts'
import { pruneVmImages, type PruneResult } from '../../vmimages/prune.ts'
import { publishVmImage } from '../../vmimages/publish.ts'
import { pullVmImage } from '../../vmimages/pull.ts'
import { DEFAULT_VM_TORRENT } from '../../vmimages/torrent-pull.ts'
import { PEER_PARTS } from '../../image-format/torrent.ts'
import { BT_CLIENT_CHOICES } from '../../image-format/bt-clients.ts'
import { GiB, gib } from '../../vmimages/space.ts'
import { DEFAULT_WAKE, parseMac, formatMac, sendWake, targetsFromReports, type WakeTarget } from '../../vmimages/wake.ts'
import { decimal, defineCommand, ipv4, oneOf, pathValue, SIGNING_KEY, text, TRUSTED_KEY, url, wholeNumber, type Options } from '../command.ts'
import { TORRENT_OPTIONS } from './image.ts'

const DIRS = {
  dir: {
    type: 'string',
    value: 'DIR',
    default: '/qcow2/backing',
    schema: pathValue(),
    description: 'the backing partition: the VM base images and their catalogue',
  },
  'user-dir': {
    type: 'string',
    value: 'DIR',
    default: '/qcow2/user',
    schema: pathValue(),
    description: "the user partition: the users' qcow2 volumes that rest on the bases",
  },
  catalogue: {
    type: 'string',
    value: 'FILE',
    schema: pathValue(),
    defaultText: 'DIR/catalogue.ini',
    description: 'the catalogue (INI) of the bases the VM front end offers',
  },
} as const satisfies Options

const RESERVE = {
  type: 'string',
  value: 'GIB',
  schema: decimal(0, 1 << 20),
  defaultText: '0: off',
  description: 'delete the least recently written volumes on current bases until the user partition has this many GiB free (rule 2)',
} as const

const catalogueOf = (values: { dir: string; catalogue?: string }): string =>
  values.catalogue ?? (values.dir === '/qcow2/backing' ? DEFAULT_CATALOGUE : `${values.dir.replace(/\/$/, '')}/catalogue.ini`)

const PRUNE_RULES = `rules (in this order; nothing else under --user-dir is ever touched):
  1. a volume (*.qcow2 under --user-dir, at any depth) whose backing chain ends on a base that was
     replaced (a *.qcow2 in --dir the catalogue no longer lists) or removed is deleted — unless a
     running QEMU holds it open (its image lock, checked with qemu-io) or a volume resting on it stays;
  2. --reserve-gib N (default 0: off): while the user partition has less than N GiB free, the volume
     on a current base that was least recently written (mtime; atime is not used: labhost's own
     header reads would refresh it, and noatime mounts never set it) is deleted, one at a time, never
     one in use or one another volume rests on, until N GiB are free or no such volume is left
     (then exit 73);
  3. a base in --dir that the catalogue no longer lists is deleted once no volume rests on it, no
     volume under --user-dir is unreadable, and no QEMU holds it open.
  Volumes resting on files outside --dir, volumes without a backing file and unreadable files are
  never touched. Each deletion renames the file aside, checks the lock again, then unlinks it.`

function pruneHuman(r: PruneResult): string {
  const lines: string[] = []
  for (const v of r.volumes)
    lines.push(
      `${v.action === 'delete' ? (r.applied ? 'deleted' : 'delete ') : 'keep   '} ${v.path} (${gib(v.bytes)}, written ${v.mtime.slice(0, 16)}): ${v.reason}`,
    )
  for (const b of r.bases) lines.push(`${b.action === 'delete' ? (r.applied ? 'deleted' : 'delete ') : 'keep   '} base ${b.path}: ${b.reason}`)
  for (const s of r.skipped) lines.push(`not deleted ${s.path}: ${s.reason}`)
  if (!r.volumes.length && !r.bases.length) lines.push('no volumes or bases found')
  const res = r.reserve
  lines.push(
    res.wantBytes
      ? `reserve ${gib(res.wantBytes)} on the user partition: ${gib(res.freeBytes)} free before, ${gib(res.freeAfterBytes)} ${r.applied ? 'after' : 'after this plan'}${res.met ? '' : ': NOT MET'}`
      : `no reserve (--reserve-gib): volumes on current bases are kept; ${gib(res.freeBytes)} free`,
  )
  if (!r.applied) lines.push('dry run: nothing was changed')
  return lines.join('\n')
}

const reserveOf = (values: { 'reserve-gib'?: number }): number => (values['reserve-gib'] ?? 0) * GiB

export const vmImagePublish = defineCommand({
  name: 'vm-image publish',
  summary: 'publish a qcow2 VM base image: NAME-VERSION.qcow2, its signed manifest and .torrent in --out',
  usage: 'labhost vm-image publish FILE.qcow2 --name NAME --image-version V --os TYPE --signing-key KEY --out DIR [options]',
  notes: `FILE must be qcow2 with no backing file of its own, clean by qemu-img check, and not open in a VM
(else exit 70); the checks are made on the published copy. One base per --out directory.`,
  options: {
    name: {
      type: 'string',
      value: 'NAME',
      required: true,
      schema: text(),
      description: "the base image's name in the catalogue (a new version of a name replaces the old)",
    },
    'image-version': {
      type: 'string',
      value: 'V',
      required: true,
      schema: text(),
      aliases: ['version'],
      description: "the base image's version; a host pulls only a newer one unless --allow-downgrade (--version elsewhere prints labhost's own)",
    },
    os: {
      type: 'string',
      value: 'TYPE',
      required: true,
      schema: text(),
      description: "the guest OS type the VM front end configures the VM for (the catalogue's os_type)",
    },
    'display-name': { type: 'string', value: 'TEXT', schema: text(), defaultText: 'NAME', description: 'the name the VM front end shows' },
    default: { type: 'boolean', description: 'make it the base the VM front end offers first' },
    'signing-key': SIGNING_KEY,
    out: {
      type: 'string',
      value: 'DIR',
      required: true,
      schema: pathValue(),
      description: 'the directory that gets the image, its signed manifest and its .torrent',
    },
    ...TORRENT_OPTIONS,
  },
  dryRun: { refused: 'it writes only into --out' },
  async run(values, positionals, ctx) {
    const file = positionals[0]
    if (!file) throw new LabhostError('usage', 'labhost vm-image publish needs a FILE.qcow2', `usage: ${this.usage}`)
    const r = await publishVmImage({
      file,
      name: values.name,
      version: values['image-version'],
      os: values.os,
      displayName: values['display-name'],
      isDefault: values.default,
      signingKey: values['signing-key'],
      out: values.out,
      trackers: values.tracker,
      webSeeds: values['web-seed'].length ? values['web-seed'] : undefined,
      log: ctx.log,
    })
    const m = r.manifest
    return {
      data: {
        manifest: r.manifestFile,
        image: r.imageFile,
        torrent: r.torrentFile,
        infoHash: r.infoHash,
        name: m.name,
        version: m.version,
        size: m.image.size,
        sha256: m.image.sha256,
        signer: m.signer,
      },
      human: `published ${m.name} ${m.version} (${m.os}${m.default ? ', default' : ''}): ${r.imageFile}\n  ${m.image.size} bytes sha256 ${m.image.sha256}\n  ${r.manifestFile} signed by ${m.signer}\n  ${r.torrentFile} info hash ${r.infoHash}`,
    }
  },
})

export const vmImagePull = defineCommand({
  name: 'vm-image pull',
  summary:
    'fetch a signed VM base image into /qcow2/backing over BitTorrent (building-aware) or HTTP, verified chunk by chunk, then update the catalogue and prune',
  usage: 'labhost vm-image pull URL|DIR [options]',
  notes: `Refused before any download: a bad signature (30), not a VM image manifest (42), a bad manifest (31),
an older version (33, --allow-downgrade), too little room on --dir (71). From a URL whose base has
a .torrent beside it (vm-image publish writes one), the file comes over BitTorrent (--bt-client, onto
--dir/.torrent/, seeded on for --seed-minutes); else, or with --http, over HTTP (resumed with Range
after a dropped connection). A pull killed or cut by a power loss resumes from what it has. Every
1 MiB chunk is checked against the signed manifest (32), the file fsync'd and renamed into place;
then the catalogue is replaced durably, then prune runs (see \`labhost vm-image prune --help\`).
Any refusal leaves the bases and the catalogue as they were.
--peers, for labs of several buildings with slow uplinks (one or two upstream hosts per building):
  all       any peer: the torrent's trackers, the server as a web seed, local peer discovery, peer exchange;
  building  only this subnet's peers (local peer discovery) and --tracker; never the server — no
            HTTP fallback either, so a building never pulls a copy per host over its uplink;
  upstream  the server and the torrent's trackers too, for the building's peers to fetch from;
            no peer exchange. A stalled BitTorrent download (--timeout) falls back to HTTP here and in all.`,
  options: {
    ...DIRS,
    'trusted-key': TRUSTED_KEY,
    'allow-downgrade': { type: 'boolean', description: "accept a version that is not newer than the catalogue's" },
    retries: {
      type: 'string',
      value: 'N',
      schema: wholeNumber(1, 1000),
      defaultText: String(DEFAULT_FETCH.retries),
      description: 'attempts per HTTP request (each resumes where the last stopped)',
    },
    timeout: {
      type: 'string',
      value: 'SECONDS',
      schema: wholeNumber(1, 86400),
      defaultText: `${DEFAULT_FETCH.timeoutMs / 1000}, over BitTorrent ${DEFAULT_VM_TORRENT.stallSeconds}`,
      description: 'an HTTP request that stalls this long is retried; a BitTorrent download that makes no progress this long fails',
    },
    'no-prune': { type: 'boolean', description: 'leave out the prune that follows the pull' },
    'reserve-gib': RESERVE,
    http: { type: 'boolean', description: 'download over HTTP even where a .torrent is published' },
    peers: {
      type: 'string',
      value: 'PART',
      schema: oneOf(PEER_PARTS),
      defaultText: DEFAULT_VM_TORRENT.peers,
      description: "BitTorrent: which peers this host uses — all, building (this subnet's only) or upstream (brings the base into its building)",
    },
    tracker: {
      type: 'string',
      value: 'URL',
      multiple: true,
      schema: url(['http:', 'https:', 'udp:'], 'http://tracker.building-b.lab:6969/announce'),
      description: "BitTorrent: also announce to this tracker (the building's own); with --peers building, the only one",
    },
    'seed-minutes': {
      type: 'string',
      value: 'N',
      schema: wholeNumber(0, 10080),
      defaultText: String(DEFAULT_VM_TORRENT.seedMinutes),
      description: 'BitTorrent: minutes the client seeds on after the download',
    },
    'tracker-interval': {
      type: 'string',
      value: 'SECONDS',
      schema: wholeNumber(1, 86400),
      defaultText: String(DEFAULT_VM_TORRENT.trackerIntervalSeconds),
      description: 'BitTorrent: seconds between announces to the trackers',
    },
    'bt-client': {
      type: 'string',
      value: 'CLIENT',
      schema: oneOf(BT_CLIENT_CHOICES),
      defaultText: DEFAULT_VM_TORRENT.client,
      description:
        "BitTorrent: the client — libtorrent (labhost's own on python3-libtorrent: it unchokes every peer, so a lab pulling a base at once finishes together), aria2c, or auto: libtorrent where python3-libtorrent is installed, else aria2c",
    },
  },
  conflicts: (['peers', 'tracker', 'seed-minutes', 'tracker-interval', 'bt-client'] as const).map(
    (o) => ['http', o, `--${o} is for BitTorrent: leave out --http or --${o}`] as const,
  ),
  dryRun: { plan: 'check the signature, the version and the room, print what would be downloaded and how; prune is not planned' },
  async run(values, positionals, ctx) {
    const source = positionals[0]
    if (!source) throw new LabhostError('usage', 'labhost vm-image pull needs a URL or DIR', `usage: ${this.usage}`)
    const { retries, timeout } = values
    const r = await pullVmImage({
      source,
      trustedKey: values['trusted-key'],
      backingDir: values.dir,
      userDir: values['user-dir'],
      catalogue: catalogueOf(values),
      fetch: { ...DEFAULT_FETCH, ...(retries ? { retries } : {}), ...(timeout ? { timeoutMs: timeout * 1000 } : {}), log: ctx.log },
      torrent: values.http
        ? undefined
        : {
            ...DEFAULT_VM_TORRENT,
            trackers: values.tracker,
            ...(values.peers ? { peers: values.peers } : {}),
            ...(values['bt-client'] !== undefined ? { client: values['bt-client'] } : {}),
            ...(values['seed-minutes'] !== undefined ? { seedMinutes: values['seed-minutes'] } : {}),
            ...(values['tracker-interval'] !== undefined ? { trackerIntervalSeconds: values['tracker-interval'] } : {}),
            ...(timeout ? { stallSeconds: timeout } : {}),
          },
      allowDowngrade: values['allow-downgrade'],
      prune: !values['no-prune'],
      reserveBytes: reserveOf(values),
      dryRun: ctx.dryRun,
      log: ctx.log,
      progress: ctx.progress(`pull ${source}`),
    })
    const p = r.plan
    const what =
      p.action === 'current'
        ? 'is installed already'
        : p.action === 'catalogue-only'
          ? 'was in place (verified): catalogue updated'
          : r.dryRun
            ? `would be downloaded${p.method === 'torrent' ? ' over BitTorrent' : ''}`
            : `installed as ${p.file}`
    const lines = [
      `${p.name} ${p.version} ${what}${p.previous && p.previous.version !== p.version ? ` (replaces ${p.previous.version})` : ''}`,
      `  ${p.size} bytes sha256 ${p.sha256}; ${gib(p.freeBytes)} free on the backing partition, ${gib(p.needBytes)} needed${p.resumableBytes ? `, ${p.resumableBytes} bytes of an interrupted pull on disk` : ''}`,
    ]
    if (r.download)
      lines.push(
        `  ${r.download.downloadedBytes} bytes downloaded${r.download.method === 'torrent' ? ' over BitTorrent' : ''} in ${r.download.seconds.toFixed(1)} s${r.download.resumedBytes ? `, ${r.download.resumedBytes} resumed` : ''}${r.download.seederPid ? `; ${r.download.client} (pid ${r.download.seederPid}) seeds on` : ''}`,
      )
    if (r.dryRun) lines.push('dry run: nothing was downloaded or written; prune runs after a pull')
    if (r.prune) lines.push(pruneHuman(r.prune))
    return { data: r, human: lines.join('\n'), exitCode: r.prune && !r.prune.reserve.met ? ExitCode.reserveNotMet : 0 }
  },
})

export const vmImagePrune = defineCommand({
  name: 'vm-image prune',
  summary: 'delete user volumes on replaced bases, bases nothing rests on, and (with a reserve) the least recently written volumes',
  usage: 'labhost vm-image prune [options]',
  notes: `${PRUNE_RULES}
exit ${ExitCode.reserveNotMet}: the --reserve-gib free space could not be reached.`,
  options: { ...DIRS, 'reserve-gib': RESERVE },
  dryRun: { plan: 'print the whole plan (the lock checks included)' },
  async run(values, _pos, ctx) {
    const r = await pruneVmImages({
      backingDir: values.dir,
      userDir: values['user-dir'],
      catalogue: catalogueOf(values),
      reserveBytes: reserveOf(values),
      dryRun: ctx.dryRun,
      log: ctx.log,
    })
    return { data: r, human: pruneHuman(r), exitCode: r.reserve.met ? 0 : ExitCode.reserveNotMet }
  },
})

export const wake = defineCommand({
  name: 'wake',
  summary: 'wake PCs with Wake-on-LAN magic packets (UDP broadcast from labhost itself), by MAC or from install reports',
  usage: 'labhost wake MAC... | --reports DIR [options]',
  options: {
    reports: {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      description: "wake every PC an install report in DIR names (machine.nics): an installer stick's reports/",
    },
    broadcast: {
      type: 'string',
      value: 'ADDRESS',
      default: DEFAULT_WAKE.address,
      schema: ipv4(),
      description: "where the packets go; a subnet's broadcast address (10.1.2.255) reaches another subnet when its router forwards directed broadcasts",
    },
    port: { type: 'string', value: 'N', schema: wholeNumber(1, 65535), default: String(DEFAULT_WAKE.port), description: 'the UDP port' },
    repeat: { type: 'string', value: 'N', schema: wholeNumber(1, 20), default: String(DEFAULT_WAKE.repeat), description: 'packets per PC (UDP may drop one)' },
  },
  dryRun: { refused: 'it only sends packets; nothing to plan' },
  async run(values, positionals) {
    const fromArgs: WakeTarget[] = positionals.map((m) => ({ mac: formatMac(parseMac(m)), from: 'command line' }))
    const targets = [...fromArgs, ...(values.reports !== undefined ? targetsFromReports(values.reports) : [])]
    if (!targets.length) throw new LabhostError('usage', 'labhost wake needs MAC addresses or --reports DIR', `usage: ${this.usage}`)
    const { broadcast: address, port, repeat } = values
    const r = await sendWake(targets, { address, port, repeat })
    return {
      data: { targets, address, port, packets: r.sent },
      human: `sent ${r.sent} magic packet(s) to ${address}:${port} for ${targets.length} PC(s): ${targets.map((t) => t.mac).join(', ')}`,
    }
  },
})

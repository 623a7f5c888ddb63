// labhost vm-image publish|pull|prune and labhost wake: the lab's VM base images (vmimages/).
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { DEFAULT_FETCH } from '../../updater/source.ts'
import { DEFAULT_CATALOGUE } from '../../vmimages/catalogue.ts'
import { pruneVmImages, type PruneResult } from '../../vmimages/prune.ts'
import { publishVmImage } from '../../vmimages/publish.ts'
import { pullVmImage } from '../../vmimages/pull.ts'
import { GiB, gib } from '../../vmimages/space.ts'
import { DEFAULT_WAKE, parseMac, formatMac, sendWake, targetsFromReports, type WakeTarget } from '../../vmimages/wake.ts'
import { numberOption, requireString, type Command } from '../command.ts'

const DIRS = {
  dir: { type: 'string', default: '/qcow2/backing' },
  'user-dir': { type: 'string', default: '/qcow2/user' },
  catalogue: { type: 'string' },
} as const

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
  for (const v of r.volumes) lines.push(`${v.action === 'delete' ? (r.applied ? 'deleted' : 'delete ') : 'keep   '} ${v.path} (${gib(v.bytes)}, written ${v.mtime.slice(0, 16)}): ${v.reason}`)
  for (const b of r.bases) lines.push(`${b.action === 'delete' ? (r.applied ? 'deleted' : 'delete ') : 'keep   '} base ${b.path}: ${b.reason}`)
  for (const s of r.skipped) lines.push(`not deleted ${s.path}: ${s.reason}`)
  if (!r.volumes.length && !r.bases.length) lines.push('no volumes or bases found')
  const res = r.reserve
  lines.push(res.wantBytes ? `reserve ${gib(res.wantBytes)} on the user partition: ${gib(res.freeBytes)} free before, ${gib(res.freeAfterBytes)} ${r.applied ? 'after' : 'after this plan'}${res.met ? '' : ': NOT MET'}`
    : `no reserve (--reserve-gib): volumes on current bases are kept; ${gib(res.freeBytes)} free`)
  if (!r.applied) lines.push('dry run: nothing was changed')
  return lines.join('\n')
}

const reserveOf = (values: Record<string, unknown>): number => (numberOption(values, 'reserve-gib', { min: 0, max: 1 << 20, fraction: true }) ?? 0) * GiB

export const vmImagePublish: Command = {
  name: 'vm-image publish',
  summary: 'publish a qcow2 VM base image: NAME-VERSION.qcow2, its signed manifest and .torrent in --out',
  usage: `labhost vm-image publish FILE.qcow2 --name NAME --version V --os TYPE [--display-name TEXT] [--default] --signing-key KEY --out DIR [--tracker URL...] [--web-seed URL...] [--json]
  FILE must be qcow2 with no backing file of its own, clean by qemu-img check, and not open in a VM
  (else exit 70); the checks are made on the published copy. One base per --out directory.`,
  options: {
    name: { type: 'string' }, version: { type: 'string' }, os: { type: 'string' }, 'display-name': { type: 'string' }, default: { type: 'boolean', default: false },
    'signing-key': { type: 'string' }, out: { type: 'string' }, tracker: { type: 'string', multiple: true }, 'web-seed': { type: 'string', multiple: true },
  },
  async run(values, positionals, ctx) {
    const file = positionals[0]
    if (!file) throw new LabhostError('usage', 'labhost vm-image publish needs a FILE.qcow2', `usage: ${this.usage}`)
    if (ctx.dryRun) throw new LabhostError('usage', 'vm-image publish has no --dry-run: it writes only into --out', 'leave out --dry-run')
    const r = await publishVmImage({
      file, name: requireString(values, 'name', this), version: requireString(values, 'version', this), os: requireString(values, 'os', this),
      displayName: typeof values['display-name'] === 'string' ? values['display-name'] : undefined, isDefault: values.default === true,
      signingKey: requireString(values, 'signing-key', this), out: requireString(values, 'out', this),
      trackers: (values.tracker as string[] | undefined) ?? [], webSeeds: values['web-seed'] as string[] | undefined, log: ctx.log,
    })
    const m = r.manifest
    return {
      data: { manifest: r.manifestFile, image: r.imageFile, torrent: r.torrentFile, infoHash: r.infoHash, name: m.name, version: m.version, size: m.image.size, sha256: m.image.sha256, signer: m.signer },
      human: `published ${m.name} ${m.version} (${m.os}${m.default ? ', default' : ''}): ${r.imageFile}\n  ${m.image.size} bytes sha256 ${m.image.sha256}\n  ${r.manifestFile} signed by ${m.signer}\n  ${r.torrentFile} info hash ${r.infoHash}`,
    }
  },
}

export const vmImagePull: Command = {
  name: 'vm-image pull',
  summary: 'fetch a signed VM base image into /qcow2/backing, verified chunk by chunk, then update the catalogue and prune',
  usage: `labhost vm-image pull URL|DIR [--trusted-key PUB] [--dir /qcow2/backing] [--user-dir /qcow2/user] [--catalogue FILE] [--allow-downgrade] [--retries N] [--timeout SECONDS] [--no-prune] [--reserve-gib N] [--dry-run] [--json]
  Refused before any download: a bad signature (30), not a VM image manifest (42), a bad manifest (31),
  an older version (33, --allow-downgrade), too little room on --dir (71). The file is downloaded
  over HTTP (resumed with Range after a dropped connection; a pull killed or cut by a power loss
  resumes from its verified bytes), every 1 MiB chunk checked (32), fsync'd, renamed into place;
  then the catalogue (default DIR/catalogue.ini) is replaced durably, then prune runs (see
  \`labhost vm-image prune --help\`). Any refusal leaves --dir and the catalogue as they were.`,
  options: {
    ...DIRS, 'trusted-key': { type: 'string', default: '/etc/labhost/trusted.pub' }, 'allow-downgrade': { type: 'boolean', default: false },
    retries: { type: 'string' }, timeout: { type: 'string' }, 'no-prune': { type: 'boolean', default: false }, 'reserve-gib': { type: 'string' },
  },
  async run(values, positionals, ctx) {
    const source = positionals[0]
    if (!source) throw new LabhostError('usage', 'labhost vm-image pull needs a URL or DIR', `usage: ${this.usage}`)
    const dir = String(values.dir)
    const retries = numberOption(values, 'retries', { min: 1, max: 1000 })
    const timeout = numberOption(values, 'timeout', { min: 1, max: 86400 })
    const r = await pullVmImage({
      source, trustedKey: String(values['trusted-key']), backingDir: dir, userDir: String(values['user-dir']),
      catalogue: typeof values.catalogue === 'string' ? values.catalogue : dir === '/qcow2/backing' ? DEFAULT_CATALOGUE : `${dir.replace(/\/$/, '')}/catalogue.ini`,
      fetch: { ...DEFAULT_FETCH, ...(retries ? { retries } : {}), ...(timeout ? { timeoutMs: timeout * 1000 } : {}), log: ctx.log },
      allowDowngrade: values['allow-downgrade'] === true, prune: values['no-prune'] !== true, reserveBytes: reserveOf(values),
      dryRun: ctx.dryRun, log: ctx.log, progress: ctx.progress(`pull ${source}`),
    })
    const p = r.plan
    const what = p.action === 'current' ? 'is installed already' : p.action === 'catalogue-only' ? 'was in place (verified): catalogue updated' : r.dryRun ? 'would be downloaded' : `installed as ${p.file}`
    const lines = [`${p.name} ${p.version} ${what}${p.previous && p.previous.version !== p.version ? ` (replaces ${p.previous.version})` : ''}`,
      `  ${p.size} bytes sha256 ${p.sha256}; ${gib(p.freeBytes)} free on the backing partition, ${gib(p.needBytes)} needed${p.resumableBytes ? `, ${p.resumableBytes} bytes of an interrupted pull on disk` : ''}`]
    if (r.download) lines.push(`  ${r.download.downloadedBytes} bytes downloaded in ${r.download.seconds.toFixed(1)} s${r.download.resumedBytes ? `, ${r.download.resumedBytes} resumed` : ''}`)
    if (r.dryRun) lines.push('dry run: nothing was downloaded or written; prune runs after a pull')
    if (r.prune) lines.push(pruneHuman(r.prune))
    return { data: r, human: lines.join('\n'), exitCode: r.prune && !r.prune.reserve.met ? ExitCode.reserveNotMet : 0 }
  },
}

export const vmImagePrune: Command = {
  name: 'vm-image prune',
  summary: 'delete user volumes on replaced bases, bases nothing rests on, and (with a reserve) the least recently written volumes',
  usage: `labhost vm-image prune [--dir /qcow2/backing] [--user-dir /qcow2/user] [--catalogue FILE] [--reserve-gib N] [--dry-run] [--json]
${PRUNE_RULES}
  --dry-run prints the whole plan (the lock checks included) and changes nothing.`,
  options: { ...DIRS, 'reserve-gib': { type: 'string' } },
  async run(values, _pos, ctx) {
    const dir = String(values.dir)
    const r = await pruneVmImages({
      backingDir: dir, userDir: String(values['user-dir']), catalogue: typeof values.catalogue === 'string' ? values.catalogue : dir === '/qcow2/backing' ? DEFAULT_CATALOGUE : `${dir.replace(/\/$/, '')}/catalogue.ini`,
      reserveBytes: reserveOf(values), dryRun: ctx.dryRun, log: ctx.log,
    })
    return { data: r, human: pruneHuman(r), exitCode: r.reserve.met ? 0 : ExitCode.reserveNotMet }
  },
}

export const wake: Command = {
  name: 'wake',
  summary: 'wake PCs with Wake-on-LAN magic packets (UDP broadcast from labhost itself), by MAC or from install reports',
  usage: `labhost wake MAC... | --reports DIR [--broadcast ADDRESS] [--port N] [--repeat N] [--json]
  --reports: the MACs (machine.nics) of every install report in DIR (an installer stick's reports/).
  --broadcast: 255.255.255.255 by default (the networks of this machine's default route); a subnet's
  broadcast address (10.1.2.255) reaches another subnet when its router forwards directed broadcasts.`,
  options: { reports: { type: 'string' }, broadcast: { type: 'string', default: DEFAULT_WAKE.address }, port: { type: 'string' }, repeat: { type: 'string' } },
  async run(values, positionals, ctx) {
    if (ctx.dryRun) throw new LabhostError('usage', 'wake has no --dry-run', 'leave out --dry-run')
    const fromArgs: WakeTarget[] = positionals.map((m) => ({ mac: formatMac(parseMac(m)), from: 'command line' }))
    const targets = [...fromArgs, ...(typeof values.reports === 'string' ? targetsFromReports(values.reports) : [])]
    if (!targets.length) throw new LabhostError('usage', 'labhost wake needs MAC addresses or --reports DIR', `usage: ${this.usage}`)
    const address = String(values.broadcast)
    if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(address) || address.split('.').some((o) => Number(o) > 255)) throw new LabhostError('usage', `--broadcast ${JSON.stringify(address)} is not an IPv4 address`, 'e.g. --broadcast 10.1.2.255')
    const port = numberOption(values, 'port', { min: 1, max: 65535 }) ?? DEFAULT_WAKE.port
    const repeat = numberOption(values, 'repeat', { min: 1, max: 20 }) ?? DEFAULT_WAKE.repeat
    const r = await sendWake(targets, { address, port, repeat })
    return { data: { targets, address, port, packets: r.sent }, human: `sent ${r.sent} magic packet(s) to ${address}:${port} for ${targets.length} PC(s): ${targets.map((t) => t.mac).join(', ')}` }
  },
}

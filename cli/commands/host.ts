// labhost update, status and mark-good: what a running host does, reports and confirms.
import fs from 'node:fs'
import path from 'node:path'
import { DEFAULT_PATHS, markGood, type HostPaths } from '../../updater/host-state.ts'
import { writeDurable } from '../../lib/durable.ts'
import { gatherStatus, renderHuman, renderPrometheus } from '../../updater/status.ts'
import { runUpdate, type UpdateResult } from '../../updater/update.ts'
import { DEFAULT_MACHINE_UUID_FILE, runChannelUpdate, type ChannelOutcome } from '../../updater/rollout.ts'
import { failingConfig, judgeTrial, loadTrialConfig, trialPendingHere, TRIAL_CONFIG, type TrialConfig } from '../../updater/trial-verdict.ts'
import { DEFAULT_TORRENT } from '../../updater/torrent.ts'
import { DEFAULT_FETCH } from '../../image-format/source.ts'
import { PEER_PARTS } from '../../image-format/torrent.ts'
import { BT_CLIENT_CHOICES } from '../../image-format/bt-clients.ts'
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { powerAction } from '../../lib/power.ts'
import { renderSwitch } from '../../bootloader/switch.ts'
import { decimal, defineCommand, oneOf, pathValue, rate, TRUSTED_KEY, upstreamPart, url, valueOf, wholeNumber, type Options } from '../command.ts'

/**
 * Where a host's files are: test seams (the disk tests lay a host's files out in a temp dir; on a
 * PC the defaults are right).
 */
export const PATH_OPTIONS = {
  'boot-file': {
    type: 'string',
    value: 'FILE',
    default: DEFAULT_PATHS.bootFile,
    schema: pathValue(),
    seam: true,
    description: 'the file the labhost initramfs writes at boot: the booted slot and disk',
  },
  'state-root': {
    type: 'string',
    value: 'DIR',
    default: DEFAULT_PATHS.stateRoot,
    schema: pathValue(),
    seam: true,
    description: 'the directory holding labhost/ (the trial record, the last update result)',
  },
  'version-file': {
    type: 'string',
    value: 'FILE',
    default: DEFAULT_PATHS.versionFile,
    schema: pathValue(),
    seam: true,
    description: "the running image's version file",
  },
} as const satisfies Options

export function hostPaths(values: { 'boot-file': string; 'state-root': string; 'version-file': string }): HostPaths {
  return { bootFile: values['boot-file'], stateRoot: values['state-root'], versionFile: values['version-file'] }
}

export const status = defineCommand({
  name: 'status',
  summary: 'running and next slot, version, trial state, last update result (--json, --prometheus)',
  usage: 'labhost status [--json | --prometheus [--out FILE]] [options]',
  notes: 'exit 1 when labhost sees a problem (listed in the output); the metrics are written whatever they say',
  options: {
    ...PATH_OPTIONS,
    disk: {
      type: 'string',
      value: 'DEV',
      schema: pathValue(),
      defaultText: 'the disk this host booted from',
      description: 'the disk whose slots are reported',
    },
    prometheus: { type: 'boolean', description: "print the status as Prometheus metrics (node_exporter's textfile collector format)" },
    out: { type: 'string', value: 'FILE', schema: pathValue(), description: 'write the metrics to FILE (replaced atomically) instead of printing them' },
  },
  requires: [['out', 'prometheus']],
  dryRun: { plan: 'with --out, print the metrics that would be written to FILE' },
  async run(values, _pos, ctx) {
    const s = gatherStatus(hostPaths(values), values.disk)
    if (values.prometheus) {
      const text = renderPrometheus(s)
      if (values.out !== undefined && ctx.dryRun)
        return { data: { ...s, dryRun: true, out: values.out }, human: `would write ${values.out}:\n${text.trimEnd()}` }
      if (values.out !== undefined) {
        fs.mkdirSync(path.dirname(values.out), { recursive: true })
        writeDurable(values.out, text)
        return { data: s, human: `wrote ${values.out}` }
      }
      return { data: s, human: text.trimEnd() }
    }
    return { data: s, human: renderHuman(s), exitCode: s.problems.length ? 1 : 0 }
  },
})

export const markGoodCommand = defineCommand({
  name: 'mark-good',
  summary: 'confirm the running slot after a health check: ends its trial, no rollback',
  usage: 'labhost mark-good [options]',
  options: PATH_OPTIONS,
  dryRun: { plan: 'print whether the running slot would be marked good' },
  async run(values, _pos, ctx) {
    const r = markGood(hostPaths(values), { dryRun: ctx.dryRun })
    // the real run's JSON stays what it was; a dry run says it was one
    return { data: ctx.dryRun ? { ...r, dryRun: true } : r, human: r.reason }
  },
})

export const trialCheck = defineCommand({
  name: 'trial-check',
  summary: "judge a trial boot: the image's health checks until they pass (mark good) or its deadline passes (roll back)",
  usage: 'labhost trial-check [options]',
  notes: `exit 0: the checks passed (slot marked good) or there is no trial; ${ExitCode.trialFailed}: the deadline passed and the slot was rolled back (with --dry-run: the checks fail and it would be; nothing is written)`,
  options: {
    ...PATH_OPTIONS,
    config: { type: 'string', value: 'FILE', default: TRIAL_CONFIG, schema: pathValue(), description: 'the health checks and their deadline (from the image)' },
    reboot: { type: 'boolean', description: 'after a rollback, reboot into the previous slot (the unit in the host image passes it)' },
  },
  dryRun: { plan: 'run the checks and print the verdict; neither mark good nor roll back nor reboot' },
  async run(values, _pos, ctx) {
    const paths = hostPaths(values)
    let config: TrialConfig
    try {
      config = loadTrialConfig(values.config)
    } catch (e) {
      // a version whose own health configuration is broken is not healthy: judged like a failed
      // check at once (else it would stay on trial with nobody to end it); without a trial, an error
      if (!trialPendingHere(paths)) throw e
      config = failingConfig(`the trial configuration cannot be used: ${(e as Error).message}`)
    }
    const v = await judgeTrial({ paths, config, log: ctx.log, dryRun: ctx.dryRun })
    if (v.verdict === 'rolled-back' && values.reboot && !ctx.dryRun) await powerAction('reboot', ctx.log)
    // a dry run says what it would do; its exit code is the verdict's, so a script can test the checks
    const said = !ctx.dryRun
      ? v.verdict
      : v.verdict === 'rolled-back'
        ? 'would roll back (dry run)'
        : v.verdict === 'good'
          ? 'would mark good (dry run)'
          : `${v.verdict} (dry run)`
    return { data: { ...v, dryRun: ctx.dryRun }, human: `${said}: ${v.reason}`, exitCode: v.verdict === 'rolled-back' ? ExitCode.trialFailed : 0 }
  },
})

// read only with --torrent: given without it, a mistake worth saying (not silently ignored)
const TORRENT_ONLY = [
  'bt-client',
  'download-dir',
  'peers',
  'upstream-part',
  'tracker',
  'seed-minutes',
  'seed-ratio',
  'tracker-interval',
  'download-limit',
] as const

export const update = defineCommand({
  name: 'update',
  summary:
    'write a signed image (directory, manifest or http(s) URL, or the one a channel names) to the inactive slot, verify it from the disk, switch to it on trial',
  usage: 'labhost update DIR|MANIFEST|URL [options]   labhost update --channel URL [options]',
  notes:
    'with --channel, exit 0 also when the host does not update (paused, not in this rollout stage, up to date, waiting for the window); the decision is printed (--json: as data)',
  options: {
    ...PATH_OPTIONS,
    channel: {
      type: 'string',
      value: 'URL',
      schema: url(['http:', 'https:'], 'http://images.lab/channel.json'),
      description: 'follow a staged rollout: the signed channel document (labhost channel publish) names the image, share and window',
    },
    'ignore-window': { type: 'boolean', description: "with --channel: update outside the channel's maintenance window (a reboot still waits for it)" },
    'machine-uuid-file': {
      type: 'string',
      value: 'FILE',
      default: DEFAULT_MACHINE_UUID_FILE,
      schema: pathValue(),
      seam: true,
      description: 'with --channel: the machine UUID whose hash places this host in a rollout',
    },
    now: {
      type: 'string',
      value: 'TIME',
      seam: true,
      schema: valueOf(
        (s) => (Number.isNaN(Date.parse(s)) ? undefined : new Date(s)),
        'is not a time',
        'give an ISO 8601 time, e.g. 2026-12-07T23:30:00 (local time without a zone)',
      ),
      description: "with --channel: judge the maintenance window at this time instead of the clock's",
    },
    'trusted-key': TRUSTED_KEY,
    disk: {
      type: 'string',
      value: 'DEV',
      schema: pathValue(),
      defaultText: 'the disk this host booted from',
      description: 'the host disk whose inactive slot is written',
    },
    'allow-downgrade': { type: 'boolean', description: 'accept an image whose version is not newer than the running one' },
    'allow-other-image': { type: 'boolean', description: "accept an image whose name differs from the running image's (a test image on a host host)" },
    // the initramfs counts a trial's boots down: 0 would roll the new slot back at its first boot
    'trial-boots': {
      type: 'string',
      value: 'N',
      schema: wholeNumber(1, 100),
      defaultText: "the image's trial.boots, else 3",
      description: 'boots the new slot gets before its initramfs rolls it back, unless labhost mark-good confirms it first',
    },
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
      defaultText: `${DEFAULT_FETCH.timeoutMs / 1000}, with --torrent ${DEFAULT_TORRENT.stallSeconds}`,
      description: 'an HTTP request that stalls this long is retried; with --torrent, a download that makes no progress this long fails',
    },
    ca: { type: 'string', value: 'PEM', schema: pathValue(), description: "https from a server whose certificate a lab CA signed: that CA's certificate" },
    reboot: { type: 'boolean', description: 'reboot into the new slot once it is written, verified and switched to' },
    'read-back': {
      type: 'string',
      value: 'during|after',
      default: 'after',
      schema: oneOf(['during', 'after']),
      // during overlaps reads and writes: measured slower on loop devices and rotating disks, where
      // the reads between the writes cost seeks or contend with them
      description: 'check the slot from the disk after it is written and synced, or each chunk as soon as its write completed',
    },
    full: { type: 'boolean', description: 'from an http(s) URL, download the whole transport file rather than only the chunks the slots lack' },
    delta: {
      type: 'boolean',
      description: 'from an http(s) URL, take the chunks this host has from its disk and download the rest (the default, said explicitly)',
    },
    torrent: {
      type: 'boolean',
      description: 'download the transport file over BitTorrent (the .torrent beside it; --bt-client), seed it on afterwards',
    },
    'bt-client': {
      type: 'string',
      value: 'CLIENT',
      schema: oneOf(BT_CLIENT_CHOICES),
      defaultText: DEFAULT_TORRENT.client,
      description:
        "with --torrent: the BitTorrent client — libtorrent (labhost's own client on python3-libtorrent: it unchokes every peer, where aria2c trades with 4, so a whole lab updating at once finishes together), aria2c, or auto: libtorrent where python3-libtorrent is installed, else aria2c",
    },
    'download-dir': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      default: DEFAULT_TORRENT.dir,
      description: 'with --torrent: where the BitTorrent client keeps the transport file while it downloads and seeds',
    },
    peers: {
      type: 'string',
      value: 'PART',
      schema: oneOf(PEER_PARTS),
      defaultText: DEFAULT_TORRENT.peers,
      description:
        "with --torrent: which peers — all (the torrent as published), upstream (one of the lab's few hosts that fetch from the server, as a web seed, for the others) or building (only the lab's peers and --tracker; the server only when no peer had a byte to give for --timeout)",
    },
    'upstream-part': {
      type: 'string',
      value: 'K/N',
      schema: upstreamPart(),
      description:
        "with --peers upstream: this host is one of the lab's N upstream hosts and fetches only part K of N of the file from the server, the rest from the lab (N hosts bring the file in N times as fast; the server still sends about one copy)",
    },
    tracker: {
      type: 'string',
      value: 'URL',
      multiple: true,
      schema: url(['http:', 'https:', 'udp:'], 'http://10.0.0.1:6969/announce'),
      description: "with --torrent: also announce to this tracker (the lab's own); with --peers building, the only one",
    },
    'seed-minutes': {
      type: 'string',
      value: 'N',
      schema: wholeNumber(0, 10080),
      defaultText: String(DEFAULT_TORRENT.seedMinutes),
      description: 'with --torrent: minutes the BitTorrent client seeds on after the download',
    },
    'seed-ratio': {
      type: 'string',
      value: 'R',
      schema: decimal(0, 1000),
      defaultText: `${DEFAULT_TORRENT.seedRatio}: time only`,
      description: 'with --torrent: also stop seeding at this upload/download ratio',
    },
    'tracker-interval': {
      type: 'string',
      value: 'SECONDS',
      schema: wholeNumber(1, 86400),
      defaultText: String(DEFAULT_TORRENT.trackerIntervalSeconds),
      description: 'with --torrent: seconds between announces to the tracker',
    },
    'download-limit': {
      type: 'string',
      value: 'RATE',
      schema: rate(),
      defaultText: 'none',
      description: 'with --torrent: cap the download at RATE bytes per second (500K, 30M)',
    },
    'announce-phases': {
      type: 'boolean',
      seam: true,
      description: 'print LABHOST-PHASE <name> on stderr as each phase begins (the VM tests aim their resets by them)',
    },
  },
  conflicts: [['full', 'delta', 'leave one out (delta is the default)']],
  requires: [...TORRENT_ONLY.map((o) => [o, 'torrent'] as const), ['ignore-window', 'channel'], ['now', 'channel']],
  dryRun: { plan: 'check the source and the disk, then print the plan: the target slot, what would be downloaded and the sectors the switch would write' },
  async run(values, positionals, ctx) {
    const source = positionals[0]
    if (source && values.channel !== undefined)
      throw new LabhostError(
        'usage',
        `labhost update takes a SOURCE or --channel, not both (${source})`,
        'the channel names the image: leave out SOURCE, or --channel',
      )
    if (!source && values.channel === undefined)
      throw new LabhostError(
        'usage',
        'labhost update needs a SOURCE (an image directory, its manifest.json, or an http(s) URL of one) or --channel URL',
        `usage: ${this.usage}`,
      )
    if (values['upstream-part'] !== undefined && values.peers !== 'upstream')
      throw new LabhostError(
        'usage',
        `--upstream-part ${values['upstream-part'].index}/${values['upstream-part'].of} is for an upstream host (--peers ${values.peers ?? DEFAULT_TORRENT.peers} given)`,
        'add --peers upstream, or leave out --upstream-part',
      )
    const timeout = values.timeout
    const common = {
      trustedKey: values['trusted-key'],
      paths: hostPaths(values),
      disk: values.disk,
      allowDowngrade: values['allow-downgrade'],
      allowOtherImage: values['allow-other-image'],
      trialBoots: values['trial-boots'],
      readBack: values['read-back'],
      delta: !values.full,
      torrent: values.torrent
        ? {
            ...DEFAULT_TORRENT,
            dir: values['download-dir'],
            ...(values['bt-client'] !== undefined ? { client: values['bt-client'] } : {}),
            ...(values.peers !== undefined ? { peers: values.peers } : {}),
            ...(values['upstream-part'] !== undefined ? { upstreamPart: values['upstream-part'] } : {}),
            ...(values.tracker !== undefined ? { trackers: values.tracker } : {}),
            ...(values['seed-minutes'] !== undefined ? { seedMinutes: values['seed-minutes'] } : {}),
            ...(values['seed-ratio'] !== undefined ? { seedRatio: values['seed-ratio'] } : {}),
            ...(values['tracker-interval'] !== undefined ? { trackerIntervalSeconds: values['tracker-interval'] } : {}),
            ...(timeout !== undefined ? { stallSeconds: timeout } : {}),
            ...(values['download-limit'] !== undefined ? { downloadLimit: values['download-limit'] } : {}),
          }
        : undefined,
      fetch: {
        ...(values.retries !== undefined ? { retries: values.retries } : {}),
        ...(timeout !== undefined ? { timeoutMs: timeout * 1000 } : {}),
        ...(values.ca !== undefined ? { caFile: values.ca } : {}),
      },
      dryRun: ctx.dryRun,
      log: ctx.log,
      progress: (step: 'write' | 'verify') => ctx.progress(step === 'write' ? 'writing' : 'verifying'),
      phase: values['announce-phases'] ? (name: string) => process.stderr.write(`LABHOST-PHASE ${name}\n`) : undefined,
    } as const
    let outcome: ChannelOutcome | undefined
    let head = ''
    let result: UpdateResult
    if (values.channel !== undefined) {
      outcome = await runChannelUpdate({
        ...common,
        channel: values.channel,
        machineUuidFile: values['machine-uuid-file'],
        now: values.now,
        ignoreWindow: values['ignore-window'],
      })
      const decided = `${ctx.dryRun && outcome.decision === 'update' ? 'would update' : outcome.decision}: ${outcome.reason}`
      head =
        `channel ${outcome.channel.url}: serial ${outcome.channel.serial}, ${outcome.channel.image.name} ${outcome.channel.image.version} at ${outcome.channel.share} %` +
        `${outcome.channel.window ? `, window ${outcome.channel.window}` : ''}${outcome.channel.paused ? ', paused' : ''}`
      if (!outcome.update) return { data: { ...outcome, dryRun: ctx.dryRun }, human: `${head}\n${decided}` }
      result = outcome.update
      if (values.reboot && !outcome.mayReboot)
        ctx.log(`not rebooting: outside the window ${outcome.channel.window}; slot ${result.to.slot} boots at the next reboot`)
    } else {
      result = await runUpdate({ ...common, source: source! })
    }
    const reboot = values.reboot && (outcome?.mayReboot ?? true)
    const human = [
      `${ctx.dryRun ? 'would update' : 'updated'} ${result.disk}: slot ${result.from.slot} (${result.from.version ?? '?'}) -> slot ${result.to.slot} (${result.to.version})`,
      ...result.writes.map((w) => `  ${ctx.dryRun ? 'would write' : 'wrote'} ${w}`),
      ...(result.delta?.used === false ? [`  downloading the whole image: ${result.delta.reason}`] : []),
      ...(ctx.dryRun
        ? ['  the commit, one sector (as labhost slots switch --dry-run prints it):', ...renderSwitch(result.commit, true).map((l) => `    ${l}`)]
        : []),
      ...(ctx.dryRun
        ? []
        : [
            `  write ${result.seconds.write.toFixed(1)} s, read-back ${result.seconds.verify.toFixed(1)} s` +
              (result.transfer.requests
                ? `, ${result.transfer.requests} request(s), ${result.transfer.resumes} resumed, ${result.transfer.bytes} bytes downloaded`
                : '') +
              (result.transfer.torrent
                ? `; BitTorrent ${result.transfer.torrent.seconds.toFixed(1)} s, seeding on for ${result.transfer.torrent.seedMinutes} min`
                : ''),
            `  slot ${result.to.slot} boots next, on trial until labhost mark-good${reboot ? '; rebooting' : ''}`,
          ]),
    ].join('\n')
    if (reboot && !ctx.dryRun) {
      // print before the machine goes down
      ctx.log(human)
      await powerAction('reboot', ctx.log)
    }
    if (outcome)
      return {
        data: { ...outcome, dryRun: ctx.dryRun },
        human: `${head}\n${outcome.decision === 'updated' ? 'updated' : 'would update'}: ${outcome.reason}\n${human}`,
      }
    return { data: { ...result, dryRun: ctx.dryRun }, human }
  },
})

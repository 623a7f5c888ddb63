// labhost update, status and mark-good: what a running host does, reports and confirms.
import fs from 'node:fs'
import path from 'node:path'
import { DEFAULT_PATHS, markGood, writeDurable, type HostPaths } from '../../updater/host-state.ts'
import { gatherStatus, renderHuman, renderPrometheus } from '../../updater/status.ts'
import { runUpdate } from '../../updater/update.ts'
import { failingConfig, judgeTrial, loadTrialConfig, trialPendingHere, TRIAL_CONFIG, type TrialConfig } from '../../updater/trial-verdict.ts'
import { DEFAULT_TORRENT } from '../../updater/torrent.ts'
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { powerAction } from '../../lib/power.ts'
import { numberOption, rateOption, type Command, type NumberRange, type OptionSpec } from '../command.ts'

export const PATH_OPTIONS: OptionSpec = {
  'boot-file': { type: 'string' },
  'state-root': { type: 'string' },
  'version-file': { type: 'string' },
}

export function hostPaths(values: Record<string, unknown>): HostPaths {
  const s = (k: string, d: string) => (typeof values[k] === 'string' ? (values[k] as string) : d)
  return { bootFile: s('boot-file', DEFAULT_PATHS.bootFile), stateRoot: s('state-root', DEFAULT_PATHS.stateRoot), versionFile: s('version-file', DEFAULT_PATHS.versionFile) }
}

export const status: Command = {
  name: 'status',
  summary: 'running and next slot, version, trial state, last update result (--json, --prometheus)',
  usage: 'labhost status [--json | --prometheus [--out FILE]] [--disk DEV] [--state-root DIR] [--boot-file FILE]',
  options: { ...PATH_OPTIONS, disk: { type: 'string' }, prometheus: { type: 'boolean', default: false }, out: { type: 'string' } },
  async run(values) {
    const s = gatherStatus(hostPaths(values), typeof values.disk === 'string' ? values.disk : undefined)
    if (values.prometheus) {
      const text = renderPrometheus(s)
      if (typeof values.out === 'string') {
        fs.mkdirSync(path.dirname(values.out), { recursive: true })
        writeDurable(values.out, text)
        return { data: s, human: `wrote ${values.out}` }
      }
      return { data: s, human: text.trimEnd() }
    }
    return { data: s, human: renderHuman(s), exitCode: s.problems.length ? 1 : 0 }
  },
}

export const markGoodCommand: Command = {
  name: 'mark-good',
  summary: 'confirm the running slot after a health check: ends its trial, no rollback',
  usage: 'labhost mark-good [--json] [--state-root DIR] [--boot-file FILE]',
  options: PATH_OPTIONS,
  async run(values) {
    const r = markGood(hostPaths(values))
    return { data: r, human: r.reason }
  },
}


// update's numeric options. trial-boots: the initramfs counts a trial's boots down, and 0 rolled the
// new slot back at its first boot
const NUMERIC_OPTIONS = {
  'trial-boots': { min: 1, max: 100 },
  retries: { min: 1, max: 1000 },
  timeout: { min: 1, max: 86400 },
  'seed-minutes': { min: 0, max: 10080 },
  'seed-ratio': { min: 0, max: 1000, fraction: true },
  'tracker-interval': { min: 1, max: 86400 },
} satisfies Record<string, NumberRange>

export const trialCheck: Command = {
  name: 'trial-check',
  summary: 'judge a trial boot: the image\'s health checks until they pass (mark good) or its deadline passes (roll back)',
  usage: 'labhost trial-check [--config FILE] [--reboot] [--dry-run] [--json] [--state-root DIR] [--boot-file FILE]',
  options: {
    ...PATH_OPTIONS,
    // the checks and the deadline (default /etc/labhost/trial.yaml, from the image)
    config: { type: 'string' },
    // after a rollback, reboot into the previous slot (the unit in the host image passes it)
    reboot: { type: 'boolean', default: false },
  },
  async run(values, _pos, ctx) {
    const paths = hostPaths(values)
    let config: TrialConfig
    try {
      config = loadTrialConfig(typeof values.config === 'string' ? values.config : TRIAL_CONFIG)
    } catch (e) {
      // a version whose own health configuration is broken is not healthy: judged like a failed
      // check at once (else it would stay on trial with nobody to end it); without a trial, an error
      if (!trialPendingHere(paths)) throw e
      config = failingConfig(`the trial configuration cannot be used: ${(e as Error).message}`)
    }
    const v = await judgeTrial({ paths, config, log: ctx.log, dryRun: ctx.dryRun })
    if (v.verdict === 'rolled-back' && values.reboot && !ctx.dryRun) await powerAction('reboot', ctx.log)
    return { data: { ...v, dryRun: ctx.dryRun }, human: `${v.verdict}: ${v.reason}`, exitCode: v.verdict === 'rolled-back' ? ExitCode.trialFailed : 0 }
  },
}

export const update: Command = {
  name: 'update',
  summary: 'write a signed image (directory, manifest or http(s) URL) to the inactive slot, verify it from the disk, switch to it on trial',
  usage: 'labhost update DIR|MANIFEST|URL [--trusted-key PUB] [--disk DEV] [--allow-downgrade] [--allow-other-image] [--trial-boots N] [--retries N] [--timeout SECONDS] [--ca PEM] [--reboot] [--read-back during|after] [--full] [--torrent [--download-dir DIR] [--seed-minutes N] [--seed-ratio R] [--tracker-interval SECONDS] [--download-limit RATE]] [--announce-phases] [--dry-run] [--json]',
  options: {
    ...PATH_OPTIONS, 'trusted-key': { type: 'string' }, disk: { type: 'string' }, 'allow-downgrade': { type: 'boolean', default: false },
    // accept an image whose name differs from the running image's (a `test` image on a `host` host)
    'allow-other-image': { type: 'boolean', default: false }, 'trial-boots': { type: 'string' },
    retries: { type: 'string' }, timeout: { type: 'string' }, reboot: { type: 'boolean', default: false },
    // https from a server whose certificate a lab CA signed: that CA's certificate (PEM)
    ca: { type: 'string' },
    // one line per phase on stderr (LABHOST-PHASE name): vm-tests aims its resets by them
    'announce-phases': { type: 'boolean', default: false },
    // after (default): the whole slot is read back once it is written and synced; during: each
    // chunk as soon as its write completed, overlapping the two (measured slower on loop devices
    // and rotating disks, where reads between the writes cost seeks or contend with them)
    'read-back': { type: 'string', default: 'after' },
    // from an http(s) URL, by default: the chunks this host already has in its slots come from the
    // disk and only the missing ones are downloaded (when the image has a frame index and that is
    // cheaper); --full downloads the whole transport file (--delta: the default, said explicitly)
    full: { type: 'boolean', default: false },
    delta: { type: 'boolean', default: false },
    // the transport file over BitTorrent (aria2c, the .torrent beside it), seeded on afterwards
    torrent: { type: 'boolean', default: false },
    'download-dir': { type: 'string' }, 'seed-minutes': { type: 'string' }, 'seed-ratio': { type: 'string' }, 'tracker-interval': { type: 'string' }, 'download-limit': { type: 'string' },
  },
  async run(values, positionals, ctx) {
    const source = positionals[0]
    const readBack = values['read-back']
    if (values.full && values.delta) throw new LabhostError('usage', '--full and --delta contradict each other', 'leave one out (delta is the default)')
    if (readBack !== 'during' && readBack !== 'after') throw new LabhostError('usage', `--read-back ${JSON.stringify(readBack)} is neither during nor after`, `usage: ${this.usage}`)
    if (!source) throw new LabhostError('usage', 'labhost update needs a SOURCE (an image directory, its manifest.json, or an http(s) URL of one)', `usage: ${this.usage}`)
    // all checked, also those only --torrent reads: a typo is an error, not silently ignored
    const num = (k: keyof typeof NUMERIC_OPTIONS) => numberOption(values, k, NUMERIC_OPTIONS[k])
    for (const k of Object.keys(NUMERIC_OPTIONS) as (keyof typeof NUMERIC_OPTIONS)[]) num(k)
    if (typeof values['download-limit'] === 'string') rateOption('download-limit', values['download-limit'])
    const timeout = num('timeout')
    const result = await runUpdate({
      source,
      trustedKey: typeof values['trusted-key'] === 'string' ? values['trusted-key'] : '/etc/labhost/trusted.pub',
      paths: hostPaths(values),
      disk: typeof values.disk === 'string' ? values.disk : undefined,
      allowDowngrade: values['allow-downgrade'] === true,
      allowOtherImage: values['allow-other-image'] === true,
      trialBoots: num('trial-boots'),
      readBack,
      delta: values.full !== true,
      torrent: values.torrent ? {
        ...DEFAULT_TORRENT,
        ...(typeof values['download-dir'] === 'string' ? { dir: values['download-dir'] } : {}),
        ...(num('seed-minutes') !== undefined ? { seedMinutes: num('seed-minutes') } : {}),
        ...(num('seed-ratio') !== undefined ? { seedRatio: num('seed-ratio') } : {}),
        ...(num('tracker-interval') !== undefined ? { trackerIntervalSeconds: num('tracker-interval') } : {}),
        ...(timeout !== undefined ? { stallSeconds: timeout } : {}),
        ...(typeof values['download-limit'] === 'string' ? { downloadLimit: rateOption('download-limit', values['download-limit']) } : {}),
      } : undefined,
      fetch: {
        ...(num('retries') !== undefined ? { retries: num('retries') } : {}), ...(timeout !== undefined ? { timeoutMs: timeout * 1000 } : {}),
        ...(typeof values.ca === 'string' ? { caFile: values.ca } : {}),
      },
      dryRun: ctx.dryRun,
      log: ctx.log,
      progress: (step) => ctx.progress(step === 'write' ? 'writing' : 'verifying'),
      phase: values['announce-phases'] ? (name) => process.stderr.write(`LABHOST-PHASE ${name}\n`) : undefined,
    })
    const human = [`${ctx.dryRun ? 'would update' : 'updated'} ${result.disk}: slot ${result.from.slot} (${result.from.version ?? '?'}) -> slot ${result.to.slot} (${result.to.version})`,
      ...result.writes.map((w) => `  ${ctx.dryRun ? 'would write' : 'wrote'} ${w}`),
      ...(result.delta?.used === false ? [`  downloading the whole image: ${result.delta.reason}`] : []),
      ...(ctx.dryRun ? [] : [`  write ${result.seconds.write.toFixed(1)} s, read-back ${result.seconds.verify.toFixed(1)} s` +
        (result.transfer.requests ? `, ${result.transfer.requests} request(s), ${result.transfer.resumes} resumed, ${result.transfer.bytes} bytes downloaded` : '') +
        (result.transfer.torrent ? `; BitTorrent ${result.transfer.torrent.seconds.toFixed(1)} s, aria2c seeds on for ${result.transfer.torrent.seedMinutes} min` : ''),
      `  slot ${result.to.slot} boots next, on trial until labhost mark-good${values.reboot ? '; rebooting' : ''}`])].join('\n')
    if (values.reboot && !ctx.dryRun) {
      // print before the machine goes down
      ctx.log(human)
      await powerAction('reboot', ctx.log)
    }
    return { data: { ...result, dryRun: ctx.dryRun }, human }
  },
}

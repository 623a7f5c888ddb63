// labhost update, status and mark-good: what a running host does, reports and confirms.
import fs from 'node:fs'
import path from 'node:path'
import { DEFAULT_PATHS, markGood, writeDurable, type HostPaths } from '../../updater/host-state.ts'
import { gatherStatus, renderHuman, renderPrometheus } from '../../updater/status.ts'
import { runUpdate } from '../../updater/update.ts'
import { LabhostError } from '../../lib/errors.ts'
import type { Command, OptionSpec } from '../command.ts'

const PATH_OPTIONS: OptionSpec = {
  'boot-file': { type: 'string' },
  'state-root': { type: 'string' },
  'version-file': { type: 'string' },
}

function hostPaths(values: Record<string, unknown>): HostPaths {
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

export const update: Command = {
  name: 'update',
  summary: 'write a signed image to the inactive slot, verify it from the disk, switch to it on trial',
  usage: 'labhost update DIR|MANIFEST [--trusted-key PUB] [--disk DEV] [--allow-downgrade] [--trial-boots N] [--dry-run] [--json]',
  options: { ...PATH_OPTIONS, 'trusted-key': { type: 'string' }, disk: { type: 'string' }, 'allow-downgrade': { type: 'boolean', default: false }, 'trial-boots': { type: 'string' } },
  async run(values, positionals, ctx) {
    const source = positionals[0]
    if (!source) throw new LabhostError('usage', 'labhost update needs a SOURCE (an image directory or its manifest.json)', `usage: ${this.usage}`)
    const plan = await runUpdate({
      source,
      trustedKey: typeof values['trusted-key'] === 'string' ? values['trusted-key'] : '/etc/labhost/trusted.pub',
      paths: hostPaths(values),
      disk: typeof values.disk === 'string' ? values.disk : undefined,
      allowDowngrade: values['allow-downgrade'] === true,
      trialBoots: typeof values['trial-boots'] === 'string' ? Number(values['trial-boots']) : undefined,
      dryRun: ctx.dryRun,
      log: ctx.log,
    })
    const human = [`${ctx.dryRun ? 'would update' : 'updated'} ${plan.disk}: slot ${plan.from.slot} (${plan.from.version ?? '?'}) -> slot ${plan.to.slot} (${plan.to.version})`,
      ...plan.writes.map((w) => `  ${ctx.dryRun ? 'would write' : 'wrote'} ${w}`),
      ...(ctx.dryRun ? [] : [`  slot ${plan.to.slot} boots next, on trial until labhost mark-good`])].join('\n')
    return { data: { ...plan, dryRun: ctx.dryRun }, human }
  },
}

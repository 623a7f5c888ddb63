// labhost install: image this PC from the installer stick, unattended (installer/install.ts).
import fs from 'node:fs'
import path from 'node:path'
import { isLabhostError } from '../../lib/errors.ts'
import { powerAction } from '../../lib/power.ts'
import { renderPlan, reportName, runInstall } from '../../installer/install.ts'
import { readMachine } from '../../installer/machine.ts'
import { requireString, type Command } from '../command.ts'

export const install: Command = {
  name: 'install',
  summary: 'image this PC: check the model, pick and partition the disks, write the root image to slot A, identity, report, reboot',
  usage: 'labhost install --config install.yaml --image DIR [--stick DEV] [--ssd DEV] [--hdd DEV] [--report-dir DIR] [--trusted-key PUB] [--new-identity] [--no-finish | --finish-file FILE] [--dry-run] [--json]',
  options: {
    config: { type: 'string' }, image: { type: 'string' }, stick: { type: 'string' }, ssd: { type: 'string' }, hdd: { type: 'string' },
    'report-dir': { type: 'string' }, 'trusted-key': { type: 'string' }, 'new-identity': { type: 'boolean', default: false },
    'no-finish': { type: 'boolean', default: false }, 'finish-file': { type: 'string' }, 'sys-root': { type: 'string' },
  },
  async run(values, _positionals, ctx) {
    const s = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined)
    const reportDir = s('report-dir')
    try {
      const { plan, report } = await runInstall({
        config: requireString(values, 'config', this), image: requireString(values, 'image', this),
        trustedKey: s('trusted-key') ?? '/etc/labhost/trusted.pub', stick: s('stick'), ssd: s('ssd'), hdd: s('hdd'),
        reportDir, newIdentity: values['new-identity'] === true, sysRoot: s('sys-root'),
        dryRun: ctx.dryRun, log: ctx.log, progress: ctx.progress,
      })
      if (ctx.dryRun || !report) return { data: { ...plan, dryRun: true }, human: renderPlan(plan, true) }
      const human = `installed ${plan.image.name} ${plan.image.version} on ${plan.disks.map((d) => d.disk.path).join(' + ')} in ${report.steps.reduce((n, x) => n + x.seconds, 0).toFixed(1)} s; identity ${report.identity.created ? 'created' : 'kept'}`
      const finishFile = s('finish-file')
      if (finishFile) fs.writeFileSync(finishFile, `${plan.finish}\n`)
      else if (plan.finish !== 'none' && values['no-finish'] !== true) {
        ctx.log(human)
        await powerAction(plan.finish, ctx.log)
      }
      return { data: report, human }
    } catch (e) {
      // the technician reads the outcome on the stick: a refusal leaves its reason there too
      if (reportDir && isLabhostError(e)) {
        fs.mkdirSync(reportDir, { recursive: true })
        let machine = null
        try {
          machine = readMachine(s('sys-root'))
        } catch { /* no DMI: the report is named unknown-machine */ }
        fs.writeFileSync(path.join(reportDir, `${reportName(null, machine)}-refused-${new Date().toISOString().replace(/[:.]/g, '-')}.json`), JSON.stringify({ result: 'refused', ...e.toJSON() }, null, 2) + '\n')
      }
      throw e
    }
  },
}

// labhost install: image this PC from the installer stick, unattended (installer/install.ts).
import fs from 'node:fs'
import path from 'node:path'
import { isLabhostError } from '../../lib/errors.ts'
import { powerAction } from '../../lib/power.ts'
import { renderPlan, reportName, runInstall } from '../../installer/install.ts'
import { readMachine } from '../../installer/machine.ts'
import { defineCommand, pathValue, TRUSTED_KEY } from '../command.ts'

export const install = defineCommand({
  name: 'install',
  summary: 'image this PC: check the model, pick and partition the disks, write the root image to slot A, identity, report, reboot',
  usage: 'labhost install --config install.yaml --image DIR [options]',
  options: {
    config: {
      type: 'string',
      value: 'FILE',
      required: true,
      schema: pathValue(),
      description: 'install.yaml: the models, disks, kept partitions, BIOS settings and finish (labhost schema install)',
    },
    image: {
      type: 'string',
      value: 'DIR',
      required: true,
      schema: pathValue(),
      description: 'the signed root image (manifest.json and root.img.zst) to write to slot A',
    },
    stick: { type: 'string', value: 'DEV', schema: pathValue(), description: "the installer's own medium, never a target" },
    ssd: {
      type: 'string',
      value: 'DEV',
      schema: pathValue(),
      defaultText: "matched by install.yaml's disk properties",
      description: 'the SSD to image (still checked for size and contents)',
    },
    hdd: {
      type: 'string',
      value: 'DEV',
      schema: pathValue(),
      defaultText: "matched by install.yaml's disk properties",
      description: 'the HDD to image (still checked for size and contents)',
    },
    'report-dir': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      description: "where the install report (or a refusal's reason) goes besides /persistent: the stick's reports/",
    },
    'trusted-key': TRUSTED_KEY,
    'new-identity': { type: 'boolean', description: 'replace the machine identity (UUID, SSH host keys, host name) a kept /persistent holds' },
    'no-finish': { type: 'boolean', description: "leave install.yaml's finish (reboot, poweroff) undone" },
    'finish-file': {
      type: 'string',
      value: 'FILE',
      schema: pathValue(),
      description: "write install.yaml's finish to FILE instead of doing it (the stick's init does it after unmounting)",
    },
    'sys-root': {
      type: 'string',
      value: 'DIR',
      schema: pathValue(),
      default: '/sys',
      seam: true,
      description: 'the root of sysfs (DMI, block devices): a tree laid out by a test',
    },
  },
  conflicts: [['no-finish', 'finish-file', 'give one: --finish-file records the finish, --no-finish drops it']],
  dryRun: { plan: 'check the model and the image, pick the disks, print the plan (what each disk loses, each partition, BIOS changes)' },
  async run(values, _positionals, ctx) {
    const reportDir = values['report-dir']
    try {
      const { plan, report } = await runInstall({
        config: values.config,
        image: values.image,
        trustedKey: values['trusted-key'],
        stick: values.stick,
        ssd: values.ssd,
        hdd: values.hdd,
        reportDir,
        newIdentity: values['new-identity'],
        sysRoot: values['sys-root'],
        dryRun: ctx.dryRun,
        log: ctx.log,
        progress: ctx.progress,
      })
      if (ctx.dryRun || !report) return { data: { ...plan, dryRun: true }, human: renderPlan(plan, true) }
      const human = `installed ${plan.image.name} ${plan.image.version} on ${plan.disks.map((d) => d.disk.path).join(' + ')} in ${report.steps.reduce((n, x) => n + x.seconds, 0).toFixed(1)} s; identity ${report.identity.created ? 'created' : 'kept'}`
      const finishFile = values['finish-file']
      if (finishFile) fs.writeFileSync(finishFile, `${plan.finish}\n`)
      else if (plan.finish !== 'none' && !values['no-finish']) {
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
          machine = readMachine(values['sys-root'])
        } catch {
          /* no DMI: the report is named unknown-machine */
        }
        fs.writeFileSync(
          path.join(reportDir, `${reportName(null, machine)}-refused-${new Date().toISOString().replace(/[:.]/g, '-')}.json`),
          JSON.stringify({ result: 'refused', ...e.toJSON() }, null, 2) + '\n',
        )
      }
      throw e
    }
  },
})

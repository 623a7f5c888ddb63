// labhost: a thin CLI over the library. It parses arguments, runs one command, prints its result
// (human text, or JSON with --json) and exits with the failure class's code.
import { ExitCode, isLabhostError, LabhostError } from '../lib/errors.ts'
import { createProgress } from '../lib/progress.ts'
import { bootloaderMbr } from './commands/bootloader.ts'
import { install } from './commands/install.ts'
import { netboot } from './commands/netboot.ts'
import { markGoodCommand, status, trialCheck, update } from './commands/host.ts'
import { imageBuild, imageKeygen, imagePublish, imageSeed, imageServe, imageStick, imageVerify, schema } from './commands/image.ts'
import { imageSelector } from './commands/image-selector.ts'
import { channelPublish, channelShow } from './commands/channel.ts'
import { slotsRepair, slotsStatus, slotsSwitch } from './commands/slots.ts'
import { vmImagePrune, vmImagePublish, vmImagePull, wake } from './commands/vm-image.ts'
import { checkOptions, parseCommandArgs, type Command, type Context } from './command.ts'
import { commandHelp } from './help.ts'
import { LABHOST_VERSION } from '../lib/labhost-version.ts'

export const COMMANDS: Command[] = [
  slotsStatus,
  slotsSwitch,
  slotsRepair,
  bootloaderMbr,
  imageBuild,
  imageKeygen,
  imageVerify,
  imageStick,
  imageSelector,
  imagePublish,
  imageSeed,
  imageServe,
  channelPublish,
  channelShow,
  schema,
  install,
  netboot,
  update,
  status,
  markGoodCommand,
  trialCheck,
  vmImagePublish,
  vmImagePull,
  vmImagePrune,
  wake,
]

function topHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length))
  return [
    'labhost — unattended installer and atomic A/B updater for lab PCs',
    '',
    'usage: labhost <command> [options]      labhost <command> --help',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'common options: --json (machine-readable output), --dry-run (print the plan, write nothing; refused by a command that cannot plan),',
    '  --help (each option of the command), --help-all (also its test-only options)',
    'exit codes: ' +
      Object.entries(ExitCode)
        .map(([k, v]) => `${v} ${k}`)
        .join(', '),
  ].join('\n')
}

export async function main(argv: string[], out = process.stdout, err = process.stderr): Promise<number> {
  const json = argv.includes('--json')
  try {
    if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
      out.write(topHelp() + '\n')
      return 0
    }
    if (argv[0] === '--version') {
      out.write(`labhost ${LABHOST_VERSION}\n`)
      return 0
    }
    const cmd = COMMANDS.find((c) => {
      const words = c.name.split(' ')
      return words.every((w, i) => argv[i] === w)
    })
    if (!cmd) {
      const group = COMMANDS.filter((c) => c.name.startsWith(`${argv[0]} `))
      if (group.length && (argv.length === 1 || argv.includes('--help'))) {
        out.write(group.map((c) => `labhost ${c.name.padEnd(16)} ${c.summary}`).join('\n') + '\n')
        return argv.includes('--help') ? 0 : ExitCode.usage
      }
      throw new LabhostError('usage', `unknown command: ${argv.slice(0, 2).join(' ')}`, 'run `labhost --help` for the list of commands')
    }
    const inv = parseCommandArgs(cmd, argv.slice(cmd.name.split(' ').length))
    // stderr only: with --json, stdout stays the one JSON document
    for (const notice of inv.notices) err.write(`${notice}\n`)
    if (inv.help) {
      out.write(commandHelp(cmd, inv.help === 'all') + '\n')
      return 0
    }
    const values = checkOptions(cmd, inv)
    const ctx: Context = {
      json,
      dryRun: inv.dryRun,
      log: (line) => err.write(`${line}\n`),
      progress: (label) =>
        createProgress(label, {
          isTTY: (err as { isTTY?: boolean }).isTTY === true,
          columns: (err as { columns?: number }).columns,
          write: (s) => err.write(s),
        }),
    }
    const result = await cmd.run(values, inv.positionals, ctx)
    out.write((json ? JSON.stringify(result.data, null, 2) : result.human) + '\n')
    return result.exitCode ?? 0
  } catch (e) {
    const le = isLabhostError(e)
      ? e
      : new LabhostError('internal', (e as Error)?.stack ?? String(e), 'this is a bug in labhost; please report it with the command line', {}, { cause: e })
    if (json) out.write(JSON.stringify(le.toJSON(), null, 2) + '\n')
    err.write(`labhost: error: ${le.message}\n  hint: ${le.hint}\n`)
    return le.exitCode
  }
}

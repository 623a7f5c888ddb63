// labhost: a thin CLI over the library. It parses arguments, runs one command, prints its result
// (human text, or JSON with --json) and exits with the failure class's code.
import { ExitCode, isLabhostError, LabhostError } from '../lib/errors.ts'
import { createProgress } from '../lib/progress.ts'
import { checkOptions, parseCommandArgs, type Command, type Context } from './command.ts'
import { commandHelp } from './help.ts'
import { LABHOST_VERSION } from '../lib/labhost-version.ts'

/**
 * Every command, in the order `labhost --help` lists them, by the file that defines it. A command's
 * file (and what it imports: the updater, the image builder, the file server...) is loaded only
 * when that command runs: the executable starts once per update, install and trial check, also
 * on slow emulated guests, and most of the bundle is other commands' code.
 */
const COMMAND_FILES: readonly { names: readonly string[]; load: () => Promise<Command[]> }[] = [
  {
    names: ['slots status', 'slots switch', 'slots repair'],
    load: async () => import('./commands/slots.ts').then((m) => [m.slotsStatus, m.slotsSwitch, m.slotsRepair]),
  },
  { names: ['bootloader mbr'], load: async () => import('./commands/bootloader.ts').then((m) => [m.bootloaderMbr]) },
  {
    names: ['image build', 'image keygen', 'image verify', 'image stick'],
    load: async () => import('./commands/image.ts').then((m) => [m.imageBuild, m.imageKeygen, m.imageVerify, m.imageStick]),
  },
  { names: ['image selector'], load: async () => import('./commands/image-selector.ts').then((m) => [m.imageSelector]) },
  {
    names: ['image publish', 'image seed', 'image serve'],
    load: async () => import('./commands/image.ts').then((m) => [m.imagePublish, m.imageSeed, m.imageServe]),
  },
  { names: ['channel publish', 'channel show'], load: async () => import('./commands/channel.ts').then((m) => [m.channelPublish, m.channelShow]) },
  { names: ['schema'], load: async () => import('./commands/image.ts').then((m) => [m.schema]) },
  { names: ['install'], load: async () => import('./commands/install.ts').then((m) => [m.install]) },
  { names: ['netboot'], load: async () => import('./commands/netboot.ts').then((m) => [m.netboot]) },
  {
    names: ['update', 'status', 'mark-good', 'trial-check'],
    load: async () => import('./commands/host.ts').then((m) => [m.update, m.status, m.markGoodCommand, m.trialCheck]),
  },
  {
    names: ['vm-image publish', 'vm-image pull', 'vm-image prune', 'wake'],
    load: async () => import('./commands/vm-image.ts').then((m) => [m.vmImagePublish, m.vmImagePull, m.vmImagePrune, m.wake]),
  },
]

/** Every command's name, in --help's order, without loading any of them. */
export const COMMAND_NAMES: readonly string[] = COMMAND_FILES.flatMap((f) => f.names)

/** The command `name` (as COMMAND_NAMES spells it), loaded with its file. */
export async function loadCommand(name: string): Promise<Command> {
  const file = COMMAND_FILES.find((f) => f.names.includes(name))!
  return (await file.load()).find((c) => c.name === name)!
}

/** Every command, in --help's order (loads them all: the top help and the tests). */
export async function allCommands(): Promise<Command[]> {
  return Promise.all(COMMAND_NAMES.map(loadCommand))
}

async function topHelp(): Promise<string> {
  const COMMANDS = await allCommands()
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
      out.write((await topHelp()) + '\n')
      return 0
    }
    if (argv[0] === '--version') {
      out.write(`labhost ${LABHOST_VERSION}\n`)
      return 0
    }
    const name = COMMAND_NAMES.find((n) => n.split(' ').every((w, i) => argv[i] === w))
    const cmd = name ? await loadCommand(name) : undefined
    if (!cmd) {
      const group = (await allCommands()).filter((c) => c.name.startsWith(`${argv[0]} `))
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

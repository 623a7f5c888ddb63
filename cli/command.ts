// What every CLI command looks like: its help text, its options and a run function that returns
// a result object (printed as JSON with --json, else by the command's own human formatter).
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { LabhostError } from '../lib/errors.ts'
import type { Progress } from '../lib/progress.ts'

export type OptionSpec = NonNullable<ParseArgsConfig['options']>

export interface Context {
  json: boolean
  dryRun: boolean
  /** Plain progress lines go to stderr so stdout stays the result. */
  log: (line: string) => void
  /** A progress reporter for one long step: a bar on a terminal, plain lines otherwise (stderr). */
  progress: (label: string) => Progress
}

export interface Command {
  name: string
  summary: string
  usage: string
  options: OptionSpec
  run(values: Record<string, string | boolean | undefined>, positionals: string[], ctx: Context): Promise<CommandResult>
}

export interface CommandResult {
  data: unknown
  human: string
  exitCode?: number
}

export const COMMON_OPTIONS: OptionSpec = {
  json: { type: 'boolean', default: false },
  'dry-run': { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
}

export function parseCommandArgs(cmd: Command, argv: string[]) {
  try {
    return parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...cmd.options }, allowPositionals: true, strict: true })
  } catch (e) {
    throw new LabhostError('usage', `${(e as Error).message}`, `see \`labhost ${cmd.name} --help\``)
  }
}

export function requireString(values: Record<string, unknown>, name: string, cmd: Command): string {
  const v = values[name]
  if (typeof v !== 'string' || v === '') throw new LabhostError('usage', `labhost ${cmd.name} needs --${name}`, `usage: ${cmd.usage}`)
  return v
}

/** A bytes-per-second option as aria2c takes it (500K, 30M, 1000000), or a usage error naming it. */
export function rateOption(flag: string, value: string): string {
  // aria2c reads 0 as "no limit": the opposite of what a 0 on the command line seems to ask for
  if (!/^0*[1-9]\d*[KM]?$/.test(value)) throw new LabhostError('usage', `--${flag} ${JSON.stringify(value)} is not a rate`, 'give bytes per second above 0, with K or M: 500K, 30M; leave the option out for no limit')
  return value
}

export interface NumberRange {
  min: number
  max: number
  /** Fractions allowed (a ratio); otherwise a whole number. */
  fraction?: boolean
}

/**
 * A numeric option: undefined when it is absent, else its value within `range`, or a usage error
 * naming the option and the value. Plain decimal digits only: no 1e3, 0x10, Infinity or empty.
 */
export function numberOption(values: Record<string, unknown>, flag: string, range: NumberRange): number | undefined {
  const raw = values[flag]
  if (raw === undefined) return undefined
  const text = String(raw)
  const n = Number(text)
  const syntax = range.fraction ? /^\d+(\.\d+)?$/ : /^\d+$/
  if (!syntax.test(text) || n < range.min || n > range.max) {
    const what = range.fraction ? 'a number' : 'a whole number'
    throw new LabhostError('usage', `--${flag} ${JSON.stringify(text)} is not ${what} from ${range.min} to ${range.max}`, `give --${flag} ${what} from ${range.min} to ${range.max}`)
  }
  return n
}

// What every CLI command looks like: its help text, its options (each with a one-line description,
// a value placeholder, a default and a zod schema for its value), what it does with --dry-run, and
// a run function that returns a result object (printed as JSON with --json, else by the command's
// own human formatter). The options are checked once, here, before the command runs.
import { parseArgs } from 'node:util'
import { z } from 'zod'
import { LabhostError } from '../lib/errors.ts'
import type { Progress } from '../lib/progress.ts'
import { RATE_MAX, rateBytes } from '../image-format/bt-clients.ts'

export interface Context {
  json: boolean
  dryRun: boolean
  /** Plain progress lines go to stderr so stdout stays the result. */
  log: (line: string) => void
  /** A progress reporter for one long step: a bar on a terminal, plain lines otherwise (stderr). */
  progress: (label: string) => Progress
}

/** One option of a command, as --help shows it and its command's schema checks it. */
export interface OptionDef {
  type: 'string' | 'boolean'
  /** One line for --help: what the option does. */
  description: string
  /** The value's placeholder in --help: DIR, FILE, N, SECONDS. */
  value?: string
  /** Used when the option is absent (and shown in --help). */
  default?: string | boolean
  /** Shown in --help as the default where the command works it out itself (the option stays absent). */
  defaultText?: string
  required?: boolean
  multiple?: boolean
  short?: string
  /** Checks and converts the value; a string option without one takes any non-empty text. */
  schema?: z.ZodType<unknown, string>
  /**
   * A test seam: points labhost at files a test laid out in a temporary directory, or prints
   * markers a harness waits for. Hidden from --help, listed by --help-all.
   */
  seam?: boolean
  /** Old spellings, still accepted with a one-line deprecation notice on stderr. */
  aliases?: readonly string[]
}

export type Options = Record<string, OptionDef>

/**
 * What a command does with --dry-run: print its plan and write nothing (`plan` says what it
 * prints), nothing at all because it only reads, or refuse it with a usage error (`refused` says
 * why there is nothing to plan).
 */
export type DryRun = { plan: string } | { readsOnly: true } | { refused: string }

type One<D> = D extends { schema: z.ZodType<infer T, string> } ? T : D extends { type: 'boolean' } ? boolean : string
type Full<D> = D extends { multiple: true } ? One<D>[] : One<D>
type Always<D> = D extends { type: 'boolean' } | { multiple: true } | { required: true } | { default: string } ? true : false
/** A command's option values after its schema: converted, defaults filled in, absent ones undefined. */
export type Values<O extends Options> = { -readonly [K in keyof O]: Always<O[K]> extends true ? Full<O[K]> : Full<O[K]> | undefined }

export interface CommandDef<O extends Options> {
  name: string
  summary: string
  /** The synopsis: positionals and required options, `[options]` for the rest. */
  usage: string
  /** Printed after the options in --help: rules and exit codes an option list cannot say. */
  notes?: string
  options: O
  dryRun: DryRun
  /** Options that contradict each other: [a, b, hint]. */
  conflicts?: readonly (readonly [keyof O & string, keyof O & string, string])[]
  /** Options that mean something only beside another: [a, b] is --a only with --b. */
  requires?: readonly (readonly [keyof O & string, keyof O & string])[]
  run(this: Command, values: Values<O>, positionals: string[], ctx: Context): Promise<CommandResult>
}

export interface Command extends Omit<CommandDef<Options>, 'run' | 'conflicts' | 'requires'> {
  conflicts?: readonly (readonly [string, string, string])[]
  requires?: readonly (readonly [string, string])[]
  run(values: Record<string, unknown>, positionals: string[], ctx: Context): Promise<CommandResult>
}

/** A command whose run function sees its option values typed by its option definitions. */
export function defineCommand<const O extends Options>(def: CommandDef<O>): Command {
  return def as unknown as Command
}

export interface CommandResult {
  data: unknown
  human: string
  exitCode?: number
}

/** The options every command takes; --dry-run's description is the command's own (DryRun). */
export const COMMON_OPTIONS = {
  json: { type: 'boolean', description: 'print the result as JSON on stdout (an error too, as an object)' },
  'dry-run': { type: 'boolean', description: '' },
  help: { type: 'boolean', short: 'h', description: 'print this help' },
  'help-all': { type: 'boolean', description: 'print this help with the test-only options' },
} as const satisfies Options

export function dryRunDescription(d: DryRun): string {
  if ('plan' in d) return `${d.plan}; write nothing`
  if ('readsOnly' in d) return 'accepted and changes nothing: this command only reads'
  return `refused (usage error): ${d.refused}`
}

export interface Invocation {
  /** The command's option values as given (old spellings under their new names), not yet checked. */
  raw: Record<string, unknown>
  positionals: string[]
  help: 'main' | 'all' | null
  dryRun: boolean
  /** Deprecation notices for old spellings, one line each (for stderr). */
  notices: string[]
}

/** Split a command line into its options and positionals; old spellings are renamed with a notice. */
export function parseCommandArgs(cmd: Command, argv: string[]): Invocation {
  const config: NonNullable<Parameters<typeof parseArgs>[0]>['options'] = {}
  for (const [name, o] of Object.entries<OptionDef>({ ...COMMON_OPTIONS, ...cmd.options })) {
    for (const n of [name, ...(o.aliases ?? [])])
      config[n] = { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short && n === name ? { short: o.short } : {}) }
  }
  let parsed: { values: Record<string, unknown>; positionals: string[] }
  try {
    parsed = parseArgs({ args: argv, options: config, allowPositionals: true, strict: true })
  } catch (e) {
    throw new LabhostError('usage', `${(e as Error).message}`, `see \`labhost ${cmd.name} --help\``, {}, { cause: e })
  }
  const raw: Record<string, unknown> = {}
  const notices: string[] = []
  for (const [name, o] of Object.entries(cmd.options)) {
    raw[name] = parsed.values[name]
    for (const alias of o.aliases ?? []) {
      if (parsed.values[alias] === undefined) continue
      if (raw[name] !== undefined)
        throw new LabhostError('usage', `--${alias} and --${name} are the same option`, `give --${name} only (--${alias} is its old spelling)`)
      raw[name] = parsed.values[alias]
      notices.push(`labhost: warning: --${alias} is deprecated: use --${name} (labhost ${cmd.name})`)
    }
  }
  const v = parsed.values
  return { raw, positionals: parsed.positionals, help: v['help-all'] ? 'all' : v.help ? 'main' : null, dryRun: v['dry-run'] === true, notices }
}

function optionSchema(o: OptionDef): z.ZodType {
  if (o.type === 'boolean') return z.boolean().default(o.default === true)
  const one = o.schema ?? text()
  if (o.multiple) return z.array(one).default([])
  if (typeof o.default === 'string') return one.prefault(o.default)
  return o.required ? one : one.optional()
}

/**
 * The command's one schema, over the options as given: every value checked and converted,
 * defaults filled in; then options that contradict each other, or mean nothing without another,
 * refused (judged by what was given, not by the defaults).
 */
export function commandSchema(cmd: Command): z.ZodType<Record<string, unknown>, Record<string, unknown>> {
  const values = z.object(Object.fromEntries(Object.entries(cmd.options).map(([name, o]) => [name, optionSchema(o)]))).strict()
  return z.record(z.string(), z.unknown()).transform((raw, ctx) => {
    const r = values.safeParse(raw)
    if (!r.success) {
      for (const issue of r.error.issues) ctx.addIssue(issue as Parameters<typeof ctx.addIssue>[0])
      return z.NEVER
    }
    for (const [a, b, hint] of cmd.conflicts ?? []) {
      if (given(raw[a]) && given(raw[b])) ctx.addIssue({ code: 'custom', message: `--${a} and --${b} contradict each other`, params: { hint } })
    }
    for (const [a, b] of cmd.requires ?? []) {
      if (given(raw[a]) && !given(raw[b]))
        ctx.addIssue({ code: 'custom', message: `--${a} goes with --${b}`, params: { hint: `add --${b}, or leave out --${a}` } })
    }
    return r.data
  })
}

const given = (v: unknown) => v !== undefined && v !== false

/**
 * The checked option values of one invocation, or a usage error naming the option and the value
 * (or the command and the option it needs). --dry-run is refused here by a command that cannot
 * plan, before anything is read or written.
 */
export function checkOptions(cmd: Command, inv: Invocation): Record<string, unknown> {
  if (inv.dryRun && 'refused' in cmd.dryRun)
    throw new LabhostError('usage', `labhost ${cmd.name} has no --dry-run: ${cmd.dryRun.refused}`, 'leave out --dry-run; nothing was written')
  const r = commandSchema(cmd).safeParse(inv.raw)
  if (r.success) return r.data
  const issue = r.error.issues[0]!
  const hint = (issue as { params?: { hint?: string } }).params?.hint ?? `see \`labhost ${cmd.name} --help\``
  const name = issue.path[0]
  if (typeof name !== 'string') throw new LabhostError('usage', issue.message, hint)
  const given = inv.raw[name]
  if (given === undefined) throw new LabhostError('usage', `labhost ${cmd.name} needs --${name}`, `usage: ${cmd.usage}`)
  const value = Array.isArray(given) ? given[issue.path[1] as number] : given
  throw new LabhostError('usage', `--${name} ${JSON.stringify(value)} ${issue.message}`, hint)
}

// Value schemas. Each takes the option's text and gives its value, or an issue whose message
// follows `--name "value"` and whose hint says what to give instead.

/** A value read by `parse` (undefined: not a valid one). */
export function valueOf<T>(parse: (s: string) => T | undefined, message: string, hint: string): z.ZodType<T, string> {
  return z.string().transform((s, ctx) => {
    const v = parse(s)
    if (v === undefined) {
      ctx.addIssue({ code: 'custom', message, params: { hint } })
      return z.NEVER
    }
    return v
  })
}

/** Any non-empty text (a name, a version). */
export const text = (): z.ZodType<string, string> => valueOf((s) => (s === '' ? undefined : s), 'is empty', 'give a value')

/** A file or directory name: not empty (whether it exists is the command's to say, with its own exit code). */
export const pathValue = (): z.ZodType<string, string> => valueOf((s) => (s === '' ? undefined : s), 'is not a path', 'give a file or directory name')

/** A whole number from min to max: plain decimal digits only (no 1e3, 0x10, Infinity or empty). */
export const wholeNumber = (min: number, max: number): z.ZodType<number, string> =>
  valueOf(
    (s) => (/^\d+$/.test(s) && Number(s) >= min && Number(s) <= max ? Number(s) : undefined),
    `is not a whole number from ${min} to ${max}`,
    `give a whole number from ${min} to ${max}`,
  )

/** A number from min to max with an optional fraction (a ratio, GiB): 1, 1.5; no sign or exponent. */
export const decimal = (min: number, max: number): z.ZodType<number, string> =>
  valueOf(
    (s) => (/^\d+(\.\d+)?$/.test(s) && Number(s) >= min && Number(s) <= max ? Number(s) : undefined),
    `is not a number from ${min} to ${max}`,
    `give a number from ${min} to ${max}`,
  )

/** A bytes-per-second rate as aria2c takes it (500K, 30M, 1000000), up to RATE_MAX. */
export const rate = (): z.ZodType<string, string> =>
  // aria2c reads 0 as "no limit": the opposite of what a 0 on the command line seems to ask for
  valueOf(
    (s) => (/^0*[1-9]\d*[KM]?$/.test(s) && rateBytes(s) <= RATE_MAX ? s : undefined),
    'is not a rate',
    'give bytes per second from 1 to 2047M, with K or M: 500K, 30M; leave the option out for no limit',
  )

/** One of a few words. */
export function oneOf<const T extends string>(values: readonly T[], hint?: string): z.ZodType<T, string> {
  const list = values.length === 2 ? `neither ${values[0]} nor ${values[1]}` : `not one of ${values.join(', ')}`
  return valueOf((s) => values.find((v) => v === s), `is ${list}`, hint ?? `give ${values.join(' or ')}`)
}

/** K/N, 1 <= K <= N <= 64: one of N parts (--upstream-part). */
export const upstreamPart = (): z.ZodType<{ index: number; of: number }, string> =>
  valueOf(
    (s) => {
      const m = /^(\d{1,2})\/(\d{1,2})$/.exec(s)
      const index = Number(m?.[1])
      const of = Number(m?.[2])
      return m && index >= 1 && index <= of && of <= 64 ? { index, of } : undefined
    },
    'is not a part K/N',
    "give K/N with 1 <= K <= N <= 64: this host's part of the lab's N upstream hosts, e.g. 2/4",
  )

/** A dotted IPv4 address. */
export const ipv4 = (): z.ZodType<string, string> =>
  valueOf(
    (s) => (/^\d{1,3}(\.\d{1,3}){3}$/.test(s) && s.split('.').every((o) => Number(o) <= 255) ? s : undefined),
    'is not an IPv4 address',
    'e.g. 10.1.2.255',
  )

/** A URL with one of the given schemes (http:, https:, udp:). */
export function url(schemes: readonly string[], example: string): z.ZodType<string, string> {
  const names = schemes.map((x) => x.replace(/:$/, ''))
  const list = names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names.at(-1)}` : names[0]
  return valueOf(
    (s) => {
      try {
        return schemes.includes(new URL(s).protocol) ? s : undefined
      } catch {
        return undefined
      }
    },
    `is not a URL (${list})`,
    `e.g. ${example}`,
  )
}

// Options several commands share, so that a name means one thing everywhere: --signing-key is a
// private key that signs what a command makes, --trusted-key a public key it checks signatures with.

export const SIGNING_KEY = {
  type: 'string',
  value: 'KEY',
  required: true,
  schema: pathValue(),
  description: 'the private key (labhost image keygen) that signs the output',
} as const satisfies OptionDef

export const TRUSTED_KEY = {
  type: 'string',
  value: 'PUB',
  default: '/etc/labhost/trusted.pub',
  schema: pathValue(),
  description: "the public key the image's manifest must be signed with",
} as const satisfies OptionDef

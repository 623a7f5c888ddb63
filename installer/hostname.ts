// The host's name, from install.yaml's `hostname:` setting: the inventory's entry for this
// machine (by DMI serial or by the MAC of any of its wired NICs), else the pattern filled in from
// the machine's DMI serial, asset tag or first wired NIC's MAC. Every value is made into a valid
// RFC 1123 label (lower case, letters, digits and hyphens, at most maxLength characters); a
// machine for which the setting gives no name is refused before the first write.
import { z } from 'zod'
import { LabhostError } from '../lib/errors.ts'
import type { Machine } from './machine.ts'

/** The placeholders of hostname.pattern and where their values come from. */
export const PLACEHOLDERS = {
  serial: 'the DMI system serial number (product_serial; a Dell service tag)',
  asset: 'the DMI asset tag (chassis_asset_tag, set in the BIOS setup)',
  mac: 'the MAC of the first wired NIC by kernel name, 12 hex digits without colons',
} as const
export type Placeholder = keyof typeof PLACEHOLDERS

/** What firmware vendors put in DMI fields they did not fill (after sanitize): no value at all. */
const FIRMWARE_FILLERS =
  /^(to-be-filled-by-o-e-m|default-string|system-serial-number|chassis-serial-number|serial-number|asset-tag|no-asset-tag|asset-tag-number|not-specified|not-applicable|n-a|none|unknown|invalid|0+|0123456789|123456789)$/

const LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/

/** A valid host name here: one RFC 1123 label, lower case, 1..63 characters. */
export function validHostname(s: string): boolean {
  return s.length <= 63 && LABEL.test(s)
}

/** A DMI or MAC value as a piece of a label: lower case, every run of other characters one hyphen, none at the ends. */
export function sanitize(value: string): string {
  return value
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
}

type Part = { literal: string } | { names: Placeholder[]; text: string }

/** `lab-{serial|mac}` -> literal and placeholder parts; a string says what is wrong with the pattern. */
export function parsePattern(pattern: string): Part[] | string {
  const parts: Part[] = []
  const re = /\{([^{}]*)\}/g
  let at = 0
  for (const m of pattern.matchAll(re)) {
    if (m.index > at) parts.push({ literal: pattern.slice(at, m.index) })
    const names = m[1]!.split('|')
    const unknown = names.filter((n) => !(n in PLACEHOLDERS))
    if (unknown.length)
      return `unknown placeholder {${m[1]}} (known: ${Object.keys(PLACEHOLDERS)
        .map((n) => `{${n}}`)
        .join(', ')}; {a|b} takes the first one the machine has)`
    parts.push({ names: names as Placeholder[], text: m[0] })
    at = m.index + m[0].length
  }
  if (at < pattern.length) parts.push({ literal: pattern.slice(at) })
  const literal = parts.flatMap((p) => ('literal' in p ? [p.literal] : [])).join('')
  if (/[{}]/.test(literal)) return 'an unmatched { or }'
  if (!/^[a-z0-9-]*$/.test(literal)) return 'its fixed text may hold only lower-case letters, digits and hyphens'
  if (!parts.some((p) => 'names' in p)) return 'it has no placeholder, so every host would get the same name'
  const first = parts[0]!
  const last = parts[parts.length - 1]!
  if (('literal' in first && first.literal.startsWith('-')) || ('literal' in last && last.literal.endsWith('-')))
    return 'a host name must not begin or end with a hyphen'
  return parts
}

const MAC = /^[0-9a-fA-F]{2}([:-]?[0-9a-fA-F]{2}){5}$/
const normMac = (mac: string) =>
  mac
    .toLowerCase()
    .replace(/[^0-9a-f]/g, '')
    .replace(/(..)(?!$)/g, '$1:')

const hostnameLabel = z
  .string()
  .refine((s) => validHostname(s), 'not a valid host name: 1 to 63 lower-case letters, digits and hyphens, not beginning or ending with a hyphen')

export const HostnameSchema = z
  .object({
    pattern: z
      .string()
      .min(1)
      .superRefine((s, ctx) => {
        const parts = parsePattern(s)
        if (typeof parts === 'string') ctx.addIssue({ code: 'custom', message: `not a host name pattern: ${parts}` })
      })
      .optional()
      .describe(
        `the name from the machine's own data, e.g. "lab-{serial}". Placeholders: ${Object.entries(PLACEHOLDERS)
          .map(([k, v]) => `{${k}} ${v}`)
          .join(
            '; ',
          )}; {serial|mac} takes the first one the machine has. Values are lower-cased, every run of other characters than letters and digits becomes one hyphen, and while the name is longer than maxLength the longest value loses its first character. A machine for which no value is there (empty, or a firmware filler such as "To Be Filled By O.E.M.") is refused`,
      ),
    inventory: z
      .array(
        z
          .object({
            serial: z.string().trim().min(1).optional().describe('DMI system serial number (compared without regard to case)'),
            mac: z
              .string()
              .regex(MAC, 'not a MAC address (six hex pairs, e.g. 00:1a:2b:3c:4d:5e)')
              .optional()
              .describe("MAC of any of the machine's wired NICs"),
            name: hostnameLabel.describe('the host name for that machine'),
          })
          .strict()
          .refine((e) => (e.serial === undefined) !== (e.mac === undefined), 'give exactly one of serial and mac'),
      )
      .default([])
      .describe('names for known machines, by serial or MAC; an entry for the machine wins over the pattern'),
    maxLength: z.number().int().min(2).max(63).default(63).describe('longest name the pattern makes (63, one DNS label; 15 for NetBIOS)'),
  })
  .strict()
  .superRefine((h, ctx) => {
    if (h.pattern === undefined && h.inventory.length === 0) ctx.addIssue({ code: 'custom', message: 'give a pattern, an inventory, or both' })
    const parts = h.pattern !== undefined ? parsePattern(h.pattern) : []
    if (typeof parts !== 'string') {
      const room = h.maxLength - parts.reduce((n, p) => n + ('literal' in p ? p.literal.length : 1), 0)
      if (room < 0) ctx.addIssue({ code: 'custom', path: ['pattern'], message: `its fixed text leaves no room for the values within maxLength ${h.maxLength}` })
    }
    const seen = new Map<string, number>()
    h.inventory.forEach((e, i) => {
      for (const key of [e.serial !== undefined ? `serial ${e.serial.toLowerCase()}` : `mac ${normMac(e.mac!)}`, `name ${e.name}`]) {
        const j = seen.get(key)
        if (j !== undefined) ctx.addIssue({ code: 'custom', path: ['inventory', i], message: `the same ${key} as inventory entry ${j}` })
        else seen.set(key, i)
      }
    })
  })

export type HostnameConfig = z.infer<typeof HostnameSchema>

export interface HostnameChoice {
  name: string
  /** Where the name came from, for the plan and the report. */
  from: string
}

/** This machine's values for the placeholders: null when absent, empty after sanitizing, or a firmware filler. */
export function placeholderValues(m: Machine): Record<Placeholder, { raw: string | null; value: string | null }> {
  const one = (raw: string | null | undefined) => {
    const value = raw ? sanitize(raw) : ''
    return { raw: raw ?? null, value: value && !FIRMWARE_FILLERS.test(value) ? value : null }
  }
  return { serial: one(m.serial), asset: one(m.assetTag), mac: one(m.nics[0]?.mac.replace(/:/g, '')) }
}

/**
 * Until the name fits `max`, the longest value (the first of equals) loses its first character
 * (serials and MACs differ at their ends), and a hyphen that comes first with it.
 */
function fit(parts: ({ literal: string } | { value: string })[], max: number): string {
  const len = () => parts.reduce((n, p) => n + ('literal' in p ? p.literal.length : p.value.length), 0)
  while (len() > max) {
    const longest = parts.reduce<{ value: string } | null>((a, p) => ('value' in p && (!a || p.value.length > a.value.length) ? p : a), null)!
    if (longest.value.length <= 1) break
    longest.value = longest.value.slice(1).replace(/^-+/, '')
  }
  return parts.map((p) => ('literal' in p ? p.literal : p.value)).join('')
}

/**
 * The name install.yaml gives this machine, or null when it sets none. Refused (exit
 * hostnameUnavailable) when the setting gives no valid name: nothing is written before.
 */
export function chooseHostname(h: HostnameConfig | undefined, m: Machine, configFile: string): HostnameChoice | null {
  if (!h) return null
  const macs = new Set(m.nics.map((n) => n.mac.toLowerCase()))
  const hits = h.inventory
    .map((e, i) => ({ e, i }))
    .filter(({ e }) => (e.serial !== undefined ? m.serial !== null && e.serial.toLowerCase() === m.serial.trim().toLowerCase() : macs.has(normMac(e.mac!))))
  const names = [...new Set(hits.map(({ e }) => e.name))]
  if (names.length > 1) {
    throw new LabhostError(
      'hostnameUnavailable',
      `${configFile}: hostname.inventory: entries ${hits.map(({ i }) => i).join(' and ')} both match this machine and name it ${names.map((n) => `"${n}"`).join(' and ')}`,
      'keep one entry per machine; nothing was written',
    )
  }
  if (hits.length) {
    const { e, i } = hits[0]!
    return { name: e.name, from: `hostname.inventory.${i} (${e.serial !== undefined ? `serial ${e.serial}` : `MAC ${normMac(e.mac!)}`})` }
  }
  const seen = `serial ${JSON.stringify(m.serial ?? '')}, asset tag ${JSON.stringify(m.assetTag ?? '')}, first wired NIC ${m.nics[0] ? `${m.nics[0].name} ${m.nics[0].mac}` : 'none'}`
  if (h.pattern === undefined) {
    throw new LabhostError(
      'hostnameUnavailable',
      `${configFile}: hostname.inventory has no entry for this machine (${seen}, NICs ${m.nics.map((n) => n.mac).join(' ') || 'none'}) and hostname.pattern is not set`,
      'add the machine to hostname.inventory by serial or MAC, or set hostname.pattern; nothing was written',
    )
  }
  const parts = parsePattern(h.pattern)
  if (typeof parts === 'string')
    throw new LabhostError('configInvalid', `${configFile}: hostname.pattern: ${parts}; found value ${JSON.stringify(h.pattern)}`, 'correct the pattern')
  const values = placeholderValues(m)
  const filled = parts.map((p) => {
    if ('literal' in p) return p
    const name = p.names.find((n) => values[n].value !== null)
    if (name === undefined) {
      const found = p.names.map((n) => `${n} ${values[n].raw === null ? 'absent' : JSON.stringify(values[n].raw)}`).join(', ')
      throw new LabhostError(
        'hostnameUnavailable',
        `${configFile}: hostname.pattern: ${JSON.stringify(h.pattern)} gives no name for this machine: ${p.text} has no usable value (${found}${p.names.some((n) => values[n].raw) ? '; empty after sanitizing, or a firmware filler' : ''})`,
        'add the machine to hostname.inventory by serial or MAC, set its serial or asset tag in the BIOS, or use a placeholder it has ({serial|mac} takes the MAC when there is no serial); nothing was written',
      )
    }
    return { value: values[name].value! }
  })
  const name = fit(filled, h.maxLength)
  if (!validHostname(name)) {
    throw new LabhostError(
      'hostnameUnavailable',
      `${configFile}: hostname.pattern: ${JSON.stringify(h.pattern)} gives ${JSON.stringify(name)} for this machine (${seen}), not a valid host name`,
      'add the machine to hostname.inventory, or change the pattern; nothing was written',
    )
  }
  return { name, from: `hostname.pattern ${h.pattern}` }
}

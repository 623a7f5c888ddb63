// The channel document of a staged rollout (pull mode): a small signed JSON file on the image
// server that names the image hosts should run, the share of hosts that take part so far, an
// optional maintenance window and a pause switch. Signed by the image key like a manifest
// (image-format/manifest.ts: ed25519 over the canonical JSON); its shape is checked only after its
// signature. A serial number, higher in every published document, lets a host refuse an older
// channel replayed over a newer one: it remembers the highest serial it accepted.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { LabhostError } from '../lib/errors.ts'
import { writeDurable } from '../lib/durable.ts'
import { canonicalJson, checkSchema, keyFingerprint, signDocument } from '../image-format/manifest.ts'
import { DEFAULT_FETCH, fetchBytes, isUrl, openSource, type FetchOptions } from '../image-format/source.ts'
import { TRIAL_DIR } from '../image-format/trial-state.ts'
import { parseShellVars } from './host-state.ts'

export const CHANNEL_FORMAT = 'labhost-channel/1'
/** The largest channel document read (before its signature can be checked). */
export const CHANNEL_MAX_BYTES = 64 << 10

export const DAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'] as const
export type Day = (typeof DAYS)[number]
const hhmm = z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'a time of day HH:MM (00:00 to 23:59)')

export const WindowSchema = z
  .object({
    /** The days a window opens on (local time); a window past midnight ends on the next day. */
    days: z.array(z.enum(DAYS)).min(1).max(7),
    from: hhmm,
    /** Before `from`: the window runs past midnight (22:00-05:00); equal to it: the whole day. */
    to: hhmm,
  })
  .strict()
export type Window = z.infer<typeof WindowSchema>

// .strict() everywhere, no defaults: what is checked is exactly what was signed
export const ChannelSchema = z
  .object({
    format: z.literal(CHANNEL_FORMAT),
    /** Higher in every published document: a host refuses one lower than the highest it accepted. */
    serial: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    /** When it was published (ISO 8601, UTC). */
    createdAt: z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, 'an ISO 8601 time in UTC'),
    image: z
      .object({
        /** The image's manifest (or its directory, ending in /): a URL relative to the channel's, or absolute. */
        manifest: z.string().min(1).max(2048),
        name: z.string().regex(/^[a-z0-9-]+$/, 'lower-case letters, digits and dashes'),
        version: z
          .string()
          .max(64)
          .regex(/^[0-9][0-9A-Za-z.+~-]*$/, 'a version such as 1.2.0'),
      })
      .strict(),
    /** Percent of hosts that take part (rollout.ts: a stable hash of the machine UUID and the version). */
    share: z.number().min(0).max(100),
    /** When hosts may update (and reboot); absent: any time. */
    window: WindowSchema.optional(),
    /** No host starts an update while the channel is paused. */
    paused: z.boolean(),
    signer: z.string().regex(/^sha256:[0-9a-f]{32}$/, 'a key fingerprint sha256:<32 hex digits>'),
    signature: z.string().optional(),
  })
  .strict()
export type Channel = z.infer<typeof ChannelSchema>

/** "Mon-Fri 22:00-05:00", "Sat,Sun 00:00-00:00", "daily 01:00-04:00" as a Window; undefined: not one. */
export function parseWindow(spec: string): Window | undefined {
  const m = /^\s*(\S+)\s+(\d\d:\d\d)-(\d\d:\d\d)\s*$/.exec(spec)
  if (!m) return undefined
  const days = new Set<Day>()
  for (const part of m[1]!.split(',')) {
    if (part === 'daily') {
      DAYS.forEach((d) => days.add(d))
      continue
    }
    const [a, b, extra] = part.split('-')
    const i = DAYS.indexOf(a as Day)
    const j = b === undefined ? i : DAYS.indexOf(b as Day)
    if (i < 0 || j < 0 || extra !== undefined) return undefined
    for (let k = i; ; k = (k + 1) % 7) {
      days.add(DAYS[k]!)
      if (k === j) break
    }
  }
  const w = { days: DAYS.filter((d) => days.has(d)), from: m[2]!, to: m[3]! }
  return WindowSchema.safeParse(w).success ? w : undefined
}

export function formatWindow(w: Window): string {
  return `${w.days.join(',')} ${w.from}-${w.to} (local time)`
}

const minutes = (t: string) => Number(t.slice(0, 2)) * 60 + Number(t.slice(3, 5))
const dayOf = (d: Date): Day => DAYS[(d.getDay() + 6) % 7]!

/** Is `now` (its local time) inside the window? One past midnight belongs to the day it opened on. */
export function inWindow(w: Window, now: Date): boolean {
  const m = now.getHours() * 60 + now.getMinutes()
  const from = minutes(w.from)
  const to = minutes(w.to)
  const today = w.days.includes(dayOf(now))
  if (from === to) return today
  if (from < to) return today && m >= from && m < to
  const yesterday = w.days.includes(dayOf(new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1, 12)))
  return (today && m >= from) || (yesterday && m < to)
}

export function signChannel(c: Omit<Channel, 'signer' | 'signature'>, key: crypto.KeyObject): Channel {
  return signDocument<Channel>({ ...c, signer: keyFingerprint(crypto.createPublicKey(key)) }, key)
}

function channelError(code: 'channelSignatureInvalid' | 'channelInvalid', message: string, hint: string, cause?: unknown): LabhostError {
  return new LabhostError(code, message, hint, {}, { cause })
}

/**
 * The channel in `text`: its signature by `key` checked before anything else of it is read
 * (channelSignatureInvalid), then its shape (channelInvalid).
 */
export function parseSignedChannel(text: string, key: crypto.KeyObject, where: string): Channel {
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch (e) {
    throw channelError(
      'channelInvalid',
      `${where} is not a readable channel: ${(e as Error).message}`,
      'point at the channel file written by `labhost channel publish`; nothing was written',
      e,
    )
  }
  const isObject = v !== null && typeof v === 'object' && !Array.isArray(v)
  const sig = isObject ? (v as Record<string, unknown>).signature : undefined
  if (typeof sig !== 'string')
    throw channelError(
      'channelSignatureInvalid',
      `${where} is not signed`,
      'only signed channels are followed: publish it with `labhost channel publish --signing-key KEY`; nothing was written',
    )
  let ok = false
  try {
    ok = crypto.verify(null, Buffer.from(canonicalJson({ ...(v as object), signature: undefined })), key, Buffer.from(sig, 'base64'))
  } catch {
    // a signature OpenSSL cannot parse does not match
  }
  if (!ok) {
    throw channelError(
      'channelSignatureInvalid',
      `${where}: the signature does not match (trusted key ${keyFingerprint(key)})`,
      'the channel was changed or signed by another key: publish it again with the image key; nothing was written',
    )
  }
  try {
    return checkSchema(ChannelSchema, v, where, 'not a channel this labhost can use: publish it with this labhost version; nothing was written')
  } catch (e) {
    if (e instanceof LabhostError) throw new LabhostError('channelInvalid', e.message, e.hint, e.details, { cause: e })
    throw e
  }
}

/** The channel at a file or an http(s) URL, verified. */
export async function readChannel(where: string, key: crypto.KeyObject, fetch: Partial<FetchOptions> = {}): Promise<Channel> {
  if (isUrl(where)) {
    const data = await fetchBytes(where, { ...DEFAULT_FETCH, ...fetch }, { maxBytes: CHANNEL_MAX_BYTES, code: 'channelInvalid', what: 'nothing was written' })
    return parseSignedChannel(data.toString('utf8'), key, where)
  }
  let text: string
  try {
    text = fs.readFileSync(where, 'utf8')
  } catch (e) {
    throw new LabhostError('notFound', `${where} cannot be read: ${(e as Error).message}`, 'name the channel file or its http(s) URL', {}, { cause: e })
  }
  return parseSignedChannel(text, key, where)
}

/** The image's manifest URL (or path) the channel names, resolved against where the channel is. */
export function imageLocation(c: Channel, channelWhere: string): string {
  if (isUrl(c.image.manifest)) return c.image.manifest
  if (isUrl(channelWhere)) return new URL(c.image.manifest, channelWhere).toString()
  return path.resolve(path.dirname(channelWhere), c.image.manifest)
}

// What the host remembers of the channels it followed, beside the trial record (stateRoot/labhost/).
export const CHANNEL_STATE_FILE = 'channel-serial'
export const CHANNEL_LAST_FILE = 'channel-last'

export interface AcceptedSerial {
  serial: number
  createdAt: string
  url: string
}

export function readAcceptedSerial(stateRoot: string): AcceptedSerial | null {
  const f = path.join(stateRoot, TRIAL_DIR, CHANNEL_STATE_FILE)
  if (!fs.existsSync(f)) return null
  const v = parseShellVars(fs.readFileSync(f, 'utf8'))
  const serial = Number(v.SERIAL)
  return Number.isSafeInteger(serial) ? { serial, createdAt: v.CREATED_AT ?? '', url: v.URL ?? '' } : null
}

/** Refuse a channel older than the newest this host accepted (a replay of an old document). */
export function refuseReplay(c: Channel, where: string, stateRoot: string): void {
  const seen = readAcceptedSerial(stateRoot)
  if (seen && c.serial < seen.serial) {
    throw new LabhostError(
      'channelReplayed',
      `${where} has serial ${c.serial} (published ${c.createdAt}), but this host accepted serial ${seen.serial} (published ${seen.createdAt}) already`,
      'an older channel document is being served (a stale mirror or a replay): publish the channel again (its serial goes up); nothing was written',
    )
  }
}

const oneLine = (s: string) => s.replace(/[^\x21-\x7e]/g, '_')

export function rememberSerial(c: Channel, where: string, stateRoot: string): void {
  const seen = readAcceptedSerial(stateRoot)
  if (seen && seen.serial >= c.serial) return
  fs.mkdirSync(path.join(stateRoot, TRIAL_DIR), { recursive: true })
  writeDurable(path.join(stateRoot, TRIAL_DIR, CHANNEL_STATE_FILE), `SERIAL=${c.serial}\nCREATED_AT=${c.createdAt}\nURL=${oneLine(where)}\n`)
}

/** What a host decided from a channel (updater/rollout.ts); the metrics list every one (labhost status). */
export const DECISIONS = [
  'paused',
  'not-in-stage',
  'up-to-date',
  'newer-running',
  'rolled-back-here',
  'waiting-for-window',
  'update',
  'updated',
  'update-failed',
] as const
export type Decision = (typeof DECISIONS)[number]

/** The last channel check, for labhost status (its metrics). */
export interface LastCheck {
  checkedAt: string
  decision: string
  serial: number
  version: string
  share: number
}

export function writeLastCheck(stateRoot: string, l: LastCheck): void {
  fs.mkdirSync(path.join(stateRoot, TRIAL_DIR), { recursive: true })
  writeDurable(
    path.join(stateRoot, TRIAL_DIR, CHANNEL_LAST_FILE),
    `CHECKED_AT=${l.checkedAt}\nDECISION=${l.decision}\nSERIAL=${l.serial}\nVERSION=${oneLine(l.version)}\nSHARE=${l.share}\n`,
  )
}

export function readLastCheck(stateRoot: string): LastCheck | null {
  const f = path.join(stateRoot, TRIAL_DIR, CHANNEL_LAST_FILE)
  if (!fs.existsSync(f)) return null
  const v = parseShellVars(fs.readFileSync(f, 'utf8'))
  return { checkedAt: v.CHECKED_AT ?? '', decision: v.DECISION ?? '', serial: Number(v.SERIAL ?? 0), version: v.VERSION ?? '', share: Number(v.SHARE ?? 0) }
}

export interface PublishChannelOptions {
  out: string
  /** The image: its directory or manifest, relative to the channel file's directory, or an http(s) URL; default: the previous channel's. */
  image?: string
  /** Percent of hosts; default: the previous channel's. */
  share?: number
  /** A window, null for none; default: the previous channel's. */
  window?: Window | null
  paused: boolean
  /** Default: one above the previous channel's, else 1. */
  serial?: number
  signingKey: crypto.KeyObject
  now?: Date
  fetch?: Partial<FetchOptions>
}

/**
 * The channel `labhost channel publish` writes to `out`: the image's name and version read from
 * its manifest (which must be signed by the same key, or no host would take it), the serial one
 * above the channel already at `out` (which must be signed by the same key too).
 */
export async function makeChannel(o: PublishChannelOptions): Promise<{ channel: Channel; previous: Channel | null }> {
  const pub = crypto.createPublicKey(o.signingKey)
  const previous = fs.existsSync(o.out) ? await readChannel(o.out, pub) : null
  const image = o.image ?? previous?.image.manifest
  const share = o.share ?? previous?.share
  if (image === undefined || share === undefined) {
    throw new LabhostError('usage', `${o.out} does not exist yet: the first channel needs --image and --share`, 'give --image DIR|URL and --share N')
  }
  const serial = o.serial ?? (previous ? previous.serial + 1 : 1)
  if (previous && serial <= previous.serial) {
    throw new LabhostError(
      'usage',
      `--serial ${serial} is not above the serial ${previous.serial} of ${o.out}`,
      'leave --serial out (one above is the default): hosts refuse a serial lower than one they accepted',
    )
  }
  const where = isUrl(image) ? image : path.resolve(path.dirname(path.resolve(o.out)), image)
  // image-format's source reads and verifies the manifest (over http only the manifest is fetched)
  const { manifest } = await openSource(where, pub, { ...DEFAULT_FETCH, ...o.fetch })
  const window = o.window === undefined ? previous?.window : (o.window ?? undefined)
  const channel = signChannel(
    {
      format: CHANNEL_FORMAT,
      serial,
      createdAt: (o.now ?? new Date()).toISOString(),
      image: { manifest: image, name: manifest.name, version: manifest.version },
      share,
      ...(window ? { window } : {}),
      paused: o.paused,
    },
    o.signingKey,
  )
  return { channel, previous }
}

export function writeChannel(out: string, c: Channel): void {
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true })
  writeDurable(out, JSON.stringify(c, null, 2) + '\n')
}

export function describeChannel(c: Channel, where: string): string {
  return [
    `${where}: serial ${c.serial}, published ${c.createdAt}, signed by ${c.signer}`,
    `  image  ${c.image.name} ${c.image.version} (${c.image.manifest})`,
    `  share  ${c.share} %`,
    `  window ${c.window ? formatWindow(c.window) : 'any time'}`,
    `  ${c.paused ? 'PAUSED: no host starts an update' : 'not paused'}`,
  ].join('\n')
}

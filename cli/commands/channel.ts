// labhost channel publish and channel show: the signed channel document of a staged rollout, which
// hosts follow with `labhost update --channel URL` (updater/channel.ts, updater/rollout.ts).
import { LabhostError } from '../../lib/errors.ts'
import { readPrivateKey, readPublicKey } from '../../image-format/manifest.ts'
import { describeChannel, formatWindow, makeChannel, parseWindow, readChannel, writeChannel, type Window } from '../../updater/channel.ts'
import { decimal, defineCommand, pathValue, SIGNING_KEY, TRUSTED_KEY, valueOf, wholeNumber } from '../command.ts'

/** A window spec ("Mon-Fri 22:00-05:00", "daily 01:00-04:00") or none. */
const windowValue = () =>
  valueOf<Window | null>(
    (s) => (s === 'none' ? null : parseWindow(s)),
    'is not a window',
    'give DAYS HH:MM-HH:MM in local time: Mon-Fri 22:00-05:00, Sat,Sun 08:00-18:00, daily 01:00-04:00; or none',
  )

export const channelPublish = defineCommand({
  name: 'channel publish',
  summary: 'write the signed channel document of a staged rollout: the image, the share of hosts, the window, pause',
  usage: 'labhost channel publish --out FILE [--image DIR|URL] [--share N] [--window SPEC] [--pause] --signing-key KEY',
  notes:
    'an existing FILE is the previous channel: its serial goes up by one, and --image, --share and --window default to its values (--pause does not: publish without it to resume)',
  options: {
    out: {
      type: 'string',
      value: 'FILE',
      required: true,
      schema: pathValue(),
      description: 'the channel file to write (served beside the images, e.g. channel.json)',
    },
    image: {
      type: 'string',
      value: 'DIR|URL',
      schema: pathValue(),
      defaultText: "the previous channel's",
      description: "the image's directory or manifest relative to FILE's directory (as the server serves them), or its http(s) URL",
    },
    share: {
      type: 'string',
      value: 'N',
      schema: decimal(0, 100),
      defaultText: "the previous channel's",
      description: 'the percent of hosts taking part in the rollout (5, 25, 100)',
    },
    window: {
      type: 'string',
      value: 'SPEC',
      schema: windowValue(),
      defaultText: "the previous channel's, else any time",
      description: 'when hosts update and reboot, in their local time: Mon-Fri 22:00-05:00; none for any time',
    },
    pause: { type: 'boolean', description: 'pause the rollout: no host starts an update until the channel is published without it' },
    serial: {
      type: 'string',
      value: 'N',
      schema: wholeNumber(1, Number.MAX_SAFE_INTEGER),
      defaultText: "one above the previous channel's, else 1",
      description: 'the serial number (hosts refuse a channel older than one they accepted)',
    },
    'signing-key': SIGNING_KEY,
  },
  dryRun: { plan: 'check the image and print the channel that would be written' },
  async run(values, _pos, ctx) {
    const { channel, previous } = await makeChannel({
      out: values.out,
      image: values.image,
      share: values.share,
      window: values.window,
      paused: values.pause,
      serial: values.serial,
      signingKey: readPrivateKey(values['signing-key']),
    })
    const human =
      `${ctx.dryRun ? 'would write' : 'wrote'} ${describeChannel(channel, values.out)}` +
      (previous
        ? `\n  (replacing serial ${previous.serial}: ${previous.image.name} ${previous.image.version} at ${previous.share} %${previous.paused ? ', paused' : ''})`
        : '')
    if (!ctx.dryRun) writeChannel(values.out, channel)
    return { data: { ...channel, out: values.out, ...(ctx.dryRun ? { dryRun: true } : {}) }, human }
  },
})

export const channelShow = defineCommand({
  name: 'channel show',
  summary: 'print a channel document (file or http(s) URL) after checking its signature',
  usage: 'labhost channel show FILE|URL [--trusted-key PUB] [options]',
  options: {
    'trusted-key': { ...TRUSTED_KEY, description: 'the public key the channel must be signed with' },
    ca: { type: 'string', value: 'PEM', schema: pathValue(), description: "https from a server whose certificate a lab CA signed: that CA's certificate" },
  },
  dryRun: { readsOnly: true },
  async run(values, positionals) {
    const where = positionals[0]
    if (!where) throw new LabhostError('usage', 'labhost channel show needs a FILE or URL', `usage: ${this.usage}`)
    const c = await readChannel(where, readPublicKey(values['trusted-key']), values.ca !== undefined ? { caFile: values.ca } : {})
    return { data: { ...c, windowText: c.window ? formatWindow(c.window) : null }, human: describeChannel(c, where) }
  },
})

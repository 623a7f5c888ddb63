// labhost image build|keygen|verify, and labhost schema: root images and their signed manifests.
import fs from 'node:fs'
import path from 'node:path'
import { isLabhostError, LabhostError } from '../../lib/errors.ts'
import { LayoutSchema } from '../../lib/layout.ts'
import { InstallConfigSchema } from '../../installer/config.ts'
import { TrialConfigSchema } from '../../updater/trial-verdict.ts'
import { ChannelSchema } from '../../updater/channel.ts'
import { z } from 'zod'
import { buildImage } from '../../image-build/build.ts'
import { generateKeyPair, planKeyPair, readPublicKey, verifyImageDir } from '../../image-format/manifest.ts'
import { recipeJsonSchema } from '../../image-build/recipe.ts'
import { buildStick } from '../../image-build/stick.ts'
import { publishImage, seedImage } from '../../image-format/torrent.ts'
import { publishDeltaPacks } from '../../updater/delta-pack.ts'
import { serveDirectory } from '../../lib/http-serve.ts'
import { defineCommand, pathValue, rate, SIGNING_KEY, text, TRUSTED_KEY, url, wholeNumber } from '../command.ts'

export const imageBuild = defineCommand({
  name: 'image build',
  summary: 'build a signed root image from a recipe (a file, or a shipped one: test)',
  usage: 'labhost image build RECIPE --out DIR --signing-key KEY [options]',
  options: {
    out: { type: 'string', value: 'DIR', required: true, schema: pathValue(), description: 'the directory that gets root.img, root.img.zst and manifest.json' },
    'signing-key': { ...SIGNING_KEY, aliases: ['key'] },
    'no-cache': { type: 'boolean', description: "build from scratch even when the image cache holds this recipe's image" },
  },
  dryRun: { refused: 'it writes only into --out' },
  async run(values, positionals, ctx) {
    const recipe = positionals[0]
    if (!recipe) throw new LabhostError('usage', 'labhost image build needs a RECIPE', `usage: ${this.usage}`)
    const r = await buildImage(recipe, { out: values.out, keyFile: values['signing-key'], log: ctx.log, noCache: values['no-cache'] })
    const m = r.manifest
    return {
      data: {
        manifest: r.manifestFile,
        name: m.name,
        version: m.version,
        size: m.image.size,
        sha256: m.image.sha256,
        transportSize: m.transport.size,
        seconds: r.seconds,
        cached: r.cached,
      },
      human: `built ${m.name} ${m.version}: ${r.manifestFile}\n  root.img ${m.image.size} bytes sha256 ${m.image.sha256}\n  root.img.zst ${m.transport.size} bytes\n  in ${r.seconds.toFixed(1)} s${r.cached ? ' (from the cache)' : ''}`,
    }
  },
})

export const imageStick = defineCommand({
  name: 'image stick',
  summary: 'make a bootable USB installer stick image carrying a signed root image and install.yaml',
  usage: 'labhost image stick --image DIR --config install.yaml --out stick.img --signing-key KEY [options]',
  options: {
    image: {
      type: 'string',
      value: 'DIR',
      required: true,
      schema: pathValue(),
      description: 'the signed root image (a directory labhost image build made) the stick installs',
    },
    config: {
      type: 'string',
      value: 'FILE',
      required: true,
      schema: pathValue(),
      description: 'install.yaml: the models, disks and finish the stick accepts (labhost schema install)',
    },
    out: { type: 'string', value: 'FILE', required: true, schema: pathValue(), description: 'the stick image file to write (then dd it to a USB stick)' },
    'signing-key': { ...SIGNING_KEY, aliases: ['key'] },
  },
  dryRun: { refused: 'it writes only --out' },
  async run(values, _pos, ctx) {
    const r = await buildStick({ imageDir: values.image, config: values.config, out: values.out, keyFile: values['signing-key'], log: ctx.log })
    return { data: r, human: `stick image ${r.out} (${r.sizeBytes >> 20} MiB): write it to a USB stick with dd bs=4M oflag=direct` }
  },
})

export const TORRENT_OPTIONS = {
  tracker: {
    type: 'string',
    value: 'URL',
    multiple: true,
    schema: url(['http:', 'https:', 'udp:'], 'http://tracker.lab:6969/announce'),
    description: 'a BitTorrent tracker the .torrent names',
  },
  'web-seed': {
    type: 'string',
    value: 'URL',
    multiple: true,
    schema: url(['http:', 'https:'], 'http://images.lab/host/root.img.zst'),
    description: 'an http(s) URL of the same file the .torrent names as a web seed (BEP 19)',
  },
} as const

export const imagePublish = defineCommand({
  name: 'image publish',
  summary: 'make the BitTorrent file of an image directory (root.img.zst.torrent, by mktorrent) for `labhost update --torrent`',
  usage: 'labhost image publish DIR --tracker URL [options]',
  notes: `--delta-from OLD_DIR (repeatable): also a delta pack for hosts running OLD_DIR's image — the
transport bytes their delta asks for, in one file (root.img.zst.from-ID.pack) with its .torrent,
listed in root.img.zst.deltas.json — so that \`labhost update URL --torrent\` fetches a delta from
the lab's peers instead of the server. Give every version the fleet still runs.`,
  options: {
    ...TORRENT_OPTIONS,
    'delta-from': {
      type: 'string',
      value: 'OLD_DIR',
      multiple: true,
      schema: pathValue(),
      description: 'an image directory of a version hosts run now: publish the delta pack from it',
    },
  },
  dryRun: { refused: 'it writes only the .torrent files and the delta packs in DIR' },
  async run(values, positionals, ctx) {
    const dir = positionals[0]
    if (!dir) throw new LabhostError('usage', 'labhost image publish needs an image DIR', `usage: ${this.usage}`)
    const torrent = { trackers: values.tracker, webSeeds: values['web-seed'].length ? values['web-seed'] : undefined }
    const r = await publishImage(dir, torrent)
    for (const old of values['delta-from'])
      if (!fs.existsSync(path.join(old, 'manifest.json')))
        throw new LabhostError('usage', `--delta-from ${old} is not an image directory (no manifest.json)`, 'give the directory of an image the hosts run now')
    const packs = values['delta-from'].length ? await publishDeltaPacks(dir, values['delta-from'], torrent) : []
    if (packs.length) ctx.log(`delta packs: ${packs.map((p) => `${p.file} (${p.size} bytes, from ${p.from.version})`).join(', ')}`)
    return {
      data: { ...r, deltaPacks: packs },
      human:
        `${r.torrentFile}: info hash ${r.infoHash}, ${r.pieces} pieces\n  serve it beside manifest.json; trackers with a whitelist need the info hash` +
        packs
          .map((p) => `\n  delta pack ${p.file}: ${p.size} bytes for hosts on ${p.from.version} (its .torrent beside it; whitelist its info hash too)`)
          .join(''),
    }
  },
})

export const imageServe = defineCommand({
  name: 'image serve',
  summary: 'serve image directories over HTTP or HTTPS (GET/HEAD with Range) for `labhost update URL`, until stopped',
  usage: 'labhost image serve DIR [options]',
  options: {
    host: {
      type: 'string',
      value: 'ADDRESS',
      default: '127.0.0.1',
      schema: text(),
      description: 'the address to listen on (0.0.0.0: every IPv4 address of this machine)',
    },
    port: { type: 'string', value: 'N', default: '8080', schema: wholeNumber(0, 65535), description: 'the TCP port to listen on (0: any free one, printed)' },
    'tls-cert': { type: 'string', value: 'PEM', schema: pathValue(), description: 'serve https with this certificate (with --tls-key)' },
    'tls-key': { type: 'string', value: 'PEM', schema: pathValue(), description: "the certificate's private key (with --tls-cert)" },
    'accept-reports': {
      type: 'string',
      value: 'SUBDIR',
      schema: pathValue(),
      description:
        'let PCs installing over the network PUT their reports into SUBDIR, a directory inside DIR: only that directory accepts writes, names *.json, *.log, *.boot-local only',
    },
  },
  requires: [
    ['tls-cert', 'tls-key'],
    ['tls-key', 'tls-cert'],
  ],
  dryRun: { refused: 'it serves DIR until stopped; there is nothing to plan' },
  async run(values, positionals, ctx) {
    const dir = positionals[0]
    if (!dir || !fs.existsSync(dir))
      throw new LabhostError('usage', `labhost image serve needs an existing DIR${dir ? ` (${dir} does not exist)` : ''}`, `usage: ${this.usage}`)
    const { port, 'tls-cert': cert, 'tls-key': key } = values
    for (const f of [cert, key])
      if (f !== undefined && !fs.existsSync(f))
        throw new LabhostError('notFound', `${f} does not exist`, 'give PEM files of the server certificate and its key')
    const tls = cert !== undefined && key !== undefined ? { cert: fs.readFileSync(cert), key: fs.readFileSync(key) } : undefined
    const reports = values['accept-reports']
    // one line per request; the path and range come escaped (a crafted path cannot forge a line),
    // and only counted: a server that runs for weeks must not keep a record of every request
    const server = await serveDirectory(dir, {
      host: values.host,
      port,
      tls,
      keepRequests: false,
      uploads: reports === undefined ? undefined : { dir: reports },
      onRequest: (q) => ctx.log(q.method === 'PUT' ? `${q.status} PUT ${q.path} ${q.bytes} bytes` : `${q.status} ${q.path} ${q.range ?? ''} ${q.bytes} bytes`),
    }).catch((e: unknown) => {
      // the upload directory is checked as the server starts
      throw isLabhostError(e) && e.code === 'usage' ? new LabhostError('usage', `--accept-reports ${reports}: ${e.message}`, e.hint, {}, { cause: e }) : e
    })
    ctx.log(`serving ${dir} at ${server.url}/ (stop with Ctrl-C or SIGTERM)`)
    if (server.uploads) ctx.log(`accepting reports (PUT *.json, *.log, *.boot-local) into ${server.uploads.dir} at ${server.uploads.url}`)
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve)
      process.once('SIGTERM', resolve)
    })
    await server.close()
    const { requests, bytes, uploaded } = server.totals
    return {
      data: { url: server.url, requests, bytes, uploaded },
      human: `served ${requests} request(s), ${bytes} body bytes${reports !== undefined ? `, ${uploaded} report file(s) stored` : ''}`,
    }
  },
})

export const imageSeed = defineCommand({
  name: 'image seed',
  summary: 'seed a published image over BitTorrent (aria2c) as its first source, until stopped',
  usage: 'labhost image seed DIR [options]',
  options: {
    'upload-limit': { type: 'string', value: 'RATE', schema: rate(), defaultText: 'none', description: 'cap uploads at RATE bytes per second: 500K, 30M' },
    'tracker-interval': {
      type: 'string',
      value: 'SECONDS',
      schema: wholeNumber(1, 86400),
      defaultText: 'what the tracker asks for',
      description: 'seconds between announces to the tracker',
    },
  },
  dryRun: { refused: 'it seeds DIR until stopped; there is nothing to plan' },
  async run(values, positionals, ctx) {
    const dir = positionals[0]
    if (!dir || !fs.existsSync(dir))
      throw new LabhostError('usage', `labhost image seed needs an existing DIR${dir ? ` (${dir} does not exist)` : ''}`, `usage: ${this.usage}`)
    const stop = new AbortController()
    const abort = () => stop.abort()
    process.once('SIGINT', abort)
    process.once('SIGTERM', abort)
    try {
      const r = await seedImage(dir, {
        uploadLimit: values['upload-limit'],
        trackerIntervalSeconds: values['tracker-interval'],
        signal: stop.signal,
        log: ctx.log,
      })
      return { data: r, human: `seeded for ${r.seconds.toFixed(0)} s` }
    } finally {
      process.off('SIGINT', abort)
      process.off('SIGTERM', abort)
    }
  },
})

export const imageKeygen = defineCommand({
  name: 'image keygen',
  summary: 'make an ed25519 signing key pair (DIR/labhost-signing.key, .pub)',
  usage: 'labhost image keygen --out DIR [options]',
  notes: 'an existing key is never overwritten: a DIR that holds labhost-signing.key already is refused',
  options: {
    out: {
      type: 'string',
      value: 'DIR',
      required: true,
      schema: pathValue(),
      description: 'the directory that gets labhost-signing.key (private, mode 600) and labhost-signing.pub',
    },
  },
  dryRun: { plan: 'print the two files it would make' },
  async run(values, _pos, ctx) {
    if (ctx.dryRun) {
      const k = planKeyPair(values.out)
      return { data: { ...k, dryRun: true }, human: `would write private key ${k.privateKeyFile}\nwould write public key  ${k.publicKeyFile}` }
    }
    const k = generateKeyPair(values.out)
    return { data: k, human: `private key ${k.privateKeyFile} (keep it off the images)\npublic key  ${k.publicKeyFile}` }
  },
})

export const imageVerify = defineCommand({
  name: 'image verify',
  summary: "check a manifest's signature and the image files beside it",
  usage: 'labhost image verify DIR|MANIFEST [--trusted-key PUB] [options]',
  options: {
    'trusted-key': { ...TRUSTED_KEY, aliases: ['key'] },
  },
  dryRun: { readsOnly: true },
  async run(values, positionals) {
    const target = positionals[0]
    if (!target) throw new LabhostError('usage', 'labhost image verify needs a DIR or MANIFEST', `usage: ${this.usage}`)
    const file = fs.existsSync(target) && fs.statSync(target).isDirectory() ? path.join(target, 'manifest.json') : target
    const m = verifyImageDir(file, readPublicKey(values['trusted-key']))
    return {
      data: { manifest: file, name: m.name, version: m.version, sha256: m.image.sha256, signer: m.signer, ok: true },
      human: `${file}: ${m.name} ${m.version} signed by ${m.signer}: OK`,
    }
  },
})

export const schema = defineCommand({
  name: 'schema',
  summary: 'print the JSON Schema of a configuration file kind (recipe, layout, install, trial, channel) for editors',
  usage: 'labhost schema recipe|layout|install|trial|channel',
  options: {},
  dryRun: { readsOnly: true },
  async run(_values, positionals) {
    const kind = positionals[0]
    const s =
      kind === 'recipe'
        ? recipeJsonSchema()
        : kind === 'layout'
          ? z.toJSONSchema(LayoutSchema, { io: 'input' })
          : kind === 'install'
            ? z.toJSONSchema(InstallConfigSchema, { io: 'input' })
            : kind === 'trial'
              ? z.toJSONSchema(TrialConfigSchema, { io: 'input' })
              : kind === 'channel'
                ? z.toJSONSchema(ChannelSchema, { io: 'input' })
                : null
    if (!s)
      throw new LabhostError(
        'usage',
        `no schema named ${kind ?? '(none)'}`,
        'use `labhost schema recipe`, `labhost schema layout`, `labhost schema install`, `labhost schema trial` or `labhost schema channel`',
      )
    return { data: s, human: JSON.stringify(s, null, 2) }
  },
})

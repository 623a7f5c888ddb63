// labhost image build|keygen|verify, and labhost schema: root images and their signed manifests.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../../lib/errors.ts'
import { LayoutSchema } from '../../lib/layout.ts'
import { InstallConfigSchema } from '../../installer/config.ts'
import { TrialConfigSchema } from '../../updater/trial-verdict.ts'
import { z } from 'zod'
import { buildImage } from '../../image-build/build.ts'
import { generateKeyPair, readPublicKey, verifyImageDir } from '../../image-build/manifest.ts'
import { recipeJsonSchema } from '../../image-build/recipe.ts'
import { buildStick } from '../../image-build/stick.ts'
import { publishImage, seedImage } from '../../image-build/torrent.ts'
import { serveDirectory } from '../../lib/http-serve.ts'
import { numberOption, rateOption, requireString, type Command } from '../command.ts'

export const imageBuild: Command = {
  name: 'image build',
  summary: 'build a signed root image from a recipe (a file, or a shipped one: test)',
  usage: 'labhost image build RECIPE --out DIR --key SIGNING.key [--no-cache] [--json]',
  options: { out: { type: 'string' }, key: { type: 'string' }, 'no-cache': { type: 'boolean', default: false } },
  async run(values, positionals, ctx) {
    const recipe = positionals[0]
    if (!recipe) throw new LabhostError('usage', 'labhost image build needs a RECIPE', `usage: ${this.usage}`)
    const out = requireString(values, 'out', this)
    const key = requireString(values, 'key', this)
    if (ctx.dryRun) throw new LabhostError('usage', 'image build has no --dry-run: it writes only into --out', 'leave out --dry-run')
    const r = await buildImage(recipe, { out, keyFile: key, log: ctx.log, noCache: values['no-cache'] === true })
    const m = r.manifest
    return {
      data: { manifest: r.manifestFile, name: m.name, version: m.version, size: m.image.size, sha256: m.image.sha256, transportSize: m.transport.size, seconds: r.seconds, cached: r.cached },
      human: `built ${m.name} ${m.version}: ${r.manifestFile}\n  root.img ${m.image.size} bytes sha256 ${m.image.sha256}\n  root.img.zst ${m.transport.size} bytes\n  in ${r.seconds.toFixed(1)} s${r.cached ? ' (from the cache)' : ''}`,
    }
  },
}

export const imageStick: Command = {
  name: 'image stick',
  summary: 'make a bootable USB installer stick image carrying a signed root image and install.yaml',
  usage: 'labhost image stick --image DIR --config install.yaml --out stick.img --key SIGNING.key [--json]',
  options: { image: { type: 'string' }, config: { type: 'string' }, out: { type: 'string' }, key: { type: 'string' } },
  async run(values, _pos, ctx) {
    if (ctx.dryRun) throw new LabhostError('usage', 'image stick has no --dry-run: it writes only --out', 'leave out --dry-run')
    const r = await buildStick({
      imageDir: requireString(values, 'image', this), config: requireString(values, 'config', this),
      out: requireString(values, 'out', this), keyFile: requireString(values, 'key', this), log: ctx.log,
    })
    return { data: r, human: `stick image ${r.out} (${r.sizeBytes >> 20} MiB): write it to a USB stick with dd bs=4M oflag=direct` }
  },
}

export const imagePublish: Command = {
  name: 'image publish',
  summary: 'make the BitTorrent file of an image directory (root.img.zst.torrent, by mktorrent) for `labhost update --torrent`',
  usage: 'labhost image publish DIR --tracker URL [--tracker URL...] [--web-seed URL...] [--json]',
  options: { tracker: { type: 'string', multiple: true }, 'web-seed': { type: 'string', multiple: true } },
  async run(values, positionals, ctx) {
    const dir = positionals[0]
    if (!dir) throw new LabhostError('usage', 'labhost image publish needs an image DIR', `usage: ${this.usage}`)
    if (ctx.dryRun) throw new LabhostError('usage', 'image publish has no --dry-run: it writes only DIR/root.img.zst.torrent', 'leave out --dry-run')
    const r = await publishImage(dir, { trackers: (values.tracker as string[] | undefined) ?? [], webSeeds: values['web-seed'] as string[] | undefined })
    return { data: r, human: `${r.torrentFile}: info hash ${r.infoHash}, ${r.pieces} pieces\n  serve it beside manifest.json; trackers with a whitelist need the info hash` }
  },
}

export const imageServe: Command = {
  name: 'image serve',
  summary: 'serve image directories over HTTP or HTTPS (GET/HEAD with Range) for `labhost update URL`, until stopped',
  usage: 'labhost image serve DIR [--host ADDRESS] [--port N] [--tls-cert PEM --tls-key PEM]',
  options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '8080' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' } },
  async run(values, positionals, ctx) {
    const dir = positionals[0]
    if (!dir || !fs.existsSync(dir)) throw new LabhostError('usage', `labhost image serve needs an existing DIR${dir ? ` (${dir} does not exist)` : ''}`, `usage: ${this.usage}`)
    const port = Number(values.port)
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new LabhostError('usage', `--port ${JSON.stringify(values.port)} is not a port number`, `usage: ${this.usage}`)
    const [cert, key] = [values['tls-cert'], values['tls-key']]
    if ((typeof cert === 'string') !== (typeof key === 'string')) throw new LabhostError('usage', 'https needs both --tls-cert and --tls-key', `usage: ${this.usage}`)
    for (const f of [cert, key]) if (typeof f === 'string' && !fs.existsSync(f)) throw new LabhostError('notFound', `${f} does not exist`, 'give PEM files of the server certificate and its key')
    const tls = typeof cert === 'string' && typeof key === 'string' ? { cert: fs.readFileSync(cert), key: fs.readFileSync(key) } : undefined
    // one line per request; the path and range come escaped (a crafted path cannot forge a line),
    // and only counted: a server that runs for weeks must not keep a record of every request
    const server = await serveDirectory(dir, { host: String(values.host), port, tls, keepRequests: false, onRequest: (q) => ctx.log(`${q.status} ${q.path} ${q.range ?? ''} ${q.bytes} bytes`) })
    ctx.log(`serving ${dir} at ${server.url}/ (stop with Ctrl-C or SIGTERM)`)
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve)
      process.once('SIGTERM', resolve)
    })
    await server.close()
    const { requests, bytes } = server.totals
    return { data: { url: server.url, requests, bytes }, human: `served ${requests} request(s), ${bytes} body bytes` }
  },
}

export const imageSeed: Command = {
  name: 'image seed',
  summary: 'seed a published image over BitTorrent (aria2c) as its first source, until stopped',
  usage: 'labhost image seed DIR [--upload-limit RATE] [--tracker-interval SECONDS]',
  options: { 'upload-limit': { type: 'string' }, 'tracker-interval': { type: 'string' } },
  async run(values, positionals, ctx) {
    const dir = positionals[0]
    if (!dir || !fs.existsSync(dir)) throw new LabhostError('usage', `labhost image seed needs an existing DIR${dir ? ` (${dir} does not exist)` : ''}`, `usage: ${this.usage}`)
    const limit = values['upload-limit']
    const interval = numberOption(values, 'tracker-interval', { min: 1, max: 86400 })
    const stop = new AbortController()
    const abort = () => stop.abort()
    process.once('SIGINT', abort)
    process.once('SIGTERM', abort)
    try {
      const r = await seedImage(dir, { uploadLimit: typeof limit === 'string' ? rateOption('upload-limit', limit) : undefined, trackerIntervalSeconds: interval, signal: stop.signal, log: ctx.log })
      return { data: r, human: `seeded for ${r.seconds.toFixed(0)} s` }
    } finally {
      process.off('SIGINT', abort)
      process.off('SIGTERM', abort)
    }
  },
}

export const imageKeygen: Command = {
  name: 'image keygen',
  summary: 'make an ed25519 signing key pair (DIR/labhost-signing.key, .pub)',
  usage: 'labhost image keygen --out DIR [--json]',
  options: { out: { type: 'string' } },
  async run(values) {
    const k = generateKeyPair(requireString(values, 'out', this))
    return { data: k, human: `private key ${k.privateKeyFile} (keep it off the images)\npublic key  ${k.publicKeyFile}` }
  },
}

export const imageVerify: Command = {
  name: 'image verify',
  summary: "check a manifest's signature and the image files beside it",
  usage: 'labhost image verify DIR|MANIFEST --key TRUSTED.pub [--json]',
  options: { key: { type: 'string' } },
  async run(values, positionals) {
    const target = positionals[0]
    if (!target) throw new LabhostError('usage', 'labhost image verify needs a DIR or MANIFEST', `usage: ${this.usage}`)
    const file = fs.existsSync(target) && fs.statSync(target).isDirectory() ? path.join(target, 'manifest.json') : target
    const m = verifyImageDir(file, readPublicKey(requireString(values, 'key', this)))
    return { data: { manifest: file, name: m.name, version: m.version, sha256: m.image.sha256, signer: m.signer, ok: true }, human: `${file}: ${m.name} ${m.version} signed by ${m.signer}: OK` }
  },
}

export const schema: Command = {
  name: 'schema',
  summary: 'print the JSON Schema of a configuration file kind (recipe, layout, install, trial) for editors',
  usage: 'labhost schema recipe|layout|install|trial',
  options: {},
  async run(_values, positionals) {
    const kind = positionals[0]
    const s = kind === 'recipe' ? recipeJsonSchema() : kind === 'layout' ? z.toJSONSchema(LayoutSchema, { io: 'input' }) : kind === 'install' ? z.toJSONSchema(InstallConfigSchema, { io: 'input' })
      : kind === 'trial' ? z.toJSONSchema(TrialConfigSchema, { io: 'input' }) : null
    if (!s) throw new LabhostError('usage', `no schema named ${kind ?? '(none)'}`, 'use `labhost schema recipe`, `labhost schema layout`, `labhost schema install` or `labhost schema trial`')
    return { data: s, human: JSON.stringify(s, null, 2) }
  },
}

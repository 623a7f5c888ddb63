// npm run build: bundle the CLI with esbuild and inject it into a copy of Node 24 as a single
// executable application (Node SEA) at dist/labhost. It needs no node_modules beside it.
// `--faults` builds dist/labhost-faults instead: the same program with the fault-injection points
// of lib/faults.ts kept, for the tests and the vm-tests campaign only. The release build compiles
// them out (LABHOST_FAULTS=false), so no environment variable can make it skip a safety step.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { build } from 'esbuild'
import { execa } from 'execa'
import { closureHash } from '../image-build/builder-hash.ts'
import { SHIPPED_INDEX, shippedAssets } from '../image-build/shipped-files.ts'
import { LIBTORRENT_CLIENT } from '../image-format/bt-clients.ts'

const root = path.resolve(import.meta.dirname, '..')
const { values } = parseArgs({ options: { faults: { type: 'boolean', default: false } } })
const name = values.faults ? 'labhost-faults' : 'labhost'
const dist = path.join(root, 'dist')
fs.mkdirSync(dist, { recursive: true })
const bundle = path.join(dist, `${name}.cjs`)
await build({
  entryPoints: [path.join(root, 'cli/bin.ts')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  outfile: bundle,
  // import.meta has no meaning in the CommonJS bundle; modules fall back to their own defaults.
  define: {
    'import.meta.dirname': 'undefined',
    'globalThis.LABHOST_FAULTS': String(values.faults),
    // what the image cache keys on: the builder's import closure, hashed as from source
    'globalThis.LABHOST_BUILDER_HASH': JSON.stringify(await closureHash(root)),
  },
  // only the source tree computes the closure itself (image-build/builder-hash.ts)
  external: ['esbuild'],
  // minifySyntax folds `if (false)` branches away: what lib/faults.ts guards leaves the release bundle
  minifySyntax: true,
  logLevel: 'warning',
})
if (!values.faults && fs.readFileSync(bundle, 'utf8').includes('LABHOST_FAULT_')) {
  throw new Error(`${bundle} still names a LABHOST_FAULT_ variable: lib/faults.ts must be compiled out of the release build`)
}
const seaConfig = path.join(dist, `${name}.sea-config.json`)
const blob = path.join(dist, `${name}.sea-prep.blob`)
// the shipped recipes and layouts ride along as assets (image-build/shipped-files.ts), and the
// libtorrent client's source (image-format/bt-clients.ts)
const shipped = shippedAssets(path.join(root, 'image-build'))
const index = path.join(dist, `${name}.${SHIPPED_INDEX}`)
fs.writeFileSync(index, JSON.stringify(Object.keys(shipped)))
fs.writeFileSync(
  seaConfig,
  JSON.stringify({
    main: bundle,
    output: blob,
    disableExperimentalSEAWarning: true,
    useCodeCache: true,
    assets: { [SHIPPED_INDEX]: index, ...shipped, [LIBTORRENT_CLIENT]: path.join(root, 'image-format', LIBTORRENT_CLIENT) },
  }),
)
await execa(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: 'inherit' })
const exe = path.join(dist, name)
fs.rmSync(exe, { force: true })
// Node's debug symbols are a sixth of its size; the binary goes onto every root image.
const stripped = await execa('strip', ['-o', exe, process.execPath], { reject: false })
if (stripped.exitCode !== 0) fs.copyFileSync(process.execPath, exe)
fs.chmodSync(exe, 0o755)
await execa('postject', [exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], {
  preferLocal: true,
  localDir: root,
  stdio: 'inherit',
})
console.log(`built ${path.relative(root, exe)} (${(fs.statSync(exe).size / 2 ** 20).toFixed(0)} MiB, Node ${process.version})`)

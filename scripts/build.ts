// npm run build: bundle the CLI with esbuild and inject it into a copy of Node 24 as a single
// executable application (Node SEA) at dist/labhost. It needs no node_modules beside it.
import fs from 'node:fs'
import path from 'node:path'
import { build } from 'esbuild'
import { execa } from 'execa'

const root = path.resolve(import.meta.dirname, '..')
const dist = path.join(root, 'dist')
fs.mkdirSync(dist, { recursive: true })
const bundle = path.join(dist, 'labhost.cjs')
await build({
  entryPoints: [path.join(root, 'cli/bin.ts')],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node24',
  outfile: bundle,
  // import.meta has no meaning in the CommonJS bundle; modules fall back to their own defaults.
  define: { 'import.meta.dirname': 'undefined' },
  logLevel: 'warning',
})
const seaConfig = path.join(dist, 'sea-config.json')
const blob = path.join(dist, 'sea-prep.blob')
fs.writeFileSync(seaConfig, JSON.stringify({ main: bundle, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true }))
await execa(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: 'inherit' })
const exe = path.join(dist, 'labhost')
fs.rmSync(exe, { force: true })
// Node's debug symbols are a sixth of its size; the binary goes onto every root image.
const stripped = await execa('strip', ['-o', exe, process.execPath], { reject: false })
if (stripped.exitCode !== 0) fs.copyFileSync(process.execPath, exe)
fs.chmodSync(exe, 0o755)
await execa('postject', [exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { preferLocal: true, localDir: root, stdio: 'inherit' })
console.log(`built ${path.relative(root, exe)} (${(fs.statSync(exe).size / 2 ** 20).toFixed(0)} MiB, Node ${process.version})`)

// labhost image build: reproducible bytes, a signature that catches any change, a transport of
// FRAME_SIZE frames, and recipe errors that name the file, the key and the value.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { errorLines, failDiag, runCli, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { RecipeSchema, recipesDir } from '../recipe.ts'
import { FRAME_SIZE } from '../../image-format/zstd-frames.ts'

const dir = tmpDir(t, 'labhost-build-test-')
const key = `${dir}/keys/labhost-signing.key`
const pub = `${dir}/keys/labhost-signing.pub`

t.before(async () => {
  const k = await runCli(['image', 'keygen', '--out', `${dir}/keys`])
  if (k.code !== 0) throw new Error(k.stderr)
})

t.test('two builds of the test recipe are bit-identical, and verify', async (t) => {
  const outs = [`${dir}/b1`, `${dir}/b2`]
  const results = []
  for (const out of outs) {
    const r = await runCli(['image', 'build', 'test', '--out', out, '--key', key, '--json', '--no-cache'])
    t.equal(r.code, 0, 'build exits 0', failDiag(r))
    results.push(JSON.parse(r.stdout))
  }
  t.notOk(results[0].cached || results[1].cached, 'both built from scratch')
  t.equal(results[0].sha256, results[1].sha256, `same SHA-256 ${results[0].sha256}`)
  for (const f of ['root.img', 'root.img.zst', 'manifest.json']) {
    t.ok(fs.readFileSync(`${outs[0]}/${f}`).equals(fs.readFileSync(`${outs[1]}/${f}`)), `${f} identical`)
  }
  const v = await runCli(['image', 'verify', outs[0]!, '--key', pub])
  t.equal(v.code, 0, 'verify exits 0', failDiag(v))
  const m = JSON.parse(fs.readFileSync(`${outs[0]}/manifest.json`, 'utf8'))
  t.equal(m.image.chunks.length, Math.ceil(m.image.size / m.image.chunkSize), 'one chunk hash per chunk')
  t.equal(m.transport.frameSize, FRAME_SIZE, `transport frames of ${FRAME_SIZE} bytes of image`)
  t.equal(m.transport.frames.length, Math.ceil(m.image.size / FRAME_SIZE), 'one frame size per frame')
  t.match(fs.readFileSync(`${outs[0]}/manifest.json`, 'utf8'), /\n {4}"frames": \[\d+(,\d+)*\]\n/, 'the frame sizes on one line')
  t.equal(m.version, '1.0.0')
  const e2 = await import('node:child_process')
  e2.execFileSync('e2fsck', ['-fn', `${outs[0]}/root.img`])
  t.pass('e2fsck finds the image clean')
})

t.test('a rebuild of the same recipe comes from the cache, byte for byte', async (t) => {
  const r = await runCli(['image', 'build', 'test', '--out', `${dir}/b3`, '--key', key, '--json'])
  t.equal(r.code, 0)
  const first = JSON.parse(r.stdout)
  const again = JSON.parse((await runCli(['image', 'build', 'test', '--out', `${dir}/b4`, '--key', key, '--json'])).stdout)
  t.equal(again.cached, true, 'served from the cache')
  t.ok(again.seconds < first.seconds || first.cached, `faster (${again.seconds} s)`)
  t.ok(fs.readFileSync(`${dir}/b4/root.img`).equals(fs.readFileSync(`${dir}/b1/root.img`)), 'same bytes as a fresh build')
})

t.test('one changed byte is caught', async (t) => {
  const src = `${dir}/b1`
  const copy = (name: string) => {
    const d = `${dir}/${name}`
    fs.cpSync(src, d, { recursive: true })
    return d
  }
  const img = copy('bad-image')
  xorRange(`${img}/root.img`, 5 << 20, Buffer.from([0x01]))
  const r1 = await runCli(['image', 'verify', img, '--key', pub])
  t.equal(r1.code, ExitCode.hashMismatch, 'a changed image byte: hash mismatch')
  t.match(r1.stderr, /root\.img does not match its manifest/)

  const man = copy('bad-manifest')
  const text = fs.readFileSync(`${man}/manifest.json`, 'utf8')
  fs.writeFileSync(`${man}/manifest.json`, text.replace('"version": "1.0.0"', '"version": "1.0.1"'))
  const r2 = await runCli(['image', 'verify', man, '--key', pub])
  t.equal(r2.code, ExitCode.signatureInvalid, 'a changed manifest byte: bad signature')
  t.match(r2.stderr, /signature does not match/)

  await runCli(['image', 'keygen', '--out', `${dir}/other`])
  const r3 = await runCli(['image', 'verify', src, '--key', `${dir}/other/labhost-signing.pub`])
  t.equal(r3.code, ExitCode.signatureInvalid, 'another key: bad signature')
})

function recipeVariant(t: Test, mutate: (r: Record<string, unknown>) => void, raw?: string): string {
  const d = tmpDir(t)
  const r = YAML.parse(fs.readFileSync(path.join(recipesDir(), 'test.yaml'), 'utf8'))
  mutate(r)
  r.layout = path.join(recipesDir(), '../layouts/test.yaml')
  const f = `${d}/recipe.yaml`
  fs.writeFileSync(f, raw ?? YAML.stringify(r))
  return f
}

const bad: { name: string; mutate?: (r: Record<string, unknown>) => void; raw?: string; code: number; message: RegExp }[] = [
  {
    name: 'unknown key',
    mutate: (r) => {
      ;(r.base as Record<string, unknown>).mirror = 'x'
    },
    code: ExitCode.configInvalid,
    message: /recipe\.yaml: base: .*unknown key\(s\) mirror/,
  },
  {
    name: 'wrong type',
    mutate: (r) => {
      r.imageSizeMiB = 'big'
    },
    code: ExitCode.configInvalid,
    message: /recipe\.yaml: imageSizeMiB: .*found value "big"/,
  },
  {
    name: 'bad package name',
    mutate: (r) => {
      ;(r.base as { packages: string[] }).packages = ['Busy Box']
    },
    code: ExitCode.configInvalid,
    message: /base\.packages\.0: must be a Debian package name/,
  },
  {
    name: 'missing package',
    mutate: (r) => {
      ;(r.base as { packages: string[] }).packages = ['busybox-static', 'no-such-package-labhost']
    },
    code: ExitCode.packageMissing,
    message: /base\.packages\.1: package no-such-package-labhost cannot be had/,
  },
  {
    name: 'image too small',
    mutate: (r) => {
      r.imageSizeMiB = 8
    },
    code: ExitCode.imageTooSmall,
    message: /imageSizeMiB: 8 MiB is too small/,
  },
  { name: 'malformed YAML', raw: 'name: test\nbase: [unclosed\n', code: ExitCode.configInvalid, message: /recipe\.yaml: not valid YAML/ },
  {
    name: 'another Debian release',
    mutate: (r) => {
      ;(r.base as Record<string, unknown>).suite = 'sid'
    },
    code: ExitCode.configInvalid,
    message: /base\.suite: sid is not this machine's Debian release/,
  },
]

for (const c of bad) {
  t.test(`bad recipe: ${c.name}`, async (t) => {
    const f = recipeVariant(t, c.mutate ?? (() => {}), c.raw)
    const out = `${path.dirname(f)}/out`
    const r = await runCli(['image', 'build', f, '--out', out, '--key', key])
    t.equal(r.code, c.code, `exit ${c.code}`, failDiag(r))
    t.match(r.stderr, c.message)
    const lines = r.stderr.trim().split('\n')
    t.equal(errorLines(r).length, 1, 'one error line')
    t.match(lines.at(-1), /^  hint: /, 'followed by a hint')
    t.notOk(fs.existsSync(`${out}/manifest.json`), 'no manifest written')
  })
}

t.test('labhost schema recipe: a JSON Schema with the recipe keys', async (t) => {
  const r = await runCli(['schema', 'recipe'])
  t.equal(r.code, 0)
  const s = JSON.parse(r.stdout)
  t.same(Object.keys(s.properties).sort(), Object.keys(RecipeSchema.shape).sort(), 'every key of the zod schema')
  t.ok(s.properties.base.properties.packages.description, 'keys carry their documentation')
  t.equal(s.additionalProperties, false, 'unknown keys are errors for editors too')
})

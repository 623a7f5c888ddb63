// One meaning per flag name: --signing-key is a private key that signs what a command makes
// (image build, image stick, vm-image publish), --trusted-key a public key signatures are checked
// with (image verify, update, install, vm-image pull). The old --key of build, stick and verify
// still works: one deprecation line on stderr, stdout unchanged (the other tests use it on purpose).
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { type CliResult, failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { cacheKeys } from '../../image-build/cache-keys.ts'
import { generateKeyPair } from '../../image-format/manifest.ts'

const dir = tmpDir(t, 'labhost-key-flags-test-')
// the suite's key: the test image comes from the cache
const keys = cacheKeys()
const other = generateKeyPair(path.join(dir, 'other'))
const warnings = (r: CliResult) => r.stderr.split('\n').filter((l) => l.startsWith('labhost: warning:'))

t.test('image build --signing-key, image verify --trusted-key: no notice', async (t) => {
  const b = await runCli(['image', 'build', 'test', '--out', `${dir}/new`, '--signing-key', keys.privateKeyFile, '--json'])
  t.equal(b.code, 0, 'built', failDiag(b))
  t.same(warnings(b), [], 'no deprecation notice')
  t.equal(JSON.parse(b.stdout).name, 'test')
  const v = await runCli(['image', 'verify', `${dir}/new`, '--trusted-key', keys.publicKeyFile, '--json'])
  t.equal(v.code, 0, 'verified', failDiag(v))
  t.same(warnings(v), [])
  t.match(JSON.parse(v.stdout), { ok: true, name: 'test' })
  const wrong = await runCli(['image', 'verify', `${dir}/new`, '--trusted-key', other.publicKeyFile])
  t.equal(wrong.code, ExitCode.signatureInvalid, '--trusted-key is the key the signature is checked with: another one is refused', failDiag(wrong))
})

t.test('the old --key: works, one notice on stderr, stdout the same JSON', async (t) => {
  const b = await runCli(['image', 'build', 'test', '--out', `${dir}/old`, '--key', keys.privateKeyFile, '--json'])
  t.equal(b.code, 0, 'built', failDiag(b))
  t.same(warnings(b), ['labhost: warning: --key is deprecated: use --signing-key (labhost image build)'])
  t.equal(JSON.parse(b.stdout).name, 'test', 'stdout is the JSON result alone')
  t.equal(
    fs.readFileSync(`${dir}/old/manifest.json`, 'utf8'),
    fs.readFileSync(`${dir}/new/manifest.json`, 'utf8'),
    'the same signed manifest as with --signing-key',
  )
  const v = await runCli(['image', 'verify', `${dir}/old`, '--key', keys.publicKeyFile, '--json'])
  t.equal(v.code, 0, failDiag(v))
  t.same(warnings(v), ['labhost: warning: --key is deprecated: use --trusted-key (labhost image verify)'], 'verify: --key is the trusted (public) key')
  t.match(JSON.parse(v.stdout), { ok: true })
  // an error in --json mode: stdout is the error object alone, the notice stays on stderr
  const e = await runCli(['image', 'verify', `${dir}/old`, '--key', other.publicKeyFile, '--json'])
  t.equal(e.code, ExitCode.signatureInvalid)
  t.match(JSON.parse(e.stdout), { error: 'signatureInvalid' })
  t.equal(warnings(e).length, 1)
})

t.test('image stick --signing-key; the old --key is read as --signing-key', async (t) => {
  fs.writeFileSync(
    `${dir}/install.yaml`,
    'models:\n  - { vendor: "Dell Inc.", product: "OptiPlex 7010" }\ndisks:\n  ssd: { rotational: false, minSizeGiB: 0.5 }\n  hdd: { rotational: true, minSizeGiB: 0.05 }\n',
  )
  const s = await runCli([
    'image',
    'stick',
    '--image',
    `${dir}/new`,
    '--config',
    `${dir}/install.yaml`,
    '--out',
    `${dir}/stick.img`,
    '--signing-key',
    keys.privateKeyFile,
    '--json',
  ])
  t.equal(s.code, 0, 'stick made', failDiag(s))
  t.same(warnings(s), [])
  t.ok(fs.statSync(`${dir}/stick.img`).size > 0)
  // the alias fills --signing-key: what is missing is --image, not the key
  const old = await runCli(['image', 'stick', '--key', keys.privateKeyFile])
  t.equal(old.code, ExitCode.usage)
  t.same(warnings(old), ['labhost: warning: --key is deprecated: use --signing-key (labhost image stick)'])
  t.match(old.stderr, /labhost image stick needs --image\n/)
  const none = await runCli(['image', 'stick', '--image', `${dir}/new`, '--config', `${dir}/install.yaml`, '--out', `${dir}/x.img`])
  t.match(none.stderr, /labhost image stick needs --signing-key\n/, 'the error names the new spelling')
  t.notOk(fs.existsSync(`${dir}/x.img`))
})

t.test('both spellings at once, or --key where it never meant anything: usage errors', async (t) => {
  const both = await runCli(['image', 'build', 'test', '--out', `${dir}/both`, '--key', keys.privateKeyFile, '--signing-key', keys.privateKeyFile])
  t.equal(both.code, ExitCode.usage)
  t.match(both.stderr, /--key and --signing-key are the same option/)
  t.notOk(fs.existsSync(`${dir}/both`), 'nothing built')
  for (const [cmd, ...args] of [
    ['update', `${dir}/new`, '--key', keys.publicKeyFile],
    ['install', '--key', keys.publicKeyFile],
    ['vm-image publish', 'x.qcow2', '--key', keys.privateKeyFile],
  ]) {
    const r = await runCli([...cmd!.split(' '), ...args])
    t.equal(r.code, ExitCode.usage, `${cmd} --key: unknown option`)
    t.match(r.stderr, /Unknown option '--key'/)
  }
})

t.test('--help names the new spelling and the old one as deprecated', async (t) => {
  for (const [cmd, name] of [
    ['image build', 'signing-key'],
    ['image stick', 'signing-key'],
    ['image verify', 'trusted-key'],
  ] as const) {
    const h = await runCli([...cmd.split(' '), '--help'])
    t.match(h.stdout.replace(/\s+/g, ' '), new RegExp(`--${name} (KEY|PUB) .*old spelling, deprecated: --key`), `${cmd}: --${name}, --key deprecated`)
    t.notMatch(h.stdout, /^ {2}--key /m, `${cmd}: --key is not an option line of its own`)
  }
  for (const cmd of ['update', 'install', 'vm-image pull'])
    t.match((await runCli([...cmd.split(' '), '--help'])).stdout, /^ {2}--trusted-key PUB /m, `${cmd}: --trusted-key`)
  t.match((await runCli(['vm-image', 'publish', '--help'])).stdout, /^ {2}--signing-key KEY /m, 'vm-image publish: --signing-key')
})

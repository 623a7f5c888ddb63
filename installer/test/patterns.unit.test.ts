// install.yaml's patterns cannot hang the unattended installer: a pattern that makes a
// backtracking RegExp run for hours (`(a+)+` against 40 a's and a b) is answered at once, by the
// model check of `labhost install` and by disk selection; a pattern RE2 does not take is refused
// when the config is read, naming file, key and value. Each case runs in a child process with a
// time limit: the old RegExp code did not return (see lib/test/pattern.unit.test.ts).
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, REPO_ROOT, tmpDir } from '../../test-support/test-helpers.ts'

const EVIL = '(a+)+'
const LONG = 'a'.repeat(40) + 'b'

function config(dir: string, o: { productPattern?: string; model?: string } = {}): string {
  const file = path.join(dir, 'install.yaml')
  fs.writeFileSync(
    file,
    YAML.stringify({
      models: [{ vendor: 'Dell Inc.', productPattern: o.productPattern ?? 'OptiPlex 70[0-9]0' }],
      disks: { ssd: { rotational: false, minSizeGiB: 1, ...(o.model ? { model: o.model } : {}) } },
      finish: 'none',
    }),
  )
  return file
}

function dmi(dir: string, product: string): string {
  const sys = path.join(dir, 'sys')
  fs.mkdirSync(`${sys}/class/dmi/id`, { recursive: true })
  fs.writeFileSync(`${sys}/class/dmi/id/sys_vendor`, 'Dell Inc.\n')
  fs.writeFileSync(`${sys}/class/dmi/id/product_name`, `${product}\n`)
  return sys
}

const install = (args: string[]) =>
  execa(process.execPath, [path.join(REPO_ROOT, 'cli/bin.ts'), 'install', '--dry-run', '--image', '/nonexistent', ...args], { timeout: 20_000, reject: false })

t.test('the model check answers a pathological productPattern at once', async (t) => {
  const dir = tmpDir(t)
  const started = Date.now()
  const r = await install(['--config', config(dir, { productPattern: EVIL }), '--sys-root', dmi(dir, LONG)])
  const seconds = (Date.now() - started) / 1000
  t.notOk(r.timedOut, `returned in ${seconds.toFixed(1)} s`)
  t.equal(r.exitCode, ExitCode.modelRejected, 'this product is not allowed: exit 51', failDiag(r))
  const ok = await install(['--config', config(dir, { productPattern: EVIL }), '--sys-root', dmi(dir, 'a'.repeat(40))])
  t.not(ok.exitCode, ExitCode.modelRejected, 'and a product the pattern matches passes the model check', failDiag(ok))
})

t.test('disk selection answers a pathological model pattern at once', async (t) => {
  const script = `
    import { selectDisk } from ${JSON.stringify(path.join(REPO_ROOT, 'installer/disks.ts'))}
    import { DiskMatchSchema } from ${JSON.stringify(path.join(REPO_ROOT, 'installer/config.ts'))}
    const disk = (name, model) => ({ name, path: '/dev/' + name, sizeBytes: 2 ** 40, sectorSize: 512, rotational: false, removable: false, usb: false, model, serial: 'S' + name })
    const m = DiskMatchSchema.parse({ rotational: false, minSizeGiB: 1, model: ${JSON.stringify(EVIL)} })
    console.log(selectDisk('ssd', m, [disk('sda', ${JSON.stringify(LONG)}), disk('sdb', 'aaaa')], new Set()).name)`
  const r = await execa(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000, reject: false })
  t.notOk(r.timedOut, 'returned')
  t.equal(r.stdout.trim(), 'sdb', 'the one disk whose model matches', failDiag(r))
})

t.test('a pattern RE2 does not take is a config error naming file, key and value', async (t) => {
  const dir = tmpDir(t)
  for (const [o, key] of [
    [{ productPattern: '(a)\\1' }, 'models.0.productPattern'],
    [{ model: '(?=x)y' }, 'disks.ssd.model'],
  ] as const) {
    const file = config(dir, o)
    const r = await install(['--config', file, '--sys-root', dmi(dir, 'OptiPlex 7010')])
    t.equal(r.exitCode, ExitCode.configInvalid, `${key}: exit 10`, failDiag(r))
    const value = Object.values(o)[0]!
    t.match(r.stderr, `${file}: ${key}: `, 'names file and key')
    t.match(r.stderr, JSON.stringify(value), 'quotes the value')
    t.equal(r.stderr.slice(r.stderr.indexOf('labhost: error:')).trimEnd().split('\n').length, 2, 'one line and a hint (after the step log)', {
      stderr: r.stderr,
    })
  }
})

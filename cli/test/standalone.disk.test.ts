// The executable is the product (issue 20, 1): dist/labhost copied alone into an empty directory
// outside the repository, run from there with only the system's PATH, does every job of the
// README's command list that needs no VM — build the shipped test image by name (not from the
// cache: the builder itself runs), verify it, make a stick of it, publish its torrent, serve it
// over HTTP, print a schema, read and switch the slots of a loop disk, and plan an install onto
// loop disks. The shipped recipes and layouts come from inside the executable (SEA assets). The
// cache (LABHOST_CACHE) is the source tree's, so no package is downloaded twice. The stick is
// made of the test image signed with the suite's key (the signer is part of the image cache's
// key): that image and the stick's installer system are the ones the image prebuild made, not
// built a second time; the image built afresh is signed with the new key.
import fs from 'node:fs'
import path from 'node:path'
import { execa, type ResultPromise } from 'execa'
import t from 'tap'
import YAML from 'yaml'
import { hashWhole, loop, REPO_ROOT, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { makeGptDisk, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'
import { cacheRoot } from '../../image-build/debian-packages.ts'
import { cacheKeys } from '../../image-build/cache-keys.ts'
import { LABHOST_VERSION } from '../../lib/labhost-version.ts'

const MiB = 1 << 20

t.test('dist/labhost alone in an empty directory: build, verify, stick, publish, serve, schema, slots, install --dry-run', async (t) => {
  const dir = tmpDir(t, 'labhost-standalone-')
  const exe = path.join(dir, 'labhost')
  fs.copyFileSync(path.join(REPO_ROOT, 'dist/labhost'), exe)
  fs.chmodSync(exe, 0o755)
  t.same(fs.readdirSync(dir), ['labhost'], 'nothing but the executable')
  // TMPDIR of its own: where the executable unpacks its shipped files (and must clean up)
  const tmp = path.join(tmpDir(t, 'labhost-standalone-tmp-'))
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: dir, TMPDIR: tmp, LABHOST_CACHE: cacheRoot() }
  const lh = (args: string[]) => execa(exe, args, { cwd: dir, env, extendEnv: false, reject: false, all: true })
  const ok = async (args: string[], what: string) => {
    const r = await lh(args)
    t.equal(r.exitCode, 0, `labhost ${args.slice(0, 2).join(' ')}: ${what}`, { output: String(r.all).slice(-3000) })
    return r
  }

  t.equal(String((await lh(['--version'])).stdout), `labhost ${LABHOST_VERSION}`, '--version')
  await ok(['image', 'keygen', '--out', 'keys'], 'a signing key pair')
  const built = await ok(
    ['image', 'build', 'test', '--out', 'img', '--key', 'keys/labhost-signing.key', '--no-cache', '--json'],
    'the shipped recipe by name, built afresh',
  )
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'img/manifest.json'), 'utf8'))
  t.match(JSON.parse(String(built.stdout)), { cached: false }, 'not a cache copy')
  t.equal(manifest.name, 'test', 'the test image')
  const verified = await ok(['image', 'verify', 'img', '--key', 'keys/labhost-signing.pub', '--json'], 'the signature and the files')
  t.match(JSON.parse(String(verified.stdout)), { name: 'test' })

  const schema = await ok(['schema', 'install'], 'the JSON Schema of install.yaml')
  t.match(JSON.parse(String(schema.stdout)), { type: 'object', properties: { models: {} } })

  fs.writeFileSync(
    path.join(dir, 'install.yaml'),
    YAML.stringify({
      models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
      disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
      finish: 'none',
    }),
  )
  const suite = cacheKeys()
  // a cache copy when the prebuild (or an earlier test) made it
  await ok(['image', 'build', 'test', '--out', 'suite-img', '--key', suite.privateKeyFile], 'the test image signed with the suite key')
  await ok(
    ['image', 'stick', '--image', 'suite-img', '--config', 'install.yaml', '--out', 'stick.img', '--key', suite.privateKeyFile, '--json'],
    'an installer stick image',
  )
  const stickGpt = await execa('sgdisk', ['-p', path.join(dir, 'stick.img')], { reject: false })
  t.equal(stickGpt.exitCode, 0, 'the stick image is a partitioned disk', { output: stickGpt.stdout })

  await ok(['image', 'publish', 'img', '--tracker', 'http://127.0.0.1:6969/announce', '--json'], "the image's torrent")
  t.ok(fs.existsSync(path.join(dir, 'img/root.img.zst.torrent')), 'root.img.zst.torrent')

  // serve the directory, fetch the manifest back over HTTP, stop the server with SIGTERM
  const serving: ResultPromise = execa(exe, ['image', 'serve', dir, '--port', '0'], { cwd: dir, env, extendEnv: false, reject: false, all: true })
  t.teardown(() => {
    serving.kill('SIGKILL')
  })
  const url = await new Promise<string>((resolve, reject) => {
    let seen = ''
    serving.all?.on('data', (d: Buffer) => {
      seen += String(d)
      const m = /serving .* at (http:\/\/\S+?)\/? /.exec(seen)
      if (m) resolve(m[1]!)
    })
    serving.once('exit', () => reject(new Error(`image serve exited: ${seen}`)))
  })
  const res = await fetch(`${url}/img/manifest.json`)
  t.equal(res.status, 200, 'GET manifest.json')
  t.same(Buffer.from(await res.arrayBuffer()), fs.readFileSync(path.join(dir, 'img/manifest.json')), 'served byte for byte')
  serving.kill('SIGTERM')
  t.equal((await serving).exitCode, 0, 'image serve stops on SIGTERM')

  // slots on a loop disk
  const dev = await loop(t, sparseFile(path.join(dir, 'slots.img'), 32 * MiB))
  await makeGptDisk(dev, STANDARD_LAYOUT)
  await ok(['slots', 'switch', '--disk', dev, '--to', 'B'], 'switch to B')
  t.match(JSON.parse(String((await ok(['slots', 'status', '--disk', dev, '--json'], 'status')).stdout)), { active: 'B', primaryValid: true, backupValid: true })

  // install --dry-run on blank loop disks (the PC's DMI as a sysfs tree): the plan, nothing written
  const sys = path.join(dir, 'sys')
  fs.mkdirSync(`${sys}/class/dmi/id`, { recursive: true })
  for (const [f, v] of [
    ['sys_vendor', 'Dell Inc.'],
    ['product_name', 'OptiPlex 7010'],
    ['product_serial', 'CN0SEA01'],
  ])
    fs.writeFileSync(`${sys}/class/dmi/id/${f}`, `${v}\n`)
  const ssd = await loop(t, sparseFile(path.join(dir, 'ssd.img'), 480 * MiB))
  const hdd = await loop(t, sparseFile(path.join(dir, 'hdd.img'), 40 * MiB))
  const before = [hashWhole(ssd), hashWhole(hdd)]
  const plan = await ok(
    [
      'install',
      '--config',
      'install.yaml',
      '--image',
      'img',
      '--ssd',
      ssd,
      '--hdd',
      hdd,
      '--sys-root',
      sys,
      '--report-dir',
      'reports',
      '--trusted-key',
      'keys/labhost-signing.pub',
      '--dry-run',
    ],
    'the install plan',
  )
  t.match(String(plan.stdout), new RegExp(`${ssd.replace(/[/]/g, '\\/')}`), 'the plan names the SSD', { stdout: plan.stdout })
  t.same([hashWhole(ssd), hashWhole(hdd)], before, 'both disks byte-identical')
  t.same(
    fs.readdirSync(tmp).filter((f) => f.startsWith('labhost-shipped-')),
    [],
    'every run removed its copy of the shipped files',
  )
})

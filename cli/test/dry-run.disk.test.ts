// --dry-run, command by command: every command either prints its plan and writes nothing (its
// disks, files and directories are byte-compared before and after), only reads (the same
// comparison), or refuses --dry-run with a usage error naming the command before it does
// anything. The first test holds this list to the CLI's: a new command needs its case here.
// (mark-good --dry-run used to mark the slot good; image keygen --dry-run wrote the keys.)
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { ExitCode } from '../../lib/errors.ts'
import { type CliResult, failDiag, hashWhole, labhostArgv, loop, runCli, sparseFile, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { readTrial } from '../../updater/host-state.ts'
import { buildImages, makeHost, type Host, type Images } from '../../test-support/update-fixtures.ts'
import { pullVmImage } from '../../vmimages/pull.ts'
import { publishVmImage } from '../../vmimages/publish.ts'
import { makeBase, makeOverlay } from '../../vmimages/test/fixtures.ts'
import { allCommands } from '../main.ts'

const COMMANDS = await allCommands()

const MiB = 1 << 20
const dir = tmpDir(t, 'labhost-dry-run-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir)
})

/** What is at each path: a file's hash, a directory's files with theirs (and their mtimes), or absent. */
function snapshot(paths: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const p of paths) {
    if (!fs.existsSync(p)) {
      out[p] = 'absent'
    } else if (fs.statSync(p).isDirectory()) {
      out[p] = 'dir'
      for (const name of (fs.readdirSync(p, { recursive: true }) as string[]).sort()) {
        const f = path.join(p, name)
        const st = fs.lstatSync(f)
        out[f] = st.isFile()
          ? `${st.size} ${st.mtimeMs} ${crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex')}`
          : st.isDirectory()
            ? 'dir'
            : 'other'
      }
    } else {
      out[p] = `${fs.statSync(p).size} ${hashWhole(p)}`
    }
  }
  return out
}

/** Run `argv --dry-run`; `paths` must be byte for byte as they were. */
async function dryRun(t: Test, argv: string[], paths: string[]): Promise<CliResult> {
  const before = snapshot(paths)
  const r = await runCli([...argv, '--dry-run'])
  t.same(snapshot(paths), before, `${argv.slice(0, 2).join(' ')} --dry-run: ${paths.length} path(s) byte-identical afterwards`)
  return r
}

/** `argv --dry-run` is refused before anything happens: exit 2, one line naming the command. */
async function refused(t: Test, name: string, argv: string[], paths: string[]): Promise<void> {
  const r = await dryRun(t, argv, paths)
  t.equal(r.code, ExitCode.usage, `labhost ${name} --dry-run: exit 2 (usage)`, failDiag(r))
  t.match(r.stderr, new RegExp(`^labhost: error: labhost ${name} has no --dry-run: .*\n {2}hint: leave out --dry-run; nothing was written$`))
  t.equal(r.stdout, '')
}

const hostPaths = (h: Host) => h.args.slice(0, 6)
const hostFiles = (h: Host) => [h.disk, h.state, h.lib.bootFile, h.lib.versionFile]

/** A host that updated to 2.0.0 and rebooted into slot B, on trial. */
async function onTrial(t: Test): Promise<Host> {
  const h = await makeHost(t, images)
  const up = await runCli(['update', images.v2, ...h.args])
  t.equal(up.code, 0, 'a real update to 2.0.0', failDiag(up))
  fs.writeFileSync(h.lib.bootFile, `SLOT=B\nDEVICE=${h.device}\nDISK=${h.device}\n`)
  t.ok(readTrial(h.lib), 'slot B on trial')
  return h
}

/** An image directory with the manifest only: enough for a command that is refused first. */
function manifestOnly(t: Test): string {
  const d = tmpDir(t)
  fs.copyFileSync(`${images.v1}/manifest.json`, `${d}/manifest.json`)
  return d
}

/** The manifest and transport file of 1.0.0, hard-linked into `dir`: an image a channel can name. */
function imageLinks(dir: string): void {
  fs.mkdirSync(dir)
  for (const f of ['manifest.json', 'root.img.zst']) fs.linkSync(`${images.v1}/${f}`, `${dir}/${f}`)
}

type Kind = 'plan' | 'readsOnly' | 'refused'
const cases: Record<string, { kind: Kind; run: (t: Test) => Promise<void> }> = {
  'slots status': {
    kind: 'readsOnly',
    run: async (t) => {
      const h = await makeHost(t, images)
      const r = await dryRun(t, ['slots', 'status', '--disk', h.disk], [h.disk])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /active: A/)
    },
  },
  'slots switch': {
    kind: 'plan',
    run: async (t) => {
      const h = await makeHost(t, images)
      const r = await dryRun(t, ['slots', 'switch', '--disk', h.disk, '--to', 'B', ...hostPaths(h)], hostFiles(h))
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /slot A -> slot B\n.*CRC compensation.*\n {2}would write primary-array LBA \d+: commit/)
    },
  },
  'slots repair': {
    kind: 'plan',
    run: async (t) => {
      const h = await makeHost(t, images)
      // a damaged backup header (the disk's last sector): there is something to repair
      xorRange(h.disk, fs.statSync(h.disk).size - 512, Buffer.from([0xff]))
      const r = await dryRun(t, ['slots', 'repair', '--disk', h.disk, ...hostPaths(h)], hostFiles(h))
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /repairing from the primary\n {2}would write backup/)
    },
  },
  'bootloader mbr': {
    kind: 'plan',
    run: async (t) => {
      const h = await makeHost(t, images)
      // no boot code yet: the plan writes sector 0
      const fd = fs.openSync(h.disk, 'r+')
      fs.writeSync(fd, Buffer.alloc(440), 0, 440, 0)
      fs.closeSync(fd)
      const r = await dryRun(t, ['bootloader', 'mbr', '--disk', h.disk, '--json'], [h.disk])
      t.equal(r.code, 0, failDiag(r))
      t.match(JSON.parse(r.stdout), { dryRun: true, writes: [{ lba: '0' }] })
    },
  },
  update: {
    kind: 'plan',
    run: async (t) => {
      const h = await makeHost(t, images)
      const r = await dryRun(t, ['update', images.v2, ...h.args], [...hostFiles(h), images.v2])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /^would update .*: slot A \(1\.0\.0\) -> slot B \(2\.0\.0\)/)
    },
  },
  'mark-good': {
    kind: 'plan',
    run: async (t) => {
      const h = await onTrial(t)
      const r = await dryRun(t, ['mark-good', '--json', ...hostPaths(h)], hostFiles(h))
      t.equal(r.code, 0, failDiag(r))
      t.match(JSON.parse(r.stdout), { marked: false, dryRun: true, reason: 'slot B (version 2.0.0) would be marked good' })
      t.ok(readTrial(h.lib), 'still on trial')
      const real = await runCli(['mark-good', ...hostPaths(h)])
      t.match(real.stdout, /slot B \(version 2\.0\.0\) marked good/, 'without --dry-run it is marked good')
      t.equal(readTrial(h.lib), null)
    },
  },
  'trial-check': {
    kind: 'plan',
    run: async (t) => {
      const h = await onTrial(t)
      const cfg = path.join(tmpDir(t), 'trial.yaml')
      for (const [check, code, verdict] of [
        ['true', 0, /^would mark good \(dry run\): every check passes: slot B would be marked good/],
        ['false', ExitCode.trialFailed, /^would roll back \(dry run\): .*would roll back/],
      ] as const) {
        fs.writeFileSync(cfg, `deadlineSeconds: 30\nchecks:\n  - name: "${check}"\n    run: ["${check}"]\n`)
        // this machine has been up for more than 30 s: a failing check is past its deadline at once
        const r = await dryRun(t, ['trial-check', '--config', cfg, ...hostPaths(h)], hostFiles(h))
        t.equal(r.code, code, `checks ${check}: exit ${code}`, failDiag(r))
        t.match(r.stdout, verdict)
      }
      t.ok(readTrial(h.lib), 'still on trial')
    },
  },
  status: {
    kind: 'plan',
    run: async (t) => {
      const h = await makeHost(t, images)
      const metrics = path.join(tmpDir(t), 'metrics')
      const out = path.join(metrics, 'labhost.prom')
      const r = await dryRun(t, ['status', '--prometheus', '--out', out, '--disk', h.disk, ...hostPaths(h)], [...hostFiles(h), metrics])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, new RegExp(`^would write ${out}:\n# HELP labhost_`))
      const real = await runCli(['status', '--prometheus', '--out', out, '--disk', h.disk, ...hostPaths(h)])
      t.equal(real.code, 0)
      t.equal(fs.readFileSync(out, 'utf8').trimEnd(), r.stdout.slice(r.stdout.indexOf('\n') + 1).trimEnd(), 'the real run writes what the dry run printed')
    },
  },
  install: {
    kind: 'plan',
    run: async (t) => {
      const d = tmpDir(t)
      fs.mkdirSync(`${d}/sys/class/dmi/id`, { recursive: true })
      for (const [f, v] of [
        ['sys_vendor', 'Dell Inc.'],
        ['product_name', 'OptiPlex 7010'],
        ['product_serial', 'CN0DRYRUN'],
      ])
        fs.writeFileSync(`${d}/sys/class/dmi/id/${f}`, `${v}\n`)
      const ssdFile = sparseFile(`${d}/ssd.img`, 480 * MiB)
      const hddFile = sparseFile(`${d}/hdd.img`, 40 * MiB)
      const ssd = await loop(t, ssdFile, { directIo: true })
      const hdd = await loop(t, hddFile, { directIo: true })
      fs.writeFileSync(
        `${d}/install.yaml`,
        YAML.stringify({
          models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }],
          disks: { ssd: { rotational: false, minSizeGiB: 0.4 }, hdd: { rotational: true, minSizeGiB: 0.03 } },
          finish: 'none',
        }),
      )
      const argv = [
        'install',
        '--config',
        `${d}/install.yaml`,
        '--image',
        images.v1,
        '--ssd',
        ssd,
        '--hdd',
        hdd,
        '--sys-root',
        `${d}/sys`,
        '--report-dir',
        `${d}/reports`,
        '--trusted-key',
        images.keys.publicKeyFile,
      ]
      const r = await dryRun(t, argv, [ssdFile, hddFile, `${d}/reports`, `${d}/sys`, images.v1])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /write the root image[^]*\ndry run: nothing was written$/)
    },
  },
  'image build': {
    kind: 'refused',
    run: async (t) => {
      const d = tmpDir(t)
      await refused(t, 'image build', ['image', 'build', 'test', '--out', `${d}/out`, '--signing-key', images.keys.privateKeyFile], [d])
    },
  },
  'image keygen': {
    kind: 'plan',
    run: async (t) => {
      const d = tmpDir(t)
      const r = await dryRun(t, ['image', 'keygen', '--out', `${d}/keys`], [d])
      t.equal(r.code, 0, failDiag(r))
      t.equal(r.stdout, `would write private key ${d}/keys/labhost-signing.key\nwould write public key  ${d}/keys/labhost-signing.pub`)
      t.notOk(fs.existsSync(`${d}/keys`), 'no directory, no keys')
      // where the real run would refuse (a key is there), so does the plan
      t.equal((await runCli(['image', 'keygen', '--out', `${d}/keys`])).code, 0, 'the real run makes the pair')
      const again = await dryRun(t, ['image', 'keygen', '--out', `${d}/keys`], [d])
      t.equal(again.code, ExitCode.usage)
      t.match(again.stderr, /labhost-signing\.key exists already/)
    },
  },
  'image verify': {
    kind: 'readsOnly',
    run: async (t) => {
      const r = await dryRun(t, ['image', 'verify', images.v1, '--trusted-key', images.keys.publicKeyFile], [images.v1])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /: OK$/)
    },
  },
  'image stick': {
    kind: 'refused',
    run: async (t) => {
      const d = tmpDir(t)
      fs.writeFileSync(`${d}/install.yaml`, 'models: []\n')
      await refused(
        t,
        'image stick',
        ['image', 'stick', '--image', images.v1, '--config', `${d}/install.yaml`, '--out', `${d}/stick.img`, '--signing-key', images.keys.privateKeyFile],
        [d, images.v1],
      )
    },
  },
  netboot: {
    kind: 'refused',
    run: async (t) => {
      const d = tmpDir(t)
      fs.writeFileSync(`${d}/install.yaml`, 'models: []\n')
      await refused(
        t,
        'netboot',
        [
          'netboot',
          '--image',
          images.v1,
          '--config',
          `${d}/install.yaml`,
          '--url',
          'http://10.1.2.3/netboot',
          '--out',
          `${d}/out`,
          '--signing-key',
          images.keys.privateKeyFile,
        ],
        [d, images.v1],
      )
    },
  },
  'image selector': {
    kind: 'refused',
    run: async (t) => {
      const d = tmpDir(t)
      await refused(t, 'image selector', ['image', 'selector', 'test', '--out', `${d}/BOOTX64.EFI`], [d])
    },
  },
  'image publish': {
    kind: 'refused',
    run: async (t) => {
      const d = manifestOnly(t)
      await refused(t, 'image publish', ['image', 'publish', d, '--tracker', 'http://127.0.0.1:6969/announce'], [d])
    },
  },
  'image seed': {
    kind: 'refused',
    run: async (t) => {
      const d = manifestOnly(t)
      await refused(t, 'image seed', ['image', 'seed', d], [d])
    },
  },
  'image serve': {
    kind: 'refused',
    run: async (t) => {
      const d = manifestOnly(t)
      // refused at once: not a server that runs until stopped
      await refused(t, 'image serve', ['image', 'serve', d, '--port', '0'], [d])
    },
  },
  'channel publish': {
    kind: 'plan',
    run: async (t) => {
      const d = tmpDir(t)
      imageLinks(`${d}/v1`)
      const argv = ['channel', 'publish', '--out', `${d}/channel.json`, '--image', 'v1/', '--share', '5', '--signing-key', images.keys.privateKeyFile]
      const r = await dryRun(t, argv, [d])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /^would write .*channel\.json: serial 1, /)
      t.notOk(fs.existsSync(`${d}/channel.json`), 'no channel written')
    },
  },
  'channel show': {
    kind: 'readsOnly',
    run: async (t) => {
      const d = tmpDir(t)
      imageLinks(`${d}/v1`)
      t.equal(
        (await runCli(['channel', 'publish', '--out', `${d}/channel.json`, '--image', 'v1/', '--share', '5', '--signing-key', images.keys.privateKeyFile]))
          .code,
        0,
      )
      const r = await dryRun(t, ['channel', 'show', `${d}/channel.json`, '--trusted-key', images.keys.publicKeyFile], [d])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /channel\.json: serial 1, /)
    },
  },
  schema: {
    kind: 'readsOnly',
    run: async (t) => {
      const cwd = tmpDir(t)
      const r = await execa(...labhostArgv('schema', 'install', '--dry-run'), { cwd, reject: false })
      t.equal(r.exitCode, 0, failDiag(r))
      t.match(JSON.parse(String(r.stdout)), { type: 'object' })
      t.same(fs.readdirSync(cwd), [], 'nothing written where it ran')
    },
  },
  'vm-image publish': {
    kind: 'refused',
    run: async (t) => {
      const d = tmpDir(t)
      const src = await makeBase(`${d}/src.qcow2`, { dataMiB: 1, pattern: 7 })
      await refused(
        t,
        'vm-image publish',
        [
          'vm-image',
          'publish',
          src,
          '--name',
          'win11',
          '--image-version',
          '1.0.0',
          '--os',
          'windows',
          '--signing-key',
          images.keys.privateKeyFile,
          '--out',
          `${d}/out`,
        ],
        [d],
      )
    },
  },
  'vm-image pull': {
    kind: 'plan',
    run: async (t) => {
      const d = tmpDir(t)
      const src = await makeBase(`${d}/src.qcow2`, { dataMiB: 2, pattern: 0x10 })
      const pub = await publishVmImage({
        file: src,
        name: 'win11',
        version: '1.0.0',
        os: 'windows',
        isDefault: true,
        signingKey: images.keys.privateKeyFile,
        out: `${d}/pub`,
        trackers: [],
      })
      fs.mkdirSync(`${d}/backing`)
      fs.mkdirSync(`${d}/user`)
      const r = await dryRun(
        t,
        ['vm-image', 'pull', path.dirname(pub.manifestFile), '--trusted-key', images.keys.publicKeyFile, '--dir', `${d}/backing`, '--user-dir', `${d}/user`],
        [`${d}/backing`, `${d}/user`, `${d}/pub`],
      )
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /^win11 1\.0\.0 would be downloaded\n[^]*dry run: nothing was downloaded or written/)
    },
  },
  'vm-image prune': {
    kind: 'plan',
    run: async (t) => {
      const d = tmpDir(t)
      fs.mkdirSync(`${d}/backing`)
      fs.mkdirSync(`${d}/user`)
      // win11 1.0.0 replaced by 2.0.0, a user's volume still on 1.0.0: prune would delete both
      for (const [version, pattern] of [
        ['1.0.0', 0x10],
        ['2.0.0', 0x40],
      ] as const) {
        const src = await makeBase(`${d}/src-${version}.qcow2`, { dataMiB: 1, pattern })
        const pub = await publishVmImage({
          file: src,
          name: 'win11',
          version,
          os: 'windows',
          isDefault: true,
          signingKey: images.keys.privateKeyFile,
          out: `${d}/pub-${version}`,
          trackers: [],
        })
        await pullVmImage({
          source: path.dirname(pub.manifestFile),
          trustedKey: images.keys.publicKeyFile,
          backingDir: `${d}/backing`,
          userDir: `${d}/user`,
          catalogue: `${d}/backing/catalogue.ini`,
          prune: false,
          reserveBytes: 0,
        })
      }
      await makeOverlay(`${d}/user/alice/old.qcow2`, `${d}/backing/win11-1.0.0.qcow2`, 1)
      const r = await dryRun(t, ['vm-image', 'prune', '--dir', `${d}/backing`, '--user-dir', `${d}/user`], [`${d}/backing`, `${d}/user`])
      t.equal(r.code, 0, failDiag(r))
      t.match(r.stdout, /^delete {2}.*alice\/old\.qcow2 /m)
      t.match(r.stdout, /\ndry run: nothing was changed$/)
    },
  },
  wake: {
    kind: 'refused',
    run: (t) => refused(t, 'wake', ['wake', '52:54:00:12:34:56', '--broadcast', '127.0.0.1'], []),
  },
}

t.test('every command has its --dry-run case here, of the kind it declares', async (t) => {
  t.same(Object.keys(cases).sort(), COMMANDS.map((c) => c.name).sort())
  for (const c of COMMANDS) {
    const kind: Kind = 'refused' in c.dryRun ? 'refused' : 'readsOnly' in c.dryRun ? 'readsOnly' : 'plan'
    t.equal(cases[c.name]?.kind, kind, `${c.name}: ${kind}`)
  }
})

for (const [name, c] of Object.entries(cases)) {
  const what = { plan: 'prints its plan, writes nothing', readsOnly: 'only reads', refused: 'is refused, nothing happens' }[c.kind]
  t.test(`labhost ${name} --dry-run ${what}`, (t) => c.run(t))
}

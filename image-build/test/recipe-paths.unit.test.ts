// A recipe's files: and links: land inside the image's staging tree, never on the build machine
// (the build runs as root): `..` in a path, or a link where the build later writes into the
// mounted image (/boot/extlinux), is refused by the schema (exit 10, file, key and value named),
// and at write time no path may lead out through a symbolic link — one of the base
// system's (Debian's /var/run -> /run) or one the recipe made itself. A sentinel outside the
// tree proves nothing there was deleted or written.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { cacheKeys } from '../cache-keys.ts'
import { writeRecipeVariant, type Recipe } from '../recipe.ts'
import { stageRecipeFiles, stageRecipeLinks } from '../recipe-files.ts'

/** A directory outside the staging tree with a file in it that must survive. */
function sentinel(t: Parameters<typeof tmpDir>[0]): { dir: string; file: string; intact: () => boolean } {
  const dir = tmpDir(t, 'labhost-sentinel-')
  const file = path.join(dir, 'sentinel')
  fs.writeFileSync(file, 'keep me\n')
  return {
    dir,
    file,
    intact: () => fs.readdirSync(dir).join() === 'sentinel' && !fs.lstatSync(file).isSymbolicLink() && fs.readFileSync(file, 'utf8') === 'keep me\n',
  }
}

t.test('the schema refuses a path with .. (image build exits 10 before staging anything)', async (t) => {
  const s = sentinel(t)
  const dir = tmpDir(t)
  const escape = `/../../../../../../..${s.file}`
  const cases: [string, (r: Recipe) => void, string][] = [
    [
      'files',
      (r) => {
        r.files.push({ path: escape, content: 'pwned\n', mode: '0644' })
      },
      'files.2.path',
    ],
    [
      'links',
      (r) => {
        ;(r.links ??= []).push({ path: escape, target: '/bin/sh' })
      },
      'links.0.path',
    ],
    [
      'files, not normalised',
      (r) => {
        r.files.push({ path: '/etc/./hostname', content: 'x', mode: '0644' })
      },
      'files.2.path',
    ],
    [
      'files, trailing slash',
      (r) => {
        r.files.push({ path: '/etc/x/', content: 'x', mode: '0644' })
      },
      'files.2.path',
    ],
    // extlinux is installed into the mounted image: through such a link it would write on the host
    [
      'links, the bootloader directory',
      (r) => {
        ;(r.links ??= []).push({ path: '/boot/extlinux', target: s.dir })
      },
      'links.0.path',
    ],
    [
      'links, the bootloader config',
      (r) => {
        ;(r.links ??= []).push({ path: '/boot/extlinux/extlinux.conf', target: s.file })
      },
      'links.0.path',
    ],
  ]
  const keys = cacheKeys()
  for (const [name, change, key] of cases) {
    const recipe = writeRecipeVariant('test', path.join(dir, `${name.replace(/\W+/g, '-')}.yaml`), change)
    const r = await runCli(['image', 'build', recipe, '--out', path.join(dir, 'out'), '--key', keys.privateKeyFile])
    t.equal(r.code, ExitCode.configInvalid, `${name}: exit 10`, failDiag(r))
    t.match(r.stderr, `${recipe}: ${key}: `, 'names the recipe and the key')
    // --key is the deprecated spelling of --signing-key: its notice is a line of its own
    t.equal(
      r.stderr
        .trimEnd()
        .split('\n')
        .filter((l) => !l.startsWith('labhost: warning:')).length,
      2,
      'one line and a hint',
      failDiag(r),
    )
    t.ok(s.intact(), 'the sentinel outside the tree is untouched')
  }
  t.notOk(fs.existsSync(path.join(dir, 'out')), 'nothing was built')
})

const recipe = (file: string, o: { files?: Recipe['files']; links?: Recipe['links'] }) => ({ file, recipe: { files: o.files ?? [], links: o.links ?? [] } })

function staging(t: Parameters<typeof tmpDir>[0]): string {
  const root = path.join(tmpDir(t), 'root')
  fs.mkdirSync(`${root}/usr/lib`, { recursive: true })
  fs.mkdirSync(`${root}/var`, { recursive: true })
  fs.mkdirSync(`${root}/etc`, { recursive: true })
  fs.symlinkSync('usr/lib', `${root}/lib`) // merged /usr: a relative link that stays inside
  return root
}

t.test('at write time: no way out through a symbolic link', async (t) => {
  const refusals: [string, (root: string, s: ReturnType<typeof sentinel>) => () => void, RegExp][] = [
    [
      'a file under a base-system link that leads out (/var/run -> /run, absolute)',
      (root, s) => {
        fs.symlinkSync(s.dir, `${root}/var/run`)
        return () => stageRecipeFiles(root, recipe('r.yaml', { files: [{ path: '/var/run/sentinel', content: 'pwned\n', mode: '0644' }] }))
      },
      /r\.yaml: files\.0\.path: "\/var\/run\/sentinel" goes through \/var\/run, a symbolic link to .* out of the image/,
    ],
    [
      'a directory made under such a link',
      (root, s) => {
        fs.symlinkSync(s.dir, `${root}/var/run`)
        return () => stageRecipeFiles(root, recipe('r.yaml', { files: [{ path: '/var/run/new/dir/file', content: 'pwned\n', mode: '0644' }] }))
      },
      /files\.0\.path: "\/var\/run\/new\/dir\/file" goes through \/var\/run/,
    ],
    [
      'a link under a link the recipe made to /',
      (root, s) => {
        return () =>
          stageRecipeLinks(
            root,
            recipe('r.yaml', {
              links: [
                { path: '/escape', target: path.dirname(s.dir) },
                { path: `/escape/${path.basename(s.dir)}/sentinel`, target: 'pwned' },
              ],
            }),
          )
      },
      /links\.1\.path: ".*\/sentinel" goes through \/escape, a symbolic link to/,
    ],
    [
      'a link through a relative link that climbs out',
      (root, s) => {
        fs.symlinkSync(`../../../../../../../../..${s.dir}`, `${root}/etc/up`)
        return () => stageRecipeLinks(root, recipe('r.yaml', { links: [{ path: '/etc/up/sentinel', target: 'pwned' }] }))
      },
      /links\.0\.path: "\/etc\/up\/sentinel" goes through \/etc\/up/,
    ],
    [
      'a file under a dangling link',
      (root) => {
        fs.symlinkSync('/nonexistent/labhost-test', `${root}/etc/gone`)
        return () => stageRecipeFiles(root, recipe('r.yaml', { files: [{ path: '/etc/gone/x', content: 'x', mode: '0644' }] }))
      },
      /files\.0\.path: "\/etc\/gone\/x" goes through \/etc\/gone/,
    ],
  ]
  for (const [name, setup, message] of refusals) {
    t.test(name, async (t) => {
      const s = sentinel(t)
      const root = staging(t)
      t.throws(setup(root, s), { name: 'LabhostError', code: 'configInvalid', message }, 'refused: configInvalid, naming the recipe, the key and the path')
      t.ok(s.intact(), 'the sentinel outside the tree is untouched')
    })
  }
})

t.test('what stays inside is written as before', async (t) => {
  const s = sentinel(t)
  const root = staging(t)
  fs.symlinkSync(s.file, `${root}/etc/hostname`) // the last component is replaced, never followed
  stageRecipeFiles(
    root,
    recipe('r.yaml', {
      files: [
        { path: '/etc/hostname', content: 'lab\n', mode: '0644' },
        { path: '/lib/systemd/system/x.service', content: '[Unit]\n', mode: '0600' },
      ],
    }),
  )
  stageRecipeLinks(
    root,
    recipe('r.yaml', { links: [{ path: '/etc/systemd/system/multi-user.target.wants/x.service', target: '/lib/systemd/system/x.service' }] }),
  )
  t.equal(fs.readFileSync(`${root}/etc/hostname`, 'utf8'), 'lab\n')
  t.notOk(fs.lstatSync(`${root}/etc/hostname`).isSymbolicLink(), 'a regular file now')
  t.equal(fs.readFileSync(`${root}/usr/lib/systemd/system/x.service`, 'utf8'), '[Unit]\n', 'through the merged-/usr link, inside')
  t.equal(fs.statSync(`${root}/usr/lib/systemd/system/x.service`).mode & 0o777, 0o600)
  t.equal(fs.readlinkSync(`${root}/etc/systemd/system/multi-user.target.wants/x.service`), '/lib/systemd/system/x.service')
  t.ok(s.intact(), 'the sentinel is untouched')
})

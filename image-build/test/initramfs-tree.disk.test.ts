// An initramfs with a whole tree in it (the network installer's, docs/plans/netboot.md §1): the
// tree's directories, files with their modes (setuid too) and symlinks, under /init and the
// given files; streamed to a file as one zstd frame, the same bytes twice; what busybox cpio
// unpacks. readCpio reads back what writeCpio wrote.
import fs from 'node:fs'
import zlib from 'node:zlib'
import t from 'tap'
import { run } from '../../lib/exec.ts'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { readCpio, writeCpio } from '../cpio.ts'
import { buildInitramfs, findBusybox, writeInitramfs, type InitramfsSpec } from '../initramfs.ts'

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd])

function makeTree(dir: string): string {
  const tree = `${dir}/tree`
  fs.mkdirSync(`${tree}/usr/sbin`, { recursive: true })
  fs.mkdirSync(`${tree}/secret`, { mode: 0o700 })
  fs.chmodSync(`${tree}/secret`, 0o700)
  fs.mkdirSync(`${tree}/etc`)
  fs.mkdirSync(`${tree}/bin`)
  fs.writeFileSync(`${tree}/usr/sbin/tool`, Buffer.alloc(3 << 20, 7)) // more than one read of the writer
  fs.chmodSync(`${tree}/usr/sbin/tool`, 0o755)
  fs.writeFileSync(`${tree}/usr/sbin/helper`, 'helper\n')
  fs.chmodSync(`${tree}/usr/sbin/helper`, 0o4755)
  fs.writeFileSync(`${tree}/etc/replaced`, 'from the tree\n')
  fs.writeFileSync(`${tree}/secret/key`, 'k\n')
  fs.chmodSync(`${tree}/secret/key`, 0o600)
  fs.symlinkSync('/usr/sbin/tool', `${tree}/bin/tool`)
  fs.writeFileSync(`${tree}/bin/busybox`, fs.readFileSync(findBusybox()))
  fs.chmodSync(`${tree}/bin/busybox`, 0o755)
  fs.symlinkSync('/bin/busybox', `${tree}/bin/sh`)
  return tree
}

const spec = (tree: string): InitramfsSpec => ({
  tree,
  init: '#!/bin/sh\necho hi\n',
  files: [{ path: 'etc/replaced', data: Buffer.from('from the files\n'), mode: 0o640 }],
  compression: 'zstd',
})

t.test('a tree streamed as one zstd frame, the same bytes twice; busybox cpio unpacks the tree with its modes', async (t) => {
  const dir = tmpDir(t)
  const tree = makeTree(dir)
  const a = await writeInitramfs(spec(tree), `${dir}/a.img`)
  await writeInitramfs(spec(tree), `${dir}/b.img`)
  const img = fs.readFileSync(`${dir}/a.img`)
  t.equal(a, img.length, 'returns the size')
  t.ok(img.equals(fs.readFileSync(`${dir}/b.img`)), 'byte-identical')
  t.equal(img.indexOf(ZSTD_MAGIC, 1), -1, 'one zstd frame (the kernel reads one)')
  const listed = await run('zstd', ['-lv', `${dir}/a.img`])
  t.match(listed.stdout, /# Zstandard Frames: 1\b/)
  t.match(listed.stdout, /Check: XXH64/)
  const cpio = zlib.zstdDecompressSync(img)
  t.ok(cpio.equals(zlib.zstdDecompressSync(await buildInitramfs(spec(tree)))), 'the same archive as buildInitramfs packs in memory')

  fs.mkdirSync(`${dir}/x`)
  fs.writeFileSync(`${dir}/a.cpio`, cpio)
  await run('sh', ['-c', `${findBusybox()} cpio -i -d < ../a.cpio`], { cwd: `${dir}/x` })
  const x = `${dir}/x`
  const mode = (p: string) => fs.lstatSync(`${x}/${p}`).mode & 0o7777
  t.equal(mode('usr/sbin/tool'), 0o755)
  t.ok(fs.readFileSync(`${x}/usr/sbin/tool`).equals(fs.readFileSync(`${tree}/usr/sbin/tool`)), 'a file of several read chunks, whole')
  t.equal(mode('usr/sbin/helper'), 0o4755, 'setuid kept')
  t.equal(mode('secret'), 0o700, "a directory's mode kept")
  t.equal(mode('secret/key'), 0o600)
  t.equal(fs.readlinkSync(`${x}/bin/tool`), '/usr/sbin/tool')
  t.equal(fs.readlinkSync(`${x}/bin/sh`), '/bin/busybox', "the tree's bin/sh, not ours")
  t.equal(fs.readFileSync(`${x}/etc/replaced`, 'utf8'), 'from the files\n', 'the files win over the tree')
  t.equal(mode('etc/replaced'), 0o640)
  t.equal(fs.readFileSync(`${x}/init`, 'utf8'), '#!/bin/sh\necho hi\n')
  t.equal(mode('init'), 0o755)
  const entries = readCpio(cpio)
  t.same(
    entries.find((e) => e.path === 'dev/console'),
    { path: 'dev/console', type: 'chardev', major: 5, minor: 1, mode: 0o600 },
    'the console the kernel opens for /init',
  )
  for (const d of ['proc', 'sys', 'run', 'tmp', 'mnt'])
    t.ok(
      entries.some((e) => e.path === d && e.type === 'dir'),
      `/${d}`,
    )
  t.equal(entries.filter((e) => e.path === 'bin/busybox').length, 1, "the tree's busybox, once")
})

t.test('gzip streamed: the same archive as in memory', async (t) => {
  const dir = tmpDir(t)
  const small = { init: '#!/bin/sh\n', files: [{ path: 'etc/x', data: Buffer.from('x') }] }
  await writeInitramfs(small, `${dir}/g.img`)
  t.ok(zlib.gunzipSync(fs.readFileSync(`${dir}/g.img`)).equals(zlib.gunzipSync(await buildInitramfs(small))))
})

t.test('refused: a file under a tree path that is no directory; a fifo in the tree', async (t) => {
  const dir = tmpDir(t)
  const tree = makeTree(dir)
  fs.symlinkSync('/usr', `${tree}/lib`)
  await t.rejects(writeInitramfs({ ...spec(tree), files: [{ path: 'lib/modules/x.ko', data: Buffer.from('') }] }, `${dir}/a.img`), {
    code: 'configInvalid',
    message: /tree\/lib is not a directory: lib\/modules\/x\.ko cannot go under it/,
  })
  fs.rmSync(`${tree}/lib`)
  await run('mkfifo', [`${tree}/etc/fifo`])
  await t.rejects(writeInitramfs(spec(tree), `${dir}/a.img`), { code: 'configInvalid', message: /etc\/fifo is neither a file, a directory nor a symlink/ })
})

t.test('readCpio reads what writeCpio wrote, a file given by path as well', async (t) => {
  const dir = tmpDir(t)
  fs.writeFileSync(`${dir}/f`, 'on disk\n')
  const archive = writeCpio([
    { path: 'a', type: 'dir', mode: 0o750 },
    { path: 'a/b', type: 'file', data: Buffer.from('bytes'), mode: 0o600 },
    { path: 'a/c', type: 'file', data: { file: `${dir}/f`, size: 8 } },
    { path: 'a/l', type: 'symlink', target: '../x' },
    { path: 'dev/null', type: 'chardev', major: 1, minor: 3, mode: 0o666 },
  ])
  t.same(readCpio(archive), [
    { path: 'a', type: 'dir', mode: 0o750 },
    { path: 'a/b', type: 'file', data: Buffer.from('bytes'), mode: 0o600 },
    { path: 'a/c', type: 'file', data: Buffer.from('on disk\n'), mode: 0o644 },
    { path: 'a/l', type: 'symlink', target: '../x' },
    { path: 'dev/null', type: 'chardev', major: 1, minor: 3, mode: 0o666 },
  ])
  t.throws(() => writeCpio([{ path: 'a/c', type: 'file', data: { file: `${dir}/f`, size: 5 } }]), { code: 'io', message: /changed size/ })
  t.throws(() => readCpio(archive.subarray(0, 200)), { code: 'io', message: /not a newc cpio archive/ })
})

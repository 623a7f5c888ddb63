// The initramfs: a newc archive that a real cpio lists, byte-identical when built twice.
import fs from 'node:fs'
import zlib from 'node:zlib'
import t from 'tap'
import { run } from '../../lib/exec.ts'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { writeCpio } from '../cpio.ts'
import { buildInitramfs, findBusybox, INITRAMFS_MODULE_LIST } from '../initramfs.ts'

t.test('busybox cpio lists and extracts what writeCpio packed', async (t) => {
  const dir = tmpDir(t)
  const archive = writeCpio([
    { path: 'etc', type: 'dir' },
    { path: 'etc/hello', type: 'file', data: Buffer.from('hello\n'), mode: 0o600 },
    { path: 'bin/sh', type: 'symlink', target: 'busybox' },
    { path: 'bin', type: 'dir' },
    { path: 'odd', type: 'file', data: Buffer.from('12345') },
  ])
  fs.writeFileSync(`${dir}/a.cpio`, archive)
  const listed = await run('sh', ['-c', `${findBusybox()} cpio -t < a.cpio`], { cwd: dir })
  t.same(listed.stdout.trim().split('\n'), ['bin', 'bin/sh', 'etc', 'etc/hello', 'odd'], 'sorted, all present')
  fs.mkdirSync(`${dir}/x`)
  await run('sh', ['-c', `${findBusybox()} cpio -i -d < ../a.cpio`], { cwd: `${dir}/x` })
  t.equal(fs.readFileSync(`${dir}/x/etc/hello`, 'utf8'), 'hello\n')
  t.equal(fs.statSync(`${dir}/x/etc/hello`).mode & 0o777, 0o600)
  t.equal(fs.readFileSync(`${dir}/x/odd`, 'utf8'), '12345')
  t.equal(fs.readlinkSync(`${dir}/x/bin/sh`), 'busybox')
})

t.test('the same inputs give the same initramfs bytes', async (t) => {
  const spec = { init: '#!/bin/sh\necho hi\n', files: [{ path: 'etc/x', data: Buffer.from('x') }] }
  const a = await buildInitramfs(spec)
  const b = await buildInitramfs(spec)
  t.ok(a.equals(b), 'byte-identical')
  const cpio = zlib.gunzipSync(a)
  t.ok(cpio.includes(Buffer.from('TRAILER!!!')), 'gzip of a complete newc archive')
  t.ok(cpio.includes(Buffer.from(INITRAMFS_MODULE_LIST)), 'carries the module list the init script reads')
})

// The network installer's initramfs (docs/plans/netboot.md §0): the stick recipe's root
// filesystem, whole but for /boot, as one zstd cpio with its own /init. The PC fetches the
// kernel and this one file and needs nothing more: no switch_root, no loop device, no second
// download. The tree comes out of root.img by debugfs (no mount, no loop device); the kernel
// modules and their load order come from the image's own initramfs, so they match its kernel.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { readCpio } from './cpio.ts'
import { INITRAMFS_MODULE_DIR, INITRAMFS_MODULE_LIST, writeInitramfs } from './initramfs.ts'
import { netbootInit, UDHCPC_SCRIPT_PATH, udhcpcScript } from './initramfs-init.ts'

export interface NetbootInitrdOptions {
  /** The stick recipe's built root filesystem (buildImage('stick')'s root.img). */
  rootImg: string
  /** Directory that receives initrd.img and vmlinuz. */
  out: string
  log?: (line: string) => void
}

export interface NetbootInitrd {
  initrd: string
  /** The image's own kernel: iPXE boots it with the initrd. */
  vmlinuz: string
  /** Size of initrd.img. */
  bytes: number
}

export async function buildNetbootInitrd(o: NetbootInitrdOptions): Promise<NetbootInitrd> {
  const log = o.log ?? (() => {})
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-netboot-initrd-'))
  try {
    const tree = path.join(work, 'root')
    log(`extracting ${o.rootImg}`)
    await extractTree(o.rootImg, tree)
    for (const f of ['boot/vmlinuz', 'boot/initrd.img', 'usr/sbin/labhost']) {
      if (!fs.existsSync(path.join(tree, f)))
        throw new LabhostError('notFound', `${o.rootImg} holds no /${f}: it is not the stick recipe's root image`, 'build it with labhost image build stick')
    }
    fs.mkdirSync(o.out, { recursive: true })
    const vmlinuz = path.join(o.out, 'vmlinuz')
    fs.copyFileSync(path.join(tree, 'boot/vmlinuz'), vmlinuz)
    const modulesDir = path.join(work, 'modules')
    const modules = unpackModules(path.join(tree, 'boot/initrd.img'), modulesDir)
    // the kernel is served beside the initrd; extlinux and the stick's initramfs have no use here
    for (const d of ['boot', 'lost+found']) fs.rmSync(path.join(tree, d), { recursive: true, force: true })
    log(`packing the initramfs (zstd; modules: ${modules.join(' ')})`)
    const initrd = path.join(o.out, 'initrd.img')
    const tmp = `${initrd}.tmp-${process.pid}`
    try {
      await writeInitramfs(
        {
          tree,
          init: netbootInit(),
          modulesDir,
          modules,
          files: [{ path: UDHCPC_SCRIPT_PATH, data: Buffer.from(udhcpcScript()), mode: 0o755 }],
          compression: 'zstd',
        },
        tmp,
      )
      fs.renameSync(tmp, initrd)
    } finally {
      fs.rmSync(tmp, { force: true })
    }
    return { initrd, vmlinuz, bytes: fs.statSync(initrd).size }
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

/**
 * The image's tree into `dir` by `debugfs rdump`, then checked against debugfs's own listing of
 * every directory: rdump keeps rwx bits, owners and symlinks but drops setuid/setgid/sticky (it
 * made ssh-keysign 0755 from 4755), and it reports a failure on stderr only, exiting 0.
 */
async function extractTree(rootImg: string, dir: string): Promise<void> {
  fs.mkdirSync(dir)
  await run('debugfs', ['-R', `rdump / ${dir}`, rootImg])
  const dirs = ['']
  for (const rel of fs.readdirSync(dir, { recursive: true }) as string[]) if (fs.lstatSync(path.join(dir, rel)).isDirectory()) dirs.push(rel)
  if (dirs.some((d) => d.includes('"')))
    throw new LabhostError('configInvalid', `${rootImg} has a directory name with a double quote`, 'rename it in the recipe')
  const { stdout } = await run('debugfs', ['-f', '-', rootImg], { input: dirs.map((d) => `ls -p "/${d}"`).join('\n') + '\n' })
  let current: string | null = null
  let checked = 0
  for (const line of stdout.split('\n')) {
    const cmd = /^debugfs: ls -p "\/(.*)"$/.exec(line)
    if (cmd) {
      current = cmd[1]!
      continue
    }
    const entry = /^\/\d+\/(\d+)\/\d+\/\d+\/(.*)\/\d*\/$/.exec(line)
    if (!entry || current === null || entry[2] === '.' || entry[2] === '..') continue
    const rel = current ? `${current}/${entry[2]}` : entry[2]!
    const mode = parseInt(entry[1]!, 8)
    const st = fs.lstatSync(path.join(dir, rel), { throwIfNoEntry: false })
    if (!st) throw new LabhostError('io', `debugfs rdump left /${rel} of ${rootImg} out`, `check the image: e2fsck -fn ${rootImg}`)
    if (!st.isSymbolicLink() && (st.mode & 0o7777) !== (mode & 0o7777)) fs.chmodSync(path.join(dir, rel), mode & 0o7777)
    checked++
  }
  if (checked === 0) throw new LabhostError('io', `debugfs listed nothing in ${rootImg}`, `check the image: e2fsck -fn ${rootImg}`)
}

/**
 * The kernel modules of the image's own initramfs into `dir`, and their names in its load order
 * (resolveModules' order, so packing them again gives the same list).
 */
function unpackModules(initrdImg: string, dir: string): string[] {
  fs.mkdirSync(dir)
  const prefix = `${INITRAMFS_MODULE_DIR}/`
  let list: string[] | null = null
  for (const e of readCpio(zlib.gunzipSync(fs.readFileSync(initrdImg)))) {
    if (e.type !== 'file' || !Buffer.isBuffer(e.data)) continue
    if (e.path === INITRAMFS_MODULE_LIST) list = e.data.toString('utf8').split('\n').filter(Boolean)
    else if (e.path.startsWith(prefix) && e.path.endsWith('.ko')) fs.writeFileSync(path.join(dir, e.path.slice(prefix.length)), e.data)
  }
  if (!list?.length) throw new LabhostError('notFound', `${initrdImg} lists no kernel modules (${INITRAMFS_MODULE_LIST})`, 'rebuild the stick image')
  return list.map((m) => m.replace(/\.ko$/, ''))
}

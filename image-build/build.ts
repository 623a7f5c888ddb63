// labhost image build: recipe → staging tree → ext4 root image with extlinux → zstd transport
// copy → signed manifest. Reproducible: fixed UUIDs and hash seed, every timestamp set to
// SOURCE_DATE_EPOCH, no journal (the root is mounted read-only), extlinux's own writes normalised.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'
import { renderFstab } from '../lib/layout.ts'
import { withLoop, withMount } from '../lib/loop.ts'
import { installExtlinux, renderExtlinuxConf, type ExtlinuxConfig } from '../bootloader/extlinux.ts'
import { buildSelector } from './selector.ts'
import { SELECTOR_IN_IMAGE } from '../image-format/in-image.ts'
import { cacheRoot, debianMirror, kernelFromPackage, machineSuite, unpackDebianPackage } from './debian-packages.ts'
import { buildInitramfs } from './initramfs.ts'
import { rootRuleInit, stickInit } from './initramfs-init.ts'
import { CHUNK_SIZE, hashChunks, keyFingerprint, MANIFEST_FORMAT, readPrivateKey, signManifest, type Manifest } from '../image-format/manifest.ts'
import { stageRecipeFiles, stageRecipeLinks } from './recipe-files.ts'
import { loadRecipe, type LoadedRecipe } from './recipe.ts'
import { compressFramed, FRAME_SIZE } from '../image-format/zstd-frames.ts'
import { BLOCK_HASH_BYTES, BLOCK_SIZE, writeBlockIndex } from '../image-format/block-index.ts'
import { builderClosureHash } from './builder-hash.ts'

export const DEFAULT_EPOCH = 1_700_000_000
/** Fixed ext4 directory hash seed: part of what makes two builds identical. */
const HASH_SEED = '6c1d1a2b-0a11-4b5e-9c3a-5eed5eed5eed'

export interface BuildOptions {
  out: string
  keyFile: string
  epoch?: number
  /** Build from scratch even when the cache holds this image (the result still refreshes the cache). */
  noCache?: boolean
  log?: (line: string) => void
}

export interface BuildResult {
  manifestFile: string
  manifest: Manifest
  seconds: number
  cached: boolean
}

async function stageBase(r: LoadedRecipe, staging: string): Promise<void> {
  const { base } = r.recipe
  if (base.method === 'debootstrap') {
    const mirror = debianMirror(base.suite)
    const include = base.packages.length ? [`--include=${base.packages.join(',')}`] : []
    try {
      await run('debootstrap', ['--variant=minbase', ...include, base.suite, staging, mirror], { timeoutMs: 30 * 60_000 })
    } catch (e) {
      const tail = String((e as LabhostError).details?.stderr ?? (e as Error).message)
      const missing = /Couldn't find these debs: (.*)/.exec(tail)?.[1]
      if (missing)
        throw new LabhostError(
          'packageMissing',
          `${r.file}: base.packages: ${missing.trim()} cannot be had from ${base.suite}`,
          'check the package names (apt-cache policy NAME)',
          {},
          { cause: e },
        )
      throw e
    }
    // Identity comes from /persistent, not from the image; apt's lists are not part of a host.
    for (const f of fs.readdirSync(path.join(staging, 'etc/ssh')).filter((f) => f.startsWith('ssh_host_'))) fs.rmSync(path.join(staging, 'etc/ssh', f))
    fs.writeFileSync(path.join(staging, 'etc/machine-id'), '')
    for (const d of ['var/lib/apt/lists', 'var/cache/apt']) {
      for (const f of fs.readdirSync(path.join(staging, d)))
        if (f !== 'partial' && f !== 'archives') fs.rmSync(path.join(staging, d, f), { recursive: true, force: true })
    }
    fs.rmSync(path.join(staging, 'var/cache/apt/archives'), { recursive: true, force: true })
    fs.mkdirSync(path.join(staging, 'var/cache/apt/archives/partial'), { recursive: true })
    for (const f of ['var/log/bootstrap.log', 'var/log/dpkg.log', 'var/log/alternatives.log', 'var/log/apt/history.log', 'var/log/apt/term.log'])
      fs.rmSync(path.join(staging, f), { force: true })
    return
  }
  if (base.suite !== machineSuite()) {
    throw new LabhostError(
      'configInvalid',
      `${r.file}: base.suite: ${base.suite} is not this machine's Debian release (${machineSuite()})`,
      "method packages takes packages from the machine's own apt sources: use its release",
    )
  }
  for (const [i, pkg] of base.packages.entries()) {
    let dir: string
    try {
      dir = await unpackDebianPackage(pkg)
    } catch (e) {
      throw new LabhostError(
        'packageMissing',
        `${r.file}: base.packages.${i}: package ${pkg} cannot be had from the apt sources (${(e as Error).message.split(':').pop()?.trim()})`,
        'check the package name (apt-cache policy NAME) and run apt-get update',
        {},
        { cause: e },
      )
    }
    await run('cp', ['-a', `${dir}/.`, staging])
  }
  if (base.busyboxLinks) {
    const bb = path.join(staging, 'bin/busybox')
    if (!fs.existsSync(bb))
      throw new LabhostError('configInvalid', `${r.file}: base.busyboxLinks is set but no /bin/busybox is staged`, 'add busybox-static to base.packages')
    const { stdout } = await run(bb, ['--list-full'])
    for (const rel of stdout.split('\n').filter(Boolean)) {
      const target = path.join(staging, rel)
      fs.mkdirSync(path.dirname(target), { recursive: true })
      if (!fs.existsSync(target)) fs.symlinkSync('/bin/busybox', target)
    }
  }
}

/** The labhost executable to put into images: this one when running as the single executable. */
export async function labhostExecutable(): Promise<string> {
  const sea = await import('node:sea').catch(() => null)
  if (sea?.isSea()) return process.execPath
  const built = path.resolve(import.meta.dirname ?? '.', '../dist/labhost')
  if (!fs.existsSync(built)) {
    throw new LabhostError('notFound', `the recipe carries labhost, but ${built} is not built`, 'run `npm run build` first')
  }
  return built
}

function setTimes(root: string, epoch: number): void {
  const walk = (p: string) => {
    const st = fs.lstatSync(p)
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e))
    fs.lutimesSync(p, epoch, epoch)
  }
  walk(root)
}

function listTree(root: string): string[] {
  const out: string[] = ['/']
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = `${rel}/${e.name}`
      out.push(r)
      if (e.isDirectory()) walk(r)
    }
  }
  walk('')
  return out
}

/**
 * Set every timestamp of every inode to the epoch (mkfs -d copies ctimes, which cannot be set on
 * the staging tree; mounting and extlinux write their own), and reset the superblock's
 * mount-time fields, with debugfs. `paths` are the image's files, `/`-rooted.
 */
async function normaliseExt4(image: string, epoch: number, paths: string[]): Promise<void> {
  const quote = (p: string) => `"${p.replace(/"/g, '\\"')}"`
  const cmds = [
    ...['mtime', 'wtime', 'lastcheck', 'mkfs_time'].map((f) => `ssv ${f} ${epoch}`),
    // last_mounted holds the random mount path: overwrite all of it, then end it at byte 0.
    'ssv mnt_count 0',
    'ssv kbytes_written 0',
    `ssv last_mounted ${'x'.repeat(63)}`,
    'ssv last_mounted ""',
    ...paths.flatMap((f) => [
      ...['atime', 'mtime', 'ctime', 'crtime'].flatMap((t) => [`sif ${quote(f)} ${t} ${epoch}`, `sif ${quote(f)} ${t}_extra 0`]),
      `sif ${quote(f)} version_lo 0`,
      `sif ${quote(f)} version_hi 0`,
    ]),
  ]
  await run('debugfs', ['-w', '-f', '-', image], {
    input: cmds.join('\n') + '\n',
    env: { ...process.env, E2FSPROGS_FAKE_TIME: String(epoch) } as Record<string, string>,
  })
}

const OUTPUTS = ['root.img', 'root.img.zst', 'root.img.blocks', 'manifest.json']

/**
 * What decides the bytes of an image: recipe and layout, the candidate versions of its Debian
 * packages, the labhost executable it carries, the builder itself, the epoch and the signer.
 */
async function cacheKey(r: LoadedRecipe, epoch: number, signer: string): Promise<string> {
  const h = crypto.createHash('sha256').update(`${r.hash}\n${epoch}\n${signer}\n`)
  // an image for a layout with an ESP carries the UEFI selector (kexec-tools' binary, systemd's stub)
  const pkgs = [...r.recipe.base.packages, r.recipe.kernel.package, ...(r.layout.esp ? ['kexec-tools', 'systemd-boot-efi'] : [])]
  h.update((await run('apt-cache', ['policy', ...pkgs])).stdout.replace(/^\s*\*\*\*.*$/gm, ''))
  h.update(await builderClosureHash())
  if (r.recipe.carryLabhost) h.update(hashChunks(await labhostExecutable()).sha256)
  return h.digest('hex')
}

/**
 * Build the recipe's image into `o.out`: root.img, its zstd transport copy, its block index and
 * the signed manifest. Stages: the cache (restoreFromCache, storeInCache), the root tree
 * (stageRoot), the ext4 image (makeRootImage), the transport copy and block index
 * (makeTransport), the signed manifest (writeSignedManifest).
 */
export async function buildImage(recipeName: string, o: BuildOptions): Promise<BuildResult> {
  const started = Date.now()
  const seconds = () => (Date.now() - started) / 1000
  const log = o.log ?? (() => {})
  const r = loadRecipe(recipeName)
  const epoch = o.epoch ?? (process.env.SOURCE_DATE_EPOCH ? Number(process.env.SOURCE_DATE_EPOCH) : DEFAULT_EPOCH)
  const key = readPrivateKey(o.keyFile)
  const publicKey = crypto.createPublicKey(key)
  const signer = keyFingerprint(publicKey)
  const cacheDir = await imageCacheDir(r, epoch, signer)
  if (cacheDir && !o.noCache && OUTPUTS.every((f) => fs.existsSync(path.join(cacheDir, f)))) {
    return { ...restoreFromCache(cacheDir, o.out, log), seconds: seconds(), cached: true }
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-build-'))
  try {
    const staging = path.join(work, 'root')
    const extlinuxConfig = extlinuxConfigFor(r)
    await stageRoot(r, staging, { epoch, publicKey, extlinuxConfig, log })
    const image = await makeRootImage(r, staging, o.out, { epoch, extlinuxConfig, log })
    const outputs = await makeTransport(image, o.out, r.recipe.transport.level, log)
    const { manifestFile, manifest } = writeSignedManifest(r, o.out, outputs, { epoch, key, signer })
    if (cacheDir) storeInCache(o.out, cacheDir)
    return { manifestFile, manifest, seconds: seconds(), cached: false }
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

/** Where the cache keeps this build; null when its key cannot be computed (no apt-cache, say). */
async function imageCacheDir(r: LoadedRecipe, epoch: number, signer: string): Promise<string | null> {
  const cacheId = await cacheKey(r, epoch, signer).catch(() => null)
  return cacheId ? path.join(cacheRoot(), 'images', cacheId) : null
}

/** A cached build: its outputs copied into `out`. */
function restoreFromCache(cacheDir: string, out: string, log: (line: string) => void): { manifestFile: string; manifest: Manifest } {
  log(`cached: ${cacheDir}`)
  fs.mkdirSync(out, { recursive: true })
  for (const f of OUTPUTS) fs.copyFileSync(path.join(cacheDir, f), path.join(out, f))
  const manifestFile = path.join(out, 'manifest.json')
  return { manifestFile, manifest: JSON.parse(fs.readFileSync(manifestFile, 'utf8')) as Manifest }
}

/**
 * The outputs into the cache, whole or not at all (a temporary directory renamed into place; the
 * last build to land stays). A copy already there is renamed aside rather than deleted file by
 * file, so a process copying out of it (restoreFromCache) meets a missing file only in the
 * instant between the two renames, not for the whole deletion.
 */
function storeInCache(out: string, cacheDir: string): void {
  const tmp = `${cacheDir}.tmp-${process.pid}`
  const old = `${cacheDir}.old-${process.pid}`
  fs.mkdirSync(tmp, { recursive: true })
  for (const f of OUTPUTS) fs.copyFileSync(path.join(out, f), path.join(tmp, f))
  try {
    fs.renameSync(cacheDir, old)
  } catch {
    // none there yet
  }
  try {
    fs.renameSync(tmp, cacheDir)
  } catch {
    fs.rmSync(tmp, { recursive: true, force: true }) // a build beside this one was first: its copy stays
  }
  fs.rmSync(old, { recursive: true, force: true })
}

function extlinuxConfigFor(r: LoadedRecipe): ExtlinuxConfig {
  return {
    serial: { port: 0, baud: 115200 },
    entries: [{ label: 'labhost', kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', append: r.recipe.kernel.cmdline }],
  }
}

interface StageOptions {
  epoch: number
  publicKey: crypto.KeyObject
  extlinuxConfig: ExtlinuxConfig
  log: (line: string) => void
}

/**
 * The root tree in `staging`: the base system, kernel and initramfs, labhost's own files, the
 * recipe's files and links, extlinux's placeholders; every timestamp set to the epoch. The order
 * of the steps is kept: it is the order the files are made in.
 */
async function stageRoot(r: LoadedRecipe, staging: string, s: StageOptions): Promise<void> {
  fs.mkdirSync(staging)
  s.log(`staging ${r.recipe.name} ${r.recipe.version} (${r.recipe.base.method}: ${r.recipe.base.packages.join(' ')})`)
  await stageBase(r, staging)
  await stageBoot(r, staging, s.log)
  await stageLabhostFiles(r, staging, s.publicKey)
  stageRecipeFiles(staging, r)
  stageExtlinuxFiles(staging, s.extlinuxConfig)
  stageRecipeLinks(staging, r)
  setTimes(staging, s.epoch)
}

/** The kernel, its initramfs and (when the recipe says) its modules, the mount points, the UEFI selector. */
async function stageBoot(r: LoadedRecipe, staging: string, log: (line: string) => void): Promise<void> {
  const kernel = await kernelFromPackage(r.recipe.kernel.package)
  log(`kernel ${kernel.version}; initramfs with ${r.recipe.kernel.initramfsModules.join(' ')}`)
  const init = r.recipe.role === 'stick' ? stickInit() : rootRuleInit(r.layout)
  const initrd = await buildInitramfs({ modulesDir: kernel.modulesDir, modules: r.recipe.kernel.initramfsModules, init })
  const mountPoints = r.recipe.role === 'host' ? r.layout.partitions.map((p) => p.mount.slice(1)) : ['data']
  for (const d of ['boot', 'dev', 'proc', 'sys', 'run', 'tmp', 'etc/labhost', 'sbin', ...mountPoints]) {
    fs.mkdirSync(path.join(staging, d), { recursive: true })
  }
  fs.copyFileSync(kernel.vmlinuz, path.join(staging, 'boot/vmlinuz'))
  if (r.recipe.kernel.modulesInRoot) {
    const dest = path.join(staging, 'lib/modules', kernel.version)
    fs.mkdirSync(path.dirname(dest), { recursive: true })
    await run('cp', ['-a', kernel.modulesDir, dest])
    await run('depmod', ['-b', staging, kernel.version])
  }
  fs.writeFileSync(path.join(staging, 'boot/initrd.img'), initrd)
  if (r.layout.esp && r.recipe.role !== 'stick') {
    // the image carries the selector its layout's ESP needs: the installer copies it from the
    // slot it has just written and verified (installer/esp.ts), so it is as signed as the image
    log("UEFI selector for the layout's ESP")
    await buildSelector({ layout: r.layout, kernelPackage: r.recipe.kernel.package, out: path.join(staging, SELECTOR_IN_IMAGE) })
  }
}

/** What labhost reads in a root: fstab (a host), version, recipe, the trusted key, and labhost itself when carried. */
async function stageLabhostFiles(r: LoadedRecipe, staging: string, publicKey: crypto.KeyObject): Promise<void> {
  if (r.recipe.role === 'host') fs.writeFileSync(path.join(staging, 'etc/fstab'), renderFstab(r.layout))
  fs.writeFileSync(path.join(staging, 'etc/labhost/version'), `${r.recipe.version}\n`)
  fs.writeFileSync(path.join(staging, 'etc/labhost/recipe'), `${r.recipe.name} ${r.hash}\n`)
  fs.writeFileSync(path.join(staging, 'etc/labhost/trusted.pub'), publicKey.export({ format: 'pem', type: 'spki' }))
  if (r.recipe.carryLabhost) {
    fs.mkdirSync(path.join(staging, 'usr/sbin'), { recursive: true })
    fs.copyFileSync(await labhostExecutable(), path.join(staging, 'usr/sbin/labhost'))
    fs.chmodSync(path.join(staging, 'usr/sbin/labhost'), 0o755)
  }
}

/**
 * extlinux rewrites these in place: inodes made by mkfs keep generation 0, where the kernel
 * would give new ones a random generation that ends up in checksums.
 */
function stageExtlinuxFiles(staging: string, config: ExtlinuxConfig): void {
  const extlinuxDir = path.join(staging, 'boot/extlinux')
  fs.mkdirSync(extlinuxDir, { recursive: true })
  fs.writeFileSync(path.join(extlinuxDir, 'ldlinux.sys'), '')
  fs.writeFileSync(path.join(extlinuxDir, 'ldlinux.c32'), '')
  fs.writeFileSync(path.join(extlinuxDir, 'extlinux.conf'), renderExtlinuxConf(config))
}

/** `out`/root.img: the ext4 file system of the staged tree, extlinux installed, timestamps normalised, checked. */
async function makeRootImage(r: LoadedRecipe, staging: string, out: string, s: Omit<StageOptions, 'publicKey'>): Promise<string> {
  fs.mkdirSync(out, { recursive: true })
  const image = path.join(out, 'root.img')
  s.log(`making ext4 (${r.recipe.imageSizeMiB} MiB, UUID ${r.layout.rootFsUuid})`)
  fs.rmSync(image, { force: true })
  fs.writeFileSync(image, '')
  fs.truncateSync(image, r.recipe.imageSizeMiB << 20)
  await makeExt4(r, staging, image, s.epoch)
  s.log('installing extlinux')
  // Same block placement every time: delalloc goals do not depend on the pid, stream
  // allocation (mb_stream_req 0) avoids the per-CPU locality groups, and extlinux runs on CPU 0.
  await withLoop(image, {}, (dev) =>
    withMount(
      dev,
      async (dir) => {
        fs.writeFileSync(`/sys/fs/ext4/${path.basename(dev)}/mb_stream_req`, '0')
        await installExtlinux(dir, s.extlinuxConfig, { cpu: 0 })
      },
      { options: 'noatime' },
    ),
  )
  await normaliseExt4(image, s.epoch, listTree(staging))
  await run('e2fsck', ['-fn', image])
  return image
}

/** mkfs.ext4 -d: the staged tree into the image file, with fixed UUID, hash seed and time. */
async function makeExt4(r: LoadedRecipe, staging: string, image: string, epoch: number): Promise<void> {
  try {
    await run(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-b',
        '4096',
        '-O',
        '^has_journal',
        '-U',
        r.layout.rootFsUuid,
        '-L',
        'labhost-root',
        '-E',
        `hash_seed=${HASH_SEED},root_owner=0:0`,
        '-d',
        staging,
        image,
      ],
      { env: { ...process.env, E2FSPROGS_FAKE_TIME: String(epoch) } as Record<string, string> },
    )
  } catch (e) {
    const msg = String((e as LabhostError).details?.stderr ?? (e as Error).message)
    if (/Could not allocate|No space|too small/i.test(msg)) {
      throw new LabhostError(
        'imageTooSmall',
        `${r.file}: imageSizeMiB: ${r.recipe.imageSizeMiB} MiB is too small for the image's content`,
        `raise imageSizeMiB (the staged tree is ${Math.ceil(Number((await run('du', ['-sm', staging])).stdout.split('\t')[0]))} MiB)`,
        {},
        { cause: e },
      )
    }
    throw e
  }
}

type FileHashes = ReturnType<typeof hashChunks>

interface ImageOutputs {
  image: FileHashes
  transport: FileHashes & { frames: number[] }
  blocks: FileHashes
}

/** The zstd transport copy (one frame per FRAME_SIZE bytes) and the block index beside root.img, each hashed for the manifest. */
async function makeTransport(image: string, out: string, level: number, log: (line: string) => void): Promise<ImageOutputs> {
  log(`compressing the transport copy (zstd level ${level}, one frame per ${FRAME_SIZE >> 10} KiB)`)
  const transport = path.join(out, 'root.img.zst')
  fs.rmSync(transport, { force: true })
  const frames = await compressFramed(image, transport, FRAME_SIZE, level)
  const blocksFile = path.join(out, 'root.img.blocks')
  writeBlockIndex(image, blocksFile)
  const blocks = hashChunks(blocksFile, CHUNK_SIZE)
  const img = hashChunks(image, CHUNK_SIZE)
  const tr = hashChunks(transport, CHUNK_SIZE)
  return { image: img, transport: { ...tr, frames }, blocks }
}

/** The manifest of the outputs, signed, written to `out`/manifest.json. */
function writeSignedManifest(
  r: LoadedRecipe,
  out: string,
  o: ImageOutputs,
  s: { epoch: number; key: crypto.KeyObject; signer: string },
): { manifestFile: string; manifest: Manifest } {
  const manifest = signManifest(
    {
      format: MANIFEST_FORMAT,
      name: r.recipe.name,
      version: r.recipe.version,
      recipeHash: r.hash,
      createdAt: s.epoch,
      layout: { rootFsUuid: r.layout.rootFsUuid, slotSizeMiB: r.layout.slotSizeMiB, slots: { A: r.layout.slots.A.name, B: r.layout.slots.B.name } },
      diskLayout: r.layout,
      image: { file: 'root.img', size: o.image.size, sha256: o.image.sha256, chunkSize: CHUNK_SIZE, chunks: o.image.chunks },
      transport: {
        file: 'root.img.zst',
        size: o.transport.size,
        sha256: o.transport.sha256,
        compression: 'zstd',
        frameSize: FRAME_SIZE,
        frames: o.transport.frames,
      },
      blocks: { file: 'root.img.blocks', size: o.blocks.size, sha256: o.blocks.sha256, blockSize: BLOCK_SIZE, hashBytes: BLOCK_HASH_BYTES },
      trial: { boots: r.recipe.trial.boots },
      signer: s.signer,
    },
    s.key,
  )
  const manifestFile = path.join(out, 'manifest.json')
  // the frame sizes (8 a MiB of image) on one line, not one a line: the manifest a third smaller
  // (every host fetches it; an updater reads at most 16 MiB of it, image-format/source.ts)
  fs.writeFileSync(
    manifestFile,
    JSON.stringify(manifest, null, 2).replace(/\[\s+(\d+(?:,\s+\d+)*)\s+\]/g, (_, n: string) => `[${n.replace(/\s+/g, '')}]`) + '\n',
  )
  return { manifestFile, manifest }
}

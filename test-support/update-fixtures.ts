// Shared by the updater's disk tests: the suite's signing key (image-build/cache-keys.ts), the
// lean test image as 1.0.0 and 2.0.0 (cached builds, shared by every test file), and a host disk laid
// out by the test layout running 1.0.0 from slot A, with its state files in a temporary directory.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { Test } from 'tap'
import { copyFileInto } from '../lib/blockdev.ts'
import { run } from '../lib/exec.ts'
import { hashRange, hashWhole, readRange, sparseFile, tmpDir } from './test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildImage } from '../image-build/build.ts'
import { loadRecipe, writeRecipeVariant } from '../image-build/recipe.ts'
import { partitionDisk, planDisk, type PlannedPartition } from '../installer/partition.ts'
import { leanRecipe } from './lean-recipe.ts'

const MiB = 1 << 20
export const layout = loadRecipe('test').layout

export interface Images {
  keys: { privateKeyFile: string; publicKeyFile: string }
  v1: string
  v2: string
}

/**
 * Build (or take from the cache) the test image as 1.0.0 and 2.0.0, signed by the suite's key:
 * by default the lean variant (vm-tests/fixtures/lean-image.ts: 40 MiB, no labhost inside, the
 * campaign's images, which the image prebuild makes first), as no updater or installer disk test
 * runs what is inside the image and every byte of it is written, read back, hashed and copied;
 * with `full`, the shipped test recipe (160 MiB, the 112 MB executable inside).
 */
export async function buildImages(dir: string, o: { full?: boolean } = {}): Promise<Images> {
  const keys = cacheKeys()
  const recipe = (version: string) =>
    o.full
      ? version === '1.0.0'
        ? 'test'
        : writeRecipeVariant('test', `${dir}/test-${version}.yaml`, (r) => {
            r.version = version
          })
      : leanRecipe(`${dir}/lean-${version}.yaml`, (r) => {
          r.version = version
        })
  const build = async (version: string, out: string) => path.dirname((await buildImage(recipe(version), { out, keyFile: keys.privateKeyFile })).manifestFile)
  return { keys, v1: await build('1.0.0', `${dir}/v1`), v2: await build('2.0.0', `${dir}/v2`) }
}

export interface Host {
  /** The disk image file. */
  disk: string
  /** What labhost runs from: the file, or a loop device of it. */
  device: string
  plan: PlannedPartition[]
  state: string
  lib: { bootFile: string; stateRoot: string; versionFile: string }
  /** CLI options that point labhost at this host's files. */
  args: string[]
}

export async function makeHost(t: Test, images: Images): Promise<Host> {
  return makeHostIn(tmpDir(t), images)
}

/**
 * A host (see Host) whose files live in `d`. With `attach` (a loop device of d/ssd.img, say),
 * labhost runs from the device it returns; the tests read the file.
 */
export async function makeHostIn(d: string, images: Images, attach?: (file: string) => Promise<string>): Promise<Host> {
  const { file, plan } = await hostTemplate(images)
  const disk = `${d}/ssd.img`
  await run('cp', ['--sparse=always', file, disk])
  const device = attach ? await attach(disk) : disk
  fs.writeFileSync(`${d}/boot`, `SLOT=A\nDEVICE=${device}\nDISK=${device}\n`)
  fs.writeFileSync(`${d}/version`, '1.0.0\n')
  fs.mkdirSync(`${d}/state`)
  const lib = { bootFile: `${d}/boot`, stateRoot: `${d}/state`, versionFile: `${d}/version` }
  return {
    disk,
    device,
    plan,
    state: `${d}/state`,
    lib,
    args: ['--boot-file', lib.bootFile, '--state-root', lib.stateRoot, '--version-file', lib.versionFile, '--trusted-key', images.keys.publicKeyFile],
  }
}

const templates = new Map<string, Promise<{ file: string; plan: PlannedPartition[] }>>()

/**
 * The host disk, partitioned with 1.0.0 in slot A, made once per image set beside its images:
 * every host is a sparse copy of it (partitioning and formatting take seconds, a copy
 * milliseconds).
 */
function hostTemplate(images: Images): Promise<{ file: string; plan: PlannedPartition[] }> {
  let made = templates.get(images.v1)
  if (!made) {
    made = (async () => {
      const file = sparseFile(`${path.dirname(images.v1)}/host-template-${path.basename(images.v1)}.img`, (2 + 2 * layout.slotSizeMiB + 8 + 16 + 16 + 2) * MiB)
      const plan = planDisk(layout, 'ssd', fs.statSync(file).size, 512)
      await partitionDisk(file, plan, 'A')
      copyFileInto(`${images.v1}/root.img`, file, plan[0]!.firstLba * 512)
      return { file, plan }
    })()
    templates.set(images.v1, made)
  }
  return made
}

/** What an update must never change when it fails: slot A, both GPT regions, the state files. */
export function protectedParts(h: Host) {
  const size = fs.statSync(h.disk).size
  const a = h.plan[0]!
  return {
    slotA: hashRange(h.disk, a.firstLba * 512, (a.lastLba - a.firstLba + 1) * 512),
    gpt: crypto
      .createHash('sha256')
      .update(readRange(h.disk, 0, MiB))
      .update(readRange(h.disk, size - MiB, MiB))
      .digest('hex'),
    state: fs.readdirSync(h.state, { recursive: true }).sort().join(','),
  }
}

export const wholeDisk = (h: Host) => hashWhole(h.disk)

/** Slot B's first `bytes` bytes equal the file's. */
export function slotBHolds(h: Host, file: string): boolean {
  return readRange(h.disk, h.plan[1]!.firstLba * 512, fs.statSync(file).size).equals(fs.readFileSync(file))
}

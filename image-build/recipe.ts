// Image recipes: YAML, validated here. The schema is the documentation (`labhost schema`
// exports it as JSON Schema for editors).
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { z } from 'zod'
import { loadConfig } from '../lib/config.ts'
import { LabhostError } from '../lib/errors.ts'
import { TRANSPORT_LEVEL } from '../image-format/zstd-frames.ts'
import { shippedRoot } from './shipped-files.ts'
import { loadLayout, type Layout } from '../lib/layout.ts'

const debName = z.string().regex(/^[a-z0-9][a-z0-9+.-]+$/, 'must be a Debian package name')

// A path in the image: the build writes it under the staging tree as root, so `..` would reach
// the build machine (and the old file there is deleted first). build.ts also refuses, at write
// time, paths that lead out through a symbolic link.
const imagePath = z
  .string()
  .regex(/^(\/(?!\.{1,2}(\/|$))[^/\0]+)+$/, 'an absolute path inside the image, normalised: no . or .. components, no // or trailing /')

export const RecipeSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9-]+$/, 'lower-case letters, digits and dashes'),
    version: z.string().regex(/^\d+(\.\d+){0,3}([-+~][0-9A-Za-z.]+)?$/, 'a version such as 1.2.0'),
    description: z.string().optional(),
    role: z
      .enum(['host', 'stick'])
      .default('host')
      .describe('host: a root slot image (A/B initramfs rule, fstab from the layout); stick: the system of the USB installer stick'),
    base: z
      .object({
        method: z
          .enum(['packages', 'debootstrap'])
          .describe('packages: apt-get download + dpkg-deb -x of the listed packages (small test image); debootstrap: a full Debian'),
        suite: z.string().describe("Debian release, e.g. bookworm; the mirror is the machine's own apt source"),
        packages: z.array(debName).default([]).describe('packages to put into the root filesystem'),
        busyboxLinks: z.boolean().default(false).describe('create /bin/<applet> links to busybox (images without coreutils)'),
      })
      .strict(),
    kernel: z
      .object({
        package: debName.default('linux-image-amd64'),
        initramfsModules: z.array(z.string().regex(/^[a-z0-9_-]+$/)).describe('modules the initramfs loads, dependencies are added'),
        cmdline: z.string().default('console=ttyS0,115200 quiet'),
        modulesInRoot: z.boolean().default(false).describe("copy the kernel's modules into /lib/modules of the root filesystem (for userspace drivers)"),
      })
      .strict(),
    carryLabhost: z.boolean().default(false).describe('put this labhost executable at /usr/sbin/labhost (needs libc6, libstdc++6, libgcc-s1 in the image)'),
    files: z
      .array(
        z
          .object({
            path: imagePath,
            content: z.string(),
            mode: z
              .string()
              .regex(/^0?[0-7]{3,4}$/, 'an octal mode such as 0644')
              .default('0644'),
          })
          .strict(),
      )
      .default([]),
    links: z
      .array(
        z
          .object({
            // the build writes the bootloader into the mounted image there: a link would lead its writes
            // (extlinux.conf, ldlinux.sys) to wherever it points on the build machine
            path: imagePath.refine(
              (p) => !['/boot', '/boot/extlinux'].includes(p) && !p.startsWith('/boot/extlinux/'),
              'not /boot or /boot/extlinux: the build installs the bootloader there',
            ),
            target: z.string().min(1),
          })
          .strict(),
      )
      .default([])
      .describe('symbolic links to create, e.g. to enable systemd units'),
    imageSizeMiB: z.number().int().min(8).describe('size of the raw root filesystem image'),
    layout: z.string().default('../layouts/default.yaml').describe('layout file, relative to the recipe'),
    trial: z
      .object({
        boots: z
          .number()
          .int()
          .min(1)
          .max(20)
          .default(3)
          .describe(
            'boots a new version of this image gets on trial before its initramfs rolls back; signed into the manifest, labhost update --trial-boots overrides',
          ),
      })
      .strict()
      .default({ boots: 3 }),
    transport: z
      .object({
        level: z
          .number()
          .int()
          .min(1)
          .max(19)
          .default(TRANSPORT_LEVEL)
          .describe(
            `zstd level of the transport copy's frames: ${TRANSPORT_LEVEL} (the default) makes the smallest downloads for the CPU; a low level builds faster (test images) and decompresses as fast`,
          ),
      })
      .strict()
      .default({ level: TRANSPORT_LEVEL }),
  })
  .strict()

export type Recipe = z.infer<typeof RecipeSchema>

export interface LoadedRecipe {
  file: string
  recipe: Recipe
  layout: Layout
  /** SHA-256 of the recipe file and its layout file: what the cache and the manifest key on. */
  hash: string
}

/** Where the shipped recipes are (image-build/recipes, or the single executable's copy of them). */
export const recipesDir = (): string => path.join(shippedRoot(), 'recipes')

/** A recipe by file path, or by the name of a shipped recipe (`test`, `host`). */
export function resolveRecipe(nameOrFile: string): string {
  if (fs.existsSync(nameOrFile)) return nameOrFile
  const dir = recipesDir()
  const shipped = path.join(dir, `${nameOrFile}.yaml`)
  if (/^[\w.-]+$/.test(nameOrFile) && fs.existsSync(shipped)) return shipped
  throw new LabhostError(
    'notFound',
    `no recipe ${nameOrFile}`,
    `give a recipe file, or one of: ${fs
      .readdirSync(dir)
      .map((f) => f.replace(/\.yaml$/, ''))
      .join(', ')}`,
  )
}

export function loadRecipe(nameOrFile: string): LoadedRecipe {
  const file = resolveRecipe(nameOrFile)
  const recipe = loadConfig(file, RecipeSchema)
  const layoutFile = path.resolve(path.dirname(file), recipe.layout)
  const layout = loadLayout(layoutFile)
  if (recipe.imageSizeMiB > layout.slotSizeMiB) {
    throw new LabhostError(
      'configInvalid',
      `${file}: imageSizeMiB: ${recipe.imageSizeMiB} is larger than the slots of ${layoutFile} (${layout.slotSizeMiB} MiB)`,
      'make the image smaller or the slots larger',
    )
  }
  const hash = crypto.createHash('sha256').update(fs.readFileSync(file)).update(fs.readFileSync(layoutFile)).digest('hex')
  return { file, recipe, layout, hash }
}

/**
 * Write a variant of a recipe to `file` (another version, other files): `change` edits the
 * parsed YAML; the layout path is made absolute so the variant can live anywhere.
 */
export function writeRecipeVariant(base: string, file: string, change: (r: Recipe) => void): string {
  const from = resolveRecipe(base)
  const r = YAML.parse(fs.readFileSync(from, 'utf8')) as Recipe
  r.layout = path.resolve(path.dirname(from), r.layout)
  change(r)
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, YAML.stringify(r))
  return file
}

export function recipeJsonSchema(): unknown {
  return z.toJSONSchema(RecipeSchema, { io: 'input' })
}

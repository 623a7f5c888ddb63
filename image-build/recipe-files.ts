// A recipe's files: and links:, written into the image's staging tree — and nowhere else. The
// build runs as root and replaces what is at each path, so a path that led out of the tree would
// delete and write files of the build machine. The schema refuses `..` (recipe.ts); here every
// directory on the way is resolved, and a symbolic link among them (the base system's absolute
// /var/run -> /run, or a link an earlier entry made) must resolve inside the tree.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import type { Recipe } from './recipe.ts'

interface Entries {
  file: string
  recipe: Pick<Recipe, 'files' | 'links'>
}

/** The host path of image path `p` under `staging`, or configInvalid naming recipe, key and path. */
function stagedPath(staging: string, p: string, recipeFile: string, key: string): string {
  const refuse = (why: string) =>
    new LabhostError(
      'configInvalid',
      `${recipeFile}: ${key}: ${JSON.stringify(p)} ${why}`,
      'name the path the link leads to inside the image, or leave the entry out; nothing outside the staging tree was touched',
    )
  const root = fs.realpathSync(staging)
  const parts = p.split('/').filter(Boolean)
  if (!p.startsWith('/') || !parts.length || parts.some((c) => c === '.' || c === '..')) throw refuse('is not an absolute, normalised path inside the image')
  const inside = (real: string) => real === root || real.startsWith(`${root}/`)
  let dir = root
  for (const [i, part] of parts.slice(0, -1).entries()) {
    const next = path.join(dir, part)
    const st = fs.lstatSync(next, { throwIfNoEntry: false })
    if (st?.isSymbolicLink()) {
      let real: string | null = null
      try {
        real = fs.realpathSync(next)
      } catch {
        // dangling: mkdir -p would follow it wherever it points
      }
      if (real === null || !inside(real))
        throw refuse(
          `goes through /${parts.slice(0, i + 1).join('/')}, a symbolic link to ${JSON.stringify(fs.readlinkSync(next))}, out of the image's staging tree`,
        )
      dir = real
    } else {
      dir = next // a directory, or missing (made below, inside)
    }
  }
  // the last component is replaced, never followed
  return path.join(dir, parts.at(-1)!)
}

export function stageRecipeFiles(staging: string, r: Entries): void {
  r.recipe.files.forEach((f, i) => {
    const dest = stagedPath(staging, f.path, r.file, `files.${i}.path`)
    fs.mkdirSync(path.dirname(dest), { recursive: true })
    fs.rmSync(dest, { force: true })
    fs.writeFileSync(dest, f.content, { mode: parseInt(f.mode, 8) })
    fs.chmodSync(dest, parseInt(f.mode, 8))
  })
}

export function stageRecipeLinks(staging: string, r: Entries): void {
  r.recipe.links.forEach((l, i) => {
    const dest = stagedPath(staging, l.path, r.file, `links.${i}.path`)
    fs.mkdirSync(path.dirname(dest), { recursive: true })
    fs.rmSync(dest, { force: true })
    fs.symlinkSync(l.target, dest)
  })
}

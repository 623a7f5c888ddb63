// What of labhost's own code shapes an image: every file in the import closure of the image
// builder (image-build/build.ts), hashed with its path — part of the image cache key, so a change
// to any file the builder runs builds afresh, not only to a hand-picked list. From the source
// tree esbuild walks the closure (its metafile); the single executable carries the hash that
// scripts/build.ts computed with this same function when it bundled it (the two agree, so images
// cached by one are found by the other).
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

declare global {
  // Replaced at bundle time by scripts/build.ts (esbuild `define`); undefined when run from source.
  var LABHOST_BUILDER_HASH: string | undefined
}

let memo: Promise<string> | null = null

/** SHA-256 over the builder's import closure (paths relative to the repository, and contents). */
export function builderClosureHash(): Promise<string> {
  if (globalThis.LABHOST_BUILDER_HASH) return Promise.resolve(globalThis.LABHOST_BUILDER_HASH)
  memo ??= closureHash(path.resolve(import.meta.dirname ?? '.', '..'))
  return memo
}

/** The same, computed from a source tree (scripts/build.ts calls it for the bundle). */
export async function closureHash(repoRoot: string): Promise<string> {
  const { build } = await import('esbuild')
  const r = await build({
    entryPoints: [path.join(repoRoot, 'image-build/build.ts')],
    absWorkingDir: repoRoot,
    bundle: true,
    platform: 'node',
    format: 'esm',
    write: false,
    metafile: true,
    logLevel: 'silent',
  })
  const h = crypto.createHash('sha256')
  for (const f of Object.keys(r.metafile.inputs).sort())
    h.update(`${f}\0`)
      .update(fs.readFileSync(path.join(repoRoot, f)))
      .update('\0')
  return h.digest('hex')
}

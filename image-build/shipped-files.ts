// The recipes and layouts labhost ships (image-build/recipes/*.yaml, image-build/layouts/*.yaml).
// From the source tree they are read where they lie. The single executable carries them as SEA
// assets (scripts/build.ts embeds every file SHIPPED_DIRS lists) and writes them, on first use,
// into a private directory of its own (mkdtemp, removed at exit) with the same shape — so a
// recipe still finds its layout by relative path, and an error names a real file.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import sea from 'node:sea'

/** The folders under image-build/ whose files ship inside the executable. */
export const SHIPPED_DIRS = ['recipes', 'layouts'] as const

/** The SEA asset that lists the shipped files' asset keys ("recipes/test.yaml", …). */
export const SHIPPED_INDEX = 'shipped-index.json'

let extracted: string | null = null

/** The directory holding recipes/ and layouts/: image-build/ itself, or the executable's copy. */
export function shippedRoot(): string {
  if (!sea.isSea()) return path.resolve(import.meta.dirname ?? '.')
  if (extracted) return extracted
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-shipped-'))
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }))
  const keys = JSON.parse(sea.getAsset(SHIPPED_INDEX, 'utf8')) as string[]
  for (const key of keys) {
    const file = path.join(dir, key)
    if (path.relative(dir, file).startsWith('..')) throw new Error(`shipped asset ${key} lies outside its directory`)
    fs.mkdirSync(path.dirname(file), { recursive: true })
    fs.writeFileSync(file, Buffer.from(sea.getAsset(key)), { mode: 0o644 })
  }
  extracted = dir
  return dir
}

/** The shipped files as SEA assets, keyed by their path under image-build/ (for scripts/build.ts). */
export function shippedAssets(imageBuildDir: string): Record<string, string> {
  const assets: Record<string, string> = {}
  for (const d of SHIPPED_DIRS) {
    for (const f of fs.readdirSync(path.join(imageBuildDir, d)).sort()) assets[`${d}/${f}`] = path.join(imageBuildDir, d, f)
  }
  return assets
}

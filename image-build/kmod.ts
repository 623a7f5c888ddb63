// Kernel modules for an initramfs: find each module in an extracted kernel tree and order it
// after its dependencies (read from the module files with modinfo, as the tree has no modules.dep).
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { run } from '../lib/exec.ts'

const norm = (name: string) => name.replace(/-/g, '_')

function indexModules(modulesDir: string): Map<string, string> {
  const map = new Map<string, string>()
  for (const rel of fs.readdirSync(modulesDir, { recursive: true }) as string[]) {
    const m = /([^/]+)\.ko$/.exec(rel)
    if (m) map.set(norm(m[1]!), path.join(modulesDir, rel))
  }
  return map
}

/** Module files for `names` and everything they depend on, dependencies first. */
export async function resolveModules(modulesDir: string, names: readonly string[]): Promise<string[]> {
  const index = indexModules(modulesDir)
  const ordered: string[] = []
  const seen = new Set<string>()
  const visit = async (name: string, chain: string[]) => {
    const key = norm(name)
    if (seen.has(key)) return
    const file = index.get(key)
    if (!file) {
      throw new LabhostError(
        'notFound',
        `kernel module ${name} (needed by ${chain.join(' <- ') || 'the image'}) is not in ${modulesDir}`,
        'check the module name, or whether it is built into this kernel (then leave it out)',
      )
    }
    seen.add(key)
    const { stdout } = await run('modinfo', ['-F', 'depends', file])
    for (const dep of stdout.trim().split(',').filter(Boolean)) await visit(dep, [name, ...chain])
    ordered.push(file)
  }
  for (const n of names) await visit(n, [])
  return ordered
}

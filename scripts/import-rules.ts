// The rooms of the codebase and which may import which (issue 20, 7). A room imports only from
// rooms below it; installer and updater are peers (neither imports the other); nothing imports
// upward, and no two files import each other, directly or around a circle. Imports are read with
// TypeScript's own pre-processor (ts.preProcessFile: static imports, re-exports, import()).
// `node scripts/import-rules.ts` prints every breach; scripts/test/import-rules.unit.test.ts runs
// the same check in npm test.
import fs from 'node:fs'
import path from 'node:path'
import ts from 'typescript'

/**
 * Each room and the rooms it may import from (besides itself). Test files and test support may
 * import any room below the tests (they exercise everything) but nothing imports them.
 */
export const ROOMS: Record<string, readonly string[]> = {
  lib: [],
  bootloader: ['lib'],
  'image-format': ['lib', 'bootloader'],
  installer: ['lib', 'bootloader', 'image-format'],
  updater: ['lib', 'bootloader', 'image-format'],
  vmimages: ['lib', 'image-format'],
  // the builder makes installer sticks: it reads install.yaml and plans the stick's partitions as the installer does
  'image-build': ['lib', 'bootloader', 'image-format', 'installer'],
  cli: ['lib', 'bootloader', 'image-format', 'installer', 'updater', 'vmimages', 'image-build'],
  'test-support': ['lib', 'bootloader', 'image-format', 'installer', 'updater', 'vmimages', 'image-build', 'cli'],
  'vm-tests': ['lib', 'bootloader', 'image-format', 'installer', 'updater', 'vmimages', 'image-build', 'cli', 'test-support'],
  scripts: ['lib', 'bootloader', 'image-format', 'installer', 'updater', 'vmimages', 'image-build', 'cli', 'test-support', 'vm-tests'],
}

const isTest = (rel: string) => rel.endsWith('.test.ts') || rel.split('/').includes('test')

export interface Breach {
  from: string
  to: string
  why: string
}

/** The repository's own TypeScript files (no node_modules, dist, scratch or hidden folders). */
export function sourceFiles(root: string): string[] {
  return (fs.globSync('**/*.ts', { cwd: root, exclude: (p) => /(^|\/)(node_modules|dist|scratch|\.[^/]+)(\/|$)/.test(p) }) as string[]).sort()
}

/** The repository files a file imports (relative specifiers only; packages and node: are outside). */
export function importsOf(root: string, rel: string): string[] {
  const info = ts.preProcessFile(fs.readFileSync(path.join(root, rel), 'utf8'), true, true)
  return info.importedFiles
    .map((f) => f.fileName)
    .filter((s) => s.startsWith('.'))
    .map((s) => path.relative(root, path.resolve(root, path.dirname(rel), s)))
}

export function checkImports(root: string): Breach[] {
  const files = sourceFiles(root)
  const known = new Set(files)
  const breaches: Breach[] = []
  const graph = new Map<string, string[]>()
  for (const from of files) {
    const room = from.split('/')[0]!
    const targets = importsOf(root, from)
    graph.set(
      from,
      targets.filter((x) => known.has(x)),
    )
    for (const to of targets) {
      if (!known.has(to)) {
        breaches.push({ from, to, why: 'imports a file that does not exist' })
        continue
      }
      const toRoom = to.split('/')[0]!
      if (isTest(to) && !isTest(from)) {
        breaches.push({ from, to, why: 'production code imports test code' })
        continue
      }
      if (toRoom === room) continue
      if (toRoom === 'test-support' && !isTest(from) && !['vm-tests', 'scripts', 'test-support'].includes(room)) {
        breaches.push({ from, to, why: 'production code imports test support' })
        continue
      }
      if (!(room in ROOMS)) {
        breaches.push({ from, to, why: `${room}/ is no room of scripts/import-rules.ts` })
        continue
      }
      const allowed = isTest(from) ? [...(ROOMS[room] ?? []), ...Object.keys(ROOMS).filter((r) => r !== 'vm-tests' && r !== 'scripts')] : ROOMS[room]!
      if (!allowed.includes(toRoom)) breaches.push({ from, to, why: `${room}/ may import only ${ROOMS[room]!.join(', ') || 'nothing of ours'}` })
    }
  }
  // cycles between files (Tarjan's strongly connected components)
  let index = 0
  const idx = new Map<string, number>(),
    low = new Map<string, number>(),
    stack: string[] = [],
    on = new Set<string>()
  const visit = (v: string): void => {
    idx.set(v, index)
    low.set(v, index)
    index++
    stack.push(v)
    on.add(v)
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!))
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = []
      for (let w = stack.pop()!; ; w = stack.pop()!) {
        on.delete(w)
        comp.push(w)
        if (w === v) break
      }
      if (comp.length > 1) breaches.push({ from: comp.sort()[0]!, to: comp.sort().slice(1).join(', '), why: 'an import cycle' })
    }
  }
  for (const f of files) if (!idx.has(f)) visit(f)
  return breaches
}

if (import.meta.main) {
  const root = path.resolve(import.meta.dirname, '..')
  const breaches = checkImports(root)
  for (const b of breaches) console.log(`${b.from} -> ${b.to}: ${b.why}`)
  console.log(`${breaches.length} breach(es) of the import rules`)
  process.exit(breaches.length ? 1 : 0)
}

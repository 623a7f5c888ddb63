// Patterns from install.yaml (DMI product name, disk model and serial), matched by RE2's
// linear-time engine (re2js, pure JavaScript: it bundles into the single executable). A RegExp
// backtracks: `(a+)+` against a long product name would hang the unattended installer.
import { RE2JS } from 're2js'

const compiled = new Map<string, RE2JS>()

function compile(source: string): RE2JS {
  let re = compiled.get(source)
  if (!re) compiled.set(source, (re = RE2JS.compile(source)))
  return re
}

/** Why the engine refuses `source` (backreferences, lookaround, bad syntax), or null when it takes it. */
export function patternProblem(source: string): string | null {
  try {
    compile(source)
    return null
  } catch (e) {
    return (e as Error).message
  }
}

/** Whether `pattern` matches the whole of `value`. */
export function fullMatch(pattern: string, value: string): boolean {
  return compile(pattern).matches(value)
}

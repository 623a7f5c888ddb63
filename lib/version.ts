// Which image version is newer. The order is Debian's (dpkg's verrevcmp, applied to the whole
// version string): runs of digits compare as numbers (rc9 < rc10), other characters by ASCII with
// letters before non-letters, and `~` sorts before everything, even the end of the string
// (1.0.0~rc1 < 1.0.0). One deviation, so semver-style names order as their authors mean:
// a hyphen marks a pre-release, as in semver, and sorts like `~` (1.0.0-rc1 < 1.0.0).
// Build metadata after `+` counts, as in Debian (1.0.0+b1 > 1.0.0), where semver ignores it.

/** dpkg's character weight: `~` lowest, then the end of the string, letters, then other characters. */
function weight(c: string | undefined): number {
  if (c === undefined) return 0
  if (c === '~') return -1
  if (/[A-Za-z]/.test(c)) return c.charCodeAt(0)
  return c.charCodeAt(0) + 256
}

const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9'

/** < 0 when a is older than b, 0 when they are the same version, > 0 when a is newer. */
export function compareVersions(a: string, b: string): number {
  const x = a.replaceAll('-', '~')
  const y = b.replaceAll('-', '~')
  let i = 0
  let j = 0
  while (i < x.length || j < y.length) {
    // the non-digit prefix, character by character
    while ((i < x.length && !isDigit(x[i])) || (j < y.length && !isDigit(y[j]))) {
      const wx = isDigit(x[i]) ? 0 : weight(x[i])
      const wy = isDigit(y[j]) ? 0 : weight(y[j])
      if (wx !== wy) return wx - wy
      i++
      j++
    }
    // then the run of digits, as a number (leading zeros do not count)
    while (x[i] === '0') i++
    while (y[j] === '0') j++
    let first = 0
    while (isDigit(x[i]) && isDigit(y[j])) {
      if (!first) first = x.charCodeAt(i) - y.charCodeAt(j)
      i++
      j++
    }
    if (isDigit(x[i])) return 1
    if (isDigit(y[j])) return -1
    if (first) return first
  }
  return 0
}

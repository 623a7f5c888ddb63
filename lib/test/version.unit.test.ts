// The version order of lib/version.ts: Debian's, checked against dpkg itself on random versions,
// plus the hyphen read as a pre-release marker (the one deviation) and the edge cases by name.
import { execFileSync } from 'node:child_process'
import t from 'tap'
import { prng, seedFromEnv } from '../../test-support/test-helpers.ts'
import { compareVersions } from '../version.ts'

const sign = (n: number) => Math.sign(n)

t.test('named edge cases', async (t) => {
  const older: [string, string][] = [
    ['1.0.0-rc1', '1.0.0'],
    ['1.0.0~rc1', '1.0.0'],
    ['1.0.0-rc9', '1.0.0-rc10'],
    ['1.0.0~rc9', '1.0.0~rc10'],
    ['1.0.0-rc1', '1.0.0-rc1.1'],
    ['1.0.0~beta', '1.0.0~rc1'],
    ['1.0.0', '1.0.0+b1'],
    ['1.0.0', '1.0.0.1'],
    ['1.9', '1.10'],
    ['2.0.0', '10.0.0'],
    ['1.0a', '1.0+'],
    ['1.0~~', '1.0~'],
    ['1.0.0~rc1', '1.0.0-rc2'],
  ]
  for (const [a, b] of older) {
    t.equal(sign(compareVersions(a, b)), -1, `${a} < ${b}`)
    t.equal(sign(compareVersions(b, a)), 1, `${b} > ${a}`)
  }
  for (const [a, b] of [
    ['1.0', '1.00'],
    ['01.2', '1.2'],
    ['1.0.0-rc1', '1.0.0~rc1'],
  ])
    t.equal(compareVersions(a!, b!), 0, `${a} = ${b}`)
})

t.test('the same order as dpkg --compare-versions (versions without a hyphen)', async (t) => {
  const seed = seedFromEnv()
  const rand = prng(seed)
  const alphabet = '0123456789..~+abzAZ'
  const version = () => {
    let s = String(Math.floor(rand() * 12))
    for (let n = Math.floor(rand() * 8); n > 0; n--) s += alphabet[Math.floor(rand() * alphabet.length)]
    return s
  }
  const pairs = Array.from({ length: 150 }, () => [version(), rand() < 0.2 ? '' : version()] as [string, string])
  for (const p of pairs) if (p[1] === '') p[1] = p[0] // some equal pairs
  let disagreements = 0
  for (const [a, b] of pairs) {
    const lt = dpkg(a, 'lt', b)
    const gt = dpkg(a, 'gt', b)
    const expected = lt ? -1 : gt ? 1 : 0
    if (sign(compareVersions(a, b)) !== expected) {
      disagreements++
      t.fail(`${a} vs ${b}: dpkg says ${expected}, labhost ${sign(compareVersions(a, b))} (seed ${seed})`)
    }
  }
  t.equal(disagreements, 0, `150 random pairs agree with dpkg (seed ${seed})`)
})

function dpkg(a: string, op: string, b: string): boolean {
  try {
    execFileSync('dpkg', ['--compare-versions', a, op, b], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

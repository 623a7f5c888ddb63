// Every failure class has its own exit code: two codes sharing a number would make a script's
// `case $?` (and the README's table) lie about what went wrong.
import t from 'tap'
import { ExitCode } from '../errors.ts'

t.test('exit codes are distinct', async (t) => {
  const byCode = new Map<number, string[]>()
  for (const [name, code] of Object.entries(ExitCode)) byCode.set(code, [...(byCode.get(code) ?? []), name])
  const shared = [...byCode.entries()].filter(([, names]) => names.length > 1)
  t.same(shared, [], 'no two error classes share an exit code')
  t.ok(
    Object.values(ExitCode).every((c) => Number.isInteger(c) && c >= 0 && c < 126),
    'every code fits a shell exit status below 126',
  )
})

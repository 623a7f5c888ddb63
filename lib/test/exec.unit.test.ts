// lib/exec.ts: every tool failure becomes one typed error (toolFailed) with the command line, the
// stderr tail and a hint for that tool; a missing tool names its Debian package.
import fs from 'node:fs'
import os from 'node:os'
import t, { type Test } from 'tap'
import { ExitCode, type LabhostError } from '../errors.ts'
import { run, runStatus, start, toolError } from '../exec.ts'

/** A directory of stand-in tools, alone on PATH for the test. */
function fakeTools(t: Test, tools: Record<string, string>): void {
  const bin = fs.mkdtempSync(`${os.tmpdir()}/labhost-test-bin-`)
  for (const [name, script] of Object.entries(tools)) fs.writeFileSync(`${bin}/${name}`, `#!/bin/sh\n${script}\n`, { mode: 0o755 })
  const saved = process.env.PATH
  process.env.PATH = bin
  t.teardown(() => {
    process.env.PATH = saved
    fs.rmSync(bin, { recursive: true, force: true })
  })
}

const failure = (p: Promise<unknown>) =>
  p.then(
    () => null,
    (e: unknown) => e as LabhostError,
  )

t.test('a tool that fails: toolFailed with its command line, exit status, stderr tail and a hint for that tool', async (t) => {
  fakeTools(t, {
    'mkfs.ext4': 'echo "mkfs.ext4: /dev/x is mounted; will not make a filesystem here!" >&2; exit 1',
    extlinux: 'echo "extlinux: not a directory" >&2; exit 1',
  })
  const e = await failure(run('mkfs.ext4', ['-q', '/dev/x']))
  t.match(e, {
    code: 'toolFailed',
    message: /^mkfs\.ext4 -q \/dev\/x exited with 1: mkfs\.ext4: \/dev\/x is mounted/,
    details: { command: 'mkfs.ext4 -q /dev/x', exitCode: 1, stderr: /is mounted/ },
  })
  t.equal(e?.exitCode, ExitCode.toolFailed)
  t.match(e?.hint, /not mounted/, `mkfs.ext4's hint: ${e?.hint}`)
  const x = await failure(run('extlinux', ['--install', '/boot']))
  t.match(x?.hint, /ext4 filesystem .* ldlinux\.sys/, `extlinux's hint: ${x?.hint}`)
  t.not(x?.hint, e?.hint, 'each tool its own hint')
  const own = await failure(run('extlinux', ['--install', '/boot'], { hint: 'the caller knows better' }))
  t.equal(own?.hint, 'the caller knows better', 'a caller may give its own hint')
})

t.test('a missing tool: "not installed", and the hint names its package', async (t) => {
  fakeTools(t, {})
  for (const [tool, pkg] of [
    ['sgdisk', 'gdisk'],
    ['zstd', 'zstd'],
    ['aria2c', 'aria2'],
    ['qemu-img', 'qemu-utils'],
    ['mkfs.ext4', 'e2fsprogs'],
  ] as const) {
    const e = await failure(run(tool, ['--version']))
    t.match(e, { code: 'toolFailed', message: `${tool} is not installed`, details: { notInstalled: true } }, tool)
    t.match(e?.hint, new RegExp(`install the ${pkg} package`), `${tool}: ${e?.hint}`)
  }
  t.match((await failure(run('cctk', [])))?.hint, /Dell Command \| Configure/, 'cctk: not a Debian package')
  t.match((await failure(run('no-such-tool', [])))?.hint, /^install it/, 'an unknown tool: a plain hint')
})

t.test('runStatus: an exit status is an answer, not an error', async (t) => {
  const r = await runStatus('sh', ['-c', 'echo out; echo err >&2; exit 3'], { all: true })
  t.match(r, { exitCode: 3, stdout: 'out\n', stderr: 'err\n', timedOut: false, startError: undefined })
  t.match(r.all, /out\nerr/)
  fakeTools(t, {})
  t.match(await runStatus('blkdiscard', []), { exitCode: undefined, startError: 'ENOENT' }, 'a missing program: not started')
  const slow = await runStatus('/bin/sleep', ['5'], { timeoutMs: 100 })
  t.match(slow, { timedOut: true }, 'a timeout')
  t.match(toolError('/bin/sleep', ['5'], slow, { timeoutMs: 100 }).message, /timed out after 100 ms/)
})

t.test('start: a long-running tool resolves with its outcome; toolError makes it the same typed error', async (t) => {
  const p = start('sh', ['-c', 'read line; echo "got $line" >&2; exit 2'], { stdin: 'pipe' })
  p.process.stdin!.end('bytes\n')
  const r = await p.done
  t.match(r, { exitCode: 2, stderr: /^got bytes\n?$/ })
  t.match(toolError('sh', ['-c', '…'], r), { code: 'toolFailed', message: /exited with 2: got bytes/ })
  const killed = start('/bin/sleep', ['30'])
  killed.process.kill()
  t.match(await killed.done, { exitCode: undefined, signal: 'SIGTERM' })
  fakeTools(t, {})
  const missing = await start('aria2c', ['x.torrent']).done
  t.match(toolError('aria2c', ['x.torrent'], missing), { message: 'aria2c is not installed', hint: /aria2 package/ })
})

// Each command's options go through one zod schema (cli/command.ts commandSchema) before the
// command runs: numbers, enums, addresses, URLs and paths are checked and converted, defaults
// filled in, contradicting options refused. A bad value is a usage error (exit 2) in one line
// that names the option and the value, and a hint. (Numeric ranges: numeric-options.unit.test.ts.)
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { allCommands, main } from '../main.ts'
import { commandSchema } from '../command.ts'
import { failDiag } from '../../test-support/test-helpers.ts'

const COMMANDS = await allCommands()

async function cli(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = ''
  let stderr = ''
  const code = await main(
    argv,
    { write: (s: string) => (stdout += s) } as unknown as typeof process.stdout,
    { write: (s: string) => (stderr += s) } as unknown as typeof process.stderr,
  )
  return { code, stdout, stderr }
}

const command = (name: string) => COMMANDS.find((c) => c.name === name)!

t.test('one schema per command: defaults filled in and converted', async (t) => {
  for (const c of COMMANDS) t.ok(commandSchema(c), `${c.name} has its schema`)
  const serve = commandSchema(command('image serve')).parse({})
  t.same(serve, { host: '127.0.0.1', port: 8080 }, 'image serve: --port 8080 is the number 8080')
  const status = commandSchema(command('slots status')).parse({ disk: '/dev/sda' })
  t.same(status['slot-names'], { A: 'rootA', B: 'rootB' }, 'slots status: --slot-names rootA,rootB as the two names')
  t.equal(status['sector-size'], undefined, 'no --sector-size: the device says')
  const sw = commandSchema(command('slots switch')).parse({ disk: '/dev/sda', to: 'b', 'sector-size': '4096' })
  t.match(sw, { to: 'B', 'sector-size': 4096, 'ignore-trial': false, 'boot-file': '/run/labhost/boot' })
  const update = commandSchema(command('update')).parse({ torrent: true, 'seed-ratio': '1.5', 'download-limit': '30M' })
  t.match(update, {
    'seed-ratio': 1.5,
    'download-limit': '30M',
    'read-back': 'after',
    'trusted-key': '/etc/labhost/trusted.pub',
    'download-dir': '/run/labhost/torrent',
    full: false,
  })
  const publish = commandSchema(command('image publish')).parse({})
  t.same(publish, { tracker: [], 'web-seed': [], 'delta-from': [] }, 'repeatable options: an empty list when absent')
  t.notOk(commandSchema(command('wake')).safeParse({ bogus: 'x' }).success, 'an option the command does not have is refused')
})

// [what, argv, the message's start]
const bad: [string, string[], RegExp][] = [
  ['enum', ['slots', 'status', '--disk', '/dev/null', '--sector-size', '1024'], /^--sector-size "1024" is neither 512 nor 4096$/],
  ['two names', ['slots', 'status', '--disk', '/dev/null', '--slot-names', 'rootA'], /^--slot-names "rootA" is not two names$/],
  ['slot', ['slots', 'switch', '--disk', '/dev/null', '--to', 'C'], /^--to "C" is not a slot$/],
  ['enum', ['update', 'DIR', '--read-back', 'sometimes'], /^--read-back "sometimes" is neither during nor after$/],
  ['port', ['image', 'serve', '/tmp', '--port', '70000'], /^--port "70000" is not a whole number from 0 to 65535$/],
  ['port', ['wake', '--reports', '/tmp', '--port', '0'], /^--port "0" is not a whole number from 1 to 65535$/],
  ['count', ['wake', '--reports', '/tmp', '--repeat', '21'], /^--repeat "21" is not a whole number from 1 to 20$/],
  ['IPv4', ['wake', '--reports', '/tmp', '--broadcast', '10.1.2.256'], /^--broadcast "10\.1\.2\.256" is not an IPv4 address$/],
  ['GiB', ['vm-image', 'prune', '--reserve-gib=-1'], /^--reserve-gib "-1" is not a number from 0 to 1048576$/],
  ['count', ['vm-image', 'pull', 'URL', '--retries', 'many'], /^--retries "many" is not a whole number from 1 to 1000$/],
  [
    'URL',
    ['image', 'publish', 'DIR', '--tracker', 'ftp://tracker.lab/announce'],
    /^--tracker "ftp:\/\/tracker\.lab\/announce" is not a URL \(http, https or udp\)$/,
  ],
  [
    'URL, the second of two',
    ['image', 'publish', 'DIR', '--tracker', 'http://a.lab/announce', '--tracker', 'tracker.lab'],
    /^--tracker "tracker\.lab" is not a URL/,
  ],
  [
    'URL',
    ['image', 'publish', 'DIR', '--tracker', 'http://a.lab/announce', '--web-seed', 'udp://a.lab/x'],
    /^--web-seed "udp:\/\/a\.lab\/x" is not a URL \(http or https\)$/,
  ],
  ['path', ['install', '--config', '', '--image', 'DIR'], /^--config "" is not a path$/],
  ['path', ['image', 'build', 'test', '--out', '', '--signing-key', 'KEY'], /^--out "" is not a path$/],
  ['text', ['vm-image', 'publish', 'F.qcow2', '--name', '', '--image-version', '1', '--os', 'l', '--signing-key', 'K', '--out', 'D'], /^--name "" is empty$/],
  ['required', ['slots', 'status'], /^labhost slots status needs --disk$/],
  ['required', ['image', 'keygen'], /^labhost image keygen needs --out$/],
  ['required', ['install', '--image', 'DIR'], /^labhost install needs --config \(or --netboot URL\)$/],
  ['required', ['install', '--config', 'C'], /^labhost install needs --image \(or --netboot URL\)$/],
  ['contradiction', ['update', 'DIR', '--full', '--delta'], /^--full and --delta contradict each other$/],
  ['contradiction', ['install', '--config', 'C', '--image', 'I', '--no-finish', '--finish-file', 'F'], /^--no-finish and --finish-file contradict each other$/],
  ['only with another', ['update', 'DIR', '--seed-ratio', '2'], /^--seed-ratio goes with --torrent$/],
  ['only with another', ['update', 'DIR', '--upstream-part', '1/2'], /^--upstream-part goes with --torrent$/],
  ['part', ['update', 'DIR', '--torrent', '--peers', 'upstream', '--upstream-part', '3/2'], /^--upstream-part "3\/2" is not a part K\/N$/],
  ['part', ['update', 'DIR', '--torrent', '--upstream-part', '1/2'], /^--upstream-part 1\/2 is for an upstream host \(--peers all given\)$/],
  [
    'part',
    ['update', 'DIR', '--torrent', '--peers', 'building', '--upstream-part', '2/2'],
    /^--upstream-part 2\/2 is for an upstream host \(--peers building given\)$/,
  ],
  ['only with another', ['update', 'DIR', '--download-dir', '/tmp'], /^--download-dir goes with --torrent$/],
  ['only with another', ['image', 'serve', '/tmp', '--tls-key', 'K'], /^--tls-key goes with --tls-cert$/],
  ['only with another', ['status', '--out', 'F'], /^--out goes with --prometheus$/],
  ['unknown', ['slots', 'status', '--bogus'], /^Unknown option '--bogus'/],
]

t.test('a bad option is a usage error in one line naming it (and its value), before the command runs', async (t) => {
  for (const [what, argv, message] of bad) {
    const r = await cli(argv)
    t.equal(r.code, ExitCode.usage, `${what}: ${argv.join(' ')}: exit 2`, failDiag(r))
    const lines = r.stderr.trimEnd().split('\n')
    t.equal(lines.length, 2, 'one line and a hint', failDiag(r))
    t.match(lines[0]!.replace(/^labhost: error: /, ''), message)
    t.match(lines[1], /^ {2}hint: \S/)
    t.equal(r.stdout, '', 'nothing on stdout')
  }
})

t.test('with --json the same error is the JSON object on stdout', async (t) => {
  const r = await cli(['slots', 'status', '--disk', '/dev/null', '--sector-size', '1024', '--json'])
  t.equal(r.code, ExitCode.usage)
  t.match(JSON.parse(r.stdout), { error: 'usage', exitCode: 2, message: '--sector-size "1024" is neither 512 nor 4096' })
})

t.test("vm-image publish: --image-version is the base image's version; --version, its old spelling, still parses as it", async (t) => {
  const argv = (flag: string) => ['vm-image', 'publish', 'F.qcow2', '--name', '', flag, '1', '--os', 'l', '--signing-key', 'K', '--out', 'D']
  const old = await cli(argv('--version'))
  // the empty --name stops it before any work: what matters is that --version was taken as the image version
  t.match(old.stderr, /^labhost: error: --name "" is empty$/m, 'the old spelling parses', failDiag(old))
  t.notMatch(old.stdout, /^labhost \d/, "and does not print labhost's own version")
  const both = await cli([...argv('--version'), '--image-version', '2'])
  t.equal(both.code, ExitCode.usage)
  t.match(both.stderr, /--version and --image-version are the same option/)
})

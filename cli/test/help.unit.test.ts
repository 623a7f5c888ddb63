// `labhost <command> --help` documents every option (value, default, one line of description),
// the command's own options first, then the common ones; test seams appear only with --help-all,
// and --help says they are left out. Every command says what it does with --dry-run.
import t from 'tap'
import { allCommands, COMMAND_NAMES, main } from '../main.ts'
import { runCli } from '../../test-support/test-helpers.ts'

const COMMANDS = await allCommands()

/** main() in this process, its stdout and stderr captured. */
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

const section = (text: string, title: string): string => text.split('\n\n').find((p) => p.startsWith(`${title}:\n`)) ?? ''
const line = (text: string, option: string): string | undefined => text.split('\n').find((l) => new RegExp(`^ {2}(-\\w, )?--${option}( |$)`).test(l))

t.test('every option of every command has a one-line description', async (t) => {
  for (const c of COMMANDS) {
    for (const [name, o] of Object.entries(c.options)) {
      t.ok(o.description.length > 10 && !o.description.includes('\n'), `${c.name} --${name}: ${o.description}`)
      if (o.type === 'string') t.ok(o.value, `${c.name} --${name} names its value`)
    }
  }
})

t.test('--help: the usage, then each main option with its value and default, then the common options', async (t) => {
  for (const c of COMMANDS) {
    const r = await cli([...c.name.split(' '), '--help'])
    t.equal(r.code, 0, `${c.name} --help exits 0`)
    t.equal(r.stderr, '', 'nothing on stderr')
    t.match(r.stdout, `usage: ${c.usage}`)
    const own = section(r.stdout, 'options')
    const common = section(r.stdout, 'common options')
    for (const [name, o] of Object.entries(c.options)) {
      const l = line(own, name)
      if (o.seam) {
        t.notOk(line(r.stdout, name), `${c.name}: the test seam --${name} is not in --help`)
        continue
      }
      t.ok(l, `${c.name}: --${name} is listed under options`)
      if (!l) continue
      if (o.value) t.ok(l.startsWith(`  --${name} ${o.value}`), `${c.name} --${name} ${o.value}`)
      // the description may wrap: judge the option's whole entry
      const entry = own
        .slice(own.indexOf(l))
        .split(/\n(?= {2}-)/)[0]!
        .replace(/\s+/g, ' ')
      t.ok(entry.includes(o.description.split(' ').slice(0, 4).join(' ')), `${c.name} --${name}: its description`)
      if (typeof o.default === 'string') t.match(entry, `default: ${o.default}`, `${c.name} --${name}: its default`)
      if (o.defaultText) t.match(entry, `default: ${o.defaultText}`, `${c.name} --${name}: its default`)
      if (o.required) t.match(entry, 'required', `${c.name} --${name}: required`)
    }
    for (const name of ['json', 'dry-run', 'help']) t.ok(line(common, name), `${c.name}: --${name} is listed under common options`)
    t.notOk(line(own, 'json'), 'the common options are not mixed into the main ones')
  }
})

t.test('test seams: hidden from --help (which says so at its end), listed by --help-all', async (t) => {
  const withSeams = COMMANDS.filter((c) => Object.values(c.options).some((o) => o.seam))
  // the ones the issue names, and the phase markers the VM tests read
  const seamsOf = (name: string) =>
    Object.entries(COMMANDS.find((c) => c.name === name)!.options)
      .filter(([, o]) => o.seam)
      .map(([n]) => n)
  t.same(seamsOf('update'), ['boot-file', 'state-root', 'version-file', 'machine-uuid-file', 'now', 'announce-phases'])
  t.same(seamsOf('install'), ['sys-root'])
  t.ok(withSeams.length >= 6, 'update, status, mark-good, trial-check, slots switch, slots repair, install')
  for (const c of withSeams) {
    const seams = Object.entries(c.options).filter(([, o]) => o.seam)
    const help = (await cli([...c.name.split(' '), '--help'])).stdout
    const all = (await cli([...c.name.split(' '), '--help-all'])).stdout
    t.match(
      help.trimEnd().split('\n').at(-1),
      new RegExp(`^${seams.length} test-only options? (is|are) not shown: labhost ${c.name} --help-all lists`),
      `${c.name}: --help ends saying what it left out`,
    )
    const group = section(all, 'test-only options (point labhost at files a test laid out; never needed on a PC)')
    for (const [name, o] of seams) {
      t.notOk(line(help, name), `${c.name} --help: no --${name}`)
      t.ok(line(group, name), `${c.name} --help-all: --${name} in the test-only group`)
      if (typeof o.default === 'string') t.match(group.replace(/\s+/g, ' '), `default: ${o.default}`)
    }
    t.ok(all.startsWith(help.slice(0, help.indexOf('\ncommon options:'))), 'the main options come first, as in --help')
  }
  for (const c of COMMANDS.filter((x) => !withSeams.includes(x))) {
    const help = (await cli([...c.name.split(' '), '--help'])).stdout
    t.notMatch(help, /test-only|--help-all/, `${c.name}: no seams, no mention of them`)
  }
})

t.test('--dry-run in --help says what the command does with it', async (t) => {
  for (const c of COMMANDS) {
    const help = (await cli([...c.name.split(' '), '--help'])).stdout
    const l = line(section(help, 'common options'), 'dry-run') ?? ''
    if ('refused' in c.dryRun) t.match(l, /refused \(usage error\)/, `${c.name}: refused`)
    else if ('readsOnly' in c.dryRun) t.match(l, /changes nothing: this command only reads/, `${c.name}: reads only`)
    else t.match(l, /--dry-run +\S/, `${c.name}: its plan`)
  }
})

t.test('the real executable path (cli/bin.ts): --help and --help-all on stdout, exit 0', async (t) => {
  const r = await runCli(['slots', 'switch', '--help'])
  t.equal(r.code, 0)
  t.match(r.stdout, /usage: labhost slots switch --disk/)
  t.match(r.stdout, /\n {2}--to A\|B +the slot to boot next/)
  t.notMatch(r.stdout, /--state-root/)
  const all = await runCli(['slots', 'switch', '--help-all'])
  t.match(all.stdout, /\n {2}--state-root DIR +the directory holding labhost\//)
  const top = await runCli(['--help'])
  t.match(top.stdout, /--help-all/, 'the top-level help names --help-all')
})

t.test('the command index names each command as its file defines it, in the order of the top help', async (t) => {
  t.same(
    COMMANDS.map((c) => c.name),
    COMMAND_NAMES,
  )
  const r = await cli(['--help'])
  const listed = r.stdout.split('\n').flatMap((l) => COMMAND_NAMES.filter((n) => l.startsWith(`  ${n}  `)))
  t.same(listed, COMMAND_NAMES, 'labhost --help lists every command once, in that order')
})

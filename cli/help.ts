// `labhost <command> --help`: the usage line, every option with its value, default and one-line
// description (the command's own first, then the common ones), then the command's notes. Test
// seams are listed only by --help-all; --help says how many it leaves out.
import { COMMON_OPTIONS, dryRunDescription, type Command, type OptionDef } from './command.ts'

const WIDTH = 100
const NAME_COLUMN = 30

function optionName(name: string, o: OptionDef): string {
  return `${o.short ? `-${o.short}, ` : ''}--${name}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}`
}

function optionText(o: OptionDef): string {
  const notes = [
    o.required ? 'required' : '',
    o.multiple ? 'repeatable' : '',
    typeof o.default === 'string' ? `default: ${o.default}` : o.defaultText ? `default: ${o.defaultText}` : '',
    o.aliases?.length ? `old spelling, deprecated: ${o.aliases.map((a) => `--${a}`).join(', ')}` : '',
  ].filter(Boolean)
  return notes.length ? `${o.description} [${notes.join('; ')}]` : o.description
}

/** Lines of `--name VALUE   description` (descriptions from column `col`, wrapped under themselves). */
function optionLines(entries: [string, OptionDef][], col: number): string[] {
  const names = entries.map(([n, o]) => optionName(n, o))
  const lines: string[] = []
  entries.forEach(([, o], i) => {
    const name = names[i]!
    const words = optionText(o).split(' ')
    let line = name.length + 2 > col ? '' : `  ${name.padEnd(col)}`
    if (!line) lines.push(`  ${name}`)
    const indent = ' '.repeat(col + 2)
    let fresh = true
    for (const w of words) {
      if (!line) line = indent
      if (!fresh && line.length + 1 + w.length > WIDTH) {
        lines.push(line)
        line = indent
        fresh = true
      }
      line += fresh ? w : ` ${w}`
      fresh = false
    }
    lines.push(line)
  })
  return lines
}

export function commandHelp(c: Command, all: boolean): string {
  const own = Object.entries(c.options)
  const main = own.filter(([, o]) => !o.seam)
  const seams = own.filter(([, o]) => o.seam)
  const common: [string, OptionDef][] = Object.entries<OptionDef>(COMMON_OPTIONS)
    .filter(([n]) => n !== 'help-all' || seams.length)
    .map(([n, o]) => [n, n === 'dry-run' ? { ...o, description: dryRunDescription(c.dryRun) } : o])
  // one column for --help and --help-all: the longer help is the shorter one plus the seams
  const shown = [...main, ...common, ...seams]
  const col = Math.min(NAME_COLUMN, Math.max(...shown.map(([n, o]) => optionName(n, o).length)) + 2)
  const out = [`labhost ${c.name} — ${c.summary}`, '', `usage: ${c.usage}`]
  if (main.length) out.push('', 'options:', ...optionLines(main, col))
  out.push('', 'common options:', ...optionLines(common, col))
  if (all && seams.length) out.push('', 'test-only options (point labhost at files a test laid out; never needed on a PC):', ...optionLines(seams, col))
  if (c.notes) out.push('', c.notes)
  if (!all && seams.length)
    out.push(
      '',
      `${seams.length} test-only option${seams.length > 1 ? 's are' : ' is'} not shown: labhost ${c.name} --help-all lists ${seams.length > 1 ? 'them' : 'it'}.`,
    )
  return out.join('\n')
}

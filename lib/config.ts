// YAML configuration files validated by zod schemas. An error names the file, the path of the
// offending key and the value found there, in one line.
import fs from 'node:fs'
import YAML from 'yaml'
import { z } from 'zod'
import { LabhostError } from './errors.ts'

function valueAt(doc: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = doc
  for (const k of path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k] : undefined
  return v
}

function show(v: unknown): string {
  if (v === undefined) return 'missing'
  const s = JSON.stringify(v)
  return s.length > 60 ? `${s.slice(0, 57)}...` : s
}

export function parseConfig<S extends z.ZodType>(file: string, text: string, schema: S): z.infer<S> {
  let doc: unknown
  try {
    doc = YAML.parse(text, { prettyErrors: true, uniqueKeys: true })
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0]
    throw new LabhostError('configInvalid', `${file}: not valid YAML: ${msg}`, 'fix the YAML syntax at the line named', {}, { cause: e })
  }
  const r = schema.safeParse(doc)
  if (!r.success) {
    const issue = r.error.issues[0]!
    const where = issue.path.length ? issue.path.join('.') : '(top level)'
    const found = issue.code === 'unrecognized_keys' ? `unknown key(s) ${issue.keys.join(', ')}` : `value ${show(valueAt(doc, issue.path))}`
    const more = r.error.issues.length > 1 ? ` (+${r.error.issues.length - 1} more)` : ''
    throw new LabhostError(
      'configInvalid',
      `${file}: ${where}: ${issue.message}; found ${found}${more}`,
      'correct that key; the JSON Schema for editors is written by `labhost schema`',
      { file, path: issue.path.map(String), issues: r.error.issues.map((i) => ({ path: i.path.map(String), message: i.message })) },
    )
  }
  return r.data
}

export function loadConfig<S extends z.ZodType>(file: string, schema: S): z.infer<S> {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    throw new LabhostError('notFound', `config file ${file} cannot be read`, 'check the path', {}, { cause: e })
  }
  return parseConfig(file, text, schema)
}

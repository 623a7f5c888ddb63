// The catalogue INI: what labhost writes it reads back exactly; anything else is refused (exit 72)
// instead of being half-read and rewritten; a new version replaces its base's section, and a
// default base makes the others not default.
import t from 'tap'
import { LabhostError } from '../../lib/errors.ts'
import { formatCatalogue, parseCatalogue, withBase, type CatalogueEntry } from '../catalogue.ts'
import type { VmManifest } from '../manifest.ts'

const sha = (c: string) => c.repeat(64)
const WIN: CatalogueEntry = {
  name: 'win11',
  displayName: 'Windows 11 Lab',
  osType: 'windows',
  default: true,
  version: '1.0.0',
  file: '/qcow2/backing/win11-1.0.0.qcow2',
  size: 123,
  sha256: sha('a'),
}
const UBU: CatalogueEntry = {
  name: 'ubuntu',
  displayName: 'Ubuntu 24.04',
  osType: 'linux',
  default: false,
  version: '24.4.1',
  file: '/qcow2/backing/ubuntu-24.4.1.qcow2',
  size: 456,
  sha256: sha('b'),
}

const manifest = (over: Partial<VmManifest>): VmManifest => ({
  format: 'labhost-vm-image/1',
  kind: 'vm-image',
  name: 'ubuntu',
  displayName: 'Ubuntu 26.04',
  os: 'linux',
  default: true,
  version: '26.4.0',
  createdAt: 0,
  image: { file: 'ubuntu-26.4.0.qcow2', size: 789, sha256: sha('c'), chunkSize: 1 << 20, chunks: [sha('c')] },
  qcow2: { virtualSize: 1, clusterSize: 65536 },
  signer: '',
  ...over,
})

const refusal = (text: string): string => {
  try {
    parseCatalogue(text, 'c.ini')
    return 'accepted'
  } catch (e) {
    return e instanceof LabhostError ? `${e.code}: ${e.message}` : String(e)
  }
}

t.test('written, read back the same; sections sorted by name', async (t) => {
  const text = formatCatalogue([WIN, UBU])
  t.same(parseCatalogue(text, 'c.ini'), [UBU, WIN])
  t.match(
    text,
    /\[ubuntu\]\nname=ubuntu\ndisplay_name=Ubuntu 24\.04\nos_type=linux\ndefault=false\nversion=24\.4\.1\nfile=\/qcow2\/backing\/ubuntu-24\.4\.1\.qcow2\nsize=456\nsha256=b{64}\n/,
  )
  t.same(parseCatalogue('', 'c.ini'), [], 'an empty file is an empty catalogue')
})

t.test('anything labhost would not write is refused with exit 72', async (t) => {
  const good = formatCatalogue([WIN])
  const cases: [string, string, RegExp][] = [
    ['a key outside a section', `name=x\n${good}`, /not key=value inside a section/],
    ['an unknown key', good.replace('version=', 'colour=red\nversion='), /unknown key colour/],
    ['a missing key', good.replace(/sha256=.*\n/, ''), /lacks sha256/],
    ['a key twice', good.replace('version=1.0.0', 'version=1.0.0\nversion=2'), /version given twice/],
    ['a section twice', `${good}\n[win11]\n`, /appears twice/],
    ['a section name that is no base name', good.replace('[win11]', '[../x]'), /not a base name/],
    ['name differing from the section', good.replace('name=win11', 'name=other'), /has name=other/],
    ['default neither true nor false', good.replace('default=true', 'default=yes'), /neither true nor false/],
    ['a relative file', good.replace('file=/qcow2', 'file=qcow2'), /not an absolute path/],
  ]
  for (const [what, text, why] of cases) {
    const r = refusal(text)
    t.match(r, /^catalogueInvalid: /, what)
    t.match(r, why, what)
  }
})

t.test('a new version replaces its section; a default base makes the others not default', async (t) => {
  const after = withBase([WIN, UBU], manifest({}), '/qcow2/backing/ubuntu-26.4.0.qcow2')
  t.same(
    after.map((e) => [e.name, e.version, e.default]),
    [
      ['win11', '1.0.0', false],
      ['ubuntu', '26.4.0', true],
    ],
  )
  const notDefault = withBase([WIN, UBU], manifest({ default: false }), '/x/ubuntu-26.4.0.qcow2')
  t.same(
    notDefault.map((e) => [e.name, e.default]),
    [
      ['win11', true],
      ['ubuntu', false],
    ],
    'a non-default base leaves the default alone',
  )
})

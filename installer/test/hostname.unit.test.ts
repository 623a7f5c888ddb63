// install.yaml's hostname setting: the pattern's placeholders and how values are made into a
// valid RFC 1123 label, the inventory (which wins), and every refusal naming the file, the key
// and the value — a config mistake when the config is read, a machine without the value the
// pattern needs before anything is written. Also what the stick's reports are named by.
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { parseConfig } from '../../lib/config.ts'
import { LabhostError } from '../../lib/errors.ts'
import { InstallConfigSchema } from '../config.ts'
import { chooseHostname, sanitize, validHostname } from '../hostname.ts'
import { reportName } from '../install.ts'
import type { Machine } from '../machine.ts'

const FILE = '/data/install.yaml'
const config = (hostname: unknown) =>
  parseConfig(
    FILE,
    YAML.stringify({ models: [{ vendor: 'Dell Inc.', product: 'OptiPlex 7010' }], disks: { ssd: { rotational: false, minSizeGiB: 1 } }, hostname }),
    InstallConfigSchema,
  )
const machine = (o: Partial<Machine> = {}): Machine => ({
  vendor: 'Dell Inc.',
  product: 'OptiPlex 7010',
  serial: '5CG1234XYZ',
  assetTag: null,
  biosVersion: '1.0',
  nics: [
    { name: 'eth0', mac: '52:54:00:12:34:56' },
    { name: 'eth1', mac: '52:54:00:ab:cd:ef' },
  ],
  ...o,
})
const choose = (hostname: unknown, m = machine()) => chooseHostname(config(hostname).hostname, m, FILE)

function refused(t: Test, fn: () => unknown, code: string, message: RegExp, what: string) {
  try {
    fn()
    t.fail(`${what}: expected a refusal`)
  } catch (e) {
    t.ok(e instanceof LabhostError && e.code === code, `${what}: ${code}`, { error: String(e) })
    t.match((e as Error).message, message, what)
  }
}

t.test('sanitizing: lower case, runs of other characters one hyphen, none at the ends', async (t) => {
  t.equal(sanitize('CN0 TEST/42'), 'cn0-test-42')
  t.equal(sanitize('  --Äbc__x..'), 'bc-x')
  t.equal(sanitize('###'), '')
  for (const ok of ['a', 'lab-01', '0lab', 'a--b', 'x'.repeat(63)]) t.ok(validHostname(ok), ok)
  for (const bad of ['', '-a', 'a-', 'A', 'a_b', 'a.b', 'x'.repeat(64)]) t.notOk(validHostname(bad), JSON.stringify(bad))
})

t.test('the pattern: {serial}, {asset}, {mac} of the first wired NIC, {a|b} the first one present', async (t) => {
  t.same(choose({ pattern: 'lab-{serial}' }), { name: 'lab-5cg1234xyz', from: 'hostname.pattern lab-{serial}' })
  t.equal(choose({ pattern: 'pc-{mac}' })?.name, 'pc-525400123456', 'the first NIC by kernel name, colons dropped')
  t.equal(choose({ pattern: 'r101-{asset}' }, machine({ assetTag: 'Room 101 / Desk 7' }))?.name, 'r101-room-101-desk-7')
  t.equal(choose({ pattern: '{serial}-x' }, machine({ serial: ' A_B ' }))?.name, 'a-b-x')
  t.equal(choose({ pattern: 'lab-{serial|mac}' }, machine({ serial: '' }))?.name, 'lab-525400123456', 'no serial: the MAC')
  t.equal(choose({ pattern: 'lab-{serial|mac}' }, machine({ serial: 'To Be Filled By O.E.M.' }))?.name, 'lab-525400123456', 'a firmware filler is no serial')
  t.equal(choose({ pattern: 'lab-{asset|serial}' }, machine({ assetTag: 'No Asset Tag' }))?.name, 'lab-5cg1234xyz')
  t.equal(choose(undefined), null, "no hostname setting: no name (the image's own stands)")
})

t.test('length: a long value loses its first characters, longest first, to fit maxLength', async (t) => {
  const serial = `SN${'0123456789'.repeat(8)}END`
  const long = choose({ pattern: 'lab-{serial}' }, machine({ serial }))!.name
  t.equal(long.length, 63)
  t.ok(long.startsWith('lab-') && long.endsWith('789end'), long)
  t.equal(choose({ pattern: 'lab-{serial}', maxLength: 15 })!.name, 'lab-5cg1234xyz', 'within maxLength: whole')
  t.equal(choose({ pattern: 'l{serial}-{mac}', maxLength: 15 })!.name, 'l234xyz-0123456', 'the longest value loses its first character, one at a time')
  t.equal(choose({ pattern: 'l{serial}-{mac}', maxLength: 10 })!.name, 'l4xyz-3456')
  // a cut that leaves a hyphen first drops it: the name never begins with one
  t.equal(choose({ pattern: '{serial}', maxLength: 4 }, machine({ serial: 'ab-cde' }))!.name, 'cde')
})

t.test('refused at install time, nothing written: no usable value for the pattern, quoting file, key and value', async (t) => {
  refused(
    t,
    () => choose({ pattern: 'lab-{serial}' }, machine({ serial: null })),
    'hostnameUnavailable',
    /^\/data\/install\.yaml: hostname\.pattern: "lab-\{serial\}" gives no name for this machine: \{serial\} has no usable value \(serial absent\)/,
    'no serial',
  )
  refused(
    t,
    () => choose({ pattern: 'lab-{serial}' }, machine({ serial: '' })),
    'hostnameUnavailable',
    /\{serial\} has no usable value \(serial ""\)/,
    'an empty serial',
  )
  refused(
    t,
    () => choose({ pattern: 'lab-{serial}' }, machine({ serial: '#*#' })),
    'hostnameUnavailable',
    /serial "#\*#"; empty after sanitizing, or a firmware filler/,
    'a serial of no letters or digits',
  )
  refused(
    t,
    () => choose({ pattern: 'lab-{serial}' }, machine({ serial: 'System Serial Number' })),
    'hostnameUnavailable',
    /serial "System Serial Number"; empty after sanitizing, or a firmware filler/,
    'a firmware filler',
  )
  refused(
    t,
    () => choose({ pattern: 'lab-{serial|asset|mac}' }, machine({ serial: null, nics: [] })),
    'hostnameUnavailable',
    /\{serial\|asset\|mac\} has no usable value \(serial absent, asset absent, mac absent\)/,
    'none of the alternatives',
  )
})

t.test('the inventory: by serial (any case) or by the MAC of any wired NIC; it wins over the pattern', async (t) => {
  const inventory = [
    { serial: '5cg1234xyz', name: 'r101-pc01' },
    { mac: '52-54-00-AB-CD-EF', name: 'r101-pc02' },
    { serial: 'OTHER', name: 'r101-pc03' },
  ]
  t.same(choose({ pattern: 'lab-{serial}', inventory: [inventory[2], inventory[0]] }), { name: 'r101-pc01', from: 'hostname.inventory.1 (serial 5cg1234xyz)' })
  t.same(
    choose({ pattern: 'lab-{serial}', inventory: inventory.slice(1) }),
    { name: 'r101-pc02', from: 'hostname.inventory.0 (MAC 52:54:00:ab:cd:ef)' },
    "the second NIC's MAC",
  )
  t.equal(choose({ inventory }, machine({ serial: '5CG1234XYZ', nics: [] }))?.name, 'r101-pc01', 'an inventory alone')
  t.equal(choose({ pattern: 'lab-{serial}', inventory: inventory.slice(2) })?.name, 'lab-5cg1234xyz', 'not in the inventory: the pattern')
  refused(
    t,
    () => choose({ inventory: inventory.slice(2) }),
    'hostnameUnavailable',
    /^\/data\/install\.yaml: hostname\.inventory has no entry for this machine \(serial "5CG1234XYZ", .*NICs 52:54:00:12:34:56 52:54:00:ab:cd:ef\) and hostname\.pattern is not set/,
    'not in the inventory, no pattern',
  )
  refused(
    t,
    () => choose({ inventory: inventory.slice(0, 2) }),
    'hostnameUnavailable',
    /hostname\.inventory: entries 0 and 1 both match this machine and name it "r101-pc01" and "r101-pc02"/,
    'two entries for one machine',
  )
})

t.test('refused when install.yaml is read: file, key path and value in one line', async (t) => {
  const cases: [unknown, RegExp][] = [
    [{ pattern: 'lab-{serail}' }, /hostname\.pattern: not a host name pattern: unknown placeholder \{serail\}.*; found value "lab-\{serail\}"/],
    [{ pattern: 'Lab-{serial}' }, /hostname\.pattern: .*fixed text may hold only lower-case letters, digits and hyphens; found value "Lab-\{serial\}"/],
    [{ pattern: 'lab_{serial}' }, /hostname\.pattern: .*fixed text may hold only.*; found value "lab_\{serial\}"/],
    [{ pattern: 'lab-pc' }, /hostname\.pattern: .*no placeholder, so every host would get the same name; found value "lab-pc"/],
    [{ pattern: '-{serial}' }, /hostname\.pattern: .*must not begin or end with a hyphen; found value "-\{serial\}"/],
    [{ pattern: 'lab-{serial' }, /hostname\.pattern: .*unmatched/],
    [{ pattern: '' }, /hostname\.pattern: .*found value ""/],
    [{}, /hostname: give a pattern, an inventory, or both/],
    [
      { pattern: 'verylongprefix-{serial}', maxLength: 15 },
      /hostname\.pattern: its fixed text leaves no room for the values within maxLength 15; found value "verylongprefix-\{serial\}"/,
    ],
    [{ inventory: [{ serial: 'X1', name: 'PC_01' }] }, /hostname\.inventory\.0\.name: not a valid host name.*; found value "PC_01"/],
    [{ inventory: [{ serial: 'X1', name: 'x'.repeat(64) }] }, /hostname\.inventory\.0\.name: not a valid host name/],
    [{ inventory: [{ serial: 'X1', mac: '52:54:00:12:34:56', name: 'pc' }] }, /hostname\.inventory\.0: give exactly one of serial and mac/],
    [{ inventory: [{ mac: '52:54:00:12:34', name: 'pc' }] }, /hostname\.inventory\.0\.mac: not a MAC address.*; found value "52:54:00:12:34"/],
    [
      {
        inventory: [
          { serial: 'X1', name: 'pc1' },
          { serial: 'x1', name: 'pc2' },
        ],
      },
      /hostname\.inventory\.1: the same serial x1 as inventory entry 0/,
    ],
    [
      {
        inventory: [
          { mac: '52:54:00:12:34:56', name: 'pc1' },
          { mac: '525400123456', name: 'pc2' },
        ],
      },
      /hostname\.inventory\.1: the same mac 52:54:00:12:34:56 as inventory entry 0/,
    ],
    [
      {
        inventory: [
          { serial: 'X1', name: 'pc1' },
          { serial: 'X2', name: 'pc1' },
        ],
      },
      /hostname\.inventory\.1: the same name pc1 as inventory entry 0/,
    ],
    [{ pattern: 'lab-{serial}', prefix: 'x' }, /hostname: .*found unknown key\(s\) prefix/],
  ]
  for (const [h, message] of cases) refused(t, () => config(h), 'configInvalid', new RegExp(`^/data/install\\.yaml: ${message.source}`), JSON.stringify(h))
})

t.test('reports on the stick are named by the host name, else the serial, else the MAC', async (t) => {
  t.equal(reportName('r101-pc01', machine()), 'r101-pc01')
  t.equal(reportName(null, machine({ serial: 'CN0 TEST/42' })), 'CN0_TEST_42')
  t.equal(reportName(null, machine({ serial: 'To Be Filled By O.E.M.' })), 'mac-525400123456')
  t.equal(reportName(null, machine({ serial: null, nics: [] })), 'unknown-machine')
  t.equal(reportName(null, null), 'unknown-machine', 'no DMI at all')
})

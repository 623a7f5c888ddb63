// BIOS settings: the sysfs backend against a firmware-attributes tree laid out as the kernel's
// ABI document describes (no real BIOS is exercised here), and the cctk backend against a
// recorded cctk CLI (fixtures/cctk).
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { applyBios, planBios } from '../bios.ts'
import { InstallConfigSchema } from '../config.ts'

const bios = (b: object) =>
  InstallConfigSchema.parse({ models: [{ vendor: 'Dell Inc.', product: 'X' }], disks: { ssd: { rotational: false, minSizeGiB: 1 } }, bios: b }).bios

function firmware(t: Test, o: { password?: boolean } = {}): { sys: string; dir: string } {
  const sys = tmpDir(t)
  const dir = `${sys}/class/firmware-attributes/dell-wmi-sysman`
  const attr = (name: string, files: Record<string, string>) => {
    fs.mkdirSync(`${dir}/attributes/${name}`, { recursive: true })
    for (const [f, v] of Object.entries(files)) fs.writeFileSync(`${dir}/attributes/${name}/${f}`, `${v}\n`)
  }
  attr('Virtualization', {
    type: 'enumeration',
    current_value: 'Disabled',
    possible_values: 'Disabled;Enabled',
    default_value: 'Enabled',
    display_name: 'Enable Intel Virtualization Technology',
  })
  attr('VtForDirectIo', {
    type: 'enumeration',
    current_value: 'Enabled',
    possible_values: 'Disabled;Enabled',
    default_value: 'Enabled',
    display_name: 'VT for Direct I/O',
  })
  attr('WakeOnLan', {
    type: 'enumeration',
    current_value: 'Disabled',
    possible_values: 'Disabled;LanOnly;LanWithPxeBoot;WlanOnly',
    default_value: 'Disabled',
    display_name: 'Wake on LAN',
  })
  attr('AcPwrRcvryUserDefTime', {
    type: 'integer',
    current_value: '0',
    min_value: '0',
    max_value: '23',
    scalar_increment: '1',
    default_value: '0',
    display_name: 'AC recovery hour',
  })
  fs.writeFileSync(`${dir}/attributes/pending_reboot`, '0\n')
  fs.mkdirSync(`${dir}/authentication/Admin`, { recursive: true })
  fs.writeFileSync(`${dir}/authentication/Admin/is_enabled`, o.password ? '1\n' : '0\n')
  fs.writeFileSync(`${dir}/authentication/Admin/current_password`, '')
  return { sys, dir }
}

t.test('sysfs: only differing attributes are written, with the password, which is cleared after', async (t) => {
  const { sys, dir } = firmware(t, { password: true })
  const cfgDir = tmpDir(t)
  fs.writeFileSync(`${cfgDir}/bios.pw`, 's3cret-admin\n')
  const vtdBefore = fs.statSync(`${dir}/attributes/VtForDirectIo/current_value`).mtimeMs
  const b = bios({ passwordFile: 'bios.pw', settings: { Virtualization: 'Enabled', VtForDirectIo: 'Enabled', WakeOnLan: 'LanOnly' } })
  const plan = await planBios(b, sys)
  t.same(plan.changes, [
    { name: 'Virtualization', from: 'Disabled', to: 'Enabled' },
    { name: 'WakeOnLan', from: 'Disabled', to: 'LanOnly' },
  ])
  t.same(plan.unchanged, ['VtForDirectIo'])
  t.equal(fs.readFileSync(`${dir}/attributes/Virtualization/current_value`, 'utf8'), 'Disabled\n', 'planning writes nothing')
  fs.writeFileSync(`${dir}/attributes/pending_reboot`, '1\n') // what the firmware reports once a change is staged
  const r = await applyBios(plan, b, `${cfgDir}/install.yaml`, sys)
  t.equal(fs.readFileSync(`${dir}/attributes/Virtualization/current_value`, 'utf8'), 'Enabled')
  t.equal(fs.readFileSync(`${dir}/attributes/WakeOnLan/current_value`, 'utf8'), 'LanOnly')
  t.equal(fs.statSync(`${dir}/attributes/VtForDirectIo/current_value`).mtimeMs, vtdBefore, 'an attribute already right is not written')
  t.equal(fs.readFileSync(`${dir}/authentication/Admin/current_password`, 'utf8'), '', 'the password is cleared from the session')
  t.equal(r.pendingReboot, true)
  t.notMatch(JSON.stringify(r), /s3cret/, 'the password is in no result')
})

t.test('sysfs refusals before any write: unknown attribute, value not possible, integer out of range, password missing', async (t) => {
  const { sys, dir } = firmware(t, { password: true })
  await t.rejects(planBios(bios({ settings: { SecureBootMode: 'On' } }), sys), {
    code: 'biosFailed',
    message: /no BIOS attribute SecureBootMode .*some it has: AcPwrRcvryUserDefTime, Virtualization/,
  })
  await t.rejects(planBios(bios({ settings: { WakeOnLan: 'Always' } }), sys), {
    code: 'biosFailed',
    message: /WakeOnLan cannot be "Always" \(possible: Disabled, LanOnly, LanWithPxeBoot, WlanOnly\)/,
  })
  await t.rejects(planBios(bios({ settings: { AcPwrRcvryUserDefTime: '24' } }), sys), { code: 'biosFailed', message: /integer in 0\.\.23/ })
  const b = bios({ settings: { Virtualization: 'Enabled' } })
  await t.rejects(applyBios(await planBios(b, sys), b, '/nonexistent/install.yaml', sys), {
    code: 'biosFailed',
    message: /admin password and install\.yaml names no bios\.passwordFile/,
  })
  t.equal(fs.readFileSync(`${dir}/attributes/Virtualization/current_value`, 'utf8'), 'Disabled\n', 'nothing written')
})

t.test('sysfs: a value the firmware does not take is caught by the read-back', async (t) => {
  const { sys, dir } = firmware(t)
  const b = bios({ settings: { Virtualization: 'Enabled' } })
  const plan = await planBios(b, sys)
  fs.rmSync(`${dir}/attributes/Virtualization/current_value`)
  fs.symlinkSync('/dev/null', `${dir}/attributes/Virtualization/current_value`) // swallows writes, reads empty
  await t.rejects(applyBios(plan, b, '/x/install.yaml', sys), { code: 'biosFailed', message: /Virtualization reads "" after writing "Enabled"/ })
})

t.test('no settings asked: nothing to do; settings asked on a machine without any backend: refused', async (t) => {
  const sys = tmpDir(t)
  t.same(await planBios(bios({}), sys), { backend: 'none', where: null, changes: [], unchanged: [] })
  const saved = process.env.PATH
  process.env.PATH = '/nonexistent'
  t.teardown(() => {
    process.env.PATH = saved
  })
  await t.rejects(planBios(bios({ settings: { Virtualization: 'Enabled' } }), sys), {
    code: 'biosFailed',
    message: /neither the firmware-attributes class nor cctk/,
  })
  t.same((await planBios(bios({ backend: 'none', settings: { Virtualization: 'Enabled' } }), sys)).backend, 'none', 'backend: none skips them')
})

t.test('cctk: reads, changes only what differs, with the setup password, never echoing it', async (t) => {
  const d = tmpDir(t)
  process.env.CCTK_STATE = `${d}/state`
  fs.writeFileSync(`${d}/state`, 'Virtualization=Disabled\nVtForDirectIo=Enabled\nWakeOnLan=Disabled\n')
  fs.writeFileSync(`${d}/state.pwd`, 'pa55word')
  fs.writeFileSync(`${d}/pw`, 'pa55word\n')
  fs.writeFileSync(`${d}/wrong`, 'nope\n')
  const saved = process.env.PATH
  process.env.PATH = `${path.join(import.meta.dirname, 'fixtures')}:${saved}`
  t.teardown(() => {
    process.env.PATH = saved
    delete process.env.CCTK_STATE
  })
  const sys = tmpDir(t)
  const wrong = bios({ backend: 'cctk', passwordFile: `${d}/wrong`, settings: { Virtualization: 'Enabled', VtForDirectIo: 'Enabled', WakeOnLan: 'LanOnly' } })
  const plan = await planBios(wrong, sys)
  t.equal(plan.backend, 'cctk')
  t.same(
    plan.changes.map((c) => c.name),
    ['Virtualization', 'WakeOnLan'],
  )
  await t.rejects(applyBios(plan, wrong, `${d}/install.yaml`, sys), {
    code: 'biosFailed',
    message: /cctk refused the settings \(exit 58\): The setup password provided is incorrect/,
  })
  t.equal(fs.readFileSync(`${d}/state`, 'utf8'), 'Virtualization=Disabled\nVtForDirectIo=Enabled\nWakeOnLan=Disabled\n', 'a refused password changes nothing')
  const right = { ...wrong, passwordFile: `${d}/pw` }
  const r = await applyBios(plan, right, `${d}/install.yaml`, sys)
  t.equal(fs.readFileSync(`${d}/state`, 'utf8'), 'Virtualization=Enabled\nVtForDirectIo=Enabled\nWakeOnLan=LanOnly\n')
  t.equal(r.pendingReboot, null, 'cctk does not say whether a reboot is pending')
  await t.rejects(planBios(bios({ backend: 'cctk', settings: { NoSuchThing: 'On' } }), sys), {
    code: 'biosFailed',
    message: /cctk cannot read NoSuchThing: Invalid argument/,
  })
})

// The admin password never leaves labhost except into the firmware: not in an error (message,
// hint, --json), whatever cctk prints or the password file holds. cctk takes it only as an
// argument (--ValSetupPwd): that one write call is its only exposure (docs/design.md, security model).
const PASSWORD = 'pa55word'

/** A cctk that logs its arguments (one call per line) and fails a write by echoing them all. */
function echoingCctk(t: Test): { dir: string; calls: () => string[][] } {
  const dir = tmpDir(t)
  fs.writeFileSync(
    `${dir}/cctk`,
    `#!/bin/sh
printf '%s\\0' "$@" >> "${dir}/argv"; echo >> "${dir}/argv"
case "$1" in
  --*=*) echo "Error: invalid option(s) in: $*" >&2; echo "usage: cctk [option]=[value] ... $*"; exit 119 ;;
  --*) echo "\${1#--}=Disabled" ;;
esac
`,
    { mode: 0o755 },
  )
  return {
    dir,
    calls: () =>
      fs.existsSync(`${dir}/argv`)
        ? fs
            .readFileSync(`${dir}/argv`, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => l.split('\0').filter(Boolean))
        : [],
  }
}

function usingCctk(t: Test, dir: string): void {
  const saved = process.env.PATH
  process.env.PATH = `${dir}:${saved}`
  t.teardown(() => {
    process.env.PATH = saved
  })
}

/** Every text of a LabhostError a person or a report could see. */
const shown = (e: unknown) => {
  const err = e as { message: string; hint: string; stack?: string; toJSON?: () => unknown }
  return [err.message, err.hint, err.stack ?? '', JSON.stringify(err.toJSON?.() ?? {})].join('\n')
}

async function failure(p: Promise<unknown>): Promise<unknown> {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error('expected a refusal')
}

t.test('cctk fails echoing its command line: the password is in no error, whatever whitespace it has', async (t) => {
  const cctk = echoingCctk(t)
  usingCctk(t, cctk.dir)
  const d = tmpDir(t)
  for (const content of [`${PASSWORD}\n`, `${PASSWORD} \n`, ` ${PASSWORD}\r\n`]) {
    fs.writeFileSync(`${d}/pw`, content)
    const b = bios({ backend: 'cctk', passwordFile: `${d}/pw`, settings: { Virtualization: 'Enabled' } })
    const plan = await planBios(b, tmpDir(t))
    const e = await failure(applyBios(plan, b, `${d}/install.yaml`, tmpDir(t)))
    t.match(e, { name: 'LabhostError', code: 'biosFailed', message: /cctk refused the settings \(exit 119\)/ }, `${JSON.stringify(content)}: refused`)
    t.notMatch(shown(e), PASSWORD, 'the password is not in the message, the hint or the JSON')
  }
  const calls = cctk.calls()
  t.ok(calls.length >= 6, 'cctk ran')
  t.same(
    calls.filter((c) => c.some((a) => a.includes(PASSWORD))).map((c) => c[0]),
    ['--Virtualization=Enabled', '--Virtualization=Enabled', '--Virtualization=Enabled'],
    'only the write calls carry the password, never a read',
  )
})

t.test('a malformed password file is refused without showing its content, before cctk is given it', async (t) => {
  const cctk = echoingCctk(t)
  usingCctk(t, cctk.dir)
  const d = tmpDir(t)
  const files: [string, string | Buffer, RegExp][] = [
    ['a NUL byte', `${PASSWORD}\0tail\n`, /control character/],
    ['two lines', `${PASSWORD}\nsecond-${PASSWORD}\n`, /2 lines/],
    ['a control character', `${PASSWORD}\u001b[2J\n`, /control character/],
    ['empty', '\n', /is empty/],
    ['not a password file', Buffer.alloc(1 << 20, `${PASSWORD}.`), /longer than 1024 bytes/],
  ]
  for (const [name, content, why] of files) {
    fs.writeFileSync(`${d}/pw`, content)
    const b = bios({ backend: 'cctk', passwordFile: `${d}/pw`, settings: { Virtualization: 'Enabled' } })
    const plan = await planBios(b, tmpDir(t))
    const e = await failure(applyBios(plan, b, `${d}/install.yaml`, tmpDir(t)))
    t.match(e, { name: 'LabhostError', code: 'biosFailed', message: why }, `${name}: refused, biosFailed`)
    t.match((e as Error).message, `${d}/pw`, 'names the file')
    t.notMatch(shown(e), PASSWORD, 'not its content')
  }
  t.notOk(
    cctk.calls().some((c) => c.some((a) => a.includes('ValSetupPwd'))),
    'cctk was never given a password',
  )
})

t.test('sysfs: the password goes only into the firmware session, never into an argument or an error', async (t) => {
  const { sys, dir } = firmware(t, { password: true })
  const d = tmpDir(t)
  fs.writeFileSync(`${d}/pw`, `${PASSWORD}\nsecond line\n`)
  const b = bios({ passwordFile: `${d}/pw`, settings: { Virtualization: 'Enabled' } })
  const plan = await planBios(b, sys)
  const e = await failure(applyBios(plan, b, `${d}/install.yaml`, sys))
  t.match(e, { code: 'biosFailed', message: /2 lines/ })
  t.notMatch(shown(e), PASSWORD, 'a malformed file: not shown')
  t.equal(fs.readFileSync(`${dir}/authentication/Admin/current_password`, 'utf8'), '', 'nothing was written to the firmware session')
  t.equal(fs.readFileSync(`${dir}/attributes/Virtualization/current_value`, 'utf8'), 'Disabled\n', 'nor any setting')
  // a firmware that refuses the setting (a read-only attribute): the error names it, not the password
  fs.writeFileSync(`${d}/pw`, `${PASSWORD}\n`)
  fs.rmSync(`${dir}/attributes/Virtualization/current_value`)
  fs.mkdirSync(`${dir}/attributes/Virtualization/current_value`)
  const refused = await failure(applyBios(plan, b, `${d}/install.yaml`, sys))
  t.match(refused, { code: 'biosFailed', message: /the firmware refused Virtualization=Enabled/ })
  t.notMatch(shown(refused), PASSWORD)
  t.equal(fs.readFileSync(`${dir}/authentication/Admin/current_password`, 'utf8'), '', 'and the session is cleared after the refusal')
})

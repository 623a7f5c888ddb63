// BIOS settings: the sysfs backend against a firmware-attributes tree laid out as the kernel's
// ABI document describes (no real BIOS is exercised here), and the cctk backend against a
// recorded cctk CLI (fixtures/cctk).
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { tmpDir } from '../../lib/test-helpers.ts'
import { applyBios, planBios } from '../bios.ts'
import { InstallConfigSchema } from '../config.ts'

const bios = (b: object) => InstallConfigSchema.parse({ models: [{ vendor: 'Dell Inc.', product: 'X' }], disks: { ssd: { rotational: false, minSizeGiB: 1 } }, bios: b }).bios

function firmware(t: Test, o: { password?: boolean } = {}): { sys: string; dir: string } {
  const sys = tmpDir(t)
  const dir = `${sys}/class/firmware-attributes/dell-wmi-sysman`
  const attr = (name: string, files: Record<string, string>) => {
    fs.mkdirSync(`${dir}/attributes/${name}`, { recursive: true })
    for (const [f, v] of Object.entries(files)) fs.writeFileSync(`${dir}/attributes/${name}/${f}`, `${v}\n`)
  }
  attr('Virtualization', { type: 'enumeration', current_value: 'Disabled', possible_values: 'Disabled;Enabled', default_value: 'Enabled', display_name: 'Enable Intel Virtualization Technology' })
  attr('VtForDirectIo', { type: 'enumeration', current_value: 'Enabled', possible_values: 'Disabled;Enabled', default_value: 'Enabled', display_name: 'VT for Direct I/O' })
  attr('WakeOnLan', { type: 'enumeration', current_value: 'Disabled', possible_values: 'Disabled;LanOnly;LanWithPxeBoot;WlanOnly', default_value: 'Disabled', display_name: 'Wake on LAN' })
  attr('AcPwrRcvryUserDefTime', { type: 'integer', current_value: '0', min_value: '0', max_value: '23', scalar_increment: '1', default_value: '0', display_name: 'AC recovery hour' })
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
  t.same(plan.changes, [{ name: 'Virtualization', from: 'Disabled', to: 'Enabled' }, { name: 'WakeOnLan', from: 'Disabled', to: 'LanOnly' }])
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
  await t.rejects(planBios(bios({ settings: { SecureBootMode: 'On' } }), sys), { code: 'biosFailed', message: /no BIOS attribute SecureBootMode .*some it has: AcPwrRcvryUserDefTime, Virtualization/ })
  await t.rejects(planBios(bios({ settings: { WakeOnLan: 'Always' } }), sys), { code: 'biosFailed', message: /WakeOnLan cannot be "Always" \(possible: Disabled, LanOnly, LanWithPxeBoot, WlanOnly\)/ })
  await t.rejects(planBios(bios({ settings: { AcPwrRcvryUserDefTime: '24' } }), sys), { code: 'biosFailed', message: /integer in 0\.\.23/ })
  const b = bios({ settings: { Virtualization: 'Enabled' } })
  await t.rejects(applyBios(await planBios(b, sys), b, '/nonexistent/install.yaml', sys), { code: 'biosFailed', message: /admin password and install\.yaml names no bios\.passwordFile/ })
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
  t.teardown(() => { process.env.PATH = saved })
  await t.rejects(planBios(bios({ settings: { Virtualization: 'Enabled' } }), sys), { code: 'biosFailed', message: /neither the firmware-attributes class nor cctk/ })
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
  t.teardown(() => { process.env.PATH = saved; delete process.env.CCTK_STATE })
  const sys = tmpDir(t)
  const wrong = bios({ backend: 'cctk', passwordFile: `${d}/wrong`, settings: { Virtualization: 'Enabled', VtForDirectIo: 'Enabled', WakeOnLan: 'LanOnly' } })
  const plan = await planBios(wrong, sys)
  t.equal(plan.backend, 'cctk')
  t.same(plan.changes.map((c) => c.name), ['Virtualization', 'WakeOnLan'])
  await t.rejects(applyBios(plan, wrong, `${d}/install.yaml`, sys), { code: 'biosFailed', message: /cctk refused the settings \(exit 58\): The setup password provided is incorrect/ })
  t.equal(fs.readFileSync(`${d}/state`, 'utf8'), 'Virtualization=Disabled\nVtForDirectIo=Enabled\nWakeOnLan=Disabled\n', 'a refused password changes nothing')
  const right = { ...wrong, passwordFile: `${d}/pw` }
  const r = await applyBios(plan, right, `${d}/install.yaml`, sys)
  t.equal(fs.readFileSync(`${d}/state`, 'utf8'), 'Virtualization=Enabled\nVtForDirectIo=Enabled\nWakeOnLan=LanOnly\n')
  t.equal(r.pendingReboot, null, 'cctk does not say whether a reboot is pending')
  await t.rejects(planBios(bios({ backend: 'cctk', settings: { NoSuchThing: 'On' } }), sys), { code: 'biosFailed', message: /cctk cannot read NoSuchThing: Invalid argument/ })
})

// The host image's pull-mode units (issue 18): labhost-update.timer with a randomized delay and a
// repeat, enabled in timers.target but kept from running by its conditions unless a channel URL
// is configured (/persistent/labhost/channel.url or /etc/labhost/channel.url); its service runs
// `labhost update --channel URL --reboot`. Checked on the rendered recipe, and with
// systemd-analyze verify where it is installed (no VM is booted).
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { loadRecipe } from '../recipe.ts'

const { recipe } = loadRecipe('host')
const file = (p: string) => recipe.files.find((f) => f.path === p)?.content ?? ''
/** `key=value` lines of a unit, in order (comments and section headers left out). */
const keys = (unit: string) =>
  unit
    .split('\n')
    .filter((l) => /^\w+=/.test(l))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const)

t.test('labhost-update.timer: randomized, repeating, enabled, and conditional on a channel URL', async (t) => {
  const timer = file('/etc/systemd/system/labhost-update.timer')
  t.ok(timer, 'the timer is in the image')
  const k = keys(timer)
  const get = (name: string) => k.filter(([n]) => n === name).map(([, v]) => v)
  t.match(get('RandomizedDelaySec')[0], /^\d+(min|s|h)$/, 'a randomized delay')
  t.match(get('OnUnitActiveSec')[0], /^\d+(min|s|h)$/, 'repeats')
  t.ok(get('OnBootSec').length, 'first run after boot')
  t.same(get('ConditionFileNotEmpty'), ['|/persistent/labhost/channel.url', '|/etc/labhost/channel.url'], 'runs only where a channel is named (either file)')
  t.match(timer, /\[Install\]\nWantedBy=timers\.target/)
  t.ok(
    recipe.links?.some(
      (l) => l.path === '/etc/systemd/system/timers.target.wants/labhost-update.timer' && l.target === '/etc/systemd/system/labhost-update.timer',
    ),
    'enabled (its conditions decide)',
  )
})

t.test('labhost-update.service: follows the configured channel, reboots into the trial, refreshes the metrics', async (t) => {
  const service = file('/etc/systemd/system/labhost-update.service')
  const k = keys(service)
  const get = (name: string) => k.filter(([n]) => n === name).map(([, v]) => v)
  t.same(get('Type'), ['oneshot'])
  t.same(get('ConditionFileNotEmpty'), ['|/persistent/labhost/channel.url', '|/etc/labhost/channel.url'])
  t.match(
    get('ExecStart')[0],
    /\/persistent\/labhost\/channel\.url.*\/etc\/labhost\/channel\.url.*\/usr\/sbin\/labhost update --channel "\$url" \$opts --reboot/,
  )
  t.match(get('ExecStopPost')[0], /labhost status --prometheus --out \/run\/labhost\/metrics\/labhost\.prom/)
  t.ok(get('After')[0]?.includes('network-online.target'))
  t.notOk(
    recipe.files.some((f) => f.path === '/etc/labhost/channel.url'),
    'the shipped image names no channel: pull mode stays off until an admin sets one',
  )
})

t.test("the service's command line, run by sh: the per-host file's URL and options first, else the image's", async (t) => {
  const d = tmpDir(t)
  const persistent = path.join(d, 'persistent-channel.url')
  const image = path.join(d, 'etc-channel.url')
  // the ExecStart line with its files moved here and labhost replaced by printing its arguments
  const command = /^\/bin\/sh -c '(.*)'$/
    .exec(file('/etc/systemd/system/labhost-update.service').match(/^ExecStart=(.*)$/m)![1]!)![1]!
    .replaceAll('/persistent/labhost/channel.url', persistent)
    .replaceAll('/etc/labhost/channel.url', image)
    .replace('/usr/sbin/labhost', `printf '%s\\n'`)
  const argv = () => spawnSync('/bin/sh', ['-c', command], { encoding: 'utf8' }).stdout.trimEnd().split('\n')
  fs.writeFileSync(image, 'http://images.lab/channel.json\n')
  t.same(argv(), ['update', '--channel', 'http://images.lab/channel.json', '--reboot'], "the image's URL alone")
  fs.writeFileSync(persistent, 'http://10.0.0.1/lab-b.json --torrent --peers upstream --tracker http://10.0.0.1:6969/announce\n# a comment line\n')
  t.same(
    argv(),
    ['update', '--channel', 'http://10.0.0.1/lab-b.json', '--torrent', '--peers', 'upstream', '--tracker', 'http://10.0.0.1:6969/announce', '--reboot'],
    "the host's own file wins, its options passed as words",
  )
  fs.writeFileSync(persistent, 'http://10.0.0.1/*.json')
  t.same(argv(), ['update', '--channel', 'http://10.0.0.1/*.json', '--reboot'], 'no trailing newline, no glob expansion')
})

t.test('systemd-analyze verify accepts both units (where systemd-analyze is installed)', async (t) => {
  if (spawnSync('systemd-analyze', ['--version']).error) {
    t.comment('systemd-analyze is not installed: the key checks above stand in')
    return
  }
  const d = tmpDir(t)
  for (const name of ['labhost-update.service', 'labhost-update.timer']) fs.writeFileSync(path.join(d, name), file(`/etc/systemd/system/${name}`))
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', './labhost-update.timer', './labhost-update.service'], { cwd: d, encoding: 'utf8' })
  t.equal(r.status, 0, 'systemd-analyze verify', { output: r.stdout + r.stderr })
  t.equal(
    r.stderr
      .split('\n')
      .filter((l) => /labhost-update/.test(l))
      .join('\n'),
    '',
    'nothing said about our units',
  )
})

// npm run build (run by npm test before the tests) gives one executable that works alone:
// copied to an empty directory, with no node_modules and no node on PATH, it switches a real
// loop device.
import fs from 'node:fs'
import path from 'node:path'
import { execa } from 'execa'
import t from 'tap'
import { failDiag, loop, REPO_ROOT, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { makeGptDisk, sgdiskVerify, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'

t.test('dist/labhost runs with nothing beside it', async (t) => {
  t.ok(fs.existsSync(path.join(REPO_ROOT, 'dist/labhost')), 'dist/labhost is built')
  const dir = tmpDir(t)
  const exe = path.join(dir, 'labhost')
  fs.copyFileSync(path.join(REPO_ROOT, 'dist/labhost'), exe)
  fs.chmodSync(exe, 0o755)
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }
  const v = await execa(exe, ['--version'], { cwd: dir, env, extendEnv: false, reject: false })
  t.match(String(v.stdout), /^labhost \d+\.\d+\.\d+/)
  t.equal(String(v.stderr), '', 'no warnings printed')

  const dev = await loop(t, sparseFile(path.join(dir, 'disk.img'), 32 << 20))
  await makeGptDisk(dev, STANDARD_LAYOUT)
  const sw = await execa(exe, ['slots', 'switch', '--disk', dev, '--to', 'B', '--json'], { cwd: dir, env, extendEnv: false, reject: false })
  t.equal(sw.exitCode, 0, 'switch exits 0', failDiag(sw))
  t.equal(JSON.parse(String(sw.stdout)).to, 'B')
  const st = await execa(exe, ['slots', 'status', '--disk', dev, '--json'], { cwd: dir, env, extendEnv: false, reject: false })
  t.equal(JSON.parse(String(st.stdout)).active, 'B')
  t.match(await sgdiskVerify(dev), /No problems found/)
})

// Fault injection lives in lib/faults.ts and is compiled out of the release build: the variable
// that makes the test build switch without CRC compensation (and so brick a host) does nothing
// to dist/labhost. The fault-enabled build obeys it, so this test can tell the two apart.
t.test('the release executable ignores fault-injection variables; dist/labhost-faults obeys them', async (t) => {
  for (const f of ['dist/labhost.cjs', 'dist/labhost-faults.cjs']) t.ok(fs.existsSync(path.join(REPO_ROOT, f)), `${f} is built`)
  t.notMatch(fs.readFileSync(path.join(REPO_ROOT, 'dist/labhost.cjs'), 'utf8'), /LABHOST_FAULT_/, 'the release bundle names no fault variable')
  const dir = tmpDir(t)
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LABHOST_FAULT_SKIP_CRC_COMPENSATION: '1' }
  for (const [exe, naive] of [
    ['dist/labhost', false],
    ['dist/labhost-faults', true],
  ] as const) {
    const dev = await loop(t, sparseFile(path.join(dir, `${path.basename(exe)}.img`), 32 << 20))
    await makeGptDisk(dev, STANDARD_LAYOUT)
    const sw = await execa(path.join(REPO_ROOT, exe), ['slots', 'switch', '--disk', dev, '--to', 'B', '--json'], {
      cwd: dir,
      env,
      extendEnv: false,
      reject: false,
    })
    const st = await execa(path.join(REPO_ROOT, exe), ['slots', 'status', '--disk', dev, '--json'], { cwd: dir, env, extendEnv: false, reject: false })
    const status = JSON.parse(String(st.stdout))
    if (naive) {
      t.not(sw.exitCode, 0, `${exe}: the naive switch is refused by its own read-back`)
      t.notOk(status.primaryValid, `${exe}: the primary GPT's entry-array CRC is wrong (the injected fault)`)
    } else {
      t.equal(sw.exitCode, 0, `${exe}: switch exits 0`, failDiag(sw))
      t.ok(status.primaryValid && status.backupValid && status.active === 'B', `${exe}: both GPTs valid, slot B active`)
      t.match(await sgdiskVerify(dev), /No problems found/, `${exe}: sgdisk -v finds no problem`)
    }
  }
})

// The campaign's hold points (lib/faults.ts holdAt): the fault-enabled build stops before each
// sector write of the switch (and after the last) until a line arrives on the hold device, so the harness can reset the
// machine exactly between arming the trial and the mirror write; the release build never waits.
t.test('LABHOST_FAULT_HOLD: dist/labhost-faults waits before each switch write until told to go; dist/labhost does not', async (t) => {
  const dir = tmpDir(t)
  const fifo = path.join(dir, 'hold')
  await execa('mkfifo', [fifo])
  // opened read-write here, so the child's read-only open does not block and the FIFO never sees EOF
  const writer = fs.openSync(fifo, 'r+')
  t.teardown(() => fs.closeSync(writer))
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LABHOST_FAULT_HOLD: fifo }
  const active = (dev: string) => {
    const d = openGptDisk(dev)
    try {
      return slotStatus(readGpt(d)).active
    } finally {
      d.close()
    }
  }

  const release = await loop(t, sparseFile(path.join(dir, 'release.img'), 32 << 20))
  await makeGptDisk(release, STANDARD_LAYOUT)
  const r = await execa(path.join(REPO_ROOT, 'dist/labhost'), ['slots', 'switch', '--disk', release, '--to', 'B'], {
    cwd: dir,
    env,
    extendEnv: false,
    reject: false,
    timeout: 60_000,
  })
  t.equal(r.exitCode, 0, 'the release build switched without waiting', failDiag(r))
  t.notMatch(String(r.stderr), /LABHOST-HOLD/)
  t.equal(active(release), 'B')

  const dev = await loop(t, sparseFile(path.join(dir, 'faults.img'), 32 << 20))
  await makeGptDisk(dev, STANDARD_LAYOUT)
  const child = execa(path.join(REPO_ROOT, 'dist/labhost-faults'), ['slots', 'switch', '--disk', dev, '--to', 'B'], {
    cwd: dir,
    env,
    extendEnv: false,
    reject: false,
    timeout: 120_000,
  })
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  const held = async (point: string) => {
    for (let i = 0; i < 600 && !stderr.includes(`LABHOST-HOLD ${point}`); i++) await new Promise((res) => setTimeout(res, 100))
    return stderr.includes(`LABHOST-HOLD ${point}`)
  }
  t.ok(await held('primary-array'), 'it announced the hold before the primary array write', { stderr })
  await new Promise((res) => setTimeout(res, 500))
  t.equal(active(dev), 'A', 'and waits there: nothing switched yet')
  fs.writeSync(writer, 'go\n')
  t.ok(await held('backup-array'), 'told to go, it wrote the primary array and held before the backup array', { stderr })
  t.equal(active(dev), 'B', 'the primary array flags B while it waits')
  fs.writeSync(writer, 'go\n')
  t.ok(await held('written'), 'and once more after the last write', { stderr })
  fs.writeSync(writer, 'go\n')
  const done = await child
  t.equal(done.exitCode, 0, 'then it finished the switch', { stderr })
  t.match(await sgdiskVerify(dev), /No problems found/, 'both tables valid and in agreement')
})

// gptmbr goes into the first 440 bytes; the disk signature and the protective entry stay.
import fs from 'node:fs'
import t from 'tap'
import { failDiag, readRange, runCli, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { findGptmbr } from '../mbr.ts'
import { makeGptDisk, sgdiskVerify, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'

t.test('labhost bootloader mbr', async (t) => {
  const dir = tmpDir(t)
  const file = sparseFile(`${dir}/d.img`, 32 << 20)
  await makeGptDisk(file, STANDARD_LAYOUT)
  const before = readRange(file, 0, 1 << 20)
  const dry = await runCli(['bootloader', 'mbr', '--disk', file, '--dry-run'])
  t.equal(dry.code, 0)
  t.ok(readRange(file, 0, 1 << 20).equals(before), '--dry-run writes nothing')
  const r = await runCli(['bootloader', 'mbr', '--disk', file])
  t.equal(r.code, 0, 'exits 0', failDiag(r))
  const after = readRange(file, 0, 1 << 20)
  const code = fs.readFileSync(findGptmbr())
  t.ok(after.subarray(0, code.length).equals(code), 'boot code is gptmbr.bin')
  t.ok(after.subarray(440).equals(before.subarray(440)), 'everything from byte 440 on is untouched')
  t.match(await sgdiskVerify(file), /No problems found/)
  const again = await runCli(['bootloader', 'mbr', '--disk', file, '--json'])
  t.equal(JSON.parse(again.stdout).writes.length, 0, 'idempotent')
})

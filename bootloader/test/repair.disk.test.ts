// slots repair: a damaged side is rebuilt from the valid one; sgdisk then finds no problems.
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { failDiag, hashWhole, loop, readRange, runCli, sparseFile, tmpDir, xorRange } from '../../test-support/test-helpers.ts'
import { isValid, openGptDisk, readGpt } from '../gpt.ts'
import { makeGptDisk, sgdiskVerify, STANDARD_LAYOUT } from '../../test-support/gpt-fixtures.ts'

const BYTES = 32 << 20

for (const sectorSize of [512, 4096]) {
  const damages = {
    'backup header': (dev: string) => xorRange(dev, BYTES - sectorSize + 30, Buffer.from([0xff])),
    'backup array': (dev: string) => xorRange(dev, BYTES - sectorSize - 16384 + 200, Buffer.from([0xff])),
    'primary header': (dev: string) => xorRange(dev, sectorSize + 30, Buffer.from([0xff])),
    'primary array': (dev: string) => xorRange(dev, 2 * sectorSize + 200, Buffer.from([0xff])),
  }
  for (const [what, damage] of Object.entries(damages)) {
    t.test(`${sectorSize}: rebuild a damaged ${what}`, async (t) => {
      const dir = tmpDir(t)
      const dev = await loop(t, sparseFile(`${dir}/d.img`, BYTES), { sectorSize })
      await makeGptDisk(dev, STANDARD_LAYOUT)
      const pristine = { head: readRange(dev, 0, 1 << 20), tail: readRange(dev, BYTES - (1 << 20), 1 << 20) }
      damage(dev)
      const before = hashWhole(dev)
      const dry = await runCli(['slots', 'repair', '--disk', dev, '--dry-run'])
      t.equal(dry.code, 0)
      t.equal(hashWhole(dev), before, '--dry-run writes nothing')
      const r = await runCli(['slots', 'repair', '--disk', dev])
      t.equal(r.code, 0, 'repair exits 0', failDiag(r))
      const disk = openGptDisk(dev)
      const gpt = readGpt(disk)
      disk.close()
      t.ok(isValid(gpt.primary) && isValid(gpt.backup), 'both sides valid again')
      t.match(await sgdiskVerify(dev), /No problems found/)
      t.same({ head: readRange(dev, 0, 1 << 20), tail: readRange(dev, BYTES - (1 << 20), 1 << 20) }, pristine, 'the table is exactly as sgdisk wrote it')
      const again = await runCli(['slots', 'repair', '--disk', dev, '--json'])
      t.equal(JSON.parse(again.stdout).writes.length, 0, 'a second repair has nothing to do')
    })
  }
}

t.test('both sides broken: refused, nothing written', async (t) => {
  const dir = tmpDir(t)
  const dev = await loop(t, sparseFile(`${dir}/d.img`, BYTES))
  await makeGptDisk(dev, STANDARD_LAYOUT)
  xorRange(dev, 512 + 30, Buffer.from([0xff]))
  xorRange(dev, BYTES - 512 + 30, Buffer.from([0xff]))
  const before = hashWhole(dev)
  const r = await runCli(['slots', 'repair', '--disk', dev])
  t.equal(r.code, ExitCode.gptPrimaryInvalid)
  t.match(r.stderr, /neither GPT .* is valid/)
  t.equal(hashWhole(dev), before)
})

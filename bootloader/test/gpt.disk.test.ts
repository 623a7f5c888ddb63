// The GPT reader against what sgdisk itself reports, on image files and 4Kn loop devices.
import t from 'tap'
import { run } from '../../lib/exec.ts'
import { loop, sparseFile, tmpDir } from '../../test-support/test-helpers.ts'
import { isValid, openGptDisk, readGpt } from '../gpt.ts'
import { makeGptDisk, type GptDiskSpec } from '../../test-support/gpt-fixtures.ts'

const SPEC: GptDiskSpec = {
  tableEntries: 64,
  parts: [
    { number: 1, name: 'rootA', sizeKiB: 4096, attrs: [2], partGuid: '11111111-2222-3333-4444-555555555555' },
    { number: 2, name: 'rootB', sizeKiB: 4096, attrs: [0, 60] },
    { number: 7, name: 'user λ data', sizeKiB: 1024, attrs: [63] },
  ],
}

async function sgdiskInfo(target: string, n: number) {
  const { stdout } = await run('sgdisk', ['-i', String(n), target])
  const field = (re: RegExp) => re.exec(stdout)?.[1] ?? ''
  return {
    partGuid: field(/Partition unique GUID: (\S+)/),
    typeGuid: field(/Partition GUID code: (\S+)/),
    first: field(/First sector: (\d+)/),
    last: field(/Last sector: (\d+)/),
    attrs: field(/Attribute flags: ([0-9A-Fa-f]+)/).toLowerCase(),
    name: field(/Partition name: '(.*)'/),
  }
}

for (const sectorSize of [512, 4096]) {
  t.test(`${sectorSize}-byte sectors: every entry as sgdisk reads it`, async (t) => {
    const dir = tmpDir(t)
    const file = sparseFile(`${dir}/disk.img`, 40 << 20)
    const target = sectorSize === 512 ? file : await loop(t, file, { sectorSize })
    await makeGptDisk(target, SPEC)
    const disk = openGptDisk(target)
    t.teardown(() => disk.close())
    t.equal(disk.sectorSize, sectorSize)
    const gpt = readGpt(disk)
    t.ok(isValid(gpt.primary) && isValid(gpt.backup), 'both sides valid')
    t.same(gpt.primary.problems, [])
    t.equal(gpt.primary.header!.entryCount, 64)
    t.ok(gpt.mbr.signatureOk && gpt.mbr.protectiveEntry, 'protective MBR')
    t.same(gpt.differingSectors, [])
    t.same(
      gpt.entries.map((e) => e.number),
      [1, 2, 7],
    )
    for (const e of gpt.entries) {
      const s = await sgdiskInfo(target, e.number)
      t.same(
        {
          partGuid: e.partGuid,
          typeGuid: e.typeGuid,
          first: String(e.firstLba),
          last: String(e.lastLba),
          attrs: e.attributes.toString(16).padStart(16, '0'),
          name: e.name,
        },
        s,
        `entry ${e.number}`,
      )
    }
    t.equal(gpt.entries[0]!.legacyBootable, true)
    t.equal(gpt.entries[1]!.legacyBootable, false)
  })
}

t.test('an image file with a 4Kn GPT is recognised without being told', async (t) => {
  const dir = tmpDir(t)
  const file = sparseFile(`${dir}/disk.img`, 40 << 20)
  const dev = await loop(t, file, { sectorSize: 4096 })
  await makeGptDisk(dev, SPEC)
  const disk = openGptDisk(file)
  t.teardown(() => disk.close())
  t.equal(disk.sectorSize, 4096)
  t.ok(isValid(readGpt(disk).primary))
})

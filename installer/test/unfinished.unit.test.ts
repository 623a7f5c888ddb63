// The stick's record of unfinished installs: per disk, so one stick carried from a PC cut off
// mid-install to the next one still recognises both; a torn record is no record.
import fs from 'node:fs'
import t from 'tap'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { clearUnfinished, diskIdentity, markUnfinished, readUnfinished, UNFINISHED_FILE } from '../unfinished.ts'
import { dirStore } from '../report-store.ts'
import type { BlockDisk } from '../disks.ts'

const disk = (name: string, serial: string): BlockDisk => ({
  name,
  path: `/dev/${name}`,
  sizeBytes: 512 * 2 ** 30,
  sectorSize: 512,
  rotational: false,
  removable: false,
  usb: false,
  model: 'Samsung SSD',
  serial,
})

t.test("two PCs on one stick: each PC's disks are remembered until that PC is done", async (t) => {
  const dir = tmpDir(t)
  const store = dirStore(dir)
  t.equal(await readUnfinished(store), null, 'no record at first')
  const pc1 = [disk('sda', 'S1'), disk('sdb', 'H1')].map((d, i) => ({
    role: i ? 'hdd' : 'ssd',
    identity: diskIdentity(d),
    kept: i ? [] : ['persistent'],
    startedAt: '2026-01-01T00:00:00Z',
  }))
  const pc2 = [disk('sda', 'S2')].map((d) => ({ role: 'ssd', identity: diskIdentity(d), kept: [], startedAt: '2026-01-02T00:00:00Z' }))
  await markUnfinished(store, pc1)
  await markUnfinished(store, pc2)
  t.same(
    (await readUnfinished(store))?.disks.map((d) => d.identity),
    [...pc1, ...pc2].map((d) => d.identity),
    'both PCs recorded',
  )
  t.not(pc1[0]!.identity, pc2[0]!.identity, 'the same kernel name on two PCs is two disks (serials differ)')
  await clearUnfinished(
    store,
    pc2.map((d) => d.identity),
  )
  t.same((await readUnfinished(store))?.disks, pc1, 'PC 2 done: PC 1 still remembered')
  await clearUnfinished(
    store,
    pc1.map((d) => d.identity),
  )
  t.notOk(fs.existsSync(`${dir}/${UNFINISHED_FILE}`), 'all done: the record is gone')
})

t.test('a torn record (cut while it was written) reads as none', async (t) => {
  const dir = tmpDir(t)
  fs.writeFileSync(`${dir}/${UNFINISHED_FILE}`, '{"disks": [{"role": "ssd", "ident')
  t.equal(await readUnfinished(dirStore(dir)), null)
  t.equal(await readUnfinished(undefined), null, 'no report directory: no record')
})

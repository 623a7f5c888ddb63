// Disk selection by declared properties over inventories of the kind listDisks() returns:
// exactly one fit is chosen; none, too small, two, USB-only or the boot medium are refused.
import t from 'tap'
import { selectDisk, type BlockDisk } from '../disks.ts'
import { DiskMatchSchema } from '../config.ts'

const GiB = 2 ** 30
const disk = (name: string, gib: number, o: Partial<BlockDisk> = {}): BlockDisk => ({
  name,
  path: `/dev/${name}`,
  sizeBytes: gib * GiB,
  sectorSize: 512,
  rotational: false,
  removable: false,
  usb: false,
  model: 'Samsung SSD 870',
  serial: `S${name}`,
  ...o,
})
const ssd = DiskMatchSchema.parse({ rotational: false, minSizeGiB: 200, maxSizeGiB: 600 })
const hdd = DiskMatchSchema.parse({ rotational: true, minSizeGiB: 900 })
const pc = [disk('sda', 500), disk('sdb', 1000, { rotational: true, model: 'ST1000DM010' }), disk('sdc', 16, { usb: true, removable: true, rotational: true })]

const refused = (fn: () => unknown, code: string, message: RegExp) => t.throws(fn, { name: 'LabhostError', code, message }, `${code}: ${message}`)

t.same(selectDisk('ssd', ssd, pc, new Set(['sdc'])).name, 'sda', 'the SSD by rotational flag and size')
t.same(selectDisk('hdd', hdd, pc, new Set(['sdc'])).name, 'sdb', 'the HDD')
t.same(
  selectDisk(
    'ssd',
    DiskMatchSchema.parse({ rotational: false, minSizeGiB: 100, model: 'Samsung.*' }),
    [...pc, disk('nvme0n1', 256, { model: 'WD Blue' })],
    new Set(),
  ).name,
  'sda',
  'a model pattern picks one of two SSDs',
)
refused(() => selectDisk('ssd', ssd, [...pc, disk('sdd', 480)], new Set()), 'diskAmbiguous', /2 disks fit the SSD/)
refused(() => selectDisk('ssd', ssd, [disk('sda', 120), pc[1]!], new Set()), 'diskTooSmall', /no SSD of 200\.\.600 GiB: found \/dev\/sda/)
refused(() => selectDisk('hdd', hdd, [pc[0]!, pc[2]!], new Set(['sdc'])), 'diskMissing', /no rotational disk for the HDD/)
refused(() => selectDisk('ssd', ssd, [disk('sda', 500)], new Set(['sda'])), 'diskIsBootMedium', /installer's own medium \/dev\/sda/)
refused(() => selectDisk('ssd', ssd, [disk('sda', 500, { usb: true })], new Set()), 'diskMissing', /no non-rotational disk/)
t.same(
  selectDisk('ssd', DiskMatchSchema.parse({ rotational: false, minSizeGiB: 200, usb: true }), [disk('sda', 500, { usb: true })], new Set()).name,
  'sda',
  'usb: true allows a USB disk',
)
refused(
  () => selectDisk('ssd', DiskMatchSchema.parse({ rotational: false, minSizeGiB: 1, serial: 'XYZ.*' }), pc, new Set()),
  'diskMissing',
  /with serial \/XYZ\.\*\//,
)

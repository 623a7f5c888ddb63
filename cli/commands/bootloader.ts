// labhost bootloader mbr: put gptmbr.bin into a disk's MBR boot code area.
import { openGptDisk } from '../../bootloader/gpt.ts'
import { planGptmbr } from '../../bootloader/mbr.ts'
import { applySectorWrites, describeWrite } from '../../bootloader/sector-writes.ts'
import { requireString, type Command } from '../command.ts'

export const bootloaderMbr: Command = {
  name: 'bootloader mbr',
  summary: 'install syslinux gptmbr.bin as MBR boot code (keeps disk signature and partition entries)',
  usage: 'labhost bootloader mbr --disk DEV|FILE [--gptmbr PATH] [--dry-run] [--json]',
  options: { disk: { type: 'string' }, gptmbr: { type: 'string' } },
  async run(values, _pos, ctx) {
    const disk = openGptDisk(requireString(values, 'disk', this))
    try {
      const writes = planGptmbr(disk, typeof values.gptmbr === 'string' ? values.gptmbr : undefined)
      if (!ctx.dryRun) await applySectorWrites(disk, writes, ctx.log)
      const human = writes.length ? `${ctx.dryRun ? 'would install' : 'installed'} gptmbr on ${disk.info.path}` : `gptmbr already installed on ${disk.info.path}`
      return { data: { disk: disk.info.path, writes: writes.map(describeWrite), dryRun: ctx.dryRun }, human }
    } finally {
      disk.close()
    }
  },
}

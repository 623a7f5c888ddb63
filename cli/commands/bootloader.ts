// labhost bootloader mbr: put gptmbr.bin into a disk's MBR boot code area.
import { openGptDisk } from '../../bootloader/gpt.ts'
import { planGptmbr } from '../../bootloader/mbr.ts'
import { applySectorWrites, describeWrite } from '../../bootloader/sector-writes.ts'
import { defineCommand, pathValue } from '../command.ts'

export const bootloaderMbr = defineCommand({
  name: 'bootloader mbr',
  summary: 'install syslinux gptmbr.bin as MBR boot code (keeps disk signature and partition entries)',
  usage: 'labhost bootloader mbr --disk DEV|FILE [options]',
  options: {
    disk: {
      type: 'string',
      value: 'DEV|FILE',
      required: true,
      schema: pathValue(),
      description: 'the disk (a block device or a disk image file) whose MBR gets the boot code',
    },
    gptmbr: {
      type: 'string',
      value: 'FILE',
      schema: pathValue(),
      defaultText: "syslinux-common's gptmbr.bin",
      description: 'the boot code to install (at most 440 bytes)',
    },
  },
  dryRun: { plan: 'print whether sector 0 would be written' },
  async run(values, _pos, ctx) {
    const disk = openGptDisk(values.disk)
    try {
      const writes = planGptmbr(disk, values.gptmbr)
      if (!ctx.dryRun) await applySectorWrites(disk, writes, ctx.log)
      const human = writes.length
        ? `${ctx.dryRun ? 'would install' : 'installed'} gptmbr on ${disk.info.path}`
        : `gptmbr already installed on ${disk.info.path}`
      return { data: { disk: disk.info.path, writes: writes.map(describeWrite), dryRun: ctx.dryRun }, human }
    } finally {
      disk.close()
    }
  },
})

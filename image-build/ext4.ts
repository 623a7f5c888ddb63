// Root filesystem images: ext4 made from a directory (mkfs.ext4 -d, no mount needed), and
// extlinux installed into such an image through a loop device.
import fs from 'node:fs'
import { run } from '../lib/exec.ts'
import { withLoop, withMount } from '../lib/loop.ts'
import { installExtlinux, type ExtlinuxConfig } from '../bootloader/extlinux.ts'

export interface Ext4Options {
  sizeBytes: number
  sourceDir?: string
  uuid?: string
  label?: string
}

export async function makeExt4Image(file: string, o: Ext4Options): Promise<void> {
  fs.rmSync(file, { force: true })
  fs.writeFileSync(file, '')
  fs.truncateSync(file, o.sizeBytes)
  // 4 KiB blocks: syslinux 6.04 cannot load files from 1 KiB-block ext4 with extents.
  const args = ['-q', '-F', '-b', '4096', '-t', 'ext4']
  if (o.uuid) args.push('-U', o.uuid)
  if (o.label) args.push('-L', o.label)
  if (o.sourceDir) args.push('-d', o.sourceDir)
  await run('mkfs.ext4', [...args, file])
}

export async function installExtlinuxIntoImage(file: string, cfg: ExtlinuxConfig, extraBootFiles: string[] = []): Promise<void> {
  await withLoop(file, {}, (dev) =>
    withMount(dev, async (dir) => {
      await installExtlinux(dir, cfg)
      for (const f of extraBootFiles) fs.copyFileSync(f, `${dir}/boot/extlinux/${f.split('/').pop()}`)
    }),
  )
}

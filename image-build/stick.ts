// The USB installer stick: a GPT disk image with the stick system (bootable: gptmbr + extlinux on
// a legacy-BIOS PC), an EFI system partition whose \EFI\BOOT\BOOTX64.EFI starts the same system
// on a UEFI PC (its kernel, initramfs and command line as a unified kernel image: no NVRAM entry
// needed), and a FAT data partition LABHOST holding the signed root image, its manifest,
// install.yaml and a reports/ folder where the installer leaves its log and report.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { loadInstallConfig } from '../installer/config.ts'
import { copyFileInto, Disk } from '../lib/blockdev.ts'
import { run } from '../lib/exec.ts'
import { withLoop } from '../lib/loop.ts'
import { planGptmbr } from '../bootloader/mbr.ts'
import { applySectorWrites } from '../bootloader/sector-writes.ts'
import { LabhostError } from '../lib/errors.ts'
import { ESP_TYPE_CODE } from '../installer/partition.ts'
import { buildImage } from './build.ts'
import { makeUki } from './selector.ts'
import { STICK_PARTITION } from './initramfs-init.ts'
import { readPrivateKey, verifyImageDir } from '../image-format/manifest.ts'

export const DATA_PARTITION = 'LABHOST'
const MiB = 1 << 20
const STICK_ESP_MIB = 32

/** The stick system's own kernel, initramfs and command line (from its image) as one EFI executable. */
async function stickUki(sysImage: string, out: string): Promise<void> {
  const dir = path.dirname(out)
  const dump = async (from: string, to: string) => {
    await run('debugfs', ['-R', `dump ${from} ${to}`, sysImage])
    if (!fs.existsSync(to) || fs.statSync(to).size === 0)
      throw new LabhostError('notFound', `the stick system image has no ${from}`, 'rebuild it (labhost image build stick)')
  }
  await dump('/boot/vmlinuz', path.join(dir, 'vmlinuz'))
  await dump('/boot/initrd.img', path.join(dir, 'initrd.img'))
  await dump('/boot/extlinux/extlinux.conf', path.join(dir, 'extlinux.conf'))
  const cmdline = /^\s*append\s+(.*)$/im.exec(fs.readFileSync(path.join(dir, 'extlinux.conf'), 'utf8'))?.[1]?.trim() ?? ''
  await makeUki({ vmlinuz: path.join(dir, 'vmlinuz'), initrd: fs.readFileSync(path.join(dir, 'initrd.img')), cmdline, name: 'labhost installer stick', out })
}

export interface StickOptions {
  imageDir: string
  config: string
  out: string
  keyFile: string
  log?: (line: string) => void
}

export async function buildStick(o: StickOptions): Promise<{ out: string; sizeBytes: number }> {
  const log = o.log ?? (() => {})
  const publicKey = crypto.createPublicKey(readPrivateKey(o.keyFile))
  const manifest = verifyImageDir(path.join(o.imageDir, 'manifest.json'), publicKey)
  // the installer's own schema: a stick with a config the installer would refuse is not made
  loadInstallConfig(o.config)
  const configText = fs.readFileSync(o.config, 'utf8')
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-stick-'))
  try {
    log('building the stick system (recipe stick)')
    const sys = await buildImage('stick', { out: path.join(work, 'sys'), keyFile: o.keyFile, log })
    const sysImage = path.join(work, 'sys/root.img')
    const transport = path.join(o.imageDir, manifest.transport.file)
    const dataMiB = Math.ceil((fs.statSync(transport).size + 64 * 1024) / MiB) + 16
    const sysMiB = Math.ceil(sys.manifest.image.size / MiB)
    const totalMiB = 1 + sysMiB + STICK_ESP_MIB + dataMiB + 1
    fs.rmSync(o.out, { force: true })
    fs.writeFileSync(o.out, '')
    fs.truncateSync(o.out, totalMiB * MiB)
    const sysFirst = 2048
    const sysLast = sysFirst + sysMiB * 2048 - 1
    const espFirst = sysLast + 1
    const espLast = espFirst + STICK_ESP_MIB * 2048 - 1
    await run('sgdisk', [
      '--clear',
      '-n',
      `1:${sysFirst}:${sysLast}`,
      '-c',
      `1:${STICK_PARTITION}`,
      '-t',
      '1:8300',
      '-A',
      '1:set:2',
      '-n',
      `3:${espFirst}:${espLast}`,
      '-c',
      '3:esp',
      '-t',
      `3:${ESP_TYPE_CODE}`,
      '-n',
      '2:0:0',
      '-c',
      `2:${DATA_PARTITION}`,
      '-t',
      '2:0700',
      o.out,
    ])
    copyFileInto(sysImage, o.out, sysFirst * 512)
    const disk = Disk.open(o.out)
    try {
      await applySectorWrites(disk, planGptmbr(disk))
    } finally {
      disk.close()
    }
    log('EFI system partition: the stick system as a unified kernel image')
    await stickUki(sysImage, path.join(work, 'BOOTX64.EFI'))
    await withLoop(o.out, { offset: espFirst * 512, sizeLimit: STICK_ESP_MIB * MiB }, async (dev) => {
      await run('mkfs.vfat', ['-n', 'EFI', '-i', '1ab0e5e5', dev])
      await run('mmd', ['-i', dev, '::/EFI', '::/EFI/BOOT'])
      await run('mcopy', ['-i', dev, path.join(work, 'BOOTX64.EFI'), '::/EFI/BOOT/BOOTX64.EFI'])
    })
    const dataFirst = (espLast + 1) * 512
    const dataBytes = fs.statSync(o.out).size - dataFirst - 34 * 512
    log(`data partition LABHOST: ${manifest.name} ${manifest.version}, ${path.basename(o.config)}`)
    await withLoop(o.out, { offset: dataFirst, sizeLimit: dataBytes }, (dev) => run('mkfs.vfat', ['-n', DATA_PARTITION, '-i', '1ab0057c', dev]))
    // mtools writes FAT without mounting it (the build host's kernel may have no vfat).
    const configCopy = path.join(work, 'install.yaml')
    fs.writeFileSync(configCopy, configText)
    const fat = `${o.out}@@${dataFirst}`
    const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' } as Record<string, string>
    await run('mmd', ['-i', fat, '::/image', '::/reports'], { env })
    await run('mcopy', ['-i', fat, path.join(o.imageDir, 'manifest.json'), transport, '::/image/'], { env })
    await run('mcopy', ['-i', fat, configCopy, '::/install.yaml'], { env })
    return { out: o.out, sizeBytes: totalMiB * MiB }
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

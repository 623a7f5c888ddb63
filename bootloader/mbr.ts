// The MBR boot code: syslinux gptmbr.bin in the first 440 bytes of LBA 0. The disk signature
// (bytes 440..443) and the protective partition entry stay as they are.
import fs from 'node:fs'
import { LabhostError } from '../lib/errors.ts'
import type { Disk } from '../lib/blockdev.ts'
import type { SectorWrite } from './sector-writes.ts'

export const GPTMBR_PATHS = ['/usr/lib/syslinux/mbr/gptmbr.bin', '/usr/lib/SYSLINUX/gptmbr.bin', '/usr/share/syslinux/gptmbr.bin']
export const BOOT_CODE_BYTES = 440

export function findGptmbr(): string {
  const found = GPTMBR_PATHS.find((p) => fs.existsSync(p))
  if (!found) throw new LabhostError('notFound', 'gptmbr.bin is not installed', 'install Debian package syslinux-common (scripts/setup.sh does)')
  return found
}

export function planGptmbr(disk: Disk, gptmbrPath = findGptmbr()): SectorWrite[] {
  const code = fs.readFileSync(gptmbrPath)
  if (code.length > BOOT_CODE_BYTES) {
    throw new LabhostError('io', `${gptmbrPath} is ${code.length} bytes, more than the ${BOOT_CODE_BYTES} of MBR boot code`, 'reinstall syslinux-common')
  }
  const sector = disk.readSectors(0n, 1)
  const next = Buffer.from(sector)
  next.fill(0, 0, BOOT_CODE_BYTES)
  code.copy(next, 0)
  if (next.equals(sector)) return []
  return [{ region: 'mbr', lba: 0n, data: next, why: `install ${gptmbrPath} as MBR boot code` }]
}

// The EFI system partition's one file: the selector at the removable-media path
// \EFI\BOOT\BOOTX64.EFI, which UEFI firmware boots with no NVRAM boot entry at all (DESIGN §7).
// Written with mtools onto the partition's device, never mounted; by the installer only, never
// by an update (the selector picks the slot by the GPT flag, so an update has nothing to change).
import { run } from '../lib/exec.ts'
import { withPartitionDevice, type PartitionRange } from '../lib/partition-dev.ts'

export const REMOVABLE_MEDIA_PATH = '::/EFI/BOOT/BOOTX64.EFI'

export async function installSelector(diskPath: string, esp: PartitionRange, sectorSize: number, selectorFile: string): Promise<void> {
  await withPartitionDevice(diskPath, esp, sectorSize, async (dev) => {
    // -D o: overwrite an existing file without asking (a re-run of the installer)
    await run('mmd', ['-D', 'o', '-i', dev, '::/EFI', '::/EFI/BOOT']).catch(() => undefined)
    await run('mcopy', ['-D', 'o', '-i', dev, selectorFile, REMOVABLE_MEDIA_PATH])
    await run('sync', [])
  })
}

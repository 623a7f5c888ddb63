// The lean variant of the `test` recipe: no labhost inside, 40 MiB (kernel, busybox, zstd). The VM
// tests that update a host stage labhost beside it (vm-tests/fixtures/lean-image.ts), and the
// updater and installer disk tests use it as their 1.0.0 and 2.0.0 (update-fixtures.ts).
import { writeRecipeVariant, type Recipe } from '../image-build/recipe.ts'

/** A variant of the `test` recipe: no labhost inside, 40 MiB, an init that reports (version, slot, mounts) and runs /persistent/test-hook. */
export function leanRecipe(file: string, change: (r: Recipe) => void = () => {}): string {
  return writeRecipeVariant('test', file, (r) => {
    r.carryLabhost = false
    r.imageSizeMiB = 40
    // a disk with no root slots (a bricked switch) is given up on after 10 s, not the 30 s a USB
    // disk of a real PC may need: the VM's IDE disks are there within a second or two
    r.kernel.cmdline += ' labhost.slotwait=100'
    r.files = [
      ...(r.files ?? []).filter((f) => f.path !== '/sbin/init'),
      {
        path: '/sbin/init',
        mode: '0755',
        content: [
          '#!/bin/sh',
          'export PATH=/bin:/sbin:/usr/bin:/usr/sbin',
          'mount -t tmpfs tmpfs /tmp',
          'mount -a 2>/dev/null',
          '. /run/labhost/boot',
          'echo "LABHOST-USERSPACE version=$(cat /etc/labhost/version) slot=$SLOT device=$DEVICE"',
          'for m in /persistent /var/log /qcow2/backing /qcow2/user; do grep -q " $m " /proc/mounts && echo "LABHOST-MOUNT $m"; done',
          '[ -x /persistent/test-hook ] && /persistent/test-hook',
          'sync',
          'poweroff -f',
          '',
        ].join('\n'),
      },
    ]
    change(r)
  })
}

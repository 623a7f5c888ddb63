// Where a root image carries what the installer and the updater read from it.

/** The UEFI selector (image-build/selector.ts builds it; the installer copies it to the ESP). */
export const SELECTOR_IN_IMAGE = 'boot/efi/BOOTX64.EFI'

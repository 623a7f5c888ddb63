// Whether a PC that network-booted the installer may be imaged. Booting from the network is
// something a PC does by itself (a boot order, a teacher pressing F12), so it must never be
// enough to wipe one: install.yaml's `netboot:` names the PCs that may be imaged — new PCs whose
// internal disks are all blank, and the ones listed by boot MAC or serial — and any other is
// declined before a byte is written and boots on from its own disk.
import { LabhostError } from '../lib/errors.ts'
import type { NetbootGate } from './config.ts'
import { classifyDisk } from './disk-content.ts'
import { describe, type BlockDisk } from './disks.ts'
import type { Machine } from './machine.ts'

export interface NetbootVerdict {
  /** Why this PC may be imaged, for the log and the report. */
  why: string
}

/** What a disk holds, or null when it is blank; a disk that cannot be read as blank is not. */
function contentOf(d: BlockDisk): string | null {
  try {
    const c = classifyDisk(d.path, [])
    // classified against no plan: a labhost install is a GPT with its partitions, named
    return c.kind === 'blank' ? null : c.kind === 'foreign' ? c.what : 'a labhost install'
  } catch (e) {
    return `something unreadable (${e instanceof Error ? e.message : String(e)})`
  }
}

/**
 * `disks`: the disks the install would write or could be mistaken for (every internal disk, or
 * the ones named on the command line); `resuming`: an unfinished install of this PC recorded on
 * the server names these disks (a power cut in the middle of its imaging).
 */
export function netbootVerdict(
  gate: NetbootGate | undefined,
  configFile: string,
  machine: Machine,
  bootMac: string,
  disks: BlockDisk[],
  resuming: boolean,
): NetbootVerdict {
  const g = gate ?? { imageBlank: true, imageListed: [] }
  const mac = bootMac.toLowerCase()
  const serial = machine.serial?.trim() ?? ''
  for (const entry of g.imageListed) {
    if (entry.mac === mac) return { why: `its boot MAC ${mac} is listed in ${configFile} netboot.imageListed` }
    if (serial && entry.serial === serial) return { why: `its serial ${serial} is listed in ${configFile} netboot.imageListed` }
  }
  if (resuming) return { why: 'the server holds the record of its unfinished install on these disks (a power cut mid-install)' }
  if (!disks.length) return { why: 'it has no internal disk (the disk checks refuse it next)' }
  const held = disks.map((d) => ({ d, what: contentOf(d) })).filter((x) => x.what !== null)
  if (g.imageBlank && !held.length) return { why: `its disks are all blank (${disks.map((d) => d.path).join(', ')})` }
  const what = held.map((x) => `${describe(x.d)} holds ${x.what}`).join('; ')
  throw new LabhostError(
    'notToBeImaged',
    `this PC (boot MAC ${mac}${serial ? `, serial ${serial}` : ''}) network-booted the installer, and ${configFile} does not let it be imaged: ${
      g.imageBlank ? what : 'netboot.imageBlank is false and it is not listed'
    }`,
    `it boots on from its own disk, untouched; to image it, list its MAC or serial under netboot.imageListed in ${configFile} (or wipe it); nothing was written`,
    { bootMac: mac, serial: serial || null },
  )
}

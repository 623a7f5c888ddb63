// Every fault-injection point of labhost, in one place. The tests and the vm-tests campaign make
// labhost misbehave on purpose (die after an install step, switch slots without the CRC
// compensation) to prove that the harness notices. The release executable must not be able to:
// `npm run build` defines LABHOST_FAULTS as false for dist/labhost, esbuild drops the branch below
// and with it every variable name, so no environment can reach these points there. The
// fault-enabled build (dist/labhost-faults) and the source tree (node cli/bin.ts) keep them.

import fs from 'node:fs'

declare global {
  // Replaced at bundle time by scripts/build.ts (esbuild `define`); undefined when run from source.
  var LABHOST_FAULTS: boolean | undefined
}

/** The injection points and what each does when its variable is set. */
export const FAULTS = {
  /** LABHOST_FAULT_AFTER_STEP=<install step name>: SIGKILL the installer right after that step. */
  AFTER_STEP: 'LABHOST_FAULT_AFTER_STEP',
  /** LABHOST_FAULT_SKIP_CRC_COMPENSATION=1: the naive switch, flags flipped and the array CRC left wrong. */
  SKIP_CRC_COMPENSATION: 'LABHOST_FAULT_SKIP_CRC_COMPENSATION',
  /** LABHOST_FAULT_COMMIT_BEFORE_WRITE=1: the update arms the trial and switches first, then writes the slot. */
  COMMIT_BEFORE_WRITE: 'LABHOST_FAULT_COMMIT_BEFORE_WRITE',
  /** LABHOST_FAULT_SKIP_READBACK=1: the update trusts what it wrote and does not read the slot back. */
  SKIP_READBACK: 'LABHOST_FAULT_SKIP_READBACK',
  /**
   * LABHOST_FAULT_HOLD=<tty>: at each hold point (holdAt) print `LABHOST-HOLD <point>` on stderr
   * and wait for a line on <tty> before going on. The campaign's second serial port: the harness
   * resets the machine while it waits at the point it aims at, so the instant does not depend on
   * how busy the host is, and answers every other hold with a line.
   */
  HOLD: 'LABHOST_FAULT_HOLD',
} as const
export type FaultName = keyof typeof FAULTS

/** The value of a fault variable; always undefined in the release executable (the check is inline so esbuild can drop the rest). */
export function fault(name: FaultName): string | undefined {
  if (!(globalThis.LABHOST_FAULTS ?? true)) return undefined
  return process.env[FAULTS[name]]
}

let holdFd: number | undefined

/**
 * A hold point (LABHOST_FAULT_HOLD; test builds only): announce it and wait for the harness's
 * line. The device is opened before the first announcement, so an answer cannot arrive before
 * anyone reads it (a closed tty drops what it receives).
 */
export function holdAt(point: string): void {
  if (!(globalThis.LABHOST_FAULTS ?? true)) return
  const tty = process.env[FAULTS.HOLD]
  if (!tty) return
  holdFd ??= fs.openSync(tty, 'r')
  fs.writeSync(2, `LABHOST-HOLD ${point}\n`)
  const b = Buffer.alloc(256)
  for (let n; (n = fs.readSync(holdFd, b, 0, b.length, null)) > 0;) if (b.subarray(0, n).includes(10)) return
}

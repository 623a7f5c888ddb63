// Every fault-injection point of labhost, in one place. The tests and the vm-tests campaign make
// labhost misbehave on purpose (die after an install step, switch slots without the CRC
// compensation) to prove that the harness notices. The release executable must not be able to:
// `npm run build` defines LABHOST_FAULTS as false for dist/labhost, esbuild drops the branch below
// and with it every variable name, so no environment can reach these points there. The
// fault-enabled build (dist/labhost-faults) and the source tree (node cli/bin.ts) keep them.

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
} as const
export type FaultName = keyof typeof FAULTS

/** The value of a fault variable; always undefined in the release executable (the check is inline so esbuild can drop the rest). */
export function fault(name: FaultName): string | undefined {
  if (!(globalThis.LABHOST_FAULTS ?? true)) return undefined
  return process.env[FAULTS[name]]
}

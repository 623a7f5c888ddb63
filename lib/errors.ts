// One error type for the whole tool: a stable code, an exit status per failure class, and a hint
// that tells the operator what to do. The CLI prints `message` + `hint` on one line each.

export const ExitCode = {
  ok: 0,
  internal: 1,
  usage: 2,
  notFound: 3,
  io: 4,
  toolFailed: 5,
  configInvalid: 10,
  gptPrimaryInvalid: 20,
  gptBackupInvalid: 21,
  slotsNotFound: 22,
  slotsSplitSectors: 23,
  nameTailFull: 24,
  slotFlagsAmbiguous: 25,
  gptMismatch: 26,
  sectorSizeUnsupported: 27,
  gptLayoutInvalid: 28,
  gptChanged: 29,
  signatureInvalid: 30,
  manifestInvalid: 31,
  hashMismatch: 32,
  notNewer: 33,
  trialPending: 34,
  busy: 35,
  downloadFailed: 36,
  tlsUntrusted: 37,
  otherImage: 38,
  imageTooSmall: 40,
  packageMissing: 41,
  diskTooSmall: 50,
  modelRejected: 51,
  diskMissing: 52,
  diskAmbiguous: 53,
  diskHasData: 54,
  diskIsBootMedium: 55,
  biosFailed: 56,
  /** A UEFI-only PC and an image (layout) that cannot boot on it. */
  uefiUnsupported: 57,
  /** install.yaml's hostname setting gives this machine no valid name (no inventory entry, no serial for the pattern). */
  hostnameUnavailable: 58,
  /** A network boot of a PC that install.yaml's netboot: gate does not let be imaged (it holds data, it is not listed): declined, it boots its own disk. */
  notToBeImaged: 59,
  /** labhost trial-check: the health checks failed by the deadline and the slot was rolled back. */
  trialFailed: 60,
  /** An update while an earlier switch is not booted yet: the GPT flags the other slot than the one running. */
  switchNotBooted: 61,
  /** labhost install: the disks are installed, but the report (or, over the network, the boot-local marker) could not be stored on the stick or the server. */
  installedNotRecorded: 62,
  /** The image stream (transport file) ends before the manifest's size: a cut copy or download, not a bad chunk. */
  imageTruncated: 46,
  /** A .torrent that is not one file with the signed transport file's name and size (checked before aria2c starts). */
  torrentInvalid: 39,
  /** A signed manifest of the other kind: a VM base image's where a root image's is wanted, or the reverse. */
  manifestKind: 42,
  /** A channel document (labhost update --channel, channel show) without a valid signature by the trusted key. */
  channelSignatureInvalid: 43,
  /** A signed channel document this labhost cannot use (its shape), or one naming another image than its manifest. */
  channelInvalid: 44,
  /** A channel document older (lower serial) than the newest this host accepted: a replay or a stale mirror. */
  channelReplayed: 45,
  /** labhost vm-image publish: not a qcow2 file of its own (other format, a backing file, errors, in use). */
  vmImageInvalid: 70,
  /** labhost vm-image pull: the backing partition has not the room for the image (checked before downloading). */
  noRoom: 71,
  /** The VM base image catalogue (INI) cannot be read as labhost writes it. */
  catalogueInvalid: 72,
  /** labhost vm-image prune: the --reserve-gib free space on the user partition could not be reached. */
  reserveNotMet: 73,
} as const

export type ErrorCode = keyof typeof ExitCode

export class LabhostError extends Error {
  readonly code: ErrorCode
  readonly hint: string
  readonly details: Record<string, unknown>

  /** `options.cause`: the error this one explains (kept for whoever debugs; the CLI prints message and hint). */
  constructor(code: ErrorCode, message: string, hint: string, details: Record<string, unknown> = {}, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'LabhostError'
    this.code = code
    this.hint = hint
    this.details = details
  }

  get exitCode(): number {
    return ExitCode[this.code]
  }

  toJSON(): Record<string, unknown> {
    return { error: this.code, exitCode: this.exitCode, message: this.message, hint: this.hint, ...this.details }
  }
}

export function isLabhostError(e: unknown): e is LabhostError {
  return e instanceof LabhostError
}

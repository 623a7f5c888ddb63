// labhost update from an image directory, manifest or http(s) URL: trust first, then
// write the inactive slot only, fsync, read it back from the disk hashing every chunk against the
// signed manifest, arm the trial, and commit with the one-sector switch (DESIGN §3, §4).
import crypto from 'node:crypto'
import path from 'node:path'
import { Disk } from '../lib/blockdev.ts'
import { LabhostError } from '../lib/errors.ts'
import { gptFingerprint, openGptDisk, readGpt, requireSaneLayout, type Gpt } from '../bootloader/gpt.ts'
import { lockDisk } from '../lib/disk-lock.ts'
import { mountedAt } from '../lib/mounts.ts'
import { fault } from '../lib/faults.ts'
import { compareVersions } from '../lib/version.ts'
import { findRootSlots, otherSlot, slotStatus, type SlotId } from '../bootloader/slots.ts'
import { applySwitch, planSwitch, switchPlanData, type SwitchPlan, type SwitchPlanData } from '../bootloader/switch.ts'
import type { SectorWrite } from '../bootloader/sector-writes.ts'
import { readPublicKey, type Manifest } from '../image-format/manifest.ts'
import { readBootInfo, readImageName, readTrial, readVersion, type HostPaths } from './host-state.ts'
import { writeTrialState } from '../image-format/trial-state.ts'
import {
  DEFAULT_FETCH,
  fetchBytes,
  httpSource,
  openSource,
  unhandledKind,
  type FetchOptions,
  type HttpSource,
  type SourceKind,
  type TransferStats,
  type UpdateSource,
} from '../image-format/source.ts'
import { imageInput, verifyImage, writeImage, type BeforeReadBack, type WriteStats } from '../image-format/slot-writer.ts'
import { deltaPays, deltaSource, deltaUnusable, httpRanges, planDelta, planFromScan, scanSlots, type DeltaSummary } from './delta.ts'
import { downloadPack, fetchPackList, packFor, packForVersion, packIndex, packRanges, type FetchedPack } from './delta-pack.ts'
import { torrentSource, torrentUrlFor, type TorrentOptions } from './torrent.ts'
import type { Progress } from '../lib/progress.ts'
import { LABHOST_VERSION } from '../lib/labhost-version.ts'

export interface UpdateOptions {
  source: string
  trustedKey: string
  paths: HostPaths
  /** The disk holding the root slots; default: the one the initramfs booted from. */
  disk?: string
  allowDowngrade?: boolean
  /** Accept an image whose name differs from the running image's (say `test` on a `host` host). */
  allowOtherImage?: boolean
  trialBoots?: number
  dryRun?: boolean
  log?: (line: string) => void
  /** Progress of the write (download + decompress + write) and of the read-back. */
  progress?: (step: 'write' | 'verify') => Progress
  /** Retries, backoff and timeouts of an http(s) source. */
  fetch?: Partial<FetchOptions>
  /**
   * Called as the update enters each phase (`labhost update --announce-phases` prints them, the
   * fault-injection campaign aims its resets by them).
   */
  phase?: (name: UpdatePhase) => void
  /**
   * When the written slot is read back from the disk and hashed: 'after' (default) the whole slot
   * once it is written and synced (DESIGN §3.1's order); 'during' each chunk as soon as its write
   * completed, while later chunks are written (for devices that serve reads and writes in
   * parallel; on loop devices and rotating disks it measured slower).
   */
  readBack?: 'during' | 'after'
  /** Test seam: runs before each chunk of the written slot is read back from the disk. */
  beforeReadBack?: BeforeReadBack
  /**
   * From an http(s) source: take the chunks the host has in its slots from the disk and download
   * only the others (updater/delta.ts), when the manifest has a frame index and that fetches less.
   */
  delta?: boolean
  /**
   * From an http(s) source: download the transport file with BitTorrent (the .torrent beside it)
   * instead of from the server alone; a delta that pays still goes over HTTP (it is small).
   */
  torrent?: TorrentOptions
  /**
   * The image a channel document named (labhost update --channel): its signed manifest must be
   * this name and version, else the channel and the image disagree (nothing is written).
   */
  expect?: { name: string; version: string }
}

/** start: plan verified, lock held; commit: the one-sector switch is next; done: switched. */
export const UPDATE_PHASES = ['start', 'write', 'verify', 'arm-trial', 'commit', 'done'] as const
export type UpdatePhase = (typeof UPDATE_PHASES)[number]

/** The one-sector switch of the plan (DESIGN §3), computed from the table the plan was made against. */
export type CommitPlan = Readonly<{
  /** The switch as `labhost slots switch` plans it: its sector writes in order, commit then mirror. */
  switch: Readonly<SwitchPlan>
  /** The commit point: the primary array's sector holding both root entries, as it will be written. */
  sector: Readonly<SectorWrite>
  /** The same sector of the backup array, written after the commit (null: it holds it already). */
  mirror: Readonly<SectorWrite> | null
  /** What the primary sector holds now: the trial's rollback writes it back. */
  rollbackSector: Buffer
}>

/**
 * Everything an update will do, computed once under the disk's lock from one read of the GPT,
 * before anything is written; the steps after it (acquire, write, read-back, arm trial, commit)
 * only read it. `--dry-run` prints it.
 */
export type UpdatePlan = Readonly<{
  disk: string
  from: Readonly<{ slot: SlotId; version: string | null; firstByte: number; slotBytes: number }>
  to: Readonly<{ slot: SlotId; version: string; partition: number; firstByte: number; bytes: number; slotBytes: number }>
  /** The transport file's path or URL. */
  source: string
  /** How the source was opened, and how its bytes are to be fetched: a delta if it pays, BitTorrent. */
  input: Readonly<{ kind: SourceKind; manifest: string; delta: boolean; torrent: string | null }>
  writes: readonly string[]
  /** SHA-256 of both GPT headers and arrays as planned against: the commit refuses a table changed since. */
  gptFingerprint: string
  trial: Readonly<{ boots: number; stateRoot: string }>
  commit: CommitPlan
}>

/** What a delta takes from the disk and downloads; `used` false names why the whole image is downloaded. */
export type DeltaChoice =
  (DeltaSummary & { used: true; /** The delta pack the missing frames came from (over BitTorrent). */ pack?: string }) | { used: false; reason: string }

/** The plan as data (`update --json`): sectors as hex, LBAs as decimal strings. */
export interface UpdatePlanData extends Omit<UpdatePlan, 'commit' | 'writes'> {
  writes: string[]
  commit: SwitchPlanData & { rollbackSector: string }
}

export interface UpdateResult extends UpdatePlanData {
  delta?: DeltaChoice
  /** The labhost executable that ran the update. */
  labhost: string
  /**
   * Where the time went: checking the manifest and planning (`plan`), finding what the disk has
   * and opening the download (`scan`), writing (decompressing and downloading overlap it), reading
   * the slot back (`verify`), arming the trial and switching (`commit`), and all of it (`total`).
   */
  seconds: { plan: number; scan: number; write: number; verify: number; commit: number; total: number }
  transfer: TransferStats
  /** How the slot's bytes reached the disk (absent on --dry-run). */
  written?: WriteStats
}

export function planData(plan: UpdatePlan): UpdatePlanData {
  return {
    ...plan,
    writes: [...plan.writes],
    commit: { ...switchPlanData(plan.commit.switch, { hex: true }), rollbackSector: plan.commit.rollbackSector.toString('hex') },
  }
}

export async function planUpdate(o: UpdateOptions): Promise<{ plan: UpdatePlan; manifest: Manifest; source: UpdateSource }> {
  const trusted = readPublicKey(o.trustedKey)
  const source = await openSource(o.source, trusted, { ...DEFAULT_FETCH, log: o.log, ...o.fetch })
  const { manifest, manifestWhere: manifestFile } = source
  if (o.expect && (manifest.name !== o.expect.name || manifest.version !== o.expect.version)) {
    throw new LabhostError(
      'channelInvalid',
      `${manifestFile} is ${manifest.name} ${manifest.version}, but the channel names ${o.expect.name} ${o.expect.version}`,
      'publish the channel again naming the image it points at (labhost channel publish reads both from the manifest); nothing was written',
    )
  }
  const boot = readBootInfo(o.paths)
  const diskPath = o.disk ?? boot.disk
  const disk = openGptDisk(diskPath)
  try {
    const gpt = readGpt(disk)
    requireSaneLayout(gpt)
    const st = slotStatus(gpt, manifest.layout.slots)
    if (st.slots.length !== 2) {
      throw new LabhostError(
        'manifestInvalid',
        `${manifestFile} is for a layout with root slots ${manifest.layout.slots.A}/${manifest.layout.slots.B}, which ${diskPath} does not have`,
        "use an image built for this host's layout; nothing was written",
      )
    }
    if (!st.primaryValid || !st.backupValid || st.active === null) {
      throw new LabhostError(
        st.primaryValid ? (st.backupValid ? 'slotFlagsAmbiguous' : 'gptBackupInvalid') : 'gptPrimaryInvalid',
        `the GPT of ${diskPath} is not in a state to update: ${st.problem ?? [...st.primaryProblems, ...st.backupProblems].join('; ')}`,
        'inspect with `labhost slots status` and repair first; nothing was written',
      )
    }
    if (st.active !== boot.slot) {
      throw new LabhostError(
        'switchNotBooted',
        `running slot ${boot.slot}, but the GPT flags slot ${st.active} to boot next`,
        'an earlier switch is not booted yet: reboot into it (or switch back) before updating; nothing was written',
      )
    }
    const trial = readTrial(o.paths)
    if (trial && trial.slot === boot.slot) {
      throw new LabhostError(
        'trialPending',
        `slot ${boot.slot} is still on trial (${trial.bootsLeft} boot(s) left)`,
        'wait for labhost mark-good (after the health check) before the next update; nothing was written',
      )
    }
    const runningName = readImageName(o.paths)
    if (runningName !== null && runningName !== manifest.name && !o.allowOtherImage) {
      throw new LabhostError(
        'otherImage',
        `${manifestFile} is image ${JSON.stringify(manifest.name)}, but this host runs image ${JSON.stringify(runningName)}`,
        "update with an image of the same name, or pass --allow-other-image to replace this host's image with another; nothing was written",
      )
    }
    const current = readVersion(o.paths)
    if (current && compareVersions(manifest.version, current) <= 0 && !o.allowDowngrade) {
      throw new LabhostError(
        'notNewer',
        `${manifest.name} ${manifest.version} is not newer than the running ${current} (versions order as Debian's, a hyphen marking a pre-release)`,
        'pass --allow-downgrade to install it anyway; nothing was written',
      )
    }
    const target = otherSlot(boot.slot)
    const entries = findRootSlots(gpt, manifest.layout.slots)
    const entry = entries[target]
    const firstByte = Number(entry.firstLba) * disk.sectorSize
    const slotBytes = Number(entry.lastLba - entry.firstLba + 1n) * disk.sectorSize
    const activeEntry = entries[boot.slot]
    const mounted = mountedAt(diskPath, firstByte)
    if (mounted) {
      throw new LabhostError(
        'busy',
        `slot ${target} of ${diskPath} is mounted (${mounted})`,
        `unmount it first (umount ${mounted}); an update never writes a mounted slot; nothing was written`,
      )
    }
    if (manifest.image.size > slotBytes) {
      throw new LabhostError(
        'imageTooSmall',
        `the image (${manifest.image.size} bytes) is larger than slot ${target} (${slotBytes} bytes)`,
        'build a smaller image or re-partition with larger slots; nothing was written',
      )
    }
    const http = httpSource(source)
    const plan: UpdatePlan = {
      disk: diskPath,
      from: {
        slot: boot.slot,
        version: current,
        firstByte: Number(activeEntry.firstLba) * disk.sectorSize,
        slotBytes: Number(activeEntry.lastLba - activeEntry.firstLba + 1n) * disk.sectorSize,
      },
      to: { slot: target, version: manifest.version, partition: entry.number, firstByte, bytes: manifest.image.size, slotBytes },
      source: source.transportWhere,
      input: {
        kind: source.kind,
        manifest: manifestFile,
        delta: !!o.delta && http !== null,
        torrent: o.torrent && http ? torrentUrlFor(http.remote.url) : null,
      },
      gptFingerprint: gptFingerprint(gpt),
      writes: [
        `slot ${target} (partition ${entry.number}, bytes ${firstByte}..${firstByte + manifest.image.size - 1})`,
        `trial state under ${o.paths.stateRoot}`,
        `one GPT sector (commit), then its backup mirror`,
      ],
      trial: { boots: o.trialBoots ?? manifest.trial?.boots ?? 3, stateRoot: o.paths.stateRoot },
      commit: planCommit(disk, gpt, target, manifest),
    }
    return { manifest, source, plan: frozen(plan) }
  } finally {
    disk.close()
  }
}

/** A plan frozen all the way down (a Buffer cannot be frozen; nothing writes into the plan's). */
function frozen<T>(x: T): T {
  if (x && typeof x === 'object' && !ArrayBuffer.isView(x) && !Object.isFrozen(x)) {
    for (const v of Object.values(x)) frozen(v)
    Object.freeze(x)
  }
  return x
}

/** The switch to `target` on the table as read, and the sector the trial's rollback restores. */
function planCommit(disk: Disk, gpt: Gpt, target: SlotId, manifest: Manifest): CommitPlan {
  const sw = planSwitch(disk, gpt, target, manifest.layout.slots)
  const sector = sw.writes.find((w) => w.region === 'primary-array')
  if (!sector) throw new Error(`the switch to slot ${target} plans no write of the primary array`)
  return { switch: sw, sector, mirror: sw.writes.find((w) => w.region === 'backup-array') ?? null, rollbackSector: disk.readSectors(sector.lba, 1) }
}

/** Where the image's bytes come from, as the plan says: the source as opened, a delta, or BitTorrent. */
interface Acquired {
  source: UpdateSource
  delta?: DeltaChoice
  /** Said of the slot's write (the plan's first write) in the result. */
  how?: string
}

/**
 * The source as opened, or (a delta) the chunks the host has plus the missing ones downloaded, or
 * the transport file downloaded with BitTorrent (not on a dry run). Reads both slots; writes
 * nothing to the disk.
 */
async function acquire(o: UpdateOptions, plan: UpdatePlan, manifest: Manifest, source: UpdateSource, log: (line: string) => void): Promise<Acquired> {
  switch (source.kind) {
    case 'http':
      break
    case 'local-raw':
    case 'local-zstd':
    case 'delta':
    case 'torrent':
      return { source }
    default:
      return unhandledKind(source)
  }
  const delta = await chooseDelta(plan, manifest, source, log, o.torrent && plan.input.torrent !== null ? { ...o.torrent, log } : undefined, o.dryRun)
  if (delta.source !== source || plan.input.torrent === null) return delta
  if (o.dryRun) return { ...delta, how: `downloaded with BitTorrent (${plan.input.torrent})` }
  return { ...delta, source: await torrentSource(source, manifest, { ...o.torrent!, log }) }
}

async function chooseDelta(
  plan: UpdatePlan,
  manifest: Manifest,
  source: HttpSource,
  log: (line: string) => void,
  torrent?: TorrentOptions,
  dryRun?: boolean,
): Promise<Acquired> {
  if (!plan.input.delta) return { source }
  const unusable = deltaUnusable(manifest)
  if (unusable) {
    log(`downloading the whole image: ${unusable}`)
    return { source, delta: { used: false, reason: unusable } }
  }
  // with --torrent: the pack made for the version this host runs, first — its block index comes
  // with it, so the lab's hosts do not each fetch the index from the server (delta-pack.ts)
  const packs = torrent && !dryRun ? await fetchPackList(source, manifest, log) : null
  const mine = packs && packForVersion(packs, plan.from.version, manifest)
  const slots = {
    active: { firstByte: plan.from.firstByte, bytes: plan.from.slotBytes },
    target: { firstByte: plan.to.firstByte, bytes: plan.to.slotBytes },
  }
  // the slots are read and hashed while the pack downloads (the disk is locked: nothing else writes them)
  const scanning = mine ? scanSlots(manifest, plan.disk, slots) : null
  scanning?.catch(() => {}) // awaited below: a failure during the download is not an unhandled one
  let fetched: FetchedPack | null
  try {
    fetched = mine ? await downloadPack(source, manifest, mine, torrent!) : null
  } catch (e) {
    await scanning?.catch(() => {})
    throw e
  }
  const index = (fetched && packIndex(fetched, manifest, log)) ?? (await fetchBlockIndex(manifest, source, log))
  const d = scanning ? planFromScan(manifest, slots, await scanning, index) : await planDelta(manifest, plan.disk, slots, index)
  const s = d.summary
  const what =
    `${s.fetched} of ${s.chunks} chunks (${s.patched} of them in part), ${s.fetchedFrames} of ${s.frames} frames of ${s.frameSize >> 10} KiB, ` +
    `${s.fetchBytes} of ${s.transportBytes} transport bytes in ${s.requests} request(s); ` +
    `${s.fromActive} from slot ${plan.from.slot}, ${s.fromTarget} from slot ${plan.to.slot}, ${s.fromBlocks} assembled from blocks, ${s.zero} zero`
  if (!deltaPays(s)) {
    log(`downloading the whole image: a delta would fetch ${what}`)
    return { source, delta: { used: false, reason: `a delta would fetch ${what}` } }
  }
  log(`delta: fetching ${what}`)
  // with --torrent: from a delta pack that holds this host's ranges, over BitTorrent (delta-pack.ts)
  if (torrent && dryRun) return { source, delta: { used: true, ...s }, how: `delta: ${what}; over BitTorrent where a delta pack holds it` }
  // else a pack that holds every range this host needs, if one does
  const holding = !fetched && packs ? packFor(packs, d.ranges) : null
  if (holding) fetched = await downloadPack(source, manifest, holding, torrent!)
  else if (!fetched && packs) log("no delta pack holds this host's delta; it comes over HTTP")
  const pack = fetched
  if (pack) {
    const via = `, from the delta pack ${pack.pack.file} (BitTorrent)`
    source.stats.torrent = {
      url: `${pack.pack.file}.torrent`,
      file: pack.file,
      seconds: pack.seconds,
      seederPid: pack.seederPid,
      seedMinutes: torrent!.seedMinutes,
    }
    return {
      source: deltaSource(d, manifest, plan.disk, source, packRanges(pack.pack, pack.file, httpRanges(source.remote, source.stats)), via),
      delta: { used: true, ...s, pack: pack.pack.file },
      how: `delta: ${what}${via}`,
    }
  }
  return { source: deltaSource(d, manifest, plan.disk, source), delta: { used: true, ...s }, how: `delta: ${what}` }
}

/**
 * The image's block index (short hashes of every 4 KiB block), downloaded and checked against the
 * signed manifest; without one (an older image, or a damaged download) the delta matches whole
 * chunks only.
 */
async function fetchBlockIndex(manifest: Manifest, source: HttpSource, log: (line: string) => void): Promise<Buffer | undefined> {
  const b = manifest.blocks
  if (!b) return undefined
  const url = new URL(path.posix.basename(b.file), source.remote.url).toString()
  try {
    const data = await fetchBytes(url, source.remote.fetch, { maxBytes: b.size })
    source.stats.requests++
    source.stats.bytes += data.length
    if (data.length === b.size && crypto.createHash('sha256').update(data).digest('hex') === b.sha256) return data
    log(`${url} does not match the signed manifest: matching whole chunks only`)
  } catch (e) {
    log(`${url}: ${(e as Error).message}; matching whole chunks only`)
  }
  return undefined
}

/** The result's view of the plan: the slot's write says how its bytes were fetched. */
function resultOf(plan: UpdatePlan, acquired: Acquired): UpdatePlanData & { delta?: DeltaChoice } {
  const data = planData(plan)
  const [slotWrite, ...rest] = data.writes
  return { ...data, writes: acquired.how ? [`${slotWrite}, ${acquired.how}`, ...rest] : data.writes, ...(acquired.delta ? { delta: acquired.delta } : {}) }
}

export async function runUpdate(o: UpdateOptions): Promise<UpdateResult> {
  const log = o.log ?? (() => {})
  const started = Date.now()
  // The disk's lock first (lib/disk-lock.ts; `slots switch` and `slots repair` take it too): the
  // table planned against stays the table written to. A dry run writes nothing and takes none.
  const lock = o.dryRun ? null : await lockDisk(o.disk ?? readBootInfo(o.paths).disk, 'labhost update')
  try {
    return await lockedUpdate(o, log, started)
  } finally {
    await lock?.release()
  }
}

async function lockedUpdate(o: UpdateOptions, log: (line: string) => void, started: number): Promise<UpdateResult> {
  const { plan, manifest, source: opened } = await planUpdate(o)
  const seconds = { plan: (Date.now() - started) / 1000, scan: 0, write: 0, verify: 0, commit: 0, total: 0 }
  if (o.dryRun) {
    const acquired = await acquire(o, plan, manifest, opened, log)
    return { ...resultOf(plan, acquired), labhost: LABHOST_VERSION, seconds, transfer: opened.stats }
  }
  o.phase?.('start')
  // fault injection (test builds only): the mutant that switches before the slot is written
  const commitFirst = fault('COMMIT_BEFORE_WRITE') === '1'
  if (commitFirst) await commit(o, plan, manifest, started)
  let t0 = Date.now()
  const acquired = await acquire(o, plan, manifest, opened, log)
  const { source } = acquired
  seconds.scan = (Date.now() - t0) / 1000
  o.phase?.('write')
  log(`writing ${manifest.name} ${manifest.version} from ${source.transportWhere} to slot ${plan.to.slot} of ${plan.disk}`)
  t0 = Date.now()
  // with readBack 'during', chunks are read back from the disk as soon as they are written
  // (O_DIRECT); what is left (all of it by default) is read back after the fdatasync
  const target = { disk: plan.disk, firstByte: plan.to.firstByte, name: `slot ${plan.to.slot}` }
  const written = await writeImage(target, manifest, imageInput(source), {
    progress: o.progress?.('write'),
    readBack: o.readBack === 'during',
    beforeReadBack: o.beforeReadBack,
  })
  seconds.write = (Date.now() - t0) / 1000
  log(
    written.readBack.size
      ? `reading the rest of slot ${plan.to.slot} back (${written.readBack.size} of ${manifest.image.chunks.length} chunks were read back while writing)`
      : `reading slot ${plan.to.slot} back`,
  )
  o.phase?.('verify')
  t0 = Date.now()
  await verifyImage(target, manifest, { progress: o.progress?.('verify'), skip: written.readBack, beforeReadBack: o.beforeReadBack })
  seconds.verify = (Date.now() - t0) / 1000
  t0 = Date.now()
  if (!commitFirst) await commit(o, plan, manifest, started)
  seconds.commit = (Date.now() - t0) / 1000
  seconds.total = (Date.now() - started) / 1000
  return { ...resultOf(plan, acquired), labhost: LABHOST_VERSION, seconds, transfer: source.stats, written: written.stats }
}

/**
 * Arm the trial, then the one-sector switch (DESIGN §3) the plan holds, on the table the plan was
 * made against (re-read and compared first: a table changed since is never switched).
 */
async function commit(o: UpdateOptions, plan: UpdatePlan, manifest: Manifest, started: number): Promise<void> {
  const log = o.log ?? (() => {})
  const disk = Disk.open(plan.disk)
  try {
    if (gptFingerprint(readGpt(disk)) !== plan.gptFingerprint) {
      throw new LabhostError(
        'gptChanged',
        `the partition table of ${plan.disk} changed while slot ${plan.to.slot} was written (something else wrote the GPT)`,
        `inspect with \`labhost slots status\` and run the update again; slot ${plan.to.slot} was written but not switched to, nothing else was written`,
      )
    }
    const { sector, mirror } = plan.commit
    // Armed before the commit: from the instant the new slot boots, it is on trial.
    o.phase?.('arm-trial')
    writeTrialState(plan.trial.stateRoot, {
      slot: plan.to.slot,
      bootsLeft: plan.trial.boots,
      version: plan.to.version,
      primaryLba: sector.lba,
      backupLba: mirror?.lba ?? sector.lba,
      committedSector: sector.data,
      rollbackSector: plan.commit.rollbackSector,
      fromVersion: plan.from.version,
      updatedAt: new Date(),
      updateSeconds: (Date.now() - started) / 1000,
    })
    log(`switching to slot ${plan.to.slot}`)
    o.phase?.('commit')
    await applySwitch(disk, plan.commit.switch, manifest.layout.slots, log)
    o.phase?.('done')
  } finally {
    disk.close()
  }
}

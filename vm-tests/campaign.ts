// The random-reset campaign (issue 6): a host in a VM updates itself again and again between two
// versions (every cycle writes the inactive slot and switches); the harness resets the machine at
// an instant drawn from the seed — uniformly over the update, or just before and after the commit
// write, aimed by the phases the guest announces on its serial console — and then the machine
// must boot, into the old or the new version, with that slot's bytes equal to the signed image.
// A cycle that reaches no userspace within the timeout is a brick, and so is one whose boot
// fails for a reason the guest prints (the initramfs's LABHOST-INITRAMFS-FAIL, a kernel panic):
// the run stops and keeps the disks and the serial log.
import fs from 'node:fs'
import path from 'node:path'
import { hashRange, prng } from '../test-support/test-helpers.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildImage } from '../image-build/build.ts'
import { TRIAL_FILE } from '../image-format/trial-state.ts'
import { readManifest, type Manifest } from '../image-format/manifest.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { buildSelector } from '../image-build/selector.ts'
import { loadLayout } from '../lib/layout.ts'
import { buildHostDisks, withPartition, type HostDisks } from '../test-support/host-disks.ts'
import { GUEST_LABHOST, stageLabhost } from './fixtures/lean-image.ts'
import { leanRecipe } from '../test-support/lean-recipe.ts'
import type { RunningVm, VmDriver } from './driver.ts'
import { Console, type Marker, type MarkerPattern } from './console-markers.ts'
import { uefiVarsCopy, type VmSpec } from './qemu.ts'
import { FAULTS, type FaultName } from '../lib/faults.ts'

export interface CampaignOptions {
  driver: VmDriver
  cycles: number
  seed: number
  /** Scratch space for images and disks. */
  workDir: string
  /** Where a brick's disks and serial log are kept. */
  keepDir: string
  /** A cycle that reaches no userspace within this is a brick. */
  bootTimeoutMs?: number
  /**
   * BIOS: a boot after a reset that shows neither SYSLINUX's banner nor userspace within this is
   * a brick already (a torn slot's bootloader prints nothing); default: wait bootTimeoutMs.
   */
  bootloaderTimeoutMs?: number
  /** Share of resets aimed at the commit (the rest fall uniformly over the update); default 0.4. */
  commitWeight?: number
  /**
   * Stratified aims for a short run: resets alternate between commit and uniform aims, and the
   * k-th of n resets of an aim falls at a random instant inside the k-th n-th of its window, so
   * a handful of resets covers the whole update and both sides of the switch; the first uniform
   * one falls inside the write (as aimAtWrite), so a short run always tears a slot. Default:
   * every aim and instant drawn independently (the soak).
   */
  stratified?: boolean
  /**
   * Uniform aims fall inside the write, measured from the guest's own `write` announcement (not
   * from the update's start): for a mutant whose write comes after its commit.
   */
  aimAtWrite?: boolean
  /**
   * Commit aims without timing: the guest (the fault-enabled build, LABHOST_FAULT_HOLD) waits
   * before each GPT sector write of the switch until the harness answers on its second serial
   * port, and a commit-aimed reset comes while it waits — before the primary array is written
   * (the trial armed, the switch not made) or before the backup array is (the switch made, the
   * mirror not). However busy the host, such a reset lands exactly there (CycleRecord.held).
   * Uniform aims stay timed. Needs a driver that can send (QEMU).
   */
  hold?: boolean
  /** Virtual CPUs of the host under test (default 1). */
  cpus?: number
  /**
   * A mutant the campaign must catch (lib/faults.ts, run with dist/labhost-faults): naive-switch,
   * the switch without CRC compensation; commit-before-write, the switch before the slot is written.
   */
  mutant?: Mutant
  /**
   * The PC's firmware (default bios: SeaBIOS, gptmbr, extlinux). uefi: OVMF on q35 (no CSM) with a
   * persistent variable store, the host's disk laid out with an ESP holding the selector.
   */
  firmware?: 'bios' | 'uefi'
  log?: (line: string) => void
  /** Called with the report so far after every cycle (a long soak keeps a record if it is cut off). */
  onCycle?: (report: CampaignReport) => void
  /**
   * The partial report of a run of the same seed that was cut off: its cycles count, its random
   * draws are replayed so the next cycles get the instants the uncut run would have drawn, and
   * the machine starts afresh (1.0.0 in slot A, a new calibration).
   */
  resume?: CampaignReport
  /**
   * Phase lengths measured by an earlier campaign on this machine: no calibration cycle, the
   * first update is already aimed (a mutant whose aim needs the phases, not a clean update).
   */
  calibration?: NonNullable<CampaignReport['calibration']>
}

/** brick: no userspace in time, or a version came up whose slot is not its signed image. */
export type Outcome = 'completed' | 'old' | 'new' | 'brick'

export interface CycleRecord {
  cycle: number
  /** calibration: the first update runs to its end unreset, to learn how long updates take. */
  aim: 'calibration' | 'uniform' | 'commit'
  from: string
  to: string
  /** Why the cycle is a brick: the guest's own failure message, or what the harness missed. */
  why?: string
  /** Milliseconds after the update announced `start`; null for the calibration cycle. */
  resetAtMs: number | null
  /** The last phase the guest announced before the reset (`boot`: it had already rebooted). */
  phase: string | null
  outcome: Outcome
  /** What came up after the reset (or the reboot). */
  booted: { version: string; slot: string } | null
  /** Reset (or reboot) to userspace. */
  bootSeconds: number | null
  /** labhost update's exit code when it ended by itself without switching (a failed update). */
  updateExit?: number
  /**
   * MiB chunks of the slot about to be written that already held the target image's bytes, read
   * from the disk by the harness as the update was announced: 0 means every chunk the update
   * writes changes the slot (absent in reports made before the campaign scrambled the slot).
   */
  heldBefore?: number
  /** The hold point the guest was waiting at when the reset came (CampaignOptions.hold). */
  held?: string
}

export interface CampaignReport {
  driver: string
  accel: string
  /** uefi when the PC booted through OVMF and the selector (absent: legacy BIOS). */
  firmware?: 'uefi'
  seed: number
  cycles: number
  resets: number
  old: number
  new: number
  bricked: number
  failedUpdates: number
  seconds: number
  resetsPerHour: number
  calibration: { updateMs: number; verifyMs: number; commitTailMs: number; writeMs?: number } | null
  /** How aims and instants were drawn (CampaignOptions.stratified). */
  aims: 'independent' | 'stratified'
  /** Commit aims reset while the guest held before a switch write (CampaignOptions.hold). */
  held?: boolean
  records: CycleRecord[]
  kept?: string
  /** The runs the report was made in: more than one when a cut-off run was resumed. */
  runs?: { firstCycle: number; seconds: number }[]
}

/**
 * How many numbers a recorded cycle drew from the seed's sequence: the aim; then the uniform
 * instant; then, aimed at the commit, the instant around it. A cycle whose update failed before
 * it started drew only its aim; the calibration drew nothing.
 */
export function drawsOf(r: CycleRecord): number {
  if (r.aim === 'calibration') return 0
  if (r.resetAtMs === null && r.outcome === 'completed') return 1
  return r.aim === 'commit' ? 3 : 2
}

/** The aim of the nth counted cycle, from its draw (made in both modes, so drawsOf() holds). */
export function aimOf(o: { stratified?: boolean; commitWeight: number }, nth: number, draw: number): 'commit' | 'uniform' {
  if (o.stratified) return nth % 2 === 0 ? 'commit' : 'uniform'
  return draw < o.commitWeight ? 'commit' : 'uniform'
}

/**
 * Where in its aim's window (0..1) the nth counted cycle resets, from its draw: the draw itself,
 * or stratified, inside the k-th of n equal slices when it is the k-th of n resets of its aim.
 */
export function fractionOf(o: { stratified?: boolean; cycles: number }, nth: number, draw: number): number {
  if (!o.stratified) return draw
  const n = nth % 2 === 0 ? Math.ceil(o.cycles / 2) : Math.floor(o.cycles / 2)
  return (Math.floor(nth / 2) + draw) / n
}

export const summaryLine = (r: CampaignReport): string =>
  `cycles ${r.cycles}, resets ${r.resets}, old ${r.old}, new ${r.new}, bricked ${r.bricked}` + (r.failedUpdates ? `, failed updates ${r.failedUpdates}` : '')

const VERSIONS = ['1.0.0', '2.0.0'] as const
const MiB = 1 << 20

/** The two versions the campaign alternates between: lean test images (fixtures/lean-image.ts). */
export async function buildCampaignImages(dir: string): Promise<{ keyFile: string; dirs: Record<string, string>; manifests: Record<string, Manifest> }> {
  const keys = cacheKeys()
  const dirs: Record<string, string> = {}
  const manifests: Record<string, Manifest> = {}
  for (const version of VERSIONS) {
    const recipe = leanRecipe(`${dir}/recipes/campaign-${version}.yaml`, (r) => {
      r.version = version
    })
    const built = await buildImage(recipe, { out: `${dir}/v${version}`, keyFile: keys.privateKeyFile })
    dirs[version] = path.dirname(built.manifestFile)
    manifests[version] = readManifest(built.manifestFile)
  }
  return { keyFile: keys.privateKeyFile, dirs, manifests }
}

/**
 * The guest's side of a cycle, run by the test image's init on every boot: confirm the running
 * slot, fill the first `scrambleMiB` of the inactive slot with 0xFF bytes (so the update writes
 * bytes the slot does not hold: two versions alternating would otherwise rewrite what is there,
 * and a torn or skipped write could not show), then update to the other version (a downgrade
 * every second time) and reboot. The harness checks the scramble from outside (CycleRecord.heldBefore).
 */
export const MUTANTS = { 'naive-switch': 'SKIP_CRC_COMPENSATION', 'commit-before-write': 'COMMIT_BEFORE_WRITE' } as const satisfies Record<string, FaultName>
export type Mutant = keyof typeof MUTANTS

/**
 * The hold points of the switch (bootloader/sector-writes.ts): before each sector it writes, and
 * `written` after the last. The mirror is written only when the backup array does not hold the
 * new sector already (a reset before an earlier mirror can leave it so), so "after the commit,
 * before the mirror" is the backup-array hold when there is one, else `written`.
 */
export const HOLD_POINTS = ['primary-array', 'backup-array', 'written'] as const
const AFTER_COMMIT = ['backup-array', 'written']
const HOLD_TTY = '/dev/ttyS1'

function cycleHook(mutant: Mutant | undefined, scrambleMiB: number, hold: boolean): string {
  return `#!/bin/sh
L=${GUEST_LABHOST}
# confirm the running slot when it is on trial (each labhost start costs seconds under TCG)
[ -e /var/log/${TRIAL_FILE} ] && echo "LABHOST-MARK $($L mark-good 2>&1)"
V=$(cat /etc/labhost/version)
case "$V" in ${VERSIONS[0]}) NEXT=${VERSIONS[1]} ;; *) NEXT=${VERSIONS[0]} ;; esac
. /run/labhost/boot
case "$SLOT" in A) P=\${DISK}2 ;; *) P=\${DISK}1 ;; esac
# never the rollback target of a pending trial (mark-good above ended it, unless it failed)
if [ ! -e /var/log/${TRIAL_FILE} ]; then
  dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\\000' '\\377' > /tmp/ff
  i=0; while [ $i -lt ${scrambleMiB} ]; do cat /tmp/ff; i=$((i+1)); done > $P
  sync
fi
echo "LABHOST-CYCLE-UPDATE from=$V to=$NEXT"
${mutant ? `${FAULTS[MUTANTS[mutant]]}=1 ` : ''}${hold ? `${FAULTS.HOLD}=${HOLD_TTY} ` : ''}$L update /qcow2/backing/$NEXT --allow-downgrade --trial-boots 3 --announce-phases --reboot > /dev/console 2>&1
echo "LABHOST-UPDATE-EXIT $?"
sync
reboot -f
`
}

async function stageCampaign(disks: HostDisks, dirs: Record<string, string>, mutant: Mutant | undefined, scrambleMiB: number, hold: boolean): Promise<void> {
  // the release executable ignores fault variables: a mutant or a holding guest runs the fault-enabled build
  await stageLabhost(disks, { faults: mutant !== undefined || hold })
  await withPartition(
    disks.ssd,
    disks.ssdPlan.find((p) => p.mount === '/qcow2/backing')!,
    async (root) => {
      for (const [version, dir] of Object.entries(dirs)) {
        fs.mkdirSync(`${root}/${version}`)
        for (const f of ['manifest.json', 'root.img.zst']) fs.copyFileSync(`${dir}/${f}`, `${root}/${version}/${f}`)
      }
    },
  )
  await withPartition(
    disks.ssd,
    disks.ssdPlan.find((p) => p.mount === '/persistent')!,
    async (root) => {
      fs.writeFileSync(`${root}/test-hook`, cycleHook(mutant, scrambleMiB, hold), { mode: 0o755 })
    },
  )
}

const MARKERS: MarkerPattern[] = [
  [/LABHOST-USERSPACE version=(\S+) slot=([AB])/, 'userspace'],
  // extlinux's banner on the serial console: the flagged slot's bootloader runs (BIOS)
  [/SYSLINUX (\S+)()/, 'bootloader'],
  [/LABHOST-PHASE (\S+)()/, 'phase'],
  [/LABHOST-CYCLE-UPDATE from=(\S+) to=(\S+)/, 'cycle'],
  [/LABHOST-UPDATE-EXIT (\d+)()/, 'exit'],
  [/LABHOST-HOLD (\S+)()/, 'hold'],
  // a boot that fails says so: the initramfs's own marker, or the kernel's
  [/LABHOST-INITRAMFS-FAIL (.*?)\r?$()/, 'boot-failed'],
  [/(Kernel panic - not syncing: .*?)\r?$()/, 'boot-failed'],
]

function slotHash(disks: HostDisks, slot: string, bytes: number): string {
  return hashRange(disks.ssd, disks.ssdPlan[slot === 'A' ? 0 : 1]!.firstLba * 512, bytes)
}

/** How many of the image's chunks the slot already holds, byte for byte. */
export function heldChunks(disks: HostDisks, slot: string, m: Manifest): number {
  const first = disks.ssdPlan[slot === 'A' ? 0 : 1]!.firstLba * 512
  const { chunkSize, size } = m.image
  return m.image.chunks.filter((sha256, i) => hashRange(disks.ssd, first + i * chunkSize, Math.min(chunkSize, size - i * chunkSize)) === sha256).length
}

type Calibration = NonNullable<CampaignReport['calibration']>

/** A cut-off report may be resumed only by a run made the same way (seed, firmware, holds, driver). */
function checkResumable(prior: CampaignReport, o: CampaignOptions, fresh: CampaignReport): void {
  if (o.stratified) throw new Error('a stratified campaign cannot be resumed: its strata depend on the cycle count')
  if ((prior.firmware ?? 'bios') !== (o.firmware ?? 'bios'))
    throw new Error(`the report to resume ran on ${prior.firmware ?? 'bios'} firmware, this run would use ${o.firmware ?? 'bios'}`)
  if ((prior.held ?? false) !== (fresh.held ?? false))
    throw new Error(`the report to resume was made ${prior.held ? 'with' : 'without'} holds: run it ${prior.held ? 'with' : 'without'} --hold`)
  if (prior.driver !== fresh.driver || prior.accel !== fresh.accel)
    throw new Error(`the report to resume ran on ${prior.driver} (${prior.accel}), this run would use ${fresh.driver} (${fresh.accel})`)
}

/** The campaign's host: the two versions' images, its disks (1.0.0 in slot A, A flagged) with the cycle hook staged, and its VM. */
async function prepareHost(o: CampaignOptions, hold: boolean): Promise<{ manifests: Record<string, Manifest>; disks: HostDisks; spec: VmSpec }> {
  fs.mkdirSync(o.workDir, { recursive: true })
  const { dirs, manifests } = await buildCampaignImages(o.workDir)
  const uefi = o.firmware === 'uefi'
  const layout = uefi ? loadLayout(path.join(import.meta.dirname, '../image-build/layouts/test-esp.yaml')) : loadRecipe('test').layout
  const selector = uefi ? (await buildSelector({ layout, out: path.join(o.workDir, 'BOOTX64.EFI') })).file : undefined
  const disks = await buildHostDisks(o.workDir, layout, `${dirs[VERSIONS[0]]}/root.img`, { slots: ['A'], flag: 'A', restMiB: 200, selector })
  const imageBytes = Math.max(...Object.values(manifests).map((m) => m.image.size))
  await stageCampaign(disks, dirs, o.mutant, Math.ceil(imageBytes / MiB), hold)
  const spec: VmSpec = {
    holdPort: hold,
    disks: [
      { file: disks.ssd, bus: 'ide-hd', rotationRate: 1 },
      { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 },
    ],
    memoryMb: uefi ? 768 : 512,
    cpus: o.cpus ?? 1,
    ...(uefi ? { uefi: { vars: uefiVarsCopy(o.workDir) } } : {}),
  }
  return { manifests, disks, spec }
}

/** The running report: counted cycles, time over all runs (a resumed report keeps its earlier runs). */
class Tally {
  private started = Date.now()
  private runs: { firstCycle: number; seconds: number }[]
  private report: CampaignReport
  private onCycle: ((r: CampaignReport) => void) | undefined
  readonly firstCycle: number

  constructor(report: CampaignReport, prior: CampaignReport | undefined, onCycle?: (r: CampaignReport) => void) {
    this.report = report
    this.onCycle = onCycle
    this.firstCycle = (prior?.records.at(-1)?.cycle ?? -1) + 1
    this.runs = prior ? (prior.runs ?? [{ firstCycle: 0, seconds: prior.seconds }]) : []
  }

  get startedAt(): number {
    return this.started
  }
  counted(): number {
    return this.report.records.filter((r) => r.aim !== 'calibration').length
  }

  update(): void {
    const report = this.report
    report.cycles = this.counted()
    report.runs = [...this.runs, { firstCycle: this.firstCycle, seconds: (Date.now() - this.started) / 1000 }]
    report.seconds = report.runs.reduce((n, r) => n + r.seconds, 0)
    report.resetsPerHour = Math.round(report.resets / (report.seconds / 3600))
    if (report.runs.length === 1) delete report.runs
  }

  keep(record: CycleRecord): void {
    this.report.records.push(record)
    this.update()
    this.onCycle?.(this.report)
  }
}

/** The VM under test and its console: boots judged against the signed images, bricks kept for inspection. */
class HostUnderTest {
  vm!: RunningVm
  con!: Console
  lastUp = 0
  lastSlot = ''
  private readonly o: CampaignOptions
  private readonly spec: VmSpec
  private readonly serialFile: string
  private readonly disks: HostDisks
  private readonly manifests: Record<string, Manifest>
  private readonly report: CampaignReport
  private readonly tally: Tally
  private readonly log: (l: string) => void

  constructor(a: {
    o: CampaignOptions
    spec: VmSpec
    serialFile: string
    disks: HostDisks
    manifests: Record<string, Manifest>
    report: CampaignReport
    tally: Tally
    log: (l: string) => void
  }) {
    this.o = a.o
    this.spec = a.spec
    this.serialFile = a.serialFile
    this.disks = a.disks
    this.manifests = a.manifests
    this.report = a.report
    this.tally = a.tally
    this.log = a.log
  }

  async start(): Promise<void> {
    this.vm = await this.o.driver.start(this.spec, this.serialFile)
    this.con = new Console(this.vm, MARKERS)
  }

  /** The guest's own power-off (never expected) is answered by powering it on again. */
  async restartIfGone(): Promise<void> {
    if (!this.vm.exited()) return
    this.log('the VM powered off; powering it on again')
    await this.vm.powerOff()
    await this.start()
  }

  async brick(record: CycleRecord, why: string): Promise<void> {
    record.outcome = 'brick'
    record.why = why
    this.report.bricked++
    await this.vm.powerOff()
    const dir = path.join(this.o.keepDir, `brick-seed${this.o.seed}-cycle${record.cycle}`)
    fs.mkdirSync(dir, { recursive: true })
    for (const f of [this.disks.ssd, this.disks.hdd, this.serialFile]) fs.copyFileSync(f, path.join(dir, path.basename(f)))
    fs.writeFileSync(path.join(dir, 'why.txt'), `${why}\n${JSON.stringify(record, null, 2)}\n`)
    this.report.kept = dir
    this.tally.keep(record)
    this.log(`BRICK in cycle ${record.cycle}: ${why}; disks and serial log kept in ${dir}`)
  }

  /** Wait for userspace after a reset or reboot; check the booted slot holds that version's bytes exactly. */
  async awaitBoot(record: CycleRecord, since: number, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    const early = this.o.bootloaderTimeoutMs
    let up = early ? await this.con.until(['bootloader', 'userspace', 'boot-failed'], Math.min(deadline, Date.now() + early)) : null
    if (early && !up) {
      await this.brick(record, `no bootloader output within ${early / 1000} s`)
      return false
    }
    if (!up || up.kind === 'bootloader') up = await this.con.until(['userspace', 'boot-failed'], deadline)
    if (up?.kind === 'boot-failed') {
      await this.brick(record, `the boot failed: ${up.a}`)
      return false
    }
    if (up) this.lastUp = up.at
    if (!up) {
      await this.brick(record, `no userspace within ${timeoutMs / 1000} s`)
      return false
    }
    record.booted = { version: up.a, slot: up.b }
    this.lastSlot = up.b
    record.bootSeconds = (up.at - since) / 1000
    const m = this.manifests[up.a]
    if (!m || slotHash(this.disks, up.b, m.image.size) !== m.image.sha256) {
      await this.brick(record, `version ${up.a} came up from slot ${up.b}, whose bytes are not that signed image`)
      return false
    }
    return true
  }
}

/** One update as the console shows it: its phases, its exit, and the holds the guest waits at (answered unless aimed at). */
class UpdateWatch {
  phases: Record<string, number> = {}
  phase: string | null = null
  aimedHold: string | undefined
  private readonly host: HostUnderTest
  private readonly record: CycleRecord

  constructor(host: HostUnderTest, record: CycleRecord) {
    this.host = host
    this.record = record
  }

  readonly note = (m: Marker): void => {
    if (m.kind === 'hold') {
      if (m.a === this.aimedHold || (this.aimedHold === 'backup-array' && AFTER_COMMIT.includes(m.a))) this.record.held = m.a
      else this.host.vm.send!('go\n')
    }
    if (m.kind === 'phase') {
      this.phases[m.a] = m.at
      this.phase = m.a
    }
    if (m.kind === 'exit') this.record.updateExit = Number(m.a)
    if (m.kind === 'userspace') this.phase = 'boot'
  }

  /**
   * Read the console until `done()`, labhost's exit or the deadline; and, unless `pastBoot`, until
   * the guest boots (the update is over).
   */
  async until(done: () => boolean, deadline: number, pastBoot = false): Promise<void> {
    for (let m: Marker | null; !done() && (pastBoot || this.phase !== 'boot') && this.record.updateExit === undefined;) {
      if (!(m = await this.host.con.next(deadline))) break
      this.note(m)
    }
  }

  awaitPhase(name: string, deadline: number): Promise<void> {
    return this.until(() => this.phases[name] !== undefined, deadline)
  }
}

/**
 * The calibration cycle: the update runs to its end and reboots by itself; its phase lengths aim
 * the resets of the cycles after it. Null when it bricked (then the campaign ends).
 */
async function calibrate(
  host: HostUnderTest,
  watch: UpdateWatch,
  record: CycleRecord,
  report: CampaignReport,
  announcedAt: number,
  timeoutMs: number,
  log: (l: string) => void,
): Promise<Calibration | null> {
  const { phases } = watch
  const start = phases.start!
  const up = await host.con.until(['userspace', 'boot-failed'], Date.now() + timeoutMs, watch.note)
  if (up?.kind === 'boot-failed') {
    await host.brick(record, `the boot after the calibration update failed: ${up.a}`)
    return null
  }
  if (!up || phases.done === undefined || phases['arm-trial'] === undefined) {
    await host.brick(record, up ? 'the calibration update did not finish' : 'no userspace after the calibration update')
    return null
  }
  const calibration = {
    updateMs: phases.done - start,
    verifyMs: phases['arm-trial'] - (phases.verify ?? phases['arm-trial']),
    commitTailMs: phases.done - phases['arm-trial'],
    writeMs: (phases.verify ?? phases.done) - (phases.write ?? start),
  }
  report.calibration = calibration
  record.booted = { version: up.a, slot: up.b }
  host.lastSlot = up.b
  record.bootSeconds = (up.at - phases.done) / 1000
  if (up.a !== record.to) {
    await host.brick(record, `the calibration update to ${record.to} booted ${up.a}`)
    return null
  }
  const sec = (a: number, b: number) => `${((b - a) / 1000).toFixed(1)} s`
  log(
    `calibration: userspace to update start ${sec(host.lastUp, start)} (labhost mark-good ${sec(host.lastUp, announcedAt)}), write ${sec(start, phases.verify ?? start)}, ` +
      `read-back ${sec(phases.verify ?? start, phases['arm-trial'])}, arm-trial to done ${calibration.commitTailMs} ms, reboot to userspace ${sec(phases.done, up.at)}`,
  )
  return calibration
}

/**
 * When to reset this cycle (ms epoch): anywhere in the update, or around the commit — from half a
 * second before the trial is armed (the end of the read-back, as calibrated) to half a second
 * after the switch; with holds, while the guest waits at the aimed switch write. The draws are
 * taken in the order drawsOf() counts them: the uniform instant, then the commit's.
 */
async function aimReset(
  o: CampaignOptions,
  nth: number,
  rnd: () => number,
  watch: UpdateWatch,
  record: CycleRecord,
  calibration: Calibration,
  hold: boolean,
): Promise<number> {
  const { phases } = watch
  const start = phases.start!
  const within = (u: number) => fractionOf(o, nth, u)
  const deadline = Date.now() + 4 * calibration.updateMs + 60_000
  const u = within(rnd())
  let resetAt = start + u * (calibration.updateMs + 1000)
  if (record.aim === 'uniform' && (o.aimAtWrite || (o.stratified && nth === 1))) {
    // inside the first 80 % of the write as calibrated, from the guest's announcement of it
    await watch.awaitPhase('write', deadline)
    resetAt = (phases.write ?? Date.now()) + u * (calibration.writeMs ?? 1000) * 0.8
  }
  if (record.aim === 'commit' && hold) {
    // where the draw falls in the window picks the hold: the first half before the primary
    // array is written, the second after it, before the mirror (or the end of the switch)
    watch.aimedHold = HOLD_POINTS[within(rnd()) < 0.5 ? 0 : 1]
    await watch.until(() => record.held !== undefined, deadline)
    resetAt = Date.now()
  } else if (record.aim === 'commit') {
    await watch.awaitPhase('verify', deadline)
    const offset = -500 + within(rnd()) * (calibration.commitTailMs + 1000)
    if (offset < 0) {
      resetAt = (phases.verify ?? Date.now()) + calibration.verifyMs + offset
    } else {
      // after the trial is armed: from the guest's own announcement of it, so a read-back
      // slower than calibrated (a busy host) does not pull the aim back into the read-back
      await watch.awaitPhase('arm-trial', deadline)
      resetAt = (phases['arm-trial'] ?? Date.now()) + offset
    }
  }
  return resetAt
}

const describeCycle = (record: CycleRecord): string =>
  `cycle ${record.cycle}: ${record.from} -> ${record.to}, reset ${record.aim} at ${(record.resetAtMs! / 1000).toFixed(2)} s (${record.phase}${record.held === 'written' ? ", held after the switch's last write" : record.held ? `, held before the ${record.held} write` : ''}) -> ${record.outcome} ${record.booted!.version} in slot ${record.booted!.slot}, userspace after ${record.bootSeconds!.toFixed(1)} s` +
  (record.updateExit !== undefined ? `; the update had failed by itself (exit ${record.updateExit})` : '')

/**
 * The update campaign: a host updates itself between two versions, cycle after cycle; after the
 * uncounted calibration cycle every update is cut by a reset at an aimed instant, and the boot
 * after it must bring up the old or the new version with that slot's bytes exactly the signed image.
 */
export async function runUpdateCampaign(o: CampaignOptions): Promise<CampaignReport> {
  const log = o.log ?? (() => {})
  const rnd = prng(o.seed)
  const prior = o.resume
  if (prior) {
    if (prior.seed !== o.seed) throw new Error(`the report to resume was made with seed ${prior.seed}, not ${o.seed}`)
    if (prior.bricked) throw new Error('the report to resume ends in a brick: inspect it, do not resume it')
    for (const r of prior.records) for (let k = drawsOf(r); k > 0; k--) rnd()
  }
  const bootTimeout = o.bootTimeoutMs ?? 180_000
  const commitWeight = o.commitWeight ?? 0.4
  const hold = o.hold ?? false
  if (hold && !o.driver.holds) throw new Error(`the ${o.driver.name} driver cannot answer a holding guest: run the campaign without holds`)
  const { manifests, disks, spec } = await prepareHost(o, hold)
  const report: CampaignReport = {
    driver: o.driver.name,
    accel: await o.driver.accel(),
    ...(o.firmware === 'uefi' ? { firmware: 'uefi' as const } : {}),
    seed: o.seed,
    cycles: 0,
    resets: 0,
    old: 0,
    new: 0,
    bricked: 0,
    failedUpdates: 0,
    seconds: 0,
    resetsPerHour: 0,
    calibration: o.calibration ?? null,
    aims: o.stratified ? 'stratified' : 'independent',
    ...(hold ? { held: true } : {}),
    records: [],
  }
  if (prior) {
    checkResumable(prior, o, report)
    Object.assign(report, { resets: prior.resets, old: prior.old, new: prior.new, failedUpdates: prior.failedUpdates, records: [...prior.records] })
  }
  const tally = new Tally(report, prior, o.onCycle)
  const host = new HostUnderTest({ o, spec, serialFile: path.join(o.workDir, 'serial.log'), disks, manifests, report, tally, log })
  await host.start()
  try {
    const boot: CycleRecord = {
      cycle: -1,
      aim: 'calibration',
      from: '',
      to: '',
      resetAtMs: null,
      phase: null,
      outcome: 'completed',
      booted: null,
      bootSeconds: null,
    }
    if (!(await host.awaitBoot(boot, tally.startedAt, bootTimeout))) return report
    let calibration: Calibration | null = o.calibration ?? null
    for (let cycle = tally.firstCycle; tally.counted() < o.cycles; cycle++) {
      // the aim's draw is made in both modes, so drawsOf() holds for either
      const nth = tally.counted() // cycles aimed before this one (the calibration is not counted)
      const aim = calibration ? aimOf({ ...o, commitWeight }, nth, rnd()) : 'calibration'
      const record: CycleRecord = { cycle, aim, from: '', to: '', resetAtMs: null, phase: null, outcome: 'completed', booted: null, bootSeconds: null }
      const announced = await host.con.until('cycle', Date.now() + bootTimeout)
      if (!announced) {
        await host.restartIfGone()
        await host.brick(record, 'the guest never started its update')
        break
      }
      record.from = announced.a
      record.to = announced.b
      const target = manifests[record.to]
      if (target && host.lastSlot) record.heldBefore = heldChunks(disks, host.lastSlot === 'A' ? 'B' : 'A', target)
      const watch = new UpdateWatch(host, record)
      // the update announces its start, or fails before it (then the guest reboots by itself)
      await watch.until(() => watch.phases.start !== undefined, Date.now() + 120_000, true)
      if (watch.phases.start === undefined) {
        if (record.updateExit === undefined) {
          await host.brick(record, 'labhost update never announced its start')
          break
        }
        report.failedUpdates++
        tally.keep(record)
        log(`cycle ${cycle}: labhost update failed before writing (exit ${record.updateExit}); the guest reboots`)
        continue
      }
      if (!calibration) {
        calibration = await calibrate(host, watch, record, report, announced.at, bootTimeout, log)
        if (!calibration) break
        tally.keep(record)
        continue
      }
      const resetAt = await aimReset(o, nth, rnd, watch, record, calibration, hold)
      await host.con.waitUntil(resetAt, watch.note)
      record.resetAtMs = Date.now() - watch.phases.start
      record.phase = watch.phase
      await host.restartIfGone()
      await host.vm.reset()
      report.resets++
      if (!(await host.awaitBoot(record, Date.now(), bootTimeout))) break
      if (record.booted!.version !== record.from && record.booted!.version !== record.to) {
        await host.brick(record, `booted ${record.booted!.version}, neither ${record.from} nor ${record.to}`)
        break
      }
      record.outcome = record.booted!.version === record.from ? 'old' : 'new'
      if (record.outcome === 'old') report.old++
      else report.new++
      if (record.updateExit !== undefined) report.failedUpdates++
      tally.keep(record)
      log(describeCycle(record))
    }
  } finally {
    await host.vm.powerOff()
    tally.update()
  }
  return report
}

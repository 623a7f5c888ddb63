// The rollback campaign (issue 15, 4): a host on a good version updates, unreset, to a version
// that fails its trial; the harness resets the machine once per cycle at an instant drawn from the
// seed — in a trial boot (around the initramfs's countdown write), in the failing version's
// userspace, or around the initramfs's rollback write — and then the machine must come back, by
// itself and within a bounded number of boots, on the good version: from the slot it ran before,
// that slot's bytes equal to its signed image, the primary GPT flagging that slot. Any other end
// is a brick (the failing version still flagged once its countdown ran out, an initramfs that gives
// up, no userspace, the wrong bytes): the run stops and keeps the disks and the serial logs.
//
// Once per run the first cycle (the calibration, unreset) runs with the SSD behind QEMU's
// blklogwrites driver, up to the initramfs's announcement of the rollback, and the harness reports
// what the disk saw: every write that touched a GPT sector, its LBA, its size, which sectors it
// changed and whether a flush made it durable before the next one (the initramfs writes with
// busybox `dd`, whose oflag=direct fell back to the page cache and wrote 4 KiB, LBA 0-7, until
// initramfs-init.ts gave it a page-sized buffer: this recording found it).
//
// The failing version is a third lean test image, 3.0.0, built from the same recipe and signed
// like the good ones (the same kernel, the same initramfs with its trial counter), whose own
// /sbin/init never confirms itself and dies after two seconds: the kernel panics and, with
// `panic=-1` on the image's command line, restarts the machine at once. That is a version whose
// userspace crashes on a PC with a panic reboot (or a watchdog) — nothing in the harness decides
// its fate: nobody runs `labhost mark-good` for it, and only the initramfs's countdown, the same
// code every image ships, can end its trial. (A version that boots and stays up unhealthy is the
// userspace verdict's case, `labhost trial-check`, tested in host-image.vm.test.ts.) Its kernel
// command line drops `quiet` for `loglevel=7`, and nothing else: the kernel then prints its line for
// the state partition's mount (`EXT4-fs (sdaN): mounted filesystem`), which in every trial boot and
// in the rollback boot comes just before the initramfs's countdown or rollback write — the anchor
// the harness aims those resets from (boot times under TCG vary by seconds; this line does not).
//
// Every second pair of cycles the good version moves to the other slot first (an unreset update
// 1.0.0 <-> 2.0.0, confirmed by the hook), so rollbacks go to slot A and to slot B; before every
// update the guest fills the slot it is about to write with 0xFF (as the update campaign does).
import fs from 'node:fs'
import path from 'node:path'
import { hashRange, prng } from '../test-support/test-helpers.ts'
import { openGptDisk, readGpt } from '../bootloader/gpt.ts'
import { slotStatus } from '../bootloader/slots.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildImage } from '../image-build/build.ts'
import { TRIAL_FILE } from '../image-format/trial-state.ts'
import { readManifest, type Manifest } from '../image-format/manifest.ts'
import { loadRecipe } from '../image-build/recipe.ts'
import { buildHostDisks, withPartition, type HostDisks } from '../test-support/host-disks.ts'
import { GUEST_LABHOST, stageLabhost } from './fixtures/lean-image.ts'
import { leanRecipe } from '../test-support/lean-recipe.ts'
import type { RunningVm, VmDriver } from './driver.ts'
import { Console, type Marker, type MarkerPattern } from './console-markers.ts'
import type { VmSpec } from './qemu.ts'
import { buildCampaignImages, heldChunks } from './campaign.ts'
import { readWriteLog, type LoggedWrite } from './write-log.ts'

export interface RollbackCampaignOptions {
  driver: VmDriver
  /** Resets (cycles after the calibration). */
  cycles: number
  seed: number
  /** Scratch space for images and disks. */
  workDir: string
  /** Where a brick's disks and serial logs are kept. */
  keepDir: string
  /** Longest one boot may take (reset or reboot to its next announcement); default 180 s. */
  bootTimeoutMs?: number
  /** Boots the failing version gets on trial (`labhost update --trial-boots`); default 2. */
  trialBoots?: number
  /**
   * Stratified aims for a short run: the aims take turns (trial boot, failing userspace,
   * rollback), and the k-th of n resets of an aim falls inside the k-th n-th of its window.
   * Default: aim and instant drawn independently (the soak).
   */
  stratified?: boolean
  /** The aims a stratified run takes turns over; default all of ROLLBACK_AIMS (npm test's short run takes only the rollback). */
  aims?: readonly RollbackAim[]
  /** Record the calibration cycle's writes (blklogwrites) and report the rollback's; default true. */
  recordWrites?: boolean
  log?: (line: string) => void
  /** Called with the report so far after every cycle (a long run keeps a record if it is cut off). */
  onCycle?: (report: RollbackCampaignReport) => void
  /**
   * The partial report of a run of the same seed that was cut off: its cycles count, its draws are
   * replayed (three per cycle after a calibration) so the next cycles get the instants the uncut
   * run would have drawn, and the machine starts afresh (1.0.0 in slot A, a new calibration and
   * recording).
   */
  resume?: RollbackCampaignReport
}

export type RollbackAim = 'trial-boot' | 'failing-userspace' | 'rollback'
export const ROLLBACK_AIMS: readonly RollbackAim[] = ['trial-boot', 'failing-userspace', 'rollback']

export interface RollbackCycleRecord {
  cycle: number
  aim: 'calibration' | RollbackAim
  /** The good version and its slot (the one the rollback must come back to). */
  good: { version: string; slot: string }
  /** The slot the failing version was written to and tried in. */
  failingSlot: string
  /** A good update (unreset) that moved the good version to this slot before the cycle. */
  moved?: { from: string; to: string }
  /** The trial boot the reset aimed at (1..trialBoots); null for rollback aims and the calibration. */
  trialBoot: number | null
  /** What the instant was measured from (a marker, see MARKERS) and how long after it the reset came (ms; negative: before the marker was expected). */
  anchor: string | null
  resetAtMs: number | null
  /** The last announcement the guest made before the reset. */
  lastMarker: string | null
  /**
   * Where the reset landed: trialK:before-count (trial boot K, before the initramfs announced its
   * countdown), trialK:counted (after it), trialK:userspace, trialK:dying (its init had died),
   * rollback:before-write, rollback:writing (after the initramfs said it rolls back, before it
   * announced the rollback done), rollback:rebooting, good-boot.
   */
  phase: string | null
  /** The reset landed in the phase its aim was for. */
  hit: boolean | null
  /** Trial-boot aims: whether that boot's countdown write had landed (the next boot's count tells). */
  countdownLanded?: boolean
  /** Rollback aims: whether the rollback's primary write had landed (the next boot tells). */
  rollbackLanded?: boolean
  /** The boots after the reset (or, for the calibration, after the update), as the console showed them. */
  bootsAfter: string[]
  /** Boots from the reset to the good version's userspace, that one included. */
  bootsUntilGood: number | null
  outcome: 'rolled-back' | 'brick' | 'failed-update'
  booted: { version: string; slot: string } | null
  /** Primary and backup GPT did not agree when the good version came up (a rollback reset between its two writes; the next update's switch rewrites both). */
  backupStale?: boolean
  /** MiB chunks of the failing slot that already held 3.0.0's bytes when the update was announced (0: every write changes the slot). */
  heldBefore?: number
  updateExit?: number
}

/** One write the guest sent that touched a GPT sector, as blklogwrites recorded it. */
export interface GptWrite {
  /** Index in the recording. */
  index: number
  region: 'primary' | 'backup'
  lba: number
  bytes: number
  /** LBAs whose bytes the write changed. */
  changed: number[]
  /** What the entries sector holding the root slots became: the switch's commit, the saved pre-switch sector (the rollback), or neither. */
  sets: 'commit' | 'rollback' | 'other'
  /** A flush (or the write's own FUA) came before the next write to a GPT sector. */
  durableBeforeNext: boolean
}

export interface RollbackWrites {
  /** The logical sector size of the disk the guest saw. */
  sectorSize: number
  /** The primary and the backup LBA of the entries sector that holds both root entries. */
  entriesLba: { primary: number; backup: number }
  /** Every write to a GPT sector during the calibration cycle: the update's commit and mirror, then the rollback's. */
  writes: GptWrite[]
  /** The rollback's writes to the primary entries sector, and to its backup copy. */
  rollbackPrimary: GptWrite[]
  rollbackBackup: GptWrite[]
  /** The rollback reached the disk as one write of one logical sector at the primary entries LBA, durable before its mirror. */
  oneSector: boolean
}

export interface RollbackCampaignReport {
  mode: 'rollback'
  driver: string
  accel: string
  seed: number
  trialBoots: number
  cycles: number
  resets: number
  /** Reset cycles that ended on the good version (the calibration is not counted). */
  rolledBack: number
  bricked: number
  failedUpdates: number
  /** Resets that landed in the phase they aimed at. */
  hits: number
  /**
   * Resets after the initramfs had announced a write done (the countdown, or the rollback) whose
   * next boot did not show it: a write it had synced was lost. 0 is the claim.
   */
  lost: number
  byPhase: Record<string, number>
  seconds: number
  resetsPerHour: number
  calibration: RollbackCalibration | null
  aims: 'independent' | 'stratified'
  rollbackWrites: RollbackWrites | null
  records: RollbackCycleRecord[]
  kept?: string
  /** Why the run ended early, when it did. */
  stopped?: string
  /** The runs the report was made in: more than one when a cut-off run was resumed (each with its own calibration and recording). */
  runs?: { firstCycle: number; seconds: number; oneSector: boolean | null }[]
}

/** What the unreset first cycle measured (ms), to aim by. */
export interface RollbackCalibration {
  /** Boot start (the SYSLINUX banner) to the kernel's line for the state partition's mount, per trial boot, then the rollback boot. */
  bootToStateMountMs: number[]
  /** That mount to the initramfs's LABHOST-TRIAL (the countdown is written between), per trial boot. */
  stateMountToTrialMs: number[]
  /** LABHOST-FAILING (userspace) to LABHOST-FAILING-EXIT (its init dies). */
  userspaceMs: number
  /** Rollback boot: the state partition's mount to the initramfs saying it rolls back, and to LABHOST-ROLLBACK (check, writes, result between). */
  stateMountToRollingBackMs: number
  stateMountToRollbackMs: number
}

export const rollbackSummaryLine = (r: RollbackCampaignReport): string =>
  `rollback cycles ${r.cycles}, resets ${r.resets}, rolled back ${r.rolledBack}, bricked ${r.bricked}` +
  (r.failedUpdates ? `, failed updates ${r.failedUpdates}` : '') +
  (r.lost ? `, announced writes lost ${r.lost}` : '') +
  `; aims hit ${r.hits}/${r.resets}`

const GOOD = ['1.0.0', '2.0.0'] as const
export const FAILING_VERSION = '3.0.0'
const MiB = 1 << 20

/** The failing version's kernel command line: the test recipe's, verbose (see the header). */
const FAILING_CMDLINE = 'console=ttyS0,115200 panic=-1 loglevel=7'

/** The failing version's /sbin/init (see the header): it starts, never confirms itself, and dies. */
const FAILING_INIT = [
  '#!/bin/sh',
  '# rollback campaign: a version that fails its trial (vm-tests/rollback-campaign.ts). Nothing marks it',
  '# good; its init dies after a second, the kernel panics and panic=-1 restarts the machine.',
  'export PATH=/bin:/sbin:/usr/bin:/usr/sbin',
  'mount -t tmpfs tmpfs /tmp',
  'mount -a 2>/dev/null',
  '. /run/labhost/boot',
  'echo "LABHOST-FAILING version=$(cat /etc/labhost/version) slot=$SLOT"',
  'sleep 1',
  'echo "LABHOST-FAILING-EXIT"',
  'exit 1',
  '',
].join('\n')

/** The good versions (1.0.0, 2.0.0: the update campaign's images) and the failing one (3.0.0). */
export async function buildRollbackImages(dir: string): Promise<{ dirs: Record<string, string>; manifests: Record<string, Manifest> }> {
  const { dirs, manifests } = await buildCampaignImages(dir)
  const recipe = leanRecipe(`${dir}/recipes/campaign-${FAILING_VERSION}.yaml`, (r) => {
    r.version = FAILING_VERSION
    r.files = [...(r.files ?? []).filter((f) => f.path !== '/sbin/init'), { path: '/sbin/init', mode: '0755', content: FAILING_INIT }]
    r.kernel.cmdline = FAILING_CMDLINE
  })
  const built = await buildImage(recipe, { out: `${dir}/v${FAILING_VERSION}`, keyFile: cacheKeys().privateKeyFile })
  dirs[FAILING_VERSION] = path.dirname(built.manifestFile)
  manifests[FAILING_VERSION] = readManifest(built.manifestFile)
  return { dirs, manifests }
}

/**
 * The guest's side, run by the good versions' init on every boot: confirm the slot if it is on
 * trial (after a move), fill the inactive slot with 0xFF (unless it is the rollback target of a
 * trial of this slot), then either move (update to the other good version, every second pair of
 * cycles, so the good version alternates between the slots) or update to the failing version with
 * `trialBoots` trial boots, and reboot.
 */
function rollbackHook(trialBoots: number, scrambleMiB: number): string {
  return `#!/bin/sh
L=${GUEST_LABHOST}
. /run/labhost/boot
V=$(cat /etc/labhost/version)
T=/var/log/${TRIAL_FILE}
# on trial here (after a move): confirm. A trial file for the other slot is what a rollback that
# was reset after its GPT write and before removing the file leaves; it is not this slot's.
ONTRIAL=0; [ -e $T ] && grep -qx "TRIAL_SLOT=$SLOT" $T && ONTRIAL=1
[ $ONTRIAL = 1 ] && echo "LABHOST-MARK $($L mark-good 2>&1)" && { grep -qx "TRIAL_SLOT=$SLOT" $T 2>/dev/null || ONTRIAL=0; }
mkdir -p /var/log/rollback-campaign
N=$(grep -c . /var/log/rollback-campaign/cycles 2>/dev/null); [ -n "$N" ] || N=0
case $((N / 2 % 2)) in 0) WANT=A ;; *) WANT=B ;; esac
case "$SLOT" in A) P=\${DISK}2 ;; *) P=\${DISK}1 ;; esac
if [ $ONTRIAL = 0 ]; then
  dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\\000' '\\377' > /tmp/ff
  i=0; while [ $i -lt ${scrambleMiB} ]; do cat /tmp/ff; i=$((i+1)); done > $P
  sync
fi
if [ "$SLOT" != "$WANT" ]; then
  case "$V" in ${GOOD[0]}) NEXT=${GOOD[1]} ;; *) NEXT=${GOOD[0]} ;; esac
  echo "LABHOST-CYCLE-MOVE from=$V to=$NEXT"
  $L update /qcow2/backing/$NEXT --allow-downgrade --trial-boots 2 --reboot > /dev/console 2>&1
else
  echo "$V" >> /var/log/rollback-campaign/cycles; sync
  echo "LABHOST-CYCLE-UPDATE from=$V to=${FAILING_VERSION}"
  $L update /qcow2/backing/${FAILING_VERSION} --trial-boots ${trialBoots} --announce-phases --reboot > /dev/console 2>&1
fi
echo "LABHOST-UPDATE-EXIT $?"
sync
reboot -f
`
}

const MARKERS: MarkerPattern[] = [
  // extlinux's banner: every boot, reset or reboot, starts with it
  [/SYSLINUX \d()()/, 'boot'],
  // the failing version's kernel (loglevel=7): the first ext4 mount of a boot is the initramfs's of the state partition
  [/EXT4-fs \((\w+)\): mounted filesystem()/, 'statefs'],
  [/LABHOST-TRIAL slot=([AB]) left=(\d+)/, 'trial'],
  // a trial for a slot that is not the flagged one is dropped (a rollback reset after its GPT write, before it removed the trial)
  [/LABHOST-TRIAL-VOID slot=([AB]) running=([AB])/, 'void'],
  [/LABHOST-ROOT slot=([AB])()/, 'root'],
  [/LABHOST-FAILING version=(\S+) slot=([AB])/, 'failing'],
  [/LABHOST-FAILING-EXIT()()/, 'failing-exit'],
  // the initramfs's `say` just before it checks the sector and writes the saved one back
  [/never marked good: rolling back to slot ([AB])()/, 'rolling-back'],
  [/LABHOST-ROLLBACK from=([AB]) to=([AB])/, 'rollback'],
  [/LABHOST-INITRAMFS-FAIL (.*)()/, 'initramfs-fail'],
  [/LABHOST-USERSPACE version=(\S+) slot=([AB])/, 'userspace'],
  [/LABHOST-CYCLE-UPDATE from=(\S+) to=(\S+)/, 'cycle'],
  [/LABHOST-CYCLE-MOVE from=(\S+) to=(\S+)/, 'move'],
  [/LABHOST-UPDATE-EXIT (\d+)()/, 'exit'],
  [/LABHOST-PHASE (\S+)()/, 'phase'],
]

/** One boot as the console showed it (times: ms epoch when the harness saw the line). */
interface Boot {
  start: number
  /** The first ext4 mount the kernel announced in this boot, before the root: the state partition's. */
  stateMount?: number
  trial?: { slot: string; left: number; at: number }
  root?: string
  /** The initramfs dropped a trial for the other slot. */
  voided?: string
  failing?: { version: string; slot: string; at: number }
  failingExit?: number
  rollingBack?: number
  rollback?: { from: string; to: string; at: number }
  userspace?: { version: string; slot: string; at: number }
  fail?: string
}

/** The boots since a point, from the announcements; markers before the first boot are ignored. */
class Boots {
  list: Boot[] = []
  last: Marker | null = null

  feed(m: Marker): void {
    if (m.kind === 'boot') this.list.push({ start: m.at })
    const b = this.list.at(-1)
    if (!b) return
    if (m.kind === 'statefs') {
      // only the first, the initramfs's (later ones are the root and userspace mounts)
      if (b.stateMount !== undefined || b.trial || b.root || b.rollingBack) return
      b.stateMount = m.at
    }
    if (m.kind === 'trial') b.trial = { slot: m.a, left: Number(m.b), at: m.at }
    if (m.kind === 'root') b.root = m.a
    if (m.kind === 'void') b.voided = m.a
    if (m.kind === 'failing') b.failing = { version: m.a, slot: m.b, at: m.at }
    if (m.kind === 'failing-exit') b.failingExit = m.at
    if (m.kind === 'rolling-back') b.rollingBack = m.at
    if (m.kind === 'rollback') b.rollback = { from: m.a, to: m.b, at: m.at }
    if (m.kind === 'userspace') b.userspace = { version: m.a, slot: m.b, at: m.at }
    if (m.kind === 'initramfs-fail') b.fail = m.a
    if (['boot', 'statefs', 'trial', 'root', 'failing', 'failing-exit', 'rolling-back', 'rollback', 'userspace', 'initramfs-fail'].includes(m.kind))
      this.last = m
  }

  /** A boot in a few words, for the record. */
  static describe(b: Boot): string {
    if (b.fail) return `initramfs-fail: ${b.fail}`
    if (b.rollback) return `rollback ${b.rollback.from}->${b.rollback.to}`
    if (b.rollingBack) return 'rolling back (cut)'
    const trial = b.trial ? `trial ${b.trial.slot} left=${b.trial.left}` : ''
    const up = b.userspace
      ? `userspace ${b.userspace.version} ${b.userspace.slot}`
      : b.failing
        ? `failing ${b.failing.version} ${b.failing.slot}${b.failingExit ? ' (died)' : ''}`
        : ''
    const voided = b.voided ? `trial of ${b.voided} void` : ''
    return [trial, voided, up].filter(Boolean).join(', ') || (b.root ? `root ${b.root} (cut)` : 'boot (cut)')
  }
}

/** Which aim the nth reset takes, and where in its window (0..1) it lands, from its draws. */
export function rollbackAimOf(
  o: { stratified?: boolean; aims?: readonly RollbackAim[]; cycles: number },
  nth: number,
  draw: number,
): { aim: RollbackAim; fraction: (u: number) => number } {
  if (!o.stratified) return { aim: ROLLBACK_AIMS[Math.min(ROLLBACK_AIMS.length - 1, Math.floor(draw * ROLLBACK_AIMS.length))]!, fraction: (u) => u }
  const aims = o.aims?.length ? o.aims : ROLLBACK_AIMS
  const k = aims.length
  const aim = aims[nth % k]!
  const a = nth % k
  const n = Math.floor(o.cycles / k) + (a < o.cycles % k ? 1 : 0)
  return { aim, fraction: (u) => (Math.floor(nth / k) + u) / n }
}

/** The phase a reset landed in, from the boot it cut (index 1.. after the failing update) and the last announcement. */
export function phaseOf(bootIndex: number, trialBoots: number, last: string | null): string {
  if (bootIndex >= 1 && bootIndex <= trialBoots) {
    const k = `trial${bootIndex}`
    if (last === 'boot' || last === 'statefs') return `${k}:before-count`
    if (last === 'trial' || last === 'root') return `${k}:counted`
    if (last === 'failing') return `${k}:userspace`
    if (last === 'failing-exit') return `${k}:dying`
  }
  if (bootIndex === trialBoots + 1) {
    if (last === 'boot' || last === 'statefs') return 'rollback:before-write'
    if (last === 'rolling-back') return 'rollback:writing'
    if (last === 'rollback') return 'rollback:rebooting'
  }
  if (bootIndex === trialBoots + 2) return 'good-boot'
  return `boot${bootIndex}:${last ?? 'none'}`
}

/** Whether a phase is the one an aim (at trial boot k) is for. */
export function aimHit(aim: RollbackAim, k: number | null, phase: string): boolean {
  if (aim === 'trial-boot') return phase === `trial${k}:before-count` || phase === `trial${k}:counted`
  if (aim === 'failing-userspace') return phase === `trial${k}:userspace`
  return phase.startsWith('rollback:')
}

/**
 * The writes of a recording that touched a GPT sector (LBA 0 to the end of the primary array, the
 * backup array and header), each with the sectors it changed and what it made of the entries
 * sector holding the root entries: `before` reads a sector of the disk as the recording found it,
 * `rollbackSector` is that entries sector before the update (what a rollback writes back).
 */
export function gptWrites(o: {
  writes: LoggedWrite[]
  sectorSize: number
  before: (lba: number) => Buffer
  primary: { first: number; last: number }
  backup: { first: number; last: number }
  entriesLba: { primary: number; backup: number }
  rollbackSector: Buffer
}): GptWrite[] {
  const ss = o.sectorSize
  const model = new Map<number, Buffer>()
  const sector = (lba: number) => model.get(lba) ?? o.before(lba)
  const inRegion = (lba: number) => (lba >= o.primary.first && lba <= o.primary.last) || (lba >= o.backup.first && lba <= o.backup.last)
  const out: GptWrite[] = []
  const at: number[] = []
  o.writes.forEach((w, i) => {
    if (w.length === 0 || !w.data) return
    const first = Math.floor(w.offset / ss)
    const lbas = Array.from({ length: Math.ceil(w.length / ss) }, (_, j) => first + j).filter(inRegion)
    if (!lbas.length) return
    const changed: number[] = []
    for (const lba of lbas) {
      const now = w.data.subarray((lba - first) * ss, (lba - first + 1) * ss)
      if (!now.equals(sector(lba))) changed.push(lba)
      model.set(lba, Buffer.from(now))
    }
    const entries = lbas.find((l) => l === o.entriesLba.primary || l === o.entriesLba.backup)
    const sets = entries === undefined || !changed.includes(entries) ? 'other' : sector(entries).equals(o.rollbackSector) ? 'rollback' : 'commit'
    out.push({ index: i, region: first <= o.primary.last ? 'primary' : 'backup', lba: first, bytes: w.length, changed, sets, durableBeforeNext: false })
    at.push(i)
  })
  // durable before the next write to a GPT sector: the write's own FUA, or a flush between the two
  out.forEach((g, j) => {
    const end = j + 1 < out.length ? at[j + 1]! : o.writes.length
    g.durableBeforeNext = o.writes[at[j]!]!.fua || o.writes.slice(at[j]! + 1, end).some((w) => w.flush)
  })
  return out
}

function slotRange(disks: HostDisks, slot: string): { offset: number; bytes: number } {
  const p = disks.ssdPlan[slot === 'A' ? 0 : 1]!
  return { offset: p.firstLba * 512, bytes: (p.lastLba - p.firstLba + 1) * 512 }
}

export async function runRollbackCampaign(o: RollbackCampaignOptions): Promise<RollbackCampaignReport> {
  const log = o.log ?? (() => {})
  const rnd = prng(o.seed)
  const bootTimeout = o.bootTimeoutMs ?? 180_000
  const trialBoots = o.trialBoots ?? 2
  if (!Number.isInteger(trialBoots) || trialBoots < 1 || trialBoots > 9) throw new Error(`trialBoots ${trialBoots}: 1 to 9`)
  fs.mkdirSync(o.workDir, { recursive: true })
  const { dirs, manifests } = await buildRollbackImages(o.workDir)
  const layout = loadRecipe('test').layout
  const disks = await buildHostDisks(o.workDir, layout, `${dirs[GOOD[0]]}/root.img`, { slots: ['A'], flag: 'A', restMiB: 200 })
  const imageBytes = Math.max(...Object.values(manifests).map((m) => m.image.size))
  await stageLabhost(disks)
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
      fs.writeFileSync(`${root}/test-hook`, rollbackHook(trialBoots, Math.ceil(imageBytes / MiB)), { mode: 0o755 })
    },
  )
  const spec: VmSpec = {
    disks: [
      { file: disks.ssd, bus: 'ide-hd', rotationRate: 1 },
      { file: disks.hdd, bus: 'ide-hd', rotationRate: 7200 },
    ],
    memoryMb: 512,
  }
  const record = o.recordWrites ?? true
  const writeLog = path.join(o.workDir, 'ssd.writes')
  const serialFiles = [path.join(o.workDir, 'serial-calibration.log'), path.join(o.workDir, 'serial.log')]
  let serialFile = serialFiles[0]!
  const report: RollbackCampaignReport = {
    mode: 'rollback',
    driver: o.driver.name,
    accel: await o.driver.accel(),
    seed: o.seed,
    trialBoots,
    cycles: 0,
    resets: 0,
    rolledBack: 0,
    bricked: 0,
    failedUpdates: 0,
    hits: 0,
    lost: 0,
    byPhase: {},
    seconds: 0,
    resetsPerHour: 0,
    calibration: null,
    aims: o.stratified ? 'stratified' : 'independent',
    rollbackWrites: null,
    records: [],
  }
  const prior = o.resume
  if (prior) {
    if (prior.mode !== 'rollback' || prior.seed !== o.seed) throw new Error(`the report to resume is not a rollback campaign of seed ${o.seed}`)
    if (prior.bricked || prior.stopped) throw new Error('the report to resume ends in a brick or a stop: inspect it, do not resume it')
    if (o.stratified || prior.aims === 'stratified') throw new Error('a stratified campaign cannot be resumed: its strata depend on the cycle count')
    if (prior.trialBoots !== trialBoots || prior.driver !== report.driver || prior.accel !== report.accel)
      throw new Error(`the report to resume ran with ${prior.trialBoots} trial boots on ${prior.driver} (${prior.accel})`)
    for (const r of prior.records) if (r.aim !== 'calibration') for (let k = 0; k < 3; k++) rnd()
    Object.assign(report, {
      resets: prior.resets,
      rolledBack: prior.rolledBack,
      failedUpdates: prior.failedUpdates,
      hits: prior.hits,
      lost: prior.lost,
      byPhase: { ...prior.byPhase },
      records: [...prior.records],
    })
  }
  const runs = prior ? (prior.runs ?? [{ firstCycle: 0, seconds: prior.seconds, oneSector: prior.rollbackWrites?.oneSector ?? null }]) : []
  const firstCycle = report.records.length
  const started = Date.now()
  const tally = () => {
    report.cycles = report.records.filter((r) => r.aim !== 'calibration' && r.outcome !== 'failed-update').length
    report.runs = [...runs, { firstCycle, seconds: (Date.now() - started) / 1000, oneSector: report.rollbackWrites?.oneSector ?? null }]
    report.seconds = report.runs.reduce((n, r) => n + r.seconds, 0)
    report.resetsPerHour = Math.round(report.resets / (report.seconds / 3600))
    if (report.runs.length === 1) delete report.runs
  }
  const keep = (r: RollbackCycleRecord) => {
    if (!report.records.includes(r)) report.records.push(r)
    tally()
    o.onCycle?.(report)
  }
  // the GPT regions and the entries sector, as the disk is before the first boot
  const gpt0 = (() => {
    const d = openGptDisk(disks.ssd)
    try {
      const g = readGpt(d)
      const ph = g.primary.header!
      const bh = g.backup.header!
      const arraySectors = Math.ceil((ph.entryCount * ph.entrySize) / g.sectorSize)
      const rootIndex = g.entries.find((e) => e.name === layout.slots.A.name)!.index
      const within = Math.floor((rootIndex * ph.entrySize) / g.sectorSize)
      return {
        ss: g.sectorSize,
        primary: { first: 0, last: Number(ph.entriesLba) + arraySectors - 1 },
        backup: { first: Number(bh.entriesLba), last: Number(bh.myLba) },
        entriesLba: { primary: Number(ph.entriesLba) + within, backup: Number(bh.entriesLba) + within },
      }
    } finally {
      d.close()
    }
  })()
  const readSector = (file: string, lba: number) => {
    const fd = fs.openSync(file, 'r')
    try {
      const b = Buffer.alloc(gpt0.ss)
      fs.readSync(fd, b, 0, b.length, lba * gpt0.ss)
      return b
    } finally {
      fs.closeSync(fd)
    }
  }
  const beforeFile = path.join(o.workDir, 'gpt-before.bin')
  if (record) {
    // only the GPT regions are needed to judge the recording: keep those sectors of the disk as it starts
    const keepSectors: Record<number, string> = {}
    for (const r of [gpt0.primary, gpt0.backup]) for (let l = r.first; l <= r.last; l++) keepSectors[l] = readSector(disks.ssd, l).toString('base64')
    fs.writeFileSync(beforeFile, JSON.stringify(keepSectors))
  }

  let vm: RunningVm = await o.driver.start(record ? { ...spec, disks: [{ ...spec.disks[0]!, writeLog }, spec.disks[1]!] } : spec, serialFile)
  let con = new Console(vm, MARKERS)
  const brick = async (r: RollbackCycleRecord, why: string) => {
    if (r.outcome === 'rolled-back' && r.aim !== 'calibration' && report.records.includes(r)) report.rolledBack--
    r.outcome = 'brick'
    report.bricked++
    await vm.powerOff()
    const dir = path.join(o.keepDir, `rollback-brick-seed${o.seed}-cycle${r.cycle}`)
    fs.mkdirSync(dir, { recursive: true })
    for (const f of [disks.ssd, disks.hdd, ...serialFiles]) if (fs.existsSync(f)) fs.copyFileSync(f, path.join(dir, path.basename(f)))
    fs.writeFileSync(path.join(dir, 'why.txt'), `${why}\n${JSON.stringify(r, null, 2)}\n`)
    report.kept = dir
    keep(r)
    log(`BRICK in cycle ${r.cycle}: ${why}; disks and serial logs kept in ${dir}`)
  }
  /** The good version came up: right slot, its signed bytes, the primary GPT flagging it. Null when so, else why not. */
  const judgeGood = (up: { version: string; slot: string }, want: { version: string; slot: string }, r: RollbackCycleRecord): string | null => {
    if (up.version !== want.version || up.slot !== want.slot) return `${up.version} came up from slot ${up.slot}, not ${want.version} from slot ${want.slot}`
    const m = manifests[up.version]!
    const { offset } = slotRange(disks, up.slot)
    if (hashRange(disks.ssd, offset, m.image.size) !== m.image.sha256)
      return `${up.version} came up from slot ${up.slot}, whose bytes are not that signed image`
    const d = openGptDisk(disks.ssd)
    try {
      const st = slotStatus(readGpt(d), { A: layout.slots.A.name, B: layout.slots.B.name })
      if (!st.primaryValid || st.active !== up.slot)
        return `the primary GPT ${st.primaryValid ? `flags ${st.active ?? 'no single slot'}` : 'is invalid'}, not slot ${up.slot}`
      r.backupStale = !st.tablesAgree || undefined
    } finally {
      d.close()
    }
    return null
  }
  /** Read announcements into `boots` until `done` says so; false when `deadline` passed first (or the VM is gone). */
  const pump = async (boots: Boots, done: () => boolean, deadline: number, also?: (m: Marker) => void): Promise<boolean> => {
    while (!done()) {
      const m = await con.next(deadline)
      if (!m) return false
      boots.feed(m)
      also?.(m)
    }
    return true
  }
  /**
   * Follow the boots after a reset (or after the update, unreset) until the good version's
   * userspace: the verdict, or the reason it is a brick.
   */
  const followToGood = async (r: RollbackCycleRecord, boots: Boots): Promise<string | null> => {
    const limit = trialBoots + 2
    // a boot has ended once it reached userspace (good or failing), rolled back, gave up, or the next one began
    const ended = (i: number) => {
      const b = boots.list[i]
      return !!b && (b.userspace !== undefined || b.fail !== undefined || b.failingExit !== undefined || b.rollback !== undefined || boots.list.length > i + 1)
    }
    for (let judged = 0; ; judged++) {
      if (!(await pump(boots, () => ended(judged), Date.now() + bootTimeout))) {
        r.bootsAfter = boots.list.map(Boots.describe)
        return vm.exited()
          ? 'the VM powered off'
          : `no boot came to an end within ${bootTimeout / 1000} s (${boots.list.length} boot(s) since; last: ${boots.last?.kind ?? 'nothing'})`
      }
      const b = boots.list[judged]!
      r.bootsAfter = boots.list.slice(0, judged + 1).map(Boots.describe)
      if (judged + 1 > limit) return `${judged + 1} boots without the good version (at most ${limit}: ${trialBoots} trial boots, the rollback, the good one)`
      if (b.fail) return `the initramfs gave up: ${b.fail}`
      if (b.failing && (!b.trial || b.trial.slot !== b.failing.slot))
        return `the failing version ${b.failing.version} booted from slot ${b.failing.slot} without a trial pending: it stays`
      if (b.userspace) {
        r.booted = { version: b.userspace.version, slot: b.userspace.slot }
        const why = judgeGood(b.userspace, r.good, r)
        if (why) return why
        r.bootsUntilGood = judged + 1
        return null
      }
      // a trial boot whose init died, a rollback, or a boot cut short: the next one
    }
  }

  let calibration: RollbackCalibration | null = null
  const nextCycle = () => report.records.length
  try {
    // the first boot: 1.0.0 from slot A
    {
      const boots = new Boots()
      const first: RollbackCycleRecord = {
        cycle: -1,
        aim: 'calibration',
        good: { version: GOOD[0], slot: 'A' },
        failingSlot: 'B',
        trialBoot: null,
        anchor: null,
        resetAtMs: null,
        lastMarker: null,
        phase: null,
        hit: null,
        bootsAfter: [],
        bootsUntilGood: null,
        outcome: 'rolled-back',
        booted: null,
      }
      const up = await pump(boots, () => boots.list.at(-1)?.userspace !== undefined, Date.now() + bootTimeout)
      const u = boots.list.at(-1)?.userspace
      const why = !up || !u ? `no userspace within ${bootTimeout / 1000} s of the first boot` : judgeGood(u, first.good, first)
      if (why) {
        await brick(first, why)
        return report
      }
    }
    let failedInARow = 0
    // the good version that came up last, verified (a resumed run starts afresh: 1.0.0 in A)
    let lastGood: { version: string; slot: string } = { version: GOOD[0], slot: 'A' }
    for (;;) {
      const nth = report.records.filter((r) => r.aim !== 'calibration' && r.outcome !== 'failed-update').length
      if (calibration && nth >= o.cycles) break
      const cycle = nextCycle()
      // the draws of a counted cycle: the aim, the trial boot, the instant (made in both modes)
      const draws = calibration ? [rnd(), rnd(), rnd()] : null
      const r: RollbackCycleRecord = {
        cycle,
        aim: 'calibration',
        good: { version: '', slot: '' },
        failingSlot: '',
        trialBoot: null,
        anchor: null,
        resetAtMs: null,
        lastMarker: null,
        phase: null,
        hit: null,
        bootsAfter: [],
        bootsUntilGood: null,
        outcome: 'rolled-back',
        booted: null,
      }
      // up to the failing update's announcement: a move (update, reboot, the moved version confirmed) may come first
      const pre = new Boots()
      let announced: Marker | null = null
      let moveExit: number | undefined
      const preOk = await pump(
        pre,
        () => announced !== null,
        Date.now() + 3 * bootTimeout,
        (m) => {
          if (m.kind === 'cycle') announced = m
          if (m.kind === 'move') r.moved = { from: m.a, to: m.b }
          if (m.kind === 'exit') moveExit = Number(m.a)
        },
      )
      if (!preOk || !announced) {
        await brick(r, vm.exited() ? 'the VM powered off' : r.moved ? 'the good version never came up after its move' : 'the guest never started its update')
        break
      }
      const cycleMarker: Marker = announced
      if (moveExit !== undefined) {
        report.failedUpdates++
        log(`cycle ${cycle}: the move's update failed by itself (exit ${moveExit}); the guest rebooted and went on`)
      }
      // every boot before the announcement (a move's, or a reboot after a failed update) came up as a
      // good version from its signed bytes, flagged in the primary GPT; the last one is where the cycle starts
      const ups = pre.list.map((b) => b.userspace).filter((u) => u !== undefined)
      const lastUp = ups.at(-1) ?? lastGood
      r.good = { version: cycleMarker.a, slot: lastUp.slot }
      r.failingSlot = r.good.slot === 'A' ? 'B' : 'A'
      const wrong = pre.list.find((b) => !b.userspace)
      const badUp = ups
        .map((u) => ((GOOD as readonly string[]).includes(u.version) ? judgeGood(u, u, r) : `${u.version} came up, not a good version`))
        .find((w) => w !== null)
      if (wrong || badUp || cycleMarker.a !== lastUp.version) {
        await brick(
          r,
          wrong
            ? `a boot before the update did not reach a good version: ${Boots.describe(wrong)}`
            : (badUp ?? `the guest updates from ${cycleMarker.a}, but ${lastUp.version} came up last`),
        )
        break
      }
      r.heldBefore = heldChunks(disks, r.failingSlot, manifests[FAILING_VERSION]!)
      // the update, unreset: to its `done` (then it reboots into the trial) or its failure
      const boots = new Boots()
      let doneAt = 0
      const updOk = await pump(
        boots,
        () => doneAt > 0 || r.updateExit !== undefined,
        Date.now() + 4 * bootTimeout,
        (m) => {
          if (m.kind === 'phase' && m.a === 'done') doneAt = m.at
          if (m.kind === 'exit') r.updateExit = Number(m.a)
        },
      )
      if (!updOk) {
        await brick(r, 'the update to the failing version never ended')
        break
      }
      if (!doneAt) {
        r.outcome = 'failed-update'
        report.failedUpdates++
        keep(r)
        log(`cycle ${cycle}: labhost update to ${FAILING_VERSION} failed by itself (exit ${r.updateExit}); the guest reboots`)
        if (++failedInARow >= 3) {
          report.stopped = 'three updates in a row failed by themselves'
          break
        }
        continue
      }
      failedInARow = 0
      const fmt = (ms: number) => `${ms >= 0 ? '+' : ''}${(ms / 1000).toFixed(2)} s`

      if (!calibration) {
        // the calibration: the whole trial and rollback, unreset, measured. Recorded, it ends at the
        // rollback's announcement (done, synced, unmounted: the reboot comes next): the machine is
        // powered off, the recording judged, and the machine powered on again boots the good version
        // as the reboot would have (one boot fewer than powering off once that is up)
        let why: string | null
        if (record) {
          const rolledBack = () => boots.list[trialBoots]?.rollback !== undefined
          const gaveUp = () => boots.list.some((b) => b.fail !== undefined || b.userspace !== undefined) || boots.list.length > trialBoots + 1
          const ok = await pump(boots, () => rolledBack() || gaveUp(), Date.now() + (trialBoots + 1) * bootTimeout)
          r.bootsAfter = boots.list.map(Boots.describe)
          why = ok && rolledBack() ? null : `no rollback after ${trialBoots} trial boots: ${r.bootsAfter.join(' | ') || 'no boot'}`
        } else {
          why = await followToGood(r, boots)
        }
        if (why) {
          await brick(r, why)
          break
        }
        const trials = boots.list.slice(0, trialBoots)
        const rb = boots.list[trialBoots]
        const expect =
          trials.every((b, i) => b.trial?.left === trialBoots - 1 - i && b.failing && b.failingExit) &&
          rb?.rollingBack &&
          rb.rollback &&
          boots.list.length === trialBoots + (record ? 1 : 2)
        if (!expect || !rb?.rollingBack || !rb.rollback) {
          await brick(r, `the unreset trial went otherwise than ${trialBoots} trial boots, a rollback and the good version: ${r.bootsAfter.join(' | ')}`)
          break
        }
        if (![...trials, rb].every((b) => b.stateMount !== undefined)) {
          report.stopped =
            "the failing version's kernel did not announce the state partition's mount in every trial boot and the rollback boot: nothing to aim from"
          keep(r)
          break
        }
        calibration = {
          bootToStateMountMs: [...trials, rb].map((b) => b.stateMount! - b.start),
          stateMountToTrialMs: trials.map((b) => b.trial!.at - b.stateMount!),
          userspaceMs: Math.min(...trials.map((b) => b.failingExit! - b.failing!.at)),
          stateMountToRollingBackMs: rb.rollingBack - rb.stateMount!,
          stateMountToRollbackMs: rb.rollback.at - rb.stateMount!,
        }
        report.calibration = calibration
        if (record) {
          await vm.powerOff()
          report.rollbackWrites = analyseRecording(writeLog, beforeFile, gpt0)
          fs.rmSync(writeLog, { force: true })
          const rw = report.rollbackWrites
          log(
            `what the disk saw of the rollback: ${rw.rollbackPrimary.map(describeGptWrite).join('; ') || 'no primary write'} | mirror: ${rw.rollbackBackup.map(describeGptWrite).join('; ') || 'none'}` +
              ` -> ${rw.oneSector ? `one ${rw.sectorSize}-byte sector at LBA ${rw.entriesLba.primary}, durable before its mirror` : 'NOT a single one-sector write'}`,
          )
          serialFile = serialFiles[1]!
          vm = await o.driver.start(spec, serialFile)
          con = new Console(vm, MARKERS)
          const again = new Boots()
          const up = await pump(again, () => again.list.at(-1)?.userspace !== undefined || again.list.length > 1, Date.now() + bootTimeout)
          const u = again.list.at(-1)?.userspace
          r.bootsAfter.push(...again.list.map((b) => `${Boots.describe(b)} (powered on again)`))
          if (u) r.booted = { version: u.version, slot: u.slot }
          const why2 = !up || !u || again.list.length > 1 ? 'the good version did not come up when the machine was powered on again' : judgeGood(u, r.good, r)
          if (why2) {
            await brick(r, `after the recording: ${why2}`)
            break
          }
          r.bootsUntilGood = trialBoots + 2
          lastGood = r.booted!
        }
        // (the calibration is not counted among the rolled-back resets: it had none)
        if (r.booted) lastGood = r.booted
        keep(r)
        const c = calibration
        log(
          `calibration: ${r.good.version} in ${r.good.slot} -> ${FAILING_VERSION} in ${r.failingSlot}: boot to the state partition's mount ${c.bootToStateMountMs.map(fmt).join(', ')}; ` +
            `from it to LABHOST-TRIAL ${c.stateMountToTrialMs.map((x) => `${x} ms`).join(', ')}; failing userspace ${fmt(c.userspaceMs)}; ` +
            `rollback boot: from the mount to 'rolling back' ${c.stateMountToRollingBackMs} ms, to LABHOST-ROLLBACK ${c.stateMountToRollbackMs} ms; ${r.bootsAfter.join(' | ')}`,
        )
        continue
      }

      // aim the reset (see RollbackCycleRecord.phase for the phases)
      const { aim, fraction } = rollbackAimOf(o, nth, draws![0]!)
      r.aim = aim
      const u = fraction(draws![2]!)
      const k = aim === 'rollback' ? trialBoots + 1 : 1 + Math.min(trialBoots - 1, Math.floor(draws![1]! * trialBoots))
      r.trialBoot = aim === 'rollback' ? null : k
      const deadline = Date.now() + (k + 1) * bootTimeout
      const inBoot = () => (boots.list.length >= k ? boots.list[k - 1]! : null)
      let resetAt = 0
      let anchorAt = 0
      if (aim === 'trial-boot' || aim === 'rollback') {
        // from the kernel's line for the state partition's mount to 0.2 s after the initramfs
        // announced its countdown (written just before), or to 90 % of the way to its announcement
        // of the rollback (check, both writes, the result between; the reboot follows at once and
        // the next boot can print within 0.2 s), as calibrated
        r.anchor = "the state partition's mount"
        const span = aim === 'trial-boot' ? calibration.stateMountToTrialMs[k - 1]! + 200 : calibration.stateMountToRollbackMs * 0.9
        await pump(boots, () => inBoot()?.stateMount !== undefined || boots.list.length > k, deadline)
        anchorAt = inBoot()?.stateMount ?? Date.now()
        resetAt = anchorAt + u * span
      } else {
        r.anchor = 'LABHOST-FAILING'
        await pump(boots, () => inBoot()?.failing !== undefined || boots.list.length > k, deadline)
        anchorAt = inBoot()?.failing?.at ?? Date.now()
        // up to 0.2 s before its init dies (the console's time stamps can be a poll late)
        resetAt = anchorAt + u * Math.max(0, calibration.userspaceMs - 200)
      }
      await con.waitUntil(resetAt, (m) => boots.feed(m))
      r.resetAtMs = Date.now() - anchorAt
      if (vm.exited()) {
        await brick(r, 'the VM powered off')
        break
      }
      await vm.reset()
      // what the guest printed before the reset and the console had not read yet (the reset's own
      // boot takes far longer than this to print its first line)
      for (let m: Marker | null; (m = await con.next(Date.now()));) boots.feed(m)
      r.lastMarker = boots.last?.kind ?? null
      r.phase = phaseOf(boots.list.length, trialBoots, r.lastMarker)
      r.hit = aimHit(aim, r.trialBoot, r.phase)
      report.resets++
      report.byPhase[r.phase] = (report.byPhase[r.phase] ?? 0) + 1
      if (r.hit) report.hits++
      const cut = boots.list.length
      const after = new Boots()
      const why = await followToGood(r, after)
      if (why) {
        await brick(r, why)
        break
      }
      // what the next boot says of the write the reset may have cut
      const next = after.list[0]
      if (r.phase.endsWith(':before-count') || r.phase.endsWith(':counted')) {
        const stored = trialBoots - cut // what the countdown write of boot `cut` stores
        r.countdownLanded = stored > 0 ? next?.trial?.left === stored - 1 : next?.rollback !== undefined
      }
      if (r.phase.startsWith('rollback:')) r.rollbackLanded = next?.userspace !== undefined
      // announced (after its sync) and then not there
      if ((r.phase.endsWith(':counted') && !r.countdownLanded) || (r.phase === 'rollback:rebooting' && !r.rollbackLanded)) {
        report.lost++
        log(`cycle ${cycle}: the reset came after the initramfs announced its write (${r.phase}), but the next boot did not see it`)
      }
      r.outcome = 'rolled-back'
      lastGood = r.booted!
      report.rolledBack++
      keep(r)
      const landed =
        r.countdownLanded !== undefined
          ? `; the countdown write had ${r.countdownLanded ? '' : 'not '}landed`
          : r.rollbackLanded !== undefined
            ? `; the rollback write had ${r.rollbackLanded ? '' : 'not '}landed`
            : ''
      log(
        `cycle ${cycle}: ${r.moved ? `(moved ${r.moved.from} -> ${r.moved.to}) ` : ''}${r.good.version} in ${r.good.slot} -> ${FAILING_VERSION} in ${r.failingSlot}; reset ${aim}${r.trialBoot ? ` ${r.trialBoot}` : ''} ` +
          `at ${fmt(r.resetAtMs)} from ${r.anchor} (${r.phase}${r.hit ? '' : ', NOT the aimed phase'})${landed} -> ${r.booted!.version} in ${r.booted!.slot} after ${r.bootsUntilGood} boot(s): ${r.bootsAfter.join(' | ')}` +
          (r.backupStale ? '; backup GPT stale until the next switch' : ''),
      )
    }
  } finally {
    await vm.powerOff()
    tally()
  }
  return report
}

function describeGptWrite(w: GptWrite): string {
  return `${w.bytes} bytes at LBA ${w.lba}${w.changed.length ? ` (changed ${w.changed.join(', ')})` : ' (changed nothing)'}${w.durableBeforeNext ? ', flushed' : ''}`
}

function analyseRecording(
  logFile: string,
  beforeFile: string,
  g: { ss: number; primary: { first: number; last: number }; backup: { first: number; last: number }; entriesLba: { primary: number; backup: number } },
): RollbackWrites {
  const before = JSON.parse(fs.readFileSync(beforeFile, 'utf8')) as Record<string, string>
  const sectorBefore = (lba: number) => {
    const s = before[lba]
    if (s === undefined) throw new Error(`LBA ${lba} is outside the GPT regions kept`)
    return Buffer.from(s, 'base64')
  }
  const writes = gptWrites({
    writes: readWriteLog(logFile),
    sectorSize: g.ss,
    before: sectorBefore,
    primary: g.primary,
    backup: g.backup,
    entriesLba: g.entriesLba,
    rollbackSector: sectorBefore(g.entriesLba.primary),
  })
  // the rollback's writes: those that set the entries sector back, after the update's commit
  const afterCommit = writes.slice(writes.findIndex((w) => w.sets === 'commit') + 1)
  const rollbackPrimary = afterCommit.filter((w) => w.sets === 'rollback' && w.region === 'primary')
  const rollbackBackup = afterCommit.filter((w) => w.sets === 'rollback' && w.region === 'backup')
  const p = rollbackPrimary[0]
  const oneSector =
    rollbackPrimary.length === 1 &&
    !!p &&
    p.bytes === g.ss &&
    p.lba === g.entriesLba.primary &&
    p.durableBeforeNext &&
    rollbackBackup.length === 1 &&
    rollbackBackup[0]!.index > p.index
  return { sectorSize: g.ss, entriesLba: g.entriesLba, writes, rollbackPrimary, rollbackBackup, oneSector }
}

// labhost install: image a new lab PC unattended. Everything that can refuse — model, image
// trust, disks, their contents — is decided before the first write; the plan (which disk, which
// partitions, what is erased, what is kept) is what --dry-run prints. Then: partition, make
// filesystems, write the image to slot A and read it back, gptmbr, identity (SSH host keys,
// machine UUID, host name) on /persistent, the report on /persistent and on the stick (named by
// the host name), and reboot or power off.
import fs from 'node:fs'
import path from 'node:path'
import { Disk } from '../lib/blockdev.ts'
import { isLabhostError, LabhostError } from '../lib/errors.ts'
import type { Layout } from '../lib/layout.ts'
import { withPartitionMounted } from '../lib/partition-dev.ts'
import type { Progress } from '../lib/progress.ts'
import { planGptmbr } from '../bootloader/mbr.ts'
import { applySectorWrites } from '../bootloader/sector-writes.ts'
import { readPublicKey } from '../image-format/manifest.ts'
import { openSource, type UpdateSource } from '../image-format/source.ts'
import { imageInput, verifyImage, writeImage } from '../image-format/slot-writer.ts'
import { clearUnfinished, diskIdentity, markUnfinished, readUnfinished, type UnfinishedInstall } from './unfinished.ts'
import { applyBios, planBios, type BiosPlan, type BiosResult } from './bios.ts'
import { loadInstallConfig, parseInstallConfig, type InstallConfig } from './config.ts'
import { netbootVerdict } from './netboot-gate.ts'
import type { ReportStore } from './report-store.ts'
import { classifyDisk, ext4UuidAt, type DiskContent } from './disk-content.ts'
import { bootMedia, describe, describeBlockDisk, diskNameOf, listDisks, selectDisk, type BlockDisk } from './disks.ts'
import { writeDurable } from '../lib/durable.ts'
import { ensureIdentity, type Identity } from './identity.ts'
import { chooseHostname, placeholderValues, type HostnameChoice } from './hostname.ts'
import { readMachine, requireModel, type Machine } from './machine.ts'
import { installSelector } from './esp.ts'
import { SELECTOR_IN_IMAGE } from '../image-format/in-image.ts'
import { makeFilesystem, partitionDisk, planDisk, type DiskRole, type PlannedPartition } from './partition.ts'
import { fault } from '../lib/faults.ts'
import { LABHOST_VERSION } from '../lib/labhost-version.ts'

export interface InstallOptions {
  /** install.yaml's path, or where it came from when `configText` holds it. */
  config: string
  configText?: string
  /** The image directory (manifest.json + root.img.zst) on the stick. */
  image: string
  trustedKey: string
  /** The installer's own boot medium (never a target). */
  stick?: string
  /** Name the disks instead of matching them by properties (still checked for size and contents). */
  ssd?: string
  hdd?: string
  /** Where the report (and the record of an unfinished install) go besides /persistent: the stick's reports/, or the server's. */
  reports?: ReportStore
  /** A network install: the PC booted the installer from the network by this NIC; install.yaml's netboot: gate decides first. */
  netboot?: { bootMac: string }
  /**
   * Fetch the image another way once every check has passed and before the first write (a network
   * install over BitTorrent): the source it returns is what slot A is written from, checked
   * chunk by chunk against the same signed manifest.
   */
  prepareSource?: (source: UpdateSource) => Promise<UpdateSource>
  newIdentity?: boolean
  /** Root of sysfs (DMI, block devices); tests point it at a prepared tree. */
  sysRoot?: string
  dryRun?: boolean
  log?: (line: string) => void
  progress?: (label: string) => Progress
}

export interface PlannedDisk {
  role: DiskRole
  disk: BlockDisk
  content: DiskContent
  partitions: (PlannedPartition & { action: 'image' | 'empty' | 'mkfs' | 'keep' })[]
  erases: string
}

export interface InstallPlan {
  machine: Machine
  /** How this PC boots (/sys/firmware/efi): a UEFI PC needs the layout's ESP and the image's selector. */
  firmware: 'uefi' | 'bios'
  image: { name: string; version: string; bytes: number }
  bios: BiosPlan
  disks: PlannedDisk[]
  /** The name install.yaml gives this machine (null: it sets none); one already on a kept /persistent stays. */
  hostname: HostnameChoice | null
  finish: InstallConfig['finish']
  /** A network install: the NIC it booted by, and why the netboot: gate let it be imaged. */
  netboot?: { bootMac: string; why: string }
}

export interface InstallReport extends Omit<InstallPlan, 'bios' | 'hostname'> {
  bios: BiosResult
  /** The name on /persistent/hostname after the install: the plan's, or the one an earlier install left there (kept). */
  hostname: (HostnameChoice & { kept: boolean }) | null
  identity: Identity
  steps: { step: string; seconds: number }[]
  startedAt: string
  finishedAt: string
  labhost: string
}

function pickDisk(role: DiskRole, config: InstallConfig, named: string | undefined, excluded: Set<string>, sysRoot: string): BlockDisk {
  const match = config.disks[role]!
  if (!named) return selectDisk(role, match, listDisks(sysRoot), excluded)
  if (!fs.existsSync(named) || !fs.statSync(named).isBlockDevice()) {
    throw new LabhostError(
      'diskMissing',
      `--${role} ${named} is not a block device`,
      'name a disk such as /dev/sdb (losetup makes one of an image file); nothing was written',
    )
  }
  const d = { ...describeBlockDisk(diskNameOf(named)), path: named }
  if (excluded.has(d.name))
    throw new LabhostError(
      'diskIsBootMedium',
      `--${role} ${named} is the installer's own medium or holds a mounted filesystem`,
      'the stick, and a disk in use, are never a target (unmount it if it is yours to erase); nothing was written',
    )
  if (d.sizeBytes < match.minSizeGiB * 2 ** 30) {
    throw new LabhostError(
      'diskTooSmall',
      `--${role} ${describe(d)} is smaller than disks.${role}.minSizeGiB ${match.minSizeGiB} GiB`,
      'use a larger disk; nothing was written',
    )
  }
  return d
}

/**
 * `unfinished`: this disk's entry in the record of an install this stick started and did not
 * finish (installer/unfinished.ts): whatever it holds is that install's work, imaged again, and
 * what that install kept is kept again.
 */
function planOne(
  role: DiskRole,
  disk: BlockDisk,
  layout: Layout,
  config: InstallConfig,
  configFile: string,
  newIdentity: boolean,
  unfinished?: { startedAt: string; kept: string[] },
): PlannedDisk {
  let parts: PlannedPartition[]
  try {
    parts = planDisk(layout, role, disk.sizeBytes, disk.sectorSize)
  } catch (e) {
    if (e instanceof LabhostError && e.code === 'diskTooSmall')
      throw new LabhostError('diskTooSmall', `${describe(disk)}: ${e.message}`, 'use a larger disk; nothing was written', {}, { cause: e })
    throw e
  }
  const content = classifyDisk(disk.path, parts)
  if (content.kind === 'foreign' && !config.disks.eraseForeignData && !unfinished) {
    throw new LabhostError(
      'diskHasData',
      `the ${role.toUpperCase()} ${describe(disk)} holds ${content.what}`,
      `set disks.eraseForeignData: true in ${configFile} to erase it, or wipe it first; nothing was written`,
    )
  }
  const partitions = parts.map((p, i) => {
    const action = role === 'ssd' && i === 0 ? ('image' as const) : role === 'ssd' && i === 1 ? ('empty' as const) : ('mkfs' as const)
    if (action !== 'mkfs' || !config.keep.includes(p.name) || (newIdentity && p.mount === '/persistent')) return { ...p, action }
    const intactAt = () => ext4UuidAt(disk.path, p.firstLba * disk.sectorSize)?.toLowerCase() === p.fsUuid?.toLowerCase()
    if (unfinished) {
      // what the unfinished install kept is where the plan puts it, whatever its cut left of the
      // GPT; a filesystem it was making may be half made, whatever its superblock says
      return { ...p, action: unfinished.kept.includes(p.name) && intactAt() ? ('keep' as const) : action }
    }
    if (content.kind !== 'labhost') return { ...p, action }
    const old = content.partitions.find((q) => q.number === p.number)
    const same = old && old.firstLba === p.firstLba && old.lastLba === p.lastLba
    return { ...p, action: same && intactAt() ? ('keep' as const) : action }
  })
  const erases =
    unfinished && content.kind !== 'blank'
      ? `the unfinished install this stick started at ${unfinished.startedAt} (${content.kind === 'foreign' ? content.what : 'labhost partitions'}), except ${
          partitions
            .filter((p) => p.action === 'keep')
            .map((p) => p.name)
            .join(', ') || 'nothing'
        }`
      : content.kind === 'blank'
        ? 'nothing (the disk is blank)'
        : content.kind === 'foreign'
          ? `everything: ${content.what}`
          : `the earlier labhost install, except ${
              partitions
                .filter((p) => p.action === 'keep')
                .map((p) => p.name)
                .join(', ') || 'nothing'
            }`
  return { role, disk, content, partitions, erases }
}

export async function planInstall(o: InstallOptions): Promise<{ plan: InstallPlan; config: InstallConfig; layout: Layout; source: UpdateSource }> {
  const config = o.configText === undefined ? loadInstallConfig(o.config) : parseInstallConfig(o.config, o.configText)
  const machine = readMachine(o.sysRoot)
  const unfinished = await readUnfinished(o.reports)
  const excluded = bootMedia(o.stick)
  // before the model check: a PC that is not to be imaged boots on from its disk, whatever model it is
  const netboot = o.netboot && { bootMac: o.netboot.bootMac, why: gate(o, config, machine, excluded, unfinished).why }
  requireModel(config, o.config, machine)
  const hostname = chooseHostname(config.hostname, machine, o.config)
  const trusted = readPublicKey(o.trustedKey)
  const source = await openSource(o.image, trusted)
  const layout = source.manifest.diskLayout
  if (!layout)
    throw new LabhostError('manifestInvalid', `${source.manifestWhere} does not carry its disk layout`, 'rebuild the image with this labhost version')
  const firmware = fs.existsSync(path.join(o.sysRoot ?? '/sys', 'firmware/efi')) ? 'uefi' : 'bios'
  if (firmware === 'uefi' && !layout.esp) {
    throw new LabhostError(
      'uefiUnsupported',
      `this PC boots by UEFI, and the layout of ${source.manifestWhere} has no EFI system partition`,
      'build the image for a layout with an esp: section (the default layout has one), or switch the PC to legacy boot (CSM); nothing was written',
    )
  }
  const bios = await planBios(config.bios, o.sysRoot)
  const roles: DiskRole[] = layout.partitions.some((p) => p.disk === 'hdd') ? ['ssd', 'hdd'] : ['ssd']
  if (roles.includes('hdd') && !config.disks.hdd) {
    throw new LabhostError(
      'configInvalid',
      `${o.config}: disks.hdd: missing, but the image's layout has HDD partitions (${layout.partitions
        .filter((p) => p.disk === 'hdd')
        .map((p) => p.name)
        .join(', ')})`,
      'describe the HDD under disks.hdd',
    )
  }
  const chosen = roles.map((role) => pickDisk(role, config, role === 'ssd' ? o.ssd : o.hdd, excluded, o.sysRoot ?? '/sys'))
  if (chosen.length === 2 && chosen[0]!.name === chosen[1]!.name) {
    throw new LabhostError(
      'diskAmbiguous',
      `the SSD and the HDD would be the same disk ${describe(chosen[0]!)}`,
      'give them different properties in install.yaml; nothing was written',
    )
  }
  const disks = chosen.map((d, i) => {
    const mine = unfinished?.disks.find((u) => u.role === roles[i] && u.identity === diskIdentity(d))
    return planOne(roles[i]!, d, layout, config, o.config, o.newIdentity === true, mine)
  })
  const image = { name: source.manifest.name, version: source.manifest.version, bytes: source.manifest.image.size }
  const slotA = disks[0]!.partitions[0]!
  if (image.bytes > (slotA.lastLba - slotA.firstLba + 1) * disks[0]!.disk.sectorSize) {
    throw new LabhostError('imageTooSmall', `the image (${image.bytes} bytes) is larger than slot A`, 'use an image built for this layout; nothing was written')
  }
  return { plan: { machine, firmware, image, bios, disks, hostname, finish: config.finish, ...(netboot && { netboot }) }, config, layout, source }
}

/** install.yaml's netboot: gate over the disks this PC would be imaged on, or that could be mistaken for them. */
function gate(o: InstallOptions, config: InstallConfig, machine: Machine, excluded: Set<string>, unfinished: UnfinishedInstall | null) {
  const sysRoot = o.sysRoot ?? '/sys'
  const named = [o.ssd, o.hdd].filter((d): d is string => d !== undefined && fs.existsSync(d))
  const disks = named.length
    ? named.map((d) => ({ ...describeBlockDisk(diskNameOf(d)), path: d }))
    : listDisks(sysRoot).filter((d) => !d.usb && !d.removable && !excluded.has(d.name))
  const resuming = disks.some((d) => unfinished?.disks.some((u) => u.identity === diskIdentity(d)))
  return netbootVerdict(config.netboot, o.config, machine, o.netboot!.bootMac, disks, resuming)
}

export function renderPlan(p: InstallPlan, dryRun: boolean): string {
  const lines = [
    `machine: ${p.machine.vendor} / ${p.machine.product}${p.machine.serial ? ` (serial ${p.machine.serial})` : ''}, ${p.firmware === 'uefi' ? 'UEFI' : 'legacy BIOS'} firmware`,
    `image: ${p.image.name} ${p.image.version} (${(p.image.bytes / 2 ** 20).toFixed(0)} MiB)`,
    ...(p.netboot ? [`network install (boot NIC ${p.netboot.bootMac}): may be imaged because ${p.netboot.why}`] : []),
    `hostname: ${p.hostname ? `${p.hostname.name} (${p.hostname.from})` : "none set in install.yaml (the image's own, labhost)"}${p.disks[0]?.partitions.some((q) => q.action === 'keep' && q.mount === '/persistent') ? '; a name already on the kept /persistent stays' : ''}`,
    `BIOS (${p.bios.backend}${p.bios.where ? ` ${p.bios.where}` : ''}): ${p.bios.changes.map((c) => `${c.name} ${c.from} -> ${c.to}`).join(', ') || 'no changes'}${p.bios.unchanged.length ? `; already set: ${p.bios.unchanged.join(', ')}` : ''}`,
  ]
  for (const d of p.disks) {
    lines.push(`${d.role.toUpperCase()}: ${describe(d.disk)}`, `  erases: ${d.erases}`)
    for (const q of d.partitions) {
      const size = ((q.lastLba - q.firstLba + 1) * d.disk.sectorSize) / 2 ** 20
      const what = {
        image: 'write the root image (slot A, boots first)',
        empty: 'left empty (slot B, for the first update)',
        mkfs: q.esp ? 'new FAT: the UEFI selector (\\EFI\\BOOT\\BOOTX64.EFI)' : `new ext4 ${q.fsUuid}`,
        keep: `kept (ext4 ${q.fsUuid} intact)`,
      }[q.action]
      lines.push(`  ${String(q.number).padStart(2)} ${q.name.padEnd(12)} ${size.toFixed(0).padStart(7)} MiB  ${(q.mount ?? '').padEnd(15)} ${what}`)
    }
  }
  lines.push(`then: gptmbr in the SSD's MBR, SSH host keys, machine UUID and host name on /persistent (kept if present), report, ${p.finish}`)
  if (dryRun) lines.push('dry run: nothing was written')
  return lines.join('\n')
}

export async function runInstall(o: InstallOptions): Promise<{ plan: InstallPlan; report?: InstallReport }> {
  const log = o.log ?? (() => {})
  const startedAt = new Date()
  const steps: InstallReport['steps'] = []
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    log(`step: ${name}`)
    const t0 = Date.now()
    const r = await fn()
    steps.push({ step: name, seconds: (Date.now() - t0) / 1000 })
    // fault injection (test builds only): die here as a power cut would stop the install
    if (fault('AFTER_STEP') === name) process.kill(process.pid, 'SIGKILL')
    return r
  }
  const planned = await step('check machine, image and disks', () => planInstall(o))
  const { plan, config } = planned
  for (const line of renderPlan(plan, o.dryRun === true).split('\n')) log(line)
  if (o.dryRun) return { plan }
  const source = o.prepareSource ? await step('download the image', () => o.prepareSource!(planned.source)) : planned.source
  const bios = await step('BIOS settings', () => applyBios(plan.bios, config.bios, o.config, o.sysRoot))
  if (bios.changes.length) log(`BIOS: changed ${bios.changes.map((c) => c.name).join(', ')}${bios.pendingReboot ? ' (pending reboot)' : ''}`)

  // From here on the disks change: a power cut leaves them to this stick's re-run (unfinished.ts).
  if (o.reports) {
    const earlier = (await readUnfinished(o.reports))?.disks ?? []
    await markUnfinished(
      o.reports,
      plan.disks.map((d) => {
        const identity = diskIdentity(d.disk)
        return {
          role: d.role,
          identity,
          kept: d.partitions.filter((p) => p.action === 'keep').map((p) => p.name),
          startedAt: earlier.find((e) => e.identity === identity)?.startedAt ?? startedAt.toISOString(),
        }
      }),
    )
  }
  for (const d of plan.disks) {
    await step(`partition the ${d.role.toUpperCase()}`, async () => {
      await partitionDisk(d.disk.path, d.partitions, d.role === 'ssd' ? 'A' : null)
      for (const p of d.partitions.filter((q) => q.action === 'mkfs')) await makeFilesystem(d.disk.path, p, d.disk.sectorSize)
    })
  }
  const ssd = plan.disks[0]!
  const slotA = ssd.partitions[0]!
  await step('write the root image to slot A', async () => {
    // the source whose manifest was verified in the plan: its chunk hashes check the write
    const target = { disk: ssd.disk.path, firstByte: slotA.firstLba * ssd.disk.sectorSize, name: 'slot A' }
    // written, synced, then read back from the disk and hashed against the manifest
    await writeImage(target, source.manifest, imageInput(source), { progress: o.progress?.('writing') })
    await verifyImage(target, source.manifest, { progress: o.progress?.('verifying') })
  })
  const esp = ssd.partitions.find((p) => p.esp)
  if (esp) {
    await step('install the UEFI selector', () =>
      withPartitionMounted(
        ssd.disk.path,
        slotA,
        ssd.disk.sectorSize,
        async (root) => {
          // from the slot just written and read back against the signed manifest: as trusted as the image
          const selector = path.join(root, SELECTOR_IN_IMAGE)
          if (!fs.existsSync(selector)) {
            if (plan.firmware === 'uefi') {
              throw new LabhostError(
                'uefiUnsupported',
                `image ${plan.image.name} ${plan.image.version} carries no UEFI selector (/${SELECTOR_IN_IMAGE}), and this PC boots by UEFI`,
                'rebuild the image with this labhost version (an image for a layout with an ESP carries the selector); slot A is written, the PC will not boot from the SSD yet',
              )
            }
            log(`the image carries no UEFI selector: the ESP stays empty (this PC boots by legacy BIOS)`)
            return
          }
          await installSelector(ssd.disk.path, esp, ssd.disk.sectorSize, selector)
          log(`UEFI selector on the ESP (partition ${esp.number}): \\EFI\\BOOT\\BOOTX64.EFI`)
        },
        { readOnly: true },
      ),
    )
  }
  await step('install gptmbr', async () => {
    const disk = Disk.open(ssd.disk.path)
    try {
      await applySectorWrites(disk, planGptmbr(disk), log)
    } finally {
      disk.close()
    }
  })
  const persistent = ssd.partitions.find((p) => p.mount === '/persistent')
  if (!persistent)
    throw new LabhostError('configInvalid', 'the image layout has no /persistent partition for the host identity', 'use a layout with a persistent partition')
  let report: InstallReport | undefined
  await step('identity and report', () =>
    withPartitionMounted(ssd.disk.path, persistent, ssd.disk.sectorSize, async (dir) => {
      const identity = await ensureIdentity(dir, { newIdentity: o.newIdentity, hostname: plan.hostname?.name })
      log(`identity: machine ${identity.machineUuid}, ssh ed25519 ${identity.sshHostKeys.ed25519} (${identity.created ? 'new' : 'kept'})`)
      const hostname =
        identity.hostname === null
          ? null
          : identity.hostname.kept
            ? { name: identity.hostname.name, from: '/persistent/hostname (an earlier install)', kept: true }
            : { ...plan.hostname!, kept: false }
      if (hostname?.kept && plan.hostname && plan.hostname.name !== hostname.name)
        log(`hostname: kept ${hostname.name} from /persistent (install.yaml would give ${plan.hostname.name}: --new-identity takes that)`)
      else if (hostname) log(`hostname: ${hostname.name} (${hostname.kept ? 'kept' : 'new'})`)
      report = { ...plan, bios, hostname, identity, steps, startedAt: startedAt.toISOString(), finishedAt: new Date().toISOString(), labhost: LABHOST_VERSION }
      writeDurable(path.join(dir, 'install-report.json'), JSON.stringify(report, null, 2) + '\n')
    }),
  )
  report!.finishedAt = new Date().toISOString()
  if (o.reports) {
    const reports = o.reports
    await recordingInstalled(plan, reports, async () => {
      await clearUnfinished(
        reports,
        plan.disks.map((d) => diskIdentity(d.disk)),
      )
      const name = `${reportName(report!.hostname?.name, plan.machine)}-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`
      await reports.write(name, JSON.stringify(report, null, 2) + '\n')
      log(`report: ${reports.where}${reports.where.endsWith('/') ? '' : '/'}${name}`)
    })
  }
  return { plan, report }
}

/**
 * Run `fn`, a write to the report store once the disks are complete; its failure says so: the PC is
 * installed (exit 62, installedNotRecorded), only its record is missing — not a refusal, not a
 * download that failed before anything was written.
 */
export async function recordingInstalled(plan: InstallPlan, reports: ReportStore, fn: () => Promise<void>): Promise<void> {
  try {
    await fn()
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e)
    throw new LabhostError(
      'installedNotRecorded',
      `installed ${plan.image.name} ${plan.image.version} on ${plan.disks.map((d) => d.disk.path).join(' + ')}, but ${reports.where} did not take its record: ${why}`,
      `the disks are complete and the report is on the SSD (/persistent/install-report.json); ${isLabhostError(e) ? e.hint : `check ${reports.where}`}`,
      { where: reports.where },
      { cause: e },
    )
  }
}

/**
 * What a report on the stick is named by, so a technician imaging a room full of PCs can tell
 * them apart: the host name, else the DMI serial, else the first wired NIC's MAC.
 */
export function reportName(hostname: string | null | undefined, m: Machine | null): string {
  const v = m && placeholderValues(m)
  return hostname || (v?.serial.value && m!.serial!.trim().replace(/[^\w.-]+/g, '_')) || (v?.mac.value && `mac-${v.mac.value}`) || 'unknown-machine'
}

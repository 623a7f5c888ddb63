// node scripts/secure-boot-probe.ts [--only NAME,...] [--keep]: what boots under OVMF with Secure
// Boot on (issue 17 item 4, docs/design.md "Secure Boot"). Builds everything under a temp dir — the lean test
// image on a host disk with the ESP layout, the selector, Debian's signed shim/GRUB/kernel from the
// machine's apt sources (image-build/debian-packages.ts) — boots each variant under QEMU (q35 with
// SMM, OVMF_CODE_4M.secboot.fd, secure pflash) and prints a table of how far each got; the result
// goes to vm-tests/results/secure-boot-probe.json. Every QEMU start runs under
// `flock /tmp/labhost-vm.lock` (released between boots), at most 3 minutes each.
//
// Variants: the selector with Secure Boot off (same firmware, empty variable store: the control);
// the selector (unsigned UKI) with Microsoft's keys; Debian's shim -> Debian's GRUB -> Debian's
// kernel with the selector's initramfs, grub.cfg beside the shim or in \EFI\debian\ (with probe
// markers in grub.cfg and the kernel's log on), and the same chain as `labhost image selector
// --shim` ships it; and the selector signed with a lab key that a first boot in setup mode
// enrolls as PK, KEK and db, with and without Debian's Secure Boot CA in db as well. With
// --only, the named variants replace theirs in the recorded JSON and the others stay as recorded.
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { buildImage } from '../image-build/build.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { kernelFromPackage, unpackDebianPackage } from '../image-build/debian-packages.ts'
import { buildInitramfs, LOAD_MODULES_SH } from '../image-build/initramfs.ts'
import { buildSelector, buildShimSelector, makeUki, SELECTOR_CMDLINE } from '../image-build/selector.ts'
import { run } from '../lib/exec.ts'
import { loadLayout } from '../lib/layout.ts'
import { withPartitionDevice } from '../lib/partition-dev.ts'
import { buildHostDisks, withPartition, type HostDisks } from '../test-support/host-disks.ts'
import { leanRecipe } from '../test-support/lean-recipe.ts'

const ROOT = path.resolve(import.meta.dirname, '..')
const RESULT = path.join(ROOT, 'vm-tests/results/secure-boot-probe.json')
const LOCK = '/tmp/labhost-vm.lock'
const BOOT_TIMEOUT_S = 180
const OVMF = '/usr/share/OVMF'
const CODE_SECBOOT = `${OVMF}/OVMF_CODE_4M.secboot.fd`
const VARS_EMPTY = `${OVMF}/OVMF_VARS_4M.fd`
const VARS_MS = `${OVMF}/OVMF_VARS_4M.ms.fd`
const EFI_GLOBAL = '8be4df61-93ca-11d2-aa0d-00e098032b8c'
const EFI_IMAGE_DB = 'd719b2cb-3d3a-4596-a3bc-dad00e67656f'
const LAB_OWNER = '6c1d1a2b-0a11-4b5e-9c3a-00000000005b'

const { values: opts } = parseArgs({ options: { only: { type: 'string' }, keep: { type: 'boolean' } } })
const only = opts.only ? new Set(opts.only.split(',')) : null
const VARIANTS = [
  'selector-sb-off',
  'selector-unsigned',
  'shim-grub',
  'shim-grub-efi-debian',
  'shim-selector',
  'selector-lab-key',
  'selector-lab-key-debian-ca',
]
for (const n of only ?? []) if (!VARIANTS.includes(n)) throw new Error(`--only: no variant ${n} (variants: ${VARIANTS.join(', ')})`)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-sb-probe-'))
const log = (line: string) => console.log(`[sb-probe] ${line}`)

// ---- what the serial console shows ---------------------------------------------------------

/** The serial log without OVMF's terminal escapes and carriage returns. */
function clean(raw: string): string {
  // eslint-disable-next-line no-control-regex
  return raw
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    .replace(/\x1b[()][0-9A-Za-z]/g, '')
    .replace(/\r/g, '')
}

interface Step {
  name: string
  ok: RegExp
  fail?: RegExp
}
interface StepResult {
  name: string
  reached: boolean
  evidence: string | null
}

const line = (s: string, re: RegExp): string | null => {
  const m = re.exec(s)
  if (!m) return null
  const start = s.lastIndexOf('\n', m.index) + 1
  const end = s.indexOf('\n', m.index + m[0].length)
  return s
    .slice(start, end < 0 ? undefined : end)
    .trim()
    .slice(0, 240)
}

/** The first step not reached is where the boot stopped; its evidence is the failure line the console showed, if any. */
function judge(serial: string, steps: Step[]): { steps: StepResult[]; stoppedAt: string | null; stopEvidence: string | null } {
  const out: StepResult[] = []
  let stoppedAt: string | null = null
  let stopEvidence: string | null = null
  for (const st of steps) {
    const ok = stoppedAt ? null : line(serial, st.ok)
    out.push({ name: st.name, reached: !!ok, evidence: ok })
    if (!ok && !stoppedAt) {
      stoppedAt = st.name
      stopEvidence = (st.fail && line(serial, st.fail)) ?? null
    }
  }
  return { steps: out, stoppedAt, stopEvidence }
}

// one regex per failure message the chain can print, so "where it stopped" quotes the console
// the SSD is the first disk (QM00001); after it OVMF tries the HDD and its shell
const FW_DENIED = /BdsDxe: failed to (load|start) Boot\d+ "UEFI QEMU HARDDISK QM00001[^\n]*/
const SHIM_FAIL =
  /Verification failed[^\n]*|Failed to load image[^\n]*|Failed to start[^\n]*|Something has gone seriously wrong[^\n]*|SBAT[^\n]*(fail|denied|violat)[^\n]*/i
const GRUB_FAIL = /error: [^\n]*|grub> |grub rescue> /
const KEXEC_FAIL = /kexec_file_load failed[^\n]*|Cannot load[^\n]*|LABHOST-INITRAMFS-FAIL[^\n]*|kexec[^\n]*(denied|rejected|not permitted)[^\n]*/i
const ANY_FAIL = /LABHOST-INITRAMFS-FAIL[^\n]*|Kernel panic[^\n]*|Lockdown: [^\n]*|Loading of unsigned module[^\n]*|module verification failed[^\n]*/

const FIRMWARE_STARTS = { name: 'OVMF starts \\EFI\\BOOT\\BOOTX64.EFI', ok: /BdsDxe: starting Boot\d+ "UEFI QEMU HARDDISK QM00001[^\n]*/, fail: FW_DENIED }
const SELECTOR_STEPS: Step[] = [
  { name: 'selector kernel runs', ok: /Linux version \d[^\n]*|LABHOST-SELECTOR|Run \/init/, fail: ANY_FAIL },
  { name: 'selector picks the flagged slot', ok: /LABHOST-SELECTOR slot=\w+[^\n]*/, fail: ANY_FAIL },
  // LABHOST-ROOT: the slot's own initramfs, so the kexec'd kernel runs
  { name: "kexec -s starts the slot's Debian-signed kernel", ok: /LABHOST-ROOT slot=\w+[^\n]*/, fail: KEXEC_FAIL },
  { name: 'slot userspace runs', ok: /LABHOST-USERSPACE [^\n]*/, fail: ANY_FAIL },
]

// ---- QEMU ----------------------------------------------------------------------------------

interface Boot {
  serial: string
  seconds: number
  waitedForLockSeconds: number
  exit: string
}

/**
 * One boot under the VM lock: q35 with SMM and secure pflash, OVMF's Secure Boot build and the
 * given variable store, the host's SSD and HDD. Ends when QEMU exits (power off, or a reset with
 * -no-reboot), `stop` has matched for `graceS`, or after BOOT_TIMEOUT_S.
 */
async function boot(name: string, vars: string, disks: { ssd: string; hdd: string }, stop: RegExp, graceS = 4): Promise<Boot> {
  const work = fs.mkdtempSync(path.join(dir, `boot-${name}-`))
  const serialFile = path.join(work, 'serial.log')
  const pidFile = path.join(work, 'qemu.pid')
  const args = [
    '-machine',
    'q35,smm=on',
    '-accel',
    'tcg',
    '-m',
    '768',
    '-display',
    'none',
    '-no-reboot',
    '-nic',
    'none',
    '-serial',
    `file:${serialFile}`,
    '-monitor',
    'none',
    '-pidfile',
    pidFile,
    '-global',
    'driver=cfi.pflash01,property=secure,value=on',
    '-drive',
    `if=pflash,format=raw,unit=0,readonly=on,file=${CODE_SECBOOT}`,
    '-drive',
    `if=pflash,format=raw,unit=1,file=${vars}`,
    '-drive',
    `file=${disks.ssd},format=raw,if=none,id=d0`,
    '-device',
    'ide-hd,drive=d0,bus=ide.0,rotation_rate=1',
    '-drive',
    `file=${disks.hdd},format=raw,if=none,id=d1`,
    '-device',
    'ide-hd,drive=d1,bus=ide.1,rotation_rate=7200',
  ]
  const requested = Date.now()
  // the VM lock is held by flock for exactly this QEMU process; `timeout` bounds the boot itself
  const child = spawn('flock', [LOCK, 'timeout', '-s', 'KILL', String(BOOT_TIMEOUT_S), 'qemu-system-x86_64', ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (b: Buffer) => {
    stderr += b.toString()
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  let started = 0
  let matchedAt = 0
  let exit = ''
  const read = () => (fs.existsSync(serialFile) ? clean(fs.readFileSync(serialFile, 'latin1')) : '')
  for (;;) {
    const done = await Promise.race([exited.then((c) => ({ c })), sleep(500).then(() => null)])
    if (!started && fs.existsSync(pidFile)) {
      started = Date.now()
      log(`${name}: QEMU started (waited ${((started - requested) / 1000).toFixed(0)} s for the VM lock)`)
    }
    if (done) {
      exit =
        done.c === 0
          ? 'qemu exited (guest powered off or reset)'
          : done.c === 137
            ? `killed after ${BOOT_TIMEOUT_S} s`
            : `qemu exit ${done.c}: ${stderr.trim().slice(-300)}`
      break
    }
    if (started && !matchedAt && stop.test(read())) matchedAt = Date.now()
    if (matchedAt && Date.now() - matchedAt > graceS * 1000) {
      const pid = Number(fs.readFileSync(pidFile, 'utf8').trim())
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        /* already gone */
      }
      await exited
      exit = 'stopped by the probe at a final console line'
      break
    }
  }
  const seconds = started ? (Date.now() - started) / 1000 : 0
  return { serial: read(), seconds: Number(seconds.toFixed(1)), waitedForLockSeconds: Number((((started || Date.now()) - requested) / 1000).toFixed(1)), exit }
}

// ---- inputs --------------------------------------------------------------------------------

const sh = (cmd: string, args: string[], o: { cwd?: string } = {}) =>
  execFileSync(cmd, args, { cwd: o.cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
const have = (tool: string) => {
  try {
    sh('sh', ['-c', `command -v ${tool}`])
    return true
  } catch {
    return false
  }
}
const pkgVersion = (p: string) => {
  try {
    return sh('dpkg-query', ['-W', '-f=${Version}', p])
  } catch {
    return null
  }
}
const debVersion = (unpacked: string) => path.basename(unpacked).split('_')[1] ?? null

/** The slot userspace's report: the kernel's view of Secure Boot and lockdown, then power off. */
const HOOK = `#!/bin/sh
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
echo "LABHOST-SB-SLOT lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null | tr -d '\\n')"
dmesg | grep -iE 'secure ?boot|locked down|kexec' | sed 's/^/LABHOST-SB-SLOT dmesg: /'
echo LABHOST-SB-SLOT-END
`

async function writeEsp(disks: HostDisks, files: Record<string, string>): Promise<void> {
  const esp = disks.ssdPlan.find((p) => p.esp)!
  await withPartitionDevice(disks.ssd, esp, 512, async (dev) => {
    const dirs = new Set<string>()
    for (const to of Object.keys(files)) for (let d = path.posix.dirname(to); d !== '/'; d = path.posix.dirname(d)) dirs.add(d)
    for (const d of [...dirs].sort()) await run('mmd', ['-D', 'o', '-i', dev, `::${d}`]).catch(() => undefined)
    for (const [to, from] of Object.entries(files)) await run('mcopy', ['-D', 'o', '-i', dev, from, `::${to}`])
  })
}

/** A copy of the prepared host's disks whose ESP holds `files` (ESP path -> local file). */
async function hostWithEsp(base: HostDisks, name: string, files: Record<string, string>): Promise<HostDisks> {
  const d = fs.mkdtempSync(path.join(dir, `disks-${name}-`))
  const copy = { ...base, ssd: path.join(d, 'ssd.img'), hdd: path.join(d, 'hdd.img') }
  sh('cp', ['--sparse=always', base.ssd, copy.ssd])
  sh('cp', ['--sparse=always', base.hdd, copy.hdd])
  await writeEsp(copy, files)
  return copy
}

function varsCopy(from: string, name: string): string {
  const f = path.join(dir, `vars-${name}.fd`)
  fs.copyFileSync(from, f)
  return f
}

// ---- the variants --------------------------------------------------------------------------

interface VariantResult {
  name: string
  measured: string
  description: string
  secureBoot: boolean
  firmware: { code: string; vars: string }
  esp: string[]
  booted: boolean
  stoppedAt: string | null
  stopEvidence: string | null
  steps: StepResult[]
  secureBootSeen: { firmwareOrKernel: string[]; slotLockdown: string | null }
  boots: { purpose: string; seconds: number; waitedForLockSeconds: number; exit: string }[]
  serialTail: string
  note?: string
}

const results: VariantResult[] = []

function record(
  v: Omit<VariantResult, 'measured' | 'booted' | 'stoppedAt' | 'stopEvidence' | 'steps' | 'secureBootSeen' | 'serialTail'>,
  serial: string,
  steps: Step[],
): void {
  const j = judge(serial, steps)
  const sb = [...serial.matchAll(/[^\n]*(secureboot: [^\n]*|Secure boot (enabled|disabled)[^\n]*|locked down from EFI Secure Boot[^\n]*)/gi)].map((m) =>
    m[0].trim().slice(0, 200),
  )
  const lockdown = /LABHOST-SB-SLOT lockdown=([^\n]*)/.exec(serial)?.[1] ?? null
  const r: VariantResult = {
    ...v,
    measured: new Date().toISOString(),
    booted: !j.stoppedAt,
    stoppedAt: j.stoppedAt,
    stopEvidence: j.stopEvidence,
    steps: j.steps,
    secureBootSeen: { firmwareOrKernel: [...new Set(sb)], slotLockdown: lockdown },
    serialTail: serial.slice(-2500),
  }
  results.push(r)
  log(`${r.name}: ${r.booted ? 'BOOTED to slot userspace' : `stopped at: ${r.stoppedAt}${r.stopEvidence ? ` (${r.stopEvidence})` : ''}`}`)
}

const wanted = (name: string) => !only || only.has(name)
const FINAL =
  /LABHOST-SB-SLOT-END|BdsDxe: No bootable option|LABHOST-INITRAMFS-FAIL|Kernel panic|grub> |grub rescue> |Press any key to continue|Shell> |Verification failed/

async function main(): Promise<void> {
  log(`work dir ${dir}`)
  const layout = loadLayout(path.join(ROOT, 'image-build/layouts/test-esp.yaml'))
  const keys = cacheKeys()
  const built = await buildImage(leanRecipe(path.join(dir, 'lean.yaml')), { out: path.join(dir, 'image'), keyFile: keys.privateKeyFile })
  const rootImg = path.join(path.dirname(built.manifestFile), 'root.img')
  const selector = await buildSelector({ layout, out: path.join(dir, 'selector.efi'), log })
  const kernel = await kernelFromPackage('linux-image-amd64')
  const base = await buildHostDisks(path.join(dir), layout, rootImg, { slots: ['A'], flag: 'A', restMiB: 16 })
  await withPartition(
    base.ssd,
    base.ssdPlan.find((p) => p.mount === '/persistent')!,
    async (root) => {
      fs.writeFileSync(`${root}/test-hook`, HOOK, { mode: 0o755 })
    },
  )
  // the selector's own initramfs, cut out of the UKI that `labhost image selector` makes
  const selectorInitrd = path.join(dir, 'selector-initrd.img')
  await run('objcopy', ['-O', 'binary', '--only-section=.initrd', selector.file, selectorInitrd])
  // the same cmdline without `quiet`, so the console shows the kernel's view of Secure Boot
  const cmdline = SELECTOR_CMDLINE.replace(/\s*\bquiet\b/, '')
  const selectorVerbose = path.join(dir, 'selector-verbose.efi')
  await makeUki({ vmlinuz: kernel.vmlinuz, initrd: fs.readFileSync(selectorInitrd), cmdline, name: 'labhost selector', out: selectorVerbose })

  const shimDir = await unpackDebianPackage('shim-signed')
  const grubDir = await unpackDebianPackage('grub-efi-amd64-signed')
  const shim = path.join(shimDir, 'usr/lib/shim/shimx64.efi.signed')
  const grub = path.join(grubDir, 'usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed')
  const versions: Record<string, string | null> = {
    'shim-signed': debVersion(shimDir),
    'grub-efi-amd64-signed': debVersion(grubDir),
    kernel: kernel.version,
    'systemd-boot-efi (stub)': debVersion(await unpackDebianPackage('systemd-boot-efi')),
    ovmf: pkgVersion('ovmf'),
    'qemu-system-x86': pkgVersion('qemu-system-x86'),
    sbsigntool: pkgVersion('sbsigntool'),
    efitools: pkgVersion('efitools'),
  }
  const fw = (vars: string) => ({ code: path.basename(CODE_SECBOOT), vars: path.basename(vars) })
  const espList = (f: Record<string, string>) => Object.entries(f).map(([to, from]) => `${to} <- ${path.basename(from)}`)

  // 1. control: the same firmware build, an empty variable store (setup mode, Secure Boot off)
  if (wanted('selector-sb-off')) {
    const files = { '/EFI/BOOT/BOOTX64.EFI': selectorVerbose }
    const disks = await hostWithEsp(base, 'control', files)
    const b = await boot('selector-sb-off', varsCopy(VARS_EMPTY, 'control'), disks, FINAL)
    record(
      {
        name: 'selector-sb-off',
        description: 'control: the selector UKI (unsigned), Secure Boot off (secboot firmware, empty variable store)',
        secureBoot: false,
        firmware: fw(VARS_EMPTY),
        esp: espList(files),
        boots: [{ purpose: 'boot', ...pick(b) }],
      },
      b.serial,
      [FIRMWARE_STARTS, ...SELECTOR_STEPS],
    )
  }

  // 2. today's selector under Secure Boot with Microsoft's keys
  if (wanted('selector-unsigned')) {
    const files = { '/EFI/BOOT/BOOTX64.EFI': selector.file }
    const disks = await hostWithEsp(base, 'unsigned', files)
    const b = await boot('selector-unsigned', varsCopy(VARS_MS, 'unsigned'), disks, FINAL)
    record(
      {
        name: 'selector-unsigned',
        description: 'the selector UKI as `labhost image selector` builds it (unsigned), Secure Boot on, Microsoft keys',
        secureBoot: true,
        firmware: fw(VARS_MS),
        esp: espList(files),
        boots: [{ purpose: 'boot', ...pick(b) }],
      },
      b.serial,
      [FIRMWARE_STARTS, ...SELECTOR_STEPS],
    )
  }

  // 3. Debian's signed chain: shim (as BOOTX64.EFI) -> GRUB -> Debian's kernel + the selector's initramfs
  const grubCfg = path.join(dir, 'grub.cfg')
  fs.writeFileSync(
    grubCfg,
    [
      'echo "LABHOST-GRUB-CFG cmdpath=$cmdpath prefix=$prefix root=$root"',
      `linux /EFI/labhost/vmlinuz ${cmdline}`,
      'echo "LABHOST-GRUB-LINUX-LOADED"',
      'initrd /EFI/labhost/selector-initrd.img',
      'echo "LABHOST-GRUB-INITRD-LOADED"',
      'boot',
      '',
    ].join('\n'),
  )
  const shimSteps = (cfgWhere: string): Step[] => [
    FIRMWARE_STARTS,
    { name: `shim starts GRUB, GRUB reads ${cfgWhere}`, ok: /LABHOST-GRUB-CFG[^\n]*/, fail: new RegExp(`${SHIM_FAIL.source}|${GRUB_FAIL.source}`, 'i') },
    { name: "GRUB loads Debian's kernel (verified through shim)", ok: /LABHOST-GRUB-LINUX-LOADED/, fail: GRUB_FAIL },
    { name: 'GRUB loads the selector initramfs (not verified)', ok: /LABHOST-GRUB-INITRD-LOADED/, fail: GRUB_FAIL },
    ...SELECTOR_STEPS,
  ]
  for (const [name, cfgPath, where] of [
    ['shim-grub', '/EFI/BOOT/grub.cfg', '\\EFI\\BOOT\\grub.cfg ($cmdpath)'],
    ['shim-grub-efi-debian', '/EFI/debian/grub.cfg', '\\EFI\\debian\\grub.cfg ($prefix)'],
  ] as const) {
    if (!wanted(name)) continue
    const files = {
      '/EFI/BOOT/BOOTX64.EFI': shim,
      '/EFI/BOOT/grubx64.efi': grub,
      [cfgPath]: grubCfg,
      '/EFI/labhost/vmlinuz': kernel.vmlinuz,
      '/EFI/labhost/selector-initrd.img': selectorInitrd,
    }
    const disks = await hostWithEsp(base, name, files)
    const b = await boot(name, varsCopy(VARS_MS, name), disks, FINAL)
    record(
      {
        name,
        description: `Debian's signed shim -> signed GRUB (grub.cfg at ${where}) -> Debian's signed kernel + the selector's initramfs, Secure Boot on, Microsoft keys, no enrollment`,
        secureBoot: true,
        firmware: fw(VARS_MS),
        esp: espList(files),
        boots: [{ purpose: 'boot', ...pick(b) }],
      },
      b.serial,
      shimSteps(where),
    )
  }

  // 3b. the prototype: the ESP tree `labhost image selector --shim` makes (quiet, no probe markers)
  if (wanted('shim-selector')) {
    const tree = path.join(dir, 'shim-tree')
    const s = await buildShimSelector({ layout, outDir: tree, log })
    const files = Object.fromEntries(s.files.map((f) => [`/${f.path}`, path.join(tree, f.path)]))
    const disks = await hostWithEsp(base, 'shim-selector', files)
    const b = await boot('shim-selector', varsCopy(VARS_MS, 'shim-selector'), disks, FINAL)
    record(
      {
        name: 'shim-selector',
        description:
          'the tree `labhost image selector --shim` builds (prototype): Debian shim + GRUB, grub.cfg in \\EFI\\debian, Debian kernel + the selector initramfs, as shipped (quiet), Secure Boot on, Microsoft keys',
        secureBoot: true,
        firmware: fw(VARS_MS),
        esp: espList(files),
        boots: [{ purpose: 'boot', ...pick(b) }],
      },
      b.serial,
      [FIRMWARE_STARTS, ...SELECTOR_STEPS, { name: 'slot kernel reports Secure Boot on', ok: /LABHOST-SB-SLOT dmesg: [^\n]*Secure boot enabled/ }],
    )
  }

  // 4. the selector signed with a lab key that the lab enrolls (PK, KEK and db) in setup mode;
  // then the same with Debian's Secure Boot CA (the one shim carries) in db as well
  for (const [name, withDebianCa] of [
    ['selector-lab-key', false],
    ['selector-lab-key-debian-ca', true],
  ] as const) {
    if (!wanted(name)) continue
    const missing = ['sbsign', 'cert-to-efi-sig-list', 'sign-efi-sig-list', 'openssl'].filter((t) => !have(t))
    if (missing.length) {
      log(`${name}: skipped, ${missing.join(' ')} missing (Debian packages sbsigntool efitools openssl; scripts/setup.sh installs them)`)
      continue
    }
    await labKeyVariant(name, base, kernel, selectorVerbose, espList, withDebianCa ? shim : null)
  }

  // a run with --only replaces its variants in the recorded report and keeps the others
  const previous = only && fs.existsSync(RESULT) ? (JSON.parse(fs.readFileSync(RESULT, 'utf8')) as { variants: VariantResult[] }).variants : []
  const merged = [...VARIANTS].map((n) => results.find((r) => r.name === n) ?? previous.find((r) => r.name === n)).filter((r) => r !== undefined)
  const report = {
    updated: new Date().toISOString(),
    accel: 'tcg',
    qemuMachine: 'q35,smm=on + cfi.pflash01 secure=on',
    bootTimeoutSeconds: BOOT_TIMEOUT_S,
    versions,
    grubEmbeddedConfig: embeddedGrubConfig(grub),
    variants: merged,
  }
  fs.mkdirSync(path.dirname(RESULT), { recursive: true })
  fs.writeFileSync(RESULT, JSON.stringify(report, null, 2) + '\n')
  printTable(merged)
  log(`report: ${path.relative(ROOT, RESULT)}${only ? ` (this run: ${[...only].join(', ')}; the other variants as recorded before)` : ''}`)
}

function pick(b: Boot) {
  return { seconds: b.seconds, waitedForLockSeconds: b.waitedForLockSeconds, exit: b.exit }
}

/** GRUB's config as embedded in Debian's signed image: where it looks for grub.cfg. */
function embeddedGrubConfig(grub: string): string | null {
  const text = sh('strings', ['-n', '2', grub])
  const m = /if \[ -z "\$prefix" -o ! -e "\$prefix" \]; then[\s\S]*?\nfi\n[\s\S]*?\nfi\n/.exec(text)
  const prefix = /^\/EFI\/\w+$/m.exec(text)?.[0]
  return m ? `prefix=${prefix ?? '?'}\n${m[0]}` : null
}

/**
 * The selector signed with a fresh lab key: boot 1 in setup mode (secboot firmware, empty variable
 * store) runs an enroller UKI that writes db, KEK and PK through efivarfs (as sbctl or
 * efi-updatevar would), boot 2 starts the signed selector with Secure Boot on. `debianCaFrom`:
 * also put the Debian Secure Boot CA that this shim binary carries (.vendor_cert) into db.
 */
async function labKeyVariant(
  name: string,
  base: HostDisks,
  kernel: Awaited<ReturnType<typeof kernelFromPackage>>,
  selectorVerbose: string,
  espList: (f: Record<string, string>) => string[],
  debianCaFrom: string | null,
): Promise<void> {
  const k = fs.mkdtempSync(path.join(dir, 'labkey-'))
  sh('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-sha256',
    '-days',
    '3650',
    '-subj',
    '/CN=labhost probe lab key/',
    '-keyout',
    `${k}/lab.key`,
    '-out',
    `${k}/lab.crt`,
  ])
  sh('cert-to-efi-sig-list', ['-g', LAB_OWNER, `${k}/lab.crt`, `${k}/lab.esl`])
  let dbEsl = `${k}/lab.esl`
  if (debianCaFrom) {
    // shim's vendor_cert section: u32 authority size, u32 deauthority size, u32 authority offset, ...
    await run('objcopy', ['-O', 'binary', '--only-section=.vendor_cert', debianCaFrom, `${k}/vendor_cert.bin`])
    const vc = fs.readFileSync(`${k}/vendor_cert.bin`)
    fs.writeFileSync(`${k}/debian-ca.der`, vc.subarray(vc.readUInt32LE(8), vc.readUInt32LE(8) + vc.readUInt32LE(0)))
    sh('openssl', ['x509', '-inform', 'der', '-in', `${k}/debian-ca.der`, '-out', `${k}/debian-ca.pem`])
    log(`${name}: db gets ${sh('openssl', ['x509', '-in', `${k}/debian-ca.pem`, '-noout', '-subject']).trim()} from shim's .vendor_cert`)
    sh('cert-to-efi-sig-list', ['-g', LAB_OWNER, `${k}/debian-ca.pem`, `${k}/debian-ca.esl`])
    dbEsl = `${k}/db.esl`
    fs.writeFileSync(dbEsl, Buffer.concat([fs.readFileSync(`${k}/lab.esl`), fs.readFileSync(`${k}/debian-ca.esl`)]))
  }
  // efivarfs takes the attributes (u32) and then the authenticated payload in one write:
  // non-volatile | boot service | runtime | time-based authenticated write
  const attrs = Buffer.from([0x27, 0, 0, 0])
  const enroll: { path: string; data: Buffer; mode?: number }[] = []
  for (const v of ['db', 'KEK', 'PK']) {
    sh('sign-efi-sig-list', ['-g', LAB_OWNER, '-k', `${k}/lab.key`, '-c', `${k}/lab.crt`, v, v === 'db' ? dbEsl : `${k}/lab.esl`, `${k}/${v}.auth`])
    enroll.push({ path: `enroll/${v}.var`, data: Buffer.concat([attrs, fs.readFileSync(`${k}/${v}.auth`)]) })
  }
  // an efivarfs file is the attributes (u32) and the value: here one byte, the last
  const show = (v: string) => `echo "LABHOST-ENROLL ${v}=$(od -An -tu1 $E/${v}-${EFI_GLOBAL} 2>/dev/null | awk '{print $NF}')"`
  const init = `#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
${LOAD_MODULES_SH}
E=/sys/firmware/efi/efivars
mount -t efivarfs efivarfs $E || echo "LABHOST-ENROLL-FAIL no efivarfs"
${show('SetupMode')}
${show('SecureBoot')}
for v in db:${EFI_IMAGE_DB} KEK:${EFI_GLOBAL} PK:${EFI_GLOBAL}; do
  n=\${v%%:*}; g=\${v#*:}
  if dd if=/enroll/$n.var of=$E/$n-$g bs=1M 2>/tmp/err; then echo "LABHOST-ENROLL wrote $n"; else echo "LABHOST-ENROLL-FAIL $n: $(tail -n 1 /tmp/err)"; fi
done
${show('SetupMode')}
echo LABHOST-ENROLL-END
sync
poweroff -f
`
  const enrollerInitrd = await buildInitramfs({ modulesDir: kernel.modulesDir, modules: ['efivarfs'], init, files: enroll })
  const enroller = path.join(k, 'enroll.efi')
  await makeUki({
    vmlinuz: kernel.vmlinuz,
    initrd: enrollerInitrd,
    cmdline: 'console=ttyS0,115200 panic=-1 quiet',
    name: 'labhost probe key enrollment',
    out: enroller,
  })
  const signed = path.join(k, 'selector-signed.efi')
  sh('sbsign', ['--key', `${k}/lab.key`, '--cert', `${k}/lab.crt`, '--output', signed, selectorVerbose])
  const vars = varsCopy(VARS_EMPTY, name)
  // boot 1: setup mode (empty store, Secure Boot off) runs the enroller, which writes db, KEK, then PK
  const enrollFiles = { '/EFI/BOOT/BOOTX64.EFI': enroller }
  const e = await boot(`${name}-enroll`, vars, await hostWithEsp(base, `${name}-enroll`, enrollFiles), /LABHOST-ENROLL-END|LABHOST-ENROLL-FAIL/)
  const enrollLines = [...e.serial.matchAll(/LABHOST-ENROLL[^\n]*/g)].map((m) => m[0])
  const enrolled = enrollLines.some((l) => l === 'LABHOST-ENROLL wrote PK')
  log(`${name} enrollment: ${enrollLines.join('; ')}`)
  const files = { '/EFI/BOOT/BOOTX64.EFI': signed }
  const b = enrolled ? await boot(name, vars, await hostWithEsp(base, name, files), FINAL) : null
  // after a reset OVMF reads SecureBoot from the enrolled PK; the kernel says whether it is on
  const db = debianCaFrom ? 'lab key + Debian Secure Boot CA' : 'lab key'
  record(
    {
      name,
      description: `the selector UKI signed (sbsign) with a lab key, after a setup-mode boot enrolled the lab key as PK and KEK and ${db} as db (no Microsoft keys)`,
      secureBoot: true,
      firmware: { code: path.basename(CODE_SECBOOT), vars: `${path.basename(VARS_EMPTY)} + PK, KEK: lab key; db: ${db}` },
      esp: espList(files),
      boots: [{ purpose: 'enroll (setup mode)', ...pick(e) }, ...(b ? [{ purpose: 'boot', ...pick(b) }] : [])],
      note: `enrollment console: ${enrollLines.join('; ') || e.serial.slice(-600)}`,
    },
    // judged on the enrollment boot's report lines followed by the second boot's console
    `${enrollLines.join('\n')}\n${b ? b.serial : e.serial}`,
    [
      { name: `setup-mode boot enrolls PK, KEK, db (${db})`, ok: /LABHOST-ENROLL wrote PK/, fail: /LABHOST-ENROLL-FAIL[^\n]*/ },
      FIRMWARE_STARTS,
      { name: 'kernel reports Secure Boot on', ok: /secureboot: Secure boot enabled/, fail: /secureboot: [^\n]*/ },
      ...SELECTOR_STEPS,
    ],
  )
}

function printTable(results: VariantResult[]): void {
  const rows = results.map((r) => [
    r.name,
    r.secureBoot ? 'on' : 'off',
    r.booted ? 'yes' : 'no',
    r.booted ? '-' : `${r.stoppedAt}${r.stopEvidence ? `: ${r.stopEvidence}` : ''}`,
    r.boots.map((b) => `${b.seconds}s`).join('+'),
  ])
  const head = ['variant', 'SB', 'slot userspace', 'stopped at', 'time']
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  for (const r of [head, ...rows]) console.log(r.map((c, i) => c.padEnd(w[i]!)).join(' | '))
}

try {
  await main()
} finally {
  if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true })
  else log(`kept ${dir}`)
}

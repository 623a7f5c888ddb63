// The one place external tools (sgdisk, mkfs.ext4, extlinux, losetup, zstd, aria2c, qemu-img, …)
// are run. A failure becomes a LabhostError carrying the command line, exit code, the stderr tail
// and a hint for that tool: which package brings it, and what to check when it refuses.
import path from 'node:path'
import { execa, type Options, type ResultPromise } from 'execa'
import { LabhostError } from './errors.ts'

export interface RunResult {
  stdout: string
  stderr: string
}

export interface RunOptions {
  input?: string | Buffer
  cwd?: string
  env?: Record<string, string>
  timeoutMs?: number
  /** Raw stdout as a Buffer (for binary output). */
  binary?: boolean
  /** What to check when the tool fails, where the caller knows better than the tool's default. */
  hint?: string
}

/** The Debian package of each tool labhost runs, and what to look at when it refuses. */
const TOOLS: Record<string, { pkg: string; check: string; missing?: string }> = {
  sgdisk: { pkg: 'gdisk', check: 'check the disk with `sgdisk -v DISK` (is it large enough for the layout, and not in use?)' },
  'mkfs.ext4': { pkg: 'e2fsprogs', check: 'check that the partition exists, is not mounted and is large enough for an ext4 filesystem' },
  e2fsck: { pkg: 'e2fsprogs', check: 'the filesystem image is damaged: build it again' },
  debugfs: { pkg: 'e2fsprogs', check: 'check that the file is an ext4 image and that the path inside it exists' },
  'mkfs.vfat': { pkg: 'dosfstools', check: 'check that the partition exists and is not mounted' },
  mmd: { pkg: 'mtools', check: 'check that the partition holds a FAT filesystem (mkfs.vfat) and is not mounted' },
  mcopy: { pkg: 'mtools', check: 'check that the FAT filesystem has room for the file and is not mounted' },
  extlinux: { pkg: 'extlinux', check: 'check that the directory is on a mounted ext4 filesystem with room for ldlinux.sys' },
  zstd: { pkg: 'zstd', check: 'check the compressed file: it may be cut short or damaged' },
  aria2c: { pkg: 'aria2', check: 'check the .torrent, that the tracker is reachable and that the BitTorrent port is free' },
  python3: {
    pkg: 'python3-libtorrent',
    check: 'check the .torrent, that the tracker is reachable and that the BitTorrent port is free',
    missing: 'install the python3-libtorrent package (scripts/setup.sh does), or use --bt-client aria2c',
  },
  mktorrent: { pkg: 'mktorrent', check: 'check the tracker URLs and that the directory is writable' },
  'qemu-img': { pkg: 'qemu-utils', check: 'check that the file is a qcow2 image that no VM has open' },
  'qemu-io': { pkg: 'qemu-utils', check: 'check that the file is an image that no VM has open' },
  'ssh-keygen': { pkg: 'openssh-client', check: 'check that the key directory is writable' },
  losetup: { pkg: 'mount', check: 'run as root; is the loop module loaded (modprobe loop) and a loop device free (losetup -f)?' },
  mount: { pkg: 'mount', check: 'run as root; check the device holds the filesystem it should and the mount point exists' },
  umount: { pkg: 'mount', check: 'something still uses the mount (fuser -m DIR names it)' },
  blockdev: { pkg: 'util-linux', check: 'run as root and check that the device exists' },
  blkdiscard: { pkg: 'util-linux', check: 'run as root and check that the device exists' },
  taskset: { pkg: 'util-linux', check: 'check the CPU number exists (nproc)' },
  'apt-get': { pkg: 'apt', check: 'check the apt sources and the network (apt-get update shows which source fails)' },
  'apt-cache': { pkg: 'apt', check: 'run apt-get update and check the package name' },
  'dpkg-deb': { pkg: 'dpkg', check: 'the downloaded .deb is damaged: delete it from the cache and build again' },
  debootstrap: { pkg: 'debootstrap', check: 'check the mirror, the suite name and the network; debootstrap/debootstrap.log in the staging tree has details' },
  modinfo: { pkg: 'kmod', check: 'check that the kernel module file exists and is not damaged' },
  depmod: { pkg: 'kmod', check: 'check that the staged kernel modules directory is complete' },
  ldd: { pkg: 'libc-bin', check: 'check that the program is a dynamically linked executable' },
  objcopy: { pkg: 'binutils', check: 'check that systemd-boot-efi (the EFI stub) is installed and the kernel and initramfs exist' },
  systemctl: { pkg: 'systemd', check: 'is systemd running this system?' },
  busybox: { pkg: 'busybox-static', check: 'check that the busybox binary runs on this machine' },
  cctk: {
    pkg: '',
    missing: 'put Dell Command | Configure (cctk) on the stick, or use bios.backend: sysfs',
    check: 'check the BIOS admin password file and the setting names for this model',
  },
  dd: { pkg: 'coreutils', check: 'run as root and check the device' },
  cp: { pkg: 'coreutils', check: 'check free space and permissions at the destination' },
}
const GENERIC = { pkg: '', check: 'see the command and its output above' }

function toolOf(cmd: string): { name: string; pkg: string; check: string; missing?: string } {
  const name = path.basename(cmd)
  return { name, ...(TOOLS[name] ?? GENERIC) }
}

/** What to do when `cmd` is not installed: its package (or the tool's own advice). */
export function missingHint(cmd: string): string {
  const tool = toolOf(cmd)
  return tool.missing ?? `install ${tool.pkg ? `the ${tool.pkg} package` : 'it'} (scripts/setup.sh installs every tool labhost needs)`
}

function tail(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join('\n')
}

/** How a run ended, whether or not it succeeded. */
export interface RunOutcome extends RunResult {
  /** undefined when the program did not run to an exit (not started, killed by a signal). */
  exitCode: number | undefined
  signal: string | undefined
  timedOut: boolean
  /** The program could not be started (`ENOENT`: not installed; `EACCES`: not executable); else undefined. */
  startError: string | undefined
  /** stdout and stderr interleaved, when `all` was asked for. */
  all: string
}

/**
 * The typed error of a tool that failed: the command line, why it ended, the stderr tail, and a
 * hint that fits the tool (its package when it is missing). Every tool failure goes through here.
 */
export function toolError(
  cmd: string,
  args: readonly string[],
  r: Pick<RunOutcome, 'exitCode' | 'signal' | 'timedOut' | 'startError'> & { stderr?: string },
  o: { timeoutMs?: number; hint?: string; cause?: unknown } = {},
): LabhostError {
  const tool = toolOf(cmd)
  const commandLine = [cmd, ...args].join(' ')
  if (r.startError === 'ENOENT') {
    return new LabhostError('toolFailed', `${cmd} is not installed`, missingHint(cmd), { command: commandLine, notInstalled: true }, { cause: o.cause })
  }
  const stderr = String(r.stderr ?? '')
  const why = r.startError
    ? `could not be started (${r.startError})`
    : r.timedOut
      ? `timed out after ${o.timeoutMs} ms`
      : `exited with ${r.exitCode ?? r.signal}`
  const said = tail(stderr, 3).replace(/\n/g, ' | ')
  return new LabhostError(
    'toolFailed',
    `${commandLine} ${why}${said ? `: ${said}` : ''}`,
    o.hint ?? tool.check,
    { command: commandLine, exitCode: r.exitCode, stderr: tail(stderr) },
    { cause: o.cause },
  )
}

function outcomeOf(r: Awaited<ResultPromise>): RunOutcome {
  const failed = r.failed && r.exitCode === undefined && !r.signal && !r.timedOut
  return {
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr ?? ''),
    all: String((r as { all?: unknown }).all ?? ''),
    exitCode: r.exitCode,
    signal: r.signal,
    timedOut: r.timedOut === true,
    startError: failed ? String((r as { code?: string }).code ?? 'error') : undefined,
  }
}

function execaOptions(opts: RunOptions & { all?: boolean }): Options {
  return {
    input: opts.input,
    cwd: opts.cwd,
    env: opts.env,
    timeout: opts.timeoutMs,
    reject: false,
    stripFinalNewline: false,
    encoding: opts.binary ? 'buffer' : 'utf8',
    all: opts.all,
  }
}

/** Run a tool to its end; any failure throws toolError's LabhostError. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const raw = await execa(cmd, args, execaOptions(opts))
  const r = outcomeOf(raw)
  if (raw.failed) throw toolError(cmd, args, r, opts)
  return { stdout: r.stdout, stderr: r.stderr }
}

/**
 * Run a program whose exit status is an answer, not a failure (a health check, cctk, an optional
 * fast path): never throws for how it ended; the caller reads the outcome (and may pass it to
 * toolError).
 */
export async function runStatus(cmd: string, args: readonly string[], opts: RunOptions & { all?: boolean } = {}): Promise<RunOutcome> {
  return outcomeOf(await execa(cmd, args, execaOptions(opts)))
}

export interface StartOptions {
  stdin?: 'pipe' | 'ignore'
  /** 'pipe' keeps the stream for the caller (stderr's tail then goes into toolError); 2: labhost's own stderr. */
  stdout?: 'pipe' | 'ignore' | 2
  stderr?: 'pipe' | 'ignore' | 2
  /** Its own process group: it runs on after labhost exits (kill it with process.kill(-pid)). */
  detached?: boolean
  /** Set in its environment besides labhost's own. */
  env?: Record<string, string>
}

/**
 * Start a long-running tool (a decompressor fed from a stream, a BitTorrent seeder): the process,
 * which resolves (never rejects) with its outcome once it ends. On failure, hand the outcome to
 * toolError.
 */
export function start(cmd: string, args: readonly string[], opts: StartOptions = {}): { process: ResultPromise; done: Promise<RunOutcome> } {
  const options: Options = {
    stdin: opts.stdin ?? 'ignore',
    stdout: opts.stdout ?? 'ignore',
    stderr: opts.stderr ?? 'pipe',
    detached: opts.detached ?? false,
    reject: false,
    encoding: 'utf8',
    ...(opts.env ? { env: opts.env } : {}),
  }
  const child = execa(cmd, args, options)
  return { process: child, done: child.then(outcomeOf) }
}

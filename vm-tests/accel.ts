// KVM or TCG. /dev/kvm can exist and still fail on real-mode boot code (DESIGN §6: here a
// software hypervisor does), so KVM is used only when it boots a real gptmbr → extlinux chain.
// The answer is cached per boot of this machine; LABHOST_ACCEL=kvm|tcg overrides it.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execa } from 'execa'
import { buildProbeDisk } from './fixtures/probe-disk.ts'

export type Accel = 'kvm' | 'tcg'

let cached: Accel | undefined

function cacheFile(): string {
  const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  return path.join(os.tmpdir(), `labhost-accel-${bootId}`)
}

export async function kvmBootsRealMode(): Promise<boolean> {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK)
  } catch {
    return false
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-kvm-probe-'))
  try {
    const disk = path.join(dir, 'probe.img')
    await buildProbeDisk(disk)
    const serial = path.join(dir, 'serial.log')
    const vm = execa(
      'qemu-system-x86_64',
      [
        '-machine',
        'pc',
        '-accel',
        'kvm',
        '-cpu',
        'host',
        '-m',
        '64',
        '-display',
        'none',
        '-nic',
        'none',
        '-serial',
        `file:${serial}`,
        '-monitor',
        'none',
        '-no-reboot',
        '-drive',
        `file=${disk},format=raw,if=ide`,
      ],
      { reject: false, timeout: 20_000, killSignal: 'SIGKILL' },
    )
    // A broken KVM stops the guest with a register dump instead of exiting: end it at once.
    vm.stderr?.on('data', (chunk: Buffer) => {
      if (/KVM internal error|emulation failure/i.test(chunk.toString())) vm.kill('SIGKILL')
    })
    const r = await vm
    const out = fs.existsSync(serial) ? fs.readFileSync(serial, 'latin1') : ''
    return r.exitCode === 0 && out.includes('SYSLINUX')
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

export async function chooseAccel(): Promise<Accel> {
  const forced = process.env.LABHOST_ACCEL
  if (forced === 'kvm' || forced === 'tcg') return forced
  if (cached) return cached
  const file = cacheFile()
  if (fs.existsSync(file)) {
    const v = fs.readFileSync(file, 'utf8').trim()
    if (v === 'kvm' || v === 'tcg') return (cached = v)
  }
  cached = (await kvmBootsRealMode()) ? 'kvm' : 'tcg'
  fs.writeFileSync(file, cached)
  return cached
}

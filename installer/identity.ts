// The host's identity on /persistent, made once: SSH host keys (ed25519, rsa) where the host
// image's sshd looks for them, a random machine UUID, and the host name install.yaml gives
// (/persistent/hostname, which the host image sets at boot). A re-install keeps them unless a
// new identity is asked for.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { run } from '../lib/exec.ts'
import { writeDurable, syncDir } from '../lib/durable.ts'
import { validHostname } from './hostname.ts'

export interface Identity {
  machineUuid: string
  /** key type -> SHA256 fingerprint, as `ssh-keygen -l` prints it */
  sshHostKeys: Record<string, string>
  /** true when this run made them, false when they were kept from an earlier install */
  created: boolean
  /** The name in /persistent/hostname (null: none, the image's own name stands), and whether an earlier install left it. */
  hostname: { name: string; kept: boolean } | null
}

/** The host name an earlier install left on /persistent; an unreadable or invalid one counts as none. */
export function readKeptHostname(persistent: string): string | null {
  try {
    const name = fs.readFileSync(path.join(persistent, 'hostname'), 'utf8').trim()
    return validHostname(name) ? name : null
  } catch {
    return null
  }
}

const KEY_TYPES = [
  ['ed25519', []],
  ['rsa', ['-b', '3072']],
] as const

export async function ensureIdentity(persistent: string, o: { newIdentity?: boolean; hostname?: string } = {}): Promise<Identity> {
  const sshDir = path.join(persistent, 'ssh')
  const uuidFile = path.join(persistent, 'machine-uuid')
  const hostnameFile = path.join(persistent, 'hostname')
  if (o.newIdentity) {
    fs.rmSync(sshDir, { recursive: true, force: true })
    fs.rmSync(uuidFile, { force: true })
    fs.rmSync(hostnameFile, { force: true })
  }
  // like the keys, a name is kept once given: the inventory or the pattern name only a new host
  const kept = readKeptHostname(persistent)
  const hostname = kept !== null ? { name: kept, kept: true } : o.hostname !== undefined ? { name: o.hostname, kept: false } : null
  if (hostname && !hostname.kept) writeDurable(hostnameFile, `${hostname.name}\n`)
  let created = false
  fs.mkdirSync(sshDir, { recursive: true, mode: 0o755 })
  for (const [type, extra] of KEY_TYPES) {
    const key = path.join(sshDir, `ssh_host_${type}_key`)
    if (fs.existsSync(key) && fs.existsSync(`${key}.pub`)) continue
    fs.rmSync(key, { force: true })
    fs.rmSync(`${key}.pub`, { force: true })
    await run('ssh-keygen', ['-q', '-t', type, ...extra, '-N', '', '-C', `root@${hostname?.name ?? 'labhost'}`, '-f', key])
    created = true
  }
  if (!fs.existsSync(uuidFile)) {
    const uuid = crypto.randomUUID()
    writeDurable(uuidFile, `${uuid}\n`)
    // systemd's form of the same identity, for an /etc/machine-id bind or link
    writeDurable(path.join(persistent, 'machine-id'), `${uuid.replace(/-/g, '')}\n`)
    created = true
  }
  await run('sync', [])
  syncDir(persistent)
  const sshHostKeys: Record<string, string> = {}
  for (const [type] of KEY_TYPES) {
    const out = (await run('ssh-keygen', ['-l', '-f', path.join(sshDir, `ssh_host_${type}_key.pub`)])).stdout
    sshHostKeys[type] = out.split(' ')[1] ?? out.trim()
  }
  return { machineUuid: fs.readFileSync(uuidFile, 'utf8').trim(), sshHostKeys, created, hostname }
}

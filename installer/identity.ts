// The host's identity on /persistent, made once: SSH host keys (ed25519, rsa) where the host
// image's sshd looks for them, and a random machine UUID. A re-install keeps them unless a new
// identity is asked for.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { run } from '../lib/exec.ts'
import { writeDurable, syncDir } from '../updater/host-state.ts'

export interface Identity {
  machineUuid: string
  /** key type -> SHA256 fingerprint, as `ssh-keygen -l` prints it */
  sshHostKeys: Record<string, string>
  /** true when this run made them, false when they were kept from an earlier install */
  created: boolean
}

const KEY_TYPES = [['ed25519', []], ['rsa', ['-b', '3072']]] as const

export async function ensureIdentity(persistent: string, o: { newIdentity?: boolean; hostname?: string } = {}): Promise<Identity> {
  const sshDir = path.join(persistent, 'ssh')
  const uuidFile = path.join(persistent, 'machine-uuid')
  if (o.newIdentity) {
    fs.rmSync(sshDir, { recursive: true, force: true })
    fs.rmSync(uuidFile, { force: true })
  }
  let created = false
  fs.mkdirSync(sshDir, { recursive: true, mode: 0o755 })
  for (const [type, extra] of KEY_TYPES) {
    const key = path.join(sshDir, `ssh_host_${type}_key`)
    if (fs.existsSync(key) && fs.existsSync(`${key}.pub`)) continue
    fs.rmSync(key, { force: true })
    fs.rmSync(`${key}.pub`, { force: true })
    await run('ssh-keygen', ['-q', '-t', type, ...extra, '-N', '', '-C', `root@${o.hostname ?? 'labhost'}`, '-f', key])
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
  return { machineUuid: fs.readFileSync(uuidFile, 'utf8').trim(), sshHostKeys, created }
}

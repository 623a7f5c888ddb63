// The QEMU implementation of the VM driver: one qemu-system-x86_64 per machine, controlled over
// its QMP socket (system_reset, quit), serial console to a file, KVM only where it really boots
// the chain (accel.ts), TCG otherwise.
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { execa } from 'execa'
import { chooseAccel } from './accel.ts'
import { qemuArgs, type VmSpec } from './qemu.ts'
import { SerialTail, type RunningVm, type VmDriver } from './driver.ts'

/** A QMP client: one command at a time, answers matched in order; events are skipped. */
class Qmp {
  private socket: net.Socket
  private buffered = ''
  private waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = []

  private constructor(socket: net.Socket) {
    this.socket = socket
    socket.on('data', (d) => {
      this.buffered += d.toString()
      let nl: number
      while ((nl = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, nl).trim()
        this.buffered = this.buffered.slice(nl + 1)
        if (!line) continue
        const msg = JSON.parse(line) as { return?: unknown; error?: { desc: string }; event?: string; QMP?: unknown }
        if (msg.event || msg.QMP) continue
        const w = this.waiting.shift()
        if (msg.error) w?.reject(new Error(`QMP: ${msg.error.desc}`))
        else w?.resolve(msg.return)
      }
    })
    socket.on('close', () => {
      for (const w of this.waiting.splice(0)) w.reject(new Error('QMP socket closed'))
    })
  }

  static async connect(file: string, timeoutMs: number): Promise<Qmp> {
    const until = Date.now() + timeoutMs
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(file, () => resolve(s))
          s.once('error', reject)
        })
        const qmp = new Qmp(socket)
        await qmp.execute('qmp_capabilities')
        return qmp
      } catch (e) {
        if (Date.now() > until) throw new Error(`no QMP socket at ${file}: ${(e as Error).message}`)
        await sleep(100)
      }
    }
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject })
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) }) + '\n')
    })
  }

  close(): void {
    this.socket.destroy()
  }
}

export class QemuDriver implements VmDriver {
  readonly name = 'qemu' as const
  readonly holds = true

  async accel(): Promise<string> {
    return chooseAccel()
  }

  async start(spec: VmSpec, serialFile: string): Promise<RunningVm> {
    const accel = spec.accel ?? (await chooseAccel())
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-qmp-'))
    const socket = path.join(dir, 'qmp.sock')
    const holdSocket = spec.holdPort ? path.join(dir, 'hold.sock') : undefined
    fs.writeFileSync(serialFile, '')
    const proc = execa('qemu-system-x86_64', qemuArgs(spec, accel, serialFile, { reboot: 'restart', qmp: socket, hold: holdSocket }), {
      reject: false,
      stdin: 'ignore',
    })
    let gone = false
    const ended = proc.then((r) => {
      gone = true
      fs.rmSync(dir, { recursive: true, force: true })
      return r
    })
    let qmp: Qmp
    try {
      qmp = await Promise.race([
        Qmp.connect(socket, 20_000),
        ended.then((r) => {
          throw new Error(`qemu exited at start: ${String(r.stderr).trim()}`)
        }),
      ])
    } catch (e) {
      proc.kill('SIGKILL')
      await ended
      throw e
    }
    // the hold port: one connection for the machine's life (resets keep it), opened before the
    // guest can reach a hold point
    let hold: net.Socket | undefined
    if (holdSocket) {
      hold = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(holdSocket, () => resolve(s))
        s.once('error', reject)
      }).catch(async (e: Error) => {
        proc.kill('SIGKILL')
        await ended
        throw new Error(`no hold port at ${holdSocket}: ${e.message}`)
      })
      hold.on('error', () => undefined)
      hold.on('data', () => undefined) // the guest's echo of what was sent
    }
    const tail = new SerialTail(serialFile)
    return {
      serial: () => tail.read(),
      reset: async () => {
        if (!gone) await qmp.execute('system_reset')
      },
      powerOff: async () => {
        if (!gone) {
          await qmp.execute('quit').catch(() => undefined)
          const t = setTimeout(() => proc.kill('SIGKILL'), 10_000)
          await ended
          clearTimeout(t)
        }
        qmp.close()
        hold?.destroy()
      },
      exited: () => gone,
      ...(hold ? { send: (text: string) => void hold.write(text) } : {}),
    }
  }
}

// labhost wake: Wake-on-LAN magic packets — 6 bytes of 0xFF, then the MAC address 16 times — as
// UDP broadcasts from Node (port 9, discard), so no package is needed on the admin machine and
// no raw socket (etherwake) or Perl (wakeonlan). MACs come from the command line or from the
// install reports the installer leaves on its stick (machine.nics).
import dgram from 'node:dgram'
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'

/** `aa:bb:cc:dd:ee:ff`, `aa-bb-…` or `aabbccddeeff`, as 6 bytes; usage error otherwise. */
export function parseMac(text: string): Buffer {
  const hex = /^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$/i.test(text) ? text.replace(/[:-]/g, '') : ''
  if (hex.length !== 12) throw new LabhostError('usage', `${JSON.stringify(text)} is not a MAC address`, 'give MACs as aa:bb:cc:dd:ee:ff')
  const mac = Buffer.from(hex, 'hex')
  if (mac[0]! & 1)
    throw new LabhostError(
      'usage',
      `${text} is a multicast address, no network card's`,
      "give the MAC of the PC's network card (labhost install reports list them)",
    )
  return mac
}

export const formatMac = (mac: Buffer): string => [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':')

export function magicPacket(mac: Buffer): Buffer {
  return Buffer.concat([Buffer.alloc(6, 0xff), ...Array.from({ length: 16 }, () => mac)])
}

export interface WakeTarget {
  mac: string
  /** Where it came from: the command line, or a report file. */
  from: string
}

/**
 * The MACs in the install reports under `dir` (*.json, as `labhost install` writes them: machine.nics
 * with a `mac` each). A report without any is named in the error: a PC that cannot be woken should
 * not go unnoticed. Refusal reports (`result: refused`: a PC the stick did not image) are no lab
 * hosts and are passed over.
 */
export function targetsFromReports(dir: string): WakeTarget[] {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
    throw new LabhostError('notFound', `--reports ${dir} is not a directory`, 'give the reports/ directory of an installer stick (or a copy of several)')
  const out: WakeTarget[] = []
  const without: string[] = []
  for (const name of fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.json') && !n.startsWith('unfinished'))
    .sort()) {
    const file = path.join(dir, name)
    let report: unknown
    try {
      report = JSON.parse(fs.readFileSync(file, 'utf8'))
    } catch {
      without.push(name)
      continue
    }
    if ((report as { result?: unknown })?.result === 'refused') continue
    const nics = (report as { machine?: { nics?: unknown } })?.machine?.nics
    const macs = Array.isArray(nics) ? nics.map((n) => (n as { mac?: unknown })?.mac).filter((m): m is string => typeof m === 'string') : []
    if (!macs.length) without.push(name)
    for (const mac of macs) out.push({ mac: formatMac(parseMac(mac)), from: file })
  }
  if (without.length) {
    throw new LabhostError(
      'notFound',
      `${without.length} report(s) in ${dir} name no network card: ${without.slice(0, 3).join(', ')}${without.length > 3 ? ', …' : ''}`,
      "reports from before labhost recorded MACs: give those PCs' MACs on the command line; nothing was sent",
    )
  }
  if (!out.length) throw new LabhostError('notFound', `no install reports in ${dir}`, 'give the reports/ directory of an installer stick; nothing was sent')
  return [...new Map(out.map((t) => [t.mac, t])).values()]
}

export interface WakeOptions {
  /** Destination address: 255.255.255.255 (this network) by default, or a subnet's broadcast address. */
  address: string
  port: number
  /** Packets per MAC (UDP may lose one). */
  repeat: number
}

export const DEFAULT_WAKE: WakeOptions = { address: '255.255.255.255', port: 9, repeat: 3 }

export async function sendWake(targets: WakeTarget[], o: WakeOptions = DEFAULT_WAKE): Promise<{ sent: number }> {
  const socket = dgram.createSocket('udp4')
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, () => resolve())
    })
    socket.setBroadcast(true)
    let sent = 0
    for (let r = 0; r < o.repeat; r++) {
      for (const t of targets) {
        await new Promise<void>((resolve, reject) => socket.send(magicPacket(parseMac(t.mac)), o.port, o.address, (e) => (e ? reject(e) : resolve())))
        sent++
      }
    }
    return { sent }
  } catch (e) {
    if (e instanceof LabhostError) throw e
    throw new LabhostError(
      'io',
      `sending Wake-on-LAN packets to ${o.address}:${o.port} failed: ${(e as Error).message}`,
      'check the address (a broadcast address of a network this machine is on)',
      {},
      { cause: e },
    )
  } finally {
    socket.close()
  }
}

// A lab network on this machine for fleet tests and benchmarks: network namespaces joined by veth
// pairs to a bridge in a namespace of its own, with addresses of one private /24 that exists only
// inside them. Nothing is routed out; a multicast route lets aria2c's Local Peer Discovery work.
// close() kills whatever still runs in the namespaces and deletes them.
import fs from 'node:fs'
import { execa, type ResultPromise } from 'execa'
import { run } from '../lib/exec.ts'

export interface LabMember {
  /** The namespace's name. */
  ns: string
  ip: string
  /** Its interface inside the namespace. */
  dev: string
}

export interface Lab {
  /** Member 0 is the server; 1..n the hosts. */
  members: LabMember[]
  /** Bytes a member sent on its interface (all protocols). */
  txBytes(m: LabMember): Promise<number>
  /** Run a command inside a member's namespace. */
  spawn(m: LabMember, cmd: string, args: string[], opts?: { env?: Record<string, string> }): ResultPromise
  /** Take a member's link down or up (a host losing its network). */
  link(m: LabMember, up: boolean): Promise<void>
  /** The namespace of the lab's switch (its bridge br0). */
  switchNs: string
  /** A tap device plugged into the switch, for a VM's NIC (QEMU run in switchNs opens it). */
  addTap(name: string): Promise<void>
  close(): Promise<void>
}

export interface LabOptions {
  /** The first three octets of the lab's /24. */
  subnet?: string
  /**
   * Every switch port's speed, both ways (tc tbf on the member's interface and on its port), as
   * in a real lab; 0: as fast as this machine copies packets.
   */
  portMbit?: number
  /** Member 0's (the server's) port speed instead of `portMbit`: a server on a faster port than the hosts. */
  serverPortMbit?: number
}

// the bucket holds 100 ms of the port's speed, between 16 and 256 KB: at a few Mbit/s a larger one
// would let whole seconds of a download through at full speed
const tbf = (mbit: number) => [
  'root',
  'tbf',
  'rate',
  `${Math.round(mbit * 1000)}kbit`,
  'burst',
  `${Math.min(256, Math.max(16, Math.round((mbit * 1e6) / 8 / 10 / 1024)))}kb`,
  'latency',
  '50ms',
]

/**
 * The TCP congestion control the lab's members use: cubic, the default of Debian's kernel that a
 * lab's server and PCs run, rather than whatever this machine defaults to (BBR on some cloud
 * kernels: at the slowed ports of the network-bound bench the server then sent 1.85 delta packs
 * to 32 hosts against 1.45, the difference mostly segments sent again); null where this kernel
 * has no cubic (the machine's default then). Set per route: a namespace may default only to the
 * algorithms the machine allows unprivileged.
 */
const LAB_TCP = fs.readFileSync('/proc/sys/net/ipv4/tcp_available_congestion_control', 'utf8').split(/\s+/).includes('cubic') ? 'cubic' : null
const congctl = LAB_TCP ? ['congctl', LAB_TCP] : []

/** The network `ip`/`prefixLength` is in (IPv4), as `a.b.c.d/n`. */
function networkOf(ip: string, prefixLength: number): string {
  const n = ip.split('.').reduce((a, o) => a * 256 + Number(o), 0)
  const net = prefixLength === 0 ? 0 : n - (n % 2 ** (32 - prefixLength))
  return `${[24, 16, 8, 0].map((s) => Math.floor(net / 2 ** s) % 256).join('.')}/${prefixLength}`
}

/** A member's namespace, its veth to the switch namespace `sw` (port `port` on br0), its address and routes. */
async function plug(sw: string, m: LabMember, port: string, prefixLength: number, portMbit?: number, gateway?: string): Promise<void> {
  await run('ip', ['netns', 'add', m.ns])
  await run('ip', ['link', 'add', m.dev, 'netns', m.ns, 'type', 'veth', 'peer', 'name', port, 'netns', sw])
  await run('ip', ['-n', sw, 'link', 'set', port, 'master', 'br0'])
  await run('ip', ['-n', sw, 'link', 'set', port, 'up'])
  await run('ip', ['-n', m.ns, 'addr', 'add', `${m.ip}/${prefixLength}`, 'dev', m.dev])
  await run('ip', ['-n', m.ns, 'link', 'set', m.dev, 'up'])
  await run('ip', ['-n', m.ns, 'link', 'set', 'lo', 'up'])
  if (LAB_TCP)
    await run('ip', ['-n', m.ns, 'route', 'replace', networkOf(m.ip, prefixLength), 'dev', m.dev, 'proto', 'kernel', 'scope', 'link', 'src', m.ip, ...congctl])
  // multicast (Local Peer Discovery) stays on the member's own segment: nothing here routes it
  await run('ip', ['-n', m.ns, 'route', 'add', '224.0.0.0/4', 'dev', m.dev])
  if (gateway) await run('ip', ['-n', m.ns, 'route', 'add', 'default', 'via', gateway, ...congctl])
  if (portMbit) {
    await run('ip', ['netns', 'exec', m.ns, 'tc', 'qdisc', 'add', 'dev', m.dev, ...tbf(portMbit)])
    await run('ip', ['netns', 'exec', sw, 'tc', 'qdisc', 'add', 'dev', port, ...tbf(portMbit)])
  }
}

/** SIGKILL to the processes in namespace `ns` (those named `comm` only, when given; the namespaces share one PID space, so pkill would reach the whole machine). */
export async function killIn(ns: string, comm?: string): Promise<void> {
  const pids = await execa('ip', ['netns', 'pids', ns], { reject: false })
  for (const pid of String(pids.stdout ?? '')
    .split('\n')
    .filter(Boolean)) {
    try {
      if (comm === undefined || fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === comm) process.kill(Number(pid), 'SIGKILL')
    } catch {
      /* gone */
    }
  }
}

async function killAndDelete(namespaces: string[]): Promise<void> {
  for (const ns of namespaces) {
    await killIn(ns)
    await execa('ip', ['netns', 'del', ns], { reject: false })
  }
}

const memberOps = (members: LabMember[]) => ({
  async txBytes(m: LabMember) {
    return Number((await run('ip', ['netns', 'exec', m.ns, 'cat', `/sys/class/net/${m.dev}/statistics/tx_bytes`])).stdout.trim())
  },
  spawn(m: LabMember, cmd: string, args: string[], opts: { env?: Record<string, string> } = {}) {
    return execa('ip', ['netns', 'exec', m.ns, cmd, ...args], { reject: false, env: opts.env, all: true })
  },
  async link(m: LabMember, up: boolean) {
    await run('ip', ['-n', m.ns, 'link', 'set', m.dev, up ? 'up' : 'down'])
    if (up) await execa('ip', ['-n', m.ns, 'route', 'replace', '224.0.0.0/4', 'dev', m.dev], { reject: false })
  },
  members,
})

/** `prefix` (a few letters) names the namespaces. */
export async function createLab(prefix: string, hosts: number, o: LabOptions = {}): Promise<Lab> {
  const subnet = o.subnet ?? '10.77.0'
  const sw = `${prefix}-sw`
  const members: LabMember[] = Array.from({ length: hosts + 1 }, (_, i) => ({ ns: `${prefix}-${i}`, ip: `${subnet}.${i + 1}`, dev: 'eth0' }))
  const namespaces = [sw, ...members.map((m) => m.ns)]
  const close = () => killAndDelete(namespaces)
  // leftovers of a run that was killed
  await close()
  try {
    await run('ip', ['netns', 'add', sw])
    await run('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge'])
    await run('ip', ['-n', sw, 'link', 'set', 'br0', 'up'])
    for (const [i, m] of members.entries()) await plug(sw, m, `p${i}`, 24, i === 0 ? (o.serverPortMbit ?? o.portMbit) : o.portMbit)
  } catch (e) {
    await close()
    throw e
  }
  const addTap = async (name: string) => {
    await run('ip', ['-n', sw, 'tuntap', 'add', 'dev', name, 'mode', 'tap'])
    await run('ip', ['-n', sw, 'link', 'set', name, 'master', 'br0'])
    await run('ip', ['-n', sw, 'link', 'set', name, 'up'])
  }
  return { ...memberOps(members), switchNs: sw, addTap, close }
}

export interface Building {
  name: string
  /** The building's hosts (the server, if it stands here, first). */
  members: LabMember[]
}

export interface Campus extends Omit<Lab, 'members' | 'switchNs' | 'addTap'> {
  buildings: Building[]
  /** Bytes that went into each building over the link between them (in `buildings` order). */
  linkBytesIn(): Promise<number[]>
}

export interface CampusOptions {
  /** Members per building. */
  perBuilding: number[]
  /** The link between the two buildings, both ways (tc tbf on each end). */
  linkMbit: number
  /** Each switch port inside a building. */
  portMbit: number
  /** The second octet of the campus's 10.X.0.0/16; building k is 10.X.(k+1).0/24. */
  octet?: number
}

/**
 * Two buildings, each a /24 on a switch namespace of its own that routes (its br0 is the
 * building's gateway, .254), joined by one link — a veth pair limited to `linkMbit`. Multicast is
 * not routed, so Local Peer Discovery stays inside a building, as in a routed campus.
 */
export async function createCampus(prefix: string, o: CampusOptions): Promise<Campus> {
  if (o.perBuilding.length !== 2) throw new Error('createCampus: two buildings')
  const x = o.octet ?? 78
  const names = ['a', 'b']
  const buildings: Building[] = o.perBuilding.map((n, k) => ({
    name: names[k]!,
    members: Array.from({ length: n }, (_, i) => ({ ns: `${prefix}-${names[k]}${i}`, ip: `10.${x}.${k + 1}.${i + 1}`, dev: 'eth0' })),
  }))
  const switches = names.map((n) => `${prefix}-sw${n}`)
  const all = buildings.flatMap((b) => b.members)
  const close = () => killAndDelete([...switches, ...all.map((m) => m.ns)])
  await close()
  try {
    for (const [k, sw] of switches.entries()) {
      await run('ip', ['netns', 'add', sw])
      await run('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge'])
      await run('ip', ['-n', sw, 'addr', 'add', `10.${x}.${k + 1}.254/24`, 'dev', 'br0'])
      await run('ip', ['-n', sw, 'link', 'set', 'br0', 'up'])
      await run('ip', ['netns', 'exec', sw, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'])
    }
    // the link: up0 in each switch namespace, 10.X.0.1 and .2
    await run('ip', ['link', 'add', 'up0', 'netns', switches[0]!, 'type', 'veth', 'peer', 'name', 'up0', 'netns', switches[1]!])
    for (const [k, sw] of switches.entries()) {
      await run('ip', ['-n', sw, 'addr', 'add', `10.${x}.0.${k + 1}/30`, 'dev', 'up0'])
      await run('ip', ['-n', sw, 'link', 'set', 'up0', 'up'])
      await run('ip', ['-n', sw, 'route', 'add', `10.${x}.${2 - k}.0/24`, 'via', `10.${x}.0.${2 - k}`])
      await run('ip', ['netns', 'exec', sw, 'tc', 'qdisc', 'add', 'dev', 'up0', ...tbf(o.linkMbit)])
    }
    for (const [k, b] of buildings.entries())
      for (const [i, m] of b.members.entries()) await plug(switches[k]!, m, `p${i}`, 24, o.portMbit, `10.${x}.${k + 1}.254`)
  } catch (e) {
    await close()
    throw e
  }
  const sent = async (sw: string) => Number((await run('ip', ['netns', 'exec', sw, 'cat', '/sys/class/net/up0/statistics/tx_bytes'])).stdout.trim())
  return {
    ...memberOps(all),
    buildings,
    // what building a's switch sent over the link went into building b, and the reverse
    linkBytesIn: async () => [await sent(switches[1]!), await sent(switches[0]!)],
    close,
  }
}

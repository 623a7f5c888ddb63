// A lab network on this machine for fleet tests and benchmarks: network namespaces joined by veth
// pairs to a bridge in a namespace of its own, with addresses of one private /24 that exists only
// inside them. Nothing is routed out; a multicast route lets aria2c's Local Peer Discovery work.
// close() kills whatever still runs in the namespaces and deletes them.
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
}

/** `prefix` (a few letters) names the namespaces. */
export async function createLab(prefix: string, hosts: number, o: LabOptions = {}): Promise<Lab> {
  const subnet = o.subnet ?? '10.77.0'
  const sw = `${prefix}-sw`
  const members: LabMember[] = Array.from({ length: hosts + 1 }, (_, i) => ({ ns: `${prefix}-${i}`, ip: `${subnet}.${i + 1}`, dev: 'eth0' }))
  const namespaces = [sw, ...members.map((m) => m.ns)]
  const close = async () => {
    for (const ns of namespaces) {
      const pids = await execa('ip', ['netns', 'pids', ns], { reject: false })
      for (const pid of String(pids.stdout ?? '')
        .split('\n')
        .filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL')
        } catch {
          /* gone */
        }
      }
      await execa('ip', ['netns', 'del', ns], { reject: false })
    }
  }
  // leftovers of a run that was killed
  await close()
  try {
    await run('ip', ['netns', 'add', sw])
    await run('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge'])
    await run('ip', ['-n', sw, 'link', 'set', 'br0', 'up'])
    for (const [i, m] of members.entries()) {
      await run('ip', ['netns', 'add', m.ns])
      await run('ip', ['link', 'add', m.dev, 'netns', m.ns, 'type', 'veth', 'peer', 'name', `p${i}`, 'netns', sw])
      await run('ip', ['-n', sw, 'link', 'set', `p${i}`, 'master', 'br0'])
      await run('ip', ['-n', sw, 'link', 'set', `p${i}`, 'up'])
      await run('ip', ['-n', m.ns, 'addr', 'add', `${m.ip}/24`, 'dev', m.dev])
      await run('ip', ['-n', m.ns, 'link', 'set', m.dev, 'up'])
      await run('ip', ['-n', m.ns, 'link', 'set', 'lo', 'up'])
      await run('ip', ['-n', m.ns, 'route', 'add', '224.0.0.0/4', 'dev', m.dev])
      if (o.portMbit) {
        const tbf = ['root', 'tbf', 'rate', `${o.portMbit}mbit`, 'burst', '256kb', 'latency', '50ms']
        await run('ip', ['netns', 'exec', m.ns, 'tc', 'qdisc', 'add', 'dev', m.dev, ...tbf])
        await run('ip', ['netns', 'exec', sw, 'tc', 'qdisc', 'add', 'dev', `p${i}`, ...tbf])
      }
    }
  } catch (e) {
    await close()
    throw e
  }
  return {
    members,
    async txBytes(m) {
      return Number((await run('ip', ['netns', 'exec', m.ns, 'cat', `/sys/class/net/${m.dev}/statistics/tx_bytes`])).stdout.trim())
    },
    spawn(m, cmd, args, opts = {}) {
      return execa('ip', ['netns', 'exec', m.ns, cmd, ...args], { reject: false, env: opts.env, all: true })
    },
    async link(m, up) {
      await run('ip', ['-n', m.ns, 'link', 'set', m.dev, up ? 'up' : 'down'])
      if (up) await execa('ip', ['-n', m.ns, 'route', 'replace', '224.0.0.0/4', 'dev', m.dev], { reject: false })
    },
    close,
  }
}

// `labhost image serve SERVED` and `labhost update http://127.0.0.1:PORT/ ARGS` in a network
// namespace of their own (its only interface the loopback) and a PID namespace of their own: when
// the update is over, every process started there (aria2c seeding on) ends with it, and nothing
// (aria2c's multicast peer discovery included) reaches any network. For the BitTorrent tests.
import path from 'node:path'
import { execa } from 'execa'
import { labhostCommand } from './test-helpers.ts'

export const ISOLATED_PORT = 8080

export async function updateIsolated(served: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string; seconds: number }> {
  const log = path.join(path.dirname(path.resolve(served)), 'serve.log')
  const script = [
    'ip link set lo up || exit 90',
    `$LABHOST image serve "$SERVED" --port ${ISOLATED_PORT} 2>"$SERVELOG" &`,
    'for i in $(seq 300); do grep -q serving "$SERVELOG" && break; sleep 0.1; done',
    `$LABHOST update http://127.0.0.1:${ISOLATED_PORT}/ "$@"`,
  ].join('\n')
  const started = Date.now()
  const r = await execa('unshare', ['--net', '--pid', '--kill-child', '--', 'sh', '-c', script, 'sh', ...args], {
    reject: false,
    timeout: 120_000,
    env: { LABHOST: labhostCommand().join(' '), SERVED: served, SERVELOG: log },
  })
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr), seconds: (Date.now() - started) / 1000 }
}

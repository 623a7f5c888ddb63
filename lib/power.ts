// Reboot or power off at the end of an install or update: through systemd when it runs the
// host, else the immediate form (busybox userspace, the installer stick), after a sync.
import fs from 'node:fs'
import { run } from './exec.ts'

export type PowerAction = 'reboot' | 'poweroff'

export async function powerAction(action: PowerAction, log: (line: string) => void = () => {}): Promise<void> {
  await run('sync', [])
  if (fs.existsSync('/run/systemd/system')) {
    log(`${action} via systemd`)
    await run('systemctl', [action])
  } else {
    log(`${action} now`)
    await run(action, ['-f'])
  }
}

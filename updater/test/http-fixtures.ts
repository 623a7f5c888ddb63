// Shared by the updater's http tests: an image directory served on the loopback for one test
// (with an optional fault per request), the requests for the transport file, the flagged slot.
import type { Test } from 'tap'
import { serveDirectory, type Fault, type Server } from '../../lib/http-serve.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'

export async function serve(t: Test, root: string, fault?: (path: string, index: number) => Fault | undefined): Promise<Server> {
  const server = await serveDirectory(root, { fault: fault ? (r) => fault(r.path, r.index) : undefined })
  t.teardown(() => server.close())
  return server
}

export const transportRequests = (s: Server) => s.requests.filter((r) => r.path.endsWith('.zst'))

export const activeSlot = (disk: string) => {
  const d = openGptDisk(disk)
  try {
    return slotStatus(readGpt(d)).active
  } finally {
    d.close()
  }
}

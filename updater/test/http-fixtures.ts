// Shared by the updater's http tests: an image directory served on the loopback for one test
// (with an optional fault per request), the requests for the transport file, the flagged slot.
import fs from 'node:fs'
import type { Test } from 'tap'
import { run } from '../../lib/exec.ts'
import { serveDirectory, type Fault, type Server } from '../../lib/http-serve.ts'
import { openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { slotStatus } from '../../bootloader/slots.ts'

export async function serve(
  t: Test,
  root: string,
  fault?: (path: string, index: number) => Fault | undefined,
  tls?: { cert: string; key: string },
): Promise<Server> {
  const server = await serveDirectory(root, {
    fault: fault ? (r) => fault(r.path, r.index) : undefined,
    tls: tls && { cert: fs.readFileSync(tls.cert), key: fs.readFileSync(tls.key) },
  })
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

/**
 * A lab CA made with openssl for one test file, and server certificates it signed: one for the
 * loopback address the tests serve on, one for a host name the tests never use.
 */
export async function makeLabCa(dir: string): Promise<{ ca: string; server: { cert: string; key: string }; otherName: { cert: string; key: string } }> {
  fs.mkdirSync(dir, { recursive: true })
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  await run('openssl', ['req', '-x509', ...ec, '-keyout', `${dir}/ca.key`, '-out', `${dir}/ca.pem`, '-days', '7', '-subj', '/CN=labhost test lab CA'])
  const issue = async (name: string, altName: string) => {
    await run('openssl', ['req', ...ec, '-keyout', `${dir}/${name}.key`, '-out', `${dir}/${name}.csr`, '-subj', `/CN=${name}`])
    fs.writeFileSync(`${dir}/${name}.ext`, `subjectAltName=${altName}\n`)
    await run('openssl', [
      'x509',
      '-req',
      '-in',
      `${dir}/${name}.csr`,
      '-CA',
      `${dir}/ca.pem`,
      '-CAkey',
      `${dir}/ca.key`,
      '-CAcreateserial',
      '-days',
      '7',
      '-extfile',
      `${dir}/${name}.ext`,
      '-out',
      `${dir}/${name}.pem`,
    ])
    return { cert: `${dir}/${name}.pem`, key: `${dir}/${name}.key` }
  }
  return { ca: `${dir}/ca.pem`, server: await issue('server', 'IP:127.0.0.1'), otherName: await issue('other', 'DNS:image-server.lab.invalid') }
}

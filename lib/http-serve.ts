// A small static HTTP(S) server for image directories: GET and HEAD with single Range requests, so
// `labhost update URL` can resume. Tests and the demo serve images with it on the loopback; a
// fault hook lets tests answer with errors or cut a response short, as real networks do.
import fs from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import path from 'node:path'

export interface ServedRequest {
  path: string
  range: string | null
  status: number
  bytes: number
}

/** What to do with one request, decided before it is answered. */
export interface Fault {
  status?: number
  /** Send only this many body bytes, then drop the connection. */
  dropAfter?: number
  /** Answer 200 with the whole file even when a Range was asked for. */
  ignoreRange?: boolean
}

export interface ServeOptions {
  host?: string
  port?: number
  fault?: (req: { path: string; range: string | null; index: number }) => Fault | undefined
  /** Called when a response is over (sent, or its connection closed). */
  onRequest?: (req: ServedRequest) => void
  /** Serve https with this certificate (chain) and key, PEM. */
  tls?: { cert: string | Buffer; key: string | Buffer }
}

export interface Server {
  url: string
  port: number
  requests: ServedRequest[]
  close(): Promise<void>
}

export async function serveDirectory(root: string, o: ServeOptions = {}): Promise<Server> {
  const requests: ServedRequest[] = []
  const handler: http.RequestListener = (req, res) => {
    const urlPath = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)
    const range = typeof req.headers.range === 'string' ? req.headers.range : null
    const record: ServedRequest = { path: urlPath, range, status: 0, bytes: 0 }
    requests.push(record)
    res.once('close', () => o.onRequest?.(record))
    const fault = o.fault?.({ path: urlPath, range, index: requests.length - 1 }) ?? {}
    const answer = (status: number, headers: http.OutgoingHttpHeaders = {}, body = '') => {
      record.status = status
      res.writeHead(status, { 'content-length': Buffer.byteLength(body), ...headers }).end(req.method === 'HEAD' ? undefined : body)
    }
    if (fault.status) return answer(fault.status, {}, `fault injected: ${fault.status}\n`)
    const file = path.resolve(root, '.' + path.posix.normalize(urlPath))
    if (req.method !== 'GET' && req.method !== 'HEAD') return answer(405, { allow: 'GET, HEAD' })
    if (!file.startsWith(path.resolve(root)) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return answer(404, {}, 'not found\n')
    const size = fs.statSync(file).size
    let start = 0
    let end = size - 1
    let status = 200
    const m = range && !fault.ignoreRange ? /^bytes=(\d*)-(\d*)$/.exec(range) : null
    if (range && !fault.ignoreRange && !m) return answer(416, { 'content-range': `bytes */${size}` })
    if (m) {
      start = m[1] ? Number(m[1]) : Math.max(0, size - Number(m[2]))
      end = m[1] && m[2] ? Math.min(Number(m[2]), size - 1) : size - 1
      if (start >= size || start > end) return answer(416, { 'content-range': `bytes */${size}` })
      status = 206
    }
    record.status = status
    res.writeHead(status, {
      'content-length': end - start + 1,
      'accept-ranges': 'bytes',
      ...(status === 206 ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
    })
    if (req.method === 'HEAD') return res.end()
    const stream = fs.createReadStream(file, { start, end })
    stream.on('data', (chunk) => {
      const buf = chunk as Buffer
      if (fault.dropAfter !== undefined && record.bytes + buf.length >= fault.dropAfter) {
        const part = buf.subarray(0, fault.dropAfter - record.bytes)
        record.bytes += part.length
        stream.destroy()
        // end, not destroy: the bytes written reach the client, then the connection closes early
        res.write(part, () => res.socket?.end())
        return
      }
      record.bytes += buf.length
      if (!res.write(buf)) {
        stream.pause()
        res.once('drain', () => stream.resume())
      }
    })
    stream.on('end', () => res.end())
  }
  const server = o.tls ? https.createServer({ cert: o.tls.cert, key: o.tls.key }, handler) : http.createServer(handler)
  await new Promise<void>((resolve) => server.listen(o.port ?? 0, o.host ?? '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    url: `${o.tls ? 'https' : 'http'}://${o.host ?? '127.0.0.1'}:${port}`,
    port,
    requests,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    }),
  }
}

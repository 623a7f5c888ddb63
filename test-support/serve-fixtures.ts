// Shared by the image server's tests and `npm run bench`: `labhost image serve` started as its own
// process on the loopback (so a crash is seen as a crash, and its file handles and memory are its
// own), raw HTTP requests for what a well-behaved client would never send, and whole downloads.
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { execa, type ResultPromise } from 'execa'
import { labhostCommand } from './test-helpers.ts'

export interface ServerProcess {
  url: string
  port: number
  pid: number
  /** Every line the server logged so far (stderr). */
  lines(): string[]
  alive(): boolean
  /** Open file descriptors of the server process. */
  fds(): number
  /** Resident memory of the server process, bytes. */
  rss(): number
  stop(): Promise<void>
}

interface Teardown {
  teardown(fn: () => unknown): void
}

/**
 * `labhost image serve DIR --port 0` (labhostCommand(), or the executable `exe`), once it says
 * where it serves.
 */
export async function startServer(t: Teardown | null, dir: string, extra: string[] = [], exe?: string): Promise<ServerProcess> {
  const [cmd, ...pre] = exe ? [exe] : labhostCommand()
  const child: ResultPromise = execa(cmd!, [...pre, 'image', 'serve', dir, '--port', '0', ...extra], { reject: false, buffer: false })
  let stderr = ''
  let ended = false
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString()
  })
  child.stdout?.resume()
  void child.then(() => {
    ended = true
  })
  const stop = async () => {
    if (ended) return
    child.kill('SIGTERM')
    await Promise.race([child, sleep(3000)])
    if (!ended) child.kill('SIGKILL')
    await child
  }
  t?.teardown(stop)
  let url: string | undefined
  for (const until = Date.now() + 30_000; !url; await sleep(20)) {
    url = /serving .* at (https?:\/\/[^/\s]+)\//.exec(stderr)?.[1]
    if (!url && (ended || Date.now() > until)) {
      await stop()
      throw new Error(`labhost image serve did not start: ${stderr.trim().slice(-500)}`)
    }
  }
  const pid = child.pid!
  return {
    url,
    pid,
    port: Number(new URL(url).port),
    lines: () => stderr.split('\n'),
    alive: () => !ended,
    fds: () => fs.readdirSync(`/proc/${pid}/fd`).length,
    rss: () => Number(/VmRSS:\s*(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) * 1024,
    stop,
  }
}

export interface RawResponse {
  /** The status of the first response line, 0 when none came. */
  status: number
  text: string
  /** The server closed the connection (rather than the timeout ending the wait). */
  closedByServer: boolean
}

/** Send `request` as it is over a fresh connection and read until the server closes it (or `ms`). */
export function rawRequest(port: number, request: string | Buffer, ms = 5000): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request))
    const done = (closedByServer: boolean) => {
      clearTimeout(timer)
      socket.destroy()
      const text = Buffer.concat(chunks).toString('latin1')
      resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0), text, closedByServer })
    }
    const timer = setTimeout(() => done(false), ms)
    socket.on('data', (d) => chunks.push(d))
    socket.on('end', () => done(true))
    socket.on('error', () => done(true))
  })
}

/** GET with Connection: close, raw. */
export const rawGet = (port: number, target: string, headers = '') =>
  rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers}Connection: close\r\n\r\n`)

/** A whole download: status, bytes, SHA-256 and seconds. */
export function download(url: string): Promise<{ status: number; bytes: number; sha256: string; seconds: number }> {
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        const h = crypto.createHash('sha256')
        let bytes = 0
        res.on('data', (d: Buffer) => {
          bytes += d.length
          h.update(d)
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, sha256: h.digest('hex'), seconds: (performance.now() - t0) / 1000 }))
        res.on('error', reject)
      })
      .on('error', reject)
  })
}

/** A download given up after the first `after` body bytes: the client resets the connection. */
export function abortedDownload(url: string, after = 64 << 10): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false }, (res) => {
      let bytes = 0
      res.on('data', (d: Buffer) => {
        bytes += d.length
        if (bytes >= after) {
          req.destroy()
          resolve(bytes)
        }
      })
      res.on('end', () => resolve(bytes))
      res.on('error', () => resolve(bytes))
    })
    req.on('error', () => resolve(0))
  })
}

/**
 * A slowloris client: a request line and one header, then nothing more. Resolves when the server
 * closed the connection, with how long that took (or `null` when `ms` passed first).
 */
export function slowClient(port: number, ms: number): { closed: Promise<number | null>; destroy(): void } {
  const socket = net.connect(port, '127.0.0.1', () => socket.write('GET /manifest.json HTTP/1.1\r\nHost: 127.0.0.1\r\n'))
  const t0 = performance.now()
  const closed = new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => resolve(null), ms)
    socket.on('close', () => {
      clearTimeout(timer)
      resolve((performance.now() - t0) / 1000)
    })
    socket.on('error', () => {})
  })
  // read (and drop) what comes: a paused socket would never see the server close it
  socket.resume()
  return { closed, destroy: () => socket.destroy() }
}

/**
 * How far the server's RSS may lie above its warmed-up baseline after a load that leaked nothing.
 * Node frees the file buffers of finished and aborted downloads at V8's next collection, which
 * external memory triggers some 64 MiB later, and keeps the heap it grew: RSS sampled at two idle
 * moments differed by up to 90 MiB here (140 to 230 MiB) without a leak. The descriptor count is
 * the exact check; this bound catches memory that grows with every request.
 */
export const RSS_BAND = 96 << 20

/** Wait until `check` holds (polling), up to `ms`; returns whether it did. */
export async function until(check: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (check()) return true
  return check()
}

/** A file of `bytes` pseudo-random bytes (a transport file is incompressible too). */
export function randomFile(file: string, bytes: number): string {
  const fd = fs.openSync(file, 'w')
  try {
    for (let done = 0; done < bytes; done += 1 << 20) fs.writeSync(fd, crypto.randomBytes(Math.min(1 << 20, bytes - done)))
  } finally {
    fs.closeSync(fd)
  }
  return file
}

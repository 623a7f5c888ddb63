// A zstd stream decompressed by the zstd program into a FIFO, which the caller reads straight into
// its own buffers. Reading a child's stdout as a Node stream allocates a buffer per pipe read (64
// KiB), and zlib's zstd one per output chunk: for a 1 GiB image that is garbage collection on the
// main thread that costs more than the decompression. Here the data goes from zstd to the kernel
// to the caller's (shared, aligned) buffer, and nothing is allocated per read. Used for transport
// files without frame sizes in their manifest (built before them); framed ones are decompressed
// frame by frame in worker threads (image-format/image-readers.ts, lib/worker-pool.ts).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { LabhostError } from './errors.ts'
import { run, start, toolError } from './exec.ts'

export interface ZstdVerdict {
  /** zstd decoded its whole input without complaint. */
  ok: boolean
  /** zstd's last line on stderr, when it failed. */
  message: string
  /** Reading the compressed input failed (a download that gave up): that is the real cause. */
  inputError?: unknown
  /** When zstd failed: its typed error (lib/exec.ts), with the stderr tail; `details.notInstalled` when it is missing. */
  error?: LabhostError
}

const ZSTD_ARGS = ['-d', '-q', '-f', '--no-sparse', '-o']

export class ZstdReader {
  private dir: string
  private fh: fs.promises.FileHandle
  private zstd: ReturnType<typeof start>
  private args: string[]
  private feed: Promise<void>
  private failure: { input?: unknown }

  private constructor(
    dir: string,
    fh: fs.promises.FileHandle,
    zstd: ReturnType<typeof start>,
    args: string[],
    feed: Promise<void>,
    failure: { input?: unknown },
  ) {
    this.dir = dir
    this.fh = fh
    this.zstd = zstd
    this.args = args
    this.feed = feed
    this.failure = failure
  }

  /**
   * Start decompressing `input` (a byte stream, or a local file zstd reads itself); resolves once
   * zstd has opened its end of the FIFO.
   */
  static async open(input: AsyncIterable<Buffer> | string): Promise<ZstdReader> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-zstd-'))
    const fifo = path.join(dir, 'out')
    try {
      await run('mkfifo', ['-m', '600', fifo])
    } catch (e) {
      fs.rmSync(dir, { recursive: true, force: true })
      throw new LabhostError(
        'io',
        `cannot make a FIFO in ${dir}: ${(e as Error).message}`,
        'labhost needs a writable temporary directory (TMPDIR) and mkfifo',
        {},
        { cause: e },
      )
    }
    // --no-sparse: zstd would seek in its output to skip zeros, which a FIFO cannot
    const file = typeof input === 'string'
    const args = [...ZSTD_ARGS, fifo, ...(file ? ['--', input] : [])]
    const zstd = start('zstd', args, { stdin: file ? 'ignore' : 'pipe', stdout: 'ignore', stderr: 'pipe' })
    const failure: { input?: unknown } = {}
    const feed = file
      ? Promise.resolve()
      : pipeline(Readable.from(input), zstd.process.stdin!).catch((e) => {
          failure.input = e
          zstd.process.kill()
        })
    // The read end opens when zstd opens the write end. Should zstd end without opening it (not
    // installed, killed, garbage input), a write end held here until the read end is open lets it
    // open on an empty FIFO. O_RDWR, because a FIFO opened so never waits and never fails for want
    // of a reader: our open runs on libuv's thread pool and may not have begun yet when zstd has
    // already ended (a busy pool), and a non-blocking write-only open would then fail (ENXIO) and
    // leave the read end waiting forever.
    const opening = fs.promises.open(fifo, 'r')
    void zstd.done.then(async () => {
      let fd: number
      try {
        fd = fs.openSync(fifo, fs.constants.O_RDWR)
      } catch {
        return // the name is gone: the read end is open already
      }
      await opening.catch(() => undefined)
      fs.closeSync(fd)
    })
    const fh = await opening
    // both ends are open: the name is no longer needed, and a labhost killed from here on
    // (SIGKILL, a power cut of the process) leaves nothing in the temporary directory
    fs.rmSync(dir, { recursive: true, force: true })
    return new ZstdReader(dir, fh, zstd, args, feed, failure)
  }

  /** Read up to `length` bytes into `buf` at `offset`; 0 at the end of the stream. */
  async read(buf: Buffer, offset: number, length: number): Promise<number> {
    return (await this.fh.read(buf, offset, length, null)).bytesRead
  }

  /** After the end (or to stop early: kill first): how zstd and the input ended. Cleans up. */
  async finish(kill = false): Promise<ZstdVerdict> {
    if (kill) this.zstd.process.kill()
    await this.fh.close()
    const [r] = await Promise.all([this.zstd.done, this.feed])
    fs.rmSync(this.dir, { recursive: true, force: true })
    const why = r.startError
      ? `zstd could not be started (${r.startError})`
      : r.exitCode !== undefined
        ? `zstd exited with ${r.exitCode}`
        : `zstd ended by ${r.signal}`
    const verdict = { ok: r.exitCode === 0, message: r.stderr.trim().split('\n').pop() || why, inputError: this.failure.input }
    return verdict.ok ? verdict : { ...verdict, error: toolError('zstd', this.args, r) }
  }
}

// Worker threads for the CPU-bound steps of writing an image, over buffers in shared memory (the
// aligned buffers of lib/direct-io.ts): SHA-256 of a chunk (the main thread keeps streaming and
// issuing I/O while the chunks it handed over are hashed on the other cores, without copying them),
// and zstd frames decompressed straight into a chunk buffer (the frames of a transport file are
// independent: image-format/zstd-frames.ts), several at once where one zstd process is one core.
import crypto from 'node:crypto'
import os from 'node:os'
import { Worker } from 'node:worker_threads'
import zlib from 'node:zlib'

// Plain CommonJS, so it runs from inside the single-file executable too.
const WORKER = `
const { parentPort } = require('node:worker_threads')
const crypto = require('node:crypto')
const zlib = require('node:zlib')
const memories = []
const hash = ({ memory, offset, length, block, keep }) => {
  const data = new Uint8Array(memories[memory], offset, length)
  const hash = crypto.createHash('sha256').update(data).digest('hex')
  let blocks
  if (block) {
    blocks = ''
    for (let at = 0; at < length; at += block) blocks += crypto.createHash('sha256').update(data.subarray(at, Math.min(length, at + block))).digest('hex').slice(0, 2 * keep)
  }
  return { hash, blocks }
}
const unzstdFrames = ${unzstdFrames.toString()}
const unzstd = ({ memory, offset, length, frames, sizes, frameSize }) => {
  unzstdFrames(zlib, frames, sizes, new Uint8Array(memories[memory], offset, length), frameSize)
  return {}
}
parentPort.on('message', (m) => {
  if (typeof m.memory !== 'number') return memories.push(m.memory)
  try {
    parentPort.postMessage({ id: m.id, ...(m.frames ? unzstd(m) : hash(m)) })
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: e.message })
  }
})
`

interface Answer {
  hash?: string
  blocks?: string
  error?: string
}

export class WorkerPool {
  private workers: Worker[] = []
  private waiting = new Map<number, { resolve: (r: Answer) => void; reject: (e: unknown) => void }>()
  private nextId = 0
  private memories: SharedArrayBuffer[] = []

  /**
   * `threads` 0 does the work on the calling thread: the default on a machine with one CPU, where
   * a worker only costs its start (a VM under emulation takes a second or more to start one).
   */
  constructor(threads = os.availableParallelism() > 1 ? Math.min(4, os.availableParallelism()) : 0) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER, { eval: true })
      w.on('message', ({ id, ...answer }: Answer & { id: number }) => {
        this.waiting.get(id)?.resolve(answer)
        this.waiting.delete(id)
      })
      // a worker that fails or exits fails what it was asked; later work runs on this thread
      const broken = (e: unknown) => {
        for (const p of this.waiting.values()) p.reject(e)
        this.waiting.clear()
        this.workers = []
      }
      w.on('error', broken)
      w.on('exit', (code) => {
        if (this.workers.length) broken(new Error(`a worker exited (${code})`))
      })
      this.workers.push(w)
    }
  }

  /** Hex SHA-256 of `data`; off the main thread when `data` lies in a SharedArrayBuffer. */
  async sha256(data: Buffer): Promise<string> {
    return (await this.hash(data)).hash!
  }

  /**
   * SHA-256 of `data`, and of each `blockSize` piece of it cut to its first `keep` bytes, in hex
   * one after the other (the block index of image-format/block-index.ts).
   */
  async sha256WithBlocks(data: Buffer, blockSize: number, keep: number): Promise<{ hash: string; blocks: string }> {
    const r = await this.hash(data, { block: blockSize, keep })
    return { hash: r.hash!, blocks: r.blocks ?? '' }
  }

  private hash(data: Buffer, blocks?: { block: number; keep: number }): Promise<Answer> {
    if (!this.workers.length || !(data.buffer instanceof SharedArrayBuffer)) {
      const hash = crypto.createHash('sha256').update(data).digest('hex')
      return Promise.resolve({ hash, blocks: blocks ? blockHashes(data, blocks.block, blocks.keep).toString('hex') : undefined })
    }
    return this.ask(data, blocks ?? {})
  }

  /**
   * Decompress the zstd frames in `frames` (their compressed sizes `sizes`, one after the other)
   * into `into`, `frameSize` bytes of it each (the last one the rest): a frame that holds more or
   * fewer bytes is an error, as is one zstd finds damaged. In a worker when `into` lies in shared
   * memory (`frames` is handed over, not copied, when it is its own memory). What the frames hold
   * is judged by the chunk hashes, as all that is written.
   */
  async zstdFrames(frames: Uint8Array, sizes: number[], into: Buffer, frameSize: number): Promise<void> {
    if (!this.workers.length || !(into.buffer instanceof SharedArrayBuffer)) return unzstdFrames(zlib, frames, sizes, into, frameSize)
    const own = frames.byteOffset === 0 && frames.byteLength === frames.buffer.byteLength && frames.buffer instanceof ArrayBuffer
    const { error } = await this.ask(into, { frames, sizes, frameSize }, own ? [frames.buffer as ArrayBuffer] : [])
    if (error !== undefined) throw new Error(error)
  }

  /** A request about `data` (in shared memory) to the next worker, `more` beside it. */
  private ask(data: Buffer, more: object, transfer: ArrayBuffer[] = []): Promise<Answer> {
    const shared = data.buffer as SharedArrayBuffer
    // each shared memory is posted to the workers once; a request names it by number
    let memory = this.memories.indexOf(shared)
    if (memory < 0) {
      memory = this.memories.push(shared) - 1
      for (const w of this.workers) w.postMessage({ memory: shared })
    }
    const id = this.nextId++
    const worker = this.workers[id % this.workers.length]!
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject })
      worker.postMessage({ id, memory, offset: data.byteOffset, length: data.length, ...more }, transfer)
    })
  }

  async close(): Promise<void> {
    const workers = this.workers
    this.workers = []
    await Promise.all(workers.map((w) => w.terminate()))
  }
}

/**
 * Frames one after the other in `frames` into `into`, `frameSize` bytes each (the last one the
 * rest), exactly. Runs in the workers too (its source is sent to them): `zlib` is passed in, and
 * nothing outside it is used. Each frame is decompressed by zstd straight into its place through
 * the handle zlib's own sync functions use (a frame's end, checksum included, is where zstd stops:
 * an exact fit is no output room left and no input either); where that handle is not there (a
 * Node whose zlib is built otherwise) or not `inPlace`, each frame into a buffer of its own, copied.
 */
export function unzstdFrames(zlib: typeof import('node:zlib'), frames: Uint8Array, sizes: number[], into: Uint8Array, frameSize: number, inPlace = true): void {
  const stream = zlib.createZstdDecompress() as unknown as {
    _handle?: { writeSync?: (...a: unknown[]) => void; reset(): void; onerror?: (message: string) => void }
    _writeState?: Uint32Array
    close(): void
  }
  const handle = stream._handle
  const state = stream._writeState
  const direct = typeof handle?.writeSync === 'function' && state instanceof Uint32Array && state.length === 2 && inPlace
  let failed = ''
  const spare = new Uint8Array(1)
  if (direct) handle.onerror = (message) => (failed ||= message)
  try {
    let from = 0
    let at = 0
    for (let k = 0; k < sizes.length; k++) {
      const want = Math.min(frameSize, into.length - at)
      const frame = frames.subarray(from, from + sizes[k]!)
      if (direct) {
        handle.writeSync!(zlib.constants.ZSTD_e_end, frame, 0, frame.length, into, at, want)
        if (failed) throw new Error(`frame ${k}: ${failed}`)
        const outLeft = state[0]!
        let inLeft = state[1]!
        // Its share filled, zstd stops: what is left of the input must hold nothing more. Node's
        // compressor sometimes ends a frame's bytes with an empty frame (13 bytes), which zstd
        // reads on a call of its own: once more, with one spare byte of room that must stay unused.
        if (!outLeft && inLeft) {
          handle.writeSync!(zlib.constants.ZSTD_e_end, frame, frame.length - inLeft, inLeft, spare, 0, 1)
          if (failed) throw new Error(`frame ${k}: ${failed}`)
          inLeft = state[0] ? state[1]! : 1
        }
        if (outLeft || inLeft) throw new Error(`frame ${k} does not hold ${want} bytes (${outLeft ? 'fewer' : 'more'})`)
        handle.reset()
      } else {
        let out: Buffer
        try {
          out = zlib.zstdDecompressSync(frame, { maxOutputLength: Math.max(1, want), chunkSize: Math.max(64, want) })
        } catch (e) {
          if ((e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw new Error(`frame ${k} does not hold ${want} bytes (more)`)
          throw new Error(`frame ${k}: ${(e as Error).message}`)
        }
        if (out.length !== want) throw new Error(`frame ${k} holds ${out.length} bytes, not ${want}`)
        into.set(out, at)
      }
      from += sizes[k]!
      at += want
    }
    if (at !== into.length) throw new Error(`${sizes.length} frames hold ${at} bytes, not ${into.length}`)
  } finally {
    stream.close()
  }
}

/** Whether this Node's zlib lets zstd decompress straight into a buffer (else unzstdFrames copies). */
export function zstdDecompressesInPlace(): boolean {
  const stream = zlib.createZstdDecompress() as unknown as { _handle?: { writeSync?: unknown }; _writeState?: unknown }
  const direct = typeof stream._handle?.writeSync === 'function' && stream._writeState instanceof Uint32Array
  ;(stream as unknown as { close(): void }).close()
  return direct
}

/** The first `keep` bytes of the SHA-256 of each `blockSize` piece of `data`, concatenated. */
export function blockHashes(data: Uint8Array, blockSize: number, keep: number): Buffer {
  const out = Buffer.alloc(Math.ceil(data.length / blockSize) * keep)
  for (let at = 0, k = 0; at < data.length; at += blockSize, k += keep) {
    crypto
      .createHash('sha256')
      .update(data.subarray(at, Math.min(data.length, at + blockSize)))
      .digest()
      .copy(out, k, 0, keep)
  }
  return out
}

// SHA-256 of buffers in shared memory, computed by worker threads: the main thread keeps
// streaming and issuing I/O while the chunks it handed over are hashed on the other cores,
// without copying them (the buffers live in a SharedArrayBuffer, see lib/direct-io.ts).
import crypto from 'node:crypto'
import os from 'node:os'
import { Worker } from 'node:worker_threads'

// Plain CommonJS, so it runs from inside the single-file executable too.
const WORKER = `
const { parentPort } = require('node:worker_threads')
const crypto = require('node:crypto')
const memories = []
parentPort.on('message', ({ id, memory, offset, length, block, keep }) => {
  if (typeof memory !== 'number') return memories.push(memory)
  const data = new Uint8Array(memories[memory], offset, length)
  const hash = crypto.createHash('sha256').update(data).digest('hex')
  let blocks
  if (block) {
    blocks = ''
    for (let at = 0; at < length; at += block) blocks += crypto.createHash('sha256').update(data.subarray(at, Math.min(length, at + block))).digest('hex').slice(0, 2 * keep)
  }
  parentPort.postMessage({ id, hash, blocks })
})
`

export class HashPool {
  private workers: Worker[] = []
  private waiting = new Map<number, { resolve: (r: { hash: string; blocks?: string }) => void; reject: (e: unknown) => void }>()
  private nextId = 0
  private memories: SharedArrayBuffer[] = []

  /** `threads` 0 hashes on the calling thread. */
  constructor(threads = Math.min(4, os.availableParallelism())) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER, { eval: true })
      w.on('message', ({ id, hash, blocks }: { id: number; hash: string; blocks?: string }) => {
        this.waiting.get(id)?.resolve({ hash, blocks })
        this.waiting.delete(id)
      })
      // a worker that fails or exits fails what it was asked; later hashes run on this thread
      const broken = (e: unknown) => {
        for (const p of this.waiting.values()) p.reject(e)
        this.waiting.clear()
        this.workers = []
      }
      w.on('error', broken)
      w.on('exit', (code) => {
        if (this.workers.length) broken(new Error(`a hashing worker exited (${code})`))
      })
      this.workers.push(w)
    }
  }

  /** Hex SHA-256 of `data`; off the main thread when `data` lies in a SharedArrayBuffer. */
  async sha256(data: Buffer): Promise<string> {
    return (await this.hash(data)).hash
  }

  /**
   * SHA-256 of `data`, and of each `blockSize` piece of it cut to its first `keep` bytes, in hex
   * one after the other (the block index of image-format/block-index.ts).
   */
  async sha256WithBlocks(data: Buffer, blockSize: number, keep: number): Promise<{ hash: string; blocks: string }> {
    const r = await this.hash(data, { block: blockSize, keep })
    return { hash: r.hash, blocks: r.blocks ?? '' }
  }

  private hash(data: Buffer, blocks?: { block: number; keep: number }): Promise<{ hash: string; blocks?: string }> {
    if (!this.workers.length || !(data.buffer instanceof SharedArrayBuffer)) {
      const hash = crypto.createHash('sha256').update(data).digest('hex')
      return Promise.resolve({ hash, blocks: blocks ? blockHashes(data, blocks.block, blocks.keep).toString('hex') : undefined })
    }
    // each shared memory is posted to the workers once; a hash request names it by number
    let memory = this.memories.indexOf(data.buffer)
    if (memory < 0) {
      memory = this.memories.push(data.buffer) - 1
      for (const w of this.workers) w.postMessage({ memory: data.buffer })
    }
    const id = this.nextId++
    const worker = this.workers[id % this.workers.length]!
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject })
      worker.postMessage({ id, memory, offset: data.byteOffset, length: data.length, ...blocks })
    })
  }

  async close(): Promise<void> {
    const workers = this.workers
    this.workers = []
    await Promise.all(workers.map((w) => w.terminate()))
  }
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

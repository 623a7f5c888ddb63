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
parentPort.on('message', ({ id, memory, offset, length }) => {
  if (typeof memory !== 'number') return memories.push(memory)
  const hash = crypto.createHash('sha256').update(new Uint8Array(memories[memory], offset, length)).digest('hex')
  parentPort.postMessage({ id, hash })
})
`

export class HashPool {
  private workers: Worker[] = []
  private waiting = new Map<number, { resolve: (hash: string) => void; reject: (e: unknown) => void }>()
  private nextId = 0
  private memories: SharedArrayBuffer[] = []

  /** `threads` 0 hashes on the calling thread. */
  constructor(threads = Math.min(4, os.availableParallelism())) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER, { eval: true })
      w.on('message', ({ id, hash }: { id: number; hash: string }) => {
        this.waiting.get(id)?.resolve(hash)
        this.waiting.delete(id)
      })
      // a worker that fails or exits fails what it was asked; later hashes run on this thread
      const broken = (e: unknown) => {
        for (const p of this.waiting.values()) p.reject(e)
        this.waiting.clear()
        this.workers = []
      }
      w.on('error', broken)
      w.on('exit', (code) => { if (this.workers.length) broken(new Error(`a hashing worker exited (${code})`)) })
      this.workers.push(w)
    }
  }

  /** Hex SHA-256 of `data`; off the main thread when `data` lies in a SharedArrayBuffer. */
  sha256(data: Buffer): Promise<string> {
    if (!this.workers.length || !(data.buffer instanceof SharedArrayBuffer)) {
      return Promise.resolve(crypto.createHash('sha256').update(data).digest('hex'))
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
      worker.postMessage({ id, memory, offset: data.byteOffset, length: data.length })
    })
  }

  async close(): Promise<void> {
    const workers = this.workers
    this.workers = []
    await Promise.all(workers.map((w) => w.terminate()))
  }
}

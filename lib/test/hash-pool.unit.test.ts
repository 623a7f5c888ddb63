// SHA-256 in worker threads over shared aligned buffers: the same digests as on the main thread,
// many requests in flight, and a pool whose workers are gone still answers (on the main thread).
import crypto from 'node:crypto'
import t from 'tap'
import { alignedBuffers } from '../direct-io.ts'
import { blockHashes, HashPool } from '../hash-pool.ts'

const hex = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex')

t.test("worker digests equal the main thread's, for shared and plain buffers, many at once", async (t) => {
  const pool = new HashPool(2)
  t.teardown(() => pool.close())
  const shared = alignedBuffers(6, 300_001)
  shared.forEach((b, i) => crypto.randomFillSync(b, 0, b.length - i))
  t.ok(
    shared.every((b) => b.buffer instanceof SharedArrayBuffer),
    'aligned buffers live in shared memory',
  )
  const views = shared.flatMap((b) => [b, b.subarray(17, 1000), b.subarray(0, 0)])
  t.same(await Promise.all(views.map((v) => pool.sha256(v))), views.map(hex))
  const plain = crypto.randomBytes(12345)
  t.equal(await pool.sha256(plain), hex(plain), 'a buffer outside shared memory is hashed here')
})

t.test('after the workers are gone, hashing still answers', async (t) => {
  const pool = new HashPool(1)
  const [b] = alignedBuffers(1, 4096)
  crypto.randomFillSync(b!)
  t.equal(await pool.sha256(b!), hex(b!))
  await pool.close()
  t.equal(await pool.sha256(b!), hex(b!), 'closed pool: main thread')
})

t.test("block hashes: each block's SHA-256 prefix, in order, in workers and on the main thread", async (t) => {
  const pool = new HashPool(2)
  t.teardown(() => pool.close())
  const [b] = alignedBuffers(1, 5 * 4096 + 100)
  crypto.randomFillSync(b!)
  b!.fill(0, 4096, 8192)
  const expected = [0, 1, 2, 3, 4, 5].map((k) => hex(b!.subarray(k * 4096, Math.min(b!.length, (k + 1) * 4096))).slice(0, 16)).join('')
  t.equal(blockHashes(b!, 4096, 8).toString('hex'), expected, 'main thread: 6 blocks, the last one short')
  t.same(await pool.sha256WithBlocks(b!, 4096, 8), { hash: hex(b!), blocks: expected }, 'worker: the same, with the whole hash')
  t.same(await pool.sha256WithBlocks(Buffer.from(b!), 4096, 8), { hash: hex(b!), blocks: expected }, 'a plain buffer: on the main thread')
})

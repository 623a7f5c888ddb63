// SHA-256 in worker threads over shared aligned buffers: the same digests as on the main thread,
// many requests in flight, and a pool whose workers are gone still answers (on the main thread).
import crypto from 'node:crypto'
import t from 'tap'
import { alignedBuffers } from '../direct-io.ts'
import zlib from 'node:zlib'
import { blockHashes, unzstdFrames, WorkerPool, zstdDecompressesInPlace } from '../worker-pool.ts'

const hex = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex')

t.test("worker digests equal the main thread's, for shared and plain buffers, many at once", async (t) => {
  const pool = new WorkerPool(2)
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
  const pool = new WorkerPool(1)
  const [b] = alignedBuffers(1, 4096)
  crypto.randomFillSync(b!)
  t.equal(await pool.sha256(b!), hex(b!))
  await pool.close()
  t.equal(await pool.sha256(b!), hex(b!), 'closed pool: main thread')
})

t.test("block hashes: each block's SHA-256 prefix, in order, in workers and on the main thread", async (t) => {
  const pool = new WorkerPool(2)
  t.teardown(() => pool.close())
  const [b] = alignedBuffers(1, 5 * 4096 + 100)
  crypto.randomFillSync(b!)
  b!.fill(0, 4096, 8192)
  const expected = [0, 1, 2, 3, 4, 5].map((k) => hex(b!.subarray(k * 4096, Math.min(b!.length, (k + 1) * 4096))).slice(0, 16)).join('')
  t.equal(blockHashes(b!, 4096, 8).toString('hex'), expected, 'main thread: 6 blocks, the last one short')
  t.same(await pool.sha256WithBlocks(b!, 4096, 8), { hash: hex(b!), blocks: expected }, 'worker: the same, with the whole hash')
  t.same(await pool.sha256WithBlocks(Buffer.from(b!), 4096, 8), { hash: hex(b!), blocks: expected }, 'a plain buffer: on the main thread')
})

t.test('zstd frames: decompressed into their places in a worker, in place or copied on this thread; a frame that does not fit is an error', async (t) => {
  t.ok(zstdDecompressesInPlace(), "this Node's zlib decompresses in place (the fast way)")
  const pool = new WorkerPool(2)
  t.teardown(() => pool.close())
  const frameSize = 64 << 10
  const image = crypto.randomBytes(5 * frameSize + 1000)
  image.fill(0, frameSize, 3 * frameSize) // two frames of zeros: compressed to a few bytes
  // as image builds make them: each frame with a checksum of its content
  const compress = (b: Buffer) => zlib.zstdCompressSync(b, { params: { [zlib.constants.ZSTD_c_checksumFlag]: 1 } })
  const parts = Array.from({ length: 6 }, (_, k) => compress(image.subarray(k * frameSize, (k + 1) * frameSize)))
  const frames = Buffer.concat(parts)
  const sizes = parts.map((p) => p.length)
  /** The frames decode to the image in a worker (into shared memory) and on this thread, in place and copied. */
  const decodes = async (data: Buffer, s: number[], what: string) => {
    const [shared] = alignedBuffers(1, image.length)
    await pool.zstdFrames(new Uint8Array(data), s, shared!, frameSize)
    t.ok(shared!.equals(image), `${what}: in a worker, into shared memory`)
    for (const inPlace of [true, false]) {
      const plain = Buffer.alloc(image.length)
      unzstdFrames(zlib, data, s, plain, frameSize, inPlace)
      t.ok(plain.equals(image), `${what}: on this thread, ${inPlace ? 'in place' : 'copied'}`)
    }
  }
  await decodes(frames, sizes, 'one frame each')
  // transports published before the fix in image-format/zstd-frames.ts: a frame of exactly 16 KiB
  // of zstd came with an empty frame after it, both in its signed size
  const empty = compress(Buffer.alloc(0))
  await decodes(Buffer.concat([parts[0]!, empty, ...parts.slice(1)]), [sizes[0]! + empty.length, ...sizes.slice(1)], 'a frame followed by an empty frame')
  const damaged = Buffer.from(frames)
  damaged[sizes[0]! + sizes[1]! + sizes[2]! + 10]! ^= 0xff
  const longer = compress(Buffer.alloc(frameSize + 1))
  const shorter = compress(Buffer.alloc(frameSize - 1))
  const cases: [string, Buffer, number[], RegExp][] = [
    ['a damaged frame', damaged, sizes, /frame 3: /],
    ['a frame that holds a byte more', Buffer.concat([longer, ...parts.slice(1)]), [longer.length, ...sizes.slice(1)], /frame 0 (does not hold|holds)/],
    ['a frame that holds a byte less', Buffer.concat([shorter, ...parts.slice(1)]), [shorter.length, ...sizes.slice(1)], /frame 0 (does not hold|holds)/],
    ['two frames where one is signed', Buffer.concat([parts[0]!, parts[1]!]), [sizes[0]! + sizes[1]!], /frame 0 (does not hold|holds)|frames hold/],
    ['a frame cut short', frames.subarray(0, sizes[0]! - 5), [sizes[0]! - 5], /frame 0/],
  ]
  for (const [name, data, s, message] of cases) {
    const [into] = alignedBuffers(1, s.length === 6 ? image.length : frameSize)
    await t.rejects(pool.zstdFrames(new Uint8Array(data), s, into!, frameSize), message, `${name}: refused in a worker`)
    for (const inPlace of [true, false]) {
      t.throws(
        () => unzstdFrames(zlib, data, s, Buffer.alloc(into!.length), frameSize, inPlace),
        message,
        `${name}: refused ${inPlace ? 'in place' : 'copied'}`,
      )
    }
  }
})

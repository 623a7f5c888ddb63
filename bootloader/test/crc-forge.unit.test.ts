import crypto from 'node:crypto'
import zlib from 'node:zlib'
import t from 'tap'
import { crcLinear, forgeXor } from '../crc-forge.ts'
import { prng, seedFromEnv } from '../../test-support/test-helpers.ts'

const seed = seedFromEnv()

t.test('CRC32 is affine: crc(a^b) = crc(a) ^ lin(b)', async (t) => {
  for (let i = 0; i < 50; i++) {
    const a = crypto.randomBytes(1 + ((i * 37) % 5000))
    const b = crypto.randomBytes(a.length)
    const x = Buffer.from(a.map((v, j) => v ^ b[j]!))
    t.equal(zlib.crc32(x) >>> 0, (zlib.crc32(a) ^ crcLinear(b)) >>> 0)
  }
})

t.test(`forged 4 bytes restore the CRC after arbitrary edits (seed ${seed})`, async (t) => {
  const rnd = prng(seed)
  for (let k = 0; k < 300; k++) {
    const len = 8 + Math.floor(rnd() * 20000)
    const buf = crypto.randomBytes(len)
    const want = zlib.crc32(buf) >>> 0
    const edited = Buffer.from(buf)
    const edits = 1 + Math.floor(rnd() * 4)
    for (let e = 0; e < edits; e++) edited[Math.floor(rnd() * len)]! ^= 1 + Math.floor(rnd() * 255)
    const off = Math.floor(rnd() * (len - 3))
    const c = forgeXor(len, off, (zlib.crc32(edited) ^ want) >>> 0)
    for (let j = 0; j < 4; j++) edited[off + j]! ^= c[j]!
    if (zlib.crc32(edited) >>> 0 !== want) {
      t.fail(`len ${len} window ${off}: CRC not restored`)
      return
    }
  }
  t.pass('300 random cases restored')
})

t.test('no change asks for no compensation', async (t) => {
  t.same(forgeXor(16384, 124, 0), Buffer.alloc(4))
})

t.test('a window outside the message is refused', async (t) => {
  t.throws(() => forgeXor(100, 97, 1), RangeError)
})

// The framed transport: the zstd program reads the whole file as the image, every frame
// decompresses alone to its frameSize bytes of the image, the same input gives the same bytes, and
// a damaged frame or a frame of the wrong size is refused by name. The build's frame size fits the
// manifest's rules: whole blocks, whole frames per chunk.
import crypto from 'node:crypto'
import fs from 'node:fs'
import t from 'tap'
import { execa } from 'execa'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { BLOCK_SIZE } from '../block-index.ts'
import { CHUNK_SIZE } from '../manifest.ts'
import { compressFramed, decompressFrame, FRAME_SIZE, frameOffsets } from '../zstd-frames.ts'

const chunk = 1 << 16
const dir = tmpDir(t, 'labhost-frames-')
// random, zeros, text and an odd tail: frames of very different sizes
const image = Buffer.concat([crypto.randomBytes(3 * chunk), Buffer.alloc(2 * chunk), Buffer.from('labhost '.repeat(chunk / 4)), crypto.randomBytes(12_345)])
fs.writeFileSync(`${dir}/root.img`, image)

t.test("the build's frame size: whole 4 KiB blocks, a chunk whole frames", async (t) => {
  t.equal(FRAME_SIZE % BLOCK_SIZE, 0, 'a multiple of the block size')
  t.equal(CHUNK_SIZE % FRAME_SIZE, 0, 'divides the chunk size')
  t.ok(FRAME_SIZE < CHUNK_SIZE, 'smaller than a chunk: a delta fetches less than whole chunks')
})

t.test('zstd reads the concatenated frames as the image; each frame alone is its chunk', async (t) => {
  const frames = await compressFramed(`${dir}/root.img`, `${dir}/root.img.zst`, chunk)
  const count = Math.ceil(image.length / chunk)
  t.equal(frames.length, count, 'one frame per chunk')
  const transport = fs.readFileSync(`${dir}/root.img.zst`)
  const offsets = frameOffsets(frames)
  t.equal(offsets.at(-1), transport.length, 'frame sizes add up to the file')
  const whole = Buffer.from((await execa('zstd', ['-d', '-q', '-c'], { input: transport, encoding: 'buffer' })).stdout)
  t.ok(whole.equals(image), 'zstd -d gives the image back')
  for (let i = 0; i < count; i++) {
    const length = Math.min(chunk, image.length - i * chunk)
    const data = decompressFrame(transport.subarray(offsets[i]!, offsets[i + 1]!), length, `frame ${i}`)
    t.ok(data.equals(image.subarray(i * chunk, i * chunk + length)), `frame ${i} alone is chunk ${i}`)
  }
  t.ok(frames[3]! < frames[0]! / 50, 'a zero chunk compresses to a small frame')
  await compressFramed(`${dir}/root.img`, `${dir}/again.zst`, chunk)
  t.ok(fs.readFileSync(`${dir}/again.zst`).equals(transport), 'the same image gives the same transport bytes')
})

t.test('frames smaller than the chunk: 4 KiB frames, each alone its 4 KiB of the image', async (t) => {
  const frame = 4096
  const frames = await compressFramed(`${dir}/root.img`, `${dir}/small.zst`, frame)
  t.equal(frames.length, Math.ceil(image.length / frame), 'one frame per 4 KiB')
  const transport = fs.readFileSync(`${dir}/small.zst`)
  const offsets = frameOffsets(frames)
  t.equal(offsets.at(-1), transport.length, 'frame sizes add up to the file')
  const whole = Buffer.from((await execa('zstd', ['-d', '-q', '-c'], { input: transport, encoding: 'buffer' })).stdout)
  t.ok(whole.equals(image), 'zstd -d gives the image back')
  let bad = 0
  for (let i = 0; i < frames.length; i++) {
    const length = Math.min(frame, image.length - i * frame)
    if (!decompressFrame(transport.subarray(offsets[i]!, offsets[i + 1]!), length, `frame ${i}`).equals(image.subarray(i * frame, i * frame + length))) bad++
  }
  t.equal(bad, 0, 'every frame alone is its 4 KiB, the last one the odd tail')
})

t.test('a damaged frame and a frame of another chunk size are refused', async (t) => {
  const frames = await compressFramed(`${dir}/root.img`, `${dir}/root.img.zst`, chunk)
  const transport = fs.readFileSync(`${dir}/root.img.zst`)
  const frame = Buffer.from(transport.subarray(0, frames[0]!))
  frame[Math.floor(frame.length / 2)]! ^= 0x40
  const refused = (f: () => unknown, re: RegExp) => {
    try {
      f()
      t.fail('accepted')
    } catch (e) {
      t.ok(e instanceof LabhostError && e.exitCode === ExitCode.hashMismatch, 'hash mismatch exit code')
      t.match((e as Error).message, re)
    }
  }
  refused(() => decompressFrame(frame, chunk, 'frame 0'), /^frame 0 is not a good zstd frame/)
  const last = transport.subarray(frameOffsets(frames).at(-2)!)
  refused(() => decompressFrame(last, chunk, 'the last frame'), /^the last frame holds 12345 bytes, the manifest says 65536/)
  refused(() => decompressFrame(transport.subarray(0, frames[0]!), chunk - 1, 'frame 0'), /^frame 0 is not a good zstd frame/)
})

t.test('a frame of exactly 16 KiB is one frame (no empty frame after it)', async (t) => {
  // random bytes are stored raw: 16370 of them make a frame of 16384 bytes (header, block header, checksum)
  const file = `${dir}/raw16k.img`
  fs.writeFileSync(file, crypto.randomBytes(16370))
  const frames = await compressFramed(file, `${file}.zst`, 16370, 3)
  t.same(frames, [16384], 'one frame, of 16384 bytes')
  t.equal(fs.statSync(`${file}.zst`).size, 16384, 'and nothing after it')
})

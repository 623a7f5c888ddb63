// The framed transport: the zstd program reads the whole file as the image, every frame
// decompresses alone to its chunk, the same input gives the same bytes, and a damaged frame or a
// frame of the wrong size is refused by name.
import crypto from 'node:crypto'
import fs from 'node:fs'
import t from 'tap'
import { execa } from 'execa'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { compressFramed, decompressFrame, frameOffsets } from '../zstd-frames.ts'

const chunk = 1 << 16
const dir = tmpDir(t, 'labhost-frames-')
// random, zeros, text and an odd tail: frames of very different sizes
const image = Buffer.concat([crypto.randomBytes(3 * chunk), Buffer.alloc(2 * chunk), Buffer.from('labhost '.repeat(chunk / 4)), crypto.randomBytes(12_345)])
fs.writeFileSync(`${dir}/root.img`, image)

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

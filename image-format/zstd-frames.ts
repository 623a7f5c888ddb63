// The transport copy of an image: every chunk of the image compressed as a zstd frame of its own,
// the frames concatenated. zstd reads the file as one stream (a full update decompresses it as it
// downloads), and any chunk can be fetched alone by its frame's byte range: a delta update asks
// only for the chunks a host does not have (updater/delta.ts). The frame sizes go into the
// signed manifest. Independent frames cost a few percent of compression against one stream.
import fs from 'node:fs'
import zlib from 'node:zlib'
import { LabhostError } from '../lib/errors.ts'

// 6: within 0.3 % of level 9 on the test image, in less than half the time
export const TRANSPORT_LEVEL = 6
/** Frames compressed at once (zlib runs them on the libuv thread pool). */
const IN_FLIGHT = 8

const compressOptions = {
  params: {
    [zlib.constants.ZSTD_c_compressionLevel]: TRANSPORT_LEVEL,
    // as the zstd command: each frame carries its content size and a checksum of its content
    [zlib.constants.ZSTD_c_checksumFlag]: 1,
    [zlib.constants.ZSTD_c_contentSizeFlag]: 1,
  },
}

const compress = (data: Buffer) => new Promise<Buffer>((resolve, reject) => zlib.zstdCompress(data, compressOptions, (e, r) => (e ? reject(e) : resolve(r))))

/** Compress `image` chunk by chunk into `out`; returns the size of each chunk's frame. */
export async function compressFramed(image: string, out: string, chunkSize: number): Promise<number[]> {
  const size = fs.statSync(image).size
  const count = Math.ceil(size / chunkSize)
  const inFd = fs.openSync(image, 'r')
  const outFd = fs.openSync(out, 'w')
  const frames: number[] = []
  try {
    const pending: Promise<Buffer>[] = []
    const start = (i: number) => {
      const length = Math.min(chunkSize, size - i * chunkSize)
      const buf = Buffer.allocUnsafe(length)
      for (let n = 0; n < length;) n += fs.readSync(inFd, buf, n, length - n, i * chunkSize + n)
      pending.push(compress(buf))
    }
    for (let i = 0; i < Math.min(IN_FLIGHT, count); i++) start(i)
    for (let i = 0; i < count; i++) {
      const frame = await pending.shift()!
      if (i + IN_FLIGHT < count) start(i + IN_FLIGHT)
      fs.writeSync(outFd, frame)
      frames.push(frame.length)
    }
    fs.fsyncSync(outFd)
    return frames
  } finally {
    fs.closeSync(inFd)
    fs.closeSync(outFd)
  }
}

/** Byte offset of each frame in the transport file, and the file's size at the end. */
export function frameOffsets(frames: number[]): number[] {
  const offsets = [0]
  for (const f of frames) offsets.push(offsets.at(-1)! + f)
  return offsets
}

/** One chunk from its frame; `what` names the frame in the error when it is not a good one. */
export function decompressFrame(frame: Buffer, length: number, what: string): Buffer {
  let data: Buffer
  try {
    data = zlib.zstdDecompressSync(frame, { maxOutputLength: length })
  } catch (e) {
    throw new LabhostError(
      'hashMismatch',
      `${what} is not a good zstd frame: ${(e as Error).message}`,
      'the download was corrupted: run the update again (only the target slot was written, nothing was switched)',
      {},
      { cause: e },
    )
  }
  if (data.length !== length) {
    throw new LabhostError(
      'hashMismatch',
      `${what} holds ${data.length} bytes, the manifest says ${length}`,
      'the transport file does not belong to this manifest: publish the image again; nothing was switched',
    )
  }
  return data
}

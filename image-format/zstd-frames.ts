// The transport copy of an image: every FRAME_SIZE bytes of the image compressed as a zstd frame
// of its own, the frames concatenated. zstd reads the file as one stream (a full update
// decompresses it as it downloads), and any frame can be fetched alone by its byte range: a delta
// update asks only for the frames holding blocks a host does not have (updater/delta.ts). The
// frame sizes go into the signed manifest. Independent frames cost compression against one stream;
// the level makes up for it.
import fs from 'node:fs'
import zlib from 'node:zlib'
import { LabhostError } from '../lib/errors.ts'

/**
 * Bytes of image per frame: 32 blocks of 4 KiB, 1/8 of a chunk. A one-package update of the host
 * image changes blocks in 396 of its 1024 chunks; fetching the 128 KiB around each instead of its
 * whole chunk took that delta from 9.3 % of the image to 3.2 % (docs/benchmarks.md). 64 KiB
 * frames fetched 2.0 %, but made the transport 7 % larger even at level 14.
 */
export const FRAME_SIZE = 128 << 10
/**
 * 14 (zstd's first optimal-parsing level for inputs this small): the frames then make the
 * transport 2 % larger than 1 MiB frames at level 6 did for the host image (at level 6: 9 %), 1 %
 * smaller for the test image, for 6 times the CPU of level 6. zstd decompresses every level
 * equally fast.
 */
export const TRANSPORT_LEVEL = 14
/** Image bytes compressed at once (zlib runs the frames on the libuv thread pool). */
const IN_FLIGHT_BYTES = 8 << 20

const compress = (data: Buffer, level: number) =>
  new Promise<Buffer>((resolve, reject) =>
    zlib.zstdCompress(
      data,
      {
        // the frame's size told first: zstd then sizes its tables to it (without, 64 KiB frames
        // at level 6 took 4 times the CPU of 1 MiB frames, and compressed worse)
        pledgedSrcSize: data.length,
        // room for the whole frame in one output buffer: a frame that filled zlib's buffer exactly
        // (16 KiB by default) got a second, empty frame after it (13 bytes), from the call zlib makes
        // for more output
        chunkSize: Math.max(16 << 10, data.length + (data.length >> 7) + 1024),
        params: {
          [zlib.constants.ZSTD_c_compressionLevel]: level,
          // as the zstd command: each frame carries its content size and a checksum of its content
          [zlib.constants.ZSTD_c_checksumFlag]: 1,
          [zlib.constants.ZSTD_c_contentSizeFlag]: 1,
        },
      },
      (e, r) => (e ? reject(e) : resolve(r)),
    ),
  )

/** Compress `image` frame by frame (`frameSize` bytes of it each, at zstd `level`) into `out`; returns the size of each frame. */
export async function compressFramed(image: string, out: string, frameSize: number, level = TRANSPORT_LEVEL): Promise<number[]> {
  const size = fs.statSync(image).size
  const count = Math.ceil(size / frameSize)
  const inFlight = Math.max(4, Math.floor(IN_FLIGHT_BYTES / frameSize))
  const inFd = fs.openSync(image, 'r')
  const outFd = fs.openSync(out, 'w')
  const frames: number[] = []
  try {
    const pending: Promise<Buffer>[] = []
    const start = (i: number) => {
      const length = Math.min(frameSize, size - i * frameSize)
      const buf = Buffer.allocUnsafe(length)
      for (let n = 0; n < length;) n += fs.readSync(inFd, buf, n, length - n, i * frameSize + n)
      pending.push(compress(buf, level))
    }
    for (let i = 0; i < Math.min(inFlight, count); i++) start(i)
    for (let i = 0; i < count; i++) {
      const frame = await pending.shift()!
      if (i + inFlight < count) start(i + inFlight)
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

/** The image bytes of one frame; `what` names the frame in the error when it is not a good one. */
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

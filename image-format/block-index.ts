// The block index of an image: the first 8 bytes of the SHA-256 of every 4 KiB block (ext4's
// block size), in order, as one binary file beside the manifest, which signs its hash. A delta
// update finds the new image's blocks wherever they lie in the host's slots — a file system
// built anew with one package more moves most files by a few blocks, so whole 1 MiB chunks rarely
// match while their blocks do — and assembles chunks from them (updater/delta.ts). A short hash
// is enough to find candidates: every assembled chunk is checked against its full SHA-256.
import fs from 'node:fs'
import { blockHashes } from '../lib/worker-pool.ts'

export const BLOCK_SIZE = 4096
export const BLOCK_HASH_BYTES = 8

/** Write the block index of `image` to `out`. */
export function writeBlockIndex(image: string, out: string): void {
  const fd = fs.openSync(image, 'r')
  const outFd = fs.openSync(out, 'w')
  try {
    const buf = Buffer.alloc(1 << 20)
    for (let at = 0; ;) {
      let n = 0
      for (let r; n < buf.length && (r = fs.readSync(fd, buf, n, buf.length - n, at + n)); n += r);
      if (!n) break
      fs.writeSync(outFd, blockHashes(buf.subarray(0, n), BLOCK_SIZE, BLOCK_HASH_BYTES))
      at += n
      if (n < buf.length) break
    }
    fs.fsyncSync(outFd)
  } finally {
    fs.closeSync(fd)
    fs.closeSync(outFd)
  }
}

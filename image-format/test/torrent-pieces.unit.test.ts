// The piece size of a published torrent: about a thousand pieces, 32 KiB to 1 MiB, so a small
// delta pack still gives a lab's hosts pieces to trade and a large image keeps a short .torrent.
import t from 'tap'
import { pieceSizeLog2For, TORRENT_MAX_BYTES } from '../torrent.ts'

const MB = 1e6
const GiB = 2 ** 30

t.test('a piece size for every file size, between 32 KiB and 1 MiB', async (t) => {
  for (const [size, log2] of [
    [0, 15],
    [1, 15],
    [5.7 * MB, 15], // the fleet's delta pack: 174 pieces, not 6
    [57 * MB, 16], // the test image's transport file: 870 pieces
    [201 * MB, 18], // the host image's: 767 pieces
    [GiB, 20],
    [64 * GiB, 20],
  ] as const)
    t.equal(pieceSizeLog2For(size), log2, `${size} bytes: ${(2 ** log2) >> 10} KiB pieces`)
})

t.test('never more than about a thousand pieces below 1 GiB; never a .torrent over the cap', async (t) => {
  for (let size = 1024; size < 256 * GiB; size = Math.ceil(size * 1.37)) {
    const pieces = Math.ceil(size / 2 ** pieceSizeLog2For(size))
    if (size < GiB) t.ok(pieces <= 1024 && (pieces > 128 || size < 128 * 32 * 1024), `${size} bytes: ${pieces} pieces`)
    // 20 bytes of SHA-1 a piece, within the cap up to 64 GiB (the cap's own sizing)
    if (size <= 64 * GiB) t.ok(pieces * 20 < TORRENT_MAX_BYTES, `${size} bytes: a .torrent of ${pieces * 20} bytes of hashes`)
  }
})

// CRC32 forcing (Stigge et al., "Reversing CRC – Theory and Practice", 2006): CRC32 is affine
// over GF(2), so for buffers of equal length crc(a ⊕ d) = crc(a) ⊕ lin(d). Choosing 4 contiguous
// bytes c with lin(c) = δ cancels any change δ elsewhere, and the stored CRC stays valid.
import zlib from 'node:zlib'

/** The linear part of CRC32 for a buffer: crc(buf) ⊕ crc(zeros of the same length). */
export function crcLinear(buf: Buffer): number {
  return (zlib.crc32(buf) ^ zlib.crc32(Buffer.alloc(buf.length))) >>> 0
}

/**
 * The 4 bytes to XOR in at [offset, offset+4) of a `length`-byte message so that its CRC32
 * changes by exactly `delta`. Leading bytes do not influence the linear part, so only the
 * distance to the end of the message matters.
 */
export function forgeXor(length: number, offset: number, delta: number): Buffer {
  if (offset < 0 || offset + 4 > length) throw new RangeError(`window ${offset}..${offset + 4} is outside a ${length}-byte message`)
  const tailLength = length - offset
  const basis: ({ v: number; m: number } | undefined)[] = new Array(32)
  for (let bit = 0; bit < 32; bit++) {
    const probe = Buffer.alloc(tailLength)
    probe[bit >> 3] = 1 << (bit & 7)
    let v = crcLinear(probe)
    let m = (1 << bit) >>> 0
    for (let p = 31; p >= 0 && v !== 0; p--) {
      if (((v >>> p) & 1) === 0) continue
      const b = basis[p]
      if (!b) {
        basis[p] = { v, m }
        v = 0
        break
      }
      v = (v ^ b.v) >>> 0
      m = (m ^ b.m) >>> 0
    }
  }
  let t = delta >>> 0
  let x = 0
  for (let p = 31; p >= 0; p--) {
    if (((t >>> p) & 1) === 0) continue
    const b = basis[p]
    // 32 contiguous bits always span GF(2)^32 for CRC32; reaching this would mean a bug.
    if (!b) throw new Error('CRC32 forcing: singular system')
    t = (t ^ b.v) >>> 0
    x = (x ^ b.m) >>> 0
  }
  const out = Buffer.alloc(4)
  out.writeUInt32LE(x, 0)
  // bit i of x stands for byte i>>3, bit i&7 of the window: little-endian layout matches.
  return out
}

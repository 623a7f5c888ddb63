// A strict bencode decoder (BEP 3), for reading .torrent files that nobody signed: integers in
// canonical form and within Number's safe range, byte strings no longer than what is left,
// dictionary keys in strictly increasing order (so no key appears twice and no two readers can
// disagree on its value), bounded nesting, nothing after the top-level value.
export type BValue = number | Buffer | BValue[] | BDict
export type BDict = Map<string, BValue>

const MAX_DEPTH = 32

export class BencodeError extends Error {
  override name = 'BencodeError'
}

/** Decode `data` whole; keys come as latin1 strings (byte for byte), strings as Buffers. */
export function bdecode(data: Buffer): BValue {
  let at = 0
  const fail = (what: string): never => {
    throw new BencodeError(`${what} at byte ${at}`)
  }
  const digits = (end: number): string => {
    const s = data.toString('latin1', at, end)
    if (!/^(0|-?[1-9]\d*)$/.test(s)) fail(`${JSON.stringify(s.slice(0, 20))} is not a canonical integer`)
    return s
  }
  const value = (depth: number): BValue => {
    if (depth > MAX_DEPTH) fail('nesting too deep')
    const c = data[at]
    if (c === undefined) return fail('unexpected end')
    if (c === 0x69 /* i */) {
      const end = data.indexOf(0x65 /* e */, at + 1)
      if (end < 0) fail('unterminated integer')
      at++
      const n = Number(digits(end))
      if (!Number.isSafeInteger(n)) fail('integer out of range')
      at = end + 1
      return n
    }
    if (c === 0x6c /* l */) {
      at++
      const list: BValue[] = []
      while (data[at] !== 0x65) list.push(value(depth + 1))
      at++
      return list
    }
    if (c === 0x64 /* d */) {
      at++
      const dict: BDict = new Map()
      let last: Buffer | null = null
      while (data[at] !== 0x65) {
        if (data[at] === undefined) fail('unterminated dictionary')
        const key = bytes()
        if (last && Buffer.compare(last, key) >= 0) fail(`key ${JSON.stringify(key.toString('latin1'))} out of order or repeated`)
        last = key
        dict.set(key.toString('latin1'), value(depth + 1))
      }
      at++
      return dict
    }
    return bytes()
  }
  const bytes = (): Buffer => {
    const colon = data.indexOf(0x3a /* : */, at)
    if (colon < 0 || colon - at > 16) fail('not a value')
    const n = Number(digits(colon))
    if (n < 0) fail('negative string length')
    at = colon + 1
    if (at + n > data.length) fail('string longer than the data')
    const b = data.subarray(at, at + n)
    at += n
    return b
  }
  const v = value(0)
  if (at !== data.length) fail('data after the value')
  return v
}

export const isDict = (v: BValue | undefined): v is BDict => v instanceof Map

/** Encode `v` (BEP 3): dictionary keys sorted byte-wise, so what `bdecode` read comes out byte for byte. */
export function bencode(v: BValue): Buffer {
  const out: Buffer[] = []
  const put = (x: BValue): void => {
    if (typeof x === 'number') {
      if (!Number.isSafeInteger(x)) throw new BencodeError(`${x} is not an integer bencode can hold`)
      out.push(Buffer.from(`i${x}e`))
    } else if (Buffer.isBuffer(x)) out.push(Buffer.from(`${x.length}:`), x)
    else if (Array.isArray(x)) {
      out.push(Buffer.from('l'))
      x.forEach(put)
      out.push(Buffer.from('e'))
    } else {
      out.push(Buffer.from('d'))
      for (const k of [...x.keys()].sort((a, b) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1')))) {
        put(Buffer.from(k, 'latin1'))
        put(x.get(k)!)
      }
      out.push(Buffer.from('e'))
    }
  }
  put(v)
  return Buffer.concat(out)
}

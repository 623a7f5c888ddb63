// GPT GUIDs are stored mixed-endian: the first three fields little-endian, the rest as bytes.

export function guidFromBytes(b: Buffer): string {
  const hex = (buf: Buffer) => buf.toString('hex')
  const le = (start: number, len: number) => hex(Buffer.from(b.subarray(start, start + len)).reverse())
  return `${le(0, 4)}-${le(4, 2)}-${le(6, 2)}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`.toUpperCase()
}

export function guidToBytes(guid: string): Buffer {
  const m = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i.exec(guid)
  if (!m) throw new Error(`not a GUID: ${guid}`)
  const [, a, b, c, d, e] = m as unknown as [string, string, string, string, string, string]
  const rev = (h: string) => Buffer.from(h, 'hex').reverse()
  return Buffer.concat([rev(a), rev(b), rev(c), Buffer.from(d + e, 'hex')])
}

export const ZERO_GUID = '00000000-0000-0000-0000-000000000000'

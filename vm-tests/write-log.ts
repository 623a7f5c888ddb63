// The guest's writes and flushes to one disk, as QEMU's blklogwrites driver records them
// (the dm-log-writes format: a super block in log sector 0, then per entry a header sector and
// its data). Crash-point replay (vm-tests/crash-replay.ts) rebuilds disk states from them.
import fs from 'node:fs'

export const LOG_MAGIC = 0x6a736677736872n
export const FLAG_FLUSH = 1n
export const FLAG_FUA = 2n
export const FLAG_DISCARD = 4n
export const FLAG_MARK = 8n

export interface LoggedWrite {
  index: number
  /** Byte offset on the disk. */
  offset: number
  /** Bytes covered. */
  length: number
  /** The bytes written (empty for a pure flush; null for a discard, whose sectors read as anything). */
  data: Buffer | null
  /** The write is durable before it completes (FUA). */
  fua: boolean
  /** A flush: everything before it is durable. */
  flush: boolean
  discard: boolean
}

/** The log must be recorded with log-sector-size 512 (qemu.ts does), so offsets are bytes/512. */
export function readWriteLog(file: string): LoggedWrite[] {
  const log = fs.readFileSync(file)
  if (log.readBigUInt64LE(0) !== LOG_MAGIC) throw new Error(`${file} is not a dm-log-writes log`)
  const count = Number(log.readBigUInt64LE(16))
  const ss = log.readUInt32LE(24)
  const out: LoggedWrite[] = []
  let at = ss
  for (let i = 0; i < count; i++) {
    const sector = log.readBigUInt64LE(at)
    const sectors = Number(log.readBigUInt64LE(at + 8))
    const flags = log.readBigUInt64LE(at + 16)
    at += ss
    const discard = (flags & FLAG_DISCARD) !== 0n
    // QEMU counts sectors in the log's sector size and leaves data_len 0: the data is
    // nr_sectors sectors following the header (none for a discard)
    const len = sectors * ss
    const data = discard ? null : log.subarray(at, at + len)
    if (!discard) at += len
    if ((flags & FLAG_MARK) === 0n) {
      out.push({
        index: out.length,
        offset: Number(sector) * ss,
        length: len,
        data,
        fua: (flags & FLAG_FUA) !== 0n,
        flush: (flags & FLAG_FLUSH) !== 0n,
        discard,
      })
    }
  }
  return out
}

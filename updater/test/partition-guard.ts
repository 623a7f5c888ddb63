// Proof that a refused or failed update wrote nowhere but where it may: every partition of the
// host's plan but the target slot, and every byte outside the partitions (MBR, both GPT regions,
// gaps), hashed one by one, so a failure names the region. The non-root partitions are first
// filled with seeded random bytes: a stray write of zeros (the writer zeroes zero chunks with
// BLKZEROOUT) into a partition that mkfs left mostly zero would otherwise hash the same.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { hashRange } from '../../test-support/test-helpers.ts'
import type { Host } from '../../test-support/update-fixtures.ts'

/** Overwrite every partition except the root slots with random bytes (their filesystems are not used by an update). */
export function markDataPartitions(h: Host): void {
  const fd = fs.openSync(h.disk, 'r+')
  try {
    for (const p of h.plan.filter((q) => !/^root[AB]$/.test(q.name))) {
      const start = p.firstLba * 512
      const bytes = (p.lastLba - p.firstLba + 1) * 512
      for (let done = 0; done < bytes;) {
        const b = crypto.randomBytes(Math.min(4 << 20, bytes - done))
        fs.writeSync(fd, b, 0, b.length, start + done)
        done += b.length
      }
    }
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * SHA-256 per partition of the plan (by name), except `except`, and of everything outside the
 * partitions (key `outside`: MBR, primary and backup GPT, alignment gaps) in one hash.
 */
export function regionHashes(h: Host, except: string[] = []): Record<string, string> {
  const size = fs.statSync(h.disk).size
  const parts = [...h.plan].sort((a, b) => a.firstLba - b.firstLba)
  const out: Record<string, string> = {}
  for (const p of parts) if (!except.includes(p.name)) out[p.name] = hashRange(h.disk, p.firstLba * 512, (p.lastLba - p.firstLba + 1) * 512)
  const outside = crypto.createHash('sha256')
  let at = 0
  for (const p of [...parts, { firstLba: size / 512, lastLba: size / 512 - 1 }]) {
    outside.update(hashRange(h.disk, at, p.firstLba * 512 - at))
    at = (p.lastLba + 1) * 512
  }
  out.outside = outside.digest('hex')
  return out
}

// Free space as labhost counts it before it writes: statfs's bavail (what is left without the
// blocks ext4 reserves for root, although labhost runs as root: those are the system's margin).
import fs from 'node:fs'

export function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir)
  return s.bavail * s.bsize
}

export const GiB = 2 ** 30

export const gib = (n: number): string => `${(n / GiB).toFixed(2)} GiB`

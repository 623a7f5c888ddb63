// GPT disks for the tests, made by the real sgdisk on image files or loop devices.
import fs from 'node:fs'
import { run } from '../lib/exec.ts'
import { arrayCrc, headerCrcOf, parseHeader } from '../bootloader/gpt.ts'

export interface PartSpec {
  /** 1-based entry number. */
  number: number
  name: string
  sizeKiB: number
  /** Attribute bits to set (0..63). */
  attrs?: number[]
  partGuid?: string
}

export interface GptDiskSpec {
  parts: PartSpec[]
  tableEntries?: number
}

/** Partitions laid out in order of `parts`, each aligned to 1 MiB where it fits. */
export async function makeGptDisk(target: string, spec: GptDiskSpec): Promise<void> {
  const args = ['-o']
  if (spec.tableEntries) args.push(`--resize-table=${spec.tableEntries}`)
  for (const p of spec.parts) {
    args.push('-n', `${p.number}:0:+${p.sizeKiB}K`, '-c', `${p.number}:${p.name}`)
    if (p.partGuid) args.push('-u', `${p.number}:${p.partGuid}`)
    for (const bit of p.attrs ?? []) args.push('-A', `${p.number}:set:${bit}`)
  }
  await run('sgdisk', [...args, target])
}

export const STANDARD_LAYOUT: GptDiskSpec = {
  parts: [
    { number: 1, name: 'rootA', sizeKiB: 8192, attrs: [2] },
    { number: 2, name: 'rootB', sizeKiB: 8192 },
    { number: 3, name: 'persistent', sizeKiB: 2048 },
    { number: 4, name: 'log', sizeKiB: 2048 },
    { number: 5, name: 'backing', sizeKiB: 4096 },
  ],
}

export async function sgdiskVerify(target: string): Promise<string> {
  const r = await run('sgdisk', ['-v', target]).catch((e) => ({ stdout: String(e.details?.stderr ?? e.message) }))
  return r.stdout
}

/**
 * Change the backup entry array and keep it valid (entries CRC and header CRC recomputed):
 * a backup that is valid on its own but disagrees with the primary.
 */
export function rewriteBackupValid(file: string, sectorSize: number, mutate: (entries: Buffer) => void): void {
  rewriteArrays(file, sectorSize, ['backup'], mutate)
}

/**
 * Change both entry arrays alike and keep the table CRC-valid (what a crafted or buggy
 * partitioner leaves).
 */
export function rewriteGptValid(file: string, sectorSize: number, mutate: (entries: Buffer) => void): void {
  rewriteArrays(file, sectorSize, ['primary', 'backup'], mutate)
}

function rewriteArrays(file: string, sectorSize: number, sides: ('primary' | 'backup')[], mutate: (entries: Buffer) => void): void {
  const size = fs.statSync(file).isBlockDevice() ? 0 : fs.statSync(file).size
  const total = size || Number(fs.readFileSync(`/sys/class/block/${file.split('/').pop()}/size`, 'utf8')) * 512
  for (const side of sides) rewriteSide(file, sectorSize, side === 'primary' ? 1 : total / sectorSize - 1, mutate)
}

function rewriteSide(file: string, sectorSize: number, headerLba: number, mutate: (entries: Buffer) => void): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const hdr = Buffer.alloc(sectorSize)
    fs.readSync(fd, hdr, 0, sectorSize, headerLba * sectorSize)
    const h = parseHeader(hdr)!
    const entries = Buffer.alloc(h.entryCount * h.entrySize)
    fs.readSync(fd, entries, 0, entries.length, Number(h.entriesLba) * sectorSize)
    mutate(entries)
    fs.writeSync(fd, entries, 0, entries.length, Number(h.entriesLba) * sectorSize)
    hdr.writeUInt32LE(arrayCrc(entries), 88)
    hdr.writeUInt32LE(headerCrcOf(hdr, h.headerSize), 16)
    fs.writeSync(fd, hdr, 0, sectorSize, headerLba * sectorSize)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

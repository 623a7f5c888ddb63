// The image writer on its own, on real targets: a loop device with direct I/O (512-byte and 4Kn
// sectors) and a plain file. The target range starts full of random bytes, so a chunk the writer
// skipped or zeroed wrongly shows; the image has a long zero run (zeroed by the kernel), a short
// one (written), and a last chunk that ends inside a 4 KiB block (the disk's bytes after it stay).
import crypto from 'node:crypto'
import fs from 'node:fs'
import t from 'tap'
import { execa } from 'execa'
import { readRange, sparseFile, tmpDir, loop } from '../../test-support/test-helpers.ts'
import { hashChunks, type Manifest } from '../manifest.ts'
import { alignedBuffers, DIRECT_ALIGN, DirectFile } from '../../lib/direct-io.ts'
import { ExitCode, type ErrorCode, type LabhostError } from '../../lib/errors.ts'
import { verifyImage, writeImage, type ImageInput } from '../slot-writer.ts'
import { compressFramed } from '../zstd-frames.ts'

const MiB = 1 << 20
const CHUNK = MiB
// chunk kinds: d = random data, 0 = zeros; the image ends 1234 bytes into chunk 13
const KINDS = 'dd000000d00ddd'
const SIZE = (KINDS.length - 1) * CHUNK + 1234
const FIRST_BYTE = 3 * MiB

function makeImage(file: string): Buffer {
  const img = Buffer.alloc(SIZE)
  ;[...KINDS].forEach((k, i) => {
    if (k === 'd') crypto.randomFillSync(img, i * CHUNK, Math.min(CHUNK, SIZE - i * CHUNK))
  })
  fs.writeFileSync(file, img)
  return img
}

function manifestFor(file: string): Manifest {
  const h = hashChunks(file, CHUNK)
  return { image: { file: 'root.img', size: h.size, sha256: h.sha256, chunkSize: CHUNK, chunks: h.chunks } } as Manifest
}

/** Frames of 128 KiB of image, as image builds make them. */
const FRAME = 128 << 10

/** The image compressed frame by frame, and its manifest naming the frames (as a built image's). */
async function framedSource(file: string): Promise<Manifest> {
  const frames = await compressFramed(file, `${file}.zst`, FRAME, 3)
  const m = manifestFor(file)
  return { ...m, transport: { file: 'root.img.zst', size: fs.statSync(`${file}.zst`).size, frameSize: FRAME, frames } } as Manifest
}

type SourceKind = 'raw' | 'zstd' | 'framed' | 'framed file'

/**
 * The image as a stream (raw as a delta's; zstd of one frame, from an image built before frames;
 * zstd frames in worker threads) in pieces that do not line up with its chunks, or the frames
 * from a file.
 */
async function sourceFor(file: string, kind: SourceKind): Promise<{ manifest: Manifest; input: () => ImageInput }> {
  if (kind === 'zstd') await execa('zstd', ['-q', '-f', '-1', file, '-o', `${file}.zst`])
  const manifest = kind.startsWith('framed') ? await framedSource(file) : manifestFor(file)
  const stream = (f: string) => fs.createReadStream(f, { highWaterMark: 300_000 })
  const input = (): ImageInput =>
    kind === 'raw' ? { kind: 'raw-stream', stream: stream(file) } : { kind: 'zstd', from: kind === 'framed file' ? `${file}.zst` : stream(`${file}.zst`) }
  return { manifest, input }
}

const targets = [
  { name: 'loop device, 512-byte sectors, direct I/O', loop: { directIo: true } },
  { name: 'loop device, 4096-byte sectors (4Kn), direct I/O', loop: { directIo: true, sectorSize: 4096 } },
  { name: 'plain file', loop: null },
] as const

for (const target of targets) {
  for (const kind of ['raw', 'zstd', 'framed', 'framed file'] as const) {
    t.test(
      `${target.name}, ${kind === 'framed file' ? 'zstd frames from a file' : `${kind} stream`}: the range holds the image exactly, the bytes after it are kept`,
      async (t) => {
        const d = tmpDir(t)
        const image = makeImage(`${d}/root.img`)
        const backing = sparseFile(`${d}/disk.img`, 24 * MiB)
        const garbage = crypto.randomBytes(24 * MiB)
        fs.writeFileSync(backing, garbage)
        const dev = target.loop ? await loop(t, backing, target.loop) : backing
        const source = await sourceFor(`${d}/root.img`, kind)
        const progress: number[] = []
        const { stats, readBack } = await writeImage({ disk: dev, firstByte: FIRST_BYTE, name: 'slot B' }, source.manifest, source.input(), {
          progress: (done) => progress.push(done),
          readBack: true,
        })
        // with O_DIRECT every chunk written as data was read back while writing; zeroed chunks were
        // not; a file system without O_DIRECT (tmpfs) leaves all of it to verifyImage
        const probe = DirectFile.open(dev, 'read')
        probe.close()
        t.same(
          [...readBack].sort((a, b) => a - b),
          probe.direct ? [...KINDS].flatMap((k, i) => (k === 'd' || i === KINDS.length - 1 ? [i] : [])) : [],
          probe.direct ? 'read back while writing: the data chunks' : 'nothing read back while writing without O_DIRECT',
        )
        // the run of 6 zero chunks is zeroed by the kernel on a block device; the run of 2 is written
        t.same(
          stats,
          target.loop
            ? { dataBytes: SIZE - 8 * CHUNK, kernelZeroedBytes: 6 * CHUNK, writtenZeroBytes: 2 * CHUNK }
            : { dataBytes: SIZE - 8 * CHUNK, kernelZeroedBytes: 0, writtenZeroBytes: 8 * CHUNK },
          'zero chunks: not sent as data',
        )
        t.ok(readRange(backing, FIRST_BYTE, SIZE).equals(image), 'the range reads back as the image, zero chunks included')
        t.ok(readRange(backing, 0, FIRST_BYTE).equals(garbage.subarray(0, FIRST_BYTE)), 'bytes before the range untouched')
        t.ok(
          readRange(backing, FIRST_BYTE + SIZE, 24 * MiB - FIRST_BYTE - SIZE).equals(garbage.subarray(FIRST_BYTE + SIZE)),
          'bytes after the image untouched (also inside its last 4 KiB block)',
        )
        t.equal(progress.at(-1), SIZE, 'progress reaches the image size')
        await verifyImage({ disk: dev, firstByte: FIRST_BYTE, name: 'slot B' }, source.manifest)
        t.pass('read-back verifies')
      },
    )
  }
}

t.test('read-back catches one flipped byte in a zeroed run and in the odd tail, naming the chunk', async (t) => {
  const d = tmpDir(t)
  makeImage(`${d}/root.img`)
  const backing = sparseFile(`${d}/disk.img`, 24 * MiB)
  const dev = await loop(t, backing, { directIo: true })
  const source = await sourceFor(`${d}/root.img`, 'raw')
  const target = { disk: dev, firstByte: FIRST_BYTE, name: 'slot B' }
  await writeImage(target, source.manifest, source.input())
  for (const [chunk, at] of [
    [4, 4 * CHUNK + 777],
    [13, SIZE - 1],
  ] as const) {
    const fd = fs.openSync(dev, 'r+')
    const b = Buffer.alloc(1)
    fs.readSync(fd, b, 0, 1, FIRST_BYTE + at)
    b[0]! ^= 0x20
    fs.writeSync(fd, b, 0, 1, FIRST_BYTE + at)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    await t.rejects(verifyImage(target, source.manifest), new RegExp(`chunk ${chunk} \\(`), `chunk ${chunk} reported`)
    await writeImage(target, source.manifest, source.input())
    await verifyImage(target, source.manifest)
  }
})

t.test('a data chunk that does not match the manifest is caught by its read-back; a chunk due to be zeros, before it is written', async (t) => {
  const d = tmpDir(t)
  const image = makeImage(`${d}/root.img`)
  const source = await sourceFor(`${d}/root.img`, 'raw')
  const backing = sparseFile(`${d}/disk.img`, 24 * MiB)
  const dev = await loop(t, backing, { directIo: true })
  const target = { disk: dev, firstByte: FIRST_BYTE, name: 'slot B' }
  const streamOf = (name: string, at: number) => {
    const bad = Buffer.from(image)
    bad[at]! ^= 1
    fs.writeFileSync(`${d}/${name}`, bad)
    return { kind: 'raw-stream', stream: fs.createReadStream(`${d}/${name}`) } as const
  }
  // data chunk 11: written, read back, reported (and by verifyImage when the read-back comes after)
  await t.rejects(writeImage(target, source.manifest, streamOf('bad11.img', 11 * CHUNK + 5), { readBack: true }), /reading slot B back from .*: chunk 11 \(/)
  const { readBack } = await writeImage(target, source.manifest, streamOf('bad11.img', 11 * CHUNK + 5))
  t.same(readBack, new Set(), 'nothing read back while writing unless asked')
  await t.rejects(verifyImage(target, source.manifest, { skip: readBack }), /reading slot B back from .*: chunk 11 \(/)
  // chunk 3, zeros in the manifest, arrives with a byte set: refused before anything is zeroed
  const before = readRange(backing, FIRST_BYTE + 2 * CHUNK, 6 * CHUNK)
  await t.rejects(writeImage(target, source.manifest, streamOf('bad3.img', 3 * CHUNK + 5), { readBack: true }), /while writing: chunk 3 \(/)
  t.ok(readRange(backing, FIRST_BYTE + 2 * CHUNK, 6 * CHUNK).equals(before), 'the zero run is not zeroed')
})

t.test('read-back while writing: a chunk changed on the disk after its write is reported, the first bad one', async (t) => {
  const d = tmpDir(t)
  makeImage(`${d}/root.img`)
  const backing = sparseFile(`${d}/disk.img`, 24 * MiB)
  const dev = await loop(t, backing, { directIo: true })
  const source = await sourceFor(`${d}/root.img`, 'zstd')
  const target = { disk: dev, firstByte: FIRST_BYTE, name: 'slot B' }
  const seen: number[] = []
  // chunks 12 and 8 are damaged between their write and their read-back; 8 is the first bad one.
  // A byte is flipped (a byte set to a value is unchanged when the random chunk held it already:
  // once in 256 runs), through O_DIRECT as the writer reads (no page of the device cached beside it)
  const damage = async (index: number, at: number) => {
    seen.push(index)
    if (index !== 8 && index !== 12) return
    const file = DirectFile.open(dev, 'write')
    try {
      const [block] = alignedBuffers(1, DIRECT_ALIGN)
      await file.read(block!, DIRECT_ALIGN, at)
      block![100]! ^= 0xff
      await file.write(block!, DIRECT_ALIGN, at)
      await file.sync()
    } finally {
      file.close()
    }
  }
  await t.rejects(
    writeImage(target, source.manifest, source.input(), { readBack: true, beforeReadBack: damage }),
    new RegExp('reading slot B back from .*: chunk 8 \\('),
  )
  t.ok(seen.includes(8), 'chunk 8 was read back')
  t.notOk(
    seen.some((i) => KINDS[i] === '0' && i < KINDS.length - 1),
    'zeroed chunks are not read back while writing',
  )
  // written again cleanly, the rest is read back after the write: the zeroed chunks
  const seenAfter: number[] = []
  const { readBack } = await writeImage(target, source.manifest, source.input(), { readBack: true })
  await verifyImage(target, source.manifest, {
    skip: readBack,
    beforeReadBack: (i) => {
      seenAfter.push(i)
    },
  })
  t.same(
    seenAfter.sort((a, b) => a - b),
    [...KINDS].flatMap((k, i) => (k === '0' ? [i] : [])),
    'verifyImage reads back only what the writer did not',
  )
})

// A stream that stops short and one whose bytes are wrong are different failures: the first is a
// cut copy or download (imageTruncated), the second corruption (hashMismatch); each has its code.
t.test('a cut stream is imageTruncated, a changed or undecodable one hashMismatch', async (t) => {
  const d = tmpDir(t)
  const image = makeImage(`${d}/root.img`)
  const source = await sourceFor(`${d}/root.img`, 'zstd')
  const target = { disk: sparseFile(`${d}/disk.img`, 24 * MiB), firstByte: FIRST_BYTE, name: 'slot B' }
  const zst = fs.readFileSync(`${d}/root.img.zst`)
  fs.copyFileSync(`${d}/root.img`, `${d}/framed.img`)
  const framedManifest = await framedSource(`${d}/framed.img`)
  const framed = fs.readFileSync(`${d}/framed.img.zst`)
  const damagedFramed = Buffer.from(framed)
  // inside the frames of chunk 9 (data)
  const at9 = framedManifest.transport.frames!.slice(0, 9 * (CHUNK / FRAME)).reduce((a, b) => a + b, 0) + 100
  damagedFramed.writeUInt32LE((damagedFramed.readUInt32LE(at9) ^ 0xffffffff) >>> 0, at9)
  const input = (name: string, bytes: Buffer, kind: 'zstd' | 'raw-stream'): ImageInput => {
    fs.writeFileSync(`${d}/${name}`, bytes)
    const stream = fs.createReadStream(`${d}/${name}`, { highWaterMark: 300_000 })
    return kind === 'zstd' ? { kind, from: stream } : { kind, stream }
  }
  const changed = Buffer.from(image)
  changed[9 * CHUNK + 7]! ^= 1
  const damagedZst = Buffer.from(zst)
  damagedZst.writeUInt32LE((damagedZst.readUInt32LE(zst.length >> 1) ^ 0xffffffff) >>> 0, zst.length >> 1)
  const cases = [
    { name: 'zstd stream cut in half', input: input('cut.zst', zst.subarray(0, zst.length >> 1), 'zstd'), code: 'imageTruncated', message: /ends early/ },
    {
      name: 'raw stream cut inside chunk 5',
      input: input('cut.img', image.subarray(0, 5 * CHUNK + 100), 'raw-stream'),
      code: 'imageTruncated',
      message: /ends early/,
    },
    { name: 'raw stream with a changed byte in chunk 9', input: input('changed.img', changed, 'raw-stream'), code: 'hashMismatch', message: /chunk 9 / },
    // a few bytes more than the manifest, inside the last chunk's room: never trusted as the image
    {
      name: 'raw stream 3 bytes longer',
      input: input('longer.img', Buffer.concat([image, Buffer.from([1, 2, 3])]), 'raw-stream'),
      code: 'hashMismatch',
      message: /longer than its manifest/,
    },
    // raw files: cut inside and after a chunk, a changed byte, a longer one
    {
      name: 'raw file cut inside chunk 5',
      input: { kind: 'raw-file' as const, file: (fs.writeFileSync(`${d}/cut-file.img`, image.subarray(0, 5 * CHUNK + 100)), `${d}/cut-file.img`) },
      code: 'imageTruncated',
      message: /ends early/,
    },
    {
      name: 'raw file cut after chunk 3',
      input: { kind: 'raw-file' as const, file: (fs.writeFileSync(`${d}/cut3-file.img`, image.subarray(0, 3 * CHUNK)), `${d}/cut3-file.img`) },
      code: 'imageTruncated',
      message: /ends early/,
    },
    {
      name: 'raw file with a changed byte in chunk 9',
      input: { kind: 'raw-file' as const, file: (fs.writeFileSync(`${d}/changed-file.img`, changed), `${d}/changed-file.img`) },
      code: 'hashMismatch',
      message: /chunk 9 /,
    },
    {
      name: 'raw file 3 bytes longer',
      input: {
        kind: 'raw-file' as const,
        file: (fs.writeFileSync(`${d}/longer-file.img`, Buffer.concat([image, Buffer.from([1, 2, 3])])), `${d}/longer-file.img`),
      },
      code: 'hashMismatch',
      message: /longer than its manifest/,
    },
    {
      name: 'zstd stream with changed bytes',
      input: input('damaged.zst', damagedZst, 'zstd'),
      code: 'hashMismatch',
      message: /not a good zstd stream|does not match the signed manifest/,
    },
  ]
  const framedCases = [
    {
      name: 'zstd frames cut in half',
      input: input('cut-framed.zst', framed.subarray(0, framed.length >> 1), 'zstd'),
      code: 'imageTruncated',
      message: /ends early/,
    },
    {
      name: 'zstd frames from a file cut inside the last frame',
      input: {
        kind: 'zstd' as const,
        from: (fs.writeFileSync(`${d}/cut-file.zst`, framed.subarray(0, framed.length - 100)), `${d}/cut-file.zst`),
      },
      code: 'imageTruncated',
      message: /ends early: 13631488 of \d+ bytes .*in the frames of chunk 13 of 14/,
    },
    {
      name: 'zstd frames with changed bytes in chunk 9',
      input: input('damaged-framed.zst', damagedFramed, 'zstd'),
      code: 'hashMismatch',
      message: /not a good zstd stream after \d+ of \d+ bytes \(zstd: chunk 9's frames \(image bytes 9437184\.\.\) do not decompress/,
    },
    {
      name: 'zstd frames and 3 bytes more',
      input: input('longer-framed.zst', Buffer.concat([framed, Buffer.from([1, 2, 3])]), 'zstd'),
      code: 'hashMismatch',
      message: /longer than its manifest/,
    },
    {
      name: 'zstd frames from a file and 3 bytes more',
      input: {
        kind: 'zstd' as const,
        from: (fs.writeFileSync(`${d}/longer-file.zst`, Buffer.concat([framed, Buffer.from([1, 2, 3])])), `${d}/longer-file.zst`),
      },
      code: 'hashMismatch',
      message: /longer than its manifest/,
    },
    {
      // chunk 0 is random data: its frames are stored, all of one size, so each still decodes
      name: "zstd frames one frame on (chunk 0's first left out): caught by the chunk's hash read back",
      input: input('short-frame.zst', framed.subarray(framedManifest.transport.frames![0]!), 'zstd'),
      code: 'hashMismatch',
      message: /reading slot B back from .*: chunk 0 \(/,
    },
  ]
  for (const c of [...cases.map((c) => ({ ...c, manifest: source.manifest })), ...framedCases.map((c) => ({ ...c, manifest: framedManifest }))]) {
    const e = await writeImage(target, c.manifest, c.input, { readBack: true }).then(
      () => null,
      (e: unknown) => e as LabhostError,
    )
    t.match(e, { code: c.code, message: c.message }, `${c.name}: ${c.code} (${e?.message})`)
    t.equal(e?.exitCode, ExitCode[c.code as ErrorCode], `${c.name}: exit ${ExitCode[c.code as ErrorCode]}`)
  }
  t.not(ExitCode.imageTruncated, ExitCode.hashMismatch, 'two exit codes')
})

t.test('zstd frames: a download that fails midway is reported as its own error, the buffers all come back', async (t) => {
  const d = tmpDir(t)
  makeImage(`${d}/root.img`)
  const manifest = await framedSource(`${d}/root.img`)
  const target = { disk: sparseFile(`${d}/disk.img`, 24 * MiB), firstByte: FIRST_BYTE, name: 'slot B' }
  const zst = fs.readFileSync(`${d}/root.img.zst`)
  async function* failing() {
    yield zst.subarray(0, zst.length >> 1)
    throw new Error('connection reset by the test')
  }
  await t.rejects(writeImage(target, manifest, { kind: 'zstd', from: failing() }), /connection reset by the test/)
  // the same writer code runs again at once: nothing was left holding a buffer or a worker
  await writeImage(target, manifest, { kind: 'zstd', from: `${d}/root.img.zst` }, { readBack: true })
  await verifyImage(target, manifest)
  t.pass('a whole write after it verifies')
})

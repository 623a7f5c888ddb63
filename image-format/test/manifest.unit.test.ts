// A manifest is judged in this order: its signature by the trusted key (exit 30 when it has none
// or a wrong one, whatever else it holds), then its shape (exit 31 naming the field: sizes are
// whole numbers, hashes SHA-256 hex, chunk and frame lists fit the sizes, file names have no
// directory). Every refusal is one line and a hint — never a TypeError with a stack trace.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { type CliResult, failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import {
  CHUNK_SIZE,
  frameLength,
  frameSizeOf,
  framesPerChunk,
  generateKeyPair,
  hashChunks,
  keyFingerprint,
  MANIFEST_FORMAT,
  readManifest,
  readPrivateKey,
  readPublicKey,
  signManifest,
  verifyImageDir,
  verifyManifestSignature,
  type Manifest,
} from '../manifest.ts'

const dir = tmpDir(t, 'labhost-manifest-test-')
const keys = generateKeyPair(path.join(dir, 'keys'))
const key = readPrivateKey(keys.privateKeyFile)
const other = readPrivateKey(generateKeyPair(path.join(dir, 'other')).privateKeyFile)

// 2.5 MiB of image: three chunks, the last one short
const image = path.join(dir, 'image')
fs.mkdirSync(image)
fs.writeFileSync(
  `${image}/root.img`,
  crypto
    .createHash('sha512')
    .update('seed')
    .digest()
    .toString('hex')
    .repeat(Math.ceil((2.5 * CHUNK_SIZE) / 128))
    .slice(0, 2.5 * CHUNK_SIZE),
)
fs.writeFileSync(`${image}/root.img.zst`, Buffer.alloc(3000, 7))
fs.writeFileSync(`${image}/root.img.blocks`, Buffer.alloc(Math.ceil((2.5 * CHUNK_SIZE) / 4096) * 8, 1))
const img = hashChunks(`${image}/root.img`)
const part = (f: string) => {
  const h = hashChunks(`${image}/${f}`)
  return { file: f, size: h.size, sha256: h.sha256 }
}
const GOOD: Manifest = {
  format: MANIFEST_FORMAT,
  name: 'test',
  version: '1.0.0',
  recipeHash: 'ab'.repeat(32),
  createdAt: 1700000000,
  layout: { rootFsUuid: '6c1d1a2b-0a11-4b5e-9c3a-0000000000f0', slotSizeMiB: 8, slots: { A: 'rootA', B: 'rootB' } },
  image: { file: 'root.img', size: img.size, sha256: img.sha256, chunkSize: CHUNK_SIZE, chunks: img.chunks },
  transport: { ...part('root.img.zst'), compression: 'zstd', frames: [1000, 1000, 1000] },
  blocks: { ...part('root.img.blocks'), blockSize: 4096, hashBytes: 8 },
  signer: keyFingerprint(crypto.createPublicKey(key)),
}

/** An image directory whose manifest.json is `text`. */
function withManifest(t: Parameters<typeof tmpDir>[0], text: string): string {
  const d = tmpDir(t)
  for (const f of fs.readdirSync(image)) fs.symlinkSync(`${image}/${f}`, `${d}/${f}`)
  fs.writeFileSync(`${d}/manifest.json`, text)
  return d
}
const signed = (change: (m: Record<string, any>) => void, by = key): string => {
  const m = structuredClone(GOOD) as Record<string, any>
  change(m)
  return JSON.stringify(signManifest(m as Manifest, by))
}

const verify = (d: string) => runCli(['image', 'verify', d, '--key', keys.publicKeyFile])
const update = (d: string) =>
  runCli([
    'update',
    d,
    '--dry-run',
    '--trusted-key',
    keys.publicKeyFile,
    '--boot-file',
    path.join(dir, 'no-boot-file'),
    '--state-root',
    path.join(dir, 'no-state'),
  ])

function oneLine(t: Parameters<typeof tmpDir>[0] & { equal: Function; notMatch: Function }, r: CliResult): void {
  // verify's --key is the deprecated spelling of --trusted-key: its notice is a line of its own
  t.equal(
    r.stderr
      .trimEnd()
      .split('\n')
      .filter((l) => !l.startsWith('labhost: warning:')).length,
    2,
    'one line and a hint',
    failDiag(r),
  )
  t.notMatch(r.stderr, /TypeError|\n\s+at /, 'no stack trace')
}

t.test('the well-formed signed manifest passes', async (t) => {
  const r = await verify(withManifest(t, JSON.stringify(signManifest(GOOD, key))))
  t.equal(r.code, 0, 'image verify: OK', failDiag(r))
})

t.test('frames of a frame size: one per frameSize bytes of image, the last short; without frameSize one per chunk (older images)', async (t) => {
  t.equal(GOOD.transport.frameSize, undefined, 'the manifest above is an older image: a frame per chunk')
  const framed = signed((m) => {
    m.transport.frameSize = 512 << 10
    m.transport.frames = [600, 600, 600, 600, 600]
  })
  const r = await verify(withManifest(t, framed))
  t.equal(r.code, 0, 'image verify: OK', failDiag(r))
  const m = JSON.parse(framed) as Manifest
  t.equal(frameSizeOf(m), 512 << 10)
  t.equal(framesPerChunk(m), 2)
  t.same(
    [0, 1, 2, 3, 4].map((i) => frameLength(m, i)),
    [524288, 524288, 524288, 524288, 524288],
  )
  const short = { ...m, image: { ...m.image, size: m.image.size - 4096 } }
  t.equal(frameLength(short, 4), 520192, 'the last frame: what is left of the image')
  t.equal(frameSizeOf(GOOD), CHUNK_SIZE, 'without frameSize: a frame is a chunk')
  t.equal(framesPerChunk(GOOD), 1)
  t.equal(frameLength(GOOD, 2), CHUNK_SIZE / 2)
})

const wrongShape: [string, (m: Record<string, any>) => void, RegExp][] = [
  [
    'no image',
    (m) => {
      delete m.image
    },
    /: image: /,
  ],
  [
    'image is a number',
    (m) => {
      m.image = 5
    },
    /: image: /,
  ],
  [
    'a negative size',
    (m) => {
      m.image.size = -1
    },
    /: image\.size: /,
  ],
  [
    'a fractional size',
    (m) => {
      m.transport.size = 1.5
    },
    /: transport\.size: /,
  ],
  [
    'a size as a string',
    (m) => {
      m.image.size = '2621440'
    },
    /: image\.size: /,
  ],
  [
    'a chunk missing',
    (m) => {
      m.image.chunks.pop()
    },
    /: image\.chunks: .*3 chunks/,
  ],
  [
    'a chunk too many',
    (m) => {
      m.image.chunks.push('00'.repeat(32))
    },
    /: image\.chunks: /,
  ],
  [
    'a chunk hash too short',
    (m) => {
      m.image.chunks[1] = 'abcd'
    },
    /: image\.chunks\.1: /,
  ],
  [
    'a chunk hash not hex',
    (m) => {
      m.image.chunks[0] = 'z'.repeat(64)
    },
    /: image\.chunks\.0: /,
  ],
  [
    'a whole-file hash too long',
    (m) => {
      m.transport.sha256 += '00'
    },
    /: transport\.sha256: /,
  ],
  [
    'frames that do not add up to the transport size',
    (m) => {
      m.transport.frames = [1000, 1000, 999]
    },
    /: transport\.frames: /,
  ],
  [
    'a frame per chunk missing',
    (m) => {
      m.transport.frames = [1500, 1500]
    },
    /: transport\.frames: /,
  ],
  [
    'a frame size that does not divide the chunk size',
    (m) => {
      m.transport.frameSize = 3 << 16
    },
    /: transport\.frameSize: 196608 bytes does not divide the chunk size 1048576/,
  ],
  [
    'a frame size that splits blocks',
    (m) => {
      m.transport.frameSize = 2048
    },
    /: transport\.frameSize: 2048 bytes is not a multiple of the block size 4096/,
  ],
  [
    'a frame size of 0',
    (m) => {
      m.transport.frameSize = 0
    },
    /: transport\.frameSize: /,
  ],
  [
    'a frame per chunk where the frame size asks for one per 512 KiB',
    (m) => {
      m.transport.frameSize = 512 << 10
    },
    /: transport\.frames: 3 frames of 3000 bytes, where 2621440 bytes of image make 5 frames of 524288/,
  ],
  [
    'a frame too many for the frame size',
    (m) => {
      m.transport.frameSize = 512 << 10
      m.transport.frames = [500, 500, 500, 500, 500, 500]
    },
    /: transport\.frames: 6 frames/,
  ],
  [
    'frames of the frame size that do not add up to the transport size',
    (m) => {
      m.transport.frameSize = 512 << 10
      m.transport.frames = [600, 600, 600, 600, 601]
    },
    /: transport\.frames: 5 frames of 3001 bytes/,
  ],
  [
    'a block index of the wrong size',
    (m) => {
      m.blocks.size += 8
    },
    /: blocks\.size: /,
  ],
  [
    'a file name with a directory',
    (m) => {
      m.image.file = '../../etc/shadow'
    },
    /: image\.file: /,
  ],
  [
    'a file name with a slash',
    (m) => {
      m.transport.file = 'sub/root.img.zst'
    },
    /: transport\.file: /,
  ],
  [
    'a dot file',
    (m) => {
      m.blocks.file = '.hidden'
    },
    /: blocks\.file: /,
  ],
  [
    'an unknown key',
    (m) => {
      m.extra = true
    },
    /: \(top level\): .*extra/,
  ],
  [
    'an unknown key in a part',
    (m) => {
      m.image.mode = 'raw'
    },
    /: image: .*mode/,
  ],
  [
    'another format',
    (m) => {
      m.format = 'labhost-manifest/9'
    },
    /: format: /,
  ],
  [
    'a chunk size of 0',
    (m) => {
      m.image.chunkSize = 0
    },
    /: image\.chunkSize: /,
  ],
  [
    'a signer that is not a fingerprint',
    (m) => {
      m.signer = { name: 'x' }
    },
    /: signer: /,
  ],
  [
    'a name with a slash',
    (m) => {
      m.name = '../test'
    },
    /: name: /,
  ],
]

/** What reading `text` as image verify does (signature, then shape) and as update does (readManifest, before the key). */
function judged(t: Parameters<typeof tmpDir>[0], text: string): { verify: unknown; read: unknown } {
  const file = `${withManifest(t, text)}/manifest.json`
  const outcome = (fn: () => unknown) => {
    try {
      fn()
      return null
    } catch (e) {
      return e
    }
  }
  return { verify: outcome(() => verifyImageDir(file, readPublicKey(keys.publicKeyFile))), read: outcome(() => readManifest(file)) }
}

t.test('signed by the trusted key, but the wrong shape: manifestInvalid naming the field', async (t) => {
  for (const [name, change, field] of wrongShape) {
    const r = judged(t, signed(change))
    for (const [how, e] of Object.entries(r)) t.match(e, { name: 'LabhostError', code: 'manifestInvalid', message: field }, `${name}: ${how}`)
  }
})

const garbage: [string, string][] = [
  ['an empty object', '{}'],
  ['null', 'null'],
  ['a number', '42'],
  ['a list', '[1,2]'],
  ['fields of the wrong type, unsigned', '{"format":"labhost-manifest/1","image":null,"transport":5,"layout":"x"}'],
  ['a signature that is not a string', '{"format":"labhost-manifest/1","image":{"file":7},"signature":{"a":1}}'],
  ['the good fields, unsigned', JSON.stringify({ ...GOOD, signature: undefined })],
]
const forged: [string, string][] = [
  ['garbage fields, a signature of garbage', '{"format":"labhost-manifest/1","image":null,"transport":[],"signer":{},"signature":"not base64!"}'],
  [
    'garbage fields, a signature of the right length',
    JSON.stringify({ format: MANIFEST_FORMAT, image: 'root.img', transport: null, signature: Buffer.alloc(64).toString('base64') }),
  ],
  [
    'garbage fields signed by another key',
    signed((m) => {
      m.image = null
      m.blocks = []
    }, other),
  ],
  ['a good manifest signed by another key', signed(() => {}, other)],
  ['a good manifest changed after signing', JSON.stringify({ ...JSON.parse(signed(() => {})), version: '9.9.9' })],
]

t.test('unsigned or wrongly signed: signatureInvalid whatever the other fields hold', async (t) => {
  for (const [name, text] of garbage) {
    const r = judged(t, text)
    // update reads the manifest before it has the key at hand (image-format/source.ts): what has no
    // signature it refuses at once; a signature it cannot check yet, after the shape
    for (const [how, e] of Object.entries(r)) t.match(e, { name: 'LabhostError', code: 'signatureInvalid' }, `${name}: ${how}`)
  }
  for (const [name, text] of forged) t.match(judged(t, text).verify, { name: 'LabhostError', code: 'signatureInvalid' }, `${name}: verify`)
})

t.test('through the CLI: the exit code and one line, no stack trace', async (t) => {
  const shape = withManifest(
    t,
    signed((m) => {
      m.image.chunks.pop()
    }),
  )
  const unsigned = withManifest(t, garbage[4]![1])
  const forgery = withManifest(t, forged[0]![1])
  const [a, b, c, d, e, f] = await Promise.all([verify(shape), update(shape), verify(unsigned), update(unsigned), verify(forgery), update(forgery)])
  for (const [what, r, code] of [
    ['image verify, wrong shape', a, ExitCode.manifestInvalid],
    ['update, wrong shape', b, ExitCode.manifestInvalid],
    ['image verify, unsigned garbage', c, ExitCode.signatureInvalid],
    ['update, unsigned garbage', d, ExitCode.signatureInvalid],
    ['image verify, garbage with a forged signature', e, ExitCode.signatureInvalid],
    // update checks the signature as it reads the manifest (image-format/source.ts takes the key)
    ['update, garbage with a forged signature', f, ExitCode.signatureInvalid],
  ] as const) {
    t.equal(r.code, code, `${what}: exit ${code}`, failDiag(r))
    oneLine(t, r)
  }
  t.match(a.stderr, /manifest\.json: image\.chunks: /)
})

t.test('verifyManifestSignature on anything JSON can hold: a LabhostError, never a TypeError', async (t) => {
  const pub = readPublicKey(keys.publicKeyFile)
  for (const v of [null, 0, 'x', [], {}, { signature: 5 }, { signature: '%%%' }, { signature: '', signer: 'me' }, { image: null, signature: 'AAAA' }]) {
    t.throws(() => verifyManifestSignature(v, pub, 'm.json'), { name: 'LabhostError', code: 'signatureInvalid' }, JSON.stringify(v))
  }
  t.equal(verifyManifestSignature(JSON.parse(JSON.stringify(signManifest(GOOD, key))), pub, 'm.json').version, '1.0.0', 'the good one is returned, typed')
})

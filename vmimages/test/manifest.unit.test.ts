// A VM base image's manifest is signed by the same key as a root image's, so the signature cannot
// tell them apart: the kind must. A VM image manifest is refused wherever a root image is wanted
// (labhost image verify, labhost update) and a root image manifest by vm-image pull — exit 42,
// after the signature (a forged one is still exit 30). Names are file names: confined before use.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode, LabhostError } from '../../lib/errors.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import {
  CHUNK_SIZE,
  generateKeyPair,
  keyFingerprint,
  MANIFEST_FORMAT,
  parseSignedManifest,
  readPrivateKey,
  signManifest,
  type Manifest,
} from '../../image-format/manifest.ts'
import { openSource } from '../../image-format/source.ts'
import { parseSignedVmManifest, signVmManifest, type VmManifest } from '../manifest.ts'

const dir = tmpDir(t, 'labhost-vm-manifest-')
const keys = generateKeyPair(path.join(dir, 'keys'))
const key = readPrivateKey(keys.privateKeyFile)
const pub = crypto.createPublicKey(key)
const other = readPrivateKey(generateKeyPair(path.join(dir, 'other')).privateKeyFile)

const h = (s: string) => crypto.createHash('sha256').update(s).digest('hex')
const VM = signVmManifest(
  {
    format: 'labhost-vm-image/1',
    kind: 'vm-image',
    name: 'win11',
    displayName: 'Windows 11 Lab',
    os: 'windows',
    default: true,
    version: '2.0.0',
    createdAt: 1700000000,
    image: { file: 'win11-2.0.0.qcow2', size: CHUNK_SIZE + 5, sha256: h('all'), chunkSize: CHUNK_SIZE, chunks: [h('0'), h('1')] },
    qcow2: { virtualSize: 1 << 30, clusterSize: 65536 },
  },
  key,
  pub,
)
const ROOT: Manifest = signManifest(
  {
    format: MANIFEST_FORMAT,
    name: 'test',
    version: '1.0.0',
    recipeHash: 'ab'.repeat(32),
    createdAt: 1700000000,
    layout: { rootFsUuid: '6c1d1a2b-0a11-4b5e-9c3a-0000000000f0', slotSizeMiB: 8, slots: { A: 'rootA', B: 'rootB' } },
    image: { file: 'root.img', size: 5, sha256: h('x'), chunkSize: CHUNK_SIZE, chunks: [h('x')] },
    transport: { file: 'root.img.zst', size: 3, sha256: h('y'), compression: 'zstd' },
    signer: keyFingerprint(pub),
  },
  key,
)

const code = (fn: () => unknown): string | null => {
  try {
    fn()
    return null
  } catch (e) {
    return e instanceof LabhostError ? e.code : `not a LabhostError: ${e}`
  }
}

/** VM with `change` applied, signed again by `by`. */
const resigned = (change: (m: Record<string, any>) => void, by = key): string => {
  const m = structuredClone(VM) as Record<string, any>
  change(m)
  delete m.signature
  const sig = crypto.sign(null, Buffer.from(canonical(m)), by).toString('base64')
  return JSON.stringify({ ...m, signature: sig })
}
const canonical = (v: unknown): string => {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`
  if (v !== null && typeof v === 'object')
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as any)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonical((v as any)[k])}`)
      .join(',')}}`
  return JSON.stringify(v)
}

t.test('a signed VM image manifest parses; its kind is vm-image', async (t) => {
  const m: VmManifest = parseSignedVmManifest(JSON.stringify(VM), pub, 'vm')
  t.equal(m.kind, 'vm-image')
  t.equal(m.image.file, 'win11-2.0.0.qcow2')
  t.equal(
    code(() =>
      parseSignedVmManifest(
        resigned(() => {}),
        pub,
        'vm',
      ),
    ),
    null,
    "the test's own signing agrees with signVmManifest",
  )
})

t.test('a VM image manifest is never a root image: refused with exit 42 by the root image checks', async (t) => {
  t.equal(
    code(() => parseSignedManifest(JSON.stringify(VM), pub, 'vm')),
    'manifestKind',
  )
  // even one that also claims the root format: its kind says vm-image
  t.equal(
    code(() =>
      parseSignedManifest(
        resigned((m) => {
          m.format = MANIFEST_FORMAT
        }),
        pub,
        'vm',
      ),
    ),
    'manifestKind',
  )
  const d = path.join(dir, 'vmdir')
  fs.mkdirSync(d)
  fs.writeFileSync(path.join(d, 'manifest.json'), JSON.stringify(VM))
  await t.rejects(openSource(d, pub), { code: 'manifestKind' }, "the updater's source refuses it")
  const verify = await runCli(['image', 'verify', d, '--key', keys.publicKeyFile])
  t.equal(verify.code, ExitCode.manifestKind, 'labhost image verify: exit 42')
  t.match(verify.stderr, /manifest of a VM base image .*not of a root image/)
  const update = await runCli([
    'update',
    d,
    '--dry-run',
    '--trusted-key',
    keys.publicKeyFile,
    '--boot-file',
    path.join(dir, 'no-boot'),
    '--state-root',
    path.join(dir, 'no-state'),
  ])
  t.equal(update.code, ExitCode.manifestKind, 'labhost update: exit 42', failDiag(update))
})

t.test("a root image manifest is never a VM base: refused with exit 42 by vm-image pull's check", async (t) => {
  t.equal(
    code(() => parseSignedVmManifest(JSON.stringify(ROOT), pub, 'root')),
    'manifestKind',
  )
  t.equal(
    code(() => parseSignedManifest(JSON.stringify(ROOT), pub, 'root')),
    null,
    'it is a good root manifest',
  )
})

t.test('the signature comes first: a forged manifest of either kind is exit 30, not 42', async (t) => {
  t.equal(
    code(() => parseSignedVmManifest(JSON.stringify(signManifest(ROOT, other)), pub, 'root')),
    'signatureInvalid',
  )
  t.equal(
    code(() =>
      parseSignedVmManifest(
        resigned(() => {}, other),
        pub,
        'vm',
      ),
    ),
    'signatureInvalid',
  )
  t.equal(
    code(() => parseSignedVmManifest(JSON.stringify({ ...VM, default: false }), pub, 'vm')),
    'signatureInvalid',
    'a changed field',
  )
  t.equal(
    code(() => parseSignedVmManifest(JSON.stringify({ ...VM, signature: undefined }), pub, 'vm')),
    'signatureInvalid',
    'unsigned',
  )
})

t.test('names and sizes are confined even when signed: no path separators, no dots-only, sizes that match the chunks', async (t) => {
  const bad: [string, (m: Record<string, any>) => void][] = [
    [
      'name with a slash',
      (m) => {
        m.name = '../etc'
        m.image.file = '../etc-2.0.0.qcow2'
      },
    ],
    [
      'name of dots',
      (m) => {
        m.name = '..'
        m.image.file = '..-2.0.0.qcow2'
      },
    ],
    [
      'file with a directory',
      (m) => {
        m.image.file = 'x/win11-2.0.0.qcow2'
      },
    ],
    [
      'file other than name-version.qcow2',
      (m) => {
        m.image.file = 'catalogue.ini'
      },
    ],
    [
      'hidden file',
      (m) => {
        m.image.file = '.win11-2.0.0.qcow2'
      },
    ],
    [
      'version with a slash',
      (m) => {
        m.version = '2/../../x'
        m.image.file = `win11-${m.version}.qcow2`
      },
    ],
    [
      'version of dots',
      (m) => {
        m.version = '..'
        m.image.file = 'win11-...qcow2'
      },
    ],
    [
      'display name with a newline (INI injection)',
      (m) => {
        m.displayName = 'Win\n[evil]'
      },
    ],
    [
      'size larger than the chunks',
      (m) => {
        m.image.size = 3 * CHUNK_SIZE
      },
    ],
    [
      'negative size',
      (m) => {
        m.image.size = -1
      },
    ],
    [
      'fractional size',
      (m) => {
        m.image.size = 1.5
      },
    ],
    [
      'other chunk size',
      (m) => {
        m.image.chunkSize = 4096
      },
    ],
    [
      'unknown key',
      (m) => {
        m.extra = 1
      },
    ],
  ]
  for (const [what, change] of bad)
    t.equal(
      code(() => parseSignedVmManifest(resigned(change), pub, 'vm')),
      'manifestInvalid',
      what,
    )
})

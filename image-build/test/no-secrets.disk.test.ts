// docs/design.md (security model): the image holds no SSH host keys (the host's come from /persistent/ssh, made by the
// installer) and "private keys never enter an image; the public key is at
// /etc/labhost/trusted.pub". Checked on the `test` image (the cached build the updater tests
// share): its root filesystem, mounted read-only, holds no file named like an SSH host key or any
// private key and no file with a PEM private key in it; the raw image bytes (free blocks too)
// hold no PEM private key block and neither the signing key's PEM body nor its raw 32-byte seed.
// The `host` image (debootstrap, openssh-server) is not built here: it takes minutes.
// The scanner is shown to catch a key planted into a copy of the image (debugfs).
import fs from 'node:fs'
import path from 'node:path'
import crypto from 'node:crypto'
import t from 'tap'
import { run } from '../../lib/exec.ts'
import { withLoop, withMount } from '../../lib/loop.ts'
import { tmpDir } from '../../test-support/test-helpers.ts'
import { buildImages, type Images } from '../../test-support/update-fixtures.ts'

const dir = tmpDir(t, 'labhost-no-secrets-test-')
let images: Images

t.before(async () => {
  images = await buildImages(dir, { full: true })
})

const KEY_NAME = /^ssh_host_\w+_key$|^id_(rsa|dsa|ecdsa|ed25519)(_sk)?$|\.(key|pem|p12|pfx)$/i
// a PEM private key block: its armour line followed by base64 (a bare armour string, as in the
// labhost executable's own code that refuses to serve keys, is not a key)
const PEM_PRIVATE = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----\r?\n[A-Za-z0-9+/=\r\n]{40}/

interface Findings {
  files: number
  keyNames: string[]
  pemFiles: string[]
  trustedPub: string | null
}

/** Walk a mounted root filesystem without following links. */
function scanTree(root: string): Findings {
  const f: Findings = { files: 0, keyNames: [], pemFiles: [], trustedPub: null }
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      const rel = '/' + path.relative(root, p)
      if (KEY_NAME.test(e.name)) f.keyNames.push(rel)
      if (e.isDirectory()) walk(p)
      else if (e.isFile()) {
        f.files++
        if (PEM_PRIVATE.test(fs.readFileSync(p).toString('latin1'))) f.pemFiles.push(rel)
      }
    }
  }
  walk(root)
  const pub = path.join(root, 'etc/labhost/trusted.pub')
  f.trustedPub = fs.existsSync(pub) ? fs.readFileSync(pub, 'utf8') : null
  return f
}

const scanImage = (img: string) => withLoop(img, { readOnly: true }, (dev) => withMount(dev, async (mnt) => scanTree(mnt), { readOnly: true }))

/** Offsets of the needles in the raw image (its free blocks, slack and metadata included). */
function scanRaw(img: string, needles: Record<string, Buffer>): Record<string, number[]> {
  const out: Record<string, number[]> = Object.fromEntries(Object.keys(needles).map((k) => [k, []]))
  const data = fs.readFileSync(img)
  for (const [name, n] of Object.entries(needles)) for (let at = data.indexOf(n); at >= 0; at = data.indexOf(n, at + 1)) out[name]!.push(at)
  const pem = data.toString('latin1')
  out.pemBlock = [...pem.matchAll(new RegExp(PEM_PRIVATE.source, 'g'))].map((m) => m.index)
  return out
}

/** The signing key's secrets as they could appear on disk: its PEM body and its 32-byte seed. */
function signingSecrets(): Record<string, Buffer> {
  const pem = fs.readFileSync(images.keys.privateKeyFile, 'utf8')
  const body = pem
    .split('\n')
    .filter((l) => l && !l.startsWith('-----'))
    .join('')
  const der = crypto.createPrivateKey(pem).export({ format: 'der', type: 'pkcs8' })
  return { pemBody: Buffer.from(body), seed: der.subarray(der.length - 32) }
}

t.test('the test image: no SSH host key, no private key file or PEM block, not the signing key; the public key is there', async (t) => {
  const img = `${images.v1}/root.img`
  const found = await scanImage(img)
  t.ok(found.files > 100, `the walk read the whole tree (${found.files} files)`)
  t.equal(found.trustedPub, fs.readFileSync(images.keys.publicKeyFile, 'utf8'), "/etc/labhost/trusted.pub is the signing key's public half")
  t.same(found.keyNames, [], 'no file named like an SSH host key or a private key (ssh_host_*_key, id_*, *.key, *.pem)')
  t.same(found.pemFiles, [], 'no file holds a PEM private key')
  const raw = scanRaw(img, signingSecrets())
  t.same(raw, { pemBody: [], seed: [], pemBlock: [] }, "the raw image bytes hold no PEM private key block and neither the signing key's PEM body nor its seed")
})

t.test('control: a key planted into a copy of the image is found by every check', async (t) => {
  const d = tmpDir(t)
  const img = `${d}/root.img`
  await run('cp', ['--sparse=always', `${images.v1}/root.img`, img])
  await run('debugfs', ['-w', '-R', 'mkdir /etc/ssh', img])
  await run('debugfs', ['-w', '-R', `write ${images.keys.privateKeyFile} /etc/ssh/ssh_host_ed25519_key`, img])
  const found = await scanImage(img)
  t.same(found.keyNames, ['/etc/ssh/ssh_host_ed25519_key'], 'the name is found')
  t.same(found.pemFiles, ['/etc/ssh/ssh_host_ed25519_key'], 'the PEM block in it is found')
  const raw = scanRaw(img, signingSecrets())
  t.equal(raw.pemBody!.length, 1, "the raw scan finds the signing key's PEM body")
  t.equal(raw.pemBlock!.length, 1, 'and the PEM block')
  t.same(raw.seed, [], 'the seed is not in a PEM file as raw bytes (it is base64 there): the seed needle is for raw copies of the key')
})

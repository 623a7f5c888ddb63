// Fills the image cache with the debootstrap host image that vm-tests/host-image boots, while the
// VM tests run on the other core (npm test runs it before the unit and disk tests, and that VM
// test last), so its minute-and-a-half build is not on the VM tests' path.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { buildImage } from '../image-build/build.ts'
import { generateKeyPair } from '../image-build/manifest.ts'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-prebuild-'))
try {
  const keys = generateKeyPair(path.join(dir, 'keys'))
  const r = await buildImage('host', { out: path.join(dir, 'host'), keyFile: keys.privateKeyFile })
  console.log(`host image ${r.cached ? 'already in the cache' : `built into the cache in ${r.seconds.toFixed(0)} s`}`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}

// Fills the image cache with the debootstrap host image that vm-tests/host-image boots, while the
// VM tests run on the other core (npm test runs it before the unit and disk tests, and that VM
// test last), so its minute-and-a-half build is not on the VM tests' path.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { buildImage } from '../image-build/build.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-prebuild-'))
try {
  // the signer is part of the cache key: the VM test signs with the same cached test key
  const r = await buildImage('host', { out: path.join(dir, 'host'), keyFile: cacheKeys().privateKeyFile })
  console.log(`host image ${r.cached ? 'already in the cache' : `built into the cache in ${r.seconds.toFixed(0)} s`}`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}

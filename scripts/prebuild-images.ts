// Fills the image cache, while the VM tests run on the other core (npm test runs this before the
// unit and disk tests): first the two lean images of the update campaign (also crash-replay's),
// which the second VM test needs, then the debootstrap host image that vm-tests/host-image boots,
// so their builds are not on the VM tests' path.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { buildImage } from '../image-build/build.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { buildCampaignImages } from '../vm-tests/campaign.ts'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-prebuild-'))
try {
  const t0 = Date.now()
  await buildCampaignImages(path.join(dir, 'campaign'))
  console.log(`campaign images in the cache after ${((Date.now() - t0) / 1000).toFixed(0)} s`)
  // the signer is part of the cache key: the VM test signs with the same cached test key
  const r = await buildImage('host', { out: path.join(dir, 'host'), keyFile: cacheKeys().privateKeyFile })
  console.log(`host image ${r.cached ? 'already in the cache' : `built into the cache in ${r.seconds.toFixed(0)} s`}`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}

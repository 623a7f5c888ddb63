// Fills the image cache, while the VM tests run on the other core (npm test runs this before the
// unit and disk tests): first the two lean images of the update campaign (also crash-replay's and
// the UEFI test's), which the second VM test needs, then the debootstrap host image that
// vm-tests/host-image boots, then the lean images of the stick and UEFI tests, so their builds
// are not on the VM tests' path, and last the installer systems of sticks and netboot.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { buildImage } from '../image-build/build.ts'
import { cacheKeys } from '../image-build/cache-keys.ts'
import { installerSystemRecipe } from '../image-build/netboot.ts'
import { buildRollbackImages } from '../vm-tests/rollback-campaign.ts'
import { buildCampaignImages } from '../vm-tests/campaign.ts'
import { leanBrokenRecipe, leanEspRecipe } from '../vm-tests/fixtures/lean-image.ts'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'labhost-prebuild-'))
try {
  const t0 = Date.now()
  await buildCampaignImages(path.join(dir, 'campaign'))
  console.log(`campaign images in the cache after ${((Date.now() - t0) / 1000).toFixed(0)} s`)
  // the signer is part of the cache key: the VM tests sign with the same cached test key
  const keyFile = cacheKeys().privateKeyFile
  // the debootstrap host image that vm-tests/host-image boots (fourth), then the lean ones of the
  // stick test (both firmware types) and the UEFI update test's failing 1.5.0, which come last
  const r = await buildImage('host', { out: path.join(dir, 'host'), keyFile })
  console.log(`host image ${r.cached ? 'already in the cache' : `built into the cache in ${r.seconds.toFixed(0)} s`}`)
  const t1 = Date.now()
  const lean: [string, (file: string) => string][] = [
    ['lean-esp', leanEspRecipe],
    ['broken', leanBrokenRecipe],
  ]
  for (const [name, recipe] of lean) await buildImage(recipe(path.join(dir, `${name}.yaml`)), { out: path.join(dir, name), keyFile })
  console.log(`lean images of the stick and UEFI tests in the cache after ${((Date.now() - t1) / 1000).toFixed(0)} s`)
  // the test image that image-boot converts into a VM base, and the rollback campaign's failing
  // 3.0.0: built here on this core rather than in the VM lane
  const t2 = Date.now()
  await buildImage('test', { out: path.join(dir, 'test'), keyFile })
  await buildRollbackImages(path.join(dir, 'rollback'))
  console.log(`test and rollback images in the cache after ${((Date.now() - t2) / 1000).toFixed(0)} s`)
  // the installer system of `image stick` (install-campaign, the sixth VM test, and the stick
  // tests) and its variant with aria2c of `netboot --torrent`: built once here, not by whichever
  // disk tests ask first (two at once would each build it)
  const t3 = Date.now()
  for (const torrent of [false, true]) await buildImage(installerSystemRecipe(dir, torrent), { out: path.join(dir, `installer-${torrent}`), keyFile })
  console.log(`installer systems in the cache after ${((Date.now() - t3) / 1000).toFixed(0)} s`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}

// A signing key pair kept in the cache for the test suite. The signer is part of an image's cache
// key, so tests that build the same recipe with this key share one cached build (npm test
// prebuilds the host image with it beside the VM tests). Never a key to sign real images with.
import fs from 'node:fs'
import path from 'node:path'
import { cacheRoot } from './debian-packages.ts'
import { generateKeyPair } from '../image-format/manifest.ts'

export function cacheKeys(): { privateKeyFile: string; publicKeyFile: string } {
  const dir = path.join(cacheRoot(), 'test-keys')
  const privateKeyFile = path.join(dir, 'labhost-signing.key')
  const publicKeyFile = path.join(dir, 'labhost-signing.pub')
  if (fs.existsSync(privateKeyFile) && fs.existsSync(publicKeyFile)) return { privateKeyFile, publicKeyFile }
  // made in a side directory and renamed into place, so two processes never see half a key
  const tmp = `${dir}.${process.pid}`
  generateKeyPair(tmp)
  try {
    fs.renameSync(tmp, dir)
  } catch {
    fs.rmSync(tmp, { recursive: true, force: true }) // another process was first: use its pair
  }
  return { privateKeyFile, publicKeyFile }
}

// labhost vm-image publish: a qcow2 base image into a directory that hosts pull from — the file as
// NAME-VERSION.qcow2, its signed manifest (manifest.json) and its .torrent. The qcow2 checks are
// made on the copy that is published, not on the original (which could change meanwhile): format
// qcow2, no backing file of its own, `qemu-img check` clean.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError, isLabhostError } from '../lib/errors.ts'
import { CHUNK_SIZE, hashChunks, readPrivateKey } from '../image-format/manifest.ts'
import { makeTorrent } from '../image-format/torrent.ts'
import { syncDir, writeDurable } from '../lib/durable.ts'
import { baseFileName, BaseName, BaseVersion, DisplayName, OsType, signVmManifest, VM_MANIFEST_FILE, type VmManifest } from './manifest.ts'
import { checkImage, holder, imageInfo } from './qcow2.ts'

export interface PublishVmOptions {
  file: string
  name: string
  version: string
  os: string
  displayName?: string
  isDefault: boolean
  signingKey: string
  out: string
  trackers: string[]
  webSeeds?: string[]
  log?: (line: string) => void
}

export interface PublishedVm {
  manifestFile: string
  imageFile: string
  torrentFile: string
  infoHash: string
  manifest: VmManifest
}

const invalid = (file: string, why: string, hint: string, cause?: unknown) =>
  new LabhostError('vmImageInvalid', `${file} ${why}`, `${hint}; nothing was published`, {}, { cause })

/** The qcow2 checks; throws vmImageInvalid (exit 70). */
export async function checkBaseImage(file: string, shownAs = file): Promise<{ virtualSize: number; clusterSize: number }> {
  let info
  try {
    info = await imageInfo(file, { shared: false })
  } catch (e) {
    if (!isLabhostError(e) || e.code !== 'toolFailed') throw e
    throw invalid(shownAs, `cannot be read by qemu-img: ${e.message}`, 'give a qcow2 file that no VM has open', e)
  }
  if (info.format !== 'qcow2') throw invalid(shownAs, `is a ${info.format} image, not qcow2`, 'convert it: qemu-img convert -O qcow2 IN OUT')
  if (info.backingFile)
    throw invalid(shownAs, `has a backing file of its own (${info.backingFile})`, 'a base must stand alone: qemu-img convert -O qcow2 IN OUT flattens it')
  const problem = await checkImage(file)
  if (problem) throw invalid(shownAs, problem, 'repair it (qemu-img check -r all) or make it again')
  return { virtualSize: info.virtualSize, clusterSize: info.clusterSize ?? 65536 }
}

export async function publishVmImage(o: PublishVmOptions): Promise<PublishedVm> {
  const usage = (what: string, r: { success: boolean }, hint: string) => {
    if (!r.success) throw new LabhostError('usage', what, hint)
  }
  usage(`--name ${JSON.stringify(o.name)} is not a base name`, BaseName.safeParse(o.name), 'lower-case letters, digits and dashes, e.g. --name win11-lab')
  usage(`--version ${JSON.stringify(o.version)} is not a version`, BaseVersion.safeParse(o.version), 'starts with a digit, e.g. --version 2.0.0')
  usage(`--os ${JSON.stringify(o.os)} is not an OS type`, OsType.safeParse(o.os), 'a lower-case word, e.g. --os windows or --os linux')
  usage(
    `--display-name ${JSON.stringify(o.displayName)} cannot be a catalogue value`,
    DisplayName.safeParse(o.displayName ?? o.name),
    'one line of printable text without [ ] = ; #, at most 100 characters',
  )
  if (!fs.existsSync(o.file) || !fs.statSync(o.file).isFile())
    throw new LabhostError('notFound', `${o.file} is not a file`, 'give the qcow2 base image to publish')
  const key = readPrivateKey(o.signingKey)
  const publicKey = crypto.createPublicKey(key)
  // a VM running on the original is still changing it: refuse before copying
  const busy = await holder(o.file)
  if (busy.state === 'in-use') throw invalid(o.file, 'is in use by a running QEMU', 'shut the VM down first')
  fs.mkdirSync(o.out, { recursive: true })
  const fileName = baseFileName(o.name, o.version)
  const target = path.join(o.out, fileName)
  const temp = path.join(o.out, `.${fileName}.partial`)
  try {
    o.log?.(`copying ${o.file} to ${target}`)
    fs.copyFileSync(o.file, temp, fs.constants.COPYFILE_FICLONE)
    const qcow2 = await checkBaseImage(temp, o.file)
    const h = hashChunks(temp, CHUNK_SIZE)
    const fd = fs.openSync(temp, 'r')
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(temp, target)
    syncDir(o.out)
    const manifest = signVmManifest(
      {
        format: 'labhost-vm-image/1',
        kind: 'vm-image',
        name: o.name,
        displayName: o.displayName ?? o.name,
        os: o.os,
        default: o.isDefault,
        version: o.version,
        createdAt: Math.floor(Number(process.env.SOURCE_DATE_EPOCH ?? Date.now() / 1000)),
        image: { file: fileName, size: h.size, sha256: h.sha256, chunkSize: CHUNK_SIZE, chunks: h.chunks },
        qcow2,
      },
      key,
      publicKey,
    )
    const manifestFile = path.join(o.out, VM_MANIFEST_FILE)
    const torrent = await makeTorrent(target, { trackers: o.trackers, webSeeds: o.webSeeds })
    writeDurable(manifestFile, JSON.stringify(manifest, null, 2) + '\n')
    return { manifestFile, imageFile: target, torrentFile: torrent.torrentFile, infoHash: torrent.infoHash, manifest }
  } finally {
    fs.rmSync(temp, { force: true })
  }
}

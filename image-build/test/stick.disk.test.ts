// labhost image stick: layout of the stick image, and refusals before anything is made.
import fs from 'node:fs'
import t from 'tap'
import { ExitCode } from '../../lib/errors.ts'
import { run } from '../../lib/exec.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'
import { isValid, openGptDisk, readGpt } from '../../bootloader/gpt.ts'
import { cacheKeys } from '../cache-keys.ts'

const dir = tmpDir(t, 'labhost-stick-test-')
// the suite's key: the signer is part of the image cache's key, so the test image and the stick
// system come from the cache (a fresh key here cost a full build of both on every run)
const key = cacheKeys().privateKeyFile
const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' } as Record<string, string>

t.before(async () => {
  const b = await runCli(['image', 'build', 'test', '--out', `${dir}/image`, '--key', key])
  if (b.code !== 0) throw new Error(b.stderr)
  fs.writeFileSync(`${dir}/install.yaml`, CONFIG)
})

const CONFIG =
  'models:\n  - { vendor: "Dell Inc.", product: "OptiPlex 7010" }\ndisks:\n  ssd: { rotational: false, minSizeGiB: 0.5 }\n  hdd: { rotational: true, minSizeGiB: 0.05 }\n'

t.test('a bootable GPT stick with the system and a FAT data partition', async (t) => {
  const r = await runCli(['image', 'stick', '--image', `${dir}/image`, '--config', `${dir}/install.yaml`, '--out', `${dir}/stick.img`, '--key', key])
  t.equal(r.code, 0, 'exits 0', failDiag(r))
  const disk = openGptDisk(`${dir}/stick.img`)
  const gpt = readGpt(disk)
  disk.close()
  t.ok(isValid(gpt.primary) && isValid(gpt.backup))
  t.same(
    gpt.entries.map((e) => [e.name, e.legacyBootable]),
    [
      ['labhost-stick', true],
      ['LABHOST', false],
      ['esp', false],
    ],
  )
  // UEFI: an EFI system partition whose removable-media path holds an EFI executable (PE, 'MZ')
  const esp = gpt.entries[2]!
  t.equal(esp.typeGuid.toUpperCase(), 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', 'partition 3 is an EFI system partition')
  const efi = `${dir}/BOOTX64.EFI`
  await run('mcopy', ['-n', '-i', `${dir}/stick.img@@${Number(esp.firstLba) * 512}`, '::/EFI/BOOT/BOOTX64.EFI', efi], { env })
  t.equal(fs.readFileSync(efi).subarray(0, 2).toString('latin1'), 'MZ', '\\EFI\\BOOT\\BOOTX64.EFI is an EFI executable')
  const sections = (await run('objdump', ['-h', efi])).stdout
  for (const s of ['.linux', '.initrd', '.cmdline']) t.match(sections, new RegExp(`\\${s}\\s`), `with a ${s} section (the stick system's)`)
  const off = Number(gpt.entries[1]!.firstLba) * 512
  const ls = await run('mdir', ['-b', '-i', `${dir}/stick.img@@${off}`, '::/image'], { env })
  t.match(ls.stdout, /manifest\.json/)
  t.match(ls.stdout, /root\.img\.zst/)
  const cfg = await run('mtype', ['-i', `${dir}/stick.img@@${off}`, '::/install.yaml'], { env })
  t.equal(cfg.stdout, CONFIG)
})

t.test('a tampered image is refused; no stick is written', async (t) => {
  fs.cpSync(`${dir}/image`, `${dir}/bad`, { recursive: true })
  const m = JSON.parse(fs.readFileSync(`${dir}/bad/manifest.json`, 'utf8'))
  m.version = '9.9.9'
  fs.writeFileSync(`${dir}/bad/manifest.json`, JSON.stringify(m))
  const r = await runCli(['image', 'stick', '--image', `${dir}/bad`, '--config', `${dir}/install.yaml`, '--out', `${dir}/bad.img`, '--key', key])
  t.equal(r.code, ExitCode.signatureInvalid)
  t.notOk(fs.existsSync(`${dir}/bad.img`))
})

t.test('a config the installer would refuse is refused at stick build', async (t) => {
  fs.writeFileSync(`${dir}/wrong.yaml`, 'allowedModels: []\n')
  const w = await runCli(['image', 'stick', '--image', `${dir}/image`, '--config', `${dir}/wrong.yaml`, '--out', `${dir}/b1.img`, '--key', key])
  t.equal(w.code, ExitCode.configInvalid)
  t.match(w.stderr, /wrong\.yaml: (models: .*found value missing|\(top level\): .*unknown key\(s\) allowedModels)/)
  t.notOk(fs.existsSync(`${dir}/b1.img`))
  fs.writeFileSync(`${dir}/broken.yaml`, 'models: [unclosed\n')
  const r = await runCli(['image', 'stick', '--image', `${dir}/image`, '--config', `${dir}/broken.yaml`, '--out', `${dir}/b2.img`, '--key', key])
  t.equal(r.code, ExitCode.configInvalid)
  t.match(r.stderr, /broken\.yaml: not valid YAML/)
  t.notOk(fs.existsSync(`${dir}/b2.img`))
})

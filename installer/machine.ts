// Which machine this is (DMI, as the kernel exports it) and whether the config may image it.
import fs from 'node:fs'
import path from 'node:path'
import { LabhostError } from '../lib/errors.ts'
import { fullMatch } from '../lib/pattern.ts'

export interface Machine {
  vendor: string
  product: string
  serial: string | null
  /** DMI chassis_asset_tag (the asset tag set in the BIOS setup). */
  assetTag: string | null
  biosVersion: string | null
  /** Wired network cards (interfaces with a device behind them): `labhost wake --reports` reads the MACs here. */
  nics: { name: string; mac: string }[]
}

const read = (dir: string, f: string): string | null => {
  try {
    return fs.readFileSync(path.join(dir, f), 'utf8').trim()
  } catch {
    return null
  }
}

/** DMI strings from `<sysRoot>/class/dmi/id` (product_serial needs root). */
export function readMachine(sysRoot = '/sys'): Machine {
  const dir = path.join(sysRoot, 'class/dmi/id')
  const vendor = read(dir, 'sys_vendor')
  const product = read(dir, 'product_name')
  if (vendor === null || product === null) {
    throw new LabhostError(
      'modelRejected',
      `${dir} has no sys_vendor/product_name: the machine model cannot be checked`,
      'run the installer on the PC itself (DMI is needed); nothing was written',
    )
  }
  return {
    vendor,
    product,
    serial: read(dir, 'product_serial'),
    assetTag: read(dir, 'chassis_asset_tag'),
    biosVersion: read(dir, 'bios_version'),
    nics: readNics(sysRoot),
  }
}

/** Interfaces under `<sysRoot>/class/net` backed by a device (not lo, bridges, veths) with an Ethernet MAC, wireless ones left out (no Wake-on-LAN). */
export function readNics(sysRoot = '/sys'): { name: string; mac: string }[] {
  const dir = path.join(sysRoot, 'class/net')
  let names: string[]
  try {
    names = fs.readdirSync(dir).sort()
  } catch {
    return []
  }
  return names.flatMap((name) => {
    const nic = path.join(dir, name)
    const mac = read(nic, 'address')
    if (
      !fs.existsSync(path.join(nic, 'device')) ||
      fs.existsSync(path.join(nic, 'wireless')) ||
      read(nic, 'type') !== '1' ||
      !mac ||
      !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac)
    )
      return []
    return [{ name, mac }]
  })
}

/** A models: entry of install.yaml (installer/config.ts's ModelSchema: a product or a productPattern). */
interface ModelRule {
  vendor: string
  product?: string
  productPattern?: string
}

export function modelAllowed(config: { models: readonly ModelRule[] }, m: Machine): boolean {
  return config.models.some((a) => a.vendor === m.vendor && (a.product !== undefined ? a.product === m.product : fullMatch(a.productPattern!, m.product)))
}

export function requireModel(config: { models: readonly ModelRule[] }, configFile: string, m: Machine): void {
  if (modelAllowed(config, m)) return
  const allowed = config.models.map((a) => `${a.vendor} / ${a.product ?? `/${a.productPattern}/`}`).join('; ')
  throw new LabhostError(
    'modelRejected',
    `this machine is "${m.vendor} / ${m.product}", which ${configFile} does not list (allowed: ${allowed})`,
    'add the model to models: in install.yaml if it is meant to be imaged; nothing was written',
  )
}

// install.yaml: what the unattended installer may do on which machines. The schema is the
// documentation (`labhost schema install` exports it as JSON Schema for editors).
import { z } from 'zod'
import { loadConfig, parseConfig } from '../lib/config.ts'
import { patternProblem } from '../lib/pattern.ts'
import { HostnameSchema } from './hostname.ts'

// compiled (and kept) here: the installer matches with the same engine, lib/pattern.ts
const pattern = z
  .string()
  .min(1)
  .superRefine((s, ctx) => {
    const problem = patternProblem(s)
    if (problem) ctx.addIssue({ code: 'custom', message: `not a pattern RE2 takes (no backreferences or lookaround): ${problem}` })
  })
  .describe('RE2 regular expression (linear time: no backreferences or lookaround), matched against the whole value')

export const ModelSchema = z
  .object({
    vendor: z.string().min(1).describe('DMI sys_vendor, exactly (e.g. "Dell Inc.")'),
    product: z.string().min(1).optional().describe('DMI product_name, exactly (e.g. "OptiPlex 7010")'),
    productPattern: pattern.optional().describe('or a pattern for product_name (e.g. "OptiPlex 70[0-9]0")'),
  })
  .strict()
  .refine((m) => (m.product === undefined) !== (m.productPattern === undefined), 'give exactly one of product and productPattern')

export const DiskMatchSchema = z
  .object({
    rotational: z.boolean().describe("false: SSD/NVMe, true: spinning disk (the kernel's queue/rotational)"),
    minSizeGiB: z.number().positive().describe('smallest acceptable disk'),
    maxSizeGiB: z.number().positive().optional().describe('largest acceptable disk'),
    model: pattern.optional().describe('pattern for the disk model'),
    serial: pattern.optional().describe('pattern for the disk serial number'),
    usb: z.boolean().default(false).describe('also consider USB-attached disks (the installer stick never is)'),
  })
  .strict()

const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/

export const NetbootGateSchema = z
  .object({
    imageBlank: z.boolean().default(true).describe('image a PC whose internal disks are all blank (no partition table, zeros at both ends): a new PC'),
    imageListed: z
      .array(
        z
          .object({
            mac: z
              .string()
              .transform((s) => s.toLowerCase().replace(/-/g, ':'))
              .pipe(z.string().regex(MAC, 'a MAC address such as 52:54:00:12:34:56'))
              .optional()
              .describe('the MAC of the NIC the PC network-boots from'),
            serial: z.string().min(1).optional().describe("the PC's DMI serial number (product_serial), exactly"),
          })
          .strict()
          .refine((e) => (e.mac === undefined) !== (e.serial === undefined), 'give exactly one of mac and serial'),
      )
      .default([])
      .describe('PCs imaged (again) whatever their disks hold, by boot MAC or DMI serial; what keep: names is kept as on a re-run from the stick'),
  })
  .strict()

export const InstallConfigSchema = z
  .object({
    models: z.array(ModelSchema).min(1).describe('machines this config may image; any other is refused before anything is touched'),
    disks: z
      .object({
        ssd: DiskMatchSchema.describe('the disk for the root slots, /persistent, /var/log, /qcow2/backing'),
        hdd: DiskMatchSchema.optional().describe('the disk for /qcow2/user; omit for a layout without HDD partitions'),
        eraseForeignData: z.boolean().default(false).describe('allow erasing disks that hold partitions or data not written by labhost'),
      })
      .strict(),
    keep: z
      .array(z.string())
      .default(['persistent'])
      .describe('partitions (by layout name) kept on a re-install when their filesystem is intact; persistent holds the host identity'),
    bios: z
      .object({
        backend: z
          .enum(['auto', 'sysfs', 'cctk', 'none'])
          .default('auto')
          .describe('auto: firmware-attributes sysfs class if present, else cctk if installed, else skip'),
        passwordFile: z.string().optional().describe('file holding the BIOS admin password (relative to this config); never logged'),
        settings: z.record(z.string(), z.string()).default({}).describe('attribute name -> desired value, e.g. Virtualization: Enabled'),
      })
      .strict()
      .default({ backend: 'auto', settings: {} }),
    hostname: HostnameSchema.optional().describe(
      "each host's own name, kept on /persistent (/persistent/hostname) and set at every boot; without it hosts are called labhost",
    ),
    netboot: NetbootGateSchema.optional().describe(
      'which PCs a network boot (labhost netboot) may image; any other boots on from its own disk, untouched. The stick ignores it',
    ),
    finish: z.enum(['reboot', 'poweroff', 'none']).default('reboot').describe('what the machine does after a successful install'),
  })
  .strict()

export type InstallConfig = z.infer<typeof InstallConfigSchema>
export type DiskMatch = z.infer<typeof DiskMatchSchema>
export type NetbootGate = z.infer<typeof NetbootGateSchema>

export function loadInstallConfig(file: string): InstallConfig {
  return loadConfig(file, InstallConfigSchema)
}

/** install.yaml fetched from somewhere else (a network install's server): `where` names it in errors. */
export function parseInstallConfig(where: string, text: string): InstallConfig {
  return parseConfig(where, text, InstallConfigSchema)
}

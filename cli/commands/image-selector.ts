// labhost image selector: the UEFI selector (image-build/selector.ts) for a recipe's layout, the
// file the installer puts at \EFI\BOOT\BOOTX64.EFI on the ESP of a UEFI PC. --shim (prototype):
// the same selector as Debian's signed shim -> GRUB -> kernel chain, a directory tree for the ESP
// that boots with Secure Boot on (docs/design.md "Secure Boot"); the installer does not use it yet.
import { LabhostError } from '../../lib/errors.ts'
import { loadRecipe } from '../../image-build/recipe.ts'
import { buildSelector, buildShimSelector } from '../../image-build/selector.ts'
import { defineCommand, pathValue } from '../command.ts'

export const imageSelector = defineCommand({
  name: 'image selector',
  summary: "build the UEFI selector (a unified kernel image that boots the flagged root slot) for a recipe's layout",
  usage: 'labhost image selector RECIPE --out BOOTX64.EFI [options] | RECIPE --shim --out ESP-DIR [options]',
  options: {
    out: {
      type: 'string',
      value: 'FILE|DIR',
      required: true,
      schema: pathValue(),
      description: 'the selector file to write (\\EFI\\BOOT\\BOOTX64.EFI on the ESP); with --shim, the ESP directory tree',
    },
    shim: { type: 'boolean', description: "prototype: build the selector as Debian's signed shim -> GRUB -> kernel chain, which boots with Secure Boot on" },
  },
  dryRun: { refused: 'it writes only --out' },
  async run(values, positionals, ctx) {
    const recipe = positionals[0]
    if (!recipe) throw new LabhostError('usage', 'labhost image selector needs a RECIPE (its layout names the root slots)', `usage: ${this.usage}`)
    const out = values.out
    const r = loadRecipe(recipe)
    if (values.shim) {
      const s = await buildShimSelector({ layout: r.layout, kernelPackage: r.recipe.kernel.package, outDir: out, log: ctx.log })
      return {
        data: s,
        human: [
          `built the Secure Boot selector tree in ${s.dir} (shim-signed ${s.shim}, grub-efi-amd64-signed ${s.grub}, kernel ${s.kernel}); copy it to the ESP's root:`,
          ...s.files.map((f) => `  ${f.path}  ${f.bytes} bytes  sha256 ${f.sha256}`),
        ].join('\n'),
      }
    }
    const s = await buildSelector({ layout: r.layout, kernelPackage: r.recipe.kernel.package, out, log: ctx.log })
    return { data: s, human: `built ${s.file}: ${s.bytes} bytes, kernel ${s.kernel}, sha256 ${s.sha256}` }
  },
})

// labhost image selector: the UEFI selector (image-build/selector.ts) for a recipe's layout, the
// file the installer puts at \EFI\BOOT\BOOTX64.EFI on the ESP of a UEFI PC. --shim (prototype):
// the same selector as Debian's signed shim -> GRUB -> kernel chain, a directory tree for the ESP
// that boots with Secure Boot on (README "UEFI PCs"); the installer does not use it yet.
import { LabhostError } from '../../lib/errors.ts'
import { loadRecipe } from '../../image-build/recipe.ts'
import { buildSelector, buildShimSelector } from '../../image-build/selector.ts'
import { requireString, type Command } from '../command.ts'

export const imageSelector: Command = {
  name: 'image selector',
  summary: 'build the UEFI selector (a unified kernel image that boots the flagged root slot) for a recipe\'s layout',
  usage: 'labhost image selector RECIPE --out BOOTX64.EFI [--json] | RECIPE --shim --out ESP-DIR [--json]',
  options: { out: { type: 'string' }, shim: { type: 'boolean', default: false } },
  async run(values, positionals, ctx) {
    const recipe = positionals[0]
    if (!recipe) throw new LabhostError('usage', 'labhost image selector needs a RECIPE (its layout names the root slots)', `usage: ${this.usage}`)
    const out = requireString(values, 'out', this)
    if (ctx.dryRun) throw new LabhostError('usage', 'image selector has no --dry-run: it writes only --out', 'leave out --dry-run')
    const r = loadRecipe(recipe)
    if (values.shim) {
      const s = await buildShimSelector({ layout: r.layout, kernelPackage: r.recipe.kernel.package, outDir: out, log: ctx.log })
      return {
        data: s,
        human: [`built the Secure Boot selector tree in ${s.dir} (shim-signed ${s.shim}, grub-efi-amd64-signed ${s.grub}, kernel ${s.kernel}); copy it to the ESP's root:`,
          ...s.files.map((f) => `  ${f.path}  ${f.bytes} bytes  sha256 ${f.sha256}`)].join('\n'),
      }
    }
    const s = await buildSelector({ layout: r.layout, kernelPackage: r.recipe.kernel.package, out, log: ctx.log })
    return { data: s, human: `built ${s.file}: ${s.bytes} bytes, kernel ${s.kernel}, sha256 ${s.sha256}` }
  },
}

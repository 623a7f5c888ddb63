// Numeric options are checked at the edge: a fraction, a zero or a negative where a count or a
// duration is meant is a usage error (exit 2) naming the option and the value — before anything
// is read, fetched or written (`--trial-boots 0` used to arm a trial the initramfs rolls back at
// once).
import path from 'node:path'
import t from 'tap'
import { generateKeyPair } from '../../image-format/manifest.ts'
import { failDiag, runCli, tmpDir } from '../../test-support/test-helpers.ts'

// A real trusted key and a source that does not exist: a valid command line gets past the options
// to a notFound (3).
const keys = generateKeyPair(path.join(tmpDir(t), 'keys'))
const update = (...args: string[]) => ['update', '/nonexistent/image-dir', '--dry-run', '--trusted-key', keys.publicKeyFile, ...args]
const seed = (...args: string[]) => ['image', 'seed', '/tmp', ...args]

/** runCli over many command lines, four at a time (two cores; each is a Node start). */
async function runAll(argvs: string[][]): Promise<Awaited<ReturnType<typeof runCli>>[]> {
  const results: Awaited<ReturnType<typeof runCli>>[] = []
  let next = 0
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let i; (i = next++) < argvs.length;) results[i] = await runCli(argvs[i]!)
    }),
  )
  return results
}

const bad: [string, string[]][] = [
  ['trial-boots', update('--trial-boots', '1.5')],
  ['trial-boots', update('--trial-boots', '0')],
  ['trial-boots', update('--trial-boots', '101')],
  ['trial-boots', update('--trial-boots', '1e1')],
  ['trial-boots', update('--trial-boots', '')],
  ['retries', update('--retries', '0')],
  ['retries', update('--retries', '2.5')],
  ['retries', update('--retries', '-1')],
  ['timeout', update('--timeout', '0')],
  ['timeout', update('--timeout', '0x10')],
  ['timeout', update('--timeout', 'Infinity')],
  ['seed-minutes', update('--torrent', '--seed-minutes', '1.5')],
  ['seed-minutes', update('--torrent', '--seed-minutes', '-3')],
  ['seed-ratio', update('--torrent', '--seed-ratio', 'x')],
  ['seed-ratio', update('--torrent', '--seed-ratio', '-0.5')],
  ['tracker-interval', update('--torrent', '--tracker-interval', '0')],
  ['tracker-interval', update('--torrent', '--tracker-interval', '2.5')],
  ['download-limit', update('--torrent', '--download-limit', '0')],
  // past libtorrent's 32-bit rate setting
  ['download-limit', update('--torrent', '--download-limit', '2048M')],
  ['download-limit', update('--torrent', '--download-limit', '99999999999')],
  // read only with --torrent, checked all the same: a typo is not silently ignored
  ['seed-minutes', update('--seed-minutes', 'soon')],
  ['tracker-interval', seed('--tracker-interval', '0')],
  ['upload-limit', seed('--upload-limit', '0')],
  ['upload-limit', seed('--upload-limit', '1.5M')],
]

t.test('a bad numeric option is a usage error naming the option and the value', async (t) => {
  // --flag=value: parseArgs would read a value like -1 as an option of its own
  const argv = bad.map(([flag, args]) => args.map((a, i) => (a === `--${flag}` ? `${a}=${args[i + 1]}` : a)).filter((_, i) => args[i - 1] !== `--${flag}`))
  const results = await runAll(argv)
  bad.forEach(([flag, args], i) => {
    const r = results[i]!
    const value = args[args.indexOf(`--${flag}`) + 1]!
    t.equal(r.code, 2, `--${flag} ${JSON.stringify(value)}: exit 2 (usage)`, failDiag(r))
    t.match(r.stderr, `--${flag} ${JSON.stringify(value)}`, 'the error names the option and the value')
    t.equal(r.stderr.trimEnd().split('\n').length, 2, 'one line and a hint', failDiag(r))
  })
})

t.test('good values pass the check (the command goes on to its source)', async (t) => {
  const good = [
    update('--trial-boots', '1', '--retries', '5', '--timeout', '30'),
    update('--trial-boots', '100'),
    update('--torrent', '--seed-minutes', '0', '--seed-ratio', '1.5', '--tracker-interval', '2', '--download-limit', '500K'),
    update('--torrent', '--download-limit', '2047M'),
  ]
  const results = await runAll(good)
  results.forEach((r, i) => t.equal(r.code, 3, `${good[i]!.slice(5).join(' ')}: past the options, to the missing source`, failDiag(r)))
})

// The bencode decoder reads unsigned .torrent files: it takes canonical bencode only, and refuses
// what two readers could understand differently (a repeated or unordered key) or what would cost
// without bound (deep nesting, lengths past the end). checkTorrent on hand-made torrents: the
// cases mktorrent cannot make (a name.utf-8 that differs from the name, a v2 file tree).
import t from 'tap'
import { bdecode, bencode, type BValue } from '../bencode.ts'
import { ExitCode, LabhostError } from '../errors.ts'
import { checkTorrent, sourcedTorrent, torrentSources } from '../../image-format/torrent.ts'

type Enc = number | string | Buffer | Enc[] | { [k: string]: Enc }
const enc = (v: Enc): Buffer => {
  if (typeof v === 'number') return Buffer.from(`i${v}e`)
  if (typeof v === 'string' || Buffer.isBuffer(v)) {
    const b = Buffer.from(v)
    return Buffer.concat([Buffer.from(`${b.length}:`), b])
  }
  if (Array.isArray(v)) return Buffer.concat([Buffer.from('l'), ...v.map(enc), Buffer.from('e')])
  return Buffer.concat([
    Buffer.from('d'),
    ...Object.keys(v)
      .sort()
      .flatMap((k) => [enc(k), enc(v[k]!)]),
    Buffer.from('e'),
  ])
}

t.test('decodes integers, strings, lists and dictionaries', async (t) => {
  const v = bdecode(Buffer.from('d1:ai-3e1:bl4:spami0eee'))
  t.ok(v instanceof Map)
  const m = v as Map<string, unknown>
  t.equal(m.get('a'), -3)
  t.same(
    (m.get('b') as unknown[]).map((x) => (Buffer.isBuffer(x) ? x.toString() : x)),
    ['spam', 0],
  )
})

t.test('refuses what is not canonical, ambiguous or unbounded', async (t) => {
  for (const [what, text] of [
    ['a repeated key', 'd1:ai1e1:ai2ee'],
    ['keys out of order', 'd1:bi1e1:ai2ee'],
    ['a leading zero', 'i03e'],
    ['minus zero', 'i-0e'],
    ['an empty integer', 'ie'],
    ['an integer beyond 2^53', 'i9007199254740993e'],
    ['a string longer than the data', '10:abc'],
    ['a negative length', '-1:a'],
    ['an unterminated list', 'li1e'],
    ['an unterminated dictionary', 'd1:ai1e'],
    ['data after the value', 'i1ei2e'],
    ['nothing', ''],
    ['deep nesting', 'l'.repeat(100) + 'e'.repeat(100)],
  ] as const) {
    t.throws(() => bdecode(Buffer.from(text)), { name: 'BencodeError' }, what)
  }
})

t.test('checkTorrent: one file of the signed name and size, nothing else', async (t) => {
  const want = { name: 'root.img.zst', size: 3 << 20 }
  const info = { name: 'root.img.zst', length: 3 << 20, 'piece length': 1 << 20, pieces: Buffer.alloc(60) }
  const check = (v: Enc) => () => checkTorrent(enc(v), want, 'x.torrent')
  t.doesNotThrow(check({ announce: 'http://127.0.0.1:1/announce', info }), 'the torrent labhost image publish makes')
  const refused = (v: Enc, message: RegExp, what: string) => {
    try {
      check(v)()
      t.fail(`${what}: accepted`)
    } catch (e) {
      t.ok(e instanceof LabhostError && e.exitCode === ExitCode.torrentInvalid, `${what}: exit 39`)
      t.match((e as Error).message, message, what)
    }
  }
  refused({ info: { ...info, 'name.utf-8': 'on-complete.sh' } }, /names its file "on-complete\.sh"/, 'name.utf-8 other than name')
  refused({ info: { ...info, 'file tree': { 'root.img.zst': {} }, 'meta version': 2 } }, /BitTorrent v2/, 'a hybrid v1/v2 torrent')
  refused({ info: { ...info, pieces: Buffer.alloc(40) } }, /pieces that do not add up/, 'too few pieces')
  refused({ info: { ...info, name: '../root.img.zst' } }, /names its file "\.\.\/root\.img\.zst"/, 'a path')
  refused({ info: { ...info, length: '3145728' } }, /gives its file no bytes/, 'a length that is no integer')
  refused({ announce: 'x' }, /has no info dictionary/, 'no info')
  refused([1, 2], /has no info dictionary/, 'not a dictionary')
})

t.test('bencode writes back what bdecode read, byte for byte (so an info dictionary keeps its hash)', async (t) => {
  const torrent = enc({
    announce: 'http://10.0.0.1:6969/announce',
    'created by': 'mktorrent',
    info: { length: 3 << 20, name: 'win11-2.0.0.qcow2', 'piece length': 1 << 20, pieces: Buffer.alloc(60, 7), private: 0 },
    'url-list': ['http://10.0.0.1/a', 'http://10.0.0.1/b'],
  })
  t.ok(bencode(bdecode(torrent)).equals(torrent))
  // keys sorted byte-wise, whatever order the map was filled in
  const m = new Map<string, BValue>([
    ['z', 1],
    ['a', Buffer.from('x')],
  ])
  t.equal(bencode(m).toString(), 'd1:a1:x1:zi1ee')
  t.throws(() => bencode(0.5), /not an integer/)
})

t.test('sourcedTorrent: the same info hash, exactly the sources given; torrentSources reads them back', async (t) => {
  const info = { length: 3 << 20, name: 'win11-2.0.0.qcow2', 'piece length': 1 << 20, pieces: Buffer.alloc(60, 7) }
  const torrent = enc({
    announce: 'http://central:6969/announce',
    'announce-list': [['http://central:6969/announce'], ['udp://other:6969', 'file:///etc/passwd']],
    comment: 'dropped',
    nodes: [['10.0.0.9', 6881]],
    info,
    'url-list': ['http://server/win11-2.0.0.qcow2', 'ftp://elsewhere/x'],
  })
  t.same(torrentSources(torrent), { trackers: ['http://central:6969/announce', 'udp://other:6969'], webSeeds: ['http://server/win11-2.0.0.qcow2'] })
  const infoOf = (b: Buffer) => bencode((bdecode(b) as Map<string, BValue>).get('info')!)
  const building = sourcedTorrent(torrent, { trackers: ['http://building-b:6969/announce'], webSeeds: [] })
  t.ok(infoOf(building).equals(enc(info)), 'the info dictionary is the same bytes')
  t.same(torrentSources(building), { trackers: ['http://building-b:6969/announce'], webSeeds: [] })
  t.same([...(bdecode(building) as Map<string, BValue>).keys()], ['announce', 'announce-list', 'info'], 'no comment, no DHT nodes')
  const lan = sourcedTorrent(torrent, { trackers: [], webSeeds: [] })
  t.same([...(bdecode(lan) as Map<string, BValue>).keys()], ['info'], 'local peer discovery only: no tracker, no web seed')
  checkTorrent(lan, { name: 'win11-2.0.0.qcow2', size: 3 << 20 }, 'lan')
})

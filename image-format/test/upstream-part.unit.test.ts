// --upstream-part K/N: the N upstream hosts of a lab each fetch a part of the file from the server.
// The parts must be whole pieces (aria2c offers a piece only once it has all of it and its SHA-1
// matches), apart, in order and together the whole file, for any size, piece length and N.
import t from 'tap'
import { upstreamPartRange } from '../torrent.ts'
import { upstreamPart } from '../../cli/command.ts'

t.test('the parts of 1/N … N/N: whole pieces, apart, in order, together the file', async (t) => {
  let cases = 0
  for (const pieceLength of [32 << 10, 1 << 20, 7]) {
    for (const size of [1, pieceLength - 1, pieceLength, pieceLength + 1, 5 * pieceLength + 3, 1234567, 40 * pieceLength]) {
      for (const parts of [1, 2, 3, 4, 7, 64]) {
        let next = 0
        const pieces = Math.ceil(size / pieceLength)
        const lengths: number[] = []
        for (let index = 1; index <= parts; index++) {
          const r = upstreamPartRange(size, pieceLength, { index, of: parts })
          if (r.start !== next) t.fail(`size ${size}, pieces of ${pieceLength}, part ${index}/${parts} starts at ${r.start}, not ${next}`)
          if (r.start % pieceLength !== 0) t.fail(`part ${index}/${parts} starts inside a piece (${r.start})`)
          if (r.end !== size && r.end % pieceLength !== 0) t.fail(`part ${index}/${parts} ends inside a piece (${r.end})`)
          if (r.end < r.start) t.fail(`part ${index}/${parts} ends before it starts`)
          lengths.push(Math.ceil((r.end - r.start) / pieceLength))
          next = r.end
          cases++
        }
        if (next !== size) t.fail(`size ${size}, pieces of ${pieceLength}, ${parts} parts end at ${next}`)
        // as even as whole pieces allow: no part has more than one piece more than another
        if (Math.max(...lengths) - Math.min(...lengths) > 1) t.fail(`size ${size}/${pieceLength}, ${parts} parts: ${lengths.join(' ')} pieces`)
        if (parts <= pieces && lengths.includes(0)) t.fail(`size ${size}/${pieceLength}: an empty part with ${parts} parts of ${pieces} pieces`)
      }
    }
  }
  t.ok(cases > 1000, `${cases} parts checked`)
  t.same(upstreamPartRange(100, 10, { index: 2, of: 4 }), { start: 20, end: 50 }, '10 pieces in 4 parts: 2, 3, 2, 3')
})

t.test('the option: K/N with 1 <= K <= N <= 64, nothing else', async (t) => {
  const schema = upstreamPart()
  t.same(schema.parse('2/4'), { index: 2, of: 4 })
  t.same(schema.parse('1/1'), { index: 1, of: 1 })
  t.same(schema.parse('64/64'), { index: 64, of: 64 })
  for (const bad of ['0/4', '5/4', '1/65', '1/0', '2', '1/2/3', ' 1/2', '1/2 ', '-1/2', '1.5/2', 'a/b', '', '001/2'])
    t.notOk(schema.safeParse(bad).success, `refused: ${JSON.stringify(bad)}`)
})

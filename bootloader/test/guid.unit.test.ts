import t from 'tap'
import { guidFromBytes, guidToBytes } from '../guid.ts'

t.test('mixed-endian layout as the UEFI spec stores it', async (t) => {
  const esp = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
  t.equal(guidToBytes(esp).toString('hex'), '28732ac11ff8d211ba4b00a0c93ec93b')
  t.equal(guidFromBytes(Buffer.from('28732ac11ff8d211ba4b00a0c93ec93b', 'hex')), esp)
})

t.test('round trip and rejection of malformed input', async (t) => {
  const g = '0FC63DAF-8483-4772-8E79-3D69D8477DE4'
  t.equal(guidFromBytes(guidToBytes(g)), g)
  t.throws(() => guidToBytes('not-a-guid'))
})

// Which sources a host's aria2c gets for each --peers part (vm-image pull, update): a host that keeps to
// its building never names the server or an outside tracker and never exchanges peers; an upstream
// host takes the torrent's trackers and the server as a web seed but does not hand its outside
// peers on; `all` takes everything.
import t from 'tap'
import { peerSources } from '../torrent.ts'

const own = { trackers: ['http://central:6969/announce'], webSeeds: ['http://mirror/win11-2.0.0.qcow2'] }
const server = 'http://server/win11/win11-2.0.0.qcow2'
const building = ['http://tracker.b:6969/announce']

t.test('building: only the building tracker given, local peer discovery, no server, no peer exchange', async (t) => {
  t.same(peerSources('building', own, server, building), { trackers: building, webSeeds: [], lpd: true, peerExchange: false })
  t.same(peerSources('building', own, server, []), { trackers: [], webSeeds: [], lpd: true, peerExchange: false }, 'no tracker at all by default')
})

t.test('upstream: the torrent and the server too, no peer exchange', async (t) => {
  t.same(peerSources('upstream', own, server, building), {
    trackers: [...own.trackers, ...building],
    webSeeds: [...own.webSeeds, server],
    lpd: true,
    peerExchange: false,
  })
})

t.test('all: everything, peer exchange on; a tracker named twice once', async (t) => {
  t.same(peerSources('all', own, server, own.trackers), { trackers: own.trackers, webSeeds: [...own.webSeeds, server], lpd: true, peerExchange: true })
})

t.test('no server URL (update --peers all): the torrent as published, nothing added', async (t) => {
  t.same(peerSources('all', own, null, []), { trackers: own.trackers, webSeeds: own.webSeeds, lpd: true, peerExchange: true })
  t.same(peerSources('all', { trackers: [], webSeeds: [] }, null, building), { trackers: building, webSeeds: [], lpd: true, peerExchange: true })
})

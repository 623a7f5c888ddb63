#!/usr/bin/python3
# labhost's BitTorrent client on libtorrent (Debian's python3-libtorrent), the lab's alternative to
# aria2c (image-format/torrent-download.ts starts one or the other, with the same contract). Why a
# second client: aria2c unchokes 3 peers plus 1 by tit-for-tat and has no setting for it, so when
# a whole lab downloads at once a host that falls behind is choked by its peers until they are
# done; here every interested peer is unchoked (unchoke_slots_limit -1: the lab's hosts are all
# ours, nobody needs to be made to give back), and TCP shares each port between them.
#
# Contract (the same as aria2c's as labhost runs it): download the .torrent's one file into --dir
# (the bytes already there count where their SHA-1 pieces match: a download cut off resumes, an
# upstream host's part is offered); touch --marker once every piece is in and checked; seed on
# for --seed-minutes (or until --seed-ratio); then run --after-seeding (a shell command) and exit
# 0. labhost watches the file and the marker itself, judges a stall and ends this process group.
import argparse
import os
import socket
import subprocess
import sys
import time

p = argparse.ArgumentParser(description="labhost's BitTorrent client on libtorrent (image-format/bt-clients.ts)")
p.add_argument('--torrent', required=True)
p.add_argument('--dir', required=True)
p.add_argument('--marker', required=True)
p.add_argument('--log', required=True)
p.add_argument('--seed-minutes', type=float, default=0)
p.add_argument('--seed-ratio', type=float, default=0)
p.add_argument('--tracker-interval', type=int, default=0)
p.add_argument('--download-limit', type=int, default=0, help='bytes per second; 0: none')
p.add_argument('--lpd', choices=['true', 'false'], default='true')
p.add_argument('--peer-exchange', choices=['true', 'false'], default='false')
p.add_argument('--after-seeding')
a = p.parse_args()

log = open(a.log, 'a', buffering=1)


def say(line):
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


try:
    import libtorrent as lt
except ImportError as e:
    say(f'error: python3-libtorrent is missing ({e})')
    sys.exit(3)


def free_port():
    # the first free one of aria2c's range, so that a lab's firewall rules fit both clients
    for port in range(6881, 7000):
        with socket.socket() as s:
            try:
                s.bind(('0.0.0.0', port))
                return port
            except OSError:
                continue
    return 0


port = free_port()
settings = {
    'listen_interfaces': f'0.0.0.0:{port}',
    'enable_dht': False,
    'enable_lsd': a.lpd == 'true',
    'enable_upnp': False,
    'enable_natpmp': False,
    # TCP only, as aria2c: uTP yields to TCP by design and would lose every port it shares
    'enable_outgoing_utp': False,
    'enable_incoming_utp': False,
    # every interested peer unchoked, leeching and seeding alike
    'choking_algorithm': lt.choking_algorithm_t.fixed_slots_choker,
    'unchoke_slots_limit': -1,
    'seed_choking_algorithm': lt.seed_choking_algorithm_t.round_robin,
    'download_rate_limit': a.download_limit,
    'alert_mask': lt.alert.category_t.error_notification | lt.alert.category_t.status_notification | lt.alert.category_t.tracker_notification,
}
plugins = ['ut_metadata', 'smart_ban'] + (['ut_pex'] if a.peer_exchange == 'true' else [])
session = lt.session(settings, 0)
for name in plugins:
    session.add_extension(name)
if a.download_limit:
    # the limit is the session's (its global peer class), from which libtorrent exempts peers on a
    # local network by default; a lab's peers are all on one: every address goes in the global class
    every = lt.ip_filter()
    every.add_rule('0.0.0.0', '255.255.255.255', 1 << lt.session.global_peer_class_id)
    every.add_rule('::', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 1 << lt.session.global_peer_class_id)
    session.set_peer_class_filter(every)
atp = lt.add_torrent_params()
atp.ti = lt.torrent_info(a.torrent)
atp.save_path = a.dir
# the file as it lies: its pieces are checked, those that match count (no resume data is kept);
# started at once, never queued behind other torrents
atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
handle = session.add_torrent(atp)
say(f'libtorrent {lt.__version__}: {atp.ti.name()} ({atp.ti.total_size()} bytes, {atp.ti.num_pieces()} pieces) into {a.dir}, listening on port {port}')

done_at = None
last_announce = time.time()
while True:
    for alert in session.pop_alerts():
        say(alert.message())
    st = handle.status()
    if st.errc.value():
        say(f'error: {st.errc.message()}')
        sys.exit(1)
    now = time.time()
    if a.tracker_interval and now - last_announce >= a.tracker_interval:
        handle.force_reannounce()
        last_announce = now
    if done_at is None and st.is_seeding:
        done_at = now
        say(f'download complete: {st.total_wanted} bytes; seeding on for {a.seed_minutes} min')
        open(a.marker, 'w').close()
    if done_at is not None:
        ratio = st.all_time_upload / max(1, st.total_wanted)
        if now - done_at >= a.seed_minutes * 60 or (a.seed_ratio and ratio >= a.seed_ratio):
            say(f'seeding over: uploaded {st.all_time_upload} bytes')
            break
    time.sleep(0.2)

session.pause()
if a.after_seeding:
    subprocess.run(['/bin/sh', '-c', a.after_seeding])

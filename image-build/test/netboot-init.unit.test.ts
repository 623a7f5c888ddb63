// The network installer's /init (docs/plans/netboot.md §1) as text: what it mounts and loads, how
// it finds its NIC and lease, the installer's command line, the serial markers the VM test waits
// for, and what each exit code leads to. A refusal must never reboot (the PC would boot the
// network installer again), nor may a failure before the install. Run under busybox in
// netboot-initrd.disk.test.ts.
import t from 'tap'
import { INITRAMFS_MODULE_LIST } from '../initramfs.ts'
import { netbootInit, UDHCPC_SCRIPT_PATH, udhcpcScript } from '../initramfs-init.ts'

const init = netbootInit()
const lines = init.split('\n')
/** The arms of the case on the installer's exit code (to its closing esac at the line's start), by pattern. */
function exitArms(): Record<string, string> {
  const a = lines.indexOf('case "$EXIT" in')
  const b = lines.indexOf('esac', a)
  const arms: Record<string, string> = {}
  let current = ''
  for (const l of lines.slice(a + 1, b)) {
    const m = /^ {2}(\S+)\)$/.exec(l)
    if (m) arms[(current = m[1]!)] = ''
    else if (current) arms[current] += l + '\n'
  }
  return arms
}

t.test('the PROLOGUE: /proc, /sys, devtmpfs, /run, the modules; then tmpfs /tmp and the full PATH', async (t) => {
  t.ok(init.startsWith('#!/bin/sh\n'))
  for (const l of [
    'mount -t proc proc /proc',
    'mount -t sysfs sysfs /sys',
    'mount -t devtmpfs devtmpfs /dev',
    'mount -t tmpfs -o mode=0755 run /run',
    'mkdir -p /run/labhost',
    'mount -t tmpfs -o mode=1777 tmpfs /tmp',
    'export PATH=/bin:/sbin:/usr/bin:/usr/sbin',
  ])
    t.ok(lines.includes(l), l)
  t.match(init, `done < /${INITRAMFS_MODULE_LIST}`, 'loads the listed modules')
  t.ok(init.indexOf('insmod') < init.indexOf('nic_by_mac()'), 'before it looks for the NIC')
  t.notMatch(init, /switch_root|\/newroot/, 'the initramfs is the system: no switch_root')
})

t.test('URL and MAC from the kernel command line; the NIC by MAC, else the first with a link', async (t) => {
  t.match(init, 'for a in $(cat /proc/cmdline); do')
  t.match(init, 'labhost.url=*) URL=${a#labhost.url=} ;;')
  t.match(init, /BOOTIF=\*\) MAC=\$\(echo "\$\{a#BOOTIF=\}" \| tr 'A-F-' 'a-f:' \| sed 's\/\^01:/, 'BOOTIF=01-aa-bb-… becomes aa:bb:…, lower case')
  t.match(init, 'fail "no labhost.url= on the kernel command line"')
  t.match(init, `[ "$(cat "$n/address" 2>/dev/null)" = "$1" ]`, 'matches /sys/class/net/*/address')
  t.match(init, `[ "\${n##*/}" = lo ] && continue`, 'never lo')
  t.match(init, `[ "$(cat "$n/carrier" 2>/dev/null)" = 1 ]`, 'the fallback needs a link')
  t.match(init, '[ $i -ge 15 ] && { IF=$CARRIER; break; }', 'waits at most 15 s')
})

t.test('DHCP: udhcpc with the shipped script; no lease switches the PC off after 10 s, never reboots', async (t) => {
  t.ok(lines.includes('ip link set dev "$IF" up'))
  t.ok(lines.includes(`udhcpc -i "$IF" -n -t 20 -T 2 -s /${UDHCPC_SCRIPT_PATH} || fail "no DHCP lease on $IF"`))
  const fail = lines.filter((l) => l.startsWith('fail() {'))
  t.equal(fail.length, 2, "the PROLOGUE's fail() (it reboots) and the one replacing it")
  t.equal(fail[1], 'fail() { say "FATAL: $*"; echo "LABHOST-NETBOOT-FAIL $*"; sleep 10; poweroff -f; while :; do sleep 3600; done; }')
  t.ok(init.indexOf(fail[1]!) < init.indexOf('fail "no labhost.url='), 'in place before its first use')
})

t.test('the START marker, the installer line, the exit captured as on the stick, the END marker', async (t) => {
  t.ok(lines.includes('echo "LABHOST-NETBOOT-START url=$URL mac=$MAC if=$IF ip=$IP"'))
  t.ok(
    lines.includes(
      '( /usr/sbin/labhost install --netboot "$URL" --boot-mac "$MAC" --finish-file /run/labhost/finish 2>&1; echo "exit $?" > /run/labhost/install-exit ) | tee /run/labhost/install.log',
    ),
  )
  t.ok(lines.includes(`EXIT=$(sed -n 's/^exit //p' /run/labhost/install-exit 2>/dev/null)`))
  t.ok(lines.includes('echo "LABHOST-NETBOOT-INSTALL-END exit=${EXIT:-unknown}"'))
  t.ok(init.indexOf('LABHOST-NETBOOT-START') < init.indexOf('/usr/sbin/labhost install'))
})

t.test(
  'exit 0: the finish file decides; 59: DECLINED, reboot only when the marker is served; 62 (installed, not recorded) and any other: stay on',
  async (t) => {
    const arms = exitArms()
    t.same(Object.keys(arms), ['0', '59', '62', '*'])
    t.match(arms['0'], 'reboot) reboot -f ;;')
    t.match(arms['0'], 'poweroff) poweroff -f ;;')
    t.match(arms['0'], 'stay "labhost install done (finish: ${FINISH:-none})', 'none (or no file): stays on')
    t.match(arms['59'], 'echo "LABHOST-NETBOOT-DECLINED"')
    t.match(arms['59'], 'MARKER="${URL%/}/reports/$(echo "$MAC" | tr -d :).boot-local"')
    t.match(arms['59'], 'wget -q -T 10 -O /dev/null "$MARKER" && reboot -f')
    t.ok(arms['59']!.indexOf('poweroff -f') > arms['59']!.indexOf('reboot -f'), 'else off')
    t.match(arms['*'], `stay "labhost install refused (exit \${EXIT:-unknown}): the reason is in the server's reports/"`)
    t.notMatch(arms['*'], /reboot|poweroff/, 'a refusal never reboots nor switches off')
    t.match(arms['62'], 'stay "labhost install done, but the server did not take its record')
    t.match(arms['62'], '$(echo "$MAC" | tr -d :).boot-local in reports/"', 'it names the marker the server lacks')
    t.notMatch(arms['62'], /reboot -f|poweroff -f/, 'installed but unrecorded: a reboot would start the installer again')
    t.match(init, 'stay() { while :; do echo "$*"; sleep 60; done; }', 'a line every 60 s')
    t.ok(init.trimEnd().endsWith('while :; do sleep 3600; done'), 'PID 1 never returns (the kernel would panic and reboot)')
  },
)

t.test('reboot -f only where the next network boot goes to the disk', async (t) => {
  const own = init.slice(init.indexOf('export PATH=/bin:/sbin:/usr/bin:/usr/sbin'))
  t.same(
    own.split('\n').filter((l) => /reboot -f/.test(l)),
    ['      reboot) reboot -f ;;', '    wget -q -T 10 -O /dev/null "$MARKER" && reboot -f'],
  )
})

t.test('the udhcpc script: address, default route, resolv.conf; repeatable on renew', async (t) => {
  const s = udhcpcScript()
  t.ok(s.startsWith('#!/bin/sh\n'))
  t.match(s, 'deconfig)')
  t.match(s, 'bound|renew)')
  t.match(s, 'ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"')
  t.match(s, 'ip route replace default via "$1" dev "$interface"')
  t.match(s, 'for d in $dns; do echo "nameserver $d"; done; } > /etc/resolv.conf.new')
  t.match(s, 'mv /etc/resolv.conf.new /etc/resolv.conf')
  t.notMatch(s.slice(s.indexOf('bound|renew)')), 'flush', 'renew does not flush the address (a download would break)')
  t.ok(s.trimEnd().endsWith('exit 0'), 'udhcpc is told the event went well')
})

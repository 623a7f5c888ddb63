// /init of the root-image initramfs, shared by every recipe (DESIGN §2, §4). It mounts the root
// slot whose legacy-bootable bit is set in the primary GPT — the rule gptmbr applied — and runs
// the trial-boot counter: a slot on trial gets N boots; when they run out without
// `labhost mark-good`, the saved pre-switch sector is written back (one sector, primary first,
// then the backup mirror) and the machine reboots into the previous slot.
import type { Layout } from '../lib/layout.ts'
import { stateFsUuid } from '../lib/layout.ts'
import { LOAD_MODULES_SH } from './initramfs.ts'
import { TRIAL_FILE } from '../image-format/trial-state.ts'

/** Partition name of the installer stick's system partition. */
export const STICK_PARTITION = 'labhost-stick'

const PROLOGUE = `#!/bin/sh
export PATH=/bin:/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 run /run
mkdir -p /run/labhost
${LOAD_MODULES_SH}
say() { echo "labhost-initramfs: $*"; }
fail() { say "FATAL: $*"; echo "LABHOST-INITRAMFS-FAIL $*"; sleep 10; reboot -f; }

part_by_name() {
  for d in /sys/class/block/*; do
    [ -f "$d/partition" ] && grep -qx "PARTNAME=$1" "$d/uevent" && { echo "\${d##*/}"; return 0; }
  done
  return 1
}
`

const SWITCH_ROOT = `for m in dev proc sys run; do mount --move /$m /newroot/$m || fail "/newroot/$m is missing"; done
exec switch_root /newroot /sbin/init
`

/** The installer stick: mount its system partition (found by name, USB can be slow) and start it. */
export function stickInit(): string {
  return `${PROLOGUE}
i=0
until P=$(part_by_name '${STICK_PARTITION}'); do
  i=$((i + 1)); [ $i -ge 300 ] && fail "no partition named ${STICK_PARTITION}: is this the labhost stick?"
  sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o ro,noatime /dev/$P /newroot || fail "cannot mount /dev/$P"
printf 'STICK=/dev/%s\\nSTICK_DISK=/dev/%s\\n' $P "$(basename "$(readlink -f /sys/class/block/$P/..)")" > /run/labhost/stick
echo "LABHOST-STICK-ROOT dev=$P"
${SWITCH_ROOT}`
}

/**
 * Find the two root slots of the layout and pick the one whose legacy-bootable bit is set in the
 * primary GPT: SLOT, ROOT (its partition), OTHER, DISK, SS, and the helpers u32/u8 for the GPT.
 */
function pickSlotSh(layout: Layout): string {
  return `# labhost.slotwait=N on the kernel command line: tenths of a second to wait for the slots (30 s)
W=$(sed -n 's/.*labhost\\.slotwait=\\([0-9][0-9]*\\).*/\\1/p' /proc/cmdline)
i=0
while :; do
  PA=$(part_by_name '${layout.slots.A.name}'); PB=$(part_by_name '${layout.slots.B.name}')
  [ -n "$PA" ] && [ -n "$PB" ] && break
  i=$((i + 1)); [ $i -ge \${W:-300} ] && fail "no partitions named ${layout.slots.A.name} and ${layout.slots.B.name}"
  sleep 0.1
done
DISK=$(basename "$(readlink -f /sys/class/block/$PA/..)")
[ "$(basename "$(readlink -f /sys/class/block/$PB/..)")" = "$DISK" ] || fail "root slots on different disks"
SS=$(cat /sys/block/$DISK/queue/logical_block_size)
u32() { od -An -tu4 -j "$1" -N 4 /dev/$DISK | tr -d ' '; }
u8() { od -An -tu1 -j "$1" -N 1 /dev/$DISK | tr -d ' '; }
[ "$(dd if=/dev/$DISK bs=$SS skip=1 count=1 2>/dev/null | head -c 8)" = "EFI PART" ] || fail "no primary GPT on /dev/$DISK"
ELBA=$(u32 $((SS + 72)))
ESZ=$(u32 $((SS + 84)))
flag() { n=$(cat /sys/class/block/$1/partition); b=$(u8 $((ELBA * SS + (n - 1) * ESZ + 48))); echo $(((b >> 2) & 1)); }
pick_slot() {
  FA=$(flag $PA); FB=$(flag $PB)
  if [ "$FA$FB" = 10 ]; then SLOT=A; ROOT=$PA; OTHER=B
  elif [ "$FA$FB" = 01 ]; then SLOT=B; ROOT=$PB; OTHER=A
  else fail "GPT bootable flags A=$FA B=$FB: not exactly one root slot flagged"; fi
}
pick_slot
`
}

export function rootRuleInit(layout: Layout): string {
  return `${PROLOGUE}
${pickSlotSh(layout)}
# Trial boots: state on the writable partition ${layout.stateMount}.
ST=/run/labhost/state
mkdir -p $ST
STATE_DEV=$(findfs UUID=${stateFsUuid(layout).toLowerCase()} 2>/dev/null)
TRIAL=""
if [ -n "$STATE_DEV" ] && mount -t ext4 -o rw,noatime "$STATE_DEV" $ST 2>/dev/null; then
  [ -f $ST/${TRIAL_FILE} ] && TRIAL=$ST/${TRIAL_FILE}
else
  say "no state partition: trial boots are not counted"
fi
put_state() { # atomic replace of a small file: write, fsync, rename, fsync the directory
  printf '%s\\n' "$2" > "$1.tmp" && sync "$1.tmp" && mv "$1.tmp" "$1" && sync "$(dirname "$1")"
}
if [ -n "$TRIAL" ]; then
  TRIAL_SLOT=""; BOOTS_LEFT=0; PRIMARY_LBA=""; BACKUP_LBA=""; FROM_VERSION=""; UPDATED_AT=""
  . $TRIAL
  if [ "$TRIAL_SLOT" = "$SLOT" ] && [ "$BOOTS_LEFT" -gt 0 ]; then
    BOOTS_LEFT=$((BOOTS_LEFT - 1))
    put_state $TRIAL "$(sed "s/^BOOTS_LEFT=.*/BOOTS_LEFT=$BOOTS_LEFT/" $TRIAL)"
    say "slot $SLOT on trial, $BOOTS_LEFT boot(s) left after this one"
    echo "LABHOST-TRIAL slot=$SLOT left=$BOOTS_LEFT"
  elif [ "$TRIAL_SLOT" = "$SLOT" ]; then
    say "slot $SLOT was never marked good: rolling back to slot $OTHER"
    D=$(dirname $TRIAL)
    dd if=/dev/$DISK bs=$SS skip=$PRIMARY_LBA count=1 2>/dev/null > /run/labhost/current.sector
    cmp -s /run/labhost/current.sector $D/committed.sector || fail "the GPT sector is not the one the update wrote; not rolling back"
    # One O_DIRECT write of the one saved sector (DESIGN §3.4), at a byte offset. bs=4096, not $SS:
    # busybox dd gives O_DIRECT a page-aligned buffer only for blocks of a page or more; a 512-byte
    # one is malloc'ed, the kernel refuses it (EINVAL) and dd silently retries through the page
    # cache, which wrote the whole 4 KiB block holding the sector (LBA 0-7; the rollback campaign's
    # recording showed it). The file holds one sector, so the one read and the one write are that sector.
    dd if=$D/rollback.sector of=/dev/$DISK bs=4096 count=1 seek=$((PRIMARY_LBA * SS)) oflag=direct,seek_bytes conv=notrunc,fsync 2>/dev/null || fail "rollback write failed"
    dd if=$D/rollback.sector of=/dev/$DISK bs=4096 count=1 seek=$((BACKUP_LBA * SS)) oflag=direct,seek_bytes conv=notrunc,fsync 2>/dev/null || fail "rollback mirror failed"
    put_state $D/last-result "RESULT=rolled-back
FROM=$SLOT
TO=$OTHER
VERSION=$VERSION
FROM_VERSION=$FROM_VERSION
UPDATED_AT=$UPDATED_AT"
    rm -f $TRIAL; sync
    umount $ST
    echo "LABHOST-ROLLBACK from=$SLOT to=$OTHER"
    reboot -f
  elif [ "$TRIAL_SLOT" != "$SLOT" ]; then
    # armed, but the switch to that slot never happened (power lost between arming the trial and
    # the commit) or was undone: a trial for a slot that is not booting is void; left in place,
    # status would report a trial that is none and slots switch would refuse to run
    say "the trial of slot $TRIAL_SLOT is void: slot $SLOT is the flagged one"
    echo "LABHOST-TRIAL-VOID slot=$TRIAL_SLOT running=$SLOT"
    rm -f $TRIAL; sync
  fi
fi
grep -q " $ST " /proc/mounts && umount $ST

mkdir -p /newroot
mount -t ext4 -o ro,noatime /dev/$ROOT /newroot || fail "cannot mount /dev/$ROOT"
printf 'SLOT=%s\\nDEVICE=/dev/%s\\nDISK=/dev/%s\\n' $SLOT $ROOT $DISK > /run/labhost/boot
say "booting slot $SLOT from /dev/$ROOT"
echo "LABHOST-ROOT slot=$SLOT dev=$ROOT"
${SWITCH_ROOT}`
}

/**
 * The UEFI selector's /init (DESIGN §7): the firmware starts it from the ESP; it picks the slot by
 * the same rule gptmbr applies on a BIOS PC and starts that slot's own kernel and initramfs with
 * the command line of the slot's extlinux.conf (kexec_file_load, -s: the only form a Secure Boot
 * kernel accepts). The slot's initramfs then picks the same slot again and runs the trial and
 * the rollback as on a BIOS PC; the selector itself keeps no state and writes nothing.
 */
export function selectorInit(layout: Layout): string {
  return `${PROLOGUE}
${pickSlotSh(layout)}
mkdir -p /newroot
mount -t ext4 -o ro,noatime /dev/$ROOT /newroot || fail "cannot mount /dev/$ROOT"
CMDLINE=$(sed -n 's/^[[:space:]]*[Aa][Pp][Pp][Ee][Nn][Dd][[:space:]]*//p' /newroot/boot/extlinux/extlinux.conf | head -n 1)
[ -f /newroot/boot/vmlinuz ] && [ -f /newroot/boot/initrd.img ] || fail "slot $SLOT holds no /boot/vmlinuz and /boot/initrd.img"
echo "LABHOST-SELECTOR slot=$SLOT dev=$ROOT"
kexec -s -l /newroot/boot/vmlinuz --initrd=/newroot/boot/initrd.img --command-line="$CMDLINE" || fail "kexec cannot load slot $SLOT's kernel"
umount /newroot
kexec -e
fail "kexec -e returned"
`
}

/** Where the network installer's initramfs keeps udhcpc's lease script (busybox ships none). */
export const UDHCPC_SCRIPT_PATH = 'etc/labhost/udhcpc.script'

/**
 * busybox udhcpc runs this on each lease event: deconfig, bound, renew, leasefail, nak. After the
 * first lease udhcpc stays in the background and renews it (a seed can outlast a lease), so
 * bound and renew must be repeatable without cutting a download: ifconfig leaves an unchanged
 * address alone, `ip route replace` and the rename of resolv.conf are idempotent.
 */
export function udhcpcScript(): string {
  return `#!/bin/sh
case "$1" in
  deconfig)
    ip link set dev "$interface" up
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "\${subnet:-255.255.255.0}" \${broadcast:+broadcast $broadcast} up
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if [ -n "$router" ]; then
      set -- $router
      ip route replace default via "$1" dev "$interface"
    fi
    { [ -n "$domain" ] && echo "search $domain"; for d in $dns; do echo "nameserver $d"; done; } > /etc/resolv.conf.new
    mv /etc/resolv.conf.new /etc/resolv.conf
    ;;
esac
exit 0
`
}

/**
 * The network installer's /init (docs/plans/netboot.md §1): the stick's system is this initramfs
 * itself, so no switch_root. iPXE passes labhost.url= and BOOTIF=01-<mac>; the NIC with that MAC
 * gets a DHCP lease and `labhost install --netboot` does the rest. PID 1 never returns and never
 * reboots unless the server will send this PC to its disk next time: a reboot into the network
 * boot would start the installer again, round after round.
 */
export function netbootInit(): string {
  return `${PROLOGUE}
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t tmpfs -o mode=1777 tmpfs /tmp
# a failure switches the PC off: a reboot would come back here through the network boot
fail() { say "FATAL: $*"; echo "LABHOST-NETBOOT-FAIL $*"; sleep 10; poweroff -f; while :; do sleep 3600; done; }
stay() { while :; do echo "$*"; sleep 60; done; }

URL=""; MAC=""
set -f
for a in $(cat /proc/cmdline); do
  case "$a" in
    labhost.url=*) URL=\${a#labhost.url=} ;;
    # pxelinux's form: ARP type 01, then the MAC with dashes
    BOOTIF=*) MAC=$(echo "\${a#BOOTIF=}" | tr 'A-F-' 'a-f:' | sed 's/^01:\\(..:..:..:..:..:..\\)$/\\1/') ;;
  esac
done
set +f
[ -n "$URL" ] || fail "no labhost.url= on the kernel command line"
if [ -n "$MAC" ] && ! echo "$MAC" | grep -qx '[0-9a-f][0-9a-f]\\(:[0-9a-f][0-9a-f]\\)\\{5\\}'; then
  say "BOOTIF gives no MAC address ($MAC): taking the first NIC with a link"; MAC=""
fi

nic_by_mac() {
  for n in /sys/class/net/*; do
    [ "$(cat "$n/address" 2>/dev/null)" = "$1" ] && { echo "\${n##*/}"; return 0; }
  done
  return 1
}
nic_with_carrier() {
  for n in /sys/class/net/*; do
    [ "\${n##*/}" = lo ] && continue
    ip link set dev "\${n##*/}" up >/dev/null 2>&1
    [ "$(cat "$n/carrier" 2>/dev/null)" = 1 ] && { echo "\${n##*/}"; return 0; }
  done
  return 1
}
# the NIC's driver may still be probing: up to 15 s for the one iPXE booted from
IF=""; i=0
while :; do
  [ -n "$MAC" ] && IF=$(nic_by_mac "$MAC") && break
  CARRIER=$(nic_with_carrier) && [ -z "$MAC" ] && { IF=$CARRIER; break; }
  i=$((i + 1))
  [ $i -ge 15 ] && { IF=$CARRIER; break; }
  sleep 1
done
[ -n "$IF" ] || fail "no network interface (BOOTIF MAC \${MAC:-not given}, and none with a link)"
[ -n "$MAC" ] && [ "$(cat /sys/class/net/$IF/address)" != "$MAC" ] && say "no NIC has the BOOTIF MAC $MAC: using $IF"
# the server knows this PC by the MAC iPXE booted with (its boot-local marker is named by it)
[ -n "$MAC" ] || MAC=$(cat /sys/class/net/$IF/address)

ip link set dev "$IF" up
udhcpc -i "$IF" -n -t 20 -T 2 -s /${UDHCPC_SCRIPT_PATH} || fail "no DHCP lease on $IF"
IP=$(ip -4 addr show dev "$IF" | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p' | head -n 1)
echo "LABHOST-NETBOOT-START url=$URL mac=$MAC if=$IF ip=$IP"

# labhost writes the finish action (reboot, poweroff, none) to a file instead of doing it, as on
# the stick: the install's log is complete before the PC goes
( /usr/sbin/labhost install --netboot "$URL" --boot-mac "$MAC" --finish-file /run/labhost/finish 2>&1; echo "exit $?" > /run/labhost/install-exit ) | tee /run/labhost/install.log
EXIT=$(sed -n 's/^exit //p' /run/labhost/install-exit 2>/dev/null)
echo "LABHOST-NETBOOT-INSTALL-END exit=\${EXIT:-unknown}"
sync
case "$EXIT" in
  0)
    FINISH=$(cat /run/labhost/finish 2>/dev/null)
    case "$FINISH" in
      reboot) reboot -f ;;
      poweroff) poweroff -f ;;
    esac
    stay "labhost install done (finish: \${FINISH:-none}): this PC may be switched off or restarted"
    ;;
  59)
    # declined: labhost put <mac>.boot-local on the server, so the next network boot goes to the
    # disk. Rebooted only when iPXE will find it there too: an upload that failed would loop.
    echo "LABHOST-NETBOOT-DECLINED"
    MARKER="\${URL%/}/reports/$(echo "$MAC" | tr -d :).boot-local"
    wget -q -T 10 -O /dev/null "$MARKER" && reboot -f
    say "the server does not serve $MARKER: a reboot would start this installer again; switching off"
    sleep 10
    poweroff -f
    ;;
  62)
    # installed, but the server did not take its report or boot-local marker: a reboot would start
    # this installer again (which then declines a PC that holds a labhost install, unless listed)
    stay "labhost install done, but the server did not take its record (see above): this PC may be switched off; it boots its SSD once the server has $(echo "$MAC" | tr -d :).boot-local in reports/"
    ;;
  *)
    # a refusal leaves the PC on, showing why; the same reason is in the server's reports/
    stay "labhost install refused (exit \${EXIT:-unknown}): the reason is in the server's reports/"
    ;;
esac
while :; do sleep 3600; done
`
}

#!/usr/bin/env bash
# Everything labhost needs on a fresh Debian 12 machine, as root: the Debian packages it runs
# (sgdisk, extlinux, mkfs.ext4, qemu, busybox, ...) and the npm dependencies, which bring Node 24.
# Safe to re-run: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (apt-get, loop devices and QEMU need it)" >&2
  exit 1
fi

# sbsigntool and efitools: scripts/secure-boot-probe.ts signs the selector with a lab key and enrolls it in OVMF's db
# dnsmasq-base: the network-install VM test runs dnsmasq (proxy DHCP + TFTP) in a network namespace; no service is started
PACKAGES=(gdisk extlinux syslinux-common qemu-system-x86 qemu-utils seabios ovmf e2fsprogs busybox-static zstd dosfstools mtools debootstrap openssh-client util-linux kmod mount bmap-tools aria2 python3-libtorrent mktorrent opentracker iproute2 openssl kexec-tools binutils sbsigntool efitools dnsmasq-base)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Package lists are needed for the install and for apt-get download of the test kernel.
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Loop devices: the tests attach several at once.
modprobe loop 2>/dev/null || true

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
echo "setup: node for scripts and tests: $(node_modules/.bin/node --version)"

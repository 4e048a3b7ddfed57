#!/usr/bin/env bash
# Builds (once) a debootstrapped Debian 12 root directory and prints its path.
# The result is cached under $AZBUILD_CACHE_DIR (default /var/cache/azbuild)
# keyed by this script and the package list, so a warm machine reuses it.
# Usage: scripts/make-rootfs.sh [EXTRA_PACKAGE...]
set -euo pipefail
SUITE=bookworm
MIRROR=${AZBUILD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=(
  linux-image-cloud-amd64 systemd-sysv udev openssh-server sudo cloud-init
  grub-pc initramfs-tools ifupdown isc-dhcp-client python3 procps iproute2
  ca-certificates gnupg netbase
  # debootstrap does not resolve virtual packages: cloud-init needs python3-cryptography,
  # which needs the virtual python3-cffi-backend-api-*, provided by this one.
  python3-cffi-backend
)
packages=$(printf '%s\n' "${BASE_PACKAGES[@]}" "$@" | sort -u | paste -sd, -)
cache=${AZBUILD_CACHE_DIR:-/var/cache/azbuild}/fixtures
key=$( { cat "$0"; echo "$SUITE $MIRROR $packages"; } | sha256sum | cut -c1-16)
out="$cache/rootfs-$key"
mkdir -p "$cache"
exec 9>"$cache/.rootfs-$key.lock"
flock 9
if [ ! -f "$out/.complete" ]; then
  tmp=$(mktemp -d "$cache/.rootfs-$key.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "make-rootfs: debootstrapping $SUITE with: $packages" >&2
  # grub-pc asks where to install: preseed "nowhere" so the install is unattended.
  DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$packages" \
    "$SUITE" "$tmp/root" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -30 "$tmp/debootstrap.log" >&2; exit 1; }
  # A machine-id must be unique per clone: leave it empty (systemd fills it at boot).
  : > "$tmp/root/etc/machine-id"
  rm -f "$tmp/root/var/cache/apt/archives/"*.deb
  touch "$tmp/root/.complete"
  rm -rf "$out"
  mv "$tmp/root" "$out"
  rm -rf "$tmp"
  trap - EXIT
fi
echo "$out"

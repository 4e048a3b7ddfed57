#!/usr/bin/env bash
# Builds (once) azbuild's test installer ISO and prints its path.
#
# Real distro ISOs cannot be downloaded on the project's machines and the real
# Debian installer cannot finish there (its .udeb components are not served), so
# the ISO path is tested with this stand-in, laid out like a Debian installer ISO:
#   install.amd/vmlinuz     Debian's generic kernel (it has the SATA CD-ROM drivers)
#   install.amd/initrd.gz   busybox, the drivers, init.sh and installer.py
#   rootfs/                 the cached debootstrapped root (scripts/make-rootfs.sh)
#                           without cloud-init, as a netinst install has none; it
#                           also brings sfdisk, e2fsprogs, GRUB and Python
#   .disk/azbuild-test-installer   the marker the initrd looks for
# The installer reads /preseed.cfg from its initrd (azbuild appends it, as for a
# real netinst) and installs the root onto the disk: see tests/installer/.
#
# Cached under $AZBUILD_CACHE_DIR (default /var/cache/azbuild)/installer, keyed by
# this script, the installer files, the root and the kernel; the stable path
# installer/azbuild-test-installer.iso (a symlink) names the newest build, and
# installer/SHA256SUMS lists it under both names, so the printed path and the
# stable one both validate. Atomic and safe to run concurrently (flock).
# Usage: scripts/make-test-installer-iso.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
installer="$here/../tests/installer"
cache=${AZBUILD_CACHE_DIR:-/var/cache/azbuild}
dir="$cache/installer"
LABEL=AZBUILD_TEST_INSTALLER
MODULES=(virtio_pci virtio_blk virtio_net ahci ata_piix sr_mod isofs ext4 af_packet)

rootfs=$("$here/make-rootfs.sh")
kver=$(find /lib/modules -mindepth 1 -maxdepth 1 -name '*-amd64' -printf '%f\n' | sort -V | tail -1)
if [ -z "$kver" ] || [ ! -f "/boot/vmlinuz-$kver" ]; then
  echo "make-test-installer-iso: no Debian amd64 kernel on this host (apt-get install linux-image-amd64)" >&2
  exit 1
fi
busybox=$(command -v busybox) || { echo "make-test-installer-iso: busybox-static is missing" >&2; exit 1; }
key=$( { cat "$0" "$installer/init.sh" "$installer/installer.py"; echo "$rootfs $kver";
         stat -c %Y "$rootfs/.complete" "/boot/vmlinuz-$kver"; sha256sum "$busybox"; } \
       | sha256sum | cut -c1-16)
out="$dir/azbuild-test-installer-$key.iso"
mkdir -p "$dir"
exec 9>"$dir/.installer-$key.lock"
flock 9

if [ ! -f "$out" ]; then
  echo "make-test-installer-iso: building $out" >&2
  tmp=$(mktemp -d "$dir/.build-$key.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  tree="$tmp/tree"
  mkdir -p "$tree/install.amd" "$tree/.disk"
  echo "azbuild test installer (Debian 12 root, kernel $kver)" > "$tree/.disk/azbuild-test-installer"
  echo "azbuild test installer $key" > "$tree/.disk/info"

  # The root to install: the cached one, minus cloud-init (purged offline).
  cp -a "$rootfs" "$tree/rootfs"
  rm -f "$tree/rootfs/.complete"
  chroot "$tree/rootfs" dpkg --purge cloud-init >"$tmp/purge.log" 2>&1 \
    || { cat "$tmp/purge.log" >&2; exit 1; }
  rm -f "$tree/rootfs"/etc/ssh/ssh_host_*
  : > "$tree/rootfs/etc/machine-id"

  # The initrd: busybox, the drivers (dependencies first) and the installer.
  initrd="$tmp/initrd"
  mkdir -p "$initrd/bin"
  cp "$busybox" "$initrd/bin/busybox"
  cp "$installer/init.sh" "$initrd/init"
  cp "$installer/installer.py" "$initrd/installer.py"
  chmod 0755 "$initrd/init"
  : > "$initrd/modules.load"
  for module in "${MODULES[@]}"; do
    modprobe --show-depends --set-version "$kver" "$module" 2>/dev/null \
      | awk '$1 == "insmod" { print $2 }'
  done | awk '!seen[$0]++' | while read -r ko; do
    mkdir -p "$initrd$(dirname "$ko")"
    cp "$ko" "$initrd$ko"
    echo "$ko" >> "$initrd/modules.load"
  done
  (cd "$initrd" && find . | cpio --quiet -o -H newc | gzip -9) > "$tree/install.amd/initrd.gz"
  cp "/boot/vmlinuz-$kver" "$tree/install.amd/vmlinuz"

  # Rock Ridge keeps the root's owners, modes and symlinks.
  xorriso -as mkisofs -quiet -R -V "$LABEL" -o "$tmp/installer.iso" "$tree" \
    2>"$tmp/xorriso.log" || { cat "$tmp/xorriso.log" >&2; exit 1; }
  mv "$tmp/installer.iso" "$out"
  rm -rf "$tmp"
  trap - EXIT
fi
# Refresh the stable names atomically; SHA256SUMS lists the printed path's name too.
"$here/name-test-installer-iso.sh" "$out"

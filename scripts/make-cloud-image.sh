#!/usr/bin/env bash
# Builds (once) a small Debian 12 cloud image (qcow2) and prints its path.
#
# The image: MBR label, one ext4 root partition (fstab by UUID), GRUB in the
# MBR (so it boots through its own bootloader under BIOS), serial console
# (GRUB and kernel on ttyS0), DHCP on eth0 (net.ifnames=0), cloud-init with the
# NoCloud datasource, no SSH host keys and no root password.
#
# How, without mounting anything: copy scripts/make-rootfs.sh's root, adjust
# it, write it as an ext4 filesystem into a partitioned raw file
# (mke2fs -d -E offset=...), then boot that once under QEMU (direct kernel
# boot) where a one-shot systemd unit runs grub-install + update-grub, removes
# itself and powers off.
#
# Cached under $AZBUILD_CACHE_DIR (default /var/cache/azbuild)/images, keyed by
# this script and the root directory it starts from; the stable path
# images/debian-12-cloud.qcow2 (a symlink) is refreshed to the newest build.
# Atomic (temp file then rename) and safe to run concurrently (flock).
# Usage: scripts/make-cloud-image.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SIZE_MIB=${AZBUILD_CLOUD_IMAGE_MIB:-3072}
PART_START=2048            # sectors: the root partition starts at 1 MiB
cache=${AZBUILD_CACHE_DIR:-/var/cache/azbuild}
images="$cache/images"
stable="$images/debian-12-cloud.qcow2"

# dbus lets systemd-logind run, which turns the ACPI power button (libvirt's
# shutdown, Azure's "Stop") into a clean poweroff; without it the button is ignored.
EXTRA_PACKAGES=(dbus)
rootfs=$("$here/make-rootfs.sh" "${EXTRA_PACKAGES[@]}")
key=$( { cat "$0"; echo "$rootfs $SIZE_MIB"; stat -c %Y "$rootfs/.complete"; } \
       | sha256sum | cut -c1-16)
out="$images/debian-12-cloud-$key.qcow2"
mkdir -p "$images"
exec 9>"$images/.debian-12-cloud-$key.lock"
flock 9

if [ ! -f "$out" ]; then
  echo "make-cloud-image: building $out from $rootfs" >&2
  tmp=$(mktemp -d "$images/.build-$key.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  root="$tmp/root"
  cp -a "$rootfs" "$root"
  rm -f "$root/.complete"

  uuid=$(cat /proc/sys/kernel/random/uuid)
  printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$uuid" > "$root/etc/fstab"
  echo debian > "$root/etc/hostname"
  : > "$root/etc/machine-id"
  # No SSH host keys: every clone gets its own (cloud-init or the build's pinned key).
  rm -f "$root"/etc/ssh/ssh_host_*
  # No root password: lock the account ('*' never matches a password).
  sed -i -E 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"

  # Serial console in GRUB and the kernel; short menu timeout; eth0 naming.
  grub_default="$root/etc/default/grub"
  sed -i -E '/^GRUB_(TIMEOUT|TERMINAL|SERIAL_COMMAND|CMDLINE_LINUX|CMDLINE_LINUX_DEFAULT)=/d' \
    "$grub_default"
  cat >> "$grub_default" <<'EOF'
GRUB_TIMEOUT=1
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 earlyprintk=ttyS0 net.ifnames=0"
EOF

  # DHCP on the first NIC (named eth0 through net.ifnames=0). cloud-init is told
  # not to render its own network config, so the two never define eth0 twice.
  mkdir -p "$root/etc/network/interfaces.d"
  cat > "$root/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
  cat > "$root/etc/network/interfaces.d/eth0" <<'EOF'
allow-hotplug eth0
iface eth0 inet dhcp
EOF
  mkdir -p "$root/etc/cloud/cloud.cfg.d"
  cat > "$root/etc/cloud/cloud.cfg.d/90-azbuild.cfg" <<'EOF'
# azbuild's Debian 12 cloud image: seeds come from a NoCloud volume (CIDATA),
# or from Azure; the network is plain DHCP on eth0 (/etc/network/interfaces.d/eth0).
datasource_list: [ NoCloud, Azure ]
network: {config: disabled}
EOF

  # The one-shot first boot: install GRUB to the MBR, then leave no trace.
  cat > "$root/usr/local/sbin/azbuild-firstboot" <<'EOF'
#!/bin/sh
set -eu
grub-install --target=i386-pc /dev/vda
update-grub
rm -f /etc/ssh/ssh_host_*
rm -rf /var/lib/cloud
: > /etc/machine-id
systemctl disable azbuild-firstboot.service
rm -f /etc/systemd/system/azbuild-firstboot.service /usr/local/sbin/azbuild-firstboot
sync
echo AZBUILD-FIRSTBOOT-OK > /dev/ttyS0
EOF
  chmod 0755 "$root/usr/local/sbin/azbuild-firstboot"
  cat > "$root/etc/systemd/system/azbuild-firstboot.service" <<'EOF'
[Unit]
Description=azbuild image build: install GRUB, then power off
After=local-fs.target
ConditionPathExists=/usr/local/sbin/azbuild-firstboot

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/azbuild-firstboot
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/azbuild-firstboot.service \
    "$root/etc/systemd/system/multi-user.target.wants/azbuild-firstboot.service"

  kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)
  initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)
  cp "$kernel" "$tmp/vmlinuz"
  cp "$initrd" "$tmp/initrd.img"

  raw="$tmp/disk.raw"
  truncate -s "${SIZE_MIB}M" "$raw"
  printf 'label: dos\nstart=%d, type=83, bootable\n' "$PART_START" \
    | sfdisk --quiet "$raw"
  part_bytes=$(( SIZE_MIB * 1024 * 1024 - PART_START * 512 ))
  mke2fs -q -t ext4 -L root -U "$uuid" -d "$root" -E offset=$((PART_START * 512)) \
    "$raw" "$((part_bytes / 1024))k"
  rm -rf "$root"

  echo "make-cloud-image: first boot (install GRUB) under TCG" >&2
  timeout 900 qemu-system-x86_64 -machine pc,accel=tcg -m 1024 -smp 1 \
    -display none -monitor none -serial "file:$tmp/serial.log" -no-reboot \
    -kernel "$tmp/vmlinuz" -initrd "$tmp/initrd.img" \
    -append "root=/dev/vda1 rw console=ttyS0 net.ifnames=0 cloud-init=disabled" \
    -drive "file=$raw,format=raw,if=virtio" \
    || { tail -40 "$tmp/serial.log" >&2; exit 1; }
  if ! grep -q AZBUILD-FIRSTBOOT-OK "$tmp/serial.log"; then
    echo "make-cloud-image: the first boot did not install GRUB; end of its console:" >&2
    tail -40 "$tmp/serial.log" >&2
    exit 1
  fi
  qemu-img convert -f raw -O qcow2 "$raw" "$tmp/image.qcow2"
  mv "$tmp/image.qcow2" "$out"
  rm -rf "$tmp"
  trap - EXIT
fi
# Refresh the stable path atomically (a symlink to the keyed image).
ln -sfn "$(basename "$out")" "$images/.stable.$$"
mv -T "$images/.stable.$$" "$stable"
echo "$out"

#!/bin/busybox sh
# shellcheck shell=dash
# PID 1 of azbuild's test installer initrd (see tests/installer/installer.py).
# Loads the drivers, finds the installer ISO on a CD-ROM, and runs the installer
# chrooted into the Debian root the ISO carries (it brings sfdisk, e2fsprogs,
# GRUB and Python). Then powers off or reboots; after a failure it halts, like
# d-i waiting at its failure prompt for somebody who will never come.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /cdrom
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "azbuild-test-installer: starting ($(uname -r))"

halt_here() {
  echo "azbuild-test-installer: halted; nothing more will happen"
  while :; do sleep 3600; done
}
fail() {
  printf '\n[!!] %s\n\n%s\n\nInstallation step failed.\n' "$1" "$2"
  halt_here
}

while read -r module; do
  insmod "$module" 2>/dev/null
done < /modules.load

# The installer ISO: the CD-ROM whose root holds the marker file.
R=/cdrom/rootfs
tries=0
while [ ! -e /cdrom/.disk/azbuild-test-installer ]; do
  for dev in /dev/sr*; do
    [ -b "$dev" ] || continue
    mount -t iso9660 -o ro "$dev" /cdrom 2>/dev/null || continue
    [ -e /cdrom/.disk/azbuild-test-installer ] && break
    umount /cdrom
  done
  [ -e /cdrom/.disk/azbuild-test-installer ] && break
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && fail "Detect and mount installation media" \
    "No installer ISO (a CD-ROM with .disk/azbuild-test-installer) was found."
  sleep 1
done
[ -e /preseed.cfg ] || fail "Load preseed file" "There is no /preseed.cfg in the initrd."

mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -o bind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
cp /preseed.cfg /installer.py "$R/tmp/"
chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  /usr/bin/python3 /tmp/installer.py /tmp/preseed.cfg
status=$?
action=$(cat "$R/tmp/exit-action" 2>/dev/null)
[ "$status" -eq 2 ] && halt_here
[ "$status" -eq 0 ] || fail "Install the system" "The installer stopped with status $status."

sync
if [ "$action" = reboot ]; then reboot -f; else poweroff -f; fi
halt_here

#!/usr/bin/env bash
# Gives a built test installer ISO its stable names, atomically, and prints its path:
#   azbuild-test-installer.iso   a symlink to it, beside it
#   SHA256SUMS                   its checksum under both names, the versioned one and the
#                                stable one, so that either path validates with
#                                checksum = "file:<dir>/SHA256SUMS"
# Called by make-test-installer-iso.sh under its lock.
# Usage: scripts/name-test-installer-iso.sh DIR/azbuild-test-installer-KEY.iso
set -euo pipefail
out=$1
dir=$(dirname "$out")
name=$(basename "$out")
stable=azbuild-test-installer.iso
ln -sfn "$name" "$dir/.stable.$$"
mv -T "$dir/.stable.$$" "$dir/$stable"
sum=$(cd "$dir" && sha256sum "$name" | cut -d' ' -f1)
printf '%s  %s\n%s  %s\n' "$sum" "$name" "$sum" "$stable" > "$dir/.SHA256SUMS.$$"
mv "$dir/.SHA256SUMS.$$" "$dir/SHA256SUMS"
echo "$out"

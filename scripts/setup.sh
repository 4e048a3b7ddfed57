#!/usr/bin/env bash
# Installs everything azbuild needs on Debian 12 as root, idempotently:
# system packages, the virtualenv at .venv/, and the libvirt daemons.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-system-x86 qemu-utils ovmf
  libvirt-daemon-system libvirt-dev pkg-config python3-libvirt
  python3-venv python3-dev gcc
  libguestfs-tools python3-guestfs linux-image-amd64
  iproute2 debootstrap fdisk e2fsprogs dosfstools mtools xorriso cpio zstd busybox-static
  grub-pc-bin grub-common openssh-client openssh-server shellcheck git acl
  debian-installer-12-netboot-amd64
  chromium chromium-driver
)

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "run as root: it installs system packages and starts libvirtd"
  exit 2
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
# Node.js and npm run Azurite for the publish tests. A nodejs package that bundles npm
# (as some builds of it do) conflicts with Debian's npm, so the commands are what counts.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The venv uses Debian's interpreter so that the libvirt and guestfs bindings
# from python3-libvirt and python3-guestfs are importable (ENVIRONMENT.md).
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.azbuild-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import builder' 2>/dev/null; then
  log "installing azbuild into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi

# npm tools the tests run, each from the npm registry into a fixed cache folder of its
# own: no global install, one pinned version. Two setups at once (two checkouts on one
# machine) must not run npm in the same folder together: npm leaves a half-written tree
# behind. The second waits, then finds the first one's install.
npm_tool_installed() {  # DIR VERSION BIN
  [ -x "$1/node_modules/.bin/$3" ] && [ "$(cat "$1/.azbuild-version" 2>/dev/null)" = "$2" ]
}
npm_tool() {  # DIR PACKAGE VERSION BIN
  local dir=$1 package=$2 version=$3 bin=$4 lock
  npm_tool_installed "$dir" "$version" "$bin" && return 0
  mkdir -p "$(dirname "$dir")"
  exec {lock}>"$dir.lock"
  flock "$lock"
  if ! npm_tool_installed "$dir" "$version" "$bin"; then
    log "installing $package@$version into $dir"
    mkdir -p "$dir"
    rm -f "$dir/.azbuild-version"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
      "$package@$version" >/dev/null
    echo "$version" > "$dir/.azbuild-version"
  fi
  exec {lock}>&-
}
# Azurite, the Azure Storage emulator the publish tests run against (docs/publish.md).
npm_tool "${AZBUILD_AZURITE_DIR:-/var/cache/azbuild/azurite}" azurite 3 azurite-blob
# taplo, the TOML toolkit behind the Even Better TOML editor extension: the schema tests
# run `taplo check --schema` with it (docs/templates.md#editor-support-the-json-schema).
npm_tool "${AZBUILD_TAPLO_DIR:-/var/cache/azbuild/taplo}" @taplo/cli 0.7.0 taplo

# No systemd as PID 1 on these machines: start the daemons by hand when absent.
# libvirtd refuses to create domains until virtlogd runs.
if ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null || { log "libvirtd does not answer"; exit 1; }
log "ready: $(.venv/bin/azbuild --version)"

#!/usr/bin/env bash
# Install everything rokfs and its tests need on a Debian machine (run as root).
# Idempotent: a second run installs nothing and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config e2fsprogs attr qemu-utils nbdkit
              libnbd-bin python3-libnbd fio curl python3-venv util-linux openssl
              iproute2 procps)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.rokfs-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "setup: installing the rokfs Python package and its dev extras"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
for cmd in rokfs rokctl; do
    ln -sf "$PWD/.venv/bin/$cmd" /usr/local/bin/$cmd
done
echo "setup: done"

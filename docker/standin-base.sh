#!/usr/bin/env bash
# Builds a stand-in for `python:3.11-slim` from Debian bookworm with debootstrap, for
# machines where no image registry is reachable but Debian's package mirror is. It is
# tagged `python:3.11-slim` so that docker/Dockerfile builds unchanged, and labelled
# `org.regionsync.standin=debootstrap` so nobody mistakes it for the official image.
#
# What the Dockerfile needs from its base, and how the stand-in provides it:
# - `python` and `pip` first on PATH: a virtualenv created at /usr/local (Debian bookworm's
#   python3 is 3.11), so /usr/local/bin/{python,pip} exist as in the official image;
# - `pip install` allowed as root: a virtualenv has no PEP 668 EXTERNALLY-MANAGED marker
#   (the system one in /usr/lib/python3.11 is removed too);
# - `useradd`: the `passwd` package.
#
# Usage: docker/standin-base.sh [tag]   (DOCKER_HOST must reach an engine; run as root)
set -euo pipefail

tag=${1:-python:3.11-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing debootstrap"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null
fi

rootfs=$(mktemp -d /var/tmp/regionsync-standin.XXXXXX)
cleanup() {
  # debootstrap may leave /proc and /sys mounted inside the target on failure.
  for m in proc sys dev/pts dev; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && umount -l "$rootfs/$m" || true
  done
  rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

echo "debootstrap bookworm (minbase + python3-venv, passwd, ca-certificates) into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -20 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"

chroot "$rootfs" /bin/sh -euc '
  python3 -m venv /usr/local
  rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/* /tmp/* /root/.cache
  find /usr/local /usr/lib/python3.11 -name __pycache__ -prune -exec rm -rf {} +
'
test -x "$rootfs/usr/local/bin/python" && test -x "$rootfs/usr/local/bin/pip"
chmod 755 "$rootfs" # mktemp's 0700 would become the image's /, closed to a non-root user

tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL org.regionsync.standin=debootstrap' \
  --change 'CMD ["python3"]' \
  - "$tag" >/dev/null
docker run --rm --user 65534 "$tag" sh -c 'python --version && pip --version' |
  sed 's/^/  stand-in: /'

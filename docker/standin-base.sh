#!/usr/bin/env bash
# Builds a stand-in for `python:3.11-slim` or `postgres:15` from Debian bookworm with
# debootstrap, for machines where no image registry is reachable but Debian's package mirror
# is. It is tagged as the image it stands in for, so that docker/Dockerfile and
# docker/compose.yaml work unchanged, and labelled `org.regionsync.standin=debootstrap` so
# nobody mistakes it for the official image.
#
# python:3.11-slim: what the Dockerfile needs from its base, and how the stand-in provides it:
# - `python` and `pip` first on PATH: a virtualenv created at /usr/local (Debian bookworm's
#   python3 is 3.11), so /usr/local/bin/{python,pip} exist as in the official image;
# - `pip install` allowed as root: a virtualenv has no PEP 668 EXTERNALLY-MANAGED marker
#   (the system one in /usr/lib/python3.11 is removed too);
# - `useradd`: the `passwd` package.
#
# postgres:15: what compose.yaml uses of the official image: Debian's postgresql-15 (the
# same PostgreSQL 15 the host runs); POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB
# honoured on an empty /var/lib/postgresql/data (a volume), which the entrypoint owns to
# `postgres` and initialises (password auth over TCP from any address, as the official image
# allows); `postgres` in the foreground as PID 1, stopped by SIGINT; `pg_isready` on PATH.
#
# Usage: docker/standin-base.sh [python:3.11-slim|postgres:15]   (DOCKER_HOST must reach an
# engine; run as root)
set -euo pipefail

tag=${1:-python:3.11-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "$tag" in
  python:3.11-slim) packages=python3,python3-venv,passwd,ca-certificates ;;
  postgres:15) packages=postgresql-15 ;;
  *)
    echo "usage: $0 [python:3.11-slim|postgres:15]" >&2
    exit 2
    ;;
esac

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

echo "debootstrap bookworm (minbase + ${packages//,/, }) into $rootfs"
debootstrap --variant=minbase --include="$packages" \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -20 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"
chmod 755 "$rootfs" # mktemp's 0700 would become the image's /, closed to a non-root user

standin=(--change 'ENV LANG=C.UTF-8' --change 'LABEL org.regionsync.standin=debootstrap')
case "$tag" in
  python:3.11-slim)
    chroot "$rootfs" /bin/sh -euc '
      python3 -m venv /usr/local
      rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
    '
    test -x "$rootfs/usr/local/bin/python" && test -x "$rootfs/usr/local/bin/pip"
    standin+=(
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change 'CMD ["python3"]'
    )
    check=(--user 65534 "$tag" sh -c 'python --version && pip --version')
    ;;
  postgres:15)
    # A cluster the package may have made is not the container's: the entrypoint makes one.
    chroot "$rootfs" /bin/sh -euc '
      if [ -d /etc/postgresql/15/main ]; then pg_dropcluster 15 main; fi
      mkdir -p /var/lib/postgresql/data
      chown postgres:postgres /var/lib/postgresql/data
    '
    cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# The stand-in's entrypoint (docker/standin-base.sh): as the official image's does, owns
# $PGDATA to postgres, initialises an empty one from POSTGRES_USER, POSTGRES_PASSWORD and
# POSTGRES_DB, then runs postgres in the foreground as PID 1.
set -eu
[ "${1:-}" = postgres ] || exec "$@"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?must be set: the stand-in, like the official image, has no open superuser}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\"" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "stand-in postgres:15: initialised $PGDATA (user $user, database $db)"
fi
exec "$@"
ENTRYPOINT
    chmod 755 "$rootfs/usr/local/bin/docker-entrypoint.sh"
    standin+=(
      --change 'ENV PATH=/usr/local/bin:/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change 'ENV PGDATA=/var/lib/postgresql/data'
      --change 'VOLUME /var/lib/postgresql/data'
      --change 'EXPOSE 5432'
      --change 'ENTRYPOINT ["docker-entrypoint.sh"]'
      --change 'CMD ["postgres"]'
    )
    # SIGINT is PostgreSQL's fast shutdown; `docker import` cannot set a stop signal.
    finish='STOPSIGNAL SIGINT'
    check=("$tag" psql --version)
    ;;
esac
chroot "$rootfs" /bin/sh -euc '
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/* /tmp/* /root/.cache
  find /usr/local /usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
'

tar --numeric-owner -C "$rootfs" -c . | docker import "${standin[@]}" - "$tag" >/dev/null
if [ -n "${finish:-}" ]; then
  built=$(printf 'FROM %s\n%s\n' "$tag" "$finish" | DOCKER_BUILDKIT=0 docker build -t "$tag" - 2>&1) ||
    { echo "$built" >&2; exit 1; }
fi
docker run --rm "${check[@]}" | sed 's/^/  stand-in: /'

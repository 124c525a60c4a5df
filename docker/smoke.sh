#!/usr/bin/env bash
# Builds the image from this checkout and runs it as an operator would; CI's `docker` step.
#
#   engine   use the Docker engine that answers (DOCKER_HOST or the default socket); if none
#            does, start Debian's `dockerd --storage-driver=vfs` (installing docker.io if
#            missing) with its own socket, pidfile and data under $REGIONSYNC_DOCKER_STATE
#            (default /var/lib/regionsync-docker), and stop it again at the end
#   base     python:3.11-slim: the local one, else a pull, else (no registry reachable) a
#            stand-in built from Debian bookworm by docker/standin-base.sh, kept for next time
#   build    `docker build -f docker/Dockerfile .` with BuildKit; pip inside the build trusts
#            the CA bundle the host's pip trusts, passed as the build secret `pip-ca`
#   run      against the host's PostgreSQL (--network host): `migrate`; the fake Kaleyra API
#            and the daemon as containers; /healthz answers 200, the image's HEALTHCHECK turns
#            healthy, the daemon runs as uid 10001, a sync is in the database, /metrics
#            counts it, and `docker stop` ends it with exit code 0
#   compose  postgres:15: the local one, else a pull, else a stand-in built from Debian
#            bookworm's postgresql-15 by docker/standin-base.sh, kept for next time; then
#            docker/compose.yaml brought up with `docker compose` (v2) if the client has it,
#            else Debian's docker-compose (v1): postgres, migrate and daemon with every setting
#            from an env file (--env-file), plus the fake Kaleyra API in the daemon's network
#            namespace; beside them the `fake` profile's demo. A sync lands in the schema the
#            env file names, the daemon's environment holds every line of the file, a signed
#            webhook arrives, both daemons' health checks (the image's /healthz probe) turn
#            healthy, `compose stop` ends the daemon with 0, and `down -v` removes it all
#
# Every step prints how long it took. Needs root (to start an engine), psql and curl.
# REGIONSYNC_SMOKE_DATABASE: the PostgreSQL server's URL without a database name
# (default postgresql://postgres@127.0.0.1:5432); a throwaway database is created and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${REGIONSYNC_SMOKE_IMAGE:-regionsync:smoke}
state=${REGIONSYNC_DOCKER_STATE:-/var/lib/regionsync-docker}
server=${REGIONSYNC_SMOKE_DATABASE:-postgresql://postgres@127.0.0.1:5432}
base=python:3.11-slim
tag=regionsync-smoke-$$
db=regionsync_docker_smoke_$$
url="$server/$db"
engine_pid=
compose=()
smoke_dir=

started_all=$SECONDS
step_name=
step_started=$SECONDS
step() {
  if [ -n "$step_name" ]; then
    echo "   -- $step_name took $((SECONDS - step_started)) s"
  fi
  step_name=$1
  step_started=$SECONDS
  [ -z "$1" ] || echo "== docker: $1"
}
at() { echo "(at +$((SECONDS - step_started)) s)"; }
fail() {
  echo "docker smoke FAILED: $*" >&2
  exit 1
}
# wait_for SECONDS WHAT COMMAND...: retry COMMAND every second until it succeeds.
wait_for() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within $limit s"
    sleep 1
  done
}

cleanup() {
  local rc=$? started=$SECONDS
  set +e
  for c in "$tag-daemon" "$tag-fake"; do
    docker rm -f "$c" >/dev/null 2>&1
  done
  psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
  if [ "${#compose[@]}" -gt 0 ]; then
    [ "$rc" = 0 ] || "${compose[@]}" logs --no-color --tail 15 >&2
    "${compose[@]}" down -v --timeout 120 >/dev/null 2>&1
  fi
  [ -z "$smoke_dir" ] || rm -rf "$smoke_dir"
  if [ -n "$engine_pid" ]; then
    kill "$engine_pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 1; done
  fi
  echo "   -- cleanup (containers, database${engine_pid:+, engine}) took $((SECONDS - started)) s"
  exit "$rc"
}
trap cleanup EXIT

# -- engine ----------------------------------------------------------------------------------
step "engine"
mkdir -p "$state"
if docker info >/dev/null 2>&1; then
  echo "using the engine at ${DOCKER_HOST:-the default socket}"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    echo "installing docker.io (Debian's Docker engine)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } \
      >/dev/null || fail "could not install docker.io"
  fi
  export DOCKER_HOST="unix://$state/docker.sock"
  if docker info >/dev/null 2>&1; then
    echo "using the engine left running at $DOCKER_HOST"
  else
    echo "starting dockerd --storage-driver=vfs at $DOCKER_HOST (log: $state/dockerd.log)"
    dockerd --storage-driver=vfs --data-root "$state/data" --exec-root "$state/exec" \
      --pidfile "$state/dockerd.pid" --host "$DOCKER_HOST" >"$state/dockerd.log" 2>&1 &
    engine_pid=$!
    wait_for 60 "dockerd answering" docker info
  fi
fi
docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'

# -- base image ------------------------------------------------------------------------------
step "base image $base"
if docker image inspect "$base" >/dev/null 2>&1; then
  if [ -n "$(docker image inspect -f '{{index .Config.Labels "org.regionsync.standin"}}' "$base")" ]; then
    echo "$base is the stand-in built from Debian bookworm with debootstrap (cached; not the official image)"
  else
    echo "$base is present"
  fi
elif timeout 120 docker pull -q "$base" >/dev/null 2>&1; then
  echo "pulled $base"
else
  echo "$base cannot be pulled (no registry reachable): building a STAND-IN from Debian" \
    "bookworm with debootstrap, tagged $base (see docker/standin-base.sh)"
  docker/standin-base.sh "$base"
fi

# -- build -----------------------------------------------------------------------------------
step "build $image"
# The CA bundle the host's pip trusts (PIP_CERT, else pip's configuration), if any.
pip_ca=${PIP_CERT:-}
if [ -z "$pip_ca" ]; then
  pip_ca=$(python3 -m pip config list 2>/dev/null |
    sed -n "s/^\(:env:\|global\|install\)\.cert='\(.*\)'$/\2/p" | head -1) || true
fi
secret=()
if [ -n "$pip_ca" ] && [ -s "$pip_ca" ]; then
  echo "pip inside the build trusts the host pip's CA bundle $pip_ca (build secret pip-ca)"
  secret=(--secret "id=pip-ca,src=$pip_ca")
fi
# BuildKit: `docker build` when buildx is installed; else the first docker client that has
# BuildKit built in (Debian's docker.io 20.10 does; a newer client without buildx does not).
builder=()
if docker buildx version >/dev/null 2>&1; then
  builder=(docker build)
else
  for client in $(type -ap docker | awk '!seen[$0]++'); do
    if [[ "$(DOCKER_BUILDKIT=1 "$client" build --help 2>/dev/null)" == *--secret* ]]; then
      builder=("$client" build)
      break
    fi
  done
fi
[ "${#builder[@]}" -gt 0 ] || fail "no docker client with BuildKit (install docker-buildx)"
DOCKER_BUILDKIT=1 "${builder[@]}" --progress=plain "${secret[@]}" \
  -f docker/Dockerfile -t "$image" . >"$state/build.log" 2>&1 ||
  { tail -30 "$state/build.log" >&2; fail "docker build (log: $state/build.log)"; }
awk '/^#[0-9]+ (\[|CACHED)/ && n++ < 30 { print "   " $0 }' "$state/build.log"
history=$(docker history --no-trunc --format '{{.CreatedBy}}' "$image")
if grep -q -e 'BEGIN CERT' ${pip_ca:+-e "$pip_ca"} <<<"$history"; then
  fail "the CA bundle's path or content is in the image's history"
fi
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image $image: $((size / 1000000)) MB"
if [ -n "$engine_pid" ]; then
  docker image prune -f >/dev/null # earlier builds' layers, on the engine this script started
fi

# -- run -------------------------------------------------------------------------------------
step "run: migrate, fake API, daemon"
psql "$server/postgres" -qc "CREATE DATABASE $db"
docker run --rm --network host -e REGIONSYNC_DATABASE_URL="$url" "$image" migrate
echo "migrate: exit 0 $(at)"

docker run -d --name "$tag-fake" --network host "$image" fake-api --port 0 --quiet >/dev/null
fake_url() { docker logs "$tag-fake" 2>&1 | sed -n 's|.*listening on \(http://[^ ]*\) .*|\1|p'; }
fake_listening() { [ -n "$(fake_url)" ]; }
wait_for 30 "the fake API listening" fake_listening
fake_url=$(fake_url)
echo "fake Kaleyra API at $fake_url $(at)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The image's own HEALTHCHECK command, probed every 2 s instead of every minute.
docker run -d --name "$tag-daemon" --network host \
  -e REGIONSYNC_DATABASE_URL="$url" -e KALEYRA_BASE_URL="$fake_url" \
  -e KALEYRA_SID=demo -e KALEYRA_API_KEY=demo-key -e REGIONSYNC_SCHEDULE=1m \
  -e REGIONSYNC_METRICS_PORT="$port" -e REGIONSYNC_METRICS_HOST=127.0.0.1 \
  -e REGIONSYNC_LOG_FORMAT=json \
  --health-interval 2s --health-start-period 60s \
  "$image" >/dev/null
healthz() { curl -fsS "http://127.0.0.1:$port/healthz"; }
wait_for 60 "/healthz answering 200" healthz
echo "/healthz: $(healthz) $(at)"
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$tag-daemon")" = healthy ]; }
wait_for 60 "the HEALTHCHECK turning healthy" healthy
echo "HEALTHCHECK: healthy $(at): $(docker inspect -f '{{json .Config.Healthcheck.Test}}' "$tag-daemon")"

pid=$(docker inspect -f '{{.State.Pid}}' "$tag-daemon")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 10001 ] || fail "the daemon runs as uid $uid, not 10001"
echo "daemon process $pid runs as uid $uid ($(docker exec "$tag-daemon" id -un))"

synced=$(psql "$url" -tAc "SELECT count(*) FROM sync_runs WHERE status = 'succeeded'")
regions=$(psql "$url" -tAc "SELECT count(*) FROM regions WHERE removed_at IS NULL")
[ "$synced" -ge 1 ] && [ "$regions" -ge 1 ] || fail "no successful sync in the database"
echo "database: $synced successful sync(s), $regions active regions"
metrics=$(curl -fsS "http://127.0.0.1:$port/metrics")
grep -q '^regionsync_sync_runs_total{status="succeeded"} [1-9]' <<<"$metrics" ||
  fail "/metrics does not count the successful sync"
head_status=$(curl -sS -o /dev/null -w '%{http_code}' --head "http://127.0.0.1:$port/metrics")
[ "$head_status" = 200 ] || fail "HEAD /metrics answered $head_status"
echo "/metrics: $(grep -c '^[a-z]' <<<"$metrics") samples, the sync counted; HEAD /metrics: 200"

step "stop"
docker stop -t 120 "$tag-daemon" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$tag-daemon")
[ "$code" = 0 ] || { docker logs --tail 20 "$tag-daemon" >&2; fail "docker stop: exit code $code"; }
echo "docker stop: exit code 0 ($(docker logs "$tag-daemon" 2>&1 | grep -c '"daemon.stopped"') daemon.stopped line)"
docker stop -t 10 "$tag-fake" >/dev/null

# -- compose ---------------------------------------------------------------------------------
step "compose: image postgres:15"
if docker image inspect postgres:15 >/dev/null 2>&1; then
  if [ -n "$(docker image inspect -f '{{index .Config.Labels "org.regionsync.standin"}}' postgres:15)" ]; then
    echo "postgres:15 is the stand-in built from Debian bookworm with debootstrap (cached; not the official image)"
  else
    echo "postgres:15 is present"
  fi
elif timeout 120 docker pull -q postgres:15 >/dev/null 2>&1; then
  echo "pulled postgres:15"
else
  echo "postgres:15 cannot be pulled (no registry reachable): building a STAND-IN from Debian" \
    "bookworm's postgresql-15 with debootstrap, tagged postgres:15 (see docker/standin-base.sh)"
  docker/standin-base.sh postgres:15
fi

# The stack as an operator runs it: postgres, migrate and daemon from docker/compose.yaml,
# every setting from an env file (--env-file). Only the fake Kaleyra API is added, in the
# daemon's network namespace (regionsync takes plain http:// to loopback only), and the
# daemon's own health check is probed every 2 s instead of every minute. Beside it, the
# `fake` profile's demo exactly as docs/operations.md (and the README) start it.
step "compose: postgres, migrate, daemon with its settings from an env file; the fake profile's demo"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "installing docker-compose (Debian's Compose v1)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; } \
    >/dev/null || fail "could not install docker-compose"
  compose=(docker-compose)
fi
echo "compose: ${compose[*]} $("${compose[@]}" version --short 2>/dev/null)"
for name in $(compgen -e); do # the env file's values, not this shell's, must reach the stack
  case "$name" in KALEYRA_* | REGIONSYNC_* | POSTGRES_PASSWORD) unset "$name" ;; esac
done
smoke_dir=$(mktemp -d)
hook_secret="whsec_$(head -c 32 /dev/urandom | base64)"
api_key="smoke-key-$RANDOM$RANDOM"
printf '%s\n' \
  "POSTGRES_PASSWORD=smoke-$RANDOM$RANDOM" \
  KALEYRA_BASE_URL=http://127.0.0.1:8080 \
  KALEYRA_SID=smoke \
  "KALEYRA_API_KEY=$api_key" \
  REGIONSYNC_DB_SCHEMA=smoke \
  REGIONSYNC_SCHEDULE=20s \
  REGIONSYNC_LOG_FORMAT=json \
  REGIONSYNC_LOG_LEVEL=DEBUG \
  REGIONSYNC_MAX_REJECT_FRACTION=0.9 \
  REGIONSYNC_NOTIFY_ON=added \
  REGIONSYNC_WEBHOOK_URL=http://127.0.0.1:8080/_fake/webhook \
  "REGIONSYNC_WEBHOOK_SECRET=$hook_secret" >"$smoke_dir/regionsync.env"
printf '%s\n' \
  'services:' \
  '  daemon:' \
  '    healthcheck:' \
  '      interval: 2s' \
  '    restart: "no"' \
  '  fake-kaleyra-smoke:' \
  '    image: regionsync:local' \
  "    command: [fake-api, --port, '8080', --quiet, --sid, smoke, --api-key, '$api_key', --webhook-secret, '$hook_secret']" \
  '    network_mode: service:daemon' \
  '    healthcheck:' \
  '      disable: true' >"$smoke_dir/fake.yaml"
compose+=(-p "$tag" --env-file "$smoke_dir/regionsync.env" -f docker/compose.yaml
  -f "$smoke_dir/fake.yaml" --profile fake)
docker tag "$image" regionsync:local
"${compose[@]}" up -d --no-build daemon fake-kaleyra-smoke demo fake-kaleyra 2>&1 | sed 's/^/   /'
echo "up $(at)"
daemon=$("${compose[@]}" ps -q daemon)
# The first sync may run before the fake listens: the next tick, 20 s later, tries again.
pg() { "${compose[@]}" exec -T postgres psql -U regionsync -d regionsync -tAc "$1"; }
compose_synced() { [ "$(pg "SELECT count(*) FROM smoke.sync_runs WHERE status = 'succeeded'")" -ge 1 ]; }
wait_for 180 "a successful sync in the compose stack's database" compose_synced
echo "database: $(pg "SELECT count(*) FROM smoke.regions") regions in schema smoke" \
  "(REGIONSYNC_DB_SCHEMA) $(at)"
compose_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$daemon")" = healthy ]; }
wait_for 60 "the compose daemon's health check turning healthy" compose_healthy
probe=$(docker inspect -f '{{json .Config.Healthcheck.Test}}' "$daemon")
[[ "$probe" == *"/healthz"* ]] || fail "the compose daemon's health check is not /healthz: $probe"
healthz=$(curl -fsS http://127.0.0.1:9100/healthz)
grep -q '"max_age_seconds": 60.0' <<<"$healthz" ||
  fail "/healthz does not follow REGIONSYNC_SCHEDULE=20s (3 periods): $healthz"
echo "health check: healthy $(at); it probes /healthz, whose limit is 60 s, 3 x the 20s schedule"
in_container=$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$daemon")
while IFS= read -r line; do
  [[ "$line" == POSTGRES_PASSWORD=* ]] || grep -qxF -- "$line" <<<"$in_container" ||
    fail "the env file's ${line%%=*} did not reach the daemon's container"
done <"$smoke_dir/regionsync.env"
logged=$(docker logs "$daemon" 2>&1)
grep -q '"level": "debug"' <<<"$logged" ||
  fail "no debug line in the daemon's log (REGIONSYNC_LOG_LEVEL=DEBUG)"
received=$(docker exec "$daemon" python -c 'import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:8080/_fake/webhook").read().decode())')
grep -q '"verified": true' <<<"$received" ||
  fail "no signed webhook reached the fake receiver: ${received:0:300}"
echo "every setting of the env file is in the daemon's environment and took effect" \
  "(schema, schedule, DEBUG lines, a signed webhook for the added regions) $(at)"
demo=$("${compose[@]}" ps -q demo)
demo_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$demo")" = healthy ]; }
wait_for 120 "the demo's health check turning healthy" demo_healthy
probe=$(docker inspect -f '{{json .Config.Healthcheck.Test}}' "$demo")
[[ "$probe" == *"/healthz"* ]] || fail "the demo's health check is not /healthz: $probe"
demo_synced=$("${compose[@]}" exec -T demo-postgres psql -U regionsync -d regionsync -tAc \
  "SELECT count(*) FROM sync_runs WHERE status = 'succeeded'")
served=$(curl -fsS http://127.0.0.1:8080/_fake/regions | grep -o '"id"' | wc -l)
echo "demo: healthy $(at), $demo_synced successful sync(s); /healthz on 127.0.0.1:9101 says" \
  "$(curl -fsS http://127.0.0.1:9101/healthz | grep -o '"status": "[a-z]*"');" \
  "the fake's admin endpoints on 127.0.0.1:8080 serve $served regions"
"${compose[@]}" stop -t 120 daemon >/dev/null 2>&1
code=$(docker inspect -f '{{.State.ExitCode}}' "$daemon")
[ "$code" = 0 ] || fail "compose stop daemon: exit code $code"
echo "compose stop daemon: exit code 0 $(at)"
"${compose[@]}" down -v --timeout 120 >/dev/null 2>&1
compose=()
echo "compose down -v: done $(at)"

step ""
echo "docker smoke passed in $((SECONDS - started_all)) s; image $image: $((size / 1000000)) MB"

#!/usr/bin/env bash
# Runs the whole mesh on this machine as plain processes, without Docker:
# the broker and services A-D (and the tutorial consumer), each logging to
# $MESH_DATA/logs. Ctrl-C (or SIGTERM) stops them all.
#
#   deploy/run-local.sh                 # ports 50051 (broker) .. 50056
#   MESH_BASE_PORT=60051 deploy/run-local.sh
#
# Prometheus metrics are served on 9090 (broker) .. 9095 (notifications),
# or from MESH_METRICS_BASE_PORT on: curl localhost:9090/metrics
#
# Secure by default, like docker-compose: mesh-certs writes a development CA
# and a certificate per service (and admin.crt for you) to $MESH_DATA/certs,
# every connection is mutual TLS, the broker enforces deploy/mesh/acl.toml
# and encrypts its log with certs/log.key. MESH_SECURITY=plaintext turns TLS
# and authentication off (the broker warns). Call it as admin:
#   grpcurl -cacert data/local/certs/ca.crt -cert data/local/certs/admin.crt \
#     -key data/local/certs/admin.key localhost:50051 list
#
# MESH_BIN_DIR skips the build and uses binaries from that directory.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${MESH_BASE_PORT:-50051}
mbase=${MESH_METRICS_BASE_PORT:-9090}
data=${MESH_DATA:-./data/local}
bin=${MESH_BIN_DIR:-}
if [ -z "$bin" ]; then
  cargo build --release --workspace --exclude mesh-bench --bins  # not the benchmark tools
  bin=target/release
fi
mkdir -p "$data/logs"
security=${MESH_SECURITY:-mtls}
certs="$data/certs"
case "$security" in
  mtls | plaintext) ;;
  *) echo "MESH_SECURITY must be mtls or plaintext, not $security" >&2; exit 2 ;;
esac
mkdir -p "$certs"
"$bin/mesh-certs" dev --out "$certs" >"$data/logs/certs.log"

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
}
trap stop INT TERM EXIT

start() { # name, then VAR=value settings, then optionally -- and arguments
  local name=$1; shift
  local vars=() args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
  [ $# -gt 0 ] && shift && args=("$@")
  env "${vars[@]}" "$bin/$name" "${args[@]}" >>"$data/logs/$name.log" 2>&1 &
  pids+=($!)
}

tls() { # PREFIX name: the settings that make process `name` speak mTLS
  [ "$security" = mtls ] || return 0
  echo "$1__TLS__CA=$certs/ca.crt" "$1__TLS__CERT=$certs/$2.crt" "$1__TLS__KEY=$certs/$2.key"
}

wait_healthy() { # name, port, then its settings (the healthcheck uses its TLS)
  local name=$1 port=$2; shift 2
  for _ in $(seq 1 100); do
    env "$@" "$bin/$name" healthcheck "127.0.0.1:$port" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$name did not become healthy; see $data/logs/$name.log" >&2
  exit 1
}

if [ "$security" = mtls ]; then
  broker="https://127.0.0.1:$base"
  auth=(BROKER__AUTH=mtls BROKER__ACL_FILE=deploy/mesh/acl.toml $(tls BROKER broker))
else
  broker="http://127.0.0.1:$base"
  auth=(BROKER__AUTH=none)
fi
# deploy/mesh/broker.toml: the demo's topics (its acl_file path is the
# container's, so the one of this checkout is set above).
bsettings=(BROKER__LISTEN="127.0.0.1:$base" BROKER__DATA_DIR="$data/broker"
  BROKER__METRICS_LISTEN="127.0.0.1:$mbase"
  BROKER__STORAGE__ENCRYPTION_KEY_FILE="$certs/log.key" "${auth[@]}")
start broker "${bsettings[@]}" -- --config deploy/mesh/broker.toml
wait_healthy broker "$base" "${bsettings[@]}"
port=$base
mport=$mbase
for svc in orders billing shipping analytics notifications; do
  port=$((port + 1))
  mport=$((mport + 1))
  up=$(echo "$svc" | tr '[:lower:]' '[:upper:]')
  settings=("${up}__LISTEN=127.0.0.1:$port" "${up}__BROKER=$broker"
    "${up}__METRICS_LISTEN=127.0.0.1:$mport" $(tls "$up" "$svc"))
  start "$svc" "${settings[@]}"
  wait_healthy "$svc" "$port" "${settings[@]}"
done

echo "mesh running ($security): broker 127.0.0.1:$base, orders :$((base + 1)), billing :$((base + 2)), shipping :$((base + 3)), analytics :$((base + 4)), notifications :$((base + 5)); metrics on :$mbase..:$((mbase + 5)); logs in $data/logs; certificates in $certs; Ctrl-C stops"
wait

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

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
}
trap stop INT TERM EXIT

start() { # name, then VAR=value settings
  local name=$1; shift
  env "$@" "$bin/$name" >>"$data/logs/$name.log" 2>&1 &
  pids+=($!)
}

wait_healthy() { # name, port
  for _ in $(seq 1 100); do
    "$bin/$1" healthcheck "127.0.0.1:$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not become healthy; see $data/logs/$1.log" >&2
  exit 1
}

broker="http://127.0.0.1:$base"
start broker BROKER__LISTEN="127.0.0.1:$base" BROKER__DATA_DIR="$data/broker" \
  BROKER__METRICS_LISTEN="127.0.0.1:$mbase"
wait_healthy broker "$base"
port=$base
mport=$mbase
for svc in orders billing shipping analytics notifications; do
  port=$((port + 1))
  mport=$((mport + 1))
  up=$(echo "$svc" | tr '[:lower:]' '[:upper:]')
  start "$svc" "${up}__LISTEN=127.0.0.1:$port" "${up}__BROKER=$broker" \
    "${up}__METRICS_LISTEN=127.0.0.1:$mport"
  wait_healthy "$svc" "$port"
done

echo "mesh running: broker 127.0.0.1:$base, orders :$((base + 1)), billing :$((base + 2)), shipping :$((base + 3)), analytics :$((base + 4)), notifications :$((base + 5)); metrics on :$mbase..:$((mbase + 5)); logs in $data/logs; Ctrl-C stops"
wait

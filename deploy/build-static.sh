#!/usr/bin/env bash
# Builds the mesh's binaries statically linked on this machine and puts them
# in deploy/bin/, for deploy/Dockerfile.prebuilt (machines that cannot pull a
# base image):
#   deploy/build-static.sh && MESH_DOCKERFILE=deploy/Dockerfile.prebuilt docker-compose up --build
# The binaries need nothing from the image: no libc, no shell; glibc's
# built-in files/dns lookup resolves service names. The cargo command is the
# one of deploy/Dockerfile's builder stage.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
bins=(broker orders billing shipping analytics notifications)
args=()
for b in "${bins[@]}"; do args+=(-p "$b"); done
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target" "${args[@]}"
mkdir -p deploy/bin
for b in "${bins[@]}"; do
  cp "target/$target/release/$b" deploy/bin/
  strip deploy/bin/$b   # debug info is not needed in an image
done
echo "static binaries in deploy/bin: ${bins[*]}"

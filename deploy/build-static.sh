#!/usr/bin/env bash
# Builds the mesh's binaries statically linked on this machine and puts them
# in deploy/bin/, for deploy/Dockerfile.prebuilt (machines that cannot pull a
# base image):
#   deploy/build-static.sh && MESH_DOCKERFILE=deploy/Dockerfile.prebuilt docker-compose up --build
# The binaries need nothing from the image: no libc, no shell; glibc's
# built-in files/dns lookup resolves service names. The cargo command is the
# one of deploy/Dockerfile's builder stage. Each image of
# deploy/Dockerfile.prebuilt copies the one binary its BIN names.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
# Every binary of the workspace: no list to keep in step with compose, whose
# entries pick one each by BIN. Except the benchmark tools (package
# mesh-bench, bench/): no image runs them.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target" --workspace --exclude mesh-bench --bins
rm -rf deploy/bin
mkdir -p deploy/bin
find "target/$target/release" -maxdepth 1 -type f -perm -u+x -exec cp {} deploy/bin/ \;
strip deploy/bin/*   # debug info is not needed in an image
echo "static binaries in deploy/bin: $(cd deploy/bin && echo *)"

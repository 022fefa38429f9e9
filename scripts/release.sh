#!/usr/bin/env bash
# Builds fnbroker's static release binary: x86_64-unknown-linux-musl, with librdkafka, OpenSSL
# (librdkafka's TLS) and zlib built in, stripped. Prints its size and what `ldd` says of it.
#
#   scripts/release.sh            # -> dist/fnbroker (and dist/fnbroker-<version>-x86_64-linux-musl)
#
# The glibc build (`cargo build --release`) stays the development build.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fnbroker/target}"

# musl-gcc compiles the C libraries (librdkafka, OpenSSL, zlib, aws-lc) for musl.
if ! command -v musl-gcc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools
  else
    echo "release: musl-gcc is missing; install Debian's musl-tools" >&2
    exit 1
  fi
fi
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

cargo build --release --locked --target "$target" -p fnbroker --features static

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
mkdir -p dist
cp "$CARGO_TARGET_DIR/$target/release/fnbroker" dist/fnbroker
strip dist/fnbroker
cp dist/fnbroker "dist/fnbroker-$version-x86_64-linux-musl"

size=$(stat -c %s dist/fnbroker)
echo "release: dist/fnbroker-$version-x86_64-linux-musl"
echo "release: size $size bytes ($(numfmt --to=iec-i --suffix=B "$size"))"
# ldd exits 1 on a static executable; what it says is the verdict.
verdict=$(ldd dist/fnbroker 2>&1 || true)
echo "release: ldd: $(echo "$verdict" | tr -s ' \t' ' ' | head -3)"
case "$verdict" in
  *"not a dynamic executable"* | *"statically linked"*) ;;
  *) echo "release: the binary is not static" >&2; exit 1 ;;
esac
dist/fnbroker --version

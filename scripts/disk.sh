#!/usr/bin/env bash
# Makes room for the build when the disk under the build directory is nearly full: a linker
# that runs out of space dies with SIGBUS in the middle of the suite, after most of the time is
# spent. Says how much is free and what it removed.
set -euo pipefail
target="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
need_gib="${FNBROKER_BUILD_SPACE_GIB:-20}"
mkdir -p "$target"
free_gib() { df -P -B1G "$target" | awk 'NR == 2 { print $4 }'; }
echo "disk: $(free_gib) GiB free under $target (the build needs about $need_gib)"
[ "$(free_gib)" -ge "$need_gib" ] && exit 0
# Incremental state first (rebuilt on demand, never needed by a clean build), then the debug
# profile's artifacts from older builds (a full debug rebuild, ~30 min on 2 cores).
for what in "$target"/*/incremental "$target"/debug; do
  [ -e "$what" ] || continue
  echo "disk: removing $what ($(du -sh "$what" | cut -f1))"
  rm -rf "$what"
  [ "$(free_gib)" -ge "$need_gib" ] && break
done
echo "disk: $(free_gib) GiB free"
if [ "$(free_gib)" -lt 5 ]; then
  echo "disk: less than 5 GiB free: the build will not fit; free space outside $target" >&2
  exit 1
fi

#!/usr/bin/env bash
# Installs the system packages the build needs (rdkafka builds its bundled librdkafka with
# OpenSSL and zlib). Quick when they are there.
set -euo pipefail
missing=()
for pkg in libssl-dev zlib1g-dev pkg-config make g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "deps: missing ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

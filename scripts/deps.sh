#!/usr/bin/env bash
# Installs the system packages the build needs (rdkafka builds its bundled librdkafka with
# OpenSSL and zlib). Quick when they are there.
set -euo pipefail
# Installs Debian packages when run as root, or says which are missing.
apt_install() {
  echo "deps: installing $*" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
  else
    echo "deps: missing $*; install them (apt-get install $*)" >&2
    exit 1
  fi
}

missing=()
for pkg in libssl-dev zlib1g-dev pkg-config make g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# systemd-analyze checks the systemd unit in deploy/ (Debian's systemd package; no systemd needs
# to run); Chromium loads the admin status page in the tests, as a person's browser does.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# musl-gcc builds the static release binary (scripts/release.sh); buildah builds the container
# image's runtime stage in the tests (chroot isolation, vfs storage: no daemon).
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  echo "deps: adding the x86_64-unknown-linux-musl target" >&2
  rustup target add x86_64-unknown-linux-musl >&2
fi

# botocore (the AWS SDK for Python's signer) checks the Lambda function kind's SigV4 signatures in
# the tests; kubernetes-validate (the Kubernetes OpenAPI schemas) and cloudcoil.models.keda (the
# KEDA CRD's schema) check the manifests in deploy/kubernetes offline. One virtual environment
# outside the clone, made once.
# awslambdaric (AWS's Lambda runtime client for Python) runs the Python handlers of the `process`
# function kind's tests and bench, as on Lambda. The CloudEvents SDK for Python 1.x, with the two
# HTTP clients it is used with (requests, aiohttp), sends events to the HTTP ingress as users do.
venv="$HOME/.cache/fnbroker/venv"
if ! "$venv/bin/python3" -c "import botocore, kubernetes_validate, cloudcoil.models.keda, awslambdaric, cloudevents, requests, aiohttp" >/dev/null 2>&1; then
  echo "deps: installing botocore, kubernetes-validate, cloudcoil.models.keda, awslambdaric, cloudevents, requests and aiohttp into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q "botocore==1.35.*" "kubernetes-validate==1.37.0" "cloudcoil.models.keda==2.16.1.0" "awslambdaric==4.2.2" "cloudevents==1.12.1" "requests==2.34.*" "aiohttp==3.14.*" >&2
fi

# aws-lambda-ric (AWS's Lambda runtime client for Node.js) runs a Node handler in the `process`
# kind's tests. Its install script builds its native client (with libcurl) from source: cmake,
# autoconf, automake and libtool, about 2 minutes once.
node_ric="$HOME/.cache/fnbroker/node-ric"
if [ ! -f "$node_ric/node_modules/aws-lambda-ric/dist/rapid-client.node" ]; then
  for tool in cmake autoconf automake libtool; do
    dpkg -s "$tool" >/dev/null 2>&1 || apt_install "$tool"
  done
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  echo "deps: installing aws-lambda-ric 3.3.0 into $node_ric" >&2
  rm -rf "$node_ric" && mkdir -p "$node_ric"
  (cd "$node_ric" && npm install -s --prefix . aws-lambda-ric@3.3.0 >&2)
fi

# promtool (Prometheus' own exposition parser and linter, `promtool check metrics`) checks
# /metrics in the tests. Only the binary is taken from Debian's prometheus package, unpacked
# outside the clone: installing the package would also start a Prometheus server.
promtool="$HOME/.cache/fnbroker/promtool/usr/bin/promtool"
if ! "$promtool" --version >/dev/null 2>&1; then
  echo "deps: unpacking promtool from Debian's prometheus package" >&2
  work=$(mktemp -d)
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 || true; fi
  (cd "$work" && apt-get download prometheus >&2)
  rm -rf "$HOME/.cache/fnbroker/promtool"
  dpkg-deb -x "$work"/prometheus_*.deb "$HOME/.cache/fnbroker/promtool"
  # The server binary is not needed.
  rm -f "$HOME/.cache/fnbroker/promtool/usr/bin/prometheus"
  rm -rf "$work"
fi

# cargo-deny checks the dependency graph's licences, bans and sources (deny.toml) in the test
# command; built once from crates.io into a folder outside the clone (about 4 minutes on 2 cores).
deny="$HOME/.cache/fnbroker/cargo-deny/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -q "^cargo-deny 0.20.2$"; then
  echo "deps: installing cargo-deny 0.20.2 into $HOME/.cache/fnbroker/cargo-deny" >&2
  cargo install -q --locked cargo-deny --version 0.20.2 --root "$HOME/.cache/fnbroker/cargo-deny" >&2
fi

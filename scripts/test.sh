#!/usr/bin/env bash
# The one test command: starts the services the tests need, then checks formatting, lints and
# runs every test of the workspace (unit, conformance and end-to-end against the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/services.sh
scripts/disk.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The connector kinds are cargo features: the quickstart's build (HTTP alone) and an MQTT and HTTP
# build must compile and lint clean too.
echo "== cargo clippy (fewer connector kinds)"
cargo clippy -p fnbroker --locked --no-default-features --features http -- -D warnings
cargo clippy -p fnbroker --locked --no-default-features --features mqtt,http -- -D warnings

# The dependency graph: permissive licences only, no wildcard versions, crates.io only (deny.toml).
echo "== cargo deny"
"$HOME/.cache/fnbroker/cargo-deny/bin/cargo-deny" --log-level error check licenses bans sources

# The static release binary: the tests run it from the container image's root filesystem.
echo "== scripts/release.sh (static binary)"
scripts/release.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# The benchmark harness as a smoke test: every event of a short run must arrive (no timing is
# asserted; the debug build measures nothing worth reading).
echo "== bench --quick (smoke)"
cargo run -q -p bench --locked -- --quick --connector jetstream
cargo run -q -p bench --locked -- --quick --warm

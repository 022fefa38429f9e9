#!/usr/bin/env bash
# Starts every service the tests need that is not already running. Idempotent, and quick when
# everything is up. Used by scripts/test.sh (and so by CI).
#
#   RabbitMQ 127.0.0.1:5672, Mosquitto 127.0.0.1:1883, NATS with JetStream 127.0.0.1:4222,
#   Kafka (tansu, installed from crates.io on first use) 127.0.0.1:9092, Redis 127.0.0.1:6379, and
#   PostgreSQL's server programs (the PostgreSQL tests start clusters of their own with initdb).
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  local name=$1 port=$2 secs=$3 i
  for ((i = 0; i < secs * 4; i++)); do
    if up "$port"; then return 0; fi
    sleep 0.25
  done
  log "$name did not come up on 127.0.0.1:$port within ${secs}s"
  return 1
}

ensure() { # name port seconds start-command...
  local name=$1 port=$2 secs=$3
  shift 3
  if up "$port"; then return 0; fi
  log "starting $name"
  "$@" || { log "cannot start $name with: $*"; return 1; }
  wait_for "$name" "$port" "$secs"
}

need() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2") >&2
  else
    log "$1 is missing and this user cannot install $2"; return 1
  fi
}

ensure_nats() {
  need nats-server nats-server
  mkdir -p /var/lib/nats-server
  ensure "NATS" 4222 30 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

ensure_mosquitto() {
  need mosquitto mosquitto
  ensure "Mosquitto" 1883 30 mosquitto -d -c /etc/mosquitto/mosquitto.conf
}

ensure_rabbitmq() {
  need rabbitmq-server rabbitmq-server
  ensure "RabbitMQ" 5672 120 rabbitmq-server -detached
}

# tansu stores its data in SQLite (the `libsql` feature, which its default build leaves out): its
# in-memory storage returns nothing to a fetch that starts inside a record batch, so a consumer
# that resumes from a committed offset mid-batch never receives the rest (measured with a plain
# librdkafka client: docs/notes/tansu.md). It is
# installed with that feature into a folder of its own, outside the clone and reused; the
# database is new at every start.
TANSU_ROOT="${FNBROKER_TANSU_ROOT:-$HOME/.cache/fnbroker/tansu-sqlite}"
TANSU_DATA="${FNBROKER_TANSU_DATA:-${TMPDIR:-/tmp}/fnbroker-tansu}"

ensure_tansu() {
  if up 9092; then return 0; fi
  local bin="$TANSU_ROOT/bin/tansu"
  if [ ! -x "$bin" ]; then
    log "installing tansu 0.6.0 (with SQLite storage) from crates.io: a long first build, cached afterwards"
    cargo install --root "$TANSU_ROOT" tansu --version 0.6.0 --locked --features libsql >&2
  fi
  rm -rf "$TANSU_DATA"
  mkdir -p "$TANSU_DATA"
  log "starting tansu (Kafka API, SQLite storage in $TANSU_DATA) on 127.0.0.1:9092"
  # tansu reads the path of a sqlite:// URL as relative to its working directory.
  (cd "$TANSU_DATA" && exec nohup "$bin" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine "sqlite://tansu.db") \
    </dev/null >/tmp/fnbroker-tansu.log 2>&1 &
  wait_for "tansu" 9092 60
}

ensure_redis() {
  need redis-server redis-server
  ensure "Redis" 6379 30 redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes
}

# The PostgreSQL tests run initdb and pg_ctl (as the postgres user) for clusters with
# wal_level=logical; the machine's server keeps running as it is.
ensure_postgres_programs() {
  if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then return 0; fi
  need pg_ctlcluster postgresql
}

ensure_nats
ensure_mosquitto
ensure_redis
ensure_postgres_programs
ensure_rabbitmq
ensure_tansu
log "all services up"

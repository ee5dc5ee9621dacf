#!/usr/bin/env bash
# The benchmark suite in one command. Starts NATS if it is down, builds linkd in release mode,
# starts a PostgreSQL cluster of its own (initdb in a scratch folder, a free port, the shared
# server's durability and autovacuum settings, and pg_stat_statements loaded so that statements
# per call are counted; LINKD_PG_ADMIN_URL=postgres://… uses that server instead), creates scratch
# databases (linkd_bench_command, linkd_bench_projection), a scratch
# stream and subject prefix, fresh development keys and pepper, a local SMTP sink on a free port,
# starts both services on 127.0.0.1:50061 / :50062 (so ./scripts/run.sh can keep running), runs
# `linkd-bench suite`, which writes its report into docs/performance.md, and always tears down
# (processes, databases, stream, scratch folder), even on failure or Ctrl-C.
#
#   ./scripts/bench.sh            # the full suite (about 12 minutes on 2 cores)
#   ./scripts/bench.sh --quick    # a smoke run of about a minute; figures are not meaningful
#   ./scripts/bench.sh growth     # one part only (load, growth or rebuild), e.g. to profile it;
#                                 # prints its tables and leaves docs/performance.md alone
#
# Extra arguments go to `linkd-bench suite` (see `target/release/linkd-bench suite --help`), or
# to the part named first.
# LINKD_BENCH_REPORT=path writes the report elsewhere than docs/performance.md.
# LINKD_BENCH_SERVICE_BIN=dir runs the command-service and projection-service binaries found there
# (e.g. an older commit's release build) under this harness: a before/after comparison measures
# both with the same bench (docs/performance.md, "Before and after").
# LINKD_BENCH_TRACES=on exports every span of both services over OTLP to a receiver that counts
# them (`linkd-bench otlp-sink`): run once with it and once without to see what tracing costs.
# The services' logs stay in .dev/logs/bench/ for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

SHARED_PG=postgres://postgres@127.0.0.1:5432/postgres
PG_ADMIN=${LINKD_PG_ADMIN_URL:-}
NATS_URL=${LINKD_NATS_URL:-nats://127.0.0.1:4222}
COMMAND_DB=linkd_bench_command
PROJECTION_DB=linkd_bench_projection
STREAM=LINKD_BENCH_EVENTS
PREFIX=linkdbench.events
CONSUMERS=linkd-bench
COMMAND_ADDR=127.0.0.1:${LINKD_BENCH_COMMAND_PORT:-50061}
PROJECTION_ADDR=127.0.0.1:${LINKD_BENCH_PROJECTION_PORT:-50062}
BIN=target/release
SERVICE_BIN=${LINKD_BENCH_SERVICE_BIN:-$BIN}
LOGS=.dev/logs/bench
export PGOPTIONS="${PGOPTIONS:-} --client-min-messages=warning"

for addr in "$COMMAND_ADDR" "$PROJECTION_ADDR"; do
  if port_open "${addr##*:}"; then
    echo "error: $addr is already in use (is a benchmark already running?)" >&2
    exit 1
  fi
done

echo "building linkd (release; the first build takes a few minutes)…" >&2
cargo build --locked --release -q -p command-service -p projection-service -p linkctl -p bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/linkd-bench.XXXXXX")
pids=()
OWN_PG=
teardown() {
  local status=$?
  trap - EXIT INT TERM
  echo "tearing down…" >&2
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$OWN_PG" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 ||
      echo "warning: could not stop the bench's PostgreSQL cluster" >&2
    cp "$WORK/pg/server.log" "$LOGS/postgres.log" 2>/dev/null || true
  elif [ -n "$PG_ADMIN" ]; then
    for db in "$COMMAND_DB" "$PROJECTION_DB"; do
      psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
        echo "warning: could not drop database $db" >&2
    done
  fi
  "$BIN/linkd-bench" drop-stream --nats-url "$NATS_URL" --stream "$STREAM" ||
    echo "warning: could not delete stream $STREAM" >&2
  rm -rf "$WORK"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# PostgreSQL's programs run as `postgres` when this script runs as root (PostgreSQL refuses root).
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ -z "$PG_ADMIN" ]; then
  PG_BIN=$(pg_config --bindir 2>/dev/null || true)
  [ -x "$PG_BIN/initdb" ] || PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ ! -x "$PG_BIN/initdb" ]; then
    echo "error: PostgreSQL's initdb was not found; install Debian's postgresql package, or set" \
         "LINKD_PG_ADMIN_URL to run against a server of yours" >&2
    exit 1
  fi
  # The cluster mirrors the shared server's settings that shape the figures.
  mirrored=()
  for setting in autovacuum fsync synchronous_commit shared_buffers max_connections; do
    value=$(psql "$SHARED_PG" -Atc "SHOW $setting" 2>/dev/null || true)
    [ -n "$value" ] && mirrored+=("$setting = '$value'")
  done
  mkdir -p "$WORK/pg"
  if [ "$(id -u)" = 0 ]; then chmod 711 "$WORK" && chown postgres: "$WORK/pg"; fi
  as_postgres "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust --no-sync >/dev/null
  PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  {
    echo "port = $PG_PORT"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$WORK/pg'"
    echo "shared_preload_libraries = 'pg_stat_statements'"
    echo "pg_stat_statements.track = all"
    printf '%s\n' "${mirrored[@]}"
  } | as_postgres tee -a "$WORK/pg/data/postgresql.conf" >/dev/null
  OWN_PG=1
  as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w start >/dev/null
  PG_ADMIN=postgres://postgres@127.0.0.1:$PG_PORT/postgres
fi
PG_SERVER=${PG_ADMIN%/*}

# Fresh scratch state (a previous run that was killed may have left some behind).
for db in "$COMMAND_DB" "$PROJECTION_DB"; do
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $db"
done
# Statements per call are read from the event store's database (where the server loads
# pg_stat_statements; elsewhere the report shows "—").
psql "$PG_SERVER/$COMMAND_DB" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null ||
  echo "note: pg_stat_statements is not loaded on $PG_SERVER; statements per call are not counted" >&2
"$BIN/linkd-bench" drop-stream --nats-url "$NATS_URL" --stream "$STREAM"
"$BIN/linkctl" dev keys --dir "$WORK/keys" >/dev/null
PEPPER=$(head -c 48 /dev/urandom | base64 -w0)
mkdir -p "$LOGS"
: >"$LOGS/command-service.log"
: >"$LOGS/projection-service.log"
: >"$LOGS/smtp-sink.log"
: >"$LOGS/otlp-sink.log"

# The email worker runs as in production, against a local SMTP sink on a free port.
SMTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 scripts/smtp-sink.py --port "$SMTP_PORT" --dir "$WORK/mail" >>"$LOGS/smtp-sink.log" 2>&1 &
pids+=($!)
wait_for_port "SMTP sink (log: $LOGS/smtp-sink.log)" "$SMTP_PORT"

TRACES=()
if [ "${LINKD_BENCH_TRACES:-off}" = on ]; then
  OTLP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$BIN/linkd-bench" otlp-sink --addr "127.0.0.1:$OTLP_PORT" >>"$LOGS/otlp-sink.log" 2>&1 &
  pids+=($!)
  wait_for_port "OTLP receiver (log: $LOGS/otlp-sink.log)" "$OTLP_PORT"
  TRACES=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT")
  echo "traces: exported to 127.0.0.1:$OTLP_PORT (count in $LOGS/otlp-sink.log after the run)" >&2
fi
COMMON=(
  "${TRACES[@]}"
  LINKD_NATS_URL="$NATS_URL"
  LINKD_STREAM="$STREAM"
  LINKD_SUBJECT_PREFIX="$PREFIX"
  LINKD_IDP_PUBLIC_KEYS_FILE="$WORK/keys/idp.pub.pem"
  LINKD_IDP_ISSUER=linkd-dev-idp
  # Signed as in production: the relay signs, the projection service verifies (ADR 0022).
  LINKD_BUS_SIGNING_KEY_FILE="$WORK/keys/bus.key.pem"
  LINKD_BUS_VERIFY_KEYS_FILE="$WORK/keys/bus.pub.pem"
  RUST_LOG="${RUST_LOG:-info}"
)
# The bench measures throughput from one address and a few accounts: every rate limit is lifted.
BENCH_RATE_LIMITS=$(printf '%s=1000000/1,' start_link.address start_link.device scan_qr.address \
  scan_qr.link_attempt authenticate_with_luxtrust.address authenticate_with_luxtrust.link_attempt \
  authenticate_with_luxtrust.serial set_secret_code.address set_secret_code.link_attempt \
  verify_secret_code.address verify_secret_code.device issue_link_qr.account)
# The load test scans every QR code in one phase and confirms them in the next: the holder's
# window is as long as a link attempt, so a long scan phase never outlives its confirmations.
env "${COMMON[@]}" \
  LINKD_COMMAND_DATABASE_URL="$PG_SERVER/$COMMAND_DB" \
  LINKD_COMMAND_GRPC_ADDR="$COMMAND_ADDR" \
  LINKD_LUXTRUST_PUBLIC_KEYS_FILE="$WORK/keys/luxtrust.pub.pem" \
  LINKD_LUXTRUST_ISSUER=linkd-dev-luxtrust \
  LINKD_SECRET_CODE_PEPPER="$PEPPER" \
  LINKD_KEK_FILE="$WORK/keys/kek" \
  LINKD_QR_CONFIRMATION_SECONDS=600 \
  LINKD_RATE_LIMITS="$BENCH_RATE_LIMITS" \
  "$SERVICE_BIN/command-service" >>"$LOGS/command-service.log" 2>&1 &
pids+=($!)
env "${COMMON[@]}" \
  LINKD_PROJECTION_DATABASE_URL="$PG_SERVER/$PROJECTION_DB" \
  LINKD_PROJECTION_GRPC_ADDR="$PROJECTION_ADDR" \
  LINKD_CONSUMER_PREFIX="$CONSUMERS" \
  LINKD_EVENT_STORE_URL="$PG_SERVER/$COMMAND_DB" \
  LINKD_KEK_FILE="$WORK/keys/kek" \
  LINKD_SMTP_HOST=127.0.0.1 LINKD_SMTP_PORT="$SMTP_PORT" LINKD_SMTP_TLS=none \
  LINKD_QUERY_RATE_LIMITS="list_devices.account=1000000/1,get_device.account=1000000/1,audit.caller=1000000/1" \
  "$SERVICE_BIN/projection-service" >>"$LOGS/projection-service.log" 2>&1 &
pids+=($!)
wait_for_port "command service (log: $LOGS/command-service.log)" "${COMMAND_ADDR##*:}"
wait_for_port "projection service (log: $LOGS/projection-service.log)" "${PROJECTION_ADDR##*:}"

PART=suite
case "${1:-}" in
  load | growth | rebuild) PART=$1 && shift ;;
esac
REPORT=()
if [ "$PART" = suite ]; then
  REPORT=(--report "${LINKD_BENCH_REPORT:-docs/performance.md}" --invocation "scripts/bench.sh${*:+ $*}")
fi
echo "linkd (release) is up on $COMMAND_ADDR and $PROJECTION_ADDR; running $PART…" >&2
"$BIN/linkd-bench" "$PART" \
  --addr "http://$COMMAND_ADDR" \
  --query-addr "http://$PROJECTION_ADDR" \
  --keys "$WORK/keys" \
  --command-db "$PG_SERVER/$COMMAND_DB" \
  --read-db "$PG_SERVER/$PROJECTION_DB" \
  --nats-url "$NATS_URL" \
  --stream "$STREAM" \
  --subject-prefix "$PREFIX" \
  --consumer-prefix "$CONSUMERS" \
  --projection-bin "$SERVICE_BIN/projection-service" \
  "${REPORT[@]}" \
  "$@"

#!/usr/bin/env bash
# Starts linkd locally with the development configuration: PostgreSQL and NATS (if down), the two
# databases, development keys and pepper in .dev/ (git-ignored), then both services and the
# reference portal page (portal-web, with its development sign-in) in the foreground. Ctrl-C stops them. Settings can be overridden with the variables in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

PG_ADMIN=${LINKD_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
for db in linkd_command linkd_projection; do
  if [ -z "$(psql "$PG_ADMIN" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
    psql "$PG_ADMIN" -qc "CREATE DATABASE $db" && echo "created database $db"
  fi
done

# LINKD_PROFILE=release builds optimised binaries (for benchmarks); the default shares the
# test suite's debug build.
PROFILE=${LINKD_PROFILE:-debug}
profile_flag=(); [ "$PROFILE" = release ] && profile_flag=(--release)
echo "building linkd ($PROFILE; the first build takes a few minutes)…"
cargo build --locked -q "${profile_flag[@]}" -p command-service -p projection-service -p linkctl -p portal-web
BIN=target/$PROFILE

mkdir -p .dev/logs
$BIN/linkctl dev keys --dir .dev/keys >/dev/null
if [ ! -s .dev/pepper ]; then
  (umask 077; head -c 48 /dev/urandom | base64 -w0 > .dev/pepper)
fi

export LINKD_COMMAND_DATABASE_URL=${LINKD_COMMAND_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/linkd_command}
export LINKD_PROJECTION_DATABASE_URL=${LINKD_PROJECTION_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/linkd_projection}
export LINKD_EVENT_STORE_URL=${LINKD_EVENT_STORE_URL:-$LINKD_COMMAND_DATABASE_URL}
export LINKD_COMMAND_GRPC_ADDR=${LINKD_COMMAND_GRPC_ADDR:-127.0.0.1:50051}
export LINKD_PROJECTION_GRPC_ADDR=${LINKD_PROJECTION_GRPC_ADDR:-127.0.0.1:50052}
# Prometheus metrics (set either to an empty value to turn its endpoint off).
export LINKD_COMMAND_METRICS_ADDR=${LINKD_COMMAND_METRICS_ADDR-127.0.0.1:9101}
export LINKD_PROJECTION_METRICS_ADDR=${LINKD_PROJECTION_METRICS_ADDR-127.0.0.1:9102}
export LINKD_WEB_ADDR=${LINKD_WEB_ADDR:-127.0.0.1:8080}
# LINKD_RUN_TLS=mutual: both gRPC servers serve mutual TLS with a development CA written to
# .dev/tls (`linkctl dev tls`); portal-web and linkctl present its client certificate.
SCHEME=http
if [ "${LINKD_RUN_TLS:-off}" = mutual ]; then
  SCHEME=https
  # Exports the LINKD_*_TLS_* and LINKD_GRPC_* lines linkctl prints (a failure stops here).
  tls_settings=$($BIN/linkctl dev tls --dir "$PWD/.dev/tls")
  while IFS= read -r line; do export "$line"; done <<<"$tls_settings"
elif [ "${LINKD_RUN_TLS:-off}" != off ]; then
  echo "error: LINKD_RUN_TLS is ${LINKD_RUN_TLS}; expected off or mutual" >&2
  exit 1
fi
export LINKD_WEB_COMMAND_URL=${LINKD_WEB_COMMAND_URL:-$SCHEME://$LINKD_COMMAND_GRPC_ADDR}
export LINKD_WEB_QUERY_URL=${LINKD_WEB_QUERY_URL:-$SCHEME://$LINKD_PROJECTION_GRPC_ADDR}
# portal-web's development sign-in signs portal tokens with the development key (never in
# production: there the portal's own login stands in front of the page).
export LINKD_WEB_DEV_KEYS_DIR=${LINKD_WEB_DEV_KEYS_DIR:-$PWD/.dev/keys}
export LINKD_IDP_PUBLIC_KEYS_FILE=${LINKD_IDP_PUBLIC_KEYS_FILE:-$PWD/.dev/keys/idp.pub.pem}
export LINKD_LUXTRUST_PUBLIC_KEYS_FILE=${LINKD_LUXTRUST_PUBLIC_KEYS_FILE:-$PWD/.dev/keys/luxtrust.pub.pem}
# The relay signs every message on the bus; the projection service applies only what it signed.
export LINKD_BUS_SIGNING_KEY_FILE=${LINKD_BUS_SIGNING_KEY_FILE:-$PWD/.dev/keys/bus.key.pem}
export LINKD_BUS_VERIFY_KEYS_FILE=${LINKD_BUS_VERIFY_KEYS_FILE:-$PWD/.dev/keys/bus.pub.pem}
# The issuers of the development keys' tokens (`linkctl dev token`, linkctl demo).
export LINKD_IDP_ISSUER=${LINKD_IDP_ISSUER:-linkd-dev-idp}
export LINKD_LUXTRUST_ISSUER=${LINKD_LUXTRUST_ISSUER:-linkd-dev-luxtrust}
# The key-encryption keys that wrap each account's data key (ADR 0025; `linkctl dev keys` wrote one).
export LINKD_KEK_FILE=${LINKD_KEK_FILE:-$PWD/.dev/keys/kek}
LINKD_SECRET_CODE_PEPPER=${LINKD_SECRET_CODE_PEPPER:-$(cat .dev/pepper)}
export LINKD_SECRET_CODE_PEPPER

# A local SMTP sink (a real SMTP server that stores messages as files) unless one is configured.
if [ -z "${LINKD_SMTP_HOST:-}" ]; then
  export LINKD_SMTP_HOST=127.0.0.1 LINKD_SMTP_PORT=2525 LINKD_SMTP_TLS=none
  MAIL_DIR=$PWD/.dev/mail
fi

for addr in "$LINKD_COMMAND_GRPC_ADDR" "$LINKD_PROJECTION_GRPC_ADDR" "$LINKD_WEB_ADDR" \
    $LINKD_COMMAND_METRICS_ADDR $LINKD_PROJECTION_METRICS_ADDR; do
  if port_open "${addr##*:}"; then
    echo "error: $addr is already in use (is linkd already running?); stop it or set" \
         "LINKD_COMMAND_GRPC_ADDR / LINKD_PROJECTION_GRPC_ADDR / LINKD_WEB_ADDR /" \
         "LINKD_COMMAND_METRICS_ADDR / LINKD_PROJECTION_METRICS_ADDR" >&2
    exit 1
  fi
done

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
  echo "linkd stopped"
}
trap stop INT TERM EXIT

if [ -n "${MAIL_DIR:-}" ]; then
  if port_open 2525; then
    echo "note: 127.0.0.1:2525 is taken; assuming it is a running SMTP sink" >&2
  else
    python3 scripts/smtp-sink.py --port 2525 --dir "$MAIL_DIR" >>.dev/logs/smtp-sink.log 2>&1 &
    pids+=($!)
  fi
fi
$BIN/command-service >>.dev/logs/command-service.log 2>&1 &
pids+=($!)
$BIN/projection-service >>.dev/logs/projection-service.log 2>&1 &
pids+=($!)

wait_for_port "command service (log: .dev/logs/command-service.log)" "${LINKD_COMMAND_GRPC_ADDR##*:}"
wait_for_port "projection service (log: .dev/logs/projection-service.log)" "${LINKD_PROJECTION_GRPC_ADDR##*:}"
$BIN/portal-web >>.dev/logs/portal-web.log 2>&1 &
pids+=($!)
wait_for_port "portal-web (log: .dev/logs/portal-web.log)" "${LINKD_WEB_ADDR##*:}"

if [ -n "${MAIL_DIR:-}" ]; then
  EMAILS="to a local SMTP sink on 127.0.0.1:2525; read them in .dev/mail/*.eml"
else
  EMAILS="through $LINKD_SMTP_HOST:${LINKD_SMTP_PORT:-25}"
fi
cat <<MSG

linkd is running (development configuration):
  command service     $LINKD_COMMAND_GRPC_ADDR  PortalService, DeviceService (+ relay to NATS)
  projection service  $LINKD_PROJECTION_GRPC_ADDR  DeviceQueryService (read models fed from NATS)
  both                grpc.health.v1 and server reflection; TLS: ${LINKD_RUN_TLS:-off}
  metrics             http://${LINKD_COMMAND_METRICS_ADDR:-(off)}/metrics, http://${LINKD_PROJECTION_METRICS_ADDR:-(off)}/metrics (Prometheus; docs/metrics.md)
  portal page         http://$LINKD_WEB_ADDR  portal-web: sign in, link a device, my devices, history
  event store         $LINKD_COMMAND_DATABASE_URL
  read models         $LINKD_PROJECTION_DATABASE_URL
  event stream        ${LINKD_STREAM:-LINKD_EVENTS} on ${LINKD_NATS_URL:-nats://127.0.0.1:4222}
  emails              $EMAILS
  logs                .dev/logs/
Open http://$LINKD_WEB_ADDR in a browser (development sign-in: any account id), or try it
from another terminal in this folder:
MSG
if [ "$SCHEME" = https ]; then
  cat <<MSG
  (gRPC is mutual TLS: linkctl needs the development CA and client certificate)
  export LINKD_ADDR=https://$LINKD_COMMAND_GRPC_ADDR LINKD_QUERY_ADDR=https://$LINKD_PROJECTION_GRPC_ADDR
  export LINKD_GRPC_CA_FILE=$LINKD_GRPC_CA_FILE LINKD_GRPC_CERT_FILE=$LINKD_GRPC_CERT_FILE LINKD_GRPC_KEY_FILE=$LINKD_GRPC_KEY_FILE
MSG
fi
cat <<MSG
  $BIN/linkctl demo
  $BIN/linkctl --help
Press Ctrl-C to stop.
MSG

# Stop both if either exits.
wait -n "${pids[@]}"
echo "a service exited; see .dev/logs/" >&2
exit 1

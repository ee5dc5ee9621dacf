#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and NATS with JetStream (127.0.0.1:4222) are running,
# starting whichever is down. Idempotent: running services are left alone.
# Sourced by scripts/run.sh, scripts/test.sh and .ci/run.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "error: $name did not start listening on 127.0.0.1:$port; see its log" >&2
  return 1
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  echo "starting PostgreSQL…" >&2
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  else
    echo "error: PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is not available;" \
         "install Debian's postgresql package (apt-get install postgresql) or start your own" >&2
    return 1
  fi
  wait_for_port PostgreSQL 5432
}

ensure_nats() {
  if port_open 4222; then return 0; fi
  echo "starting nats-server with JetStream…" >&2
  if [ ! -x /usr/sbin/nats-server ]; then
    echo "error: NATS is not running on 127.0.0.1:4222 and /usr/sbin/nats-server is missing;" \
         "install Debian's nats-server package (apt-get install nats-server)" >&2
    return 1
  fi
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for_port NATS 4222
}

ensure_services() {
  ensure_postgres && ensure_nats && ensure_aiosmtpd
}

# The local SMTP sink (scripts/smtp-sink.py) needs Python's aiosmtpd.
ensure_aiosmtpd() {
  if python3 -c "import aiosmtpd" 2>/dev/null; then return 0; fi
  echo "installing aiosmtpd (Python) for the SMTP sink…" >&2
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd >&2 || {
    echo "error: could not install aiosmtpd; run: python3 -m pip install aiosmtpd" >&2
    return 1
  }
}

# promtool (Debian's prometheus package) checks and unit-tests deploy/prometheus's alert rules
# (tests/e2e/monitoring.rs). LINKD_PROMTOOL, when set, names a binary of one's own instead.
ensure_promtool() {
  if [ -n "${LINKD_PROMTOOL:-}" ] || command -v promtool >/dev/null 2>&1; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "error: promtool is missing; as root, run: apt-get install -y --no-install-recommends" \
         "prometheus (or point LINKD_PROMTOOL at a promtool)" >&2
    return 1
  fi
  echo "installing promtool (apt-get install prometheus)…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2 ||
    { apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >&2; } ||
    { echo "error: could not install Debian's prometheus package (promtool)" >&2; return 1; }
  # The package starts a Prometheus server where an init system runs it; the tests need only
  # promtool.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus >/dev/null 2>&1 || true
  fi
}

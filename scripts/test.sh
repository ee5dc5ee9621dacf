#!/usr/bin/env bash
# Runs the whole test suite against the real PostgreSQL (and NATS), starting them if needed, and
# with the browser tests' chromium, chromedriver and axe-core, and promtool for the alert rules
# (installing them if missing).
# Each test creates its own database and drops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/browser-deps.sh
ensure_services
ensure_browser_deps
ensure_promtool
export LINKD_TEST_DATABASE_URL="${LINKD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo test --workspace --locked "$@"
# With no filter: a short randomized fault campaign on a system of its own (loopback only: its
# own PostgreSQL cluster, NATS server and SMTP sink, the services as processes), killing one of
# them each round, then checking that nothing acknowledged was lost and every read model equals
# the store (bench/src/chaos.rs; LINKD_CHAOS_ROUNDS, default 5; the README has the long run).
if [ $# -eq 0 ]; then
  cargo build --locked -q -p command-service -p projection-service -p bench
  target/debug/linkd-bench chaos --rounds "${LINKD_CHAOS_ROUNDS:-5}"
fi

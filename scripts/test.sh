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

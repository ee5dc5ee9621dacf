#!/usr/bin/env bash
# Runs the whole test suite against the real PostgreSQL (and NATS), starting them if needed.
# Each test creates its own database and drops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
export LINKD_TEST_DATABASE_URL="${LINKD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo test --workspace --locked "$@"

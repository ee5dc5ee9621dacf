#!/usr/bin/env bash
# Regenerates the README's screenshots of portal-web (docs/screenshots/*.png): runs the browser
# test that takes them (English UI), with the same set-up as scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/browser-deps.sh
ensure_services
ensure_browser_deps
export LINKD_TEST_DATABASE_URL="${LINKD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export LINKD_SCREENSHOTS_DIR="$PWD/docs/screenshots"
cargo test --locked -p e2e --test browser -- --exact \
  portal::a_holder_links_declines_lets_expire_unlinks_and_reads_the_history
ls -l docs/screenshots

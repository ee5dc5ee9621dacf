#!/usr/bin/env bash
# Makes sure the browser tests (tests/browser/, harness in tests/src/browser.rs) can run: Debian's
# headless chromium and its chromedriver, and axe-core (the accessibility checker the tests inject
# into pages) in tests/browser/node_modules, pinned by tests/browser/package-lock.json.
# Idempotent: whatever is installed already is left alone. Sourced by scripts/test.sh.

browser_deps_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# chromium and chromium-driver from Debian (apt-get update only if the first attempt fails).
# LINKD_CHROMIUM and LINKD_CHROMEDRIVER, when set, name binaries of one's own instead.
ensure_chromium() {
  local chromium="${LINKD_CHROMIUM:-/usr/bin/chromium}"
  local chromedriver="${LINKD_CHROMEDRIVER:-/usr/bin/chromedriver}"
  if [ -x "$chromium" ] && [ -x "$chromedriver" ]; then return 0; fi
  if [ -n "${LINKD_CHROMIUM:-}${LINKD_CHROMEDRIVER:-}" ]; then
    echo "error: $chromium (LINKD_CHROMIUM) or $chromedriver (LINKD_CHROMEDRIVER)" \
         "is not an executable" >&2
    return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $chromium or $chromedriver is missing and apt-get is not available;" \
         "install chromium and its chromedriver yourself (and point LINKD_CHROMIUM and" \
         "LINKD_CHROMEDRIVER at them)" >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: $chromium or $chromedriver is missing; as root, run:" \
         "apt-get install -y chromium chromium-driver" >&2
    return 1
  fi
  echo "installing chromium and chromium-driver (apt-get install)…" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >&2; then
    echo "apt-get install failed; updating the package lists (apt-get update) and retrying…" >&2
    apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >&2 || {
        echo "error: could not install chromium and chromium-driver" >&2
        return 1
      }
  fi
  if [ ! -x "$chromium" ] || [ ! -x "$chromedriver" ]; then
    echo "error: apt-get installed chromium and chromium-driver, yet $chromium or" \
         "$chromedriver is still missing" >&2
    return 1
  fi
}

# axe-core from npm, exactly as tests/browser/package-lock.json pins it.
ensure_axe_core() {
  local dir="$browser_deps_root/tests/browser"
  if [ -f "$dir/node_modules/axe-core/axe.min.js" ]; then return 0; fi
  if ! command -v npm >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
      echo "installing npm (apt-get install) to fetch axe-core…" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y npm >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y npm >&2; }
    fi
    if ! command -v npm >/dev/null 2>&1; then
      echo "error: $dir/node_modules/axe-core is missing and npm is not available;" \
           "install Debian's npm package (as root: apt-get install -y npm), then rerun" >&2
      return 1
    fi
  fi
  echo "installing axe-core into tests/browser/node_modules (npm ci)…" >&2
  (cd "$dir" && npm ci --no-audit --no-fund >&2) || {
    echo "error: npm ci failed in $dir" >&2
    return 1
  }
}

ensure_browser_deps() {
  ensure_chromium && ensure_axe_core
}

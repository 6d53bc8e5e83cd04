#!/usr/bin/env bash
# Installs (once) what the console test drives: Debian's Chromium and
# playwright-core (the library only; it drives the system Chromium, no
# browser download).
#   scripts/infra/browser.sh   -> prints `export SLUICE_TEST_CHROMIUM=...`
#                                 and `export SLUICE_TEST_PLAYWRIGHT_PATH=...`
set -euo pipefail
CACHE=${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium" >&2
  (export DEBIAN_FRONTEND=noninteractive
   apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends chromium >&2) || {
    echo "could not install chromium" >&2
    exit 1
  }
fi
DIR=$CACHE/playwright
if [ ! -f "$DIR/node_modules/playwright-core/package.json" ]; then
  command -v npm >/dev/null 2>&1 || { echo "playwright-core needs Node.js and npm" >&2; exit 1; }
  echo "installing playwright-core into $DIR" >&2
  mkdir -p "$DIR"
  (cd "$DIR" && npm install --silent --no-audit --no-fund --prefix "$DIR" 'playwright-core@1' >&2)
fi
echo "export SLUICE_TEST_CHROMIUM=$(command -v chromium)"
echo "export SLUICE_TEST_PLAYWRIGHT_PATH=$DIR/node_modules"

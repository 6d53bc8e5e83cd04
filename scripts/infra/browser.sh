#!/usr/bin/env bash
# Installs (once) what the console test drives: Debian's Chromium with
# playwright-core, and Debian's Firefox ESR with puppeteer-core (WebDriver
# BiDi, no geckodriver). Only the libraries come from npm; both drive the
# system browsers, nothing else is downloaded.
#   scripts/infra/browser.sh   -> prints `export SLUICE_TEST_CHROMIUM=...`,
#                                 `export SLUICE_TEST_FIREFOX=...` and
#                                 `export SLUICE_TEST_PLAYWRIGHT_PATH=...`
#                                 (the node_modules holding both drivers)
set -euo pipefail
CACHE=${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian's ${missing[*]}" >&2
  (export DEBIAN_FRONTEND=noninteractive
   apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2) || {
    echo "could not install ${missing[*]}" >&2
    exit 1
  }
fi
DIR=$CACHE/playwright
if [ ! -f "$DIR/node_modules/playwright-core/package.json" ] || [ ! -f "$DIR/node_modules/puppeteer-core/package.json" ]; then
  command -v npm >/dev/null 2>&1 || { echo "the browser drivers need Node.js and npm" >&2; exit 1; }
  echo "installing playwright-core and puppeteer-core into $DIR" >&2
  mkdir -p "$DIR"
  (cd "$DIR" && npm install --silent --no-audit --no-fund --prefix "$DIR" 'playwright-core@1' 'puppeteer-core@24' >&2)
fi
echo "export SLUICE_TEST_CHROMIUM=$(command -v chromium)"
echo "export SLUICE_TEST_FIREFOX=$(command -v firefox-esr)"
echo "export SLUICE_TEST_PLAYWRIGHT_PATH=$DIR/node_modules"

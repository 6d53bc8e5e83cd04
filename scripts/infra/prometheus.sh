#!/usr/bin/env bash
# Installs (once) Debian's Prometheus server and promtool, which the
# metrics test runs against Sluice's /metrics. The test starts its own
# Prometheus (on 127.0.0.1, scraping the Sluice it started) with the binary
# this prints.
#   scripts/infra/prometheus.sh   -> prints `export SLUICE_TEST_PROMETHEUS=...`
#                                    and `export SLUICE_TEST_PROMTOOL=...`
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "installing Debian's prometheus package" >&2
  # Installed without its service: the test runs the binary itself.
  (export DEBIAN_FRONTEND=noninteractive
   apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends prometheus >&2) || {
    echo "could not install prometheus" >&2
    exit 1
  }
  # The package starts a system instance on :9090 where services run;
  # the tests do not want it.
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus || true) >&2
fi
echo "export SLUICE_TEST_PROMETHEUS=$(command -v prometheus)"
echo "export SLUICE_TEST_PROMTOOL=$(command -v promtool)"

#!/usr/bin/env bash
# The whole test suite. Installs and starts what the tests need (psql, an S3
# server), checks formatting, lints and the crate dependency direction, then
# runs every test with nextest.
#
#   ./scripts/test.sh             # everything (what CI runs)
#   ./scripts/test.sh --no-hdfs   # quick local loop: HDFS tests fail instead of running
#
# CARGO_TARGET_DIR is honoured (CI points it at a cache outside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if ! command -v psql >/dev/null 2>&1; then
  echo "installing postgresql-client (psql)"
  (apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null) || {
    echo "could not install psql" >&2
    exit 1
  }
fi
if ! command -v curl >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq curl >/dev/null) || { echo "could not install curl" >&2; exit 1; }
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
psql --version
cargo nextest --version | head -1

WITH_HDFS=1
for arg in "$@"; do
  case "$arg" in
  --no-hdfs) WITH_HDFS=0 ;;
  *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

step "services"
cleanup() {
  scripts/infra/s3.sh stop || true
  scripts/infra/kafka.sh stop || true
  scripts/infra/hdfs.sh stop || true
}
trap cleanup EXIT
# Starts a service and takes its environment; a start that fails (seen
# once with HDFS: its JVMs did not come up in 90 s, and the next start took
# 4 s) is retried once, then the run fails.
start_service() {
  local script=scripts/infra/$1.sh out
  if ! out=$("$script" start); then
    echo "$1 did not start; trying once more" >&2
    "$script" stop || true
    out=$("$script" start) || { echo "$1 did not start" >&2; exit 1; }
  fi
  eval "$out"
}
start_service s3
echo "S3 (moto) at $SLUICE_TEST_S3_ENDPOINT"
start_service kafka
echo "Kafka (tansu) at $SLUICE_TEST_KAFKA_BROKERS"
if [ "$WITH_HDFS" = 1 ]; then
  start_service hdfs
  echo "HDFS (Hadoop 2.7.3) at $SLUICE_TEST_HDFS_URL"
fi

eval "$(scripts/infra/clients.sh)"
echo "Postgres client libraries: $SLUICE_TEST_CLIENTS_PYTHON"
eval "$(scripts/infra/prometheus.sh)"
echo "Prometheus: $SLUICE_TEST_PROMETHEUS"
eval "$(scripts/infra/browser.sh)"
echo "Chromium: $SLUICE_TEST_CHROMIUM"

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency direction: the engine pulls in neither rdkafka nor pgwire"
if cargo tree -p sluice-engine -e normal --prefix none | grep -E '^(rdkafka|pgwire) '; then
  echo "sluice-engine must not depend on rdkafka or pgwire" >&2
  exit 1
fi
echo ok

step "tests"
cargo nextest run --workspace --locked --no-fail-fast

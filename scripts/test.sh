#!/usr/bin/env bash
# The whole test suite. Installs and starts what the tests need (psql, an S3
# server), checks formatting, lints and the crate dependency direction, then
# runs every test with nextest.
#
#   ./scripts/test.sh
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
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
psql --version
cargo nextest --version | head -1

step "services"
cleanup() { scripts/infra/s3.sh stop || true; }
trap cleanup EXIT
eval "$(scripts/infra/s3.sh start)"
echo "S3 (moto) at $SLUICE_TEST_S3_ENDPOINT"

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

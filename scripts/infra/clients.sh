#!/usr/bin/env bash
# Installs (once) the Postgres client libraries the client-compatibility
# tests drive against the real server: psycopg 3, psycopg2, asyncpg,
# SQLAlchemy 2, pandas and pgcli, in a venv of their own, node-postgres and
# postgres.js, and
# pgjdbc (Debian's package, with a JDK to run the test program), and Go's
# pgx and lib/pq (Debian's packages, with the Go toolchain).
#   scripts/infra/clients.sh   -> prints `export SLUICE_TEST_CLIENTS_PYTHON=...`,
#                                 `export SLUICE_TEST_NODE_PATH=...` and
#                                 `export SLUICE_TEST_PGJDBC_JAR=...`
set -euo pipefail
CACHE=${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}
VENV=$CACHE/clients-venv
# Bump when the list changes, so that an old venv is topped up.
WANT=2
mkdir -p "$CACHE"
if [ "$(cat "$VENV/.sluice-clients" 2>/dev/null)" != "$WANT" ]; then
  echo "installing Postgres client libraries into $VENV" >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q \
    'SQLAlchemy>=2.0,<2.2' 'psycopg[binary]>=3.1,<3.4' 'psycopg2-binary>=2.9,<2.10' \
    'asyncpg>=0.29,<0.33' 'pandas>=2.0,<3.2' 'pgcli>=4,<5' >&2
  echo "$WANT" >"$VENV/.sluice-clients"
fi
NODE_DIR=$CACHE/node-clients
if [ ! -f "$NODE_DIR/node_modules/pg/package.json" ] || [ ! -f "$NODE_DIR/node_modules/postgres/package.json" ]; then
  command -v npm >/dev/null 2>&1 || { echo "node-postgres needs Node.js and npm" >&2; exit 1; }
  echo "installing node-postgres and postgres.js into $NODE_DIR" >&2
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" 'pg@8' 'postgres@3' >&2)
fi
# pgjdbc from Debian's package, run by a JDK's single-file source launcher.
JAR=/usr/share/java/postgresql.jar
if [ ! -f "$JAR" ] || ! command -v javac >/dev/null 2>&1; then
  echo "installing pgjdbc (libpostgresql-jdbc-java) and a JDK" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq libpostgresql-jdbc-java default-jdk-headless >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq libpostgresql-jdbc-java default-jdk-headless >&2; }
fi
# Go's pgx (v4) and lib/pq from Debian's packaged sources, built in GOPATH
# mode by the test (no module download).
if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/jackc/pgx/v4 ] ||
  [ ! -d /usr/share/gocode/src/github.com/lib/pq ]; then
  echo "installing Go with pgx and lib/pq (golang-go, golang-github-jackc-pgx-v4-dev, golang-github-lib-pq-dev)" >&2
  export DEBIAN_FRONTEND=noninteractive
  GO_PACKAGES="golang-go golang-github-jackc-pgx-v4-dev golang-github-lib-pq-dev"
  # shellcheck disable=SC2086
  apt-get install -y -qq $GO_PACKAGES >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq $GO_PACKAGES >&2; }
fi
echo "export SLUICE_TEST_GOPATH=/usr/share/gocode"
echo "export SLUICE_TEST_GOCACHE=$CACHE/go-build"
echo "export SLUICE_TEST_CLIENTS_PYTHON=$VENV/bin/python"
echo "export SLUICE_TEST_PGJDBC_JAR=$JAR"
echo "export SLUICE_TEST_NODE_PATH=$NODE_DIR/node_modules"

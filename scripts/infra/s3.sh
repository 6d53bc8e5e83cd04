#!/usr/bin/env bash
# Installs (once) and starts / stops an S3-compatible server (moto) on 127.0.0.1.
#   scripts/infra/s3.sh start   -> prints `export SLUICE_TEST_S3_ENDPOINT=...`
#   scripts/infra/s3.sh stop
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}
RUN=$ROOT/.infra/run
mkdir -p "$CACHE" "$RUN"
VENV=$CACHE/moto-venv

case "${1:-}" in
start)
  if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto into $VENV" >&2
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q 'moto[server]==5.*' >&2
  fi
  PORT=${SLUICE_S3_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$RUN/s3.log" 2>&1 &
  echo $! >"$RUN/s3.pid"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; then
      # The bucket the tests write to.
      curl -fsS -X PUT "http://127.0.0.1:$PORT/lake" >/dev/null
      # The Kafka broker-restart test keeps its broker's log here.
      curl -fsS -X PUT "http://127.0.0.1:$PORT/kafka-restart" >/dev/null
      echo "export SLUICE_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT"
      echo "export SLUICE_TEST_S3_ACCESS_KEY_ID=test"
      echo "export SLUICE_TEST_S3_SECRET_ACCESS_KEY=testtesttest"
      exit 0
    fi
    sleep 0.2
  done
  echo "S3 server did not become ready; log:" >&2
  cat "$RUN/s3.log" >&2
  exit 1
  ;;
stop)
  if [ -f "$RUN/s3.pid" ]; then
    kill "$(cat "$RUN/s3.pid")" 2>/dev/null || true
    rm -f "$RUN/s3.pid"
  fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac

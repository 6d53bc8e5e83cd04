#!/usr/bin/env bash
# The crash-equivalence stress variant: 20 runs of the exactly-once test,
# each killing the server with SIGKILL at 5 random moments (CI runs 1 run of
# 3 kills). Starts the Kafka broker and the S3 server it needs.
#
#   ./scripts/stress.sh            # 20 runs x 5 kills
#   RUNS=50 KILLS=8 ./scripts/stress.sh
# (--workspace, so the test build the suite made is reused.)
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'scripts/infra/kafka.sh stop || true; scripts/infra/s3.sh stop || true' EXIT
eval "$(scripts/infra/kafka.sh start)"
eval "$(scripts/infra/s3.sh start)"
SLUICE_CRASH_RUNS=${RUNS:-20} SLUICE_CRASH_KILLS=${KILLS:-5} \
  cargo nextest run --workspace -E 'binary(exactly_once)' --no-capture

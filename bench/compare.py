#!/usr/bin/env python3
"""Two release `sluice` binaries side by side, through the server as users run it.

Each case is a continuous query over a bounded nexmark bid stream, landed in a
`blackhole` sink, timed from CREATE SINK to the job's end (SHOW JOBS says
`finished`), with checkpoints every 2 s. Each (case, binary, run) gets a fresh
server and data directory; the binaries alternate run by run, so drift of the
machine hits both alike. Prints events/s (median of the runs), peak RSS and
the ratio new/old per case.

    python3 bench/compare.py --old /tmp/sluice-old \
        --new ~/.cache/sluice-target-release/release/sluice --events 4000000 --runs 3
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time

from benchlib import PsqlSession, free_port, psql, wait_job

CASES = [
    ("q0 passthrough", "SELECT auction, bidder, price, date_time, extra FROM bid"),
    ("q2 filter", "SELECT auction, price FROM bid WHERE auction % 123 = 0"),
    ("q5 hop window", "SELECT auction, count(*) AS num, window_start, window_end FROM HOP(bid, date_time, "
     "INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end"),
    ("q11 session", "SELECT bidder, count(*) AS bid_count, window_start, window_end "
     "FROM SESSION(bid, date_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end"),
    ("q17 updating group by", "SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, "
     "min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, "
     "sum(price) AS sum_price FROM bid GROUP BY auction, to_char(date_time, '%Y-%m-%d')"),
    ("q15 count distinct", "SELECT to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, "
     "count(DISTINCT bidder) AS total_bidders FROM bid GROUP BY to_char(date_time, '%Y-%m-%d')"),
    ("top-3 per auction", "SELECT auction, bidder, price, rn FROM (SELECT auction, bidder, price, "
     "ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn FROM bid) WHERE rn <= 3"),
    ("OVER rows frame", "SELECT auction, price, avg(price) OVER (PARTITION BY auction ORDER BY date_time "
     "ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS recent_avg FROM bid"),
]


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_once(binary, query, events):
    with tempfile.TemporaryDirectory() as data:
        port = free_port()
        env = dict(os.environ, SLUICE_LOG="warn", SLUICE_CHECKPOINT_INTERVAL="2s")
        proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError("sluice did not start")
                    time.sleep(0.02)
            psql(port, "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', "
                       f"'events.max' = '{events}', 'events.per.second' = '0', "
                       "'nexmark.base.time' = '1700000000000')")
            session = PsqlSession(port)
            try:
                started = time.time()
                session.sql(f"CREATE SINK out WITH (connector = 'blackhole') AS {query}")
                status = wait_job(session, "out")
                secs = time.time() - started
            finally:
                session.close()
            if status == "failed":
                raise RuntimeError(f"job failed: {query}")
            return events / secs, peak_rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--events", type=int, default=4_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated case name prefixes")
    a = ap.parse_args()
    only = [o for o in a.only.split(",") if o]
    print(f"{a.events:,} nexmark events per run, {a.runs} runs per binary, medians")
    print(f"{'case':24} {'old ev/s':>12} {'new ev/s':>12} {'new/old':>8} {'old MiB':>8} {'new MiB':>8}")
    for name, query in CASES:
        if only and not any(name.startswith(o) for o in only):
            continue
        results = {"old": [], "new": []}
        for _ in range(a.runs):
            for which in ("old", "new"):
                results[which].append(run_once(getattr(a, which), query, a.events))
        rate = {k: statistics.median(r for r, _ in v) for k, v in results.items()}
        mem = {k: max(m for _, m in v) for k, v in results.items()}
        print(f"{name:24} {rate['old']:12,.0f} {rate['new']:12,.0f} {rate['new'] / rate['old']:8.2f} "
              f"{mem['old']:8.0f} {mem['new']:8.0f}", flush=True)


if __name__ == "__main__":
    main()

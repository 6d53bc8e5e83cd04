#!/usr/bin/env python3
"""A soak: many sessions and many jobs against one server for a while.

    python3 bench/soak.py --binary target/release/sluice [--sessions 200] [--jobs 20] [--minutes 10]

Starts the server on a fresh data directory, creates `--jobs` continuous jobs
(datagen streams into GROUP BY materialized views and blackhole sinks), then
runs `--sessions` client sessions (psycopg, one thread each) that loop over a
mix of statements (point queries, aggregates over generate_series, SHOW JOBS,
reads of the views) until the time is up. Prints errors (there should be
none), statement latency percentiles, throughput, and the server's RSS
sampled every 10 s (it should stay flat). Needs psycopg; like
bench/landed.py it makes its own virtualenv under ~/.cache/sluice-infra.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import free_port

CACHE = os.environ.get("SLUICE_INFRA_CACHE", os.path.expanduser("~/.cache/sluice-infra"))
VENV = os.path.join(CACHE, "bench-venv")


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.environ.get("SLUICE_BENCH_IN_VENV") == "1":
        return
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "duckdb", "psycopg[binary]"])
    os.environ["SLUICE_BENCH_IN_VENV"] = "1"
    os.execv(py, [py] + sys.argv)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


STATEMENTS = [
    "SELECT 1",
    "SELECT count(*), sum(x) FROM generate_series(1, 20000) t(x)",
    "SELECT x % 10 AS k, count(*) FROM generate_series(1, 5000) t(x) GROUP BY 1 ORDER BY 1",
    "SHOW JOBS",
    "SELECT * FROM v{job} ORDER BY k LIMIT 5",
]


def main():
    ensure_venv()
    import psycopg

    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=10)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-soak-")
    config = os.path.join(work, "sluice.toml")
    with open(config, "w") as f:
        f.write(f"max_connections = {args.sessions + 20}\n[users]\nsluice = \"sluice\"\n")
    port = free_port()
    server = subprocess.Popen([args.binary, "--listen", f"127.0.0.1:{port}", "--data-dir",
                               os.path.join(work, "data"), "--config", config, "--log", "warn"],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
    conninfo = f"host=127.0.0.1 port={port} user=sluice password=sluice dbname=sluice"
    for _ in range(300):
        try:
            admin = psycopg.connect(conninfo, autocommit=True)
            break
        except Exception:
            time.sleep(0.1)
    half = args.jobs // 2
    for j in range(args.jobs):
        admin.execute(f"CREATE STREAM s{j} (k BIGINT, v BIGINT) WITH (connector = 'datagen', "
                      f"'rows-per-second' = '2000', 'fields.k.min' = '0', 'fields.k.max' = '99')")
        if j < half or j == 0:
            admin.execute(f"CREATE MATERIALIZED VIEW v{j} AS SELECT k, count(*) AS n, sum(v) AS total FROM s{j} GROUP BY k")
        else:
            admin.execute(f"CREATE SINK k{j} WITH (connector = 'blackhole') AS SELECT k, v FROM s{j} WHERE v > 10")
    views = max(half, 1)

    deadline = time.time() + args.minutes * 60
    latencies, errors, lock = [], [], threading.Lock()

    def session(i):
        mine, bad = [], []
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except Exception as e:
            with lock:
                errors.append(f"connect {i}: {e}")
            return
        n = 0
        while time.time() < deadline:
            sql = STATEMENTS[n % len(STATEMENTS)].format(job=(i + n) % views)
            n += 1
            t0 = time.perf_counter()
            try:
                conn.execute(sql).fetchall()
                mine.append(time.perf_counter() - t0)
            except Exception as e:
                bad.append(f"{sql}: {e}")
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(args.sessions)]
    started = time.time()
    for t in threads:
        t.start()
    samples = []
    while time.time() < deadline:
        samples.append((time.time() - started, rss_mb(server.pid)))
        time.sleep(10)
    for t in threads:
        t.join()
    elapsed = time.time() - started
    jobs = admin.execute("SHOW JOBS").fetchall()
    failed = [r for r in jobs if "fail" in str(r).lower()]
    server.terminate()
    server.wait(timeout=60)

    lat = sorted(latencies)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    print(f"{args.sessions} sessions, {args.jobs} jobs, {elapsed / 60:.1f} min: {len(lat)} statements "
          f"({len(lat) / elapsed:.0f}/s), {len(errors)} errors, {len(failed)} failed jobs")
    print(f"latency p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms")
    rss = [m for _, m in samples]
    if rss:
        print(f"server RSS: first {rss[0]:.0f} MB, median {statistics.median(rss):.0f} MB, "
              f"last {rss[-1]:.0f} MB, max {max(rss):.0f} MB")
    print("RSS samples (s, MB): " + ", ".join(f"{t:.0f}:{m:.0f}" for t, m in samples))
    for e in errors[:10]:
        print("error:", e)


if __name__ == "__main__":
    main()

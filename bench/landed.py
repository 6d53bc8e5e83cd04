#!/usr/bin/env python3
"""Landed-data benchmark: Sluice over pgwire vs DuckDB on the same Parquet files.

Generates a Hive-partitioned Parquet dataset (default 10 million rows, 10 dt
partitions) with DuckDB, starts the release `sluice` binary on a free port of
127.0.0.1, and runs the same queries through Sluice (psycopg, text protocol,
every row fetched to the client) and through DuckDB (in-process, every row
fetched to Python), alternating, several runs each; reports the median of each
and the ratio. Then streams a whole-table SELECT through Sluice in text and
binary format (Rust tokio-postgres client) and reports rows/s, time to first
row and the server's peak memory.

    python3 bench/landed.py [--rows 10000000] [--runs 3]

Installs duckdb and psycopg into ~/.cache/sluice-infra/bench-venv on first use
and builds the release binaries (cargo build --release) if needed.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


QUERIES = [
    ("full scan aggregate",
     "SELECT count(*), sum(fare), avg(distance) FROM trips"),
    ("partition-pruned filter",
     "SELECT dt, count(*), avg(fare), max(distance) FROM trips WHERE dt = '2026-11-03' GROUP BY dt"),
    ("group by high-cardinality key (1M groups, all rows to client)",
     "SELECT rider, count(*) AS n, sum(fare) AS total FROM trips GROUP BY rider"),
    ("top-N",
     "SELECT id, rider, fare FROM trips ORDER BY fare DESC, id LIMIT 10"),
]


def status_mib(pid, field):
    """A memory figure (VmRSS, VmHWM) of a process from /proc, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ensure_venv()
    import duckdb
    import psycopg

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the dataset directory")
    args = ap.parse_args()

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.check_call(
        ["cargo", "build", "--release", "-q", "-p", "sluice-server", "--bin", "sluice",
         "--example", "stream_client"], cwd=ROOT)
    sluice_bin = os.path.join(target, "release", "sluice")
    client_bin = os.path.join(target, "release", "examples", "stream_client")

    work = tempfile.mkdtemp(prefix="sluice-bench-")
    lake = os.path.join(work, "trips")
    t0 = time.time()
    con = duckdb.connect()
    con.execute(f"""
        COPY (
          SELECT i AS id,
                 (hash(i) % 1000000)::BIGINT AS rider,
                 round(((hash(i * 7) % 10000) / 100.0), 2)::DOUBLE AS fare,
                 ((hash(i * 13) % 5000) / 100.0)::DOUBLE AS distance,
                 'street ' || (i % 997)::VARCHAR AS pickup,
                 strftime(DATE '2026-11-01' + (i % 10)::INTEGER, '%Y-%m-%d') AS dt
          FROM range({args.rows}) t(i)
        ) TO '{lake}' (FORMAT PARQUET, PARTITION_BY (dt))""")
    gen_secs = time.time() - t0
    size_mib = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(lake) for f in fs) / 2**20
    con.execute(f"CREATE VIEW trips AS SELECT * FROM read_parquet('{lake}/*/*.parquet', hive_partitioning = true)")

    port = free_port()
    data_dir = os.path.join(work, "sluice-data")
    server = subprocess.Popen([sluice_bin, "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                               "--file-roots", work, "--log", "warn"])
    conninfo = f"host=127.0.0.1 port={port} user=sluice password=sluice dbname=sluice"
    for _ in range(200):
        try:
            pg = psycopg.connect(conninfo, autocommit=True)
            break
        except psycopg.OperationalError:
            time.sleep(0.05)
    else:
        raise SystemExit("sluice did not start")
    pg.execute(f"CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{lake}/'")

    def run_sluice(sql):
        t = time.perf_counter()
        rows = pg.execute(sql).fetchall()
        return time.perf_counter() - t, len(rows)

    def run_duckdb(sql):
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        return time.perf_counter() - t, len(rows)

    results = []
    for name, sql in QUERIES:
        run_sluice(sql)  # warm-up: file metadata, page cache
        run_duckdb(sql)
        s_times, d_times = [], []
        for _ in range(args.runs):
            st, sn = run_sluice(sql)
            dt_, dn = run_duckdb(sql)
            if sn != dn:
                raise SystemExit(f"{name}: Sluice returned {sn} rows, DuckDB {dn}")
            s_times.append(st)
            d_times.append(dt_)
        s, d = statistics.median(s_times), statistics.median(d_times)
        results.append((name, sn, s, d))
        print(f"{name:62s} sluice {s*1000:8.1f} ms  duckdb {d*1000:8.1f} ms  ratio {s/d:5.2f}", flush=True)

    rss_before = status_mib(server.pid, "VmRSS")
    streams = []
    for fmt in ("text", "binary"):
        out = subprocess.check_output([client_bin, conninfo, fmt,
                                       "SELECT id, rider, fare, distance, pickup, dt FROM trips"])
        r = json.loads(out)
        r["server_rss_mib_after"] = status_mib(server.pid, "VmRSS")
        streams.append(r)
        print(f"stream {fmt:6s}: {r['rows']} rows in {r['seconds']:.2f}s = {r['rows_per_sec']:,.0f} rows/s, "
              f"first row after {r['first_row_ms']:.0f} ms", flush=True)
    peak = status_mib(server.pid, "VmHWM")
    pg.close()
    server.terminate()
    server.wait(timeout=30)

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print()
    print(f"## Landed-data queries ({args.rows:,} rows, 10 partitions, {size_mib:.0f} MiB Parquet)")
    print()
    print(f"`python3 bench/landed.py --rows {args.rows} --runs {args.runs}`, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores ({cpu}), release build; dataset generated by DuckDB in {gen_secs:.1f}s. "
          f"Median of {args.runs} alternating runs after one warm-up; every result row is fetched by the client "
          f"(Sluice: psycopg over pgwire, text format; DuckDB: in-process, fetchall to Python).")
    print()
    print("| query | rows out | Sluice (ms) | DuckDB (ms) | Sluice / DuckDB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, n, s, d in results:
        print(f"| {name} | {n:,} | {s*1000:.1f} | {d*1000:.1f} | {s/d:.2f} |")
    print()
    print("## Result streaming (whole table to a Rust tokio-postgres client)")
    print()
    print("| format | rows | seconds | rows/s | first row (ms) | server RSS after (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in streams:
        print(f"| {r['format']} | {r['rows']:,} | {r['seconds']:.2f} | {r['rows_per_sec']:,.0f} | "
              f"{r['first_row_ms']:.0f} | {r['server_rss_mib_after']:.0f} |")
    print()
    print(f"Server RSS before streaming {rss_before:.0f} MiB; peak over the whole run (VmHWM) {peak:.0f} MiB.")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Streaming joins, top-N and OVER, Sluice beside Apache Flink, over the same JSON-lines files.

Both engines read the same bounded files (bids and auctions, two files per
table, so each of the two parallel tasks gets one), run the same SQL in
streaming mode and write into a blackhole sink. Timed from submitting the
query to the job's end. Flink runs in PyFlink's local mini-cluster (its JVM is
started before the clock starts); Sluice is the release server, the query
created through psql. Each size runs --runs times per engine, alternating;
medians. Flink runs each query once on a small input first, untimed, so that
its mini-cluster start is not in the figures. Two sizes give the marginal rate (rows per second of the extra rows),
which leaves out fixed start costs. CPU-seconds are measured per query for
both (the Sluice server's, the JVM's); memory is Sluice's peak RSS (a fresh
server per run) beside the JVM's RSS after the run.

    pip install apache-flink==2.3.0
    cargo build --release -p sluice-server   # CARGO_TARGET_DIR=~/.cache/sluice-target-release
    python3 bench/joins_flink.py --sluice ~/.cache/sluice-target-release/release/sluice
"""

import argparse
import os
import random
import statistics
import tempfile
import time

from benchlib import Sluice, java_child, proc_cpu, proc_mem_mib

CASES = [
    ("inner join (q20 shape)",
     "SELECT b.auction, b.price, a.seller, a.category FROM bid b JOIN auction a ON b.auction = a.id"),
    ("left join + group by",
     "SELECT a.category, count(b.auction) AS bids, max(b.price) AS top FROM auction a "
     "LEFT JOIN bid b ON b.auction = a.id GROUP BY a.category"),
    ("top 3 per auction (q19 shape)",
     "SELECT auction, bidder, price, rn FROM (SELECT auction, bidder, price, ROW_NUMBER() OVER "
     "(PARTITION BY auction ORDER BY price DESC) AS rn FROM bid) WHERE rn <= 3"),
    # Both engines plan this as an interval join (state dropped as the
    # watermarks pass the bounds).
    ("interval join (10 s)",
     "SELECT b.auction, b.price, a.seller FROM auction a JOIN bid b ON a.id = b.auction "
     "AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '10' SECOND"),
    ("over: sum of last 10 per bidder",
     "SELECT bidder, price, sum(price) OVER (PARTITION BY bidder ORDER BY date_time "
     "ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS recent FROM bid"),
    # Each bid with its auction as of the bid's time (an auction is a
    # version of its id; Flink needs the primary key declared).
    ("temporal join (auction as of bid)",
     "SELECT b.auction, b.price, a.seller, a.category FROM bid b "
     "JOIN auction FOR SYSTEM_TIME AS OF b.date_time AS a ON b.auction = a.id"),
]

SCHEMAS = {
    "bid": [("auction", "BIGINT"), ("bidder", "BIGINT"), ("price", "BIGINT"), ("date_time", "TIMESTAMP(3)")],
    "auction": [("id", "BIGINT"), ("seller", "BIGINT"), ("category", "BIGINT"), ("date_time", "TIMESTAMP(3)")],
}

# Event time: each table's rows one watermark-second behind their latest.
WATERMARK = "WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND"


def stamp(ms):
    """Milliseconds after 2026-01-01 00:00 as Flink's SQL timestamp text."""
    s, ms = divmod(ms, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"2026-01-01 {h:02}:{m:02}:{s:02}.{ms:03}"


def write_data(root, bids, auctions):
    """Bid j at j ms, auction i at i * bids / auctions ms (the same span);
    each bid on an auction started in the 10 s before it. Files split by
    parity, each in time order (no row late in either engine)."""
    rng = random.Random(42)
    for table in SCHEMAS:
        os.makedirs(os.path.join(root, table), exist_ok=True)
    step = bids / auctions
    for part in range(2):
        with open(os.path.join(root, "auction", f"part-{part}.json"), "w") as f:
            f.writelines(f'{{"id": {i}, "seller": {1000 + i % 997}, "category": {10 + i % 5}, '
                         f'"date_time": "{stamp(int(i * step))}"}}\n'
                         for i in range(part, auctions, 2))
        with open(os.path.join(root, "bid", f"part-{part}.json"), "w") as f:
            def bid(j):
                latest = min(int(j / step), auctions - 1)
                auction = max(0, latest - rng.randrange(int(10_000 / step) + 1))
                return (f'{{"auction": {auction}, "bidder": {rng.randrange(50_000)}, '
                        f'"price": {rng.randrange(1, 10_000_000)}, "date_time": "{stamp(j)}"}}\n')
            f.writelines(bid(j) for j in range(part, bids, 2))


def sluice_once(binary, root, query):
    with Sluice(binary, os.path.dirname(root)) as server:
        for table, cols in SCHEMAS.items():
            decl = ", ".join(f"{c} {t.replace('(3)', '')}" for c, t in cols) + ", " + WATERMARK
            server.sql(f"CREATE STREAM {table} ({decl}) WITH (connector = 'filesystem', "
                       f"path = '{os.path.join(root, table)}', format = 'json', 'scan.mode' = 'bounded')")
        cpu0 = server.cpu()
        started = time.time()
        server.sql(f"CREATE SINK out WITH (connector = 'blackhole') AS {query}")
        status = server.wait_job("out")
        secs = time.time() - started
        cpu = server.cpu() - cpu0
        peak = server.peak_mib()
        if status == "failed":
            raise RuntimeError(f"job failed: {query}")
        # Every row of the files went through: the sources' rows out.
        return secs, server.source_rows("out"), cpu, peak


class Flink:
    def __init__(self):
        from pyflink.table import EnvironmentSettings, TableEnvironment
        self.env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        self.env.get_config().set("parallelism.default", "2")

    def once(self, root, query):
        for table, cols in SCHEMAS.items():
            decl = ", ".join(f"`{c}` {t}" for c, t in cols) + ", " + WATERMARK
            if "FOR SYSTEM_TIME" in query and table == "auction":
                decl += ", PRIMARY KEY (id) NOT ENFORCED"
            self.env.execute_sql(f"DROP TEMPORARY TABLE IF EXISTS {table}")
            self.env.execute_sql(f"CREATE TEMPORARY TABLE {table} ({decl}) WITH ('connector' = "
                                 f"'filesystem', 'path' = '{os.path.join(root, table)}', 'format' = 'json')")
        # The sink's columns are whatever the query returns.
        schema = self.env.sql_query(query).get_schema()
        decl = ", ".join(f"`{n}` {t}" for n, t in zip(schema.get_field_names(), schema.get_field_data_types()))
        self.env.execute_sql("DROP TEMPORARY TABLE IF EXISTS bench_sink")
        self.env.execute_sql(f"CREATE TEMPORARY TABLE bench_sink ({decl}) WITH ('connector' = 'blackhole')")
        jvm = java_child()
        cpu0 = proc_cpu(jvm)
        started = time.time()
        self.env.execute_sql(f"INSERT INTO bench_sink {query}").wait()
        secs = time.time() - started
        return secs, proc_cpu(jvm) - cpu0, proc_mem_mib(jvm, "VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--sizes", default="1000000,3000000", help="bids per run (two sizes: marginal rate)")
    ap.add_argument("--auctions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", help="run only the cases whose name contains this text")
    a = ap.parse_args()
    if a.only:
        CASES[:] = [c for c in CASES if a.only in c[0]]
    sizes = [int(s) for s in a.sizes.split(",")]
    flink = Flink()
    times, usage = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        # Flink's first job also starts its mini-cluster: warm it up untimed.
        warm = os.path.join(tmp, "warm-up")
        write_data(warm, 10_000, 1_000)
        for _, query in CASES:
            flink.once(warm, query)
        for bids in sizes:
            root = os.path.join(tmp, str(bids))
            write_data(root, bids, a.auctions)
            for name, query in CASES:
                s, f, s_cpu, f_cpu, s_mem, f_mem = [], [], [], [], [], []
                for _ in range(a.runs):
                    secs, read, cpu, peak = sluice_once(a.sluice, root, query)
                    want = bids + (a.auctions if "auction" in query else 0)
                    if read != want:
                        raise RuntimeError(f"sluice read {read} rows of {want}: {name}")
                    s.append(secs)
                    s_cpu.append(cpu)
                    s_mem.append(peak)
                    secs, cpu, rss = flink.once(root, query)
                    f.append(secs)
                    f_cpu.append(cpu)
                    f_mem.append(rss)
                med = statistics.median
                times[(name, bids)] = (med(s), med(f))
                usage[(name, bids)] = (med(s_cpu), med(f_cpu), max(s_mem), max(f_mem))
                print(f"{bids:>9,} bids  {name:32} sluice {times[(name, bids)][0]:6.2f} s "
                      f"{usage[(name, bids)][0]:6.2f} cpu-s {usage[(name, bids)][2]:7.0f} MiB   "
                      f"flink {times[(name, bids)][1]:6.2f} s {usage[(name, bids)][1]:6.2f} cpu-s "
                      f"{usage[(name, bids)][3]:7.0f} MiB", flush=True)
    lo, hi = sizes[0], sizes[-1]
    extra = hi - lo + 0.0
    print(f"\n{a.auctions:,} auctions; rows/s of the extra {hi - lo:,} bids (marginal), and at {hi:,} bids whole")
    print(f"{'case':32} {'sluice':>12} {'flink':>12} {'ratio':>7} {'sluice':>12} {'flink':>12} {'ratio':>7}")
    for name, _ in CASES:
        (s_lo, f_lo), (s_hi, f_hi) = times[(name, lo)], times[(name, hi)]
        sm, fm = extra / max(s_hi - s_lo, 1e-9), extra / max(f_hi - f_lo, 1e-9)
        sw, fw = (hi + a.auctions) / s_hi, (hi + a.auctions) / f_hi
        print(f"{name:32} {sm:12,.0f} {fm:12,.0f} {sm / fm:7.2f} {sw:12,.0f} {fw:12,.0f} {sw / fw:7.2f}")
    print(f"\nAt {hi:,} bids: CPU-seconds of the query (median), and memory: Sluice's peak RSS (a fresh")
    print("server per run), the JVM's RSS after the run (one warm mini-cluster for all runs)")
    print(f"{'case':32} {'sluice cpu-s':>12} {'flink cpu-s':>12} {'F / S':>7} {'sluice MiB':>11} {'flink MiB':>10}")
    for name, _ in CASES:
        sc, fc, sm, fm = usage[(name, hi)]
        print(f"{name:32} {sc:12.2f} {fc:12.2f} {fc / max(sc, 1e-9):7.2f} {sm:11.0f} {fm:10.0f}")


if __name__ == "__main__":
    main()

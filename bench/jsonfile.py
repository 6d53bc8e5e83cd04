#!/usr/bin/env python3
"""One large JSON-lines file of Nexmark bids read by the filesystem source, in
byte ranges spread over the tasks (the default) and whole by one task
('scan.split-size' larger than the file), at parallelism 1 and 2: `SELECT *`
into a blackhole, a fresh release server per run, the cases taking turns.

    python3 bench/jsonfile.py --sluice ~/.cache/sluice-target-release/release/sluice [--events 2000000] [--runs 3]
"""

import argparse
import glob
import os
import shutil
import statistics
import tempfile
import time

from benchlib import Sluice
from nexmark_flink import land

COLUMNS = ("auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP, "
           "extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND")


def once(binary, path, parallelism, split):
    with Sluice(binary, os.path.dirname(path), parallelism=parallelism) as server:
        server.sql(f"CREATE STREAM bid ({COLUMNS}) WITH (connector = 'filesystem', path = '{path}', "
                   f"format = 'json', 'scan.mode' = 'bounded', 'scan.split-size' = '{split}')")
        cpu0, started = server.cpu(), time.time()
        server.sql("CREATE SINK out WITH (connector = 'blackhole') AS SELECT * FROM bid")
        if server.wait_job("out") != "finished":
            raise RuntimeError("job failed")
        return time.time() - started, server.cpu() - cpu0, server.source_rows("out")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        counts = land(a.sluice, os.path.join(tmp, "landed"), a.events)
        one = os.path.join(tmp, "one", "bid")
        os.makedirs(one)
        with open(os.path.join(one, "bids.json"), "wb") as out:
            for f in sorted(glob.glob(os.path.join(tmp, "landed", "bid", "*.json"))):
                with open(f, "rb") as part:
                    shutil.copyfileobj(part, out)
        size = os.path.getsize(os.path.join(one, "bids.json"))
        cases = [(p, split) for p in (1, 2) for split in ("32MB", "100GB")]
        results = {c: [] for c in cases}
        for _ in range(a.runs):
            for p, split in cases:
                secs, cpu, rows = once(a.sluice, one, p, split)
                if rows != counts["bid"]:
                    raise RuntimeError(f"read {rows} of {counts['bid']} bids")
                results[(p, split)].append((secs, cpu))
    bids = counts["bid"]
    print(f"\none file of {bids:,} bids ({size / 2**20:.0f} MiB), median of {a.runs}")
    print("| P | read as | bids/s | bids per CPU-s |")
    print("|---:|---|---:|---:|")
    for (p, split), r in results.items():
        secs, cpu = statistics.median(x[0] for x in r), statistics.median(x[1] for x in r)
        how = "32 MiB ranges" if split == "32MB" else "one file, one task"
        print(f"| {p} | {how} | {bids / secs:,.0f} | {bids / cpu:,.0f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Does the server give memory back? RSS of a Sluice server after many
statements and after cancelled sorts, each measured once the server is idle.

    python3 bench/memory.py --binary target/release/sluice [--binary other/sluice ...]

For each binary: start it on a fresh data directory, run 40,000 small
statements in one psql session, then three window sorts of 30M rows cut off
by statement_timeout, printing RSS (from /proc) after each phase and after
two idle seconds. Several binaries run one after another, so builds with
different allocators can be compared in one run.
"""

import argparse
import os
import socket
import subprocess
import tempfile
import time

from benchlib import free_port


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def psql(port, script, timeout=600):
    env = dict(os.environ, PGPASSWORD="sluice")
    subprocess.run(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "sluice", "-d", "sluice", "-f", "-"],
        input=script.encode(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=timeout, check=False)


def measure(binary, statements):
    work = tempfile.mkdtemp(prefix="sluice-mem-")
    port = free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "data"),
                             "--log", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        rows = [("start", rss_mb(proc.pid))]
        small = []
        for i in range(statements):
            k = i % 4
            if k == 0:
                small.append(f"SELECT {i} + 1;")
            elif k == 1:
                small.append(f"SELECT count(*), sum(x) FROM generate_series(1, {1000 + i % 5000}) t(x);")
            elif k == 2:
                small.append(f"SELECT string_agg(CAST(x AS TEXT), ',') FROM generate_series(1, {100 + i % 900}) t(x);")
            else:
                small.append(f"SELECT x % 7 AS k, count(*) FROM generate_series(1, {2000 + i % 3000}) t(x) GROUP BY 1;")
        t0 = time.time()
        psql(port, "\n".join(small))
        rows.append((f"after {statements} statements ({time.time() - t0:.0f} s)", rss_mb(proc.pid)))
        time.sleep(2)
        rows.append(("  idle 2 s", rss_mb(proc.pid)))
        for n in range(3):
            psql(port, "SET statement_timeout = '3s';\n"
                       "SELECT max(rn) FROM (SELECT row_number() OVER (ORDER BY x DESC) AS rn "
                       "FROM generate_series(1, 30000000) t(x)) s;\n")
            time.sleep(5)
            rows.append((f"after cancelled sort {n + 1}, idle 5 s", rss_mb(proc.pid)))
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", action="append", required=True)
    ap.add_argument("--statements", type=int, default=40000)
    args = ap.parse_args()
    results = {b: measure(b, args.statements) for b in args.binary}
    labels = [label for label, _ in next(iter(results.values()))]
    print("| phase | " + " | ".join(args.binary) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.binary) + " |")
    for i, label in enumerate(labels):
        print(f"| {label} | " + " | ".join(f"{results[b][i][1]:.0f} MB" for b in args.binary) + " |")


if __name__ == "__main__":
    main()

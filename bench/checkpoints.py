#!/usr/bin/env python3
"""What checkpoints cost, measured through the release `sluice` binary.

1. Throughput of Nexmark q5 (HOP count per auction) and q7 (TUMBLE max price)
   over the bounded generator at full speed into `blackhole`, with checkpoints
   off, every 10 s and every 1 s, interleaved in one run (ratios, as these
   machines are noisy).
2. State size: an updating GROUP BY with many groups (the q17 shape) fed at a
   fixed rate with checkpoints every second: state rows, the last checkpoint's
   duration and size; then kill -9 and restart: the time from the kill until
   the restored job processes new rows (recovery), and how long the restore of
   the state took inside that.

    cargo build --release -p sluice-server
    python3 bench/checkpoints.py                       # 60M events; states ~100 MB, ~1 GB
    python3 bench/checkpoints.py --events 20000000 --states 200000:10
    python3 bench/checkpoints.py --only-big --big 5000000:290 --big-window 30000000:1000

3. With --big keys:MiB: a datagen stream of random keys (1..keys) at full speed
   into the same kind of GROUP BY (count, min, max, avg, sum per key),
   checkpoints every 5 s, killed once a completed checkpoint holds at least MiB
   of state; then the same recovery figures.

(`cargo bench -p sluice-connectors --bench checkpoints` measures the same
in-process.)
"""

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

from benchlib import PsqlSession, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sluice-target-release"))
# SLUICE_BIN: another binary (e.g. an older build, for a side-by-side run).
BINARY = os.environ.get("SLUICE_BIN") or os.path.join(TARGET, "release", "sluice")

Q5 = ("SELECT auction, count(*) AS num, window_start, window_end FROM HOP(bid, date_time, "
      "INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end")
Q7 = ("SELECT window_start, window_end, max(price) AS maxprice FROM TUMBLE(bid, date_time, "
      "INTERVAL '10' SECOND) GROUP BY window_start, window_end")
Q17 = ("SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, "
       "min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, "
       "sum(price) AS sum_price FROM bid GROUP BY auction, to_char(date_time, '%Y-%m-%d')")


class Server:
    def __init__(self, data, interval="10s"):
        self.data = data
        self.interval = interval
        self.start()

    def start(self):
        self.port = free_port()
        env = dict(os.environ, SLUICE_LOG="warn", SLUICE_CHECKPOINT_INTERVAL=self.interval)
        self.proc = subprocess.Popen(
            [BINARY, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sluice did not start")

    def sql(self, *statements):
        args = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "sluice", "-X", "-tA",
                "-v", "ON_ERROR_STOP=1"]
        for s in statements:
            args += ["-c", s]
        out = subprocess.run(args, env=dict(os.environ, PGPASSWORD="sluice"),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return [line.split("|") for line in out.stdout.splitlines() if line]

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def stream(name, events, rate):
    return (f"CREATE STREAM {name} WITH (connector = 'nexmark', 'nexmark.table' = 'bid', "
            f"'events.max' = '{events}', 'events.per.second' = '{rate}', "
            f"'nexmark.base.time' = '1700000000000')")


def job_rows(server, job, session=None):
    """(status, rows into its aggregate, state rows) of a job; polled through
    `session` (a PsqlSession) when given."""
    status, agg_rows, state = None, 0, 0
    for r in (session or server).sql("SHOW JOBS"):
        if r[0] != job:
            continue
        status = r[2]
        if r[4].startswith("Aggregate") or r[4].startswith("WindowAggregate"):
            agg_rows += int(r[6])
        state += int(r[9] or 0)
    return status, agg_rows, state


def throughput(server, n, query, events, interval):
    s, j = f"bid_{n}", f"out_{n}"
    server.sql(stream(s, events, 0))
    started = time.time()
    server.sql(f"SET streaming.checkpoint_interval = '{interval}'",
               f"CREATE SINK {j} WITH (connector = 'blackhole') AS {query.replace('FROM bid', f'FROM {s}').replace('(bid,', f'({s},')}")
    session = PsqlSession(server.port)
    try:
        while True:
            status, _, _ = job_rows(server, j, session)
            if status in ("finished", "failed"):
                break
            time.sleep(0.02)
    finally:
        session.close()
    secs = time.time() - started
    assert status == "finished", status
    taken = sum(1 for r in server.sql("SHOW CHECKPOINTS") if r[0] == j and r[2] == "completed")
    server.sql(f"DROP SINK {j}", f"DROP STREAM {s}")
    return secs, taken


def state_case(rate, secs):
    data = tempfile.mkdtemp(prefix="sluice-ck-")
    try:
        server = Server(data, interval="1s")
        server.sql(stream("bid", rate * 36000, rate),
                   f"CREATE SINK agg WITH (connector = 'blackhole') AS {Q17}")
        time.sleep(secs)
        _, rows_before, state = job_rows(server, "agg")
        done = [r for r in server.sql("SHOW CHECKPOINTS") if r[0] == "agg" and r[2] == "completed"]
        last = max(done, key=lambda r: int(r[1]))
        ck_ms, ck_bytes = int(last[4]), int(last[5])
        listening, recovery = recover(server)
        server.stop()
        return state, ck_ms, ck_bytes, listening, recovery
    finally:
        shutil.rmtree(data, ignore_errors=True)


BIG = ("SELECT k, count(*) AS n, min(v) AS lo, max(v) AS hi, avg(v) AS av, sum(v) AS s "
       "FROM kv GROUP BY k")
# The same per key, in one open day-long window (a windowed aggregate keeps
# its groups in DataFusion's GroupsAccumulators).
BIG_WINDOW = ("SELECT k, window_start, count(*) AS n, min(v) AS lo, max(v) AS hi, avg(v) AS av, "
              "sum(v) AS s FROM TUMBLE(kv, ts, INTERVAL '1' DAY) GROUP BY k, window_start")


def recover(server):
    """kill -9, restart: (kill to listening, kill to the aggregate taking rows) in s."""
    killed = time.time()
    server.kill9()
    server.start()
    listening = time.time() - killed
    # Recovered when the restored aggregate takes rows again (sources
    # start at once; the aggregate first rebuilds its state).
    while True:
        _, rows, _ = job_rows(server, "agg")
        if rows > 0:
            break
        time.sleep(0.01)
    return listening, time.time() - killed


def big_state_case(keys, mib, windowed):
    data = tempfile.mkdtemp(prefix="sluice-ck-")
    try:
        server = Server(data, interval="5s")
        server.sql(f"CREATE STREAM kv (k BIGINT, v BIGINT, ts TIMESTAMP, "
                   f"WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'datagen', "
                   f"'rows-per-second' = '0', 'fields.k.kind' = 'random', 'fields.k.min' = '1', "
                   f"'fields.k.max' = '{keys}', 'fields.v.kind' = 'random', 'fields.v.min' = '1', "
                   f"'fields.v.max' = '1000000')",
                   f"CREATE SINK agg WITH (connector = 'blackhole') AS {BIG_WINDOW if windowed else BIG}")
        started = time.time()
        while True:
            done = [r for r in server.sql("SHOW CHECKPOINTS") if r[0] == "agg" and r[2] == "completed"]
            last = max(done, key=lambda r: int(r[1])) if done else None
            if last and int(last[5]) >= mib * 2**20:
                break
            time.sleep(0.5)
        _, _, state = job_rows(server, "agg")
        ck_ms, ck_bytes = int(last[4]), int(last[5])
        filled = time.time() - started
        rss = server.rss_mib()
        listening, recovery = recover(server)
        server.stop()
        return state, ck_ms, ck_bytes, listening, recovery, filled, rss
    finally:
        shutil.rmtree(data, ignore_errors=True)


BIG_DISTINCT = "SELECT k, count(*) AS n, count(DISTINCT v) AS d FROM kv GROUP BY k"


def incremental_case(keys, changes, steps, view=False, query=None):
    """A GROUP BY over `keys` groups (one file), then `steps` small files of
    `changes` rows each on random keys: the checkpoint after the first file
    is full, the ones after the small files hold only the changed groups.
    With `view`, the aggregate feeds a materialized view (whose lanes are
    checkpointed too) instead of a blackhole sink.
    Returns (full (ms, bytes), [incremental (ms, bytes)], recovery s)."""
    import random
    data = tempfile.mkdtemp(prefix="sluice-ck-")
    files = os.path.join(data, "in")
    os.makedirs(files)
    try:
        # Files are written beside the watched folder and moved in whole.
        with open(os.path.join(data, "a.json"), "w") as f:
            for k in range(keys):
                f.write(f'{{"k": {k}, "v": {k % 1000}}}\n')
        os.rename(os.path.join(data, "a.json"), os.path.join(files, "a.json"))
        server = Server(data, interval="1s")
        server.sql(f"CREATE STREAM kv (k BIGINT, v BIGINT) WITH (connector = 'filesystem', path = '{files}', "
                   f"format = 'json', 'source.monitor-interval' = '100ms')",
                   f"CREATE MATERIALIZED VIEW agg AS {query or BIG}" if view else
                   f"CREATE SINK agg WITH (connector = 'blackhole') AS {query or BIG}")

        def completed():
            return sorted((int(r[1]), int(r[4]), int(r[5])) for r in server.sql("SHOW CHECKPOINTS")
                          if r[0] == "agg" and r[2] == "completed")

        def wait_rows(n):
            while job_rows(server, "agg")[1] < n:
                time.sleep(0.1)

        def next_checkpoint():
            seen = max((e for e, _, _ in completed()), default=0)
            while True:
                done = [c for c in completed() if c[0] > seen + 1]
                if done:
                    return done[0]
                time.sleep(0.1)

        wait_rows(keys)
        next_checkpoint()
        # The full snapshot: the first checkpoint holding the groups (later
        # ones hold only changes: none yet).
        _, full_ms, full_bytes = max(completed(), key=lambda c: c[2])
        rng = random.Random(7)
        incremental = []
        total = keys
        for step in range(steps):
            name = f"b{step}.json"
            with open(os.path.join(data, name), "w") as f:
                for _ in range(changes):
                    f.write(f'{{"k": {rng.randrange(keys)}, "v": {rng.randrange(1000)}}}\n')
            os.rename(os.path.join(data, name), os.path.join(files, name))
            total += changes
            wait_rows(total)
            _, ms, size = next_checkpoint()
            incremental.append((ms, size))
        # Recovery: kill -9, start, one more small file; until the restored
        # aggregate takes its rows (includes the source's 100 ms listing).
        killed = time.time()
        server.kill9()
        server.start()
        with open(os.path.join(data, "c.json"), "w") as f:
            f.write('{"k": 1, "v": 1}\n')
        os.rename(os.path.join(data, "c.json"), os.path.join(files, "c.json"))
        while job_rows(server, "agg")[1] < 1:
            time.sleep(0.01)
        recovery = time.time() - killed
        server.stop()
        return (full_ms, full_bytes), incremental, recovery
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60_000_000)
    ap.add_argument("--states", default="1000000:25,1500000:170",
                    help="rate:seconds of the q17-shaped input, comma separated")
    ap.add_argument("--big", default="",
                    help="keys:MiB of the datagen GROUP BY case, comma separated")
    ap.add_argument("--big-window", default="",
                    help="keys:MiB of the datagen windowed GROUP BY case, comma separated")
    ap.add_argument("--only-big", action="store_true", help="run only the --big cases")
    ap.add_argument("--incremental", default="",
                    help="keys:changes:steps of the incremental checkpoint case (then exits)")
    ap.add_argument("--incremental-view", action="store_true",
                    help="the incremental case into a materialized view instead of a blackhole sink")
    ap.add_argument("--incremental-distinct", action="store_true",
                    help="the incremental case with count(DISTINCT v) (the boxed GROUP BY)")
    args = ap.parse_args()
    if not os.path.exists(BINARY):
        raise SystemExit(f"build it first: cargo build --release -p sluice-server ({BINARY})")
    if args.incremental:
        keys, changes, steps = (int(x) for x in args.incremental.split(":"))
        query = BIG_DISTINCT if args.incremental_distinct else BIG
        (full_ms, full_bytes), inc, recovery = incremental_case(keys, changes, steps, args.incremental_view, query)
        into = "a materialized view" if args.incremental_view else "a blackhole sink"
        aggs = "count, count(DISTINCT v)" if args.incremental_distinct else "count, min, max, avg, sum"
        print(f"Incremental checkpoints: GROUP BY k ({aggs}) over {keys} keys from one "
              f"file into {into}, then {steps} files of {changes} rows on random keys; checkpoint every 1 s\n")
        print("| checkpoint | ms | bytes |")
        print("|---|---:|---:|")
        print(f"| full, after the first file | {full_ms} | {full_bytes} |")
        for i, (ms, size) in enumerate(inc):
            print(f"| after small file {i + 1} (changes since the full one) | {ms} | {size} |")
        print(f"\nkill -9 after the last one: new rows processed {recovery:.2f} s after the kill "
              f"(full snapshot + changes restored)")
        return
    if args.big or args.big_window:
        print("Big state (datagen random keys, GROUP BY k with count, min, max, avg, sum, updating "
              "or in one open day-long window; checkpoint every 5 s), then kill -9 and restart:\n")
        print("| operator | keys | state rows | filled in (s) | last checkpoint ms | checkpoint MiB "
              "| server RSS MiB | kill to listening (s) | kill to new rows processed (s) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        cases = [(c, False) for c in args.big.split(",") if c] + \
                [(c, True) for c in args.big_window.split(",") if c]
        for case, windowed in cases:
            keys, mib = (int(x) for x in case.split(":"))
            state, ms, size, listening, recovery, filled, rss = big_state_case(keys, mib, windowed)
            print(f"| {'window' if windowed else 'updating'} | {keys} | {state} | {filled:.0f} | {ms} "
                  f"| {size / 2**20:.1f} | {rss:.0f} | {listening:.2f} | {recovery:.2f} |", flush=True)
        print()
    if args.only_big:
        return
    print(f"Checkpoint overhead, {args.events} events, blackhole sink, {os.cpu_count()} cores\n")
    print("| query | off events/s | 10 s events/s | 10 s / off | 1 s events/s | 1 s / off | checkpoints (10 s, 1 s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    data = tempfile.mkdtemp(prefix="sluice-ck-")
    server = Server(data)
    n = 0
    try:
        for name, q in (("q5", Q5), ("q7", Q7)):
            res = {}
            for interval in ("off", "10s", "1s"):
                n += 1
                res[interval] = throughput(server, n, q, args.events, interval)
            rate = {k: args.events / v[0] / 1e6 for k, v in res.items()}
            print(f"| {name} | {rate['off']:.2f}M | {rate['10s']:.2f}M | {rate['10s'] / rate['off']:.3f} "
                  f"| {rate['1s']:.2f}M | {rate['1s'] / rate['off']:.3f} | {res['10s'][1]}, {res['1s'][1]} |",
                  flush=True)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    print("\nState size (q17 shape: updating GROUP BY auction, day; checkpoint every 1 s), "
          "then kill -9 and restart:\n")
    print("| input | state rows | last checkpoint ms | checkpoint MiB | kill to listening (s) | kill to new rows processed (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in args.states.split(","):
        rate, secs = (int(x) for x in case.split(":"))
        state, ms, size, listening, recovery = state_case(rate, secs)
        print(f"| {rate}/s for {secs} s | {state} | {ms} | {size / 2**20:.1f} | {listening:.2f} | {recovery:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()

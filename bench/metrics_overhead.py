#!/usr/bin/env python3
"""What watching Sluice costs the jobs it watches: `/metrics` scraped every
second, and the console open on the jobs page, against neither, side by side
in one run of one server.

One server (release binary, parallelism 2) runs 20 jobs: 19 paced ones (a
nexmark bid stream at `--paced-rate` events/s each, counted per auction in
10 s windows) that give `/metrics` and the console their 20 jobs' worth of
series, and one measured job reading an unpaced nexmark bid stream as fast
as it can (the same windowed count, into a blackhole sink). Time is cut into
windows of `--window` seconds; each window runs one way:

- quiet: nobody watches;
- scraped: a client GETs /metrics every second and reads it all, as
  Prometheus does (Prometheus itself is left out: on a real deployment it
  runs elsewhere, and here it would take CPU from the server measured);
- console: a client holds the console's live feed open (`/api/live`, the
  server-sent events the jobs page and a job's graph read: SHOW JOBS, SHOW
  CHECKPOINTS and every operator's figures, once a second). The browser's
  own rendering is left out for the same reason as Prometheus.

The ways take turns, round after round, so drift of the machine hits each
alike. The measured job's rate in a window is the rows its source read in it
(SHOW JOBS at the window's start and end). Prints each way's median rate and
its ratio to quiet.

    python3 bench/metrics_overhead.py --sluice ~/.cache/sluice-target-release/release/sluice
"""

import argparse
import base64
import http.client
import os
import socket
import statistics
import tempfile
import threading
import time

from benchlib import PsqlSession, Sluice

AUTH = "Basic " + base64.b64encode(b"sluice:sluice").decode()
WINDOWED = ("SELECT auction, count(*) AS bids, window_start FROM TUMBLE({s}, date_time, "
            "INTERVAL '10' SECOND) GROUP BY auction, window_start")


def scraper(port, stop, stats):
    """GETs /metrics once a second until `stop` is set."""
    while not stop.is_set():
        began = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
        conn.close()
        stats["scrapes"] += 1
        stats["bytes"] = len(body)
        stats["series"] = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        stats["seconds"] += time.time() - began
        stop.wait(max(0.0, 1.0 - (time.time() - began)))


def console(port, stop, stats):
    """Holds the console's live feed open, reading its updates, until `stop`."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /api/live HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n".encode())
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            break
        stats["updates"] += chunk.count(b"event: update")
        stats["bytes"] += len(chunk)
    sock.close()


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cost(pid, http_port, seconds, rounds, watchers=10):
    """The server's CPU per scrape and per console update, with the measured
    job gone (the paced jobs still run). Per round: CPU over `seconds`
    quiet, then with `watchers` scrapers at once (each scraping once a
    second), then with `watchers` console feeds open; each way's cost is its
    CPU above that round's quiet. Returns per way a list of (ms of CPU per
    scrape or update, quiet cores) over the rounds."""
    out = {"scraped": [], "console": []}
    for _ in range(rounds):
        cores = {}
        for way in ("quiet", "scraped", "console"):
            stop = threading.Event()
            stats = {"scrapes": 0, "bytes": 0, "series": 0, "seconds": 0.0, "updates": 0}
            target = scraper if way == "scraped" else console
            threads = [threading.Thread(target=target, args=(http_port, stop, stats))
                       for _ in range(watchers if way != "quiet" else 0)]
            for t in threads:
                t.start()
            time.sleep(1)
            before, done0, t0 = cpu_seconds(pid), stats["scrapes"] + stats["updates"], time.time()
            time.sleep(seconds)
            used, t1 = cpu_seconds(pid) - before, time.time()
            done = stats["scrapes"] + stats["updates"] - done0
            stop.set()
            for t in threads:
                t.join()
            cores[way] = (used / (t1 - t0), done / (t1 - t0))
        for way in ("scraped", "console"):
            used, per_second = cores[way]
            out[way].append((1000 * (used - cores["quiet"][0]) / per_second, cores["quiet"][0]))
    return out


def source_rows(session, job):
    return sum(int(r[7]) for r in session.sql("SHOW JOBS") if r[0] == job and r[4].startswith("Source:"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True, help="release sluice binary")
    ap.add_argument("--jobs", type=int, default=20, help="jobs running, the measured one included")
    ap.add_argument("--paced-rate", type=int, default=500, help="events/s of each other job's stream")
    ap.add_argument("--window", type=float, default=15.0, help="seconds per measured window")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cost-seconds", type=float, default=20.0,
                    help="seconds per way of the CPU-cost measurement after the rounds")
    ap.add_argument("--cost-rounds", type=int, default=5)
    a = ap.parse_args()

    with Sluice(a.sluice, file_roots=tempfile.gettempdir(), parallelism=2, http=True) as server:
        port, http_port, proc = server.port, server.http_port, server.proc
        session = PsqlSession(port)
        for i in range(a.jobs - 1):
            session.sql(f"CREATE STREAM paced{i} WITH (connector = 'nexmark', 'nexmark.table' = 'bid', "
                        f"'events.per.second' = '{a.paced_rate}')")
            session.sql(f"CREATE SINK watch{i} WITH (connector = 'blackhole') AS "
                        + WINDOWED.format(s=f"paced{i}"))
        session.sql("CREATE STREAM flat WITH (connector = 'nexmark', 'nexmark.table' = 'bid', "
                    "'events.per.second' = '0')")
        session.sql("CREATE SINK measured WITH (connector = 'blackhole') AS " + WINDOWED.format(s="flat"))
        running = {r[0] for r in session.sql("SHOW JOBS") if r[2] == "running"}
        assert len(running) == a.jobs, f"{len(running)} jobs running, wanted {a.jobs}"
        time.sleep(5)  # past the start

        ways = ["quiet", "scraped", "console"]
        rates = {w: [] for w in ways}
        seen = {"scraped": {"scrapes": 0, "bytes": 0, "series": 0, "seconds": 0.0},
                "console": {"updates": 0, "bytes": 0}}
        print(f"{a.jobs} jobs ({a.jobs - 1} paced at {a.paced_rate} events/s, one unpaced measured), "
              f"{a.rounds} rounds of {len(ways)} windows of {a.window:.0f} s", flush=True)
        for r in range(a.rounds):
            # Each round starts with another way, so none always follows the same one.
            order = ways[r % len(ways):] + ways[:r % len(ways)]
            for way in order:
                stop = threading.Event()
                watcher = None
                if way == "scraped":
                    watcher = threading.Thread(target=scraper, args=(http_port, stop, seen["scraped"]))
                elif way == "console":
                    watcher = threading.Thread(target=console, args=(http_port, stop, seen["console"]))
                if watcher:
                    watcher.start()
                    time.sleep(1)  # the first scrape or update is out of the window
                before, t0 = source_rows(session, "measured"), time.time()
                time.sleep(a.window)
                after, t1 = source_rows(session, "measured"), time.time()
                stop.set()
                if watcher:
                    watcher.join()
                rates[way].append((after - before) / (t1 - t0))
                print(f"  round {r + 1} {way:8} {rates[way][-1]:12,.0f} events/s", flush=True)
        session.sql("DROP SINK measured")
        time.sleep(3)
        cpu = cost(proc.pid, http_port, a.cost_seconds, a.cost_rounds)
        session.close()

    if a.rounds:
        quiet = statistics.median(rates["quiet"])
        print(f"\n{'way':10} {'events/s (median)':>18} {'vs quiet':>9}  runs")
        for way in ways:
            m = statistics.median(rates[way])
            print(f"{way:10} {m:18,.0f} {m / quiet:9.3f}  " + " ".join(f"{x:,.0f}" for x in rates[way]))
    s = seen["scraped"]
    if s["scrapes"]:
        print(f"\n/metrics: {s['series']:,} series, {s['bytes'] / 1024:,.0f} KiB per scrape, "
              f"{1000 * s['seconds'] / s['scrapes']:.1f} ms per scrape as the client saw it ({s['scrapes']} scrapes)")
    c = seen["console"]
    if c["updates"]:
        print(f"console feed: {c['updates']} updates, {c['bytes'] / max(1, c['updates']) / 1024:,.0f} KiB each")
    print(f"\nCPU cost, {a.cost_rounds} rounds of quiet / 10 scrapers / 10 console feeds, "
          f"{a.cost_seconds:.0f} s each, over the {a.jobs - 1} paced jobs "
          f"({statistics.median(q for _, q in cpu['scraped']):.3f} cores quiet):")
    for way, what in (("scraped", "scrape"), ("console", "console update")):
        each = statistics.median(ms for ms, _ in cpu[way])
        print(f"{way:8}: {each:.2f} ms of CPU per {what} (median; rounds: "
              + " ".join(f"{ms:.1f}" for ms, _ in cpu[way])
              + f"), so one a second is {each / 10 / 2:.2f}% of the machine's 2 cores")

if __name__ == "__main__":
    main()

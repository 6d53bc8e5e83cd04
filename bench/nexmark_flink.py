#!/usr/bin/env python3
"""The Nexmark suite, Sluice beside Apache Flink, over the same JSON-lines files.

Sluice's own generator lands one set of Nexmark events (persons, auctions,
bids) as JSON lines through Sluice's filesystem sink, two files per table
(one per task, each in time order). Then each query runs in both engines
over those files, in streaming mode at parallelism 2, into a blackhole sink,
timed from submitting the query to the job's end:

- Sluice: a fresh release server per run; the query is the file in
  `examples/nexmark/` (the streams are declared over the files instead of
  the generator). The script checks that the sources read every row.
- Flink: PyFlink's local mini-cluster (one warm JVM); the query is the same
  text in Flink's spelling (window TVFs with TABLE and DESCRIPTOR,
  DATE_FORMAT, SPLIT_INDEX, REGEXP_EXTRACT, CHAR_LENGTH; q11's session
  windows partitioned by bidder). Each query first runs once, untimed, on
  a small input. q10 and q13 run in Sluice only (see SLUICE_ONLY).

Reported per query: events/s (all events of the tables the query reads,
over the wall time), CPU-seconds of each engine's process, Sluice's peak
RSS beside the JVM's RSS after the run, and the ratios. Also `--generator`:
Sluice over its built-in generator (no JSON), the engine's own ceiling; and
`--kafka BROKERS`: Sluice over the same events as JSON records in Kafka
topics (two partitions each, read as bounded streams; PyFlink ships no Kafka
connector, so Sluice only).

    pip install apache-flink==2.3.0
    CARGO_TARGET_DIR=~/.cache/sluice-target-release cargo build --release -p sluice-server
    python3 bench/nexmark_flink.py --sluice ~/.cache/sluice-target-release/release/sluice \\
        [--events 2000000] [--runs 3] [--only q0,q5] [--no-flink] [--generator] \\
        [--kafka "$SLUICE_TEST_KAFKA_BROKERS"]       # eval "$(scripts/infra/kafka.sh start)"
"""

import argparse
import os
import re
import statistics
import tempfile
import time

from benchlib import Sluice, java_child, proc_cpu, proc_mem_mib

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples", "nexmark")

COLUMNS = {
    "person": [("id", "BIGINT"), ("name", "STRING"), ("email_address", "STRING"), ("credit_card", "STRING"),
               ("city", "STRING"), ("state", "STRING"), ("date_time", "TIMESTAMP(3)"), ("extra", "STRING")],
    "auction": [("id", "BIGINT"), ("item_name", "STRING"), ("description", "STRING"), ("initial_bid", "BIGINT"),
                ("reserve", "BIGINT"), ("date_time", "TIMESTAMP(3)"), ("expires", "TIMESTAMP(3)"),
                ("seller", "BIGINT"), ("category", "BIGINT"), ("extra", "STRING")],
    "bid": [("auction", "BIGINT"), ("bidder", "BIGINT"), ("price", "BIGINT"), ("channel", "STRING"),
            ("url", "STRING"), ("date_time", "TIMESTAMP(3)"), ("extra", "STRING")],
}
# The same bound in both engines (the generator's events are in time order
# per file; the two files interleave).
WATERMARK = "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND"

# q6 is refused by both engines. Run in Sluice only: q10 lands Parquet, which
# PyFlink's distribution cannot write (no parquet format jar); q13 joins its
# side input by processing time, and Flink 2.3's filesystem connector is not
# a lookup source (Flink asks for a primary key and event time instead).
SLUICE_ONLY = {"q10", "q13"}
QUERIES = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q9", "q10", "q11", "q12", "q13", "q14", "q15",
           "q16", "q17", "q18", "q19", "q20", "q21", "q22", "q23"]
SIDE_KEYS = 10_000



def sluice_text(q):
    with open(os.path.join(EXAMPLES, f"{q}.sql")) as f:
        return "\n".join(line for line in f.read().splitlines() if not line.lstrip().startswith("--"))


def query_of(text):
    """The SELECT of an example's CREATE SINK."""
    m = re.search(r"CREATE SINK \w+ WITH \((?:[^()]|\([^()]*\))*\) AS\s*(.*?);?\s*$", text, re.S)
    return m.group(1)


def args_of(text, open_at):
    """The top-level arguments of the call whose '(' is at `open_at`, and the index after its ')'."""
    depth, args, start, quote = 0, [], open_at + 1, False
    for i in range(open_at, len(text)):
        c = text[i]
        if c == "'":
            quote = not quote
        if quote:
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(text[start:i].strip())
                return args, i + 1
        elif c == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
    raise ValueError("unbalanced parentheses")


def flink_text(q, sql):
    """Sluice's spelling of a Nexmark query in Flink's."""
    # Window TVFs: TUMBLE(bid, date_time, ...) -> TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), ...)).
    out, i = "", 0
    for m in re.finditer(r"\b(TUMBLE|HOP|SESSION)\(", sql):
        if m.start() < i:
            continue
        args, end = args_of(sql, m.end() - 1)
        table = f"TABLE {args[0]}" + (" PARTITION BY bidder" if m.group(1) == "SESSION" else "")
        out += sql[i:m.start()] + f"TABLE({m.group(1)}({table}, DESCRIPTOR({args[1]}), {', '.join(args[2:])}))"
        i = end
    sql = out + sql[i:]
    sql = sql.replace("'%Y-%m-%d'", "'yyyy-MM-dd'").replace("'%H:%M'", "'HH:mm'")
    sql = re.sub(r"\bto_char\(", "DATE_FORMAT(", sql)
    sql = re.sub(r"\blength\(", "CHAR_LENGTH(", sql)
    sql = re.sub(r"split_part\((\w+), '/', (\d)\)", lambda m: f"SPLIT_INDEX({m.group(1)}, '/', {int(m.group(2)) - 1})",
                 sql)
    sql = re.sub(r"regexp_match\((\w+), ('[^']*')\)\[(\d)\]", r"REGEXP_EXTRACT(\1, \2, \3)", sql)
    sql = re.sub(r"regexp_like\(", "REGEXP(", sql)
    # Words Flink's parser reserves.
    sql = re.sub(r"\bAS (day|minute)\b", r"AS `\1`", sql)
    return sql


# The tables each query reads (the others read bids only).
TABLES = {"q3": ["auction", "person"], "q4": ["auction", "bid"], "q8": ["person", "auction"],
          "q9": ["auction", "bid"], "q20": ["bid", "auction"], "q23": ["bid", "person", "auction"]}


def land(binary, root, events):
    """Nexmark events from Sluice's generator, landed as JSON lines in root/<table>/."""
    os.makedirs(root, exist_ok=True)
    with Sluice(binary, root) as server:
        for t in COLUMNS:
            server.sql(f"CREATE STREAM gen_{t} WITH (connector = 'nexmark', 'nexmark.table' = '{t}', "
                       f"'events.max' = '{events}', 'events.per.second' = '0', "
                       f"'nexmark.base.time' = '1700000000000')",
                       f"CREATE SINK land_{t} WITH (connector = 'filesystem', path = '{os.path.join(root, t)}', "
                       f"format = 'json') AS SELECT * FROM gen_{t}")
        for t in COLUMNS:
            if server.wait_job(f"land_{t}") != "finished":
                raise RuntimeError(f"landing {t} failed")
    return count_lines(root)


FROM_ZERO = "partition:0,offset:0;partition:1,offset:0"


def land_kafka(binary, brokers, events, topic_prefix, counts):
    """The same events as JSON records in Kafka topics <prefix>_<table> (two
    partitions); returns each table's end offsets in Flink's specific-offsets
    spelling. Reads start at offset 0 and end at offsets read from the records
    themselves: the test broker's ListOffsets is wrong both ways on a
    partition of several batches (earliest gave 1523 and latest 3869 for a
    partition holding offsets 0-5343), so 'earliest-offset' and
    'latest-offset' would miss records there."""
    ends = {}
    with tempfile.TemporaryDirectory() as roots, Sluice(binary, roots) as server:
        for t in COLUMNS:
            topic = f"{topic_prefix}_{t}"
            server.sql(f"CREATE STREAM gen_{t} WITH (connector = 'nexmark', 'nexmark.table' = '{t}', "
                       f"'events.max' = '{events}', 'events.per.second' = '0', "
                       f"'nexmark.base.time' = '1700000000000')",
                       f"CREATE SINK land_{t} WITH (connector = 'kafka', topic = '{topic}', "
                       f"'properties.bootstrap.servers' = '{brokers}', 'topic.partitions' = '2', "
                       f"format = 'json') AS SELECT * FROM gen_{t}")
        for t in COLUMNS:
            if server.wait_job(f"land_{t}") != "finished":
                raise RuntimeError(f"landing {t} in kafka failed")
            server.sql(f"CREATE STREAM ends_{t} (p INT METADATA FROM 'partition', o BIGINT METADATA FROM 'offset', "
                       f"date_time TIMESTAMP) WITH (connector = 'kafka', topic = '{topic_prefix}_{t}', "
                       f"'properties.bootstrap.servers' = '{brokers}', format = 'json', "
                       f"'scan.startup.mode' = 'specific-offsets', "
                       f"'scan.startup.specific-offsets' = '{FROM_ZERO}')",
                       f"CREATE MATERIALIZED VIEW ends_{t}_v AS SELECT p, max(o) + 1 AS e, count(*) AS n "
                       f"FROM ends_{t} GROUP BY p")
            deadline = time.time() + 300
            while True:
                rows = server.sql(f"SELECT p, e, n FROM ends_{t}_v ORDER BY p")
                if sum(int(r[2]) for r in rows) == counts[t]:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"kafka topic of {t}: {rows}, {counts[t]} records expected")
                time.sleep(0.2)
            ends[t] = ";".join(f"partition:{r[0]},offset:{r[1]}" for r in rows)
    return ends


def count_lines(root):
    counts = {}
    for t in COLUMNS:
        n = 0
        for dirpath, _, files in os.walk(os.path.join(root, t)):
            if os.path.basename(dirpath).startswith(("_", ".")):
                continue
            for f in files:
                if f.endswith(".json") and not f.startswith(("_", ".")):
                    with open(os.path.join(dirpath, f), "rb") as fh:
                        n += sum(1 for _ in fh)
        counts[t] = n
    return counts


def sluice_once(binary, root, q, generator_events=None, kafka=None):
    """One run of an example query: (seconds, CPU-seconds, peak RSS MiB, (stream, rows) per source)."""
    text = sluice_text(q)

    def prepare(data):
        # q13's side input and q10's output are relative to the data directory.
        side = os.path.join(data, "nexmark", "side_input")
        os.makedirs(side)
        with open(os.path.join(side, "side.json"), "w") as f:
            f.writelines(f'{{"key": {k}, "value": "v{k}"}}\n' for k in range(SIDE_KEYS))

    with Sluice(binary, root, prepare=prepare) as server:
        for t, cols in COLUMNS.items():
            decl = ", ".join(f"{c} {ty.replace('(3)', '').replace('STRING', 'TEXT')}" for c, ty in cols)
            if kafka:
                brokers, prefix, ends = kafka
                server.sql(f"CREATE STREAM {t} ({decl}, {WATERMARK}) WITH (connector = 'kafka', "
                           f"topic = '{prefix}_{t}', 'properties.bootstrap.servers' = '{brokers}', "
                           f"format = 'json', 'scan.startup.mode' = 'specific-offsets', "
                           f"'scan.startup.specific-offsets' = '{FROM_ZERO}', 'scan.bounded.mode' = 'specific-offsets', "
                           f"'scan.bounded.specific-offsets' = '{ends[t]}')")
            elif generator_events:
                server.sql(f"CREATE STREAM {t} WITH (connector = 'nexmark', 'nexmark.table' = '{t}', "
                           f"'events.max' = '{generator_events}', 'events.per.second' = '0', "
                           f"'nexmark.base.time' = '1700000000000')")
            else:
                server.sql(f"CREATE STREAM {t} ({decl}, {WATERMARK}) WITH (connector = 'filesystem', "
                           f"path = '{os.path.join(root, t)}', format = 'json', 'scan.mode' = 'bounded')")
        statements = [s.strip() for s in text.split(";") if s.strip()]
        cpu0 = server.cpu()
        started = time.time()
        for s in statements:
            server.sql(s)
        job = f"nexmark_{q}"
        status = server.wait_job(job)
        secs = time.time() - started
        cpu = server.cpu() - cpu0
        if status != "finished":
            raise RuntimeError(f"{q}: job {status}")
        return secs, cpu, server.peak_mib(), server.sources(job)


def check_read(q, read, counts):
    """Each source of the job read its whole table."""
    want = dict(counts, side_input=SIDE_KEYS)
    for stream, rows in read:
        if rows != want[stream]:
            raise RuntimeError(f"{q}: sluice's source of {stream} read {rows} rows of {want[stream]}")
    if not read:
        raise RuntimeError(f"{q}: no sources in SHOW JOBS")


class Flink:
    def __init__(self):
        from pyflink.table import EnvironmentSettings, TableEnvironment
        self.env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        self.env.get_config().set("parallelism.default", "2")

    def once(self, root, sql):
        for t, cols in COLUMNS.items():
            decl = ", ".join(f"`{c}` {ty}" for c, ty in cols) + ", " + WATERMARK
            self.env.execute_sql(f"DROP TEMPORARY TABLE IF EXISTS {t}")
            self.env.execute_sql(f"CREATE TEMPORARY TABLE {t} ({decl}) WITH ('connector' = 'filesystem', "
                                 f"'path' = '{os.path.join(root, t)}', 'format' = 'json', "
                                 f"'json.timestamp-format.standard' = 'ISO-8601')")
        schema = self.env.sql_query(sql).get_schema()
        decl = ", ".join(f"`{n}` {t}" for n, t in zip(schema.get_field_names(), schema.get_field_data_types()))
        self.env.execute_sql("DROP TEMPORARY TABLE IF EXISTS bench_sink")
        self.env.execute_sql(f"CREATE TEMPORARY TABLE bench_sink ({decl}) WITH ('connector' = 'blackhole')")
        jvm = java_child()
        cpu0 = proc_cpu(jvm)
        started = time.time()
        self.env.execute_sql(f"INSERT INTO bench_sink {sql}").wait()
        return time.time() - started, proc_cpu(jvm) - cpu0, proc_mem_mib(jvm, "VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--events", type=int, default=2_000_000, help="Nexmark events landed (92%% are bids)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", help="comma-separated queries")
    ap.add_argument("--no-flink", action="store_true", help="Sluice only")
    ap.add_argument("--generator", action="store_true", help="also Sluice over its generator (no JSON)")
    ap.add_argument("--kafka", metavar="BROKERS", help="also Sluice over the events in Kafka topics")
    a = ap.parse_args()
    queries = a.only.split(",") if a.only else QUERIES
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "nexmark")
        counts = land(a.sluice, root, a.events)
        total = sum(counts.values())
        print(f"landed {counts} ({total:,} events) as JSON lines", flush=True)
        kafka = None
        if a.kafka:
            prefix = f"nexmark_{int(time.time())}"
            kafka = (a.kafka, prefix, land_kafka(a.sluice, a.kafka, a.events, prefix, counts))
            print(f"landed the same events in topics {kafka[1]}_*", flush=True)
        flink = None
        if not a.no_flink:
            flink = Flink()
            warm = os.path.join(tmp, "warm-up")
            land(a.sluice, warm, 20_000)
            for q in queries:
                if q not in SLUICE_ONLY:
                    flink.once(warm, flink_text(q, query_of(sluice_text(q))))
        rows = []
        for q in queries:
            sql = query_of(sluice_text(q))
            events = sum(counts[t] for t in TABLES.get(q, ["bid"]))
            s, f, g, k = [], [], [], []
            for _ in range(a.runs):
                secs, cpu, peak, read = sluice_once(a.sluice, root, q)
                check_read(q, read, counts)
                s.append((secs, cpu, peak))
                if flink and q not in SLUICE_ONLY:
                    f.append(flink.once(root, flink_text(q, sql)))
                if a.generator:
                    g.append(sluice_once(a.sluice, root, q, generator_events=a.events)[0])
                if kafka:
                    secs, cpu, _, read = sluice_once(a.sluice, root, q, kafka=kafka)
                    check_read(q, read, counts)
                    k.append((secs, cpu))
            row = {"q": q, "events": events,
                   "s": med(x[0] for x in s), "s_cpu": med(x[1] for x in s), "s_mem": max(x[2] for x in s)}
            if f:
                row.update(f=med(x[0] for x in f), f_cpu=med(x[1] for x in f), f_mem=max(x[2] for x in f))
            if g:
                row["g"] = med(g)
            if k:
                row.update(k=med(x[0] for x in k), k_cpu=med(x[1] for x in k))
            rows.append(row)
            print(row, flush=True)
    print(f"\n{a.events:,} Nexmark events from JSON-lines files, parallelism 2, median of {a.runs}")
    print("| query | events read | Sluice events/s | Flink events/s | Sluice / Flink | Sluice events per "
          "CPU-s | Flink events per CPU-s | Flink / Sluice CPU | Sluice peak RSS MiB | Flink JVM RSS MiB |"
          + (" Sluice over its generator, events/s |" if a.generator else "")
          + (" Sluice over Kafka, events/s | per CPU-s |" if a.kafka else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if a.generator else "")
          + ("---:|---:|" if a.kafka else ""))
    for r in rows:
        e = r["events"]
        line = f"| {r['q']} | {e:,} | {e / r['s']:,.0f} | "
        if "f" in r:
            line += (f"{e / r['f']:,.0f} | **{r['f'] / r['s']:.2f}** | {e / r['s_cpu']:,.0f} | "
                     f"{e / r['f_cpu']:,.0f} | {r['f_cpu'] / r['s_cpu']:.2f} | {r['s_mem']:.0f} | {r['f_mem']:.0f} |")
        else:
            line += f"n/a | n/a | {e / r['s_cpu']:,.0f} | n/a | n/a | {r['s_mem']:.0f} | n/a |"
        if "g" in r:
            line += f" {a.events / r['g']:,.0f} |"
        if "k" in r:
            line += f" {e / r['k']:,.0f} | {e / r['k_cpu']:,.0f} |"
        print(line)


if __name__ == "__main__":
    main()

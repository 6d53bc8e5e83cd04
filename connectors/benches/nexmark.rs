//! Nexmark throughput: each supported query as a sink into `blackhole`,
//! over the built-in generator at full speed, at parallelism 1 and 2; plus
//! the generator alone (the ceiling). Prints a markdown table.
//!
//! ```text
//! cargo bench -p sluice-connectors --bench nexmark               # 10M events
//! cargo bench -p sluice-connectors --bench nexmark -- 2000000 q0 q5   # fewer events, some queries
//! ```
//!
//! Events are Nexmark events of the combined stream (92% of them bids), as
//! Nexmark reports throughput. Each run is its own process (the bench
//! re-executes itself), so peak memory is that run's peak RSS.

use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use sluice_connectors::filesystem::BlackholeSink;
use sluice_connectors::nexmark::NexmarkConnector;
use sluice_engine::{Engine, EngineConfig, Output, Session, SinkRegistry, SourceConnector, SourceRegistry};

const QUERIES: &[(&str, &str)] = &[
    ("q0", "SELECT auction, bidder, price, date_time, extra FROM bid"),
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
    ),
    ("q2", "SELECT auction, price FROM bid WHERE auction % 123 = 0"),
    (
        "q5-window",
        "SELECT auction, count(*) AS num, window_start, window_end \
         FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end",
    ),
    (
        "q7-window",
        "SELECT window_start, window_end, max(price) AS maxprice \
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
    ),
    (
        "q12",
        "SELECT bidder, count(*) AS bid_count, window_start, window_end \
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end",
    ),
    (
        "q14",
        "SELECT auction, bidder, 0.908 * price AS price, \
         CASE WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime' \
              WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime' \
              ELSE 'otherTime' END AS bid_time_type, \
         date_time, extra, length(extra) - length(replace(extra, 'c', '')) AS c_counts \
         FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
    ),
    (
        "q15",
        "SELECT to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, \
         count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
         count(DISTINCT bidder) AS total_bidders, count(DISTINCT auction) AS total_auctions \
         FROM bid GROUP BY to_char(date_time, '%Y-%m-%d')",
    ),
    (
        "q17",
        "SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, \
         count(*) FILTER (WHERE price < 10000) AS rank1_bids, min(price) AS min_price, \
         max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price \
         FROM bid GROUP BY auction, to_char(date_time, '%Y-%m-%d')",
    ),
    (
        "q11",
        "SELECT bidder, count(*) AS bid_count, window_start, window_end \
         FROM SESSION(bid, date_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end",
    ),
    (
        "q16",
        "SELECT channel, to_char(date_time, '%Y-%m-%d') AS day, max(to_char(date_time, '%H:%M')) AS minute, \
         count(*) AS total_bids, count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
         count(DISTINCT bidder) AS total_bidders, count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions \
         FROM bid GROUP BY channel, to_char(date_time, '%Y-%m-%d')",
    ),
    (
        "q21",
        "SELECT auction, bidder, price, channel, \
         CASE WHEN lower(channel) = 'apple' THEN '0' WHEN lower(channel) = 'google' THEN '1' \
              WHEN lower(channel) = 'facebook' THEN '2' WHEN lower(channel) = 'baidu' THEN '3' \
              ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] END AS channel_id \
         FROM bid WHERE regexp_like(url, 'channel_id=') OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')",
    ),
    (
        "q22",
        "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, \
         split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bid",
    ),
];

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn exec(session: &mut Session, sql: &str) {
    for stmt in Session::parse(sql).unwrap() {
        let prepared = session
            .prepare(stmt)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        if let Output::Rows(s) = session.execute(&prepared, None).await.unwrap() {
            let _: Vec<_> = s.try_collect().await.unwrap();
        }
    }
}

fn options(events: u64) -> std::collections::BTreeMap<String, String> {
    [
        ("nexmark.table", "bid".to_string()),
        ("events.max", events.to_string()),
        ("events.per.second", "0".to_string()),
        ("nexmark.base.time", "1700000000000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The generator alone: every partition drained in its own task.
async fn generator(events: u64, parallelism: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = vec![];
    for p in 0..parallelism {
        let schema = NexmarkConnector.schema(&options(events), None).unwrap();
        let mut source = NexmarkConnector
            .open(&options(events), &schema, p, parallelism, None)
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut rows = 0usize;
            while let Some(b) = source.next_batch().await.unwrap() {
                rows += b.num_rows();
            }
            rows
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

async fn run_query(sql: &str, events: u64, parallelism: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(NexmarkConnector));
    let mut sinks = SinkRegistry::default();
    sinks.register(Arc::new(BlackholeSink));
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        stores: Default::default(),
        target_partitions: Some(parallelism),
        sources,
        sinks,
        checkpoint_interval: None,
        checkpoint_location: None,
        // Test and bench inputs live in temporary directories.
        file_roots: vec![std::env::temp_dir()],
        memory_limit: None,
        subscriber_backlog: None,
        auth: None,
    })
    .await
    .unwrap();
    let mut session = engine.new_session();
    let o = options(events);
    let with: Vec<String> = o.iter().map(|(k, v)| format!("'{k}' = '{v}'")).collect();
    exec(
        &mut session,
        &format!(
            "CREATE STREAM bid WITH (connector = 'nexmark', {})",
            with.join(", ")
        ),
    )
    .await;
    let started = Instant::now();
    exec(
        &mut session,
        &format!("CREATE SINK out WITH (connector = 'blackhole') AS {sql}"),
    )
    .await;
    let status = engine.wait_for_job("out").await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status.as_deref(), Some("finished"), "{sql}");
    (secs, peak_rss_mib())
}

/// Runs one case in a child process; returns (seconds, peak RSS MiB).
fn child(case: &str, events: u64, parallelism: usize) -> (f64, f64) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .env("NEXMARK_BENCH_CASE", format!("{case}:{events}:{parallelism}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn main() {
    if let Ok(case) = std::env::var("NEXMARK_BENCH_CASE") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let parts: Vec<&str> = case.split(':').collect();
        let (name, events, p) = (parts[0], parts[1].parse().unwrap(), parts[2].parse().unwrap());
        let secs = rt.block_on(async {
            if name == "generator" {
                generator(events, p).await
            } else {
                let sql = QUERIES.iter().find(|(n, _)| *n == name).expect("known query").1;
                run_query(sql, events, p).await.0
            }
        });
        println!("{secs} {}", peak_rss_mib());
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let events: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000_000);
    let only: Vec<&str> = args
        .iter()
        .filter(|a| a.parse::<u64>().is_err())
        .map(String::as_str)
        .collect();
    println!(
        "Nexmark, {events} events (combined stream; bids are 92%), blackhole sink, {} cores\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("| query | P=1 events/s | P=2 events/s | P=2 / P=1 | peak RSS P=1 | peak RSS P=2 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let names = std::iter::once("generator").chain(QUERIES.iter().map(|(n, _)| *n));
    for name in names {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let (t1, m1) = child(name, events, 1);
        let (t2, m2) = child(name, events, 2);
        println!(
            "| {} | {:.2}M | {:.2}M | {:.2} | {m1:.0} MiB | {m2:.0} MiB |",
            if name == "generator" {
                "generator alone"
            } else {
                name
            },
            events as f64 / t1 / 1e6,
            events as f64 / t2 / 1e6,
            t1 / t2
        );
    }
}

//! What checkpoints cost: Nexmark q5 and q7 throughput (bounded generator at
//! full speed, blackhole sink, parallelism 2) with no checkpoints, every
//! 10 s and every 1 s, side by side in one run; then an updating aggregate
//! with a large state (q17 shape: one group per auction and day) to show
//! checkpoint duration and size against state size, and how long restoring
//! that state takes when the engine opens again.
//!
//! ```text
//! cargo bench -p sluice-connectors --bench checkpoints                # 60M events
//! cargo bench -p sluice-connectors --bench checkpoints -- 20000000    # fewer
//! STATE_CASES=100000:5 cargo bench -p sluice-connectors --bench checkpoints
//! ```
//!
//! Each case runs in its own process (the bench re-executes itself).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sluice_connectors::filesystem::BlackholeSink;
use sluice_connectors::nexmark::NexmarkConnector;
use sluice_engine::datafusion::arrow::array::{Array, Int64Array, StringArray};
use sluice_engine::datafusion::arrow::compute::cast;
use sluice_engine::datafusion::arrow::datatypes::DataType;
use sluice_engine::{Engine, EngineConfig, Output, Session, SinkRegistry, SourceRegistry};

const Q5: &str = "SELECT auction, count(*) AS num, window_start, window_end \
     FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end";
const Q7: &str = "SELECT window_start, window_end, max(price) AS maxprice \
     FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end";
const Q17: &str = "SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, \
     min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price \
     FROM bid GROUP BY auction, to_char(date_time, '%Y-%m-%d')";

const PARALLELISM: usize = 2;

async fn exec(session: &mut Session, sql: &str) -> Vec<sluice_engine::datafusion::arrow::array::RecordBatch> {
    let mut out = vec![];
    for stmt in Session::parse(sql).unwrap() {
        let prepared = session.prepare(stmt).await.unwrap();
        if let Output::Rows(s) = session.execute(&prepared, None).await.unwrap() {
            out.extend(s.try_collect::<Vec<_>>().await.unwrap());
        }
    }
    out
}

async fn open(dir: &std::path::Path, interval: Option<Duration>) -> Engine {
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(NexmarkConnector));
    let mut sinks = SinkRegistry::default();
    sinks.register(Arc::new(BlackholeSink));
    Engine::open(EngineConfig {
        data_dir: dir.to_path_buf(),
        stores: Default::default(),
        target_partitions: Some(PARALLELISM),
        sources,
        sinks,
        checkpoint_interval: interval,
        checkpoint_location: None,
        // Test and bench inputs live in temporary directories.
        file_roots: vec![std::env::temp_dir()],
        memory_limit: None,
        subscriber_backlog: None,
        auth: None,
    })
    .await
    .unwrap()
}

fn stream_sql(events: u64, rate: u64) -> String {
    format!(
        "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.max' = '{events}', \
         'events.per.second' = '{rate}', 'nexmark.base.time' = '1700000000000')"
    )
}

/// (epoch, status, duration ms, bytes) of the job's checkpoints.
async fn checkpoints(session: &mut Session) -> Vec<(i64, String, i64, i64)> {
    let mut out = vec![];
    for b in exec(session, "SHOW CHECKPOINTS").await {
        let col = |i: usize| cast(b.column(i), &DataType::Utf8).unwrap();
        let (epoch, status, duration, bytes) = (col(1), col(2), col(4), col(5));
        let s = |a: &Arc<dyn Array>, r: usize| {
            a.as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(r)
                .to_string()
        };
        for r in 0..b.num_rows() {
            out.push((
                s(&epoch, r).parse().unwrap_or(0),
                s(&status, r),
                s(&duration, r).parse().unwrap_or(0),
                s(&bytes, r).parse().unwrap_or(0),
            ));
        }
    }
    out
}

/// Seconds to run `sql` over `events` bid events, and the checkpoints taken.
async fn throughput(sql: &str, events: u64, interval: Option<Duration>) -> (f64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), interval).await;
    let mut session = engine.new_session();
    exec(&mut session, &stream_sql(events, 0)).await;
    let started = Instant::now();
    exec(
        &mut session,
        &format!("CREATE SINK out WITH (connector = 'blackhole') AS {sql}"),
    )
    .await;
    let status = engine.wait_for_job("out").await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status.as_deref(), Some("finished"), "{sql}");
    let taken = checkpoints(&mut session)
        .await
        .iter()
        .filter(|c| c.1 == "completed")
        .count();
    (secs, taken)
}

/// The q17 shape at a fixed rate for `secs`, checkpointing every second:
/// (state rows, last checkpoint's ms and bytes), then the time to open the
/// engine again and restore that checkpoint.
async fn state_size(events_per_sec: u64, secs: u64) -> (i64, i64, i64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (rows, duration, bytes) = {
        let engine = open(dir.path(), Some(Duration::from_secs(1))).await;
        let mut session = engine.new_session();
        exec(&mut session, &stream_sql(events_per_sec * 3600, events_per_sec)).await;
        exec(
            &mut session,
            &format!("CREATE SINK out WITH (connector = 'blackhole') AS {Q17}"),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let last = checkpoints(&mut session)
            .await
            .into_iter()
            .filter(|c| c.1 == "completed")
            .max_by_key(|c| c.0)
            .expect("a completed checkpoint");
        let mut rows = 0;
        for b in exec(&mut session, "SHOW JOBS").await {
            let col = cast(b.column(9), &DataType::Int64).unwrap();
            let col = col.as_any().downcast_ref::<Int64Array>().unwrap();
            rows += col.iter().flatten().sum::<i64>();
        }
        drop(session);
        drop(engine);
        (rows, last.2, last.3)
    };
    // Give the dropped job's tasks a moment to stop writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let engine = open(dir.path(), Some(Duration::from_secs(3600))).await;
    let mut session = engine.new_session();
    // Restored: the job's first checkpoint row says so once its state is in.
    loop {
        if checkpoints(&mut session).await.iter().any(|c| c.1 == "restored") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restore = started.elapsed().as_secs_f64();
    (rows, duration, bytes, restore)
}

fn child(case: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .env("CHECKPOINT_BENCH_CASE", case)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn main() {
    if let Ok(case) = std::env::var("CHECKPOINT_BENCH_CASE") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let parts: Vec<&str> = case.split(':').collect();
        let line = rt.block_on(async {
            match parts[0] {
                "state" => {
                    let (rows, ms, bytes, restore) =
                        state_size(parts[1].parse().unwrap(), parts[2].parse().unwrap()).await;
                    format!("{rows} {ms} {bytes} {restore}")
                }
                q => {
                    let sql = if q == "q5" { Q5 } else { Q7 };
                    let interval = match parts[2] {
                        "off" => None,
                        s => Some(Duration::from_millis(s.parse().unwrap())),
                    };
                    let (secs, taken) = throughput(sql, parts[1].parse().unwrap(), interval).await;
                    format!("{secs} {taken}")
                }
            }
        });
        println!("{line}");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let events: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(60_000_000);
    println!(
        "Checkpoint overhead, {events} events, blackhole sink, parallelism {PARALLELISM}, {} cores\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "| query | off events/s | 10 s events/s | 10 s / off | 1 s events/s | 1 s / off | checkpoints (10 s, 1 s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for q in ["q5", "q7"] {
        let run = |interval: &str| -> (f64, usize) {
            let out = child(&format!("{q}:{events}:{interval}"));
            let mut it = out.split_whitespace();
            (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().parse().unwrap(),
            )
        };
        // Interleaved so that drift of the machine touches all three alike.
        let (off, _) = run("off");
        let (ten, n10) = run("10000");
        let (one, n1) = run("1000");
        let rate = |s: f64| events as f64 / s / 1e6;
        println!(
            "| {q} | {:.2}M | {:.2}M | {:.3} | {:.2}M | {:.3} | {n10}, {n1} |",
            rate(off),
            rate(ten),
            rate(ten) / rate(off),
            rate(one),
            rate(one) / rate(off)
        );
    }
    println!("\nState size (q17 shape, updating GROUP BY auction, day; checkpoint every 1 s):\n");
    println!("| input | state rows | checkpoint ms | checkpoint MiB | restore at open (s) |");
    println!("|---|---:|---:|---:|---:|");
    // `STATE_CASES=rate:secs,...` (default: about 100 MB and 1 GB of state
    // on a release build here).
    let cases: Vec<(u64, u64)> = std::env::var("STATE_CASES")
        .unwrap_or_else(|_| "1000000:25,1500000:170".into())
        .split(',')
        .filter_map(|c| {
            let (r, s) = c.split_once(':')?;
            Some((r.trim().parse().ok()?, s.trim().parse().ok()?))
        })
        .collect();
    for (rate, secs) in cases {
        let out = child(&format!("state:{rate}:{secs}"));
        let f: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
        println!(
            "| {rate}/s for {secs} s | {} | {} | {:.1} | {:.2} |",
            f[0],
            f[1],
            f[2] / (1 << 20) as f64,
            f[3]
        );
    }
}

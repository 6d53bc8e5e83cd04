//! Kafka JSON ingest: a pre-filled multi-partition topic read by Sluice's
//! kafka source into a count(*) view, a blackhole sink and a Parquet file
//! sink, side by side with a bare librdkafka consumer that only counts
//! bytes (the ceiling). Prints a markdown table.
//!
//! Rates are measured over the flow of records, the same way for every
//! reader: from the first record seen to the last (so connecting and
//! planning are left out of all of them).
//!
//! ```text
//! eval "$(scripts/infra/kafka.sh start)"
//! cargo bench -p sluice-connectors --bench kafka            # 1M records, 4 partitions, 3 rounds
//! cargo bench -p sluice-connectors --bench kafka -- 500000
//! cargo bench -p sluice-connectors --bench kafka -- 2000000 reps=5 blackhole p1 source
//! ```
//!
//! Arguments: a record count, `reps=N` rounds (the median is reported),
//! `count` / `blackhole` / `parquet` and `p1` / `p2` to narrow the runs,
//! `source` to also time the kafka source alone (no engine).
//! `SLUICE_BENCH_PROPS='k=v,...'` adds Kafka properties to Sluice's consumers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_connectors::kafka::KafkaConnector;
use sluice_engine::datafusion::arrow::array::Int64Array;
use sluice_engine::{Engine, EngineConfig, Output, Session, SinkRegistry, SourceRegistry};

const PARTITIONS: i32 = 4;

fn record(i: u64) -> String {
    format!(
        r#"{{"user_id": {}, "page": "/product/{}", "ts": {}, "referrer": "https://example.com/{}"}}"#,
        i % 100_000,
        i % 997,
        1_763_805_600_000 + i,
        i % 13
    )
}

async fn fill(brokers: &str, topic: &str, n: u64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    admin.create_topics(&[t], &AdminOptions::new()).await.unwrap();
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()
        .unwrap();
    for i in 0..n {
        let payload = record(i);
        let rec = BaseRecord::<(), String>::to(topic)
            .payload(&payload)
            .partition((i % PARTITIONS as u64) as i32);
        sluice_connectors::kafka::send_waiting(&producer, rec)
            .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The ceiling: one consumer over all partitions, counting bytes, until
/// `n` records or 5 s without one. Returns (seconds, records, bytes).
fn bare(brokers: &str, topic: &str, n: u64) -> (f64, u64, u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        // As Sluice's consumers: without it librdkafka idles up to a second
        // whenever its queue is full (both readers were bimodal before).
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut first = None;
    let mut last = Instant::now();
    while count < n && last.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            count += 1;
            bytes += m.payload().map(|p| p.len() as u64).unwrap_or(0);
            last = Instant::now();
        }
    }
    let secs = last.duration_since(first.unwrap_or(last)).as_secs_f64();
    // As if the flow (after the first record) had run at this rate for all.
    let secs = secs * count as f64 / count.saturating_sub(1).max(1) as f64;
    (secs, count, bytes)
}

/// Where Sluice's rows go in a run.
#[derive(Clone, Copy)]
enum Target {
    CountView,
    Blackhole,
    Parquet,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::CountView => "count(*) view",
            Target::Blackhole => "blackhole sink",
            Target::Parquet => "Parquet file sink",
        }
    }
}

fn int(batches: &[sluice_engine::datafusion::arrow::array::RecordBatch], column: &str) -> Vec<i64> {
    let mut out = vec![];
    for b in batches {
        let c = b.column(b.schema().index_of(column).unwrap());
        let c = sluice_engine::datafusion::arrow::compute::cast(
            c,
            &sluice_engine::datafusion::arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        out.extend(
            c.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .iter()
                .map(|v| v.unwrap_or(0)),
        );
    }
    out
}

/// Rows the target has taken so far.
async fn progress(s: &mut Session, target: Target) -> u64 {
    match target {
        Target::CountView => {
            let rows = exec(s, "SELECT n FROM c").await;
            int(&rows, "n").first().copied().unwrap_or(0) as u64
        }
        Target::Blackhole | Target::Parquet => {
            // Rows the query's last operator handed to the sink.
            let jobs = exec(s, "SHOW JOBS").await;
            let ids = int(&jobs, "operator_id");
            let rows = int(&jobs, "rows_out");
            ids.iter()
                .zip(rows)
                .filter(|(id, _)| **id == 0)
                .map(|(_, r)| r as u64)
                .sum()
        }
    }
}

async fn exec(s: &mut Session, sql: &str) -> Vec<sluice_engine::datafusion::arrow::array::RecordBatch> {
    let mut out = vec![];
    for stmt in Session::parse(sql).unwrap() {
        let p = s.prepare(stmt).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        if let Output::Rows(r) = s.execute(&p, None).await.unwrap() {
            out.extend(r.try_collect::<Vec<_>>().await.unwrap());
        }
    }
    out
}

/// CPU seconds this process has used (user + system, all threads).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses).
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, in 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// Seconds for `n` records, and the CPU seconds the process spent meanwhile
/// (from CREATE to the last record: setup included, so on the high side).
async fn sluice(brokers: &str, topic: &str, n: u64, parallelism: usize, target: Target) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(KafkaConnector::default()));
    let mut sinks = SinkRegistry::default();
    sinks.register(Arc::new(sluice_connectors::filesystem::FileSystemSink));
    sinks.register(Arc::new(sluice_connectors::filesystem::BlackholeSink));
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
    let mut s = engine.new_session();
    // SLUICE_BENCH_PROPS='fetch.wait.max.ms=10,...': more properties for
    // Sluice's consumers.
    let extra: String = std::env::var("SLUICE_BENCH_PROPS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| format!(", 'properties.{k}' = '{v}'"))
        .collect();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3), referrer TEXT, \
             WATERMARK FOR ts AS ts) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{brokers}', format = 'json'{extra})"
        ),
    )
    .await;
    let out = dir.path().join("out");
    let sql = match target {
        Target::CountView => "CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n FROM clicks".to_string(),
        Target::Blackhole => {
            "CREATE SINK b WITH (connector = 'blackhole') AS SELECT * FROM clicks".to_string()
        }
        Target::Parquet => format!(
            "CREATE SINK p WITH (connector = 'filesystem', path = '{}', format = 'parquet') \
             AS SELECT * FROM clicks",
            out.display()
        ),
    };
    let cpu0 = cpu_seconds();
    exec(&mut s, &sql).await;
    // From the first rows seen to the last.
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let got = progress(&mut s, target).await;
        if got > 0 && first.is_none() {
            first = Some((Instant::now(), got));
        }
        if got >= n {
            let (t0, c0) = first.expect("rows seen");
            let secs = t0.elapsed().as_secs_f64();
            // As if the flow had run at this rate for all n records.
            return (secs * n as f64 / (n - c0).max(1) as f64, cpu_seconds() - cpu0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sluice's decoding alone, on one core: the same records, in memory, in
/// batches of 4096 through the kafka source's decoder.
fn decode_only(n: u64) -> f64 {
    use sluice_connectors::format::{Format, RecordDecoder};
    use sluice_engine::datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, true),
        Field::new("page", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("referrer", DataType::Utf8, true),
    ]));
    let options =
        std::collections::BTreeMap::from([("json.timestamp-format".to_string(), "epoch-millis".to_string())]);
    let decoder = RecordDecoder::new(Format::parse(&options, &["json"], false).unwrap(), schema).unwrap();
    let records: Vec<String> = (0..n).map(record).collect();
    let started = Instant::now();
    let mut rows = 0;
    for chunk in records.chunks(4096) {
        let slices: Vec<&[u8]> = chunk.iter().map(|r| r.as_bytes()).collect();
        let (batch, _) = decoder.decode(&slices, |_, e| panic!("{e}")).unwrap();
        rows += batch.num_rows();
    }
    assert_eq!(rows as u64, n);
    started.elapsed().as_secs_f64()
}

/// The kafka source alone, without the engine: one task's `next_batch`
/// until every record is in.
async fn source_only(brokers: &str, topic: &str, n: u64) -> f64 {
    use sluice_engine::SourceConnector;
    use sluice_engine::datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, true),
        Field::new("page", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("referrer", DataType::Utf8, true),
    ]));
    let options = std::collections::BTreeMap::from([
        ("topic".to_string(), topic.to_string()),
        ("properties.bootstrap.servers".to_string(), brokers.to_string()),
    ]);
    let mut source = KafkaConnector::default()
        .open(&options, &schema, 0, 1, None)
        .unwrap();
    let mut got = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    while got < n {
        let b = source.next_batch().await.unwrap().unwrap();
        got += b.num_rows() as u64;
        first.get_or_insert((Instant::now(), got));
    }
    let (t0, c0) = first.unwrap();
    t0.elapsed().as_secs_f64() * n as f64 / (n - c0).max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let brokers = std::env::var("SLUICE_TEST_KAFKA_BROKERS")
        .expect("start a broker first: eval \"$(scripts/infra/kafka.sh start)\"");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let reps: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("reps=").and_then(|r| r.parse().ok()))
        .unwrap_or(3);
    // `count`, `blackhole`, `parquet`, `p1`, `p2` among the arguments
    // narrow the runs (for profiling one of them).
    let picked = |name: &str, all: &[&str]| {
        !all.iter().any(|a| args.iter().any(|x| x == a)) || args.iter().any(|x| x == name)
    };
    let mut runs = vec![];
    for (name, target) in [
        ("count", Target::CountView),
        ("blackhole", Target::Blackhole),
        ("parquet", Target::Parquet),
    ] {
        for p in [1, 2] {
            if picked(name, &["count", "blackhole", "parquet"]) && picked(&format!("p{p}"), &["p1", "p2"]) {
                runs.push((target, p));
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = format!("bench-{}", std::process::id());
    let filled = Instant::now();
    rt.block_on(fill(&brokers, &topic, n));
    println!(
        "Kafka JSON ingest, {n} records over {PARTITIONS} partitions (filled in {:.1}s), {} cores, \
         median of {reps} rounds (each round: the bare consumer, then every Sluice run)\n",
        filled.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    // Rounds: every reader once per round, so the machine's drift hits all.
    let mut bare_times = vec![];
    let mut times: Vec<Vec<f64>> = vec![vec![]; runs.len()];
    let mut cpus: Vec<Vec<f64>> = vec![vec![]; runs.len()];
    let mut ratios: Vec<Vec<f64>> = vec![vec![]; runs.len()];
    let mut stored = n;
    let mut bytes = 0;
    for _ in 0..reps {
        let (t_bare, got, b) = bare(&brokers, &topic, n);
        stored = got;
        bytes = b;
        bare_times.push(t_bare);
        for (k, (target, p)) in runs.iter().enumerate() {
            let (t, cpu) = rt.block_on(sluice(&brokers, &topic, got, *p, *target));
            times[k].push(t);
            cpus[k].push(cpu);
            ratios[k].push(t / t_bare);
        }
    }
    if stored < n {
        println!("(the broker returned {stored} of the {n} records produced; measuring those)\n");
    }
    let n = stored;
    let mb = bytes as f64 / 1e6;
    println!("| reader | records/s | MB/s | vs bare consumer | records per CPU-second |");
    println!("|---|---:|---:|---:|---:|");
    let t_bare = median(bare_times);
    println!(
        "| bare librdkafka consumer (count bytes) | {:.0} | {:.1} | 1.00 | |",
        n as f64 / t_bare,
        mb / t_bare
    );
    for (k, (target, p)) in runs.iter().enumerate() {
        let t = median(times[k].clone());
        println!(
            "| Sluice kafka source, JSON decoded, {}, P={p} | {:.0} | {:.1} | {:.2}x slower | {:.0} |",
            target.name(),
            n as f64 / t,
            mb / t,
            median(ratios[k].clone()),
            n as f64 / median(cpus[k].clone())
        );
    }
    if args.iter().any(|a| a == "source") {
        let t = rt.block_on(source_only(&brokers, &topic, n));
        println!(
            "\nThe kafka source alone (one task, no engine): {:.0} records/s",
            n as f64 / t
        );
    }
    let t = decode_only(n);
    println!(
        "\nSluice's JSON decoding alone (in memory, one core, batches of 4096): {:.0} records/s",
        n as f64 / t
    );
}

//! Kafka JSON ingest: a pre-filled multi-partition topic read by Sluice's
//! kafka source into a count(*) view, side by side with a bare librdkafka
//! consumer that only counts bytes (the ceiling). Prints a markdown table.
//!
//! ```text
//! eval "$(scripts/infra/kafka.sh start)"
//! cargo bench -p sluice-connectors --bench kafka            # 2M records, 4 partitions
//! cargo bench -p sluice-connectors --bench kafka -- 500000
//! ```

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
        let mut rec = BaseRecord::<(), String>::to(topic)
            .payload(&payload)
            .partition((i % PARTITIONS as u64) as i32);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    // librdkafka's queue is full: let it deliver, then retry.
                    rec = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
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
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut last = Instant::now();
    while count < n && last.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            count += 1;
            bytes += m.payload().map(|p| p.len() as u64).unwrap_or(0);
            last = Instant::now();
        }
    }
    let secs = if count < n {
        last.duration_since(started).as_secs_f64()
    } else {
        started.elapsed().as_secs_f64()
    };
    (secs, count, bytes)
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

async fn sluice(brokers: &str, topic: &str, n: u64, parallelism: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(KafkaConnector::default()));
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        stores: Default::default(),
        target_partitions: Some(parallelism),
        sources,
        sinks: SinkRegistry::default(),
    })
    .await
    .unwrap();
    let mut s = engine.new_session();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3), referrer TEXT, \
             WATERMARK FOR ts AS ts) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{brokers}', format = 'json')"
        ),
    )
    .await;
    let started = Instant::now();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n FROM clicks",
    )
    .await;
    loop {
        let rows = exec(&mut s, "SELECT n FROM c").await;
        let got = rows
            .first()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0) as u64
            })
            .unwrap_or(0);
        if got >= n {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let brokers = std::env::var("SLUICE_TEST_KAFKA_BROKERS")
        .expect("start a broker first: eval \"$(scripts/infra/kafka.sh start)\"");
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = format!("bench-{}", std::process::id());
    let filled = Instant::now();
    rt.block_on(fill(&brokers, &topic, n));
    println!(
        "Kafka JSON ingest, {n} records over {PARTITIONS} partitions (filled in {:.1}s), {} cores\n",
        filled.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let (t_bare, stored, bytes) = bare(&brokers, &topic, n);
    if stored < n {
        println!("(the broker returned {stored} of the {n} records produced; measuring those)\n");
    }
    let n = stored;
    println!("| reader | records/s | MB/s | vs bare consumer |");
    println!("|---|---:|---:|---:|");
    let mb = bytes as f64 / 1e6;
    println!(
        "| bare librdkafka consumer (count bytes) | {:.0} | {:.1} | 1.00 |",
        n as f64 / t_bare,
        mb / t_bare
    );
    for p in [1, 2] {
        let t = rt.block_on(sluice(&brokers, &topic, n, p));
        println!(
            "| Sluice kafka source, JSON decoded, count(*) view, P={p} | {:.0} | {:.1} | {:.2}x slower |",
            n as f64 / t,
            mb / t,
            t / t_bare
        );
    }
}

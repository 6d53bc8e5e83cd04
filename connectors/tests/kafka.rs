//! The kafka source against a real Kafka-protocol broker (tansu, started by
//! scripts/test.sh; `SLUICE_TEST_KAFKA_BROKERS` names it). Without it these
//! tests fail saying so; they are never silently skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_connectors::kafka::KafkaConnector;
use sluice_engine::datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use sluice_engine::datafusion::arrow::compute::cast;
use sluice_engine::datafusion::arrow::datatypes::DataType;
use sluice_engine::{Engine, Session, SinkRegistry, SourceRegistry};

mod common;
use common::{bad_rows, bad_rows_of, counts, exec, open_engine, open_engine_checkpointing};

fn brokers() -> String {
    std::env::var("SLUICE_TEST_KAFKA_BROKERS")
        .expect("needs a Kafka broker: run ./scripts/test.sh, or set SLUICE_TEST_KAFKA_BROKERS")
}

async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&brokers(), name, partitions).await
}

async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

async fn produce(topic: &str, records: &[(i32, Vec<u8>)]) {
    produce_on(&brokers(), topic, records).await
}

async fn produce_on(brokers: &str, topic: &str, records: &[(i32, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    for (partition, payload) in records {
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(*partition)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

/// Records with keys and timestamps (ms); a None value is a tombstone.
async fn produce_keyed(topic: &str, records: &[(i32, &str, Option<String>, i64)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    for (partition, key, value, ts) in records {
        let mut record = FutureRecord::<str, str>::to(topic)
            .partition(*partition)
            .key(*key)
            .timestamp(*ts);
        if let Some(v) = value {
            record = record.payload(v.as_str());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

/// An engine with the Kafka source and sink.
async fn kafka_engine(
    dir: &std::path::Path,
    parallelism: usize,
    checkpoint_interval: Option<Duration>,
) -> (Engine, Session) {
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(KafkaConnector::default()));
    let mut sinks = SinkRegistry::default();
    sinks.register(Arc::new(sluice_connectors::kafka::KafkaSink));
    open_engine_checkpointing(dir, parallelism, sources, sinks, checkpoint_interval).await
}

async fn engine(dir: &std::path::Path, parallelism: usize) -> (Engine, Session) {
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(KafkaConnector::default()));
    open_engine(dir, parallelism, sources, SinkRegistry::default()).await
}

const BASE_MS: i64 = 1_763_805_600_000; // 2025-11-22T10:00:00Z

fn click(i: i64) -> Vec<u8> {
    format!(
        r#"{{"user_id": {}, "page": "p{}", "ts": {}, "ignored_field": true}}"#,
        i % 50,
        i % 7,
        BASE_MS + i * 10
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_across_partitions_window_like_the_batch_answer() {
    let topic = format!("clicks-{}", std::process::id());
    create_topic(&topic, 3).await;
    let n = 3000i64;
    let mut records: Vec<(i32, Vec<u8>)> = (0..n).map(|i| ((i % 3) as i32, click(i))).collect();
    // Malformed records among the good ones: truncated JSON, a wrong type,
    // invalid UTF-8, not an object.
    let bad: Vec<Vec<u8>> = vec![
        br#"{"user_id": 1, "page": "p1", "ts": 17"#.to_vec(),
        br#"{"user_id": "one", "page": "p1", "ts": 1}"#.to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        b"42".to_vec(),
    ];
    for (j, b) in bad.iter().enumerate() {
        records.insert(500 * (j + 1), ((j % 3) as i32, b.clone()));
    }
    // One late-enough record per partition closes every window.
    for p in 0..3 {
        records.push((p, click(n + 1_000_000)));
    }
    produce(&topic, &records).await;

    // What the windows must hold, computed here from the records sent.
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..n {
        let window = (BASE_MS + i * 10).div_euclid(1000) * 1000;
        *want.entry(format!("p{} {window}", i % 7)).or_default() += 1;
    }

    for parallelism in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = engine(dir.path(), parallelism).await;
        exec(
            &mut s,
            &format!(
                "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts BIGINT, \
                   WATERMARK FOR ts AS ts) WITH (connector = 'kafka', topic = '{topic}', \
                   'properties.bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest-offset', \
                   format = 'json', 'bad_records' = 'skip')",
                brokers()
            ),
        )
        .await
        .expect_err("a BIGINT column can't be the event time");
        exec(
            &mut s,
            &format!(
                "CREATE STREAM raw (user_id BIGINT, page TEXT, ts BIGINT) WITH (connector = 'kafka', \
                   topic = '{topic}', 'properties.bootstrap.servers' = '{}', format = 'json', 'bad_records' = 'skip')",
                brokers()
            ),
        )
        .await
        .unwrap();
        exec(
            &mut s,
            "CREATE MATERIALIZED VIEW windows AS \
             SELECT page || ' ' || CAST(window_start AS BIGINT) AS k, count(*) AS n FROM TUMBLE( \
               (SELECT page, to_timestamp_millis(ts) AS t FROM raw), t, INTERVAL '1' SECOND) \
             GROUP BY page, window_start",
        )
        .await
        .expect_err("windows apply to declared streams");
        // The event time as a declared TIMESTAMP column: JSON numbers are
        // read as milliseconds for TIMESTAMP(3).
        exec(
            &mut s,
            &format!(
                "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3), \
                   WATERMARK FOR ts AS ts - INTERVAL '1 second') WITH (connector = 'kafka', topic = '{topic}', \
                   'properties.bootstrap.servers' = '{}', format = 'json', 'bad_records' = 'skip')",
                brokers()
            ),
        )
        .await
        .unwrap();
        exec(
            &mut s,
            "CREATE MATERIALIZED VIEW per_window AS \
             SELECT page || ' ' || CAST(CAST(window_start AS BIGINT) AS TEXT) AS k, count(*) AS n \
             FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) WHERE user_id >= 0 GROUP BY page, window_start",
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            let got = counts(&exec(&mut s, "SELECT k, n FROM per_window").await.unwrap());
            if got == want || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(got.len(), want.len(), "windows at parallelism {parallelism}");
        assert_eq!(got, want, "parallelism {parallelism}");
        // Every malformed record was counted, none crashed the job.
        let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
        let bad_rows: i64 = jobs
            .iter()
            .map(|b| {
                let col = b.schema().index_of("bad_rows").unwrap();
                let c = b.column(col).as_any().downcast_ref::<Int64Array>().unwrap();
                c.values().iter().sum::<i64>()
            })
            .sum();
        assert_eq!(
            bad_rows,
            bad.len() as i64,
            "bad rows at parallelism {parallelism}"
        );
        drop(engine);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_fail_the_job_alone_and_missing_topics_are_errors() {
    let topic = format!("mixed-{}", std::process::id());
    create_topic(&topic, 1).await;
    produce(
        &topic,
        &[(0, click(1)), (0, b"{not json".to_vec()), (0, click(2))],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = engine(dir.path(), 1).await;
    let started = Instant::now();
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM nope (a BIGINT) WITH (connector = 'kafka', topic = 'no-such-topic-{}', \
             'properties.bootstrap.servers' = '{}')",
            std::process::id(),
            brokers()
        ),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-topic"), "{msg}");
    let err = exec(
        &mut s,
        "CREATE STREAM nobroker (a BIGINT) WITH (connector = 'kafka', topic = 't', \
         'properties.bootstrap.servers' = '127.0.0.1:1')",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("did not describe topic"), "{err}");

    exec(
        &mut s,
        &format!(
            "CREATE STREAM strict (user_id BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{}', format = 'json')",
            brokers()
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW strict_pages AS SELECT page FROM strict",
    )
    .await
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), engine.wait_for_job("strict_pages"))
        .await
        .expect("the job did not fail")
        .unwrap();
    assert!(status.starts_with("failed: "), "{status}");
    assert!(
        status.contains("partition 0 offset 1"),
        "the error names the record: {status}"
    );
    assert!(
        status.contains("'bad_records' = 'skip'"),
        "and what to do: {status}"
    );
    // The session and engine carry on.
    assert_eq!(exec(&mut s, "SELECT 1").await.unwrap()[0].num_rows(), 1);
}

/// Reads a topic from the beginning until `done` says the records are all
/// there (or 30 s pass): (key, value) pairs, tombstones as `None`.
async fn read_topic(
    topic: &str,
    partitions: i32,
    done: impl Fn(&[(String, Option<String>)]) -> bool,
) -> Vec<(String, Option<String>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        // Offset 0, not `Beginning`: the test broker answers "earliest" with
        // the batch written first, which concurrent producers can make a
        // later one (see `read_all` in server/tests/exactly_once.rs).
        tpl.add_partition_offset(topic, p, Offset::Offset(0)).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            )),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The partition count of `topic`, from the broker's metadata.
fn partitions_of(topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_missing_topic_is_created_with_the_partitions_asked_for() {
    let id = std::process::id();
    let (src, out) = (format!("cs-{id}"), format!("created-{id}"));
    create_topic(&src, 1).await;
    let n = 100i64;
    produce(&src, &(0..n).map(|i| (0, click(i))).collect::<Vec<_>>()).await;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = kafka_engine(dir.path(), 1, None).await;
    let b = brokers();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT) \
             WITH (connector = 'kafka', topic = '{src}', 'properties.bootstrap.servers' = '{b}')"
        ),
    )
    .await
    .unwrap();
    let err = exec(
        &mut s,
        &format!(
            "CREATE SINK bad WITH (connector = 'kafka', topic = '{out}', 'properties.bootstrap.servers' = '{b}', \
             'topic.partitions' = '0') AS SELECT user_id, page FROM clicks"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("'topic.partitions' must be"), "{err}");
    exec(
        &mut s,
        &format!(
            "CREATE SINK copied WITH (connector = 'kafka', topic = '{out}', 'properties.bootstrap.servers' = '{b}', \
             'topic.partitions' = '3') AS SELECT user_id, page FROM clicks"
        ),
    )
    .await
    .unwrap();
    assert_eq!(partitions_of(&out), 3);
    let rows = read_topic(&out, 3, |r| r.len() >= n as usize).await;
    let mut users: Vec<i64> = rows
        .iter()
        .map(|(_, v)| {
            let v: serde_json::Value = serde_json::from_str(v.as_deref().unwrap()).unwrap();
            v["user_id"].as_i64().unwrap()
        })
        .collect();
    users.sort();
    let mut want: Vec<i64> = (0..n).map(|i| i % 50).collect();
    want.sort();
    assert_eq!(users, want, "every row once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sinks_append_windows_and_upsert_updating_results() {
    let id = std::process::id();
    let (src, windows_topic, totals_topic) = (format!("s-{id}"), format!("w-{id}"), format!("t-{id}"));
    create_topic(&src, 2).await;
    create_topic(&windows_topic, 1).await;
    create_topic(&totals_topic, 1).await;
    let changes_topic = format!("d-{id}");
    create_topic(&changes_topic, 1).await;
    let n = 1000i64;
    let mut records: Vec<(i32, Vec<u8>)> = (0..n).map(|i| ((i % 2) as i32, click(i))).collect();
    for p in 0..2 {
        records.push((p, click(n + 1_000_000)));
    }
    produce(&src, &records).await;
    let mut want_totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_windows = std::collections::BTreeSet::new();
    for i in 0..n {
        *want_totals.entry(format!("p{}", i % 7)).or_default() += 1;
        want_windows.insert((format!("p{}", i % 7), (BASE_MS + i * 10).div_euclid(1000)));
    }
    // The far-future records count too, but close no window of theirs.
    *want_totals
        .entry(format!("p{}", (n + 1_000_000) % 7))
        .or_default() += 2;

    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = kafka_engine(dir.path(), 2, None).await;
    let b = brokers();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) \
             WITH (connector = 'kafka', topic = '{src}', 'properties.bootstrap.servers' = '{b}')"
        ),
    )
    .await
    .unwrap();
    let err = exec(
        &mut s,
        &format!(
            "CREATE SINK bad WITH (connector = 'kafka', topic = '{totals_topic}', 'properties.bootstrap.servers' = '{b}') \
             AS SELECT page, count(*) AS views FROM clicks GROUP BY page"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("'sink.mode' = 'upsert'"), "{err}");
    exec(
        &mut s,
        &format!(
            "CREATE SINK windows WITH (connector = 'kafka', topic = '{windows_topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'json') AS \
             SELECT page, CAST(window_start AS BIGINT) / 1000 AS second, count(*) AS views \
             FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY page, window_start"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        &format!(
            "CREATE SINK totals WITH (connector = 'kafka', topic = '{totals_topic}', \
             'properties.bootstrap.servers' = '{b}', 'sink.mode' = 'upsert', key = 'page') AS \
             SELECT page, count(*) AS views FROM clicks GROUP BY page"
        ),
    )
    .await
    .unwrap();

    // Append: one record per closed window, the row as JSON.
    let windows = read_topic(&windows_topic, 1, |r| r.len() >= want_windows.len()).await;
    let got: std::collections::BTreeSet<(String, i64)> = windows
        .iter()
        .map(|(_, v)| {
            let v: serde_json::Value = serde_json::from_str(v.as_deref().unwrap()).unwrap();
            (
                v["page"].as_str().unwrap().to_string(),
                v["second"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(windows.len(), want_windows.len(), "one record per window");
    assert_eq!(got, want_windows);

    // Upsert: the last record per key is the final count.
    let final_of = |records: &[(String, Option<String>)]| {
        let mut latest: BTreeMap<String, i64> = BTreeMap::new();
        for (k, v) in records {
            match v {
                Some(v) => {
                    let v: serde_json::Value = serde_json::from_str(v).unwrap();
                    latest.insert(k.clone(), v["views"].as_i64().unwrap());
                }
                None => {
                    latest.remove(k);
                }
            }
        }
        latest
    };
    let totals = read_topic(&totals_topic, 1, |r| final_of(r) == want_totals).await;
    assert_eq!(final_of(&totals), want_totals);

    // Debezium envelopes of the same updating result: replaying c/u/d
    // gives the final counts, and counts that changed came as updates.
    exec(
        &mut s,
        &format!(
            "CREATE SINK changes WITH (connector = 'kafka', topic = '{changes_topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'debezium-json', key = 'page') AS \
             SELECT page, count(*) AS views FROM clicks GROUP BY page"
        ),
    )
    .await
    .unwrap();
    // An envelope whose "before" is not the current row is an error that
    // names every record of that key, in topic order.
    let replay = |records: &[(String, Option<String>)]| -> Result<_, String> {
        let mut state: BTreeMap<String, i64> = BTreeMap::new();
        let mut ops = std::collections::BTreeSet::new();
        for (_, v) in records {
            let v: serde_json::Value = serde_json::from_str(v.as_deref().unwrap()).unwrap();
            let op = v["op"].as_str().unwrap().to_string();
            if !v["before"].is_null() {
                let before = &v["before"];
                let page = before["page"].as_str().unwrap();
                if state.get(page) != before["views"].as_i64().as_ref() {
                    let history: Vec<&str> = records
                        .iter()
                        .filter(|(k, _)| k == page)
                        .map(|(_, v)| v.as_deref().unwrap())
                        .collect();
                    return Err(format!(
                        "{v} does not follow {:?}; key history: {history:#?}",
                        state.get(page)
                    ));
                }
                state.remove(page);
            }
            if !v["after"].is_null() {
                let after = &v["after"];
                state.insert(
                    after["page"].as_str().unwrap().to_string(),
                    after["views"].as_i64().unwrap(),
                );
            }
            ops.insert(op);
        }
        Ok((state, ops))
    };
    let changes = read_topic(&changes_topic, 1, |r| {
        replay(r).is_ok_and(|(s, _)| s == want_totals)
    })
    .await;
    let (state, ops) = replay(&changes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state, want_totals);
    assert!(ops.contains("c"), "{ops:?}");
}

/// Reads `n` records of a topic (1 partition) with their headers.
async fn read_with_headers(topic: &str, n: usize) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0)).unwrap(); // see above
    consumer.assign(&tpl).unwrap();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers.insert(
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

fn strings(batches: &[RecordBatch], col: usize) -> Vec<Option<String>> {
    let mut out = vec![];
    for b in batches {
        let c = cast(b.column(col), &DataType::Utf8).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..c.len()).map(|i| (!c.is_null(i)).then(|| c.value(i).to_string())));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_columns_csv_raw_and_dead_letters_to_a_topic() {
    use rdkafka::message::{Header, OwnedHeaders};
    let id = std::process::id();
    let (topic, dlq) = (format!("meta-{id}"), format!("meta-dlq-{id}"));
    create_topic(&topic, 2).await;
    create_topic(&dlq, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    // 40 good records with keys, headers and timestamps; bad ones between
    // them: truncated, a wrong type, invalid UTF-8, oversized.
    let oversized = format!(r#"{{"user_id": 1, "page": "{}"}}"#, "x".repeat(500)).into_bytes();
    let bad: Vec<Vec<u8>> = vec![
        br#"{"user_id": 3, "page"#.to_vec(),
        br#"{"user_id": "three", "page": "p"}"#.to_vec(),
        vec![
            b'{', b'"', b'p', b'a', b'g', b'e', b'"', b':', b'"', 0xff, b'"', b'}',
        ],
        oversized,
    ];
    let mut sent = vec![];
    for i in 0..40i64 {
        let part = (i % 2) as i32;
        let payload = format!(r#"{{"user_id": {i}, "page": "p{}"}}"#, i % 3);
        let key = format!("k{i}");
        let ts = BASE_MS + i;
        let delivered = producer
            .send(
                FutureRecord::to(&topic)
                    .partition(part)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(ts)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "origin",
                        value: Some("test"),
                    })),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        sent.push((i, part, delivered.offset, ts));
        if i % 10 == 5 {
            let b = &bad[(i / 10) as usize];
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic).partition(0).payload(b),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("{e}"));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = engine(dir.path(), 2).await;
    let b = brokers();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT, \
               part INT METADATA FROM 'partition', off BIGINT METADATA FROM 'offset', \
               k TEXT METADATA FROM 'key', at TIMESTAMP(3) METADATA FROM 'timestamp', \
               hdrs TEXT METADATA FROM 'headers' VIRTUAL) \
             WITH (connector = 'kafka', topic = '{topic}', 'properties.bootstrap.servers' = '{b}', \
               'scan.record.max-bytes' = '200', 'bad_records' = 'dead_letter', 'dead_letter.topic' = '{dlq}')"
        ),
    )
    .await
    .unwrap();
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM nope (a BIGINT, x INT METADATA FROM 'leader') WITH (connector = 'kafka', \
             topic = '{topic}', 'properties.bootstrap.servers' = '{b}')"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("available: key, partition"), "{err}");
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW seen AS SELECT user_id, part, off, k, CAST(at AS BIGINT) AS at, hdrs FROM clicks",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = exec(
            &mut s,
            "SELECT user_id, part, off, k, at, hdrs FROM seen ORDER BY user_id",
        )
        .await
        .unwrap();
        let n: usize = rows.iter().map(|b| b.num_rows()).sum();
        if n >= sent.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let users = strings(&rows, 0);
    let parts = strings(&rows, 1);
    let offs = strings(&rows, 2);
    let keys = strings(&rows, 3);
    let ats = strings(&rows, 4);
    let hdrs = strings(&rows, 5);
    assert_eq!(users.len(), sent.len(), "every good record, once");
    for (row, (i, part, off, ts)) in sent.iter().enumerate() {
        assert_eq!(users[row].as_deref(), Some(i.to_string().as_str()));
        assert_eq!(
            parts[row].as_deref(),
            Some(part.to_string().as_str()),
            "row {row}"
        );
        assert_eq!(offs[row].as_deref(), Some(off.to_string().as_str()), "row {row}");
        assert_eq!(keys[row].as_deref(), Some(format!("k{i}").as_str()));
        // TIMESTAMP(3) cast to BIGINT: milliseconds.
        assert_eq!(ats[row].as_deref(), Some(ts.to_string().as_str()));
        assert_eq!(hdrs[row].as_deref(), Some(r#"{"origin":"test"}"#));
    }
    // Each bad record went to the dead letter topic, raw bytes intact, with
    // its error and position in the headers.
    let letters = read_with_headers(&dlq, bad.len()).await;
    assert_eq!(letters.len(), bad.len());
    for ((raw, headers), want) in letters.iter().zip(&bad) {
        assert_eq!(raw, want);
        assert_eq!(headers["sluice.topic"], topic);
        assert_eq!(headers["sluice.partition"], "0");
        assert!(headers["sluice.offset"].parse::<i64>().is_ok(), "{headers:?}");
        assert!(!headers["sluice.error"].is_empty());
    }
    assert!(
        letters[3].1["sluice.error"].contains("scan.record.max-bytes"),
        "{:?}",
        letters[3].1
    );
    // SHOW JOBS: bad rows counted, each partition's position and lag shown.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
        let bad_rows = bad_rows(&jobs);
        let details = jobs
            .iter()
            .flat_map(|b| strings(std::slice::from_ref(b), b.schema().index_of("detail").unwrap()))
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        let shown =
            details.contains("p0 offset=") && details.contains("p1 offset=") && details.contains("lag=");
        if (bad_rows == bad.len() as i64 && shown) || Instant::now() > deadline {
            assert_eq!(bad_rows, bad.len() as i64);
            assert!(shown, "{details}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // CSV and raw records.
    let (csv_topic, raw_topic) = (format!("csv-{id}"), format!("raw-{id}"));
    create_topic(&csv_topic, 1).await;
    create_topic(&raw_topic, 1).await;
    produce(
        &csv_topic,
        &[(0, b"1|\"a|b\"".to_vec()), (0, b"2|c\r\n".to_vec())],
    )
    .await;
    produce(
        &raw_topic,
        &[(0, b"first line".to_vec()), (0, b"second".to_vec())],
    )
    .await;
    exec(
        &mut s,
        &format!(
            "CREATE STREAM c (n BIGINT, t TEXT) WITH (connector = 'kafka', topic = '{csv_topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'csv', 'csv.delimiter' = '|'); \
             CREATE STREAM r (line TEXT) WITH (connector = 'kafka', topic = '{raw_topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'raw')"
        ),
    )
    .await
    .unwrap();
    let c = exec(&mut s, "SELECT n, t FROM c LIMIT 2").await.unwrap();
    assert_eq!(
        strings(&c, 1),
        vec![Some("a|b".to_string()), Some("c".to_string())]
    );
    let r = exec(&mut s, "SELECT line FROM r LIMIT 2").await.unwrap();
    assert_eq!(
        strings(&r, 0),
        vec![Some("first line".to_string()), Some("second".to_string())]
    );
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM r2 (a TEXT, b TEXT) WITH (connector = 'kafka', topic = '{raw_topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'raw')"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("exactly one TEXT or BYTEA"), "{err}");
    drop(engine);
}

/// A broker of this test's own (the shared one keeps running for the
/// others), storing its log on the S3 server so that it survives a restart.
struct OwnBroker {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    fn start(port: u16) -> Self {
        let tansu =
            std::env::var("SLUICE_TEST_TANSU").expect("needs SLUICE_TEST_TANSU: run ./scripts/test.sh");
        let s3 = std::env::var("SLUICE_TEST_S3_ENDPOINT")
            .expect("needs SLUICE_TEST_S3_ENDPOINT: run ./scripts/test.sh");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // The bucket scripts/infra/s3.sh creates for this test.
            .args(["--storage-engine", "s3://kafka-restart/"])
            .env("AWS_ENDPOINT", s3)
            .env("AWS_ALLOW_HTTP", "true")
            .env(
                "AWS_ACCESS_KEY_ID",
                std::env::var("SLUICE_TEST_S3_ACCESS_KEY_ID").unwrap_or("test".into()),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                std::env::var("SLUICE_TEST_S3_SECRET_ACCESS_KEY").unwrap_or("testtesttest".into()),
            )
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the test's broker did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_job_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = OwnBroker::start(port);
    let b = broker.brokers();
    let topic = format!("restart-{}", std::process::id());
    create_topic_on(&b, &topic, 2).await;
    let batch = |from: i64| -> Vec<(i32, Vec<u8>)> {
        (from..from + 500).map(|i| ((i % 2) as i32, click(i))).collect()
    };
    produce_on(&b, &topic, &batch(0)).await;
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..1000 {
        *want.entry(format!("p{}", i % 7)).or_default() += 1;
    }
    let half: BTreeMap<String, i64> = {
        let mut m = BTreeMap::new();
        for i in 0..500 {
            *m.entry(format!("p{}", i % 7)).or_default() += 1;
        }
        m
    };

    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = engine(dir.path(), 2).await;
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{b}', 'properties.reconnect.backoff.max.ms' = '1000')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW per_page AS SELECT page, count(*) AS n FROM clicks GROUP BY page",
    )
    .await
    .unwrap();
    let wait = |want: BTreeMap<String, i64>| {
        let mut s = engine.new_session();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let got = counts(&exec(&mut s, "SELECT page, n FROM per_page").await.unwrap());
                if got == want || Instant::now() > deadline {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(wait(half.clone()).await, half);

    // The broker goes away: the job keeps running and SHOW JOBS says why
    // no rows come.
    broker.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let details = loop {
        let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
        let status = strings(&jobs, jobs[0].schema().index_of("status").unwrap());
        assert!(
            status.iter().all(|s| s.as_deref() == Some("running")),
            "{status:?}"
        );
        let details = strings(&jobs, jobs[0].schema().index_of("detail").unwrap())
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        if details.contains("error") || details.contains("retrying") || Instant::now() > deadline {
            break details;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        details.contains("error") || details.contains("retrying"),
        "{details}"
    );

    // Back, with its log: the job resumes where it was, nothing lost or
    // read twice.
    broker = OwnBroker::start(port);
    produce_on(&b, &topic, &batch(500)).await;
    assert_eq!(wait(want.clone()).await, want);
    drop(broker);
    drop(engine);
}

/// A schema registry for the Avro test: the three calls of the Confluent
/// REST API that Sluice makes (GET /schemas/ids/N, POST
/// /subjects/S/versions), served from memory. No Confluent-API registry
/// can be installed on these machines (Confluent's and Apicurio's are Java
/// from outside the reachable package registries; Karapace is not
/// published as a Python package), so this stands in for one; the broker
/// is the real one. Returns its URL and what was registered
/// (id -> (subject, schema)).
async fn schema_registry(
    preset: Vec<(u32, String)>,
) -> (String, Arc<std::sync::Mutex<BTreeMap<u32, (String, String)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let schemas: Arc<std::sync::Mutex<BTreeMap<u32, (String, String)>>> = Arc::new(std::sync::Mutex::new(
        preset
            .into_iter()
            .map(|(id, s)| (id, ("preset".to_string(), s)))
            .collect(),
    ));
    let state = schemas.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break (head, buf[end + 4..end + 4 + length].to_vec());
                    }
                };
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
                let (status, answer) = match (method, parts.as_slice()) {
                    ("GET", ["schemas", "ids", id]) => {
                        let id: u32 = id.parse().unwrap_or(u32::MAX);
                        match state.lock().unwrap().get(&id) {
                            Some((_, s)) => ("200 OK", serde_json::json!({ "schema": s })),
                            None => (
                                "404 Not Found",
                                serde_json::json!({"error_code": 40403, "message": "Schema not found"}),
                            ),
                        }
                    }
                    ("POST", ["subjects", subject, "versions"]) => {
                        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let schema = req["schema"].as_str().unwrap().to_string();
                        let mut state = state.lock().unwrap();
                        let existing = state
                            .iter()
                            .find(|(_, (s, v))| s == subject && *v == schema)
                            .map(|(id, _)| *id);
                        let id = existing.unwrap_or_else(|| {
                            let id = state.keys().max().copied().unwrap_or(0) + 1;
                            state.insert(id, (subject.to_string(), schema));
                            id
                        });
                        ("200 OK", serde_json::json!({ "id": id }))
                    }
                    _ => ("404 Not Found", serde_json::json!({"error_code": 404})),
                };
                let answer = answer.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, schemas)
}

/// Avro's binary encoding, by hand (independent of the decoder under test).
fn avro_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn avro_string(out: &mut Vec<u8>, s: &str) {
    avro_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads a zig-zag long at `*at`.
fn read_avro_long(bytes: &[u8], at: &mut usize) -> i64 {
    let (mut z, mut shift) = (0u64, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        z |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return (z >> 1) as i64 ^ -((z & 1) as i64);
        }
    }
}

/// The writer schema the test's producer uses: another field order than
/// the table, a field the table lacks, and millisecond timestamps.
const CLICK_AVRO: &str = r#"{"type":"record","name":"Click","namespace":"test","fields":[
  {"name":"page","type":"string"},
  {"name":"agent","type":"string"},
  {"name":"user_id","type":"long"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

fn avro_click(i: i64) -> Vec<u8> {
    let mut out = vec![];
    avro_string(&mut out, &format!("p{}", i % 7));
    avro_string(&mut out, "curl");
    avro_long(&mut out, i);
    avro_long(&mut out, BASE_MS + i * 10);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_plain_and_confluent_framed_records_in_and_out() {
    let id = std::process::id();
    let (plain, framed, out) = (
        format!("avro-plain-{id}"),
        format!("avro-framed-{id}"),
        format!("avro-out-{id}"),
    );
    create_topic(&plain, 2).await;
    create_topic(&framed, 1).await;
    create_topic(&out, 1).await;
    let (url, registered) = schema_registry(vec![(7, CLICK_AVRO.to_string())]).await;

    // Plain bodies: 60 good ones over two partitions; a truncated record,
    // one with a byte left over and an empty one between them.
    let mut records: Vec<(i32, Vec<u8>)> = (0..60).map(|i| ((i % 2) as i32, avro_click(i))).collect();
    let mut long_one = avro_click(1);
    long_one.push(0);
    let truncated = avro_click(2)[..5].to_vec();
    records.insert(10, (0, truncated));
    records.insert(20, (0, long_one));
    records.insert(30, (1, vec![]));
    produce(&plain, &records).await;
    // Confluent framing: id 7 and the body; one record with an id the
    // registry does not know, one without the frame at all.
    let mut records: Vec<(i32, Vec<u8>)> = (100..140)
        .map(|i| {
            let mut r = vec![0, 0, 0, 0, 7];
            r.extend(avro_click(i));
            (0, r)
        })
        .collect();
    let mut unknown = vec![0, 0, 0, 0, 99];
    unknown.extend(avro_click(1));
    records.insert(5, (0, unknown));
    records.insert(15, (0, avro_click(2)));
    produce(&framed, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(KafkaConnector::default()));
    let mut sinks = SinkRegistry::default();
    sinks.register(Arc::new(sluice_connectors::kafka::KafkaSink));
    let (_engine, mut s) = open_engine(dir.path(), 2, sources, sinks).await;
    let b = brokers();
    let avro_schema = CLICK_AVRO.replace('\n', " ");
    exec(
        &mut s,
        &format!(
            "CREATE STREAM plain_clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3)) \
             WITH (connector = 'kafka', topic = '{plain}', 'properties.bootstrap.servers' = '{b}', \
               format = 'avro', 'avro.schema' = '{avro_schema}', 'bad_records' = 'skip')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM framed_clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3), missing TEXT) \
             WITH (connector = 'kafka', topic = '{framed}', 'properties.bootstrap.servers' = '{b}', \
               format = 'avro-confluent', 'avro-confluent.url' = '{url}', 'bad_records' = 'skip')"
        ),
    )
    .await
    .unwrap();
    // Bad options are errors at CREATE.
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM nope (a BIGINT) WITH (connector = 'kafka', topic = '{plain}', \
             'properties.bootstrap.servers' = '{b}', format = 'avro', 'avro.schema' = '{{\"type\": 3}}')"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("avro.schema"), "{err}");
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM nope (a BIGINT) WITH (connector = 'kafka', topic = '{plain}', \
             'properties.bootstrap.servers' = '{b}', format = 'avro-confluent')"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("avro-confluent.url"), "{err}");

    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW plain_seen AS \
         SELECT user_id, page, CAST(ts AS BIGINT) AS ts FROM plain_clicks",
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW framed_seen AS \
         SELECT user_id, page, CAST(ts AS BIGINT) AS ts, missing FROM framed_clicks",
    )
    .await
    .unwrap();
    // The plain stream out again, in the Confluent wire format.
    exec(
        &mut s,
        &format!(
            "CREATE SINK avro_out WITH (connector = 'kafka', topic = '{out}', \
               'properties.bootstrap.servers' = '{b}', format = 'avro-confluent', \
               'avro-confluent.url' = '{url}') AS SELECT user_id, page, ts FROM plain_clicks"
        ),
    )
    .await
    .unwrap();

    let rows = wait_for_rows(
        &mut s,
        "SELECT user_id, page, ts FROM plain_seen ORDER BY user_id",
        60,
    )
    .await;
    let want: Vec<i64> = (0..60).collect();
    check_clicks(&rows, &want);
    let rows = wait_for_rows(
        &mut s,
        "SELECT user_id, page, ts, missing FROM framed_seen ORDER BY user_id",
        40,
    )
    .await;
    let want: Vec<i64> = (100..140).collect();
    check_clicks(&rows, &want);
    assert!(
        strings(&rows, 3).iter().all(Option::is_none),
        "a column the writer lacks is NULL"
    );
    // Every bad record counted by each job that read it: three plain (the
    // view and the sink both read that stream), two framed.
    let want = [("plain_seen", 3), ("framed_seen", 2), ("avro_out", 3)];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
        let got: Vec<(&str, i64)> = want.iter().map(|(j, _)| (*j, bad_rows_of(&jobs, j))).collect();
        if got == want || Instant::now() > deadline {
            assert_eq!(got, want, "bad records counted per job");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The sink registered its schema under <topic>-value and framed each
    // record with that id; the bodies decode (by hand) to the rows.
    let letters = read_with_headers(&out, 60).await;
    assert_eq!(letters.len(), 60);
    let (sink_id, sink_schema) = registered
        .lock()
        .unwrap()
        .iter()
        .find(|(_, (subject, _))| *subject == format!("{out}-value"))
        .map(|(id, (_, s))| (*id, s.clone()))
        .expect("the sink registered a schema");
    let parsed: serde_json::Value = serde_json::from_str(&sink_schema).unwrap();
    let names: Vec<&str> = parsed["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user_id", "page", "ts"]);
    let mut seen = vec![];
    for (raw, _) in &letters {
        assert_eq!(raw[0], 0, "magic byte");
        assert_eq!(u32::from_be_bytes(raw[1..5].try_into().unwrap()), sink_id);
        // Each field is a union ["null", T]: branch 1 (zig-zag 2), the value.
        let mut at = 5;
        assert_eq!(read_avro_long(raw, &mut at), 1);
        let user = read_avro_long(raw, &mut at);
        assert_eq!(read_avro_long(raw, &mut at), 1);
        let len = read_avro_long(raw, &mut at) as usize;
        let page = std::str::from_utf8(&raw[at..at + len]).unwrap().to_string();
        at += len;
        assert_eq!(read_avro_long(raw, &mut at), 1);
        let ts = read_avro_long(raw, &mut at);
        assert_eq!(at, raw.len(), "nothing after the last field");
        assert_eq!(page, format!("p{}", user % 7));
        assert_eq!(ts, BASE_MS + user * 10, "millisecond timestamps");
        seen.push(user);
    }
    seen.sort();
    assert_eq!(seen, (0..60).collect::<Vec<_>>());
    // And back in through the registry.
    exec(
        &mut s,
        &format!(
            "CREATE STREAM back (user_id BIGINT, page TEXT, ts TIMESTAMP(3)) \
             WITH (connector = 'kafka', topic = '{out}', 'properties.bootstrap.servers' = '{b}', \
               format = 'avro-confluent', 'avro-confluent.url' = '{url}')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW back_seen AS SELECT user_id, page, CAST(ts AS BIGINT) AS ts FROM back",
    )
    .await
    .unwrap();
    let rows = wait_for_rows(
        &mut s,
        "SELECT user_id, page, ts FROM back_seen ORDER BY user_id",
        60,
    )
    .await;
    check_clicks(&rows, &(0..60).collect::<Vec<_>>());
}

/// Polls `sql` until it returns `n` rows (or 30 s pass).
async fn wait_for_rows(s: &mut Session, sql: &str, n: usize) -> Vec<RecordBatch> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = exec(s, sql).await.unwrap();
        let got: usize = rows.iter().map(|b| b.num_rows()).sum();
        if got >= n || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows (user_id, page, ts ms) are exactly the clicks `want`, in order.
fn check_clicks(rows: &[RecordBatch], want: &[i64]) {
    let users = strings(rows, 0);
    let pages = strings(rows, 1);
    let ts = strings(rows, 2);
    let want_users: Vec<Option<String>> = want.iter().map(|i| Some(i.to_string())).collect();
    assert_eq!(users, want_users);
    for (row, i) in want.iter().enumerate() {
        assert_eq!(pages[row].as_deref(), Some(format!("p{}", i % 7).as_str()));
        assert_eq!(ts[row].as_deref(), Some((BASE_MS + i * 10).to_string().as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changelog_source_keeps_views_current() {
    let id = std::process::id();
    let topic = format!("cdc-{id}");
    create_topic(&topic, 2).await;
    // Changes of a table (id, name, amount), each key on one partition in
    // order: 30 inserts, updates of the even ids, deletes of multiples of
    // 5; and two bad records.
    let row = |id: i64, amount: i64| format!(r#"{{"id": {id}, "name": "n{}", "amount": {amount}}}"#, id % 3);
    let mut records: Vec<(i32, Vec<u8>)> = vec![];
    let mut want: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..30 {
        let op = if i % 4 == 0 { "r" } else { "c" };
        let r = format!(
            r#"{{"before": null, "after": {}, "op": "{op}", "ts_ms": 1}}"#,
            row(i, i)
        );
        records.push(((i % 2) as i32, r.into_bytes()));
        want.insert(i, i);
    }
    for i in (0..30).step_by(2) {
        let r = format!(
            r#"{{"before": {}, "after": {}, "op": "u"}}"#,
            row(i, i),
            row(i, i + 100)
        );
        records.push(((i % 2) as i32, r.into_bytes()));
        want.insert(i, i + 100);
    }
    for i in (0..30).step_by(5) {
        let amount = want[&i];
        let r = format!(r#"{{"before": {}, "after": null, "op": "d"}}"#, row(i, amount));
        records.push(((i % 2) as i32, r.into_bytes()));
        want.remove(&i);
    }
    records.push((0, br#"{"before": null, "after": {"id": 99}, "op": "x"}"#.to_vec()));
    records.push((
        1,
        br#"{"before": null, "after": {"id": 98, "name": "n0", "amount": 1}, "op": "u"}"#.to_vec(),
    ));
    produce(&topic, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = engine(dir.path(), 2).await;
    let b = brokers();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM orders (id BIGINT, name TEXT, amount BIGINT, ts TIMESTAMP(3), \
               part INT METADATA FROM 'partition') \
             WITH (connector = 'kafka', topic = '{topic}', 'properties.bootstrap.servers' = '{b}', \
               format = 'debezium-json', 'bad_records' = 'skip')"
        ),
    )
    .await
    .unwrap();
    // Its records are changes: an ad-hoc scan or a window can't use them.
    let err = exec(&mut s, "SELECT * FROM orders").await.unwrap_err();
    assert!(err.to_string().contains("changelog"), "{err}");
    assert_eq!(err.kind(), sluice_engine::ErrorKind::NotSupported, "{err}");
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW current_orders AS SELECT id, name, amount, part FROM orders WHERE amount >= 0",
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW by_name AS \
         SELECT name, count(*) AS n, sum(amount) AS total FROM orders GROUP BY name",
    )
    .await
    .unwrap();
    let want_rows: Vec<(i64, i64)> = want.iter().map(|(k, v)| (*k, *v)).collect();
    let mut want_by_name: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (k, v) in &want {
        let e = want_by_name.entry(format!("n{}", k % 3)).or_default();
        e.0 += 1;
        e.1 += v;
    }
    // Both views reach the table's final state (poll until they do).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = exec(&mut s, "SELECT id, amount FROM current_orders ORDER BY id")
            .await
            .unwrap();
        let ids = strings(&rows, 0);
        let amounts = strings(&rows, 1);
        let got: Vec<(i64, i64)> = ids
            .iter()
            .zip(&amounts)
            .map(|(i, a)| {
                (
                    i.as_ref().unwrap().parse().unwrap(),
                    a.as_ref().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let agg = exec(&mut s, "SELECT name, n, total FROM by_name ORDER BY name")
            .await
            .unwrap();
        let got_by_name: BTreeMap<String, (i64, i64)> = strings(&agg, 0)
            .into_iter()
            .zip(strings(&agg, 1).into_iter().zip(strings(&agg, 2)))
            .map(|(name, (n, t))| {
                (
                    name.unwrap(),
                    (n.unwrap().parse().unwrap(), t.unwrap().parse().unwrap()),
                )
            })
            .collect();
        if (got == want_rows && got_by_name == want_by_name) || Instant::now() > deadline {
            assert_eq!(got, want_rows, "the view holds the table's rows");
            // Each row carries its record's partition (an update's two rows
            // come from one record).
            let parts = exec(&mut s, "SELECT id, part FROM current_orders ORDER BY id")
                .await
                .unwrap();
            for (id, part) in strings(&parts, 0).iter().zip(strings(&parts, 1)) {
                let id: i64 = id.as_ref().unwrap().parse().unwrap();
                assert_eq!(part, Some((id % 2).to_string()), "row {id}");
            }
            assert_eq!(
                got_by_name, want_by_name,
                "the aggregate follows inserts, updates and deletes"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
    assert_eq!(
        bad_rows(&jobs),
        4,
        "two bad records, counted by each of the two jobs"
    );
    let err = exec(
        &mut s,
        "CREATE MATERIALIZED VIEW w AS SELECT window_start, count(*) FROM \
         TUMBLE(orders, ts, INTERVAL '1 minute') GROUP BY window_start",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("changelog stream"), "{err}");
}

/// An upsert topic (`'source.mode' = 'upsert'`): each record the whole row
/// of its key, an empty one a tombstone. Views see the table the topic
/// describes (a GROUP BY follows its updates and deletes), and a temporal
/// join reads its records as versions at their Kafka timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_topic_is_a_table_and_a_versioned_one() {
    let id = std::process::id();
    let (prices, orders) = (format!("prices-upsert-{id}"), format!("orders-up-{id}"));
    create_topic(&prices, 2).await;
    create_topic(&orders, 2).await;
    let row = |p: &str, price: i64| Some(format!(r#"{{"product": "{p}", "price": {price}}}"#));
    produce_keyed(
        &prices,
        &[
            (0, "a", row("a", 10), 1_000),
            (1, "b", row("b", 20), 2_000),
            (0, "a", row("a", 11), 5_000),
            (0, "c", row("c", 30), 6_000),
            (1, "b", None, 8_000),
            (0, "a", row("a", 12), 12_000),
            (1, "d", None, 13_000),
            (0, "e", row("e", 1), 100_000),
            (1, "f", row("f", 2), 100_000),
        ],
    )
    .await;
    let order =
        |id: i64, p: &str, at: i64| format!(r#"{{"id": {id}, "product": "{p}", "order_time": {at}}}"#);
    let placed = [
        (1, "a", 500),
        (2, "a", 1_500),
        (3, "b", 3_000),
        (4, "b", 9_000),
        (5, "a", 6_000),
        (6, "a", 12_500),
        (7, "c", 7_000),
        (8, "e", 100_000),
        (9, "e", 100_000),
    ];
    produce(
        &orders,
        &placed
            .iter()
            .map(|(i, p, at)| ((*i % 2) as i32, order(*i, p, *at).into_bytes()))
            .collect::<Vec<_>>(),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = engine(dir.path(), 2).await;
    let b = brokers();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM prices (product TEXT, price BIGINT, ts TIMESTAMP(3) METADATA FROM 'timestamp', \
               WATERMARK FOR ts AS ts) \
             WITH (connector = 'kafka', topic = '{prices}', 'properties.bootstrap.servers' = '{b}', \
               format = 'json', 'source.mode' = 'upsert', key = 'product')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM orders (id BIGINT, product TEXT, order_time TIMESTAMP(3), \
               WATERMARK FOR order_time AS order_time) \
             WITH (connector = 'kafka', topic = '{orders}', 'properties.bootstrap.servers' = '{b}', \
               format = 'json', 'json.timestamp-format' = 'epoch-millis')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW current AS SELECT product, price FROM prices",
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW total AS SELECT 'all' AS k, sum(price) AS total FROM prices",
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW priced AS \
         SELECT o.id, p.price FROM orders o \
         LEFT JOIN prices FOR SYSTEM_TIME AS OF o.order_time AS p ON o.product = p.product",
    )
    .await
    .unwrap();
    let current: BTreeMap<String, i64> = [("a", 12), ("c", 30), ("e", 1), ("f", 2)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = counts(&exec(&mut s, "SELECT product, price FROM current").await.unwrap());
        if got == current || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if got != current {
        let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
        panic!(
            "each key's last row (b's tombstone deleted it, d's deleted nothing): got {got:?}\n{}",
            sluice_engine::datafusion::arrow::util::pretty::pretty_format_batches(&jobs).unwrap()
        );
    }
    // The sum is another job: it gets there in its own time.
    let want_total = BTreeMap::from([("all".to_string(), 45)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let total = loop {
        let total = counts(&exec(&mut s, "SELECT k, total FROM total").await.unwrap());
        if total == want_total || Instant::now() > deadline {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(total, want_total);
    // Orders priced as of their time: none before a's first row, b none
    // after its tombstone at 8 s. (NULL reads as 0.)
    let want: BTreeMap<String, i64> = [(1, 0), (2, 10), (3, 20), (4, 0), (5, 11), (6, 12), (7, 30)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = counts(
            &exec(
                &mut s,
                "SELECT CAST(id AS TEXT), coalesce(price, 0) FROM priced WHERE id < 8",
            )
            .await
            .unwrap(),
        );
        if got == want || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got, want, "each order with its product's price as of the order");
    // Versions timed by a column of the value are refused: a tombstone
    // has none.
    exec(
        &mut s,
        &format!(
            "CREATE STREAM prices_by_value (product TEXT, price BIGINT, changed TIMESTAMP(3), \
               WATERMARK FOR changed AS changed) \
             WITH (connector = 'kafka', topic = '{prices}', 'properties.bootstrap.servers' = '{b}', \
               format = 'json', 'source.mode' = 'upsert', key = 'product')"
        ),
    )
    .await
    .unwrap();
    let err = exec(
        &mut s,
        "CREATE MATERIALIZED VIEW bad AS SELECT o.id, p.price FROM orders o \
         JOIN prices_by_value FOR SYSTEM_TIME AS OF o.order_time AS p ON o.product = p.product",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), sluice_engine::ErrorKind::NotSupported, "{err}");
    assert!(err.to_string().contains("METADATA FROM 'timestamp'"), "{err}");
    // An upsert topic needs its key.
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM nokey (product TEXT) WITH (connector = 'kafka', topic = '{prices}', \
               'properties.bootstrap.servers' = '{b}', format = 'json', 'source.mode' = 'upsert')"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("needs key"), "{err}");
}

/// A temporal join whose versioned table is a Debezium changelog: each
/// order meets its currency's rate as of the order's time, through
/// inserts, updates and deletes, the changes' times read from the
/// envelopes' `source.ts_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporal_join_reads_versions_from_a_debezium_changelog() {
    let id = std::process::id();
    let (rates, orders) = (format!("rates-cdc-{id}"), format!("orders-{id}"));
    create_topic(&rates, 1).await;
    create_topic(&orders, 2).await;
    let rate = |c: &str, r: i64| format!(r#"{{"currency": "{c}", "rate": {r}}}"#);
    let change = |op: &str, before: Option<String>, after: Option<String>, at: i64| {
        let image = |i: Option<String>| i.unwrap_or_else(|| "null".into());
        format!(
            r#"{{"before": {}, "after": {}, "op": "{op}", "ts_ms": {}, "source": {{"ts_ms": {at}}}}}"#,
            image(before),
            image(after),
            at + 7
        )
        .into_bytes()
    };
    // EUR: 10 from 1 s, 11 from 5 s (an update), deleted at 9 s, 13 from
    // 12 s. USD: 20 from 2 s, 21 from 6 s. GBP at 100 s moves the
    // watermark on.
    let changes = [
        change("c", None, Some(rate("EUR", 10)), 1_000),
        change("r", None, Some(rate("USD", 20)), 2_000),
        change("u", Some(rate("EUR", 10)), Some(rate("EUR", 11)), 5_000),
        change("u", Some(rate("USD", 20)), Some(rate("USD", 21)), 6_000),
        change("d", Some(rate("EUR", 11)), None, 9_000),
        change("c", None, Some(rate("EUR", 13)), 12_000),
        change("c", None, Some(rate("GBP", 1)), 100_000),
    ];
    produce(&rates, &changes.into_iter().map(|c| (0, c)).collect::<Vec<_>>()).await;
    let order = |id: i64, c: &str, at: i64| {
        format!(r#"{{"id": {id}, "currency": "{c}", "order_time": {at}}}"#).into_bytes()
    };
    let placed = [
        (1, "EUR", 500),
        (2, "EUR", 1_500),
        (3, "EUR", 5_500),
        (4, "EUR", 9_500),
        (5, "EUR", 12_500),
        (6, "USD", 3_000),
        (7, "USD", 7_000),
        (8, "GBP", 100_000),
        (9, "GBP", 100_000),
    ];
    produce(
        &orders,
        &placed
            .iter()
            .map(|(i, c, at)| ((*i % 2) as i32, order(*i, c, *at)))
            .collect::<Vec<_>>(),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = engine(dir.path(), 2).await;
    let b = brokers();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM rates (currency TEXT, rate BIGINT, \
               changed TIMESTAMP(3) METADATA FROM 'value.source.timestamp', \
               WATERMARK FOR changed AS changed) \
             WITH (connector = 'kafka', topic = '{rates}', 'properties.bootstrap.servers' = '{b}', \
               format = 'debezium-json')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        &format!(
            "CREATE STREAM orders (id BIGINT, currency TEXT, order_time TIMESTAMP(3), \
               WATERMARK FOR order_time AS order_time) \
             WITH (connector = 'kafka', topic = '{orders}', 'properties.bootstrap.servers' = '{b}', \
               format = 'json', 'json.timestamp-format' = 'epoch-millis')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW priced AS \
         SELECT o.id, o.currency, r.rate, r.changed FROM orders o \
         LEFT JOIN rates FOR SYSTEM_TIME AS OF o.order_time AS r ON o.currency = r.currency",
    )
    .await
    .unwrap();
    let sql = "SELECT id, currency, rate FROM priced WHERE id < 8 ORDER BY id";
    let rows = wait_for_rows(&mut s, sql, 7).await;
    let got: Vec<String> = strings(&rows, 0)
        .into_iter()
        .zip(strings(&rows, 1).into_iter().zip(strings(&rows, 2)))
        .map(|(i, (c, r))| format!("{}|{}|{}", i.unwrap(), c.unwrap(), r.unwrap_or("NULL".into())))
        .collect();
    assert_eq!(
        got,
        [
            "1|EUR|NULL",
            "2|EUR|10",
            "3|EUR|11",
            "4|EUR|NULL",
            "5|EUR|13",
            "6|USD|20",
            "7|USD|21"
        ],
        "each order with its currency's rate as of the order: none before the first, \
         the update's from its time, none after the delete"
    );
    // The version's time is its change's (the envelope's source.ts_ms).
    let changed = exec(&mut s, "SELECT CAST(changed AS TEXT) FROM priced WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(strings(&changed, 0), [Some("1970-01-01T00:00:05".to_string())]);
    let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&jobs)
        .unwrap()
        .to_string();
    assert!(text.contains("retractions"), "{text}");
    // Versions timed by a column of the rows are refused: an update's old
    // row would carry its old time.
    exec(
        &mut s,
        &format!(
            "CREATE STREAM rates_by_row (currency TEXT, rate BIGINT, updated TIMESTAMP(3), \
               WATERMARK FOR updated AS updated) \
             WITH (connector = 'kafka', topic = '{rates}', 'properties.bootstrap.servers' = '{b}', \
               format = 'debezium-json')"
        ),
    )
    .await
    .unwrap();
    let err = exec(
        &mut s,
        "CREATE MATERIALIZED VIEW by_row AS SELECT o.id, r.rate FROM orders o \
         JOIN rates_by_row FOR SYSTEM_TIME AS OF o.order_time AS r ON o.currency = r.currency",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), sluice_engine::ErrorKind::NotSupported, "{err}");
    assert!(err.to_string().contains("value.source.timestamp"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_dead_letters_go_to_a_topic() {
    let id = std::process::id();
    let dlq = format!("files-dlq-{id}");
    create_topic(&dlq, 1).await;
    let input = tempfile::tempdir().unwrap();
    let mut lines = vec![];
    for i in 0..20 {
        lines.push(format!(r#"{{"user_id": {i}, "page": "p{}"}}"#, i % 3));
    }
    lines.insert(4, r#"{"user_id": "four", "page": "p"}"#.to_string());
    lines.insert(9, r#"{"user_id": 9, "pa"#.to_string());
    std::fs::write(input.path().join("clicks.json"), lines.join("\n") + "\n").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut sources = SourceRegistry::default();
    sources.register(Arc::new(sluice_connectors::filesource::FileSystemSource::new(
        Default::default(),
    )));
    let (_engine, mut s) = open_engine(dir.path(), 1, sources, SinkRegistry::default()).await;
    let b = brokers();
    let path = input.path().display();
    // The topic must exist.
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM nope (user_id BIGINT, page TEXT) WITH (connector = 'filesystem', \
             path = '{path}', format = 'json', 'bad_records' = 'dead_letter', \
             'dead_letter.topic' = 'no-such-topic-{id}', 'dead_letter.properties.bootstrap.servers' = '{b}')"
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT) WITH (connector = 'filesystem', \
             path = '{path}', format = 'json', 'scan.mode' = 'bounded', 'bad_records' = 'dead_letter', \
             'dead_letter.topic' = '{dlq}', 'dead_letter.properties.bootstrap.servers' = '{b}')"
        ),
    )
    .await
    .unwrap();
    exec(
        &mut s,
        "CREATE MATERIALIZED VIEW seen AS SELECT user_id FROM clicks",
    )
    .await
    .unwrap();
    let rows = wait_for_rows(&mut s, "SELECT user_id FROM seen ORDER BY user_id", 20).await;
    let want: Vec<Option<String>> = (0..20).map(|i| Some(i.to_string())).collect();
    assert_eq!(strings(&rows, 0), want, "every good line, once");
    let letters = read_with_headers(&dlq, 2).await;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].0, lines[4].as_bytes());
    assert_eq!(letters[1].0, lines[9].as_bytes());
    for (n, (_, headers)) in [5, 10].iter().zip(&letters) {
        assert!(headers["sluice.file"].ends_with("clicks.json"), "{headers:?}");
        assert_eq!(headers["sluice.line"], n.to_string());
        assert!(!headers["sluice.error"].is_empty());
    }
}

/// Reads everything visible in `topic` (one partition) at `isolation`
/// within `wait`: the values.
async fn read_isolated(topic: &str, isolation: &str, wait: Duration) -> Vec<String> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "sluice-test-isolated")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0)).unwrap(); // see above
    consumer.assign(&tpl).unwrap();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, consumer.recv()).await {
        if let Some(p) = m.payload() {
            out.push(String::from_utf8_lossy(p).into_owned());
        }
    }
    out
}

/// `'sink.delivery-guarantee' = 'exactly-once'`: records go out in a
/// transaction per checkpoint; a read_committed consumer sees none of them
/// before the checkpoint completes and each exactly once after. (The test
/// broker still shows records of an aborted transaction, so what a crash
/// aborts can't be checked here: see the README.) The source commits each
/// completed checkpoint's offsets to its consumer group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_kafka_sink_commits_with_checkpoints() {
    let (input, output) = (
        format!("txn-in-{}", std::process::id()),
        format!("txn-out-{}", std::process::id()),
    );
    let group = format!("txn-group-{}", std::process::id());
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let records: Vec<(i32, Vec<u8>)> = (0..100).map(|i| (0, click(i))).collect();
    produce(&input, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = kafka_engine(dir.path(), 1, Some(Duration::from_secs(10))).await;
    exec(
        &mut s,
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{input}', \
             'properties.bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest', format = 'json', \
             'properties.group.id' = '{group}'); \
             CREATE SINK out WITH (connector = 'kafka', topic = '{output}', 'properties.bootstrap.servers' = '{b}', \
             format = 'json', 'sink.delivery-guarantee' = 'exactly-once') AS SELECT user_id, page FROM clicks",
            b = brokers()
        ),
    )
    .await
    .unwrap();
    // Written (a read_uncommitted consumer sees them) ...
    let uncommitted = read_isolated(&output, "read_uncommitted", Duration::from_secs(3)).await;
    // ... but not visible to read_committed before the first checkpoint.
    let committed = read_isolated(&output, "read_committed", Duration::from_millis(500)).await;
    let completed = |batches: &[RecordBatch]| {
        strings(batches, 2)
            .iter()
            .any(|s| s.as_deref() == Some("completed"))
    };
    assert!(
        !completed(&exec(&mut s, "SHOW CHECKPOINTS").await.unwrap()),
        "the checks above must run before the first checkpoint (10 s) completes"
    );
    assert_eq!(uncommitted.len(), 100, "the records are written");
    assert_eq!(
        committed.len(),
        0,
        "nothing is visible before the checkpoint commits"
    );
    // After the first checkpoint, exactly one copy of each.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !completed(&exec(&mut s, "SHOW CHECKPOINTS").await.unwrap()) {
        assert!(Instant::now() < deadline, "no checkpoint completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let committed = read_isolated(&output, "read_committed", Duration::from_secs(3)).await;
    assert_eq!(committed.len(), 100, "{committed:?}");
    let distinct: std::collections::BTreeSet<&String> = committed.iter().collect();
    assert_eq!(distinct.len(), 100);
    // The source told its consumer group how far the checkpoint is (for
    // lag monitoring; Sluice itself resumes from its checkpoints).
    assert_eq!(group_offset(&group, &input, 100).await, Some(100));
    // The next records go in the next checkpoint's transaction.
    let more: Vec<(i32, Vec<u8>)> = (100..150).map(|i| (0, click(i))).collect();
    produce(&input, &more).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let committed = loop {
        let got = read_isolated(&output, "read_committed", Duration::from_secs(2)).await;
        if got.len() >= 150 || Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(committed.len(), 150);
    assert_eq!(group_offset(&group, &input, 150).await, Some(150));
    let cps = exec(&mut s, "SHOW CHECKPOINTS").await.unwrap();
    let statuses = strings(&cps, 2);
    assert!(
        statuses.iter().any(|s| s.as_deref() == Some("completed")),
        "{statuses:?}"
    );
}

/// An exactly-once sink over a bounded stream and an unbounded one: the
/// sink lane the bounded stream feeds finishes while the job runs, and the
/// next checkpoint commits its last transaction (it is not left for a final
/// checkpoint, which a job with an unbounded input never takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_inputs_last_transaction_commits_while_the_job_runs() {
    let id = std::process::id();
    let (bounded, live, output) = (
        format!("ended-in-{id}"),
        format!("live-in-{id}"),
        format!("mixed-out-{id}"),
    );
    for t in [&bounded, &live, &output] {
        create_topic(t, 1).await;
    }
    let records: Vec<(i32, Vec<u8>)> = (0..100).map(|i| (0, click(i))).collect();
    produce(&bounded, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, mut s) = kafka_engine(dir.path(), 1, Some(Duration::from_millis(500))).await;
    exec(
        &mut s,
        &format!(
            "CREATE STREAM ended (user_id BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{bounded}', \
             'properties.bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest', \
             'scan.bounded.mode' = 'latest-offset', format = 'json'); \
             CREATE STREAM live (user_id BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{live}', \
             'properties.bootstrap.servers' = '{b}', 'scan.startup.mode' = 'earliest', format = 'json'); \
             CREATE SINK out WITH (connector = 'kafka', topic = '{output}', 'properties.bootstrap.servers' = '{b}', \
             format = 'json', 'sink.delivery-guarantee' = 'exactly-once') AS \
             SELECT user_id, page FROM ended UNION ALL SELECT user_id, page FROM live",
            b = brokers()
        ),
    )
    .await
    .unwrap();
    let committed_at_least = |n: usize| {
        let output = output.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let got = read_isolated(&output, "read_committed", Duration::from_secs(2)).await;
                if got.len() >= n || Instant::now() > deadline {
                    return got;
                }
            }
        }
    };
    let committed = committed_at_least(100).await;
    assert_eq!(committed.len(), 100, "the bounded stream's output is committed");
    let distinct: std::collections::BTreeSet<&String> = committed.iter().collect();
    assert_eq!(distinct.len(), 100);
    // The job runs on and keeps committing what the live stream brings.
    let more: Vec<(i32, Vec<u8>)> = (100..120).map(|i| (0, click(i))).collect();
    produce(&live, &more).await;
    let committed = committed_at_least(120).await;
    assert_eq!(committed.len(), 120);
    let distinct: std::collections::BTreeSet<&String> = committed.iter().collect();
    assert_eq!(distinct.len(), 120);
    let jobs = exec(&mut s, "SHOW JOBS").await.unwrap();
    let statuses = strings(&jobs, 2);
    assert!(
        statuses.iter().all(|s| s.as_deref() == Some("running")),
        "{statuses:?}"
    );
}

/// The offset `group` committed for partition 0 of `topic`, polled until it
/// is `want` or 20 s pass.
async fn group_offset(group: &str, topic: &str, want: i64) -> Option<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (g, t) = (group.to_string(), topic.to_string());
        let got = tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("group.id", &g)
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(&t, 0);
            let committed =
                rdkafka::consumer::Consumer::committed_offsets(&consumer, tpl, Duration::from_secs(5))
                    .ok()?;
            match committed.find_partition(&t, 0)?.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            }
        })
        .await
        .unwrap();
        if got == Some(want) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `scan.bounded.mode`: a stream reads an offset range and ends (the way a
/// recorded range of a sink's commits is read again), or reads what the
/// topic holds when it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_streams_read_an_offset_range_and_end() {
    let topic = format!("bounded-{}", std::process::id());
    create_topic(&topic, 2).await;
    // Partition p holds clicks p, p + 2, p + 4, ...: offset j is click 2j + p.
    let records: Vec<(i32, Vec<u8>)> = (0..300).map(|i| ((i % 2) as i32, click(i))).collect();
    produce(&topic, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut s) = engine(dir.path(), 2).await;
    let clicks = |batches: &[RecordBatch]| -> Vec<i64> {
        let mut out: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let ts = cast(b.column(0), &DataType::Int64).unwrap();
                let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap().clone();
                ts.values().iter().map(|t| (t - BASE_MS) / 10).collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    };
    exec(
        &mut s,
        &format!(
            "CREATE STREAM ranged (ts BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'json', \
             'scan.startup.mode' = 'specific-offsets', \
             'scan.startup.specific-offsets' = 'partition:0,offset:10;partition:1,offset:0', \
             'scan.bounded.mode' = 'specific-offsets', \
             'scan.bounded.specific-offsets' = 'partition:0,offset:60;partition:1,offset:25'); \
             CREATE MATERIALIZED VIEW ranged_rows AS SELECT ts FROM ranged; \
             CREATE STREAM upto_now (ts BIGINT, page TEXT) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'json', 'scan.bounded.mode' = 'latest-offset'); \
             CREATE MATERIALIZED VIEW upto_now_rows AS SELECT ts FROM upto_now",
            b = brokers()
        ),
    )
    .await
    .unwrap();
    for job in ["ranged_rows", "upto_now_rows"] {
        let status = tokio::time::timeout(Duration::from_secs(30), engine.wait_for_job(job))
            .await
            .unwrap_or_else(|_| panic!("{job} did not end"));
        assert_eq!(status.as_deref(), Some("finished"), "{job}");
    }
    let mut want: Vec<i64> = (10..60)
        .map(|j| 2 * j)
        .chain((0..25).map(|j| 2 * j + 1))
        .collect();
    want.sort();
    let got = clicks(&exec(&mut s, "SELECT ts FROM ranged_rows").await.unwrap());
    assert_eq!(
        got, want,
        "offsets [10, 60) of partition 0 and [0, 25) of partition 1"
    );
    let got = clicks(&exec(&mut s, "SELECT ts FROM upto_now_rows").await.unwrap());
    assert_eq!(got, (0..300).collect::<Vec<i64>>(), "everything the topic held");
    // Their progress counts the records of the range, over both tasks.
    for (job, want) in [
        ("ranged_rows", "100% of 75 records"),
        ("upto_now_rows", "100% of 300 records"),
    ] {
        let source = engine
            .job_operators()
            .into_iter()
            .find(|o| o.job == job && o.operator.starts_with("Source"))
            .unwrap_or_else(|| panic!("{job} has no source"));
        let progress = source.progress.unwrap_or_else(|| panic!("{job}: no progress"));
        assert_eq!(progress.describe(), want, "{job}");
    }
    // A bad bound is refused at CREATE.
    let err = exec(
        &mut s,
        &format!(
            "CREATE STREAM bad (ts BIGINT) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{b}', format = 'json', 'scan.bounded.mode' = 'someday')",
            b = brokers()
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("scan.bounded.mode"), "{err}");
}

/// A partition counts as caught up (and so may go idle and stop holding
/// the watermark back) only once it was read to its end: before its first
/// fetch, or while its records wait in the source, it is not. An empty
/// partition is caught up as soon as it was fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_caught_up_only_once_read_to_its_end() {
    use sluice_engine::datafusion::arrow::datatypes::{Field, Schema};
    use sluice_engine::stream::SourceConnector;
    let topic = format!("caught-up-{}", std::process::id());
    create_topic(&topic, 2).await;
    let records: Vec<(i32, Vec<u8>)> = (0..200).map(|i| (0, click(i))).collect();
    produce(&topic, &records).await;
    let options: BTreeMap<String, String> = [
        ("topic", topic.as_str()),
        ("properties.bootstrap.servers", &brokers()),
        ("format", "json"),
        ("scan.startup.mode", "earliest"),
        ("batch.size", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, true)]));
    let mut source = KafkaConnector::default()
        .open(&options, &schema, 0, 1, None)
        .unwrap();
    assert_eq!(source.splits(), 2);
    assert!(
        !source.split_caught_up(0) && !source.split_caught_up(1),
        "nothing fetched yet: neither partition is caught up"
    );
    // Read partition 0's 200 records; until the last is handed out it is
    // not caught up.
    let mut rows = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows < 200 {
        assert!(Instant::now() < deadline, "read {rows} of 200 rows");
        assert!(!source.split_caught_up(0), "{rows} of 200 rows read");
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(500), source.next_batch())
            .await
            .map(|r| r.unwrap())
        {
            assert_eq!(source.last_split(), 0);
            rows += b.num_rows();
        }
    }
    assert_eq!(rows, 200);
    // Both partitions get to their end (the empty one too).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(source.split_caught_up(0) && source.split_caught_up(1)) {
        assert!(Instant::now() < deadline, "both partitions read to the end");
        let got = tokio::time::timeout(Duration::from_millis(200), source.next_batch()).await;
        assert!(got.is_err(), "no more rows: {got:?}");
    }
    // New records: partition 1 is behind again until they are handed out.
    produce(&topic, &[(1, click(500))]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the new record arrives");
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(200), source.next_batch())
            .await
            .map(|r| r.unwrap())
        {
            assert_eq!((source.last_split(), b.num_rows()), (1, 1));
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !source.split_caught_up(1) {
        assert!(Instant::now() < deadline, "partition 1 read to its end again");
        let _ = tokio::time::timeout(Duration::from_millis(200), source.next_batch()).await;
    }
}

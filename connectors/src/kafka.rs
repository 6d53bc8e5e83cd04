//! The `kafka` source: a topic's records decoded into Arrow batches.
//!
//! ```sql
//! CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP,
//!                       part INT METADATA FROM 'partition',
//!                       WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
//! WITH (connector = 'kafka', topic = 'clicks',
//!       'properties.bootstrap.servers' = '127.0.0.1:9092',
//!       'scan.startup.mode' = 'earliest', format = 'json', 'bad_records' = 'skip');
//! ```
//!
//! Each parallel source task is assigned the topic's partitions `k` with
//! `k % tasks == task` (manual assignment: Sluice, not the group
//! coordinator, decides who reads what). Records are fetched by librdkafka
//! (rdkafka with its bundled librdkafka) and decoded a batch at a time by the
//! vectorized decoders of [`crate::format`] (json, csv, raw). Metadata
//! columns (`METADATA FROM 'key' | 'partition' | 'offset' | 'timestamp' |
//! 'headers' | 'topic'`) are filled from the records. `bad_records` says what
//! happens to a malformed record: `fail` (the default: the job fails with the
//! record's partition, offset and error), `skip` (counted in SHOW JOBS as bad
//! rows) or `dead_letter` (counted, and written to a topic or path).
//!
//! A lost broker does not fail the job: librdkafka reconnects, consumption
//! errors are retried with backoff for `scan.retry.timeout` (default 5
//! minutes), and SHOW JOBS shows the retrying state; the partitions' fetch
//! positions are kept, so nothing is lost or read twice when the broker is
//! back. SHOW JOBS also shows each partition's position and lag (from
//! librdkafka's statistics).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::Producer as _;

use arrow::array::RecordBatch;
use arrow::array::{
    Array, ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{Field, SchemaRef};
use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use sluice_engine::stream::metadata_key;
use sluice_engine::stream::with_op_column;
use sluice_engine::{ErrorKind, Result, SinkConnector, SluiceError, Source, SourceConnector, StoreRegistry};

use crate::avro::{AvroEncoder, AvroFraming, Registry};
use crate::format::{
    BadRecord, BadRecordPolicy, BadRecords, Format, Layout, RecordDecoder, check_metadata_columns,
    decoding_source_options, is_bad_record_option, run_aside, unique_suffix,
};

const OWN_OPTIONS: &[&str] = &[
    "topic",
    "scan.startup.mode",
    "scan.startup.timestamp-millis",
    "scan.startup.specific-offsets",
    "scan.record.max-bytes",
    "scan.retry.timeout",
    "commit.offsets.on.checkpoint",
    "scan.bounded.mode",
    "scan.bounded.specific-offsets",
    "batch.size",
    "batch.linger.ms",
];

static OPTIONS: LazyLock<Vec<&'static str>> = LazyLock::new(|| decoding_source_options(OWN_OPTIONS));

/// The metadata keys a kafka stream's columns can be filled from.
const METADATA: &[&str] = &["key", "partition", "offset", "timestamp", "headers", "topic"];

/// How long CREATE STREAM waits for the broker to describe the topic.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The `kafka` connector. `stores` serve dead letter paths on s3:// and
/// hdfs://.
#[derive(Debug, Default)]
pub struct KafkaConnector {
    stores: StoreRegistry,
}

impl KafkaConnector {
    pub fn new(stores: StoreRegistry) -> Self {
        Self { stores }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Startup {
    Earliest,
    Latest,
    GroupOffsets,
    Timestamp(i64),
    Specific(BTreeMap<i32, i64>),
}

#[derive(Debug, Clone)]
struct Options {
    topic: String,
    properties: BTreeMap<String, String>,
    startup: Startup,
    format: Format,
    bad_records: BadRecordPolicy,
    max_record_bytes: usize,
    retry_timeout: Duration,
    batch: usize,
    linger: Duration,
    /// Commit offsets to the consumer group when a checkpoint completes.
    commit_offsets: bool,
    /// Where reading stops (a bounded stream), if it does.
    bounded: Bounded,
}

/// `scan.bounded.mode` (Flink's names): where a bounded Kafka stream ends.
#[derive(Debug, Clone)]
enum Bounded {
    Unbounded,
    /// The partitions' ends when the stream opens.
    Latest,
    /// Before these offsets (exclusive); partitions not named are not read.
    Specific(BTreeMap<i32, i64>),
}

fn parse_specific(v: &str) -> Result<BTreeMap<i32, i64>> {
    // Flink's format: 'partition:0,offset:42;partition:1,offset:300'
    let bad = || {
        SluiceError::invalid_parameter(format!(
            "'scan.startup.specific-offsets' = '{v}': write 'partition:0,offset:42;partition:1,offset:300'"
        ))
    };
    let mut out = BTreeMap::new();
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once(',').ok_or_else(bad)?;
        let p = p.trim().strip_prefix("partition:").ok_or_else(bad)?.trim();
        let o = o.trim().strip_prefix("offset:").ok_or_else(bad)?.trim();
        out.insert(p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?);
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// What the kafka source and sink share: the topic and the `properties.*`
/// passed to librdkafka (bootstrap servers required).
fn common_options(
    options: &BTreeMap<String, String>,
    what: &str,
) -> Result<(String, BTreeMap<String, String>)> {
    let topic = options
        .get("topic")
        .cloned()
        .ok_or_else(|| SluiceError::invalid_parameter(format!("the kafka {what} needs option 'topic'")))?;
    let properties: BTreeMap<String, String> = options
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("properties.").map(|p| (p.to_string(), v.clone())))
        .collect();
    if !properties.contains_key("bootstrap.servers") {
        return Err(SluiceError::invalid_parameter(format!(
            "the kafka {what} needs option 'properties.bootstrap.servers'"
        )));
    }
    Ok((topic, properties))
}

/// A numeric option, or its default.
fn number(options: &BTreeMap<String, String>, key: &str, default: u64) -> Result<u64> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| SluiceError::invalid_parameter(format!("option '{key}': '{v}' is not a number"))),
    }
}

impl Options {
    fn parse(options: &BTreeMap<String, String>) -> Result<Self> {
        let (topic, properties) = common_options(options, "source")?;
        let startup = match options
            .get("scan.startup.mode")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("earliest-offset") | Some("earliest") => Startup::Earliest,
            Some("latest-offset") | Some("latest") => Startup::Latest,
            Some("group-offsets") => Startup::GroupOffsets,
            Some("timestamp") => {
                let ms = options
                    .get("scan.startup.timestamp-millis")
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| {
                        SluiceError::invalid_parameter(
                            "'scan.startup.mode' = 'timestamp' needs 'scan.startup.timestamp-millis' (ms since the epoch)",
                        )
                    })?;
                Startup::Timestamp(ms)
            }
            Some("specific-offsets") => {
                let v = options.get("scan.startup.specific-offsets").ok_or_else(|| {
                    SluiceError::invalid_parameter(
                        "'scan.startup.mode' = 'specific-offsets' needs 'scan.startup.specific-offsets'",
                    )
                })?;
                Startup::Specific(parse_specific(v)?)
            }
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "'scan.startup.mode' = '{other}': use earliest-offset, latest-offset, group-offsets, \
                     timestamp or specific-offsets"
                )));
            }
        };
        Ok(Self {
            startup,
            format: Format::parse(
                options,
                &["json", "csv", "raw", "avro", "avro-confluent", "debezium-json"],
                false,
            )?,
            bad_records: BadRecordPolicy::parse(options, Some(&properties))?,
            max_record_bytes: number(options, "scan.record.max-bytes", 16 << 20)? as usize,
            retry_timeout: Duration::from_secs(number(options, "scan.retry.timeout", 300)?),
            bounded: match options.get("scan.bounded.mode").map(|s| s.as_str()) {
                None | Some("unbounded") => Bounded::Unbounded,
                Some("latest-offset") => Bounded::Latest,
                Some("specific-offsets") => {
                    let v = options.get("scan.bounded.specific-offsets").ok_or_else(|| {
                        SluiceError::invalid_parameter(
                            "'scan.bounded.mode' = 'specific-offsets' needs 'scan.bounded.specific-offsets'",
                        )
                    })?;
                    Bounded::Specific(parse_specific(v)?)
                }
                Some(other) => {
                    return Err(SluiceError::invalid_parameter(format!(
                        "'scan.bounded.mode' = '{other}': use unbounded, latest-offset or specific-offsets"
                    )));
                }
            },
            commit_offsets: match options.get("commit.offsets.on.checkpoint") {
                Some(v) => crate::storage::parse_bool("commit.offsets.on.checkpoint", v)?,
                None => true,
            },
            batch: number(options, "batch.size", 4096)?.max(1) as usize,
            linger: Duration::from_millis(number(options, "batch.linger.ms", 20)?),
            topic,
            properties,
        })
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Sluice assigns partitions itself and keeps no offsets in Kafka yet.
        config
            .set("group.id", "sluice")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000")
            // librdkafka stops fetching a partition for this long once its
            // local queue holds `queued.min.messages`; the default (1 s)
            // leaves a fast reader idle for most of each second.
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        // The end of a partition is how a source knows it is caught up:
        // only then may the partition count as idle (see
        // `Source::split_caught_up`).
        config.set("enable.partition.eof", "true");
        config
    }

    /// The topic's partition count; a clear error within seconds when the
    /// broker is unreachable or the topic does not exist.
    fn partitions(&self) -> Result<i32> {
        topic_partitions(&self.client_config(), &self.topic)
    }
}

/// How many partitions `topic` has; a clear error within seconds when the
/// broker is unreachable or the topic does not exist.
pub(crate) fn topic_partitions(config: &ClientConfig, topic: &str) -> Result<i32> {
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_string();
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| SluiceError::invalid_parameter(format!("kafka client for topic '{topic}': {e}")))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| {
            SluiceError::new(
                ErrorKind::StorageUnavailable,
                format!(
                    "kafka brokers {brokers} did not describe topic '{topic}' within {}s: {e}",
                    METADATA_TIMEOUT.as_secs()
                ),
            )
        })?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| {
            SluiceError::new(
                ErrorKind::UndefinedTable,
                format!("kafka topic '{topic}' does not exist on {brokers}"),
            )
        })?;
    Ok(found.partitions().len() as i32)
}

impl SourceConnector for KafkaConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn option_keys(&self) -> &[&'static str] {
        &OPTIONS
    }

    fn accepts_option(&self, key: &str) -> bool {
        OPTIONS.contains(&key)
            || key.starts_with("properties.")
            || is_bad_record_option(key)
            || self.stores.is_store_option(key)
    }

    fn schema(&self, options: &BTreeMap<String, String>, declared: Option<&SchemaRef>) -> Result<SchemaRef> {
        let Some(schema) = declared else {
            return Err(SluiceError::invalid_parameter(
                "a kafka stream declares its columns: CREATE STREAM name (col TYPE, ...) WITH (connector = 'kafka', ...)",
            ));
        };
        check_metadata_columns(schema, "kafka", METADATA)?;
        let o = Options::parse(options)?;
        RecordDecoder::new(o.format.clone(), Layout::with_metadata(schema).payload().clone())?;
        o.partitions()?;
        o.bad_records.check()?;
        Ok(schema.clone())
    }

    fn is_bounded(&self, _options: &BTreeMap<String, String>) -> bool {
        false
    }

    fn is_changelog(&self, options: &BTreeMap<String, String>) -> bool {
        options
            .get("format")
            .is_some_and(|f| f.eq_ignore_ascii_case("debezium-json"))
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        partition: usize,
        partitions: usize,
        resume: Option<&str>,
    ) -> Result<Box<dyn Source>> {
        let o = Options::parse(options)?;
        let count = o.partitions()?;
        // A checkpoint's offsets win over the startup mode.
        let resumed = resume.map(parse_position).transpose()?.unwrap_or_default();
        let context = KafkaContext::default();
        let consumer: BaseConsumer<KafkaContext> = o
            .client_config()
            .create_with_context(context.clone())
            .map_err(|e| SluiceError::invalid_parameter(format!("kafka consumer: {e}")))?;
        let mine: Vec<i32> = (0..count)
            .filter(|k| *k as usize % partitions.max(1) == partition)
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        for k in &mine {
            let offset = match (&o.startup, resumed.get(k)) {
                (_, Some(next)) => Offset::Offset(*next),
                (Startup::Earliest, _) => Offset::Beginning,
                (Startup::Latest, _) => Offset::End,
                (Startup::GroupOffsets, _) => Offset::Stored,
                (Startup::Timestamp(ms), _) => {
                    by_time
                        .add_partition_offset(&o.topic, *k, Offset::Offset(*ms))
                        .map_err(|e| SluiceError::internal(format!("kafka assignment: {e}")))?;
                    continue;
                }
                (Startup::Specific(m), _) => {
                    m.get(k).map(|o| Offset::Offset(*o)).unwrap_or(Offset::Beginning)
                }
            };
            tpl.add_partition_offset(&o.topic, *k, offset)
                .map_err(|e| SluiceError::internal(format!("kafka assignment: {e}")))?;
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, METADATA_TIMEOUT)
                .map_err(|e| {
                    SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("kafka offsets for timestamp: {e}"),
                    )
                })?;
            for e in found.elements() {
                tpl.add_partition_offset(&o.topic, e.partition(), e.offset())
                    .map_err(|e| SluiceError::internal(format!("kafka assignment: {e}")))?;
            }
        }
        // A bounded stream: where each partition stops, and where it starts
        // when that is known (a partition already at its stop is done).
        let (stop, start) = match &o.bounded {
            Bounded::Unbounded => (None, vec![None; mine.len()]),
            bounded => {
                let mut stop = Vec::with_capacity(mine.len());
                let mut start = Vec::with_capacity(mine.len());
                for k in &mine {
                    let (low, high) = consumer
                        .fetch_watermarks(&o.topic, *k, METADATA_TIMEOUT)
                        .map_err(|e| {
                            SluiceError::new(
                                ErrorKind::StorageUnavailable,
                                format!("kafka offsets of {} partition {k}: {e}", o.topic),
                            )
                        })?;
                    stop.push(match bounded {
                        Bounded::Specific(m) => m.get(k).copied().unwrap_or(i64::MIN),
                        _ => high,
                    });
                    start.push(match (&o.startup, resumed.get(k)) {
                        (_, Some(next)) => Some(*next),
                        (Startup::Earliest, _) => Some(low),
                        (Startup::Latest, _) => Some(high),
                        (Startup::Specific(m), _) => Some(m.get(k).copied().unwrap_or(low)),
                        _ => None,
                    });
                }
                (Some(stop), start)
            }
        };
        consumer
            .assign(&tpl)
            .map_err(|e| SluiceError::internal(format!("kafka assignment: {e}")))?;
        let layout = Layout::with_metadata(schema);
        let decoder = RecordDecoder::new(o.format.clone(), layout.payload().clone())?;
        let store_options: BTreeMap<String, String> = options
            .iter()
            .filter(|(k, _)| self.stores.is_store_option(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let bad = BadRecords::open(
            o.bad_records.clone(),
            &self.stores,
            &store_options,
            format!("kafka-{}-{partition}-{}", o.topic, unique_suffix()),
        )?;
        let wants_key = layout
            .schema()
            .fields()
            .iter()
            .any(|f| metadata_key(f) == Some("key"));
        let wants_headers = layout
            .schema()
            .fields()
            .iter()
            .any(|f| metadata_key(f) == Some("headers"));
        let idle = mine.is_empty();
        // librdkafka is polled on a thread of its own, which packs records
        // into batches: no async wake-up, timer or allocation per record.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        if !idle {
            let fetch = Fetcher {
                consumer,
                tx,
                batch: o.batch,
                linger: o.linger,
                wants_key,
                wants_headers,
            };
            std::thread::Builder::new()
                .name(format!("kafka-{}-{partition}", o.topic))
                .spawn(move || fetch.run())
                .map_err(|e| SluiceError::internal(format!("kafka fetch thread: {e}")))?;
        }
        Ok(Box::new(KafkaSource {
            rx,
            context,
            layout,
            decoder,
            options: o,
            idle,
            next_offsets: vec![None; mine.len()],
            at_end: vec![false; mine.len()],
            emitted: mine.iter().map(|k| resumed.get(k).copied()).collect(),
            partitions: mine,
            bad,
            pending: None,
            ready: Default::default(),
            last_split: 0,
            retry: None,
            group: None,
            stop,
            start,
        }))
    }
}

/// A checkpointed position: `partition:next_offset,...`.
fn parse_position(position: &str) -> Result<BTreeMap<i32, i64>> {
    let bad = || SluiceError::internal(format!("kafka: bad checkpointed position '{position}'"));
    position
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (p, o) = pair.split_once(':').ok_or_else(bad)?;
            Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
        })
        .collect()
}

/// What the fetch thread hands the source task.
enum Fetch {
    Records(Fetched),
    /// A consumption error (librdkafka keeps retrying by itself).
    Error(String),
}

/// Records polled from librdkafka: payloads and keys packed into one
/// buffer.
#[derive(Default)]
struct Fetched {
    buf: Vec<u8>,
    records: Vec<Record>,
    /// Per partition: the offset after the last message (tombstones too).
    next_offsets: BTreeMap<i32, i64>,
    /// Partitions read to their end after the last of these messages.
    at_end: BTreeSet<i32>,
}

/// A record's payload (and key) in `Fetched::buf`, position and metadata.
struct Record {
    payload: std::ops::Range<usize>,
    key: Option<std::ops::Range<usize>>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    headers: Option<String>,
}

/// Polls a consumer until the source task goes away, sending a batch when
/// it has `batch` records or `linger` passed since its first one.
struct Fetcher {
    consumer: BaseConsumer<KafkaContext>,
    tx: tokio::sync::mpsc::Sender<Fetch>,
    batch: usize,
    linger: Duration,
    wants_key: bool,
    wants_headers: bool,
}

impl Fetcher {
    fn run(self) {
        let mut current = Fetched::default();
        let mut deadline: Option<Instant> = None;
        let mut failures = 0u32;
        while !self.tx.is_closed() {
            let wait = deadline.map_or(Duration::from_millis(100), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match self.consumer.poll(wait) {
                Some(Ok(msg)) => {
                    failures = 0;
                    current.next_offsets.insert(msg.partition(), msg.offset() + 1);
                    current.at_end.remove(&msg.partition());
                    // A tombstone (no value) carries no row.
                    if let Some(payload) = msg.payload() {
                        let start = current.buf.len();
                        current.buf.extend_from_slice(payload);
                        let payload = start..current.buf.len();
                        let key = match msg.key() {
                            Some(k) if self.wants_key => {
                                let start = current.buf.len();
                                current.buf.extend_from_slice(k);
                                Some(start..current.buf.len())
                            }
                            _ => None,
                        };
                        current.records.push(Record {
                            payload,
                            key,
                            partition: msg.partition(),
                            offset: msg.offset(),
                            timestamp: msg.timestamp().to_millis(),
                            headers: self
                                .wants_headers
                                .then(|| msg.headers().map(headers_json).unwrap_or_else(|| "{}".into())),
                        });
                    }
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + self.linger);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    failures = 0;
                    current.at_end.insert(p);
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + self.linger);
                    }
                }
                Some(Err(e)) => {
                    // Hand out what was fetched, then say what failed and
                    // give the broker a moment.
                    if !self.send(&mut current, &mut deadline) {
                        return;
                    }
                    if self.tx.blocking_send(Fetch::Error(e.to_string())).is_err() {
                        return;
                    }
                    failures += 1;
                    std::thread::sleep(
                        Duration::from_millis(100 << failures.min(5)).min(Duration::from_secs(3)),
                    );
                    continue;
                }
                None => {}
            }
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if (current.records.len() >= self.batch || due) && !self.send(&mut current, &mut deadline) {
                return;
            }
        }
    }

    /// Sends what was gathered (if anything); false when the task is gone.
    fn send(&self, current: &mut Fetched, deadline: &mut Option<Instant>) -> bool {
        *deadline = None;
        if current.next_offsets.is_empty() && current.at_end.is_empty() {
            return true;
        }
        // The next batch starts with room for as much as this one had.
        let (bytes, records) = (current.buf.capacity(), current.records.capacity());
        let done = std::mem::take(current);
        current.buf.reserve(bytes);
        current.records.reserve(records);
        self.tx.blocking_send(Fetch::Records(done)).is_ok()
    }
}

/// What librdkafka tells a source task outside of messages: the last
/// client-level error (a lost broker) and the partitions' high watermarks
/// from its statistics.
#[derive(Clone, Default)]
struct KafkaContext {
    shared: Arc<Mutex<ContextState>>,
}

#[derive(Default)]
struct ContextState {
    last_error: Option<(Instant, String)>,
    /// partition -> high watermark offset.
    high: BTreeMap<i32, i64>,
}

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition comes through here too (and to the fetch
        // thread's poll, which uses it): not an error.
        if let KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) = error {
            return;
        }
        tracing::warn!("kafka: {error}: {reason}");
        let mut s = self.shared.lock().expect("kafka context lock");
        s.last_error = Some((Instant::now(), format!("{error}: {reason}")));
    }

    fn stats(&self, statistics: Statistics) {
        let mut s = self.shared.lock().expect("kafka context lock");
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.hi_offset >= 0 {
                    s.high.insert(*id, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for KafkaContext {}

struct KafkaSource {
    /// Batches of records from the fetch thread.
    rx: tokio::sync::mpsc::Receiver<Fetch>,
    context: KafkaContext,
    layout: Layout,
    decoder: RecordDecoder,
    options: Options,
    /// No partitions for this task (more tasks than partitions).
    idle: bool,
    /// The Kafka partitions this task reads; a partition's index here is
    /// its split number (each split has its own watermark).
    partitions: Vec<i32>,
    /// Per split: the offset after the last record received.
    next_offsets: Vec<Option<i64>>,
    /// Per split: the offset after the last record handed out (the
    /// checkpointed position).
    emitted: Vec<Option<i64>>,
    /// Per split: read to the end of its partition (as of the last fetch).
    at_end: Vec<bool>,
    bad: BadRecords,
    /// Records received and not decoded yet. Kept here, not in a local, so
    /// that `next_batch` can be cancelled (the runtime wakes up
    /// periodically to advance watermarks past idle partitions) without
    /// losing a record.
    pending: Option<Fetched>,
    /// Decoded batches (one per partition, with the offset after its
    /// records; `None` when every record was bad) not handed out yet.
    ready: std::collections::VecDeque<(usize, Option<RecordBatch>, i64)>,
    last_split: usize,
    /// Consumption failing since, attempts, last error.
    retry: Option<(Instant, u32, String)>,
    /// Commits offsets to the consumer group (made at the first completed
    /// checkpoint).
    group: Option<Arc<BaseConsumer>>,
    /// A bounded stream: per split, the offset reading stops before.
    stop: Option<Vec<i64>>,
    /// Per split, the first offset read, where known.
    start: Vec<Option<i64>>,
}

impl KafkaSource {
    /// A bounded stream read every partition up to its stop.
    fn bounded_done(&self) -> bool {
        let Some(stop) = &self.stop else {
            return false;
        };
        // A partition a specific-offsets bound does not name is not read.
        stop.iter().enumerate().all(|(s, stop)| {
            *stop == i64::MIN || self.emitted[s].or(self.start[s]).is_some_and(|at| at >= *stop)
        })
    }

    /// Decodes one partition's records into the declared columns; malformed
    /// ones go to the bad-record policy.
    fn decode(&mut self, buf: &[u8], records: &[&Record]) -> Result<Option<RecordBatch>> {
        let mut bad = Vec::new();
        let max = self.options.max_record_bytes;
        let (payloads, sized): (Vec<&[u8]>, Vec<usize>) = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                if r.payload.len() > max {
                    bad.push((
                        i,
                        format!(
                            "record of {} bytes exceeds 'scan.record.max-bytes' = {max}",
                            r.payload.len()
                        ),
                    ));
                    None
                } else {
                    Some((&buf[r.payload.clone()], i))
                }
            })
            .unzip();
        let (batch, kept) = self.decoder.decode(&payloads, |i, e| {
            bad.push((sized[i], e));
            Ok(())
        })?;
        // In the order they were read.
        bad.sort_by_key(|(i, _)| *i);
        for (i, error) in bad {
            let r = &records[i];
            self.bad.record(BadRecord {
                raw: buf[r.payload.clone()].to_vec(),
                error,
                position: vec![
                    ("topic", Value::from(self.options.topic.clone())),
                    ("partition", Value::from(r.partition)),
                    ("offset", Value::from(r.offset)),
                ],
            })?;
        }
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let rows: Vec<&Record> = match kept {
            None => sized.iter().map(|i| records[*i]).collect(),
            Some(kept) => kept.iter().map(|k| records[sized[*k]]).collect(),
        };
        let topic = &self.options.topic;
        // A changelog's op column rides along after the declared columns.
        let (batch, op) = if self.decoder.is_changelog() {
            let n = batch.num_columns();
            (
                batch.project(&(0..n - 1).collect::<Vec<_>>())?,
                Some(batch.column(n - 1).clone()),
            )
        } else {
            (batch, None)
        };
        let batch = self.layout.assemble(batch, |field: &Field| {
            let array: ArrayRef = match metadata_key(field).unwrap_or_default() {
                "key" => Arc::new(BinaryArray::from_iter(
                    rows.iter().map(|r| r.key.clone().map(|k| &buf[k])),
                )),
                "partition" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.partition))),
                "offset" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
                "timestamp" => Arc::new(TimestampMillisecondArray::from_iter(
                    rows.iter().map(|r| r.timestamp),
                )),
                "headers" => Arc::new(StringArray::from_iter(rows.iter().map(|r| r.headers.as_deref()))),
                "topic" => Arc::new(StringArray::from_iter_values(rows.iter().map(|_| topic.as_str()))),
                other => return Err(SluiceError::internal(format!("kafka metadata '{other}'"))),
            };
            Ok(array)
        })?;
        let batch = match op {
            None => batch,
            Some(op) => {
                let mut columns = batch.columns().to_vec();
                columns.push(op);
                RecordBatch::try_new(with_op_column(&batch.schema()), columns)?
            }
        };
        Ok(Some(batch))
    }

    /// A consumption error: retried with backoff until `scan.retry.timeout`.
    async fn backoff(&mut self, error: String) -> Result<()> {
        let attempts = self.failed(error)?;
        let delay = Duration::from_millis(100 << attempts.min(6)).min(Duration::from_secs(5));
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Notes a failure; an error once failures have lasted longer than
    /// `scan.retry.timeout`. Returns the attempts so far.
    fn failed(&mut self, error: String) -> Result<u32> {
        let (since, attempts) = match &self.retry {
            Some((since, attempts, _)) => (*since, attempts + 1),
            None => (Instant::now(), 1),
        };
        tracing::warn!(topic = %self.options.topic, attempts, "kafka consumption failed: {error}");
        if since.elapsed() > self.options.retry_timeout {
            return Err(SluiceError::new(
                ErrorKind::StorageUnavailable,
                format!(
                    "kafka topic '{}': failing for {}s ({attempts} attempts; 'scan.retry.timeout' = {}): {error}",
                    self.options.topic,
                    since.elapsed().as_secs(),
                    self.options.retry_timeout.as_secs()
                ),
            ));
        }
        self.retry = Some((since, attempts, error));
        Ok(attempts)
    }
}

fn headers_json(headers: &rdkafka::message::BorrowedHeaders) -> String {
    let mut object = serde_json::Map::new();
    for h in headers.iter() {
        let v = match h.value {
            None => Value::Null,
            Some(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        };
        object.insert(h.key.to_string(), v);
    }
    Value::Object(object).to_string()
}

#[async_trait]
impl Source for KafkaSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.idle {
            if self.stop.is_some() {
                return Ok(None);
            }
            // Nothing assigned: never produce, never end.
            futures::future::pending::<()>().await;
        }
        loop {
            self.bad.flush().await?;
            if let Some((split, batch, next)) = self.ready.pop_front() {
                self.emitted[split] = Some(next);
                if let Some(batch) = batch {
                    self.last_split = split;
                    return Ok(Some(batch));
                }
                continue;
            }
            if self.pending.is_none() && self.bounded_done() {
                return Ok(None);
            }
            if self.pending.is_none() {
                // Cancel-safe: a batch is either received or left queued.
                match self.rx.recv().await {
                    Some(Fetch::Records(fetched)) => {
                        self.retry = None;
                        for (partition, next) in &fetched.next_offsets {
                            if let Some(split) = self.partitions.iter().position(|p| p == partition) {
                                self.next_offsets[split] = Some(*next);
                                self.at_end[split] = false;
                            }
                        }
                        for partition in &fetched.at_end {
                            if let Some(split) = self.partitions.iter().position(|p| p == partition) {
                                self.at_end[split] = true;
                            }
                        }
                        self.pending = Some(fetched);
                    }
                    // The fetch thread waits before polling again.
                    Some(Fetch::Error(e)) => {
                        self.failed(e)?;
                        continue;
                    }
                    None => return Err(SluiceError::internal("the kafka fetch thread stopped")),
                }
            }
            let fetched = self.pending.as_ref().expect("pending records");
            // Writer schemas the records need (Avro with a registry) are
            // fetched before the records leave `pending`, so cancelling
            // here loses nothing; a registry that cannot be reached is
            // retried like the broker.
            let payloads: Vec<&[u8]> = fetched
                .records
                .iter()
                .map(|r| &fetched.buf[r.payload.clone()])
                .collect();
            if let Err(e) = self.decoder.prepare(&payloads).await {
                self.backoff(e.to_string()).await?;
                continue;
            }
            self.retry = None;
            let fetched = self.pending.take().expect("pending records");
            // One batch per partition: each partition is a split with its
            // own watermark.
            let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
            for r in &fetched.records {
                by_partition.entry(r.partition).or_default().push(r);
            }
            for (partition, mut records) in by_partition {
                let split = self.partitions.iter().position(|p| *p == partition).unwrap_or(0);
                let mut next = fetched
                    .next_offsets
                    .get(&partition)
                    .copied()
                    .unwrap_or_else(|| records.last().map_or(0, |r| r.offset + 1));
                if let Some(stop) = self.stop.as_ref().map(|s| s[split]) {
                    if self.emitted[split]
                        .or(self.start[split])
                        .is_some_and(|at| at >= stop)
                    {
                        continue; // this partition is done
                    }
                    records.retain(|r| r.offset < stop);
                    next = next.min(stop);
                }
                let batch = if records.is_empty() {
                    None
                } else {
                    self.decode(&fetched.buf, &records)?
                };
                self.ready.push_back((split, batch, next));
            }
        }
    }

    fn splits(&self) -> usize {
        self.partitions.len().max(1)
    }

    fn last_split(&self) -> usize {
        self.last_split
    }

    /// Read to the end of the partition, and nothing of it still waiting
    /// here. A partition not fetched yet (a slow start, a stalled broker)
    /// is not caught up.
    fn split_caught_up(&self, split: usize) -> bool {
        if self.idle {
            return true;
        }
        let Some(partition) = self.partitions.get(split) else {
            return true;
        };
        self.at_end[split]
            && !self.ready.iter().any(|(s, _, _)| *s == split)
            && !self
                .pending
                .as_ref()
                .is_some_and(|f| f.next_offsets.contains_key(partition))
    }

    fn take_bad_records(&mut self) -> u64 {
        self.bad.take_count()
    }

    /// `partition:next_offset,...` for the partitions read so far.
    /// Commits the checkpoint's offsets to the consumer group
    /// (`properties.group.id`, default `sluice`) so that tools reading the
    /// group's lag see how far the job is; information only, never read
    /// back (unless a new job asks for `'scan.startup.mode' =
    /// 'group-offsets'`). A failed commit is logged and the next checkpoint
    /// commits again.
    fn checkpoint_completed(&mut self, position: &str) {
        if self.idle || !self.options.commit_offsets {
            return;
        }
        let Ok(offsets) = parse_position(position) else {
            return;
        };
        if offsets.is_empty() {
            return;
        }
        if self.group.is_none() {
            match self.options.client_config().create::<BaseConsumer>() {
                Ok(c) => self.group = Some(Arc::new(c)),
                Err(e) => {
                    tracing::warn!(topic = %self.options.topic, error = %e, "no client to commit offsets to the consumer group");
                    return;
                }
            }
        }
        let consumer = self.group.clone().expect("made above");
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            if tpl
                .add_partition_offset(&self.options.topic, p, Offset::Offset(o))
                .is_err()
            {
                return;
            }
        }
        let topic = self.options.topic.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
                tracing::warn!(%topic, error = %e, "committing offsets to the consumer group failed");
            }
        });
    }

    fn position(&self) -> Option<String> {
        Some(
            self.partitions
                .iter()
                .zip(&self.emitted)
                .filter_map(|(p, next)| next.map(|n| format!("{p}:{n}")))
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    fn status(&self) -> Option<String> {
        if self.idle {
            return None;
        }
        let shared = self.context.shared.lock().expect("kafka context lock");
        let mut parts = Vec::new();
        if let Some((since, attempts, error)) = &self.retry {
            parts.push(format!(
                "retrying for {}s ({attempts} attempts): {error}",
                since.elapsed().as_secs()
            ));
        } else if let Some((at, error)) = &shared.last_error
            && at.elapsed() < Duration::from_secs(30)
        {
            parts.push(format!("broker error {}s ago: {error}", at.elapsed().as_secs()));
        }
        for (split, p) in self.partitions.iter().enumerate() {
            let next = self.next_offsets[split];
            let lag = match (shared.high.get(p), next) {
                (Some(high), Some(next)) => format!(" lag={}", (high - next).max(0)),
                (Some(high), None) => format!(" lag<={high}"),
                _ => String::new(),
            };
            let at = next.map(|n| format!(" offset={n}")).unwrap_or_default();
            parts.push(format!("p{p}{at}{lag}"));
        }
        Some(parts.join(" "))
    }
}

/// Sends a record, waiting while librdkafka's queue is full (for tools
/// and benches that produce in bulk).
pub fn send_waiting<K, P>(
    producer: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    mut record: rdkafka::producer::BaseRecord<'_, K, P>,
) -> std::result::Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                // Let it deliver, then try again.
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_what_is_wrong() {
        let o = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = [("topic", "t"), ("properties.bootstrap.servers", "127.0.0.1:1")];
        assert!(Options::parse(&o(&base)).is_ok());
        let e = Options::parse(&o(&[("topic", "t")])).unwrap_err();
        assert!(e.to_string().contains("bootstrap.servers"), "{e}");
        let mut bad = base.to_vec();
        bad.push(("scan.startup.mode", "sometime"));
        let e = Options::parse(&o(&bad)).unwrap_err();
        assert!(e.to_string().contains("earliest-offset"), "{e}");
        assert_eq!(
            parse_specific("partition:0,offset:42;partition:1,offset:300").unwrap(),
            BTreeMap::from([(0, 42), (1, 300)])
        );
        assert!(parse_specific("0:42").is_err());
    }
}

/// The `kafka` sink: rows as JSON records.
///
/// ```sql
/// CREATE SINK page_totals WITH (connector = 'kafka', topic = 'page_totals',
///        'properties.bootstrap.servers' = '127.0.0.1:9092', format = 'json',
///        'sink.mode' = 'upsert', key = 'page') AS
///   SELECT page, count(*) AS views FROM clicks GROUP BY page;
/// ```
///
/// `sink.mode` = `append` (the default for append-only queries: one record
/// per row) or `upsert` (required for updating queries: the record key is
/// the key columns, the value the whole row, and a delete is a tombstone
/// unless the same key is re-inserted in the same change batch). `key`
/// names the key columns (one column: its text; several: a JSON object).
/// Records are handed to librdkafka as they come and awaited at every
/// watermark step and at the end (at-least-once until checkpoints exist).
#[derive(Debug, Default)]
pub struct KafkaSink;

const SINK_OPTIONS: &[&str] = &[
    "topic",
    "format",
    "sink.mode",
    "key",
    "avro-confluent.url",
    "avro-confluent.schema-registry.url",
    "avro-confluent.subject",
    "sink.delivery-guarantee",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum SinkFormat {
    Json,
    Csv,
    /// Debezium-style change envelopes: `{"before", "after", "op"}`.
    Debezium,
    /// Avro records with the schema derived from the query's columns:
    /// plain bodies, or the Confluent wire format (registry url, subject).
    Avro(Option<(String, String)>),
}

#[derive(Debug, Clone)]
struct SinkOptions {
    topic: String,
    properties: BTreeMap<String, String>,
    key: Vec<usize>,
    format: SinkFormat,
    /// `'sink.delivery-guarantee' = 'exactly-once'`: transactions committed
    /// when checkpoints complete.
    exactly_once: bool,
}

impl SinkOptions {
    fn parse(options: &BTreeMap<String, String>, schema: &SchemaRef, updating: bool) -> Result<Self> {
        let (topic, properties) = common_options(options, "sink")?;
        let format = match options.get("format").map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("json") => SinkFormat::Json,
            Some("csv") => SinkFormat::Csv,
            Some("debezium-json") => SinkFormat::Debezium,
            Some(name @ ("avro" | "avro-confluent")) => match AvroFraming::parse(name, options)? {
                AvroFraming::Plain { .. } => SinkFormat::Avro(None),
                AvroFraming::Confluent { url, subject } => {
                    let subject = subject.unwrap_or_else(|| format!("{topic}-value"));
                    SinkFormat::Avro(Some((url, subject)))
                }
            },
            Some(other) => {
                return Err(SluiceError::not_supported(format!(
                    "format '{other}' is not supported by the kafka sink; use json, csv, debezium-json, avro \
                     or avro-confluent"
                )));
            }
        };
        let key: Vec<usize> = match options.get("key") {
            None => vec![],
            Some(k) => k
                .split(',')
                .map(|c| c.trim())
                .filter(|c| !c.is_empty())
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        SluiceError::invalid_parameter(format!(
                            "key column '{c}' is not in the query's output"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        let upsert = match options
            .get("sink.mode")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None => updating && format != SinkFormat::Debezium,
            Some("append") => false,
            Some("upsert") => true,
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "'sink.mode' = '{other}': use append or upsert"
                )));
            }
        };
        if upsert && format == SinkFormat::Debezium {
            return Err(SluiceError::invalid_parameter(
                "format 'debezium-json' carries deletes in its envelopes; leave 'sink.mode' unset",
            ));
        }
        if updating && !upsert && format != SinkFormat::Debezium {
            return Err(SluiceError::not_supported(
                "the query's result is updating (a GROUP BY without windows retracts rows); write it to \
                 kafka with 'sink.mode' = 'upsert' and key = '<columns>', or with format = 'debezium-json'",
            ));
        }
        if upsert && key.is_empty() {
            return Err(SluiceError::invalid_parameter(
                "'sink.mode' = 'upsert' needs key = '<columns>' (the GROUP BY columns)",
            ));
        }
        let exactly_once = match options
            .get("sink.delivery-guarantee")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("at-least-once") => false,
            Some("exactly-once") => true,
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "'sink.delivery-guarantee' = '{other}': use at-least-once or exactly-once"
                )));
            }
        };
        Ok(Self {
            topic,
            properties,
            key,
            format,
            exactly_once,
        })
    }
}

/// Transactions of an exactly-once Kafka sink waiting for their checkpoint
/// to complete, and the producers free for the next ones, per lane.
///
/// A lane writes each epoch's records in a transaction of its own producer
/// (transactional ids `sluice-<job id>-<lane>-<n>`). At a barrier it flushes
/// and parks the open transaction here; when the checkpoint completes the
/// coordinator commits every parked transaction of that epoch or before. A
/// new producer can't commit another's transaction, so after a crash the
/// job restores from the newest checkpoint whose commit finished, and the
/// first use of each transactional id fences (aborts) what an earlier run
/// left open.
#[derive(Default)]
pub struct KafkaTransactions {
    pending: std::sync::Mutex<Vec<(u64, usize, TxnProducer)>>,
    free: std::sync::Mutex<HashMap<usize, Vec<TxnProducer>>>,
    committed: std::sync::atomic::AtomicU64,
}

/// A transactional producer and its transactional id (for the logs).
#[derive(Clone)]
struct TxnProducer {
    id: Arc<str>,
    producer: rdkafka::producer::FutureProducer,
}

impl std::fmt::Debug for KafkaTransactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransactions").finish_non_exhaustive()
    }
}

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl sluice_engine::sink::Committer for KafkaTransactions {
    async fn commit(&self, request: sluice_engine::sink::CommitRequest) -> Result<()> {
        let epoch = request.epoch.unwrap_or(u64::MAX);
        let due: Vec<_> = {
            let mut pending = self.pending.lock().expect("pending transactions");
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(e, _, _)| *e <= epoch);
            *pending = keep;
            due
        };
        let mut failed = None;
        for (e, lane, producer) in due {
            if failed.is_some() {
                self.pending
                    .lock()
                    .expect("pending transactions")
                    .push((e, lane, producer));
                continue;
            }
            let p = producer.producer.clone();
            let committed = tokio::task::spawn_blocking(move || p.commit_transaction(TXN_TIMEOUT))
                .await
                .map_err(|e| SluiceError::internal(format!("committing a kafka transaction: {e}")))?;
            match committed {
                Ok(()) => {
                    tracing::info!(
                        lane,
                        epoch = e,
                        checkpoint = epoch,
                        transactional_id = %producer.id,
                        "committed a kafka transaction"
                    );
                    self.free
                        .lock()
                        .expect("free producers")
                        .entry(lane)
                        .or_default()
                        .push(producer)
                }
                Err(err) => {
                    tracing::warn!(lane, epoch = e, checkpoint = epoch, transactional_id = %producer.id, error = %err, "a kafka transaction did not commit");
                    failed = Some(SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("committing the kafka transaction of lane {lane}, checkpoint {e}: {err}"),
                    ));
                    self.pending
                        .lock()
                        .expect("pending transactions")
                        .push((e, lane, producer));
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if epoch != u64::MAX {
            self.committed
                .fetch_max(epoch, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.committed.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    fn recommits(&self) -> bool {
        false
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An exactly-once lane's side: its transactional producers.
struct TxnLane {
    txns: Arc<dyn sluice_engine::sink::Committer>,
    lane: usize,
    config: ClientConfig,
    prefix: String,
    next_id: usize,
    /// The current producer's transactional id.
    current: Arc<str>,
    /// The current producer has been initialised for transactions.
    ready: bool,
    /// A transaction is open on the current producer.
    open: bool,
}

impl TxnLane {
    fn shared(&self) -> &KafkaTransactions {
        self.txns
            .as_any()
            .downcast_ref::<KafkaTransactions>()
            .expect("the kafka sink's committer")
    }

    /// A producer for the next transaction: a free one of this lane, or a
    /// new transactional id.
    fn next_producer(&mut self) -> Result<(TxnProducer, bool)> {
        if let Some(p) = self
            .shared()
            .free
            .lock()
            .expect("free producers")
            .get_mut(&self.lane)
            .and_then(Vec::pop)
        {
            return Ok((p, true));
        }
        let mut config = self.config.clone();
        let id = format!("{}-{}-{}", self.prefix, self.lane, self.next_id);
        tracing::info!(lane = self.lane, transactional_id = %id, "a new transactional producer");
        config.set("transactional.id", &id);
        self.next_id += 1;
        let producer = config
            .create()
            .map_err(|e| SluiceError::invalid_parameter(format!("kafka producer: {e}")))?;
        Ok((
            TxnProducer {
                id: id.into(),
                producer,
            },
            false,
        ))
    }
}

impl SinkConnector for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn option_keys(&self) -> &[&'static str] {
        SINK_OPTIONS
    }

    fn accepts_option(&self, key: &str) -> bool {
        SINK_OPTIONS.contains(&key) || key.starts_with("properties.")
    }

    fn validate(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
    ) -> Result<Option<sluice_engine::Landed>> {
        let o = SinkOptions::parse(options, schema, updating)?;
        // The schema must be one Avro can carry, and the registry must take it.
        if let SinkFormat::Avro(confluent) = &o.format {
            let json = AvroEncoder::schema_json(schema)?;
            AvroEncoder::new(schema, None)?;
            if let Some((url, subject)) = confluent {
                let registry = Registry::new(url)?;
                run_aside(registry.register(subject, &json), Duration::from_secs(15))?.ok_or_else(
                    || {
                        SluiceError::new(
                            ErrorKind::StorageUnavailable,
                            format!("schema registry {url}: no answer in 15s"),
                        )
                    },
                )??;
            }
        }
        // The topic must exist: a clear error now rather than a failed job.
        Options::parse(&BTreeMap::from([
            ("topic".to_string(), o.topic.clone()),
            (
                "properties.bootstrap.servers".to_string(),
                o.properties["bootstrap.servers"].clone(),
            ),
        ]))?
        .partitions()?;
        Ok(None)
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
        ctx: &sluice_engine::SinkContext,
        lane: usize,
        _lanes: usize,
    ) -> Result<Box<dyn sluice_engine::SinkWriter>> {
        let o = SinkOptions::parse(options, schema, updating)?;
        let mut config = ClientConfig::new();
        config.set("message.timeout.ms", "30000");
        // Upserts and change envelopes are only right in order: the
        // idempotent producer keeps a partition's records in the order they
        // were sent even when a request is retried (and sends each once).
        config.set("enable.idempotence", "true");
        for (k, v) in &o.properties {
            config.set(k, v);
        }
        let txn = if o.exactly_once {
            let Some(txns) = ctx.committer.clone() else {
                return Err(SluiceError::invalid_parameter(
                    "'sink.delivery-guarantee' = 'exactly-once' commits a transaction per checkpoint: \
                     turn checkpoints on (streaming.checkpoint_interval)",
                ));
            };
            config.set("transaction.timeout.ms", "60000");
            let mut t = TxnLane {
                txns,
                lane,
                config: config.clone(),
                prefix: format!("sluice-{}", ctx.job_id),
                next_id: 0,
                current: Arc::from(""),
                ready: false,
                open: false,
            };
            let (producer, ready) = t.next_producer()?;
            t.ready = ready;
            t.current = producer.id;
            Some((t, producer.producer))
        } else {
            None
        };
        let (txn, producer) = match txn {
            Some((t, p)) => (Some(t), p),
            None => (
                None,
                config
                    .create()
                    .map_err(|e| SluiceError::invalid_parameter(format!("kafka producer: {e}")))?,
            ),
        };
        Ok(Box::new(KafkaWriter {
            producer,
            options: o,
            schema: schema.clone(),
            updating,
            pending: Vec::new(),
            avro: None,
            txn,
        }))
    }

    fn committer(
        &self,
        options: &BTreeMap<String, String>,
        _ctx: &sluice_engine::SinkContext,
    ) -> Result<Option<Arc<dyn sluice_engine::sink::Committer>>> {
        let exactly_once = options
            .get("sink.delivery-guarantee")
            .is_some_and(|v| v.eq_ignore_ascii_case("exactly-once"));
        Ok(exactly_once.then(|| Arc::new(KafkaTransactions::default()) as _))
    }
}

struct KafkaWriter {
    producer: rdkafka::producer::FutureProducer,
    options: SinkOptions,
    schema: SchemaRef,
    updating: bool,
    /// Records sent and not yet acknowledged (with their value when debug
    /// logging is on: each delivery is logged with its offset).
    pending: Vec<(rdkafka::producer::DeliveryFuture, Option<Vec<u8>>)>,
    /// Made at the first write (Confluent: once the registry gave an id).
    avro: Option<AvroEncoder>,
    /// Exactly-once: the lane's transactions.
    txn: Option<TxnLane>,
}

impl KafkaWriter {
    /// Exactly-once: a transaction is open before a record is sent.
    async fn ensure_transaction(&mut self) -> Result<()> {
        let Some(t) = &mut self.txn else {
            return Ok(());
        };
        if t.open {
            return Ok(());
        }
        let p = self.producer.clone();
        let ready = t.ready;
        tokio::task::spawn_blocking(move || {
            if !ready {
                // Fences an earlier run's producer of this id (its open
                // transaction is aborted).
                p.init_transactions(TXN_TIMEOUT)?;
            }
            p.begin_transaction()
        })
        .await
        .map_err(|e| SluiceError::internal(format!("kafka transaction: {e}")))?
        .map_err(|e| SluiceError::new(ErrorKind::StorageUnavailable, format!("kafka transaction: {e}")))?;
        tracing::debug!(lane = t.lane, transactional_id = %t.current, initialised = !ready, "a kafka transaction began");
        t.ready = true;
        t.open = true;
        Ok(())
    }

    /// Exactly-once, at a barrier: the open transaction waits for the
    /// checkpoint; the next records go to another producer.
    fn park_transaction(&mut self, epoch: u64) -> Result<()> {
        let Some(t) = &mut self.txn else {
            return Ok(());
        };
        if !t.open {
            return Ok(());
        }
        let (next, ready) = t.next_producer()?;
        tracing::debug!(lane = t.lane, epoch, transactional_id = %t.current, "a kafka transaction waits for its checkpoint");
        let parked = TxnProducer {
            id: std::mem::replace(&mut t.current, next.id),
            producer: std::mem::replace(&mut self.producer, next.producer),
        };
        t.shared()
            .pending
            .lock()
            .expect("pending transactions")
            .push((epoch, t.lane, parked));
        t.ready = ready;
        t.open = false;
        Ok(())
    }
}

/// Rows of a batch as JSON objects, one per row.
fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect())
}

/// Rows of a batch as CSV lines (no header), one per row.
fn csv_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(Vec::new());
        w.write(&batch.slice(i, 1))?;
        let mut line = w.into_inner();
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        out.push(line);
    }
    Ok(out)
}

/// A JSON row's text (arrow-json writes valid UTF-8).
fn as_str(row: &[u8]) -> &str {
    std::str::from_utf8(row).unwrap_or("null")
}

impl KafkaWriter {
    fn keys(&self, rows: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        if self.options.key.is_empty() {
            return Ok(vec![None; rows.num_rows()]);
        }
        if self.options.key.len() == 1 {
            let col = arrow::compute::cast(
                rows.column(self.options.key[0]),
                &arrow::datatypes::DataType::Utf8,
            )?;
            let col = col
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("cast to Utf8");
            return Ok((0..rows.num_rows())
                .map(|i| {
                    Some(if col.is_null(i) {
                        Vec::new()
                    } else {
                        col.value(i).as_bytes().to_vec()
                    })
                })
                .collect());
        }
        Ok(json_rows(&rows.project(&self.options.key)?)?
            .into_iter()
            .map(Some)
            .collect())
    }

    async fn send(&mut self, key: Option<Vec<u8>>, value: Option<Vec<u8>>) -> Result<()> {
        self.ensure_transaction().await?;
        loop {
            let mut record = rdkafka::producer::FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.options.topic);
            if let Some(k) = &key {
                record = record.key(k);
            }
            if let Some(v) = &value {
                record = record.payload(v);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let logged =
                        tracing::enabled!(tracing::Level::DEBUG).then(|| value.clone().unwrap_or_default());
                    self.pending.push((delivery, logged));
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // librdkafka's queue is full: wait for what is in flight.
                    self.flush().await?;
                }
                Err((e, _)) => {
                    return Err(SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("kafka topic '{}': {e}", self.options.topic),
                    ));
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<()> {
        for (d, logged) in std::mem::take(&mut self.pending) {
            match d.await {
                Ok(Ok(rdkafka::producer::future_producer::Delivery {
                    partition, offset, ..
                })) => {
                    if let Some(value) = logged {
                        tracing::debug!(
                            transactional_id = self.txn.as_ref().map(|t| &*t.current),
                            partition,
                            offset,
                            value = %String::from_utf8_lossy(&value),
                            "delivered"
                        );
                    }
                }
                Ok(Err((e, _))) => {
                    return Err(SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("kafka topic '{}': delivery failed: {e}", self.options.topic),
                    ));
                }
                Err(_) => {
                    return Err(SluiceError::internal("kafka producer went away"));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl sluice_engine::SinkWriter for KafkaWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let (rows, ops) = if self.updating {
            let n = batch.num_columns();
            let ops = batch
                .column(n - 1)
                .as_any()
                .downcast_ref::<arrow::array::Int8Array>()
                .ok_or_else(|| SluiceError::internal("updating batch without op column"))?
                .clone();
            let rows = RecordBatch::try_new(self.schema.clone(), batch.columns()[..n - 1].to_vec())?;
            (rows, Some(ops))
        } else {
            (batch, None)
        };
        let keys = self.keys(&rows)?;
        let values = match &self.options.format {
            SinkFormat::Csv => csv_rows(&rows)?,
            SinkFormat::Avro(confluent) => {
                if self.avro.is_none() {
                    let id = match confluent {
                        None => None,
                        Some((url, subject)) => {
                            let json = AvroEncoder::schema_json(&self.schema)?;
                            Some(Registry::new(url)?.register(subject, &json).await?)
                        }
                    };
                    self.avro = Some(AvroEncoder::new(&self.schema, id)?);
                }
                self.avro.as_mut().expect("avro encoder").encode(&rows)?
            }
            _ => json_rows(&rows)?,
        };
        // A delete followed by an insert of the same key in this batch is
        // an update: upsert says it with the insert alone, Debezium with one
        // "u" envelope.
        let keyed = !self.options.key.is_empty();
        let mut last_insert: HashMap<&Option<Vec<u8>>, usize> = HashMap::new();
        if let Some(o) = &ops
            && keyed
        {
            for (j, key) in keys.iter().enumerate() {
                if o.value(j) > 0 {
                    last_insert.insert(key, j);
                }
            }
        }
        let is_delete = |i: usize| ops.as_ref().is_some_and(|o| o.value(i) < 0);
        let mut updated_from: HashMap<usize, usize> = HashMap::new();
        for i in 0..rows.num_rows() {
            let key = &keys[i];
            let reinserted = is_delete(i) && last_insert.get(key).is_some_and(|j| *j > i);
            match &self.options.format {
                SinkFormat::Debezium => {
                    if reinserted {
                        updated_from.insert(last_insert[key], i);
                        continue;
                    }
                    let envelope = if is_delete(i) {
                        format!(r#"{{"before":{},"after":null,"op":"d"}}"#, as_str(&values[i]))
                    } else if let Some(before) = updated_from.get(&i) {
                        format!(
                            r#"{{"before":{},"after":{},"op":"u"}}"#,
                            as_str(&values[*before]),
                            as_str(&values[i])
                        )
                    } else {
                        format!(r#"{{"before":null,"after":{},"op":"c"}}"#, as_str(&values[i]))
                    };
                    self.send(key.clone(), Some(envelope.into_bytes())).await?;
                }
                _ if is_delete(i) => {
                    if !reinserted {
                        self.send(key.clone(), None).await?;
                    }
                }
                _ => self.send(key.clone(), Some(values[i].clone())).await?,
            }
        }
        Ok(())
    }

    async fn on_watermark(&mut self, _watermark: i64) -> Result<()> {
        self.flush().await
    }

    /// The input ended: an exactly-once lane commits its last transaction
    /// itself (the end of input is not a checkpoint yet).
    async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        if let Some(t) = &mut self.txn
            && t.open
        {
            let p = self.producer.clone();
            tokio::task::spawn_blocking(move || p.commit_transaction(TXN_TIMEOUT))
                .await
                .map_err(|e| SluiceError::internal(format!("kafka transaction: {e}")))?
                .map_err(|e| {
                    SluiceError::new(ErrorKind::StorageUnavailable, format!("kafka transaction: {e}"))
                })?;
            t.open = false;
        }
        Ok(())
    }

    /// Every record before the barrier is acknowledged by the broker. With
    /// exactly-once they are in a transaction committed when the checkpoint
    /// completes; otherwise they are visible already (at-least-once).
    async fn checkpoint(&mut self, epoch: u64) -> Result<Vec<RecordBatch>> {
        self.flush().await?;
        self.park_transaction(epoch)?;
        Ok(vec![])
    }
}

//! The `kafka` source: a topic's records decoded into Arrow batches.
//!
//! ```sql
//! CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP,
//!                       WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
//! WITH (connector = 'kafka', topic = 'clicks',
//!       'properties.bootstrap.servers' = '127.0.0.1:9092',
//!       'scan.startup.mode' = 'earliest', format = 'json', 'bad_records' = 'skip');
//! ```
//!
//! Each parallel source task is assigned the topic's partitions `k` with
//! `k % tasks == task` (manual assignment: Sluice, not the group
//! coordinator, decides who reads what). Records are fetched by librdkafka
//! (rdkafka with its bundled librdkafka) and decoded a batch at a time with
//! arrow-json's vectorized decoder; only when a batch holds a malformed
//! record are its records decoded one by one to find it. `bad_records` says
//! what happens to a malformed record: `fail` (the default: the job fails
//! with the record's partition, offset and error) or `skip` (counted in
//! SHOW JOBS as bad rows).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::Array;
use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_engine::{ErrorKind, Result, SinkConnector, SluiceError, Source, SourceConnector};

const OPTIONS: &[&str] = &[
    "topic",
    "format",
    "scan.startup.mode",
    "scan.startup.timestamp-millis",
    "scan.startup.specific-offsets",
    "bad_records",
    "batch.size",
    "batch.linger.ms",
];

/// How long CREATE STREAM waits for the broker to describe the topic.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The `kafka` connector.
#[derive(Debug, Default)]
pub struct KafkaConnector;

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
    skip_bad: bool,
    batch: usize,
    linger: Duration,
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

/// What the kafka source and sink share: the topic, the `properties.*`
/// passed to librdkafka (bootstrap servers required), and the format.
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
    match options.get("format").map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("json") => Ok((topic, properties)),
        Some(other) => Err(SluiceError::not_supported(format!(
            "format '{other}' is not supported by the kafka {what} yet; use json"
        ))),
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
        let skip_bad = match options
            .get("bad_records")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("fail") => false,
            Some("skip") => true,
            Some("dead_letter") => {
                return Err(SluiceError::not_supported(
                    "'bad_records' = 'dead_letter' is not supported yet; use fail or skip",
                ));
            }
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "'bad_records' = '{other}': use fail or skip"
                )));
            }
        };
        let num = |key: &str, default: u64| -> Result<u64> {
            match options.get(key) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| {
                    SluiceError::invalid_parameter(format!("option '{key}': '{v}' is not a number"))
                }),
            }
        };
        Ok(Self {
            topic,
            properties,
            startup,
            skip_bad,
            batch: num("batch.size", 4096)?.max(1) as usize,
            linger: Duration::from_millis(num("batch.linger.ms", 20)?),
        })
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Sluice assigns partitions itself and keeps no offsets in Kafka yet.
        config
            .set("group.id", "sluice")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// The topic's partition count; a clear error within seconds when the
    /// broker is unreachable or the topic does not exist.
    fn partitions(&self) -> Result<i32> {
        let consumer: BaseConsumer = self.client_config().create().map_err(|e| {
            SluiceError::invalid_parameter(format!("kafka client for topic '{}': {e}", self.topic))
        })?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(|e| {
                SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!(
                        "kafka brokers {} did not describe topic '{}' within {}s: {e}",
                        self.properties["bootstrap.servers"],
                        self.topic,
                        METADATA_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| {
                SluiceError::new(
                    ErrorKind::UndefinedTable,
                    format!(
                        "kafka topic '{}' does not exist on {}",
                        self.topic, self.properties["bootstrap.servers"]
                    ),
                )
            })?;
        Ok(topic.partitions().len() as i32)
    }
}

impl SourceConnector for KafkaConnector {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn option_keys(&self) -> &[&'static str] {
        OPTIONS
    }

    fn accepts_option(&self, key: &str) -> bool {
        OPTIONS.contains(&key) || key.starts_with("properties.")
    }

    fn schema(&self, options: &BTreeMap<String, String>, declared: Option<&SchemaRef>) -> Result<SchemaRef> {
        let Some(schema) = declared else {
            return Err(SluiceError::invalid_parameter(
                "a kafka stream declares its columns: CREATE STREAM name (col TYPE, ...) WITH (connector = 'kafka', ...)",
            ));
        };
        let o = Options::parse(options)?;
        o.partitions()?;
        Ok(schema.clone())
    }

    fn is_bounded(&self, _options: &BTreeMap<String, String>) -> bool {
        false
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        partition: usize,
        partitions: usize,
    ) -> Result<Box<dyn Source>> {
        let o = Options::parse(options)?;
        let count = o.partitions()?;
        let consumer: StreamConsumer = o
            .client_config()
            .create()
            .map_err(|e| SluiceError::invalid_parameter(format!("kafka consumer: {e}")))?;
        let mine: Vec<i32> = (0..count)
            .filter(|k| *k as usize % partitions.max(1) == partition)
            .collect();
        let mut tpl = TopicPartitionList::new();
        for k in &mine {
            let offset = match &o.startup {
                Startup::Earliest => Offset::Beginning,
                Startup::Latest => Offset::End,
                Startup::GroupOffsets => Offset::Stored,
                Startup::Timestamp(ms) => Offset::Offset(*ms),
                Startup::Specific(m) => m.get(k).map(|o| Offset::Offset(*o)).unwrap_or(Offset::Beginning),
            };
            tpl.add_partition_offset(&o.topic, *k, offset)
                .map_err(|e| SluiceError::internal(format!("kafka assignment: {e}")))?;
        }
        if let Startup::Timestamp(_) = o.startup {
            tpl = consumer.offsets_for_times(tpl, METADATA_TIMEOUT).map_err(|e| {
                SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!("kafka offsets for timestamp: {e}"),
                )
            })?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| SluiceError::internal(format!("kafka assignment: {e}")))?;
        Ok(Box::new(KafkaSource {
            consumer,
            schema: schema.clone(),
            options: o,
            idle: mine.is_empty(),
            partitions: mine,
            bad: 0,
            fetching: Vec::new(),
            deadline: None,
            ready: Default::default(),
            last_split: 0,
        }))
    }
}

struct KafkaSource {
    consumer: StreamConsumer,
    schema: SchemaRef,
    options: Options,
    /// No partitions for this task (more tasks than partitions).
    idle: bool,
    /// The Kafka partitions this task reads; a partition's index here is
    /// its split number (each split has its own watermark).
    partitions: Vec<i32>,
    /// Malformed records skipped since the last report.
    bad: u64,
    /// Records fetched for the batch being gathered. Kept here, not in a
    /// local, so that `next_batch` can be cancelled (the runtime wakes up
    /// periodically to advance watermarks past idle partitions) without
    /// losing a record.
    fetching: Vec<Record>,
    deadline: Option<tokio::time::Instant>,
    /// Decoded batches (one per partition) not handed out yet.
    ready: std::collections::VecDeque<(usize, RecordBatch)>,
    last_split: usize,
}

/// A record's payload and position, for decoding and error messages.
struct Record {
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
}

impl KafkaSource {
    fn decoder(&self, rows: usize) -> Result<arrow::json::reader::Decoder> {
        Ok(ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .build_decoder()?)
    }

    /// All records in one pass of the vectorized decoder.
    fn decode_all(&self, records: &[Record]) -> Result<Option<RecordBatch>> {
        let mut decoder = self.decoder(records.len())?;
        for r in records {
            let mut rest = &r.payload[..];
            while !rest.is_empty() {
                let used = decoder.decode(rest)?;
                if used == 0 {
                    break;
                }
                rest = &rest[used..];
            }
            // One record, one row: a payload that is not one complete JSON
            // object fails here or in the row count check below.
            decoder.decode(b"\n")?;
        }
        Ok(decoder.flush()?)
    }

    /// The slow path: records one at a time, malformed ones skipped or
    /// failing the job.
    fn decode_each(&mut self, records: &[Record]) -> Result<Option<RecordBatch>> {
        let mut good = Vec::new();
        for r in records {
            let one = self.decode_all(std::slice::from_ref(r));
            match one {
                Ok(Some(b)) if b.num_rows() == 1 => good.push(b),
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(Some(b)) => format!("{} rows in one record", b.num_rows()),
                        Ok(None) => "no JSON object".into(),
                    };
                    if !self.options.skip_bad {
                        return Err(SluiceError::new(
                            ErrorKind::InvalidParameter,
                            format!(
                                "malformed record in topic '{}' partition {} offset {}: {why} \
                                 (set 'bad_records' = 'skip' to skip such records)",
                                self.options.topic, r.partition, r.offset
                            ),
                        ));
                    }
                    self.bad += 1;
                }
            }
        }
        if good.is_empty() {
            return Ok(None);
        }
        Ok(Some(concat_batches(&self.schema, &good)?))
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.idle {
            // Nothing assigned: never produce, never end.
            futures::future::pending::<()>().await;
        }
        loop {
            if let Some((split, batch)) = self.ready.pop_front() {
                self.last_split = split;
                return Ok(Some(batch));
            }
            while self.fetching.len() < self.options.batch {
                let next = match self.deadline {
                    None => Ok(self.consumer.recv().await),
                    Some(d) => tokio::time::timeout_at(d, self.consumer.recv()).await,
                };
                let Ok(received) = next else { break };
                let msg = received.map_err(|e| {
                    SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("kafka topic '{}': {e}", self.options.topic),
                    )
                })?;
                // A tombstone (no value) carries no row.
                if let Some(payload) = msg.payload() {
                    self.fetching.push(Record {
                        payload: payload.to_vec(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                    });
                }
                if self.deadline.is_none() {
                    self.deadline = Some(tokio::time::Instant::now() + self.options.linger);
                }
            }
            self.deadline = None;
            let records = std::mem::take(&mut self.fetching);
            // One batch per partition: each partition is a split with its
            // own watermark.
            let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            for r in records {
                by_partition.entry(r.partition).or_default().push(r);
            }
            for (partition, records) in by_partition {
                let split = self.partitions.iter().position(|p| *p == partition).unwrap_or(0);
                let batch = match self.decode_all(&records) {
                    Ok(Some(b)) if b.num_rows() == records.len() => Some(b),
                    _ => self.decode_each(&records)?,
                };
                if let Some(b) = batch {
                    self.ready.push_back((split, b));
                }
            }
        }
    }

    fn splits(&self) -> usize {
        self.partitions.len().max(1)
    }

    fn last_split(&self) -> usize {
        self.last_split
    }

    fn take_bad_records(&mut self) -> u64 {
        std::mem::take(&mut self.bad)
    }
}

/// A shared handle for tests and tools that produce to Kafka.
pub fn producer(brokers: &str) -> Result<Arc<rdkafka::producer::FutureProducer>> {
    let p = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .map_err(|e| SluiceError::invalid_parameter(format!("kafka producer: {e}")))?;
    Ok(Arc::new(p))
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

const SINK_OPTIONS: &[&str] = &["topic", "format", "sink.mode", "key"];

#[derive(Debug, Clone)]
struct SinkOptions {
    topic: String,
    properties: BTreeMap<String, String>,
    key: Vec<usize>,
}

impl SinkOptions {
    fn parse(options: &BTreeMap<String, String>, schema: &SchemaRef, updating: bool) -> Result<Self> {
        let (topic, properties) = common_options(options, "sink")?;
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
            None => updating,
            Some("append") => false,
            Some("upsert") => true,
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "'sink.mode' = '{other}': use append or upsert"
                )));
            }
        };
        if updating && !upsert {
            return Err(SluiceError::not_supported(
                "the query's result is updating (a GROUP BY without windows retracts rows); write it to \
                 kafka with 'sink.mode' = 'upsert' and key = '<columns>'",
            ));
        }
        if upsert && key.is_empty() {
            return Err(SluiceError::invalid_parameter(
                "'sink.mode' = 'upsert' needs key = '<columns>' (the GROUP BY columns)",
            ));
        }
        Ok(Self {
            topic,
            properties,
            key,
        })
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
        _ctx: &sluice_engine::SinkContext,
        _lane: usize,
        _lanes: usize,
    ) -> Result<Box<dyn sluice_engine::SinkWriter>> {
        let o = SinkOptions::parse(options, schema, updating)?;
        let mut config = ClientConfig::new();
        config.set("message.timeout.ms", "30000");
        for (k, v) in &o.properties {
            config.set(k, v);
        }
        let producer: rdkafka::producer::FutureProducer = config
            .create()
            .map_err(|e| SluiceError::invalid_parameter(format!("kafka producer: {e}")))?;
        Ok(Box::new(KafkaWriter {
            producer,
            options: o,
            schema: schema.clone(),
            updating,
            pending: Vec::new(),
        }))
    }
}

struct KafkaWriter {
    producer: rdkafka::producer::FutureProducer,
    options: SinkOptions,
    schema: SchemaRef,
    updating: bool,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
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
                    self.pending.push(delivery);
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
        for d in std::mem::take(&mut self.pending) {
            match d.await {
                Ok(Ok(_)) => {}
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
        let values = json_rows(&rows)?;
        for (i, (key, value)) in keys.iter().zip(values).enumerate() {
            let delete = ops.as_ref().is_some_and(|o| o.value(i) < 0);
            if delete {
                // A delete followed by an insert of the same key in this
                // batch is an update: the insert alone says it.
                let reinserted = ops
                    .as_ref()
                    .is_some_and(|o| (i + 1..o.len()).any(|j| o.value(j) > 0 && keys[j] == *key));
                if !reinserted {
                    self.send(key.clone(), None).await?;
                }
            } else {
                self.send(key.clone(), Some(value)).await?;
            }
        }
        Ok(())
    }

    async fn on_watermark(&mut self, _watermark: i64) -> Result<()> {
        self.flush().await
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush().await
    }
}

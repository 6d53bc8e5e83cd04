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

use crate::aside::run_aside;
use crate::avro::{AvroEncoder, AvroFraming, Registry};
use crate::format::{
    BadRecord, BadRecordPolicy, BadRecords, Format, Layout, RecordDecoder, check_metadata_columns,
    decoding_source_options, is_bad_record_option, unique_suffix,
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
    "source.mode",
    "key",
    "batch.size",
    "batch.linger.ms",
];

static OPTIONS: LazyLock<Vec<&'static str>> = LazyLock::new(|| decoding_source_options(OWN_OPTIONS));

/// The metadata keys a kafka stream's columns can be filled from.
/// (`value.source.timestamp` and `value.ingestion-timestamp` come from a
/// Debezium envelope, see [`crate::format::ENVELOPE_METADATA`].)
const METADATA: &[&str] = &[
    "key",
    "partition",
    "offset",
    "timestamp",
    "headers",
    "topic",
    "value.source.timestamp",
    "value.ingestion-timestamp",
];

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
    /// `'source.mode' = 'upsert'`: the key columns (each record the whole
    /// row of its key, an empty one a tombstone).
    upsert_key: Option<Vec<String>>,
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

/// `'source.mode' = 'upsert'` with `key = 'col[, col]'`: the key columns.
fn upsert_key(options: &BTreeMap<String, String>) -> Result<Option<Vec<String>>> {
    let key: Vec<String> = options
        .get("key")
        .map(|k| {
            k.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default();
    match options
        .get("source.mode")
        .map(|m| m.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("append") => {
            if !key.is_empty() {
                return Err(SluiceError::invalid_parameter(
                    "key = '...' on a kafka stream names an upsert topic's key: add 'source.mode' = 'upsert'",
                ));
            }
            Ok(None)
        }
        Some("upsert") => {
            if key.is_empty() {
                return Err(SluiceError::invalid_parameter(
                    "'source.mode' = 'upsert' needs key = '<columns>' (the columns the record key holds)",
                ));
            }
            if options
                .get("format")
                .is_some_and(|f| f.eq_ignore_ascii_case("debezium-json"))
            {
                return Err(SluiceError::invalid_parameter(
                    "'source.mode' = 'upsert' reads whole rows (json, csv, avro); debezium-json is a changelog \
                     of its own",
                ));
            }
            Ok(Some(key))
        }
        Some(other) => Err(SluiceError::invalid_parameter(format!(
            "'source.mode' = '{other}': use append or upsert"
        ))),
    }
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
            upsert_key: upsert_key(options)?,
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
        client::topic_partitions(&self.client_config(), &self.topic)
    }
}

pub(crate) mod client;
mod sink;
mod source;
mod transactions;

pub use sink::KafkaSink;
pub use transactions::KafkaTransactions;

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

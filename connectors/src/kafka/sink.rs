//! The kafka sink (append or upsert, at-least-once or exactly-once).

use super::transactions::{TXN_TIMEOUT, TxnLane, TxnProducer};
use super::*;

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
    "topic.partitions",
    "topic.replication-factor",
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
        // A missing topic is created (`topic.partitions`, default 1;
        // `topic.replication-factor`, default the broker's); an unreachable
        // broker is a clear error now rather than a failed job.
        let topic = Options::parse(&BTreeMap::from([
            ("topic".to_string(), o.topic.clone()),
            (
                "properties.bootstrap.servers".to_string(),
                o.properties["bootstrap.servers"].clone(),
            ),
        ]))?;
        match topic.partitions() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::UndefinedTable => {
                let number = |key: &str, default: i32, min: i32| -> Result<i32> {
                    match options.get(key) {
                        None => Ok(default),
                        Some(v) => v.trim().parse::<i32>().ok().filter(|n| *n >= min).ok_or_else(|| {
                            SluiceError::invalid_parameter(format!(
                                "'{key}' must be a whole number of at least {min}, not '{v}'"
                            ))
                        }),
                    }
                };
                let partitions = number("topic.partitions", 1, 1)?;
                let replication = number("topic.replication-factor", -1, -1)?;
                if replication == 0 {
                    return Err(SluiceError::invalid_parameter(
                        "'topic.replication-factor' must be at least 1 (or -1 for the broker's default)",
                    ));
                }
                let mut config = ClientConfig::new();
                for (k, v) in &o.properties {
                    config.set(k, v);
                }
                client::create_topic(&config, &o.topic, partitions, replication)?;
            }
            Err(e) => return Err(e),
        }
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

//! The kafka source: partitions assigned to tasks, a fetch thread per
//! task, records decoded a batch at a time.

use super::*;

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
            || options
                .get("source.mode")
                .is_some_and(|m| m.eq_ignore_ascii_case("upsert"))
    }

    /// `'source.mode' = 'upsert'`: the `key` columns (declared, not
    /// metadata ones).
    fn upsert_key(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
    ) -> Result<Option<Vec<usize>>> {
        let Some(names) = Options::parse(options)?.upsert_key else {
            return Ok(None);
        };
        let mut key = Vec::with_capacity(names.len());
        for name in &names {
            let Some(i) = schema
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(name) && metadata_key(f).is_none())
            else {
                return Err(SluiceError::invalid_parameter(format!(
                    "key = '{}': no column {name} (the key names declared columns)",
                    names.join(", ")
                )));
            };
            key.push(i);
        }
        Ok(Some(key))
    }

    /// A JSON or CSV kafka stream takes rows from `COPY stream FROM STDIN`:
    /// its columns but the metadata ones, one record per row.
    fn appendable(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
    ) -> Result<Option<SchemaRef>> {
        let o = Options::parse(options)?;
        if !matches!(o.format, Format::Json { .. } | Format::Csv { .. }) || o.upsert_key.is_some() {
            return Ok(None);
        }
        Ok(Some(Layout::with_metadata(schema).payload().clone()))
    }

    /// Produces one record per row (in the stream's format, no key) to the
    /// stream's topic in one Kafka transaction: readers see all of the
    /// COPY or, if it fails, none of it.
    fn append<'a>(
        &'a self,
        options: &'a BTreeMap<String, String>,
        schema: &'a SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> futures::future::BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let o = Options::parse(options)?;
            let Some(columns) = self.appendable(options, schema)? else {
                return Err(SluiceError::not_supported(
                    "COPY FROM STDIN produces to JSON and CSV kafka streams",
                ));
            };
            let all = arrow::compute::concat_batches(&columns, &batches)?;
            let values = crate::appendfiles::records(&o.format, &all)?;
            let rows = values.len();
            let mut config = ClientConfig::new();
            for (k, v) in &o.properties {
                config.set(k, v);
            }
            config.set(
                "transactional.id",
                format!("sluice-copy-{}", crate::format::unique_suffix()),
            );
            let topic = o.topic.clone();
            let produced = tokio::task::spawn_blocking(move || -> std::result::Result<(), KafkaError> {
                let producer: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
                    config.create()?;
                let timeout = Duration::from_secs(30);
                producer.init_transactions(timeout)?;
                producer.begin_transaction()?;
                let sent = values.iter().try_for_each(|v| {
                    send_waiting(
                        &producer,
                        rdkafka::producer::BaseRecord::<(), [u8]>::to(&topic).payload(v),
                    )
                });
                match sent.and_then(|()| producer.commit_transaction(timeout)) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let _ = producer.abort_transaction(timeout);
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|e| SluiceError::internal(format!("producing the COPY: {e}")))?;
            produced.map_err(|e| {
                SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!("producing to kafka topic '{}': {e}", o.topic),
                )
            })?;
            Ok(rows)
        })
    }

    /// Positions name topic partitions with their next offset, and each
    /// source partition reads the topic partitions `k % partitions`: every
    /// new source partition gets all the offsets and takes its own.
    fn rescale_positions(
        &self,
        _options: &BTreeMap<String, String>,
        old: &[Option<String>],
        partitions: usize,
    ) -> Result<Vec<Option<String>>> {
        let mut all = BTreeMap::new();
        for position in old.iter().flatten() {
            all.extend(parse_position(position)?);
        }
        let merged = all
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(vec![Some(merged); partitions])
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
        let (stop, start, origin) = match &o.bounded {
            Bounded::Unbounded => (None, vec![None; mine.len()], vec![None; mine.len()]),
            bounded => {
                let mut stop = Vec::with_capacity(mine.len());
                let mut start = Vec::with_capacity(mine.len());
                let mut origin = Vec::with_capacity(mine.len());
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
                    // Where the whole read began, before any restart: the
                    // progress counts from there.
                    origin.push(match &o.startup {
                        Startup::Earliest => Some(low),
                        Startup::Specific(m) => Some(m.get(k).copied().unwrap_or(low)),
                        _ => *start.last().expect("pushed above"),
                    });
                }
                (Some(stop), start, origin)
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
            .any(|f| metadata_key(f) == Some("key"))
            || o.upsert_key.is_some();
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
                wants_tombstones: o.upsert_key.is_some(),
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
            origin,
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
    /// An upsert topic: a record without a value (a tombstone) is kept,
    /// with an empty payload.
    wants_tombstones: bool,
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
                    // A tombstone (no value) carries no row, but in an
                    // upsert topic, where it deletes its key.
                    let payload = match msg.payload() {
                        None if self.wants_tombstones => Some(&[][..]),
                        p => p,
                    };
                    if let Some(payload) = payload {
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
    /// Client errors reported since the task started.
    errors: u64,
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
        s.errors += 1;
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
    /// A bounded stream: per split, where reading began before any
    /// restart, where known (the start of its progress).
    origin: Vec<Option<i64>>,
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

    /// An upsert topic's tombstones as payload rows: the key columns from
    /// the record key (one column: the key's text; several: a JSON object
    /// of them, as Sluice's upsert sink writes keys), NULL elsewhere.
    /// Returns the rows and the records they came from; a tombstone
    /// without a readable key is a bad record.
    fn tombstone_rows(
        &self,
        buf: &[u8],
        records: &[&Record],
        tombstones: &[usize],
        bad: &mut Vec<(usize, String)>,
    ) -> Result<(RecordBatch, Vec<usize>)> {
        let payload = self.layout.payload().clone();
        let names = self.options.upsert_key.as_deref().unwrap_or_default();
        let key_cols: Vec<usize> = names
            .iter()
            .filter_map(|n| {
                payload
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(n))
            })
            .collect();
        let key_of = |i: usize| records[i].key.clone().map(|k| &buf[k]);
        let mut kept = Vec::new();
        let mut texts: Vec<&[u8]> = Vec::new();
        for &i in tombstones {
            match key_of(i) {
                Some(k) if !k.is_empty() => {
                    kept.push(i);
                    texts.push(k);
                }
                _ => bad.push((i, "a tombstone (empty record) without a key".into())),
            }
        }
        let n = kept.len();
        let mut columns: Vec<ArrayRef> = payload
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), n))
            .collect();
        if n > 0 && key_cols.len() == 1 {
            let mut strings = Vec::with_capacity(n);
            for t in &texts {
                strings.push(String::from_utf8_lossy(t).into_owned());
            }
            let text: ArrayRef = Arc::new(arrow::array::StringArray::from(strings));
            let c = key_cols[0];
            columns[c] = arrow::compute::cast(&text, payload.field(c).data_type())?;
        } else if n > 0 {
            let fields: Vec<Field> = key_cols
                .iter()
                .map(|c| payload.field(*c).clone().with_nullable(true))
                .collect();
            let mut decoder =
                arrow::json::ReaderBuilder::new(Arc::new(arrow::datatypes::Schema::new(fields)))
                    .with_batch_size(n)
                    .build_decoder()?;
            for t in &texts {
                decoder.decode(t)?;
                decoder.decode(b"\n")?;
            }
            let keys = decoder.flush()?.ok_or_else(|| {
                SluiceError::invalid_parameter("tombstone keys are not JSON objects of the key columns")
            })?;
            for (j, c) in key_cols.iter().enumerate() {
                columns[*c] = keys.column(j).clone();
            }
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(arrow::datatypes::Schema::new(
                payload
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            )),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        Ok((batch, kept))
    }

    /// Decodes one partition's records into the declared columns; malformed
    /// ones go to the bad-record policy.
    fn decode(&mut self, buf: &[u8], records: &[&Record]) -> Result<Option<RecordBatch>> {
        let mut bad = Vec::new();
        let max = self.options.max_record_bytes;
        let upsert = self.options.upsert_key.is_some();
        // An upsert topic's empty records are tombstones of their keys.
        let mut tombstones: Vec<usize> = Vec::new();
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
                } else if upsert && r.payload.is_empty() {
                    tombstones.push(i);
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
        // Records in the order of the batch's rows.
        let mut order: Vec<usize> = match kept {
            None => sized.clone(),
            Some(kept) => kept.iter().map(|k| sized[*k]).collect(),
        };
        let (batch, ops) = if upsert {
            let (keys, kept_tombstones) = self.tombstone_rows(buf, records, &tombstones, &mut bad)?;
            // Upserts and tombstones merged back into the records' order.
            let mut picks: Vec<(usize, usize, usize)> = order
                .iter()
                .enumerate()
                .map(|(row, rec)| (*rec, 0, row))
                .chain(
                    kept_tombstones
                        .iter()
                        .enumerate()
                        .map(|(row, rec)| (*rec, 1, row)),
                )
                .collect();
            picks.sort_unstable();
            let at: Vec<(usize, usize)> = picks.iter().map(|(_, b, r)| (*b, *r)).collect();
            let columns = (0..batch.num_columns())
                .map(|c| {
                    let from = [batch.column(c).as_ref(), keys.column(c).as_ref()];
                    Ok(arrow::compute::interleave(&from, &at)?)
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let ops: ArrayRef = Arc::new(arrow::array::Int8Array::from_iter_values(
                picks.iter().map(|(_, b, _)| if *b == 0 { 1i8 } else { -1 }),
            ));
            order = picks.iter().map(|(rec, _, _)| *rec).collect();
            // Tombstones hold NULL outside their key.
            let schema = Arc::new(arrow::datatypes::Schema::new(
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            ));
            let batch = RecordBatch::try_new_with_options(
                schema,
                columns,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(picks.len())),
            )?;
            (batch, Some(ops))
        } else if self.decoder.is_changelog() {
            // A changelog's op column rides along after the declared columns.
            let n = batch.num_columns();
            (
                batch.project(&(0..n - 1).collect::<Vec<_>>())?,
                Some(batch.column(n - 1).clone()),
            )
        } else {
            (batch, None)
        };
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
        let rows: Vec<&Record> = order.iter().map(|i| records[*i]).collect();
        let op = ops;
        let topic = &self.options.topic;
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

    /// A bounded stream: records read of those between each partition's
    /// origin and its stop (None when an origin is not known: a start
    /// from the group's committed offsets).
    fn progress(&self) -> Option<sluice_engine::stream::Progress> {
        let stop = self.stop.as_ref()?;
        let (mut done, mut total) = (0u64, 0u64);
        for (s, stop) in stop.iter().enumerate() {
            if *stop == i64::MIN {
                continue; // a partition the bound leaves out
            }
            let origin = self.origin[s]?;
            let at = self.emitted[s].or(self.start[s]).unwrap_or(origin);
            total += (stop - origin).max(0) as u64;
            done += (at.min(*stop) - origin).max(0) as u64;
        }
        Some(sluice_engine::stream::Progress {
            done,
            total,
            unit: sluice_engine::stream::ProgressUnit::Records,
        })
    }

    fn split_figures(&self) -> Vec<sluice_engine::stream::SplitFigures> {
        let shared = self.context.shared.lock().expect("kafka context lock");
        self.partitions
            .iter()
            .enumerate()
            .map(|(split, p)| {
                let next = self.next_offsets[split];
                sluice_engine::stream::SplitFigures {
                    name: self.options.topic.clone(),
                    split: p.to_string(),
                    offset: next,
                    lag: match (shared.high.get(p), next) {
                        (Some(high), Some(next)) => Some((high - next).max(0)),
                        _ => None,
                    },
                    errors: shared.errors,
                }
            })
            .collect()
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

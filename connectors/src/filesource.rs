//! The `filesystem` source: a directory (or S3 prefix, or HDFS path) of
//! Parquet, Avro (object container), JSON-lines or CSV files read as a
//! stream.
//!
//! ```sql
//! CREATE STREAM trips (id BIGINT, fare DOUBLE, ts TIMESTAMP, dt TEXT,
//!                      file TEXT METADATA FROM 'file.path',
//!                      WATERMARK FOR ts AS ts - INTERVAL '1 minute')
//! WITH (connector = 'filesystem', path = 's3://lake/trips/', format = 'json',
//!       partition_by = 'dt', 'scan.mode' = 'continuous');
//! ```
//!
//! Every parallel task lists the location (every `source.monitor-interval`,
//! default 1 s, in `continuous` mode; once in `bounded` mode), takes the
//! files whose path hashes to it, and reads each file once, oldest first.
//! A JSON-lines file larger than `scan.split-size` (default 32MB) is read in
//! ranges of that size, spread over the tasks like files (a line belongs to
//! the range it starts in), so one large file is read by every task.
//! Files must appear whole (object stores' puts do; on a local disk, write
//! then rename), and names starting with `.` or `_` are skipped, as Hadoop
//! does. `partition_by` columns come from Hive-style `col=value/` folders;
//! metadata columns from `file.path`, `file.name`, `file.size` and
//! `file.modification-time`. JSON and CSV files are read a line (record) at a
//! time through the same decoders and bad-record handling as Kafka records;
//! Parquet and Avro files carry their schema: columns are taken by name
//! and cast (missing ones NULL), and a file that does not read is one bad
//! record. In `bounded` mode
//! the source ends after the files that were there at the start: its
//! watermark then goes to the end of time, closing every window.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array,
};
use arrow::compute::cast;
use arrow::datatypes::{Field, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde_json::Value;
use sluice_engine::datafusion::parquet::arrow::ProjectionMask;
use sluice_engine::datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use sluice_engine::stream::{Progress, ProgressUnit, metadata_key};
use sluice_engine::{ErrorKind, Result, SluiceError, Source, SourceConnector, StoreRegistry};

use crate::aside::run_aside;
use crate::filesystem::parse_duration;
use crate::format::{
    BadRecord, BadRecordPolicy, BadRecords, Format, Layout, RecordDecoder, check_metadata_columns,
    decoding_source_options, is_bad_record_option, unique_suffix,
};

const OWN_OPTIONS: &[&str] = &[
    "path",
    "scan.mode",
    "source.monitor-interval",
    "partition_by",
    "batch.size",
    "scan.split-size",
];

/// JSON-lines files are read in ranges of this many bytes by default.
const SPLIT_SIZE: u64 = 32 << 20;

static OPTIONS: LazyLock<Vec<&'static str>> = LazyLock::new(|| decoding_source_options(OWN_OPTIONS));

/// The metadata keys a file stream's columns can be filled from.
const METADATA: &[&str] = &["file.path", "file.name", "file.size", "file.modification-time"];

/// How long listing a location may take before CREATE STREAM gives up.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Hive's spelling of a NULL partition value.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The `filesystem` source connector.
#[derive(Debug, Default)]
pub struct FileSystemSource {
    stores: StoreRegistry,
}

impl FileSystemSource {
    pub fn new(stores: StoreRegistry) -> Self {
        Self { stores }
    }

    fn store_options(&self, options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        options
            .iter()
            .filter(|(k, _)| self.stores.is_store_option(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Options {
    path: String,
    format: Format,
    bounded: bool,
    interval: Duration,
    partition_by: Vec<String>,
    bad_records: BadRecordPolicy,
    batch: usize,
    /// JSON-lines files larger than this are read in ranges of it.
    split_size: u64,
}

impl Options {
    fn parse(options: &BTreeMap<String, String>, schema: &SchemaRef) -> Result<Self> {
        let path = options
            .get("path")
            .cloned()
            .ok_or_else(|| SluiceError::invalid_parameter("the filesystem source needs option 'path'"))?;
        let bounded = match options
            .get("scan.mode")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("continuous") => false,
            Some("bounded") => true,
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "'scan.mode' = '{other}': use continuous or bounded"
                )));
            }
        };
        let interval = match options.get("source.monitor-interval") {
            None => Duration::from_secs(1),
            Some(v) => parse_duration("source.monitor-interval", v)?.max(Duration::from_millis(10)),
        };
        let partition_by: Vec<String> = options
            .get("partition_by")
            .map(|v| {
                v.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for c in &partition_by {
            if schema.field_with_name(c).is_err() {
                return Err(SluiceError::invalid_parameter(format!(
                    "partition_by column '{c}' is not a declared column"
                )));
            }
        }
        let batch = match options.get("batch.size") {
            None => 8192,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| {
                    SluiceError::invalid_parameter(format!("option 'batch.size': '{v}' is not a number"))
                })?
                .max(1),
        };
        let split_size = match options.get("scan.split-size") {
            None => SPLIT_SIZE,
            Some(v) => crate::filesystem::parse_size("scan.split-size", v)?,
        };
        Ok(Self {
            split_size,
            path,
            format: Format::parse(options, &["json", "csv", "parquet", "avro"], true)?,
            bounded,
            interval,
            partition_by,
            bad_records: BadRecordPolicy::parse(options, None)?,
            batch,
        })
    }

    /// Formats read a whole file at a time (they carry their schema), not
    /// a record per line.
    fn whole_files(&self) -> bool {
        matches!(self.format, Format::Parquet | Format::Avro(_))
    }

    /// The units a file is read in: ranges of a large JSON-lines file (a
    /// JSON line has no line break inside; a CSV record may), else the
    /// whole file. Ranges depend on the file alone, never on the number of
    /// tasks, so checkpoints name the same units at any parallelism.
    fn units(&self, meta: ObjectMeta) -> Vec<Unit> {
        if !matches!(self.format, Format::Json { .. }) || meta.size <= self.split_size {
            return vec![Unit { meta, range: None }];
        }
        let size = meta.size;
        (0..size)
            .step_by(self.split_size as usize)
            .map(|start| Unit {
                meta: meta.clone(),
                range: Some(start..(start + self.split_size).min(size)),
            })
            .collect()
    }

    /// The task that reads a unit: files by the hash of their path; the
    /// ranges of a file in turn from the task its path hashes to, so that
    /// every task gets an even share of a large file.
    fn task_of(&self, key: &str, tasks: usize) -> usize {
        let tasks = tasks.max(1) as u64;
        let (path, nth) = match key.rsplit_once(RANGE_MARK) {
            Some((path, start)) => match start.parse::<u64>() {
                Ok(start) => (path, start / self.split_size),
                Err(_) => (key, 0),
            },
            None => (key, 0),
        };
        (key_hash(path).wrapping_add(nth) % tasks) as usize
    }

    fn layout(&self, schema: &SchemaRef) -> Layout {
        Layout::new(schema, |f| {
            metadata_key(f).is_some() || self.partition_by.iter().any(|c| c == f.name())
        })
    }
}

impl SourceConnector for FileSystemSource {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn option_keys(&self) -> &[&'static str] {
        &OPTIONS
    }

    fn accepts_option(&self, key: &str) -> bool {
        OPTIONS.contains(&key) || is_bad_record_option(key) || self.stores.is_store_option(key)
    }

    fn schema(&self, options: &BTreeMap<String, String>, declared: Option<&SchemaRef>) -> Result<SchemaRef> {
        let Some(schema) = declared else {
            return Err(SluiceError::invalid_parameter(
                "a filesystem stream declares its columns: CREATE STREAM name (col TYPE, ...) WITH (connector = \
                 'filesystem', path = '...', format = '...')",
            ));
        };
        check_metadata_columns(schema, "the filesystem source", METADATA)?;
        let o = Options::parse(options, schema)?;
        if !o.whole_files() {
            RecordDecoder::new(o.format.clone(), o.layout(schema).payload().clone())?;
        }
        // The location must be reachable now: a clear error rather than a
        // failed job.
        let (store, base) =
            sluice_engine::storage::resolve_location(&self.stores, &o.path, &self.store_options(options))?;
        let probe = async move {
            let mut list = store.list(Some(&base));
            list.next().await.transpose()
        };
        match run_aside(probe, LIST_TIMEOUT)? {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!("listing {}: {e}", o.path),
                ));
            }
            None => {
                return Err(SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!("listing {} took more than {}s", o.path, LIST_TIMEOUT.as_secs()),
                ));
            }
        }
        o.bad_records.check()?;
        Ok(schema.clone())
    }

    fn is_bounded(&self, options: &BTreeMap<String, String>) -> bool {
        matches!(
            options
                .get("scan.mode")
                .map(|s| s.to_ascii_lowercase())
                .as_deref(),
            Some("bounded")
        )
    }

    /// A file stream takes rows from `COPY stream FROM STDIN`: its columns
    /// but the metadata ones (partition columns included, which choose the
    /// `col=value/` folder). JSON-lines, CSV and Parquet streams.
    fn appendable(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
    ) -> Result<Option<SchemaRef>> {
        let o = Options::parse(options, schema)?;
        if !matches!(
            o.format,
            Format::Json { .. } | Format::Csv { .. } | Format::Parquet
        ) {
            return Ok(None);
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| metadata_key(f).is_none())
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect();
        Ok(Some(Arc::new(arrow::datatypes::Schema::new(fields))))
    }

    /// Writes the rows as new files in the stream's directory (one per
    /// partition folder), in the stream's format, each put whole; the
    /// stream's jobs read them as they read any new file.
    fn append<'a>(
        &'a self,
        options: &'a BTreeMap<String, String>,
        schema: &'a SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> futures::future::BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let o = Options::parse(options, schema)?;
            let Some(columns) = self.appendable(options, schema)? else {
                return Err(SluiceError::not_supported(
                    "COPY FROM STDIN writes JSON-lines, CSV and Parquet file streams",
                ));
            };
            let all = arrow::compute::concat_batches(&columns, &batches)?;
            let rows = all.num_rows();
            let (store, base) = sluice_engine::storage::resolve_location(
                &self.stores,
                &o.path,
                &self.store_options(options),
            )?;
            let mut files = vec![];
            for (folder, part) in crate::appendfiles::by_partition(&all, &o.partition_by)? {
                let bytes = crate::appendfiles::encode(&o.format, &part)?;
                let mut path = base.clone();
                for segment in &folder {
                    path = path.join(segment.as_str());
                }
                let extension = match o.format {
                    Format::Parquet => "parquet",
                    Format::Csv { .. } => "csv",
                    _ => "json",
                };
                files.push((path.join(format!("copy-{}.{extension}", unique_suffix())), bytes));
            }
            for (path, bytes) in files {
                store
                    .put(&path, object_store::PutPayload::from(bytes))
                    .await
                    .map_err(|e| {
                        SluiceError::new(ErrorKind::StorageUnavailable, format!("writing {path}: {e}"))
                    })?;
            }
            Ok(rows)
        })
    }

    /// Files are spread over tasks by a hash of their path: every new task
    /// gets the files finished by any old one (it skips them, as it skips
    /// other tasks' files) and the files any old task was in the middle of
    /// (it resumes those that are now its own).
    fn rescale_positions(
        &self,
        _options: &BTreeMap<String, String>,
        old: &[Option<String>],
        partitions: usize,
    ) -> Result<Vec<Option<String>>> {
        let mut merged = Position::default();
        for position in old.iter().flatten() {
            let p: Position = serde_json::from_str(position)
                .map_err(|e| SluiceError::internal(format!("files: bad checkpointed position: {e}")))?;
            merged.done.extend(p.done);
            merged.reading.extend(p.reading);
            if let Some(c) = p.current {
                merged.reading.insert(c, p.steps);
            }
        }
        // A file finished by one task is not resumed for another.
        let done = merged.done.clone();
        merged.reading.retain(|f, _| !done.contains(f));
        let text = serde_json::to_string(&merged)
            .map_err(|e| SluiceError::internal(format!("files: position: {e}")))?;
        Ok(vec![Some(text); partitions])
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        partition: usize,
        partitions: usize,
        resume: Option<&str>,
    ) -> Result<Box<dyn Source>> {
        let o = Options::parse(options, schema)?;
        let store_options = self.store_options(options);
        let resumed: Position = match resume {
            Some(p) => serde_json::from_str(p)
                .map_err(|e| SluiceError::internal(format!("files: bad checkpointed position: {e}")))?,
            None => Position::default(),
        };
        let (store, base) = sluice_engine::storage::resolve_location(&self.stores, &o.path, &store_options)?;
        let layout = o.layout(schema);
        let decoder = match o.format {
            _ if o.whole_files() => None,
            _ => Some(RecordDecoder::new(o.format.clone(), layout.payload().clone())?),
        };
        let bad = BadRecords::open(
            o.bad_records.clone(),
            &self.stores,
            &store_options,
            format!("files-{partition}-{}", unique_suffix()),
        )?;
        // How `file.path` spells a location: the URL's scheme and authority
        // before the store's path.
        let url_prefix = match url::Url::parse(&o.path) {
            Ok(u) if u.scheme() != "file" && u.has_host() => {
                format!("{}://{}/", u.scheme(), u.authority())
            }
            _ => "/".to_string(),
        };
        let resume_current = resumed
            .reading
            .into_iter()
            .chain(resumed.current.map(|c| (c, resumed.steps)))
            // Units of other tasks are theirs to resume.
            .filter(|(c, _)| o.task_of(c, partitions.max(1)) == partition)
            .collect();
        Ok(Box::new(FileSource {
            store,
            base,
            url_prefix,
            options: o,
            layout,
            decoder,
            task: partition,
            tasks: partitions.max(1),
            seen: resumed.done.iter().cloned().collect(),
            files_done: resumed.done.len() as u64,
            bytes_done: 0,
            bytes_listed: 0,
            resume_current,
            done: resumed.done,
            steps: 0,
            skip: 0,
            queue: VecDeque::new(),
            current: None,
            listed: false,
            next_list: tokio::time::Instant::now(),
            bad,
        }))
    }
}

/// Where a file source task stands: the units (files, or ranges of large
/// files: see [`Unit::key`]) it finished, and how many read steps it took
/// into the one it is reading.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Position {
    done: std::collections::BTreeSet<String>,
    current: Option<String>,
    steps: u64,
    /// Other files read part of the way (steps taken), not opened again
    /// since: those that tasks of a checkpoint taken with another number of
    /// tasks were in the middle of.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    reading: BTreeMap<String, u64>,
}

/// A file, or a byte range of one, read by one task.
#[derive(Debug, Clone)]
struct Unit {
    meta: ObjectMeta,
    range: Option<std::ops::Range<u64>>,
}

impl Unit {
    /// Its name in checkpoints: the path, and `#bytes=start` for a range.
    fn key(&self) -> String {
        match &self.range {
            None => self.meta.location.to_string(),
            Some(r) => format!("{}{RANGE_MARK}{}", self.meta.location, r.start),
        }
    }

    fn size(&self) -> u64 {
        self.range.as_ref().map_or(self.meta.size, |r| r.end - r.start)
    }
}

/// Between a file's path and a range's first byte in a unit's key.
const RANGE_MARK: &str = "#bytes=";

/// A stable hash of a unit's key (FNV-1a), to spread units over tasks.
fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A file (or a range of one) being read.
struct OpenFile {
    meta: ObjectMeta,
    /// Its unit's key and the range read, if not the whole file.
    key: String,
    range: Option<std::ops::Range<u64>>,
    /// `col=value` folders between the location and the file.
    partitions: BTreeMap<String, Option<String>>,
    reader: Reader,
}

enum Reader {
    Lines(LineReader),
    /// The batches of a whole file in a format with its own schema, and
    /// the format's name for errors.
    Whole(
        Box<dyn Iterator<Item = arrow::error::Result<RecordBatch>> + Send>,
        &'static str,
    ),
}

/// Records of a line format with their line numbers. A record shares the
/// bytes of the chunk it was read in (no copy), except one that spans two
/// chunks.
type Records = Vec<(u64, Bytes)>;

/// Bytes asked of the store at a time, and how many such reads are in flight.
const READ_RANGE: u64 = 1 << 20;
const READS_AHEAD: usize = 2;
/// Bytes read at a time past the end of a range of a file.
const TAIL_RANGE: u64 = 64 << 10;

/// A file's bytes from `from` to `until` as ranged reads of [`READ_RANGE`],
/// [`READS_AHEAD`] at a time: one request (or, for a local file, one
/// blocking read) per range, where the store's own stream reads a local
/// file 8 KiB per thread hop. Then, up to `size`, reads of [`TAIL_RANGE`]
/// one at a time, only as far as they are asked for: the end of a range's
/// last line.
fn ranged_reads(
    store: Arc<dyn ObjectStore>,
    location: Path,
    from: u64,
    until: u64,
    size: u64,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let read = move |start: u64, len: u64, end: u64| {
        let (store, location) = (store.clone(), location.clone());
        async move { store.get_range(&location, start..(start + len).min(end)).await }
    };
    let tail_read = read.clone();
    let body = futures::stream::iter((from..until).step_by(READ_RANGE as usize))
        .map(move |start| read(start, READ_RANGE, until))
        .buffered(READS_AHEAD);
    let tail = futures::stream::iter((until..size).step_by(TAIL_RANGE as usize))
        .then(move |start| tail_read(start, TAIL_RANGE, size));
    body.chain(tail).boxed()
}

/// Splits a byte stream into records: lines, except that a CSV line break
/// inside quotes belongs to the record.
struct LineReader {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    /// The chunk being split, and where the next record starts in it.
    chunk: Bytes,
    start: usize,
    /// How far `chunk` has been scanned for the record's end.
    scanned: usize,
    /// The start of a record that began in an earlier chunk.
    carry: Vec<u8>,
    in_quote: bool,
    quote: Option<u8>,
    eof: bool,
    /// The line number where the next record starts (1-based).
    line: u64,
    skip_header: bool,
    /// Records split off for the batch being gathered: kept here, not in
    /// the future, so that a `next` dropped at its await (the runtime times
    /// source reads out to send watermarks) loses nothing.
    pending: Records,
    /// Bytes of the file fetched so far.
    fetched: u64,
    /// Where the next record starts, counted from the first byte read.
    next_start: u64,
    /// The first record is the end of one that began before the bytes
    /// read: dropped (a range of a file).
    skip_partial: bool,
    /// Records starting at or after this many bytes are not this reader's
    /// (the end of a range of a file).
    stop: Option<u64>,
}

impl LineReader {
    fn new(
        stream: BoxStream<'static, object_store::Result<Bytes>>,
        quote: Option<u8>,
        skip_header: bool,
    ) -> Self {
        LineReader {
            stream,
            chunk: Bytes::new(),
            start: 0,
            scanned: 0,
            carry: Vec::new(),
            in_quote: false,
            quote,
            eof: false,
            line: 1,
            skip_header,
            pending: Vec::new(),
            fetched: 0,
            next_start: 0,
            skip_partial: false,
            stop: None,
        }
    }

    /// Bytes of the file split into records so far (up to the stop).
    fn consumed(&self) -> u64 {
        let unsplit = self.carry.len() + (self.chunk.len() - self.start);
        let split = self.fetched.saturating_sub(unsplit as u64);
        self.stop.map_or(split, |stop| split.min(stop))
    }

    /// Whether the next record is past the stop (nothing of it read yet).
    fn stopped(&self) -> bool {
        self.carry.is_empty() && self.stop.is_some_and(|stop| self.next_start >= stop)
    }

    /// Up to `max` records, with their line numbers; empty at the end.
    /// Cancel-safe: dropped before it returns, the next call goes on where
    /// it stopped.
    async fn next(&mut self, max: usize) -> Result<Records> {
        let mut out = std::mem::take(&mut self.pending);
        let result = self.fill(&mut out, max).await;
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                self.pending = out;
                Err(e)
            }
        }
    }

    /// Where the record being scanned ends in `chunk` (its line break), if
    /// it ends there; `scanned` moves on either way.
    fn record_end(&mut self) -> Option<usize> {
        let Some(quote) = self.quote else {
            let found = memchr::memchr(b'\n', &self.chunk[self.scanned..]).map(|i| self.scanned + i);
            self.scanned = found.unwrap_or(self.chunk.len());
            return found;
        };
        loop {
            let rest = &self.chunk[self.scanned..];
            let found = if self.in_quote {
                memchr::memchr(quote, rest)
            } else {
                memchr::memchr2(b'\n', quote, rest)
            };
            let Some(i) = found else {
                self.scanned = self.chunk.len();
                return None;
            };
            let at = self.scanned + i;
            self.scanned = at + 1;
            if self.chunk[at] == quote {
                self.in_quote = !self.in_quote;
            } else {
                self.scanned = at;
                return Some(at);
            }
        }
    }

    async fn fill(&mut self, out: &mut Records, max: usize) -> Result<()> {
        loop {
            while out.len() < max && !self.stopped() {
                let Some(end) = self.record_end() else { break };
                let record = if self.carry.is_empty() {
                    self.chunk.slice(self.start..end)
                } else {
                    self.carry.extend_from_slice(&self.chunk[self.start..end]);
                    Bytes::from(std::mem::take(&mut self.carry))
                };
                // The chunk's first byte is at `fetched - chunk.len()`.
                self.next_start = self.fetched - self.chunk.len() as u64 + end as u64 + 1;
                self.start = end + 1;
                self.scanned = end + 1;
                if std::mem::take(&mut self.skip_partial) {
                    continue;
                }
                self.take(record, out);
            }
            if out.len() >= max || self.stopped() {
                return Ok(());
            }
            // The chunk is split to its end: keep its unfinished record.
            self.carry.extend_from_slice(&self.chunk[self.start..]);
            self.chunk = Bytes::new();
            (self.start, self.scanned) = (0, 0);
            if self.eof {
                if !self.carry.is_empty() && !std::mem::take(&mut self.skip_partial) {
                    let record = Bytes::from(std::mem::take(&mut self.carry));
                    self.take(record, out);
                }
                self.carry.clear();
                return Ok(());
            }
            // The one await: a stream's `next` is cancel-safe, and the
            // records gathered so far are moved to `pending` meanwhile.
            self.pending = std::mem::take(out);
            let chunk = self.stream.next().await;
            *out = std::mem::take(&mut self.pending);
            match chunk {
                Some(chunk) => {
                    let chunk =
                        chunk.map_err(|e| SluiceError::new(ErrorKind::StorageUnavailable, e.to_string()))?;
                    self.fetched += chunk.len() as u64;
                    self.chunk = chunk;
                }
                None => self.eof = true,
            }
        }
    }

    fn take(&mut self, mut record: Bytes, out: &mut Records) {
        let line = self.line;
        // Only a quoted CSV field holds a line break inside a record.
        let breaks = match self.quote {
            Some(_) => memchr::memchr_iter(b'\n', &record).count() as u64,
            None => 0,
        };
        self.line += 1 + breaks;
        if record.last() == Some(&b'\r') {
            record.truncate(record.len() - 1);
        }
        if record.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if self.skip_header {
            self.skip_header = false;
            return;
        }
        out.push((line, record));
    }
}

struct FileSource {
    store: Arc<dyn ObjectStore>,
    base: Path,
    url_prefix: String,
    options: Options,
    layout: Layout,
    decoder: Option<RecordDecoder>,
    task: usize,
    tasks: usize,
    /// Keys of the units listed so far.
    seen: HashSet<String>,
    queue: VecDeque<Unit>,
    current: Option<OpenFile>,
    /// Units read to the end (or found broken): the checkpointed position.
    done: std::collections::BTreeSet<String>,
    /// Read steps taken into the current unit.
    steps: u64,
    /// Steps of the current unit to read again and drop (resumed mid-unit).
    skip: u64,
    /// Resumed mid-unit: those units' keys and the steps already taken
    /// into each (until each is opened again).
    resume_current: BTreeMap<String, u64>,
    /// Listed at least once (a bounded source lists once).
    listed: bool,
    next_list: tokio::time::Instant,
    bad: BadRecords,
    files_done: u64,
    /// Bytes of this task's files read to the end (or found broken),
    /// including those a resumed checkpoint had read.
    bytes_done: u64,
    /// Bytes of every file of this task listed so far, read or not.
    bytes_listed: u64,
}

impl FileSource {
    /// New units of this task, of the oldest files first.
    async fn list(&mut self) -> Result<()> {
        let mut files: Vec<ObjectMeta> =
            self.store
                .list(Some(&self.base))
                .try_collect()
                .await
                .map_err(|e| {
                    SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("listing {}: {e}", self.options.path),
                    )
                })?;
        files.retain(|m| {
            !m.location
                .parts()
                .skip(self.base.parts().count())
                .any(|p| p.as_ref().starts_with('.') || p.as_ref().starts_with('_'))
        });
        files.sort_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)));
        let mut found: Vec<Unit> = files
            .into_iter()
            .flat_map(|m| self.options.units(m))
            .filter(|u| self.options.task_of(&u.key(), self.tasks) == self.task)
            .collect();
        if !self.listed {
            // Units a resumed checkpoint had read count as read.
            for u in found.iter().filter(|u| self.done.contains(&u.key())) {
                self.bytes_done += u.size();
                self.bytes_listed += u.size();
            }
        }
        found.retain(|u| !self.seen.contains(&u.key()));
        self.bytes_listed += found.iter().map(Unit::size).sum::<u64>();
        for u in found {
            let key = u.key();
            if self.resume_current.contains_key(&key) {
                // The unit a checkpoint was taken in the middle of goes first.
                self.queue.push_front(u);
            } else {
                self.queue.push_back(u);
            }
            self.seen.insert(key);
        }
        Ok(())
    }

    fn partition_values(&self, location: &Path) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        for part in location.parts().skip(self.base.parts().count()) {
            if let Some((k, v)) = part.as_ref().split_once('=')
                && self.options.partition_by.iter().any(|c| c == k)
            {
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned();
                out.insert(k.to_string(), (v != NULL_PARTITION).then_some(v));
            }
        }
        out
    }

    async fn open(&mut self, unit: Unit) -> Result<OpenFile> {
        let key = unit.key();
        let Unit { meta, range } = unit;
        let partitions = self.partition_values(&meta.location);
        let reader = match &self.options.format {
            // Formats that carry their schema: the whole file at once
            // (files landed by sinks are rolled at a bounded size).
            format @ (Format::Parquet | Format::Avro(_)) => {
                let bytes = self
                    .store
                    .get(&meta.location)
                    .await
                    .map_err(|e| SluiceError::new(ErrorKind::StorageUnavailable, e.to_string()))?
                    .bytes()
                    .await
                    .map_err(|e| SluiceError::new(ErrorKind::StorageUnavailable, e.to_string()))?;
                if let Format::Parquet = format {
                    Reader::Whole(Box::new(self.parquet_reader(bytes)?), "Parquet")
                } else {
                    let reader = arrow_avro::reader::ReaderBuilder::new()
                        .with_batch_size(self.options.batch)
                        .build(std::io::Cursor::new(bytes))
                        .map_err(|e| {
                            SluiceError::invalid_parameter(format!("not a readable Avro file: {e}"))
                        })?;
                    Reader::Whole(Box::new(reader), "Avro")
                }
            }
            format => {
                let (quote, header) = match format {
                    Format::Csv { quote, header, .. } => (Some(*quote), *header),
                    _ => (None, false),
                };
                match &range {
                    None => {
                        let reads =
                            ranged_reads(self.store.clone(), meta.location.clone(), 0, meta.size, meta.size);
                        Reader::Lines(LineReader::new(reads, quote, header))
                    }
                    // From the byte before the range: the line that byte
                    // ends (or is inside of) belongs to the range before.
                    Some(r) => {
                        let from = r.start.saturating_sub(1);
                        let reads =
                            ranged_reads(self.store.clone(), meta.location.clone(), from, r.end, meta.size);
                        let mut lines = LineReader::new(reads, quote, false);
                        lines.skip_partial = r.start > 0;
                        lines.stop = Some(r.end - from);
                        Reader::Lines(lines)
                    }
                }
            }
        };
        Ok(OpenFile {
            meta,
            key,
            range,
            partitions,
            reader,
        })
    }

    /// A Parquet file's batches, reading only the payload's columns.
    fn parquet_reader(&self, bytes: Bytes) -> Result<ParquetRecordBatchReader> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(|e| SluiceError::invalid_parameter(format!("not a readable Parquet file: {e}")))?;
        let file_schema = builder.schema().clone();
        let roots: Vec<usize> = self
            .layout
            .payload()
            .fields()
            .iter()
            .filter_map(|f| file_schema.index_of(f.name()).ok())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder
            .with_projection(mask)
            .with_batch_size(self.options.batch)
            .build()
            .map_err(|e| SluiceError::invalid_parameter(format!("reading Parquet: {e}")))
    }

    fn file_url(&self, meta: &ObjectMeta) -> String {
        format!("{}{}", self.url_prefix, meta.location)
    }

    /// The declared columns for `payload` rows read from `file`.
    fn assemble(&self, file: &OpenFile, payload: RecordBatch) -> Result<RecordBatch> {
        let rows = payload.num_rows();
        let url = self.file_url(&file.meta);
        self.layout.assemble(payload, |field: &Field| {
            let array: ArrayRef =
                match metadata_key(field) {
                    Some("file.path") => Arc::new(StringArray::from(vec![url.as_str(); rows])),
                    Some("file.name") => {
                        Arc::new(StringArray::from(vec![
                            file.meta.location.filename().unwrap_or("");
                            rows
                        ]))
                    }
                    Some("file.size") => Arc::new(Int64Array::from(vec![file.meta.size as i64; rows])),
                    Some("file.modification-time") => Arc::new(TimestampMicrosecondArray::from(vec![
                    file.meta.last_modified.timestamp_micros();
                    rows
                ])),
                    Some(other) => return Err(SluiceError::internal(format!("file metadata '{other}'"))),
                    None => match file.partitions.get(field.name()) {
                        Some(v) => Arc::new(StringArray::from(vec![v.as_deref(); rows])),
                        None => new_null_array(&arrow::datatypes::DataType::Utf8, rows),
                    },
                };
            Ok(array)
        })
    }

    /// A Parquet or Avro batch in the payload's columns (by name; missing
    /// ones NULL).
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let payload = self.layout.payload();
        let mut columns = Vec::with_capacity(payload.fields().len());
        for f in payload.fields() {
            columns.push(match batch.schema().index_of(f.name()) {
                Ok(i) => cast(batch.column(i), f.data_type())?,
                Err(_) => new_null_array(f.data_type(), batch.num_rows()),
            });
        }
        Ok(RecordBatch::try_new_with_options(
            payload.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?)
    }

    /// A file that cannot be read at all (a broken Parquet file): one bad
    /// record.
    fn bad_file(&mut self, meta: &ObjectMeta, error: String) -> Result<()> {
        let url = self.file_url(meta);
        self.bad.record(BadRecord {
            raw: Vec::new(),
            error,
            position: vec![("file", Value::from(url))],
        })
    }

    /// The next batch of the file being read; `None` when it is done.
    /// `records`: what its line reader returned (line formats).
    fn read(&mut self, file: &mut OpenFile, records: Option<Result<Records>>) -> Result<Option<RecordBatch>> {
        match &mut file.reader {
            Reader::Whole(reader, name) => match reader.next() {
                None => Ok(None),
                Some(Ok(batch)) => {
                    let batch = self.conform(batch)?;
                    Ok(Some(self.assemble(file, batch)?))
                }
                Some(Err(e)) => {
                    let error = format!("reading {name}: {e}");
                    self.bad_file(&file.meta, error)?;
                    Ok(None)
                }
            },
            Reader::Lines(_) => {
                let records = records.unwrap_or_else(|| Ok(Vec::new()))?;
                if records.is_empty() {
                    return Ok(None);
                }
                let payloads: Vec<&[u8]> = records.iter().map(|(_, r)| &r[..]).collect();
                let decoder = self.decoder.as_ref().expect("line formats have a decoder");
                let mut bad = Vec::new();
                let (batch, _) = decoder.decode(&payloads, |i, e| {
                    bad.push((i, e));
                    Ok(())
                })?;
                let url = self.file_url(&file.meta);
                for (i, error) in bad {
                    let (line, raw) = &records[i];
                    self.bad.record(BadRecord {
                        raw: raw.to_vec(),
                        error,
                        position: match &file.range {
                            None => vec![("file", Value::from(url.clone())), ("line", Value::from(*line))],
                            // Lines are counted from the range's first.
                            Some(r) => vec![
                                ("file", Value::from(url.clone())),
                                ("range_start", Value::from(r.start)),
                                ("line_in_range", Value::from(*line)),
                            ],
                        },
                    })?;
                }
                Ok(Some(self.assemble(file, batch)?))
            }
        }
    }
}

#[async_trait]
impl Source for FileSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            self.bad.flush().await?;
            if let Some(open) = self.current.as_mut() {
                // Awaits only with the file in place (a source read can be
                // dropped at an await: the runtime times it out to send
                // watermarks); the file is taken out after.
                let records = match &mut open.reader {
                    Reader::Lines(lines) => Some(lines.next(self.options.batch).await),
                    Reader::Whole(..) => None,
                };
                let mut file = self.current.take().expect("checked above");
                let next = self.read(&mut file, records);
                match next {
                    Ok(Some(batch)) => {
                        self.current = Some(file);
                        self.steps += 1;
                        if self.skip > 0 {
                            // Read before the checkpoint this resumed from.
                            self.skip -= 1;
                            continue;
                        }
                        if batch.num_rows() > 0 {
                            return Ok(Some(batch));
                        }
                    }
                    Ok(None) => {
                        self.files_done += 1;
                        self.bytes_done += file.range.as_ref().map_or(file.meta.size, |r| r.end - r.start);
                        self.done.insert(file.key.clone());
                        self.steps = 0;
                    }
                    Err(e) => {
                        return Err(SluiceError::new(
                            e.kind(),
                            format!("reading {}: {e}", self.file_url(&file.meta)),
                        ));
                    }
                }
                continue;
            }
            if let Some(unit) = self.queue.front().cloned() {
                // Off the queue only once opened: dropped while opening,
                // the next call opens it again.
                let opened = self.open(unit.clone()).await;
                self.queue.pop_front();
                self.steps = 0;
                self.skip = self.resume_current.remove(&unit.key()).unwrap_or(0);
                let meta = &unit.meta;
                match opened {
                    Ok(file) => self.current = Some(file),
                    Err(e) if e.kind() == ErrorKind::InvalidParameter => {
                        self.bytes_done += unit.size();
                        self.done.insert(unit.key());
                        self.bad_file(meta, e.to_string())?
                    }
                    Err(e) => {
                        // Not readable now (storage): try again later
                        // (listed, and counted, again).
                        self.seen.remove(&unit.key());
                        self.bytes_listed -= unit.size();
                        return Err(SluiceError::new(
                            e.kind(),
                            format!("opening {}: {e}", self.file_url(meta)),
                        ));
                    }
                }
                continue;
            }
            if self.listed && self.options.bounded {
                return Ok(None);
            }
            if self.listed {
                tokio::time::sleep_until(self.next_list).await;
            }
            self.list().await?;
            self.listed = true;
            self.next_list = tokio::time::Instant::now() + self.options.interval;
        }
    }

    fn take_bad_records(&mut self) -> u64 {
        self.bad.take_count()
    }

    fn position(&self) -> Option<String> {
        let position = Position {
            done: self.done.clone(),
            current: self.current.as_ref().map(|f| f.key.clone()),
            steps: self.steps,
            reading: self.resume_current.clone(),
        };
        serde_json::to_string(&position).ok()
    }

    /// Bytes of the files read, of those listed (bounded mode only: a
    /// continuous source has no end to be part of).
    fn progress(&self) -> Option<Progress> {
        if !self.options.bounded || !self.listed {
            return None;
        }
        let current = match self.current.as_ref().map(|f| &f.reader) {
            Some(Reader::Lines(lines)) => lines.consumed(),
            _ => 0,
        };
        Some(Progress {
            done: self.bytes_done + current,
            total: self.bytes_listed,
            unit: ProgressUnit::Bytes,
        })
    }

    fn status(&self) -> Option<String> {
        let mut s = format!("files read={} queued={}", self.files_done, self.queue.len());
        if let Some(f) = &self.current {
            s.push_str(&format!(" reading={}", self.file_url(&f.meta)));
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tasks read part of the files (one stops in the middle of a
    /// file), their positions are split over three tasks, which read to
    /// the end: every record is read exactly once.
    #[tokio::test]
    async fn positions_split_over_another_number_of_tasks_read_every_record_once() {
        rescaled_tasks_read_every_record_once(None).await;
    }

    /// The same with files read in ranges of 45 bytes: lines cross range
    /// ends, and tasks stop in the middle of ranges.
    #[tokio::test]
    async fn ranges_of_files_split_over_another_number_of_tasks_read_every_record_once() {
        rescaled_tasks_read_every_record_once(Some("45B")).await;
    }

    async fn rescaled_tasks_read_every_record_once(split: Option<&str>) {
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, Field, Int64Type, Schema};
        let dir = tempfile::tempdir().unwrap();
        for f in 0..6 {
            let lines: String = (0..10).map(|j| format!("{{\"v\": {}}}\n", f * 100 + j)).collect();
            std::fs::write(dir.path().join(format!("f{f}.json")), lines).unwrap();
        }
        let options: BTreeMap<String, String> = [
            ("path", dir.path().to_str().unwrap()),
            ("format", "json"),
            ("batch.size", "3"),
            ("scan.mode", "bounded"),
        ]
        .into_iter()
        .chain(split.map(|s| ("scan.split-size", s)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let connector = FileSystemSource::new(sluice_engine::storage::StoreRegistry::default());
        let mut read: Vec<i64> = Vec::new();
        let mut take = |b: RecordBatch| {
            let v = b.column(0).as_primitive::<Int64Type>();
            read.extend(v.values().iter().copied());
        };
        let mut old = Vec::new();
        for (task, batches) in [(0, 5), (1, 2)] {
            let mut src = connector.open(&options, &schema, task, 2, None).unwrap();
            for _ in 0..batches {
                if let Some(b) = src.next_batch().await.unwrap() {
                    take(b);
                }
            }
            old.push(src.position());
        }
        assert!(
            old.iter()
                .flatten()
                .any(|p| p.contains("\"steps\":") && !p.contains("\"current\":null")),
            "a task stopped in the middle of a file: {old:?}"
        );
        if split.is_some() {
            assert!(
                old.iter().flatten().any(|p| p.contains(".json#bytes=")),
                "files read in ranges: {old:?}"
            );
        }
        let positions = connector.rescale_positions(&options, &old, 3).unwrap();
        assert_eq!(positions.len(), 3);
        for (task, position) in positions.iter().enumerate() {
            let mut src = connector
                .open(&options, &schema, task, 3, position.as_deref())
                .unwrap();
            while let Some(b) = src.next_batch().await.unwrap() {
                take(b);
            }
        }
        read.sort_unstable();
        let all: Vec<i64> = (0..6).flat_map(|f| (0..10).map(move |j| f * 100 + j)).collect();
        assert_eq!(read, all);
    }

    #[tokio::test]
    async fn csv_records_may_span_lines_inside_quotes() {
        let data = b"id,name\n1,\"a\nb\"\r\n\n2,c".to_vec();
        let stream = futures::stream::iter(
            data.chunks(3)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let mut r = LineReader::new(stream.boxed(), Some(b'"'), true);
        let got = r.next(10).await.unwrap();
        let want = vec![
            (2, Bytes::from_static(b"1,\"a\nb\"")),
            (5, Bytes::from_static(b"2,c")),
        ];
        assert_eq!(got, want);
        assert!(r.next(10).await.unwrap().is_empty());
    }

    /// Lines cut into chunks at every size give the same records as
    /// splitting the whole text at its line breaks (blank lines dropped,
    /// CR before LF trimmed, line numbers counted), gathered in batches of
    /// every size.
    #[tokio::test]
    async fn records_are_the_same_however_the_bytes_are_chunked() {
        let mut text = Vec::new();
        let mut want: Records = Vec::new();
        for i in 0..200u64 {
            let line = format!("{{\"k\": {i}, \"v\": \"{}\"}}", "x".repeat((i * 7 % 23) as usize));
            text.extend_from_slice(line.as_bytes());
            text.extend_from_slice(if i % 5 == 0 { b"\r\n" } else { b"\n" });
            if i % 9 == 0 {
                text.extend_from_slice(b"\n");
            }
            want.push((0, Bytes::from(line)));
        }
        // Line numbers: blank lines count.
        let mut line = 1;
        for (i, w) in want.iter_mut().enumerate() {
            w.0 = line;
            line += if i % 9 == 0 { 2 } else { 1 };
        }
        for chunk in [1, 2, 3, 7, 64, 1000, text.len()] {
            for batch in [1, 5, 64, 1000] {
                let chunks: Vec<_> = text
                    .chunks(chunk)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let mut r = LineReader::new(futures::stream::iter(chunks).boxed(), None, false);
                let mut got = Vec::new();
                loop {
                    let records = r.next(batch).await.unwrap();
                    if records.is_empty() {
                        break;
                    }
                    assert!(records.len() <= batch);
                    got.extend(records);
                }
                assert_eq!(got, want, "chunks of {chunk}, batches of {batch}");
                assert_eq!(r.consumed(), text.len() as u64);
            }
        }
    }

    /// A file read in ranges (from the byte before each, dropping the line
    /// that byte is in, stopping at the first line starting past the
    /// range) gives every line once, whatever the range and chunk sizes.
    #[tokio::test]
    async fn ranges_of_a_file_give_every_line_once() {
        let text: Vec<u8> = (0..60u64)
            .flat_map(|i| {
                format!("{{\"k\": {i}, \"pad\": \"{}\"}}\n", "y".repeat((i % 7) as usize)).into_bytes()
            })
            .collect();
        let want: Vec<Bytes> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(Bytes::copy_from_slice)
            .collect();
        let size = text.len() as u64;
        for split in [1u64, 2, 5, 17, 18, 19, 64, 500, size, size + 1] {
            for chunk in [1usize, 3, 64, 4096] {
                let mut got = Vec::new();
                for start in (0..size).step_by(split as usize) {
                    let end = (start + split).min(size);
                    let from = start.saturating_sub(1);
                    let chunks: Vec<_> = text[from as usize..]
                        .chunks(chunk)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    let mut r = LineReader::new(futures::stream::iter(chunks).boxed(), None, false);
                    r.skip_partial = start > 0;
                    r.stop = Some(end - from);
                    loop {
                        let records = r.next(7).await.unwrap();
                        if records.is_empty() {
                            break;
                        }
                        got.extend(records.into_iter().map(|(_, b)| b));
                    }
                    assert!(r.consumed() <= end - from);
                }
                assert_eq!(got, want, "ranges of {split}, chunks of {chunk}");
            }
        }
    }

    /// `next` dropped at an await (as the runtime's tick timeout does)
    /// loses no record: calls that never finish, then ones that do, give
    /// every line once.
    #[tokio::test]
    async fn line_reader_loses_nothing_when_a_read_is_dropped() {
        use futures::FutureExt;
        let data: Vec<u8> = (0..50).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        // Every chunk comes after a pending poll.
        let stream = futures::stream::iter(
            data.chunks(4)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
        .then(|c| async move {
            tokio::task::yield_now().await;
            c
        });
        let mut r = LineReader::new(stream.boxed(), None, false);
        let mut got = Vec::new();
        // Polled once and dropped, many times: progress is kept inside.
        for _ in 0..40 {
            if let Some(records) = r.next(20).now_or_never() {
                got.extend(records.unwrap());
            }
        }
        loop {
            let records = r.next(20).await.unwrap();
            if records.is_empty() {
                break;
            }
            got.extend(records);
        }
        let want: Records = (0..50)
            .map(|i| (i + 1, Bytes::from(format!("line {i}"))))
            .collect();
        assert_eq!(got, want);
    }
}

//! The `filesystem` sink: Hive-partitioned Parquet, JSON lines or CSV files
//! on any object store (`file://`, `s3://`, `hdfs://`), and the `blackhole`
//! sink for benchmarks.
//!
//! Each output lane of a job writes its own files, so lanes never contend.
//! Rows are buffered per partition directory and a file is written whole
//! (one `put`, which object stores make visible atomically) when the buffer
//! reaches the size limit, when it has been open for the rollover interval
//! (checked as watermarks pass), at each checkpoint, and when the input
//! ends. File names carry the job's run id, the lane and a sequence number,
//! so they never collide. A file is written under a hidden in-progress name
//! and made visible by the sink's commit log (`commitlog`): when the
//! checkpoint that covers it completes (exactly-once), or right away in a
//! job without checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int8Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice_engine::datafusion::parquet::arrow::ArrowWriter;
use sluice_engine::datafusion::parquet::basic::{Compression, ZstdLevel};
use sluice_engine::datafusion::parquet::file::properties::WriterProperties;
use sluice_engine::retry::retry;
use sluice_engine::sink::{CommitRequest, Landed, SinkConnector, SinkContext, SinkWriter, TableLog};

use crate::commitlog::{
    FsLog, FsLogConfig, LANE_KEY, LANES_KEY, PartitionCommit, PendingFile, Trigger, WATERMARK_KEY,
    pending_batch, pending_files, query_hash, staging_path, staging_tag,
};
use sluice_engine::{Result, SluiceError};

const DEFAULT_FILE_SIZE: u64 = 64 * 1024 * 1024;
const DEFAULT_ROLLOVER: Duration = Duration::from_secs(60);

/// Where and how the filesystem sink writes.
#[derive(Debug, Clone)]
pub(crate) struct FsOptions {
    pub(crate) path: String,
    format: Format,
    pub(crate) partition_by: Vec<String>,
    file_size: u64,
    rollover: Duration,
    changelog: bool,
    /// Files larger than this are uploaded in parts.
    multipart_threshold: u64,
    /// `sink.partition-commit.*`: success files for completed partitions.
    pub(crate) partition_commit: Option<PartitionCommit>,
}

/// Files above this size go up as multipart uploads by default.
const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// The part size of multipart uploads (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    Json,
    Csv,
}

impl Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// `64MB`, `512 KB`, `1048576`.
pub(crate) fn parse_size(key: &str, v: &str) -> Result<u64> {
    let t = v.trim().to_ascii_uppercase();
    let (num, mul) = [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)]
        .iter()
        .find_map(|(suffix, mul)| t.strip_suffix(suffix).map(|n| (n.trim().to_string(), *mul)))
        .unwrap_or((t.clone(), 1));
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mul)
        .ok_or_else(|| {
            SluiceError::invalid_parameter(format!("option '{key}': '{v}' is not a size such as '64MB'"))
        })
}

/// `10s`, `500 ms`, `2 min`, `1h`.
pub(crate) fn parse_duration(key: &str, v: &str) -> Result<Duration> {
    let t = v.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        SluiceError::invalid_parameter(format!("option '{key}': '{v}' is not a duration such as '10s'"))
    })?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" | "sec" | "second" | "seconds" => Duration::from_secs(n),
        "min" | "minute" | "minutes" => Duration::from_secs(n * 60),
        "h" | "hour" | "hours" => Duration::from_secs(n * 3600),
        other => {
            return Err(SluiceError::invalid_parameter(format!(
                "option '{key}': unknown unit '{other}' (use ms, s, min or h)"
            )));
        }
    };
    Ok(d)
}

impl FsOptions {
    pub(crate) fn parse(options: &BTreeMap<String, String>, schema: &Schema, updating: bool) -> Result<Self> {
        let path = options.get("path").cloned().ok_or_else(|| {
            SluiceError::invalid_parameter("sink connector 'filesystem' needs option 'path'")
        })?;
        let format = match options.get("format").map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("parquet") => Format::Parquet,
            Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "sink format '{other}' is not supported; use parquet, json or csv"
                )));
            }
        };
        let partition_by: Vec<String> = options
            .get("partition_by")
            .map(|s| {
                s.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for c in &partition_by {
            if schema.index_of(c).is_err() {
                let cols: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(SluiceError::invalid_parameter(format!(
                    "partition_by column '{c}' is not in the query's output ({})",
                    cols.join(", ")
                )));
            }
        }
        if partition_by.len() == schema.fields().len() {
            return Err(SluiceError::invalid_parameter(
                "partition_by can't name every output column: files would have no columns",
            ));
        }
        let changelog = match options
            .get("changelog")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(SluiceError::invalid_parameter(format!(
                    "option 'changelog': '{other}' is not true or false"
                )));
            }
        };
        if updating && !changelog {
            return Err(SluiceError::new(
                sluice_engine::ErrorKind::NotSupported,
                "the query's result is updating (a GROUP BY without windows retracts rows) and the \
                 filesystem sink only appends; aggregate over windows (TUMBLE/HOP), use a materialized \
                 view, or set 'changelog' = 'true' to land every change with an 'op' column \
                 ('insert' / 'delete')",
            ));
        }
        if changelog && schema.index_of("op").is_ok() {
            return Err(SluiceError::invalid_parameter(
                "with 'changelog' = 'true' the sink adds an 'op' column; the query already has one",
            ));
        }
        let file_size = match options.get("sink.rolling-policy.file-size") {
            Some(v) => parse_size("sink.rolling-policy.file-size", v)?,
            None => DEFAULT_FILE_SIZE,
        };
        let rollover = match options.get("sink.rolling-policy.rollover-interval") {
            Some(v) => parse_duration("sink.rolling-policy.rollover-interval", v)?,
            None => DEFAULT_ROLLOVER,
        };
        let multipart_threshold = match options.get("sink.multipart.threshold") {
            Some(v) => parse_size("sink.multipart.threshold", v)?,
            None => DEFAULT_MULTIPART_THRESHOLD,
        };
        let partition_commit = parse_partition_commit(options, &partition_by)?;
        Ok(Self {
            path,
            format,
            partition_by,
            file_size,
            rollover,
            changelog: changelog && updating,
            multipart_threshold,
            partition_commit,
        })
    }

    /// The schema of what lands: the output plus `op` in changelog mode.
    pub(crate) fn landed_schema(&self, schema: &Schema) -> SchemaRef {
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        if self.changelog {
            fields.push(Field::new("op", DataType::Utf8, false));
        }
        Arc::new(Schema::new(fields))
    }
}

/// `sink.partition-commit.*` (Flink's names): None unless the policy is
/// `success-file`.
fn parse_partition_commit(
    options: &BTreeMap<String, String>,
    partition_by: &[String],
) -> Result<Option<PartitionCommit>> {
    let given = |k: &str| options.get(k).map(|v| v.trim().to_string());
    let policy = given("sink.partition-commit.policy.kind").map(|p| p.to_ascii_lowercase());
    match policy.as_deref() {
        None => {
            if let Some(k) = options.keys().find(|k| {
                k.starts_with("sink.partition-commit.") || k.starts_with("partition.time-extractor.")
            }) {
                return Err(SluiceError::invalid_parameter(format!(
                    "option '{k}' needs 'sink.partition-commit.policy.kind' = 'success-file'"
                )));
            }
            return Ok(None);
        }
        Some("success-file") => {}
        Some(other) => {
            return Err(SluiceError::not_supported(format!(
                "partition commit policy '{other}' is not supported; use 'success-file' (there is no \
                 metastore: SELECT reads the directories directly)"
            )));
        }
    }
    if partition_by.is_empty() {
        return Err(SluiceError::invalid_parameter(
            "a partition commit policy needs partition_by: it marks partition directories complete",
        ));
    }
    let delay = match given("sink.partition-commit.delay") {
        Some(v) => parse_duration("sink.partition-commit.delay", &v)?,
        None => Duration::ZERO,
    };
    let pattern = given("partition.time-extractor.timestamp-pattern");
    let trigger = match given("sink.partition-commit.trigger")
        .map(|t| t.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("process-time") => {
            if pattern.is_some() {
                return Err(SluiceError::invalid_parameter(
                    "'partition.time-extractor.timestamp-pattern' applies to 'sink.partition-commit.trigger' = 'partition-time'",
                ));
            }
            Trigger::ProcessTime
        }
        Some("partition-time") => {
            let pattern = match pattern {
                Some(p) => p,
                None if partition_by.len() == 1 => format!("${}", partition_by[0]),
                None => {
                    return Err(SluiceError::invalid_parameter(format!(
                        "with several partition columns, set 'partition.time-extractor.timestamp-pattern' \
                         (such as '${} ${}:00:00') to read a partition's time",
                        partition_by[0], partition_by[1]
                    )));
                }
            };
            if let Some(missing) = partition_by.iter().find(|c| !pattern.contains(&format!("${c}")))
                && !partition_by.iter().any(|c| pattern.contains(&format!("${c}")))
            {
                return Err(SluiceError::invalid_parameter(format!(
                    "the timestamp pattern '{pattern}' names no partition column (such as ${missing})"
                )));
            }
            Trigger::PartitionTime { pattern }
        }
        Some(other) => {
            return Err(SluiceError::invalid_parameter(format!(
                "option 'sink.partition-commit.trigger': '{other}' is not 'partition-time' or 'process-time'"
            )));
        }
    };
    let file_name = given("sink.partition-commit.success-file.name").unwrap_or_else(|| "_SUCCESS".into());
    if file_name.is_empty() || file_name.contains('/') {
        return Err(SluiceError::invalid_parameter(format!(
            "option 'sink.partition-commit.success-file.name': '{file_name}' is not a file name"
        )));
    }
    Ok(Some(PartitionCommit {
        trigger,
        delay,
        file_name,
    }))
}

/// The `filesystem` sink connector.
#[derive(Debug, Default)]
pub struct FileSystemSink;

impl SinkConnector for FileSystemSink {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn option_keys(&self) -> &[&'static str] {
        &[
            "path",
            "format",
            "partition_by",
            "changelog",
            "sink.rolling-policy.file-size",
            "sink.rolling-policy.rollover-interval",
            "sink.multipart.threshold",
            "sink.partition-commit.policy.kind",
            "sink.partition-commit.trigger",
            "sink.partition-commit.delay",
            "sink.partition-commit.success-file.name",
            "partition.time-extractor.timestamp-pattern",
        ]
    }

    fn validate(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
    ) -> Result<Option<Landed>> {
        let o = FsOptions::parse(options, schema, updating)?;
        Ok(Some(Landed {
            location: o.path.clone(),
            format: o.format.name().to_string(),
            partition_by: o.partition_by.clone(),
        }))
    }

    fn landed_schema(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
    ) -> SchemaRef {
        match FsOptions::parse(options, schema, updating) {
            Ok(o) => o.landed_schema(schema),
            Err(_) => schema.clone(),
        }
    }

    /// Every file lands through a commit log (exactly-once with
    /// checkpoints; see `commitlog`).
    fn table_log(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
        ctx: &SinkContext,
        query: &str,
    ) -> Result<Option<Arc<dyn TableLog>>> {
        let o = FsOptions::parse(options, schema, updating)?;
        let (store, base) = ctx.resolve(&o.path)?;
        Ok(Some(Arc::new(FsLog::new(FsLogConfig {
            name: ctx.name.clone(),
            job_id: ctx.job_id.clone(),
            run_id: ctx.run_id.clone(),
            query_hash: query_hash(query),
            store,
            base,
            landed: Landed {
                location: o.path.clone(),
                format: o.format.name().to_string(),
                partition_by: o.partition_by.clone(),
            },
            landed_schema: o.landed_schema(schema),
            partition_commit: o.partition_commit.clone(),
        }))))
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
        ctx: &SinkContext,
        lane: usize,
        lanes: usize,
    ) -> Result<Box<dyn SinkWriter>> {
        let o = FsOptions::parse(options, schema, updating)?;
        let landed = o.landed_schema(schema);
        let log = ctx
            .table_log
            .clone()
            .ok_or_else(|| SluiceError::internal("the filesystem sink was opened without its commit log"))?;
        let mut writer = FsWriter::new(
            o,
            landed,
            ctx,
            lane,
            Some(LogLane {
                pending: vec![],
                log,
                checkpointing: ctx.checkpointing,
                casts: false,
                staging: Some(staging_tag(&ctx.job_id)),
            }),
        )?;
        writer.lanes = lanes;
        Ok(Box::new(writer))
    }
}

impl FsWriter {
    /// A lane's writer of `landed` rows. With `log`, written files are kept
    /// as pending for a table log instead of being visible on their own.
    pub(crate) fn new(
        o: FsOptions,
        landed: SchemaRef,
        ctx: &SinkContext,
        lane: usize,
        log: Option<LogLane>,
    ) -> Result<Self> {
        let (store, base) = ctx.resolve(&o.path)?;
        let partition_idx: Vec<usize> = o
            .partition_by
            .iter()
            .map(|c| landed.index_of(c).expect("checked in parse"))
            .collect();
        let file_cols: Vec<usize> = (0..landed.fields().len())
            .filter(|i| !partition_idx.contains(i))
            .collect();
        let file_schema = Arc::new(landed.project(&file_cols)?);
        Ok(FsWriter {
            store,
            base,
            options: o,
            landed,
            partition_idx,
            file_cols,
            file_schema,
            buffers: HashMap::new(),
            prefix: format!("part-{}-{lane}", ctx.run_id),
            seq: 0,
            log,
            lane,
            lanes: 1,
            watermark: None,
        })
    }
}

/// A lane's side of a table log: the files it wrote since the last
/// checkpoint, and (for jobs without checkpoints) the log it commits them
/// to itself.
pub(crate) struct LogLane {
    /// With the checkpoint each was last handed to.
    pub(crate) pending: Vec<(Option<u64>, PendingFile)>,
    pub(crate) log: Arc<dyn TableLog>,
    /// With checkpoints, pending files go into the checkpoint and the
    /// coordinator commits them; without, the lane commits them itself
    /// whenever it closes files.
    pub(crate) checkpointing: bool,
    /// Casts the output to the log's column types (Delta's timestamps are
    /// microseconds in UTC).
    pub(crate) casts: bool,
    /// Files are written under hidden in-progress names carrying this tag
    /// and renamed by the commit (the filesystem sink); None: written under
    /// their final names, which only the log makes part of the table
    /// (Delta).
    pub(crate) staging: Option<String>,
}

struct Buffer {
    batches: Vec<RecordBatch>,
    bytes: u64,
    opened: Instant,
}

pub(crate) struct FsWriter {
    store: Arc<dyn ObjectStore>,
    base: Path,
    options: FsOptions,
    landed: SchemaRef,
    partition_idx: Vec<usize>,
    file_cols: Vec<usize>,
    file_schema: SchemaRef,
    buffers: HashMap<String, Buffer>,
    prefix: String,
    seq: u64,
    log: Option<LogLane>,
    lane: usize,
    lanes: usize,
    /// The newest event-time watermark seen (µs).
    watermark: Option<i64>,
}

/// Hive's spelling of a NULL partition value.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

impl FsWriter {
    /// The output batch as it lands: with `op` in changelog mode.
    fn landed_batch(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let batch = self.landed_changes(batch)?;
        if !self.log.as_ref().is_some_and(|l| l.casts) {
            return Ok(batch);
        }
        let cols = batch
            .columns()
            .iter()
            .zip(self.landed.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.landed.clone(), cols)?)
    }

    fn landed_changes(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if !self.options.changelog {
            return Ok(batch);
        }
        let n = batch.num_columns();
        let ops = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<Int8Array>()
            .ok_or_else(|| SluiceError::internal("updating batch without op column"))?;
        let op: StringArray = ops
            .values()
            .iter()
            .map(|o| Some(if *o > 0 { "insert" } else { "delete" }))
            .collect();
        let mut cols: Vec<ArrayRef> = batch.columns()[..n - 1].to_vec();
        cols.push(Arc::new(op));
        let mut fields: Vec<Field> = batch.schema().fields()[..n - 1]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("op", DataType::Utf8, false));
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }

    fn partitions(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        if self.partition_idx.is_empty() {
            return Ok(vec![(String::new(), batch.project(&self.file_cols)?)]);
        }
        let cols: Vec<ArrayRef> = self
            .partition_idx
            .iter()
            .map(|&i| cast(batch.column(i), &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        let cols: Vec<&StringArray> = cols
            .iter()
            .map(|c| c.as_any().downcast_ref::<StringArray>().expect("cast to Utf8"))
            .collect();
        let mut groups: HashMap<String, Vec<u32>> = HashMap::new();
        let names: Vec<&str> = self
            .partition_idx
            .iter()
            .map(|&i| self.landed.field(i).name().as_str())
            .collect();
        for row in 0..batch.num_rows() {
            let mut key = String::new();
            for (c, name) in cols.iter().zip(&names) {
                if !key.is_empty() {
                    key.push('/');
                }
                let v = if c.is_null(row) {
                    NULL_PARTITION
                } else {
                    c.value(row)
                };
                key.push_str(name);
                key.push('=');
                key.push_str(v);
            }
            groups.entry(key).or_default().push(row as u32);
        }
        let files = batch.project(&self.file_cols)?;
        groups
            .into_iter()
            .map(|(k, rows)| {
                let part = if rows.len() == files.num_rows() {
                    files.clone()
                } else {
                    take_record_batch(&files, &UInt32Array::from(rows))?
                };
                Ok((k, part))
            })
            .collect()
    }

    async fn flush(&mut self, key: &str) -> Result<()> {
        let Some(buffer) = self.buffers.remove(key) else {
            return Ok(());
        };
        let rows: usize = buffer.batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok(());
        }
        // Encoding a file (Parquet with ZSTD: up to seconds for a large one)
        // is CPU work: off the async workers, which other jobs and client
        // sessions share.
        let (format, schema) = (self.options.format, self.file_schema.clone());
        let bytes = tokio::task::spawn_blocking(move || encode(format, &schema, &buffer.batches))
            .await
            .map_err(|e| SluiceError::internal(format!("encoding a file: {e}")))??;
        let mut path = self.base.clone();
        for segment in key.split('/').filter(|s| !s.is_empty()) {
            path = path.join(segment);
        }
        self.seq += 1;
        let file = format!("{}-{:05}.{}", self.prefix, self.seq, self.options.format.name());
        let path = path.join(file.as_str());
        let target = match self.log.as_ref().and_then(|l| l.staging.as_deref()) {
            Some(tag) => staging_path(&path, tag),
            None => path.clone(),
        };
        let bytes = bytes::Bytes::from(bytes);
        let size = bytes.len() as i64;
        let store = self.store.as_ref();
        let multipart = bytes.len() as u64 > self.options.multipart_threshold;
        retry(format!("writing {target}"), || {
            let (bytes, target) = (bytes.clone(), &target);
            async move {
                if multipart {
                    upload_in_parts(store, target, bytes).await
                } else {
                    store.put(target, PutPayload::from(bytes)).await.map(|_| ())
                }
            }
        })
        .await
        .map_err(|e| {
            SluiceError::new(
                sluice_engine::ErrorKind::StorageUnavailable,
                format!("writing {target}: {e}"),
            )
        })?;
        if let Some(log) = &mut self.log {
            let relative = path
                .prefix_match(&self.base)
                .map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .ok_or_else(|| SluiceError::internal(format!("{path} is not under {}", self.base)))?;
            let partition = key
                .split('/')
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.to_string(), (v != NULL_PARTITION).then(|| v.to_string())))
                .collect();
            log.pending.push((
                None,
                PendingFile {
                    path: relative,
                    size,
                    rows: rows as i64,
                    partition,
                },
            ));
        }
        Ok(())
    }
}

/// A large file as a multipart upload (parts of [`PART_SIZE`], uploaded
/// concurrently by object_store); the object appears whole when the upload
/// completes (a failed completion is aborted; the whole file is retried).
async fn upload_in_parts(
    store: &dyn ObjectStore,
    path: &Path,
    bytes: bytes::Bytes,
) -> object_store::Result<()> {
    let upload = store.put_multipart(path).await?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    writer.put(bytes);
    writer.finish().await.map(|_| ())
}

fn encode(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let mut w = ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
                .map_err(sluice_engine::datafusion::error::DataFusionError::from)?;
            for b in batches {
                w.write(b)
                    .map_err(sluice_engine::datafusion::error::DataFusionError::from)?;
            }
            w.close()
                .map_err(sluice_engine::datafusion::error::DataFusionError::from)?;
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            for b in batches {
                w.write(b)?;
            }
        }
    }
    Ok(out)
}

impl FsWriter {
    /// A lane's checkpoint state: its pending files, and in the schema's
    /// metadata the lane and its watermark (for partition commits).
    fn lane_state(&self, files: &[PendingFile]) -> Result<RecordBatch> {
        let batch = pending_batch(files)?;
        let mut meta = HashMap::from([
            (LANE_KEY.to_string(), self.lane.to_string()),
            (LANES_KEY.to_string(), self.lanes.to_string()),
        ]);
        if let Some(w) = self.watermark {
            meta.insert(WATERMARK_KEY.to_string(), w.to_string());
        }
        let schema = Arc::new(batch.schema_ref().as_ref().clone().with_metadata(meta));
        Ok(batch.with_schema(schema)?)
    }

    /// Without checkpoints, a table-log lane commits what it closed.
    async fn commit_directly(&mut self) -> Result<()> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        if log.checkpointing || log.pending.is_empty() {
            return Ok(());
        }
        let files: Vec<PendingFile> = log.pending.iter().map(|(_, f)| f.clone()).collect();
        let state = self.lane_state(&files)?;
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        log.log
            .commit(CommitRequest {
                epoch: None,
                lane_states: vec![vec![state]],
                sources: vec![],
            })
            .await?;
        log.pending.clear();
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<()> {
        let keys: Vec<String> = self.buffers.keys().cloned().collect();
        for key in keys {
            self.flush(&key).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for FsWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = self.landed_batch(batch)?;
        for (key, part) in self.partitions(&batch)? {
            let size = part.get_array_memory_size() as u64;
            let buffer = self.buffers.entry(key.clone()).or_insert_with(|| Buffer {
                batches: vec![],
                bytes: 0,
                opened: Instant::now(),
            });
            buffer.batches.push(part);
            buffer.bytes += size;
            if buffer.bytes >= self.options.file_size {
                self.flush(&key).await?;
                self.commit_directly().await?;
            }
        }
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64) -> Result<()> {
        // i64::MIN asks to flush (sources without event time): no time.
        if watermark > i64::MIN && self.watermark.is_none_or(|w| watermark > w) {
            self.watermark = Some(watermark);
        }
        let due: Vec<String> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.opened.elapsed() >= self.options.rollover)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.flush(&key).await?;
        }
        self.commit_directly().await
    }

    /// The input ended: everything is written. A table-log lane commits
    /// its files itself without checkpoints; with them its files went to
    /// the job's final checkpoint, which commits them.
    async fn finish(&mut self) -> Result<()> {
        self.flush_all().await?;
        self.commit_directly().await
    }

    /// Every row before the barrier goes into a closed file, handed to the
    /// checkpoint; the coordinator commits the files when the checkpoint is
    /// complete (exactly-once: a restore commits the restored checkpoint's
    /// files, and rows after it are produced again into new files).
    async fn checkpoint(&mut self, epoch: u64) -> Result<Vec<RecordBatch>> {
        self.flush_all().await?;
        match &mut self.log {
            Some(log) if log.checkpointing => {
                // Files of a committed checkpoint are done; those of a
                // failed one go into this one again.
                let committed = log.log.committed_epoch();
                log.pending
                    .retain(|(handed, _)| !matches!((handed, committed), (Some(h), Some(c)) if h <= &c));
                let files: Vec<PendingFile> = log
                    .pending
                    .iter_mut()
                    .map(|(handed, f)| {
                        handed.get_or_insert(epoch);
                        f.clone()
                    })
                    .collect();
                let state = self.lane_state(&files)?;
                Ok(vec![state])
            }
            _ => {
                self.commit_directly().await?;
                Ok(vec![])
            }
        }
    }

    /// A table-log lane's restored state is committed by the coordinator
    /// (its files belong to a completed checkpoint); nothing to take back.
    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if self.log.is_some() {
            pending_files(&state).map(|_| ())
        } else if state.is_empty() {
            Ok(())
        } else {
            Err(SluiceError::internal(
                "the filesystem sink keeps no checkpoint state",
            ))
        }
    }
}

/// The `blackhole` sink: counts and discards (for benchmarks).
#[derive(Debug, Default)]
pub struct BlackholeSink;

struct Blackhole;

#[async_trait]
impl SinkWriter for Blackhole {
    async fn checkpoint(&mut self, _epoch: u64) -> Result<Vec<RecordBatch>> {
        Ok(vec![])
    }

    async fn write(&mut self, _batch: RecordBatch) -> Result<()> {
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl SinkConnector for BlackholeSink {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn option_keys(&self) -> &[&'static str] {
        &[]
    }

    fn validate(&self, _: &BTreeMap<String, String>, _: &SchemaRef, _: bool) -> Result<Option<Landed>> {
        Ok(None)
    }

    fn open(
        &self,
        _: &BTreeMap<String, String>,
        _: &SchemaRef,
        _: bool,
        _: &SinkContext,
        _: usize,
        _: usize,
    ) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(Blackhole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_like_flink_options() {
        assert_eq!(parse_size("k", "64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("k", "512 kb").unwrap(), 512 << 10);
        assert_eq!(parse_size("k", "100").unwrap(), 100);
        assert!(parse_size("k", "lots").is_err());
        assert_eq!(parse_duration("k", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("k", "2 min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("k", "500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("k", "5 fortnights").is_err());
    }

    #[test]
    fn updating_queries_need_changelog() {
        let schema = Schema::new(vec![Field::new("k", DataType::Utf8, false)]);
        let mut o = BTreeMap::from([("path".to_string(), "/tmp/x".to_string())]);
        let e = FsOptions::parse(&o, &schema, true).unwrap_err();
        assert!(e.to_string().contains("changelog"), "{e}");
        o.insert("changelog".into(), "true".into());
        let ok = FsOptions::parse(&o, &schema, true).unwrap();
        assert_eq!(ok.landed_schema(&schema).fields().len(), 2);
    }
}

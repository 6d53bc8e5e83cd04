//! Streams: unbounded (or bounded) tables backed by a source connector.
//!
//! The engine owns the source traits; the connectors crate implements them
//! (nexmark and datagen generators, Kafka, files) and the server registers
//! them. A declared stream is a DataFusion table whose scan runs the
//! source, one task per partition, so ad-hoc queries such as
//! `SELECT * FROM bid LIMIT 5` work on it directly, and a bounded source
//! (`events.max`) can be read as a batch table — which is how streaming
//! results are checked against DataFusion's batch answers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use crate::error::{Result, SluiceError};

/// The field-metadata key that marks a declared column as a metadata
/// column (`col TYPE METADATA FROM 'partition'`); its value is the
/// connector's metadata key. Connectors fill such columns themselves instead
/// of decoding them from the payload.
pub const METADATA_KEY: &str = "sluice.metadata";

/// The connector's metadata key of a field, if it is a metadata column.
/// Metadata keys whose column is the time of a change (in a changelog
/// record's envelope: Debezium's `source.ts_ms`, `ts_ms`), not of a row.
pub const CHANGE_TIME_METADATA: &[&str] = &["value.source.timestamp", "value.ingestion-timestamp"];

pub fn metadata_key(field: &arrow::datatypes::Field) -> Option<&str> {
    field.metadata().get(METADATA_KEY).map(String::as_str)
}

/// What flows between streaming operators.
#[derive(Debug, Clone)]
pub enum Message {
    /// Rows.
    Batch(RecordBatch),
    /// No row with an event time below this (microseconds since the epoch)
    /// will follow. Also a progress step (see [`Message::Progress`]).
    Watermark(i64),
    /// A progress step without a change of event time: operators emit what
    /// is pending (an updating aggregate its changed groups) and sinks may
    /// roll files. Streams without event time send one after each batch.
    Progress,
    /// A checkpoint barrier for the given epoch.
    Barrier(u64),
    /// The input has had no rows for a while (an idle Kafka partition):
    /// leave it out of the watermark until it sends rows or a watermark.
    Idle,
    /// The input is exhausted (bounded sources only).
    End,
}

/// How far a source task of a bounded input is through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Units read so far.
    pub done: u64,
    /// Units this task reads in all (may grow while a file listing or a
    /// topic's end is learned).
    pub total: u64,
    pub unit: ProgressUnit,
}

/// What a [`Progress`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressUnit {
    /// Bytes of files.
    Bytes,
    /// Rows (generators).
    Rows,
    /// Records of a log (Kafka offsets).
    Records,
    /// Events of the Nexmark generator's combined stream.
    Events,
}

impl ProgressUnit {
    pub fn name(self) -> &'static str {
        match self {
            ProgressUnit::Bytes => "bytes",
            ProgressUnit::Rows => "rows",
            ProgressUnit::Records => "records",
            ProgressUnit::Events => "events",
        }
    }
}

/// Where a source task stands in one split of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFigures {
    /// What it reads, e.g. the Kafka topic.
    pub name: String,
    /// The split within it, e.g. the partition number.
    pub split: String,
    /// The next offset to read, once known.
    pub offset: Option<i64>,
    /// Records between it and the end of the split, once known.
    pub lag: Option<i64>,
    /// Errors the client reported while reading, since the task started.
    pub errors: u64,
}

/// Name of the operation column that updating streams carry last:
/// `1` inserts the row, `-1` deletes it (an update is a delete and an insert).
pub const OP_COLUMN: &str = "__sluice_op";

/// The schema of an updating stream's batches: the rows plus the op column.
pub fn with_op_column(schema: &arrow::datatypes::Schema) -> SchemaRef {
    let mut fields: Vec<arrow::datatypes::Field> =
        schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(arrow::datatypes::Field::new(OP_COLUMN, DataType::Int8, false));
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// One partition of a running source.
#[async_trait]
pub trait Source: Send {
    /// The next batch, or `None` once a bounded source is exhausted.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// Malformed records skipped since the last call (shown in SHOW JOBS).
    fn take_bad_records(&mut self) -> u64 {
        0
    }

    /// How many independently ordered inputs (splits: Kafka partitions)
    /// this source reads. Each split gets its own watermark; the source's
    /// is the least over splits that are not idle.
    fn splits(&self) -> usize {
        1
    }

    /// The split the last batch came from (a batch holds one split's rows).
    fn last_split(&self) -> usize {
        0
    }

    /// Whether `split` has handed out every row its input had when last
    /// asked (a Kafka partition read to its end). Only such a split may be
    /// called idle and stop holding the watermark back after a while
    /// without rows: a split that is merely slow (a fetch stalled, a
    /// restart catching up) keeps it, or its rows would arrive behind the
    /// watermark and be dropped as late.
    fn split_caught_up(&self, _split: usize) -> bool {
        true
    }

    /// What SHOW JOBS says about this source task beyond row counts:
    /// position and lag per split, a connection being retried, files read.
    fn status(&self) -> Option<String> {
        None
    }

    /// Per split this task reads (a Kafka partition), where it is and how
    /// far behind the end, for the metrics. Empty for sources without such
    /// positions.
    fn split_figures(&self) -> Vec<SplitFigures> {
        Vec::new()
    }

    /// How far this task is through a bounded input (SHOW JOBS' progress
    /// and time left). `None` for unbounded inputs, or before the size of
    /// the input is known.
    fn progress(&self) -> Option<Progress> {
        None
    }

    /// Where this source stands, for a checkpoint: enough to continue right
    /// after the last batch it returned (Kafka offsets per partition, files
    /// read). `None`: it can't resume, so its job can't checkpoint.
    fn position(&self) -> Option<String> {
        None
    }

    /// The checkpoint that recorded `position` (one this source returned)
    /// completed. A source may tell its system so, for information only
    /// (Kafka: the consumer group's committed offsets, which monitoring
    /// reads as lag); Sluice resumes from its own checkpoints, never from
    /// there.
    fn checkpoint_completed(&mut self, _position: &str) {}

    /// Once, true when a source that goes on (a table read again at an
    /// interval) has handed out a whole first copy of its input: it then
    /// says so downstream with the greatest watermark (it has no event
    /// time), and a lookup join's probe rows start to meet it.
    fn take_loaded(&mut self) -> bool {
        false
    }
}

/// A kind of source (`connector = '...'` in `CREATE STREAM`).
pub trait SourceConnector: Send + Sync + Debug {
    /// The connector's name, as users write it.
    fn name(&self) -> &'static str;

    /// Every option the connector accepts (besides `connector`).
    fn option_keys(&self) -> &[&'static str];

    /// Checks the options and returns the schema of the stream: the
    /// connector's own (generators), or the `declared` columns (formats
    /// that need them, datagen). A connector refuses what it can't take.
    fn schema(&self, options: &BTreeMap<String, String>, declared: Option<&SchemaRef>) -> Result<SchemaRef>;

    /// Whether `key` is an option of this connector. Connectors with
    /// per-column options (`fields.<col>.kind`) override this.
    fn accepts_option(&self, key: &str) -> bool {
        self.option_keys().contains(&key)
    }

    /// Whether the source ends by itself with these options.
    fn is_bounded(&self, options: &BTreeMap<String, String>) -> bool;

    /// Whether the source produces a changelog (inserts and deletes, e.g.
    /// Debezium envelopes) rather than appended rows. Its batches then
    /// carry the op column last (see [`OP_COLUMN`]),
    /// and the planner treats the stream as updating.
    fn is_changelog(&self, _options: &BTreeMap<String, String>) -> bool {
        false
    }

    /// For an upsert changelog (each record the whole new row of its key,
    /// or a tombstone deleting it: Kafka's compacted topics), the key
    /// columns of `schema`. Its batches carry the op column (+1 an upsert,
    /// -1 a tombstone whose other columns are NULL); the planner puts an
    /// operator after the source that turns them into inserts and deletes
    /// of whole rows.
    fn upsert_key(
        &self,
        _options: &BTreeMap<String, String>,
        _schema: &SchemaRef,
    ) -> Result<Option<Vec<usize>>> {
        Ok(None)
    }

    /// The event-time column a stream gets when its declaration names none
    /// (`WATERMARK FOR ...`): generators know their clock.
    fn default_event_time(&self, _options: &BTreeMap<String, String>) -> Option<String> {
        None
    }

    /// Opens partition `partition` of `partitions`, producing `schema`;
    /// with `resume`, continuing from what [`Source::position`] returned.
    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        partition: usize,
        partitions: usize,
        resume: Option<&str>,
    ) -> Result<Box<dyn Source>>;

    /// The columns a row appended with `COPY stream FROM STDIN` carries, in
    /// order, when the connector can add rows to what the stream reads (a
    /// new file in a file stream's directory); None when it cannot (the
    /// default).
    fn appendable(
        &self,
        _options: &BTreeMap<String, String>,
        _schema: &SchemaRef,
    ) -> Result<Option<SchemaRef>> {
        Ok(None)
    }

    /// Adds `batches` (of [`Self::appendable`]'s columns) to what the stream
    /// reads, all or nothing; returns how many rows were added.
    fn append<'a>(
        &'a self,
        _options: &'a BTreeMap<String, String>,
        _schema: &'a SchemaRef,
        _batches: Vec<RecordBatch>,
    ) -> futures::future::BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            Err(SluiceError::not_supported(format!(
                "the {} connector does not take rows from COPY",
                self.name()
            )))
        })
    }

    /// The position each partition resumes from when the checkpoint was
    /// taken with another number of partitions (a server restarted with
    /// another parallelism): `old[i]` is old partition `i`'s position, and
    /// the result one position per partition of `partitions`. A connector
    /// whose positions cannot be split anew refuses (the default).
    fn rescale_positions(
        &self,
        _options: &BTreeMap<String, String>,
        old: &[Option<String>],
        partitions: usize,
    ) -> Result<Vec<Option<String>>> {
        Err(SluiceError::not_supported(format!(
            "the {} connector cannot resume {} partitions' positions as {partitions}: \
             start the server with the parallelism the checkpoint was taken at ({})",
            self.name(),
            old.len(),
            old.len()
        )))
    }
}

/// The source connectors the engine knows, by name.
#[derive(Debug, Default, Clone)]
pub struct SourceRegistry {
    connectors: Vec<Arc<dyn SourceConnector>>,
}

impl SourceRegistry {
    /// Adds a connector; a later one with the same name wins.
    pub fn register(&mut self, connector: Arc<dyn SourceConnector>) {
        self.connectors.insert(0, connector);
    }

    /// The connector with that name, or an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<Arc<dyn SourceConnector>> {
        self.connectors
            .iter()
            .find(|c| c.name() == name)
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<_> = self.connectors.iter().map(|c| c.name()).collect();
                names.sort_unstable();
                SluiceError::invalid_parameter(format!(
                    "unknown connector '{name}'; available: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Checks `options` against the connector's accepted keys; an unknown key is
/// an error that lists the accepted ones.
/// The most rows a source may put in one batch (`batch.size`): enough for
/// any throughput, small enough that a batch's buffers are a few hundred MB
/// at worst rather than an allocation that aborts the process.
pub const MAX_BATCH_ROWS: u64 = 1 << 20;

/// A `batch.size` option's value, range-checked.
pub fn batch_size(options: &BTreeMap<String, String>, default: u64) -> Result<usize> {
    let Some(v) = options.get("batch.size") else {
        return Ok(default as usize);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_BATCH_ROWS).contains(&n) => Ok(n as usize),
        _ => Err(SluiceError::invalid_parameter(format!(
            "option 'batch.size' takes a whole number from 1 to {MAX_BATCH_ROWS}, not '{v}'"
        ))),
    }
}

pub fn check_options(connector: &dyn SourceConnector, options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        if key != "connector" && !connector.accepts_option(key) {
            let mut accepted: Vec<_> = connector.option_keys().to_vec();
            accepted.sort_unstable();
            return Err(SluiceError::invalid_parameter(format!(
                "connector '{}' has no option '{key}'; accepted: connector, {}",
                connector.name(),
                accepted.join(", ")
            )));
        }
    }
    Ok(())
}

/// One partition of a stream as a DataFusion partition stream.
#[derive(Debug)]
pub(crate) struct SourcePartition {
    connector: Arc<dyn SourceConnector>,
    options: BTreeMap<String, String>,
    schema: SchemaRef,
    partition: usize,
    partitions: usize,
}

impl PartitionStream for SourcePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let opened = self
            .connector
            .open(&self.options, &self.schema, self.partition, self.partitions, None);
        let stream = futures::stream::unfold(Some(opened), |state| async move {
            let mut source = match state? {
                Ok(source) => source,
                Err(e) => return Some((Err(e.into_datafusion()), None)),
            };
            match source.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(Ok(source)))),
                Ok(None) => None,
                Err(e) => Some((Err(e.into_datafusion()), None)),
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// When a stream's rows are late: the event-time column and how far the
/// watermark trails the largest event time seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkSpec {
    /// Index of the event-time column.
    pub column: usize,
    /// Unit of that column.
    pub unit: TimeUnit,
    /// Microseconds the watermark trails the largest time seen.
    pub delay_us: i64,
}

/// A declared stream: a DataFusion table (ad-hoc queries scan it, one task
/// per partition) that also tells the streaming planner how to run it.
#[derive(Debug, Clone)]
pub struct StreamTable {
    pub name: String,
    pub connector: Arc<dyn SourceConnector>,
    pub options: BTreeMap<String, String>,
    pub partitions: usize,
    pub watermark: Option<WatermarkSpec>,
    schema: SchemaRef,
    bounded: bool,
    changelog: bool,
    upsert_key: Option<Vec<usize>>,
}

impl StreamTable {
    /// Checks the options and builds the table; `watermark` is the declared
    /// `(column, delay in microseconds)`, if any.
    pub fn try_new(
        name: String,
        connector: Arc<dyn SourceConnector>,
        options: BTreeMap<String, String>,
        partitions: usize,
        declared: Option<SchemaRef>,
        watermark: Option<(String, i64)>,
    ) -> Result<Self> {
        let schema = connector.schema(&options, declared.as_ref())?;
        let bounded = connector.is_bounded(&options);
        let changelog = connector.is_changelog(&options);
        let upsert_key = connector.upsert_key(&options, &schema)?;
        let watermark = match watermark.or_else(|| connector.default_event_time(&options).map(|c| (c, 0))) {
            None => None,
            Some((column, delay_us)) => {
                let Some(idx) = schema.fields().iter().position(|f| f.name() == &column) else {
                    return Err(SluiceError::new(
                        crate::error::ErrorKind::UndefinedColumn,
                        format!("WATERMARK FOR {column}: stream {name} has no column {column}"),
                    ));
                };
                let DataType::Timestamp(unit, _) = schema.field(idx).data_type() else {
                    return Err(SluiceError::new(
                        crate::error::ErrorKind::Semantic,
                        format!("WATERMARK FOR {column}: the event-time column must be a TIMESTAMP"),
                    ));
                };
                Some(WatermarkSpec {
                    column: idx,
                    unit: *unit,
                    delay_us,
                })
            }
        };
        Ok(Self {
            name,
            connector,
            options,
            partitions: partitions.max(1),
            watermark,
            schema,
            bounded,
            changelog,
            upsert_key,
        })
    }

    /// Whether the stream is a changelog (an updating input).
    pub fn is_changelog(&self) -> bool {
        self.changelog
    }

    /// An upsert changelog's key columns (see
    /// [`SourceConnector::upsert_key`]).
    pub fn upsert_key(&self) -> Option<&[usize]> {
        self.upsert_key.as_deref()
    }

    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn is_bounded(&self) -> bool {
        self.bounded
    }

    /// Positions for this stream's partitions from a checkpoint's positions
    /// of `old.len()` partitions (see [`SourceConnector::rescale_positions`]).
    pub fn rescale_positions(&self, old: &[Option<String>]) -> Result<Vec<Option<String>>> {
        let out = self
            .connector
            .rescale_positions(&self.options, old, self.partitions)?;
        if out.len() != self.partitions {
            return Err(SluiceError::internal(format!(
                "{}: {} positions for {} partitions",
                self.name,
                out.len(),
                self.partitions
            )));
        }
        Ok(out)
    }

    pub(crate) fn partition(&self, partition: usize) -> SourcePartition {
        SourcePartition {
            connector: self.connector.clone(),
            options: self.options.clone(),
            schema: self.schema.clone(),
            partition,
            partitions: self.partitions,
        }
    }

    /// Opens source partition `partition` for a streaming job, resuming
    /// from a checkpointed position if given.
    pub fn open(&self, partition: usize, resume: Option<&str>) -> Result<Box<dyn Source>> {
        self.connector
            .open(&self.options, &self.schema, partition, self.partitions, resume)
    }

    /// Ad-hoc queries read a stream's rows as they come; a changelog's
    /// records are changes, which only a continuous query can apply.
    pub(crate) fn check_batch_scan(&self) -> datafusion::error::Result<()> {
        if self.changelog {
            return Err(SluiceError::not_supported(format!(
                "{} is a changelog stream (its records insert and delete rows): read it through a \
                 materialized view or a sink, e.g. CREATE MATERIALIZED VIEW v AS SELECT * FROM {}",
                self.name, self.name
            ))
            .into_datafusion());
        }
        Ok(())
    }

    fn batch_table(&self) -> datafusion::error::Result<StreamingTable> {
        self.check_batch_scan()?;
        let parts: Vec<Arc<dyn PartitionStream>> = (0..self.partitions)
            .map(|p| Arc::new(self.partition(p)) as Arc<dyn PartitionStream>)
            .collect();
        Ok(StreamingTable::try_new(self.schema.clone(), parts)?.with_infinite_table(!self.bounded))
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.batch_table()?.scan(state, projection, &[], limit).await
    }
}

//! Sinks: where a continuous query's output leaves the engine.
//!
//! The engine owns the traits; the connectors crate implements them
//! (`filesystem` over object_store, `blackhole`) and the server registers
//! them. A sink is opened once per parallel output lane of a job.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use object_store::ObjectStore;
use object_store::path::Path;

use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};

use crate::error::{Result, SluiceError};
use crate::storage::{StoreRegistry, resolve_location};

/// Where a sink's output can be read back with SELECT (under the sink's
/// name): a Hive-partitioned directory of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// The directory URL or path, as the user wrote it.
    pub location: String,
    /// `parquet`, `json` or `csv`.
    pub format: String,
    /// Columns that become `col=value/` directories (not stored in files).
    pub partition_by: Vec<String>,
}

/// One lane's writer.
#[async_trait]
pub trait SinkWriter: Send {
    /// Writes rows. For an updating query the last column is the operation
    /// (`1` insert, `-1` delete).
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// The watermark (microseconds) advanced: a chance to roll files.
    async fn on_watermark(&mut self, _watermark: i64) -> Result<()> {
        Ok(())
    }
    /// The input ended (bounded sources): make everything written visible.
    async fn finish(&mut self) -> Result<()>;
    /// A checkpoint barrier passed: everything written so far must be
    /// durable (files closed, deliveries confirmed). Returns state to keep
    /// in the checkpoint (a view's rows), restored by [`Self::restore`].
    async fn checkpoint(&mut self, _epoch: u64) -> Result<Vec<RecordBatch>>;
    /// Instead of [`Self::checkpoint`], when the writer can: only what
    /// changed since the state the last `checkpoint` call returned (all of
    /// it, not just since the previous call), to be restored after that
    /// state. `Ok(None)` asks for a full snapshot (`checkpoint` is called).
    /// Used only while that full snapshot's checkpoint stands.
    async fn checkpoint_changes(&mut self, _epoch: u64) -> Result<Option<Vec<RecordBatch>>> {
        Ok(None)
    }
    /// Takes back the state of a checkpoint, before the first write.
    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(SluiceError::internal("this sink keeps no checkpoint state"))
        }
    }
}

/// What a sink is opened with.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The sink's name.
    pub name: String,
    /// Unique per run of the job, so that files of different runs never
    /// collide.
    pub run_id: String,
    /// Unique per incarnation of the job (kept across restarts, new when the
    /// sink is dropped and created again): a table log's transaction id.
    pub job_id: String,
    /// Whether the job takes checkpoints. A table-log sink then commits
    /// once per completed checkpoint (exactly-once); without checkpoints its
    /// lanes commit the files they wrote themselves.
    pub checkpointing: bool,
    /// The sink's table log, when its connector has one.
    pub table_log: Option<Arc<dyn TableLog>>,
    /// The sink's committer (its table log, or the connector's own).
    pub committer: Option<Arc<dyn Committer>>,
    /// Storage for non-local locations.
    pub stores: StoreRegistry,
    /// Storage options given with the sink (`s3.endpoint`, ...).
    pub store_options: BTreeMap<String, String>,
}

impl SinkContext {
    /// The object store and the path inside it for a location: `file://`
    /// URLs and plain paths are local, other schemes come from the store
    /// registry (with the sink's storage options such as `s3.endpoint`).
    pub fn resolve(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        resolve_location(&self.stores, location, &self.store_options)
    }
}

/// A version of a versioned landed table (`AS OF VERSION n`,
/// `AS OF TIMESTAMP '...'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableVersion {
    Version(u64),
    /// The newest version committed at or before this time (ms since the
    /// Unix epoch).
    Timestamp(i64),
}

/// The input a commit covers on one source lane: from the position of the
/// previous checkpoint (None: the start) to this one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRange {
    /// The stream read.
    pub stream: String,
    /// The lane's name in checkpoint manifests (`<node>-<lane>`).
    pub lane: String,
    pub from: Option<String>,
    pub to: String,
}

/// Where a table log's committed input ended, for the ranges of its next
/// commit: a commit's range starts where the last commit's ended (checkpoints
/// without output make no commit). Positions that name partitions with
/// offsets (`p:o,...`, Kafka's) are followed per partition, so that the
/// ranges stay contiguous when a restore at another parallelism moved
/// partitions to other lanes; other positions per lane.
#[derive(Debug, Default, Clone)]
pub struct CommittedInput {
    by_lane: BTreeMap<String, String>,
    /// (source node, partition) -> offset.
    by_partition: BTreeMap<(String, i64), i64>,
}

impl CommittedInput {
    /// A commit's range (in commit order).
    pub fn record(&mut self, r: &SourceRange) {
        self.by_lane.insert(r.lane.clone(), r.to.clone());
        for (p, o) in partition_offsets(&r.to).unwrap_or_default() {
            self.by_partition.insert((source_node(&r.lane), p), o);
        }
    }

    /// Where the next commit's range of `r`'s lane starts.
    pub fn start_of(&self, r: &SourceRange) -> Option<String> {
        match partition_offsets(&r.to) {
            Some(parts) => {
                let node = source_node(&r.lane);
                let known: Vec<String> = parts
                    .iter()
                    .filter_map(|(p, _)| {
                        self.by_partition
                            .get(&(node.clone(), *p))
                            .map(|o| format!("{p}:{o}"))
                    })
                    .collect();
                (!known.is_empty()).then(|| known.join(","))
            }
            None => self.by_lane.get(&r.lane).cloned(),
        }
    }
}

/// The source node of a lane name (`<node>-<lane>`).
fn source_node(lane: &str) -> String {
    lane.rsplit_once('-').map_or(lane, |(node, _)| node).to_string()
}

/// `p:o,...` as (partition, offset) pairs; None for other positions.
pub(crate) fn partition_offsets(position: &str) -> Option<Vec<(i64, i64)>> {
    if position.is_empty() {
        return None;
    }
    position
        .split(',')
        .map(|pair| {
            let (p, o) = pair.split_once(':')?;
            Some((p.trim().parse().ok()?, o.trim().parse().ok()?))
        })
        .collect()
}

/// One completed checkpoint's output, handed to a table log to commit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The checkpoint (None: a direct commit by a lane of a job without
    /// checkpoints; it carries no transaction id).
    pub epoch: Option<u64>,
    /// What each sink lane returned from [`SinkWriter::checkpoint`] for this
    /// epoch (its pending files), in lane order.
    pub lane_states: Vec<Vec<RecordBatch>>,
    /// The input this commit covers.
    pub sources: Vec<SourceRange>,
}

/// What one commit made visible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// The table version it made (None: nothing new landed, the epoch was
    /// committed before, or the sink has no versions, as Kafka's).
    pub version: Option<u64>,
    /// Rows and bytes of the files it added (0 where the sink doesn't
    /// count them).
    pub rows: u64,
    pub bytes: u64,
}

/// One commit of a versioned landed table (a row of `sluice_commits`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRecord {
    pub version: u64,
    /// ms since the Unix epoch.
    pub committed_at: i64,
    /// The checkpoint committed (None for commits without one, such as the
    /// table's creation).
    pub checkpoint: Option<u64>,
    /// Paths (relative to the table's location) of the files added.
    pub files: Vec<String>,
    pub rows: u64,
    pub bytes: u64,
    pub sources: Vec<SourceRange>,
    /// SHA-256 of the sink's query text.
    pub query_hash: Option<String>,
    /// The table log's own name for the operation (`CREATE TABLE`, `WRITE`).
    pub operation: String,
}

/// The second phase of a two-phase-commit sink: lanes make their output
/// durable but invisible at each barrier; once the checkpoint is complete
/// the coordinator calls [`Committer::commit`], which makes it visible.
#[async_trait]
pub trait Committer: Send + Sync + Debug {
    /// Makes one completed checkpoint's output visible.
    async fn commit(&self, request: CommitRequest) -> Result<Committed>;
    /// The newest checkpoint this process committed (or found committed).
    /// A lane keeps handing its output to checkpoints until one of them is
    /// committed, so a failed checkpoint loses nothing.
    fn committed_epoch(&self) -> Option<u64>;
    /// Whether a completed checkpoint can be committed again after a crash
    /// (a table log can; a Kafka transaction can't be resumed by a new
    /// producer). When not, a job restores only from checkpoints whose
    /// commit finished, and the output of a later one is produced again.
    fn recommits(&self) -> bool {
        true
    }
    /// For the connector's writers to find their committer.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A sink that lands through a table log (two-phase commit): lanes write
/// files that no reader sees and return them as checkpoint state; once the
/// checkpoint is complete the coordinator hands every lane's files to
/// [`Committer::commit`], which makes them visible as one atomic version.
/// Commits are idempotent per epoch: after a crash the restored checkpoint
/// is committed again, and a commit already in the log is skipped.
#[async_trait]
pub trait TableLog: Committer {
    /// Creates the table when it does not exist yet.
    async fn prepare(&self) -> Result<()>;
    /// The landed table at its newest version (resolved at each scan), or
    /// at `version`.
    fn table(&self, version: Option<TableVersion>) -> Result<Arc<dyn TableProvider>>;
    /// The table's commits, oldest first.
    async fn commits(&self) -> Result<Vec<CommitRecord>>;
}

/// A kind of sink (`connector = '...'` in `CREATE SINK`).
pub trait SinkConnector: Send + Sync + Debug {
    /// The connector's name, as users write it.
    fn name(&self) -> &'static str;

    /// Every option the connector accepts (besides `connector`).
    fn option_keys(&self) -> &[&'static str];

    /// Whether `key` is an option of this connector (connectors that pass
    /// `properties.*` through override this).
    fn accepts_option(&self, key: &str) -> bool {
        self.option_keys().contains(&key)
    }

    /// Checks the options against the query's output (`updating`: whether
    /// it retracts) and says where the output can be read back, if anywhere.
    fn validate(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
    ) -> Result<Option<Landed>>;

    /// The schema of what lands, when it differs from the query's output
    /// (a changelog adds an operation column).
    fn landed_schema(
        &self,
        _options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        _updating: bool,
    ) -> SchemaRef {
        schema.clone()
    }

    /// The sink's table log, for connectors that commit through one.
    /// `query` is the sink's query text (hashed into each commit).
    fn table_log(
        &self,
        _options: &BTreeMap<String, String>,
        _schema: &SchemaRef,
        _updating: bool,
        _ctx: &SinkContext,
        _query: &str,
    ) -> Result<Option<Arc<dyn TableLog>>> {
        Ok(None)
    }

    /// The committer of a two-phase-commit sink without a table log
    /// (used when the job checkpoints).
    fn committer(
        &self,
        _options: &BTreeMap<String, String>,
        _ctx: &SinkContext,
    ) -> Result<Option<Arc<dyn Committer>>> {
        Ok(None)
    }

    /// Opens the writer for output lane `lane` of `lanes`.
    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
        ctx: &SinkContext,
        lane: usize,
        lanes: usize,
    ) -> Result<Box<dyn SinkWriter>>;
}

/// The sink connectors the engine knows, by name.
#[derive(Debug, Default, Clone)]
pub struct SinkRegistry {
    connectors: Vec<Arc<dyn SinkConnector>>,
}

impl SinkRegistry {
    /// Adds a connector; a later one with the same name wins.
    pub fn register(&mut self, connector: Arc<dyn SinkConnector>) {
        self.connectors.insert(0, connector);
    }

    /// The connector with that name, or an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<Arc<dyn SinkConnector>> {
        self.connectors
            .iter()
            .find(|c| c.name() == name)
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<_> = self.connectors.iter().map(|c| c.name()).collect();
                names.sort_unstable();
                SluiceError::invalid_parameter(format!(
                    "unknown sink connector '{name}'; available: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Checks `options` against the sink's accepted keys.
pub fn check_sink_options(connector: &dyn SinkConnector, options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        if key != "connector" && !connector.accepts_option(key) {
            let mut accepted: Vec<_> = connector.option_keys().to_vec();
            accepted.sort_unstable();
            return Err(SluiceError::invalid_parameter(format!(
                "sink connector '{}' has no option '{key}'; accepted: connector, {}",
                connector.name(),
                accepted.join(", ")
            )));
        }
    }
    Ok(())
}

/// The table a sink's landed files are read through: a listing table over
/// the sink's directory with the query's schema (partition columns as
/// `col=value/` directories).
pub fn landed_table(landed: &Landed, schema: &SchemaRef) -> Result<Arc<ListingTable>> {
    let (format, ext): (Arc<dyn FileFormat>, &str) = match landed.format.as_str() {
        "parquet" => (Arc::new(ParquetFormat::default()), ".parquet"),
        "json" => (Arc::new(JsonFormat::default()), ".json"),
        "csv" => (Arc::new(CsvFormat::default().with_has_header(true)), ".csv"),
        other => return Err(SluiceError::internal(format!("landed format {other}"))),
    };
    let mut location = landed.location.clone();
    if !location.ends_with('/') {
        location.push('/');
    }
    let url = ListingTableUrl::parse(&location)?;
    let partition_cols: Vec<(String, DataType)> = landed
        .partition_by
        .iter()
        .map(|c| (c.clone(), DataType::Utf8))
        .collect();
    let file_fields: Vec<Field> = schema
        .fields()
        .iter()
        .filter(|f| !landed.partition_by.contains(f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    let options = ListingOptions::new(format)
        .with_file_extension(ext)
        .with_table_partition_cols(partition_cols);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(Arc::new(Schema::new(file_fields)));
    Ok(Arc::new(ListingTable::try_new(config)?))
}

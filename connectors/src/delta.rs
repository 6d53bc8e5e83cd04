//! The `delta` sink: exactly-once, versioned landed tables in the Delta Lake
//! format, on any object store (`file://`, `s3://`, `hdfs://`).
//!
//! Lanes write Hive-partitioned Parquet files like the filesystem sink, but
//! no reader sees a file until the Delta log names it. At each checkpoint
//! barrier a lane hands the files it closed to the checkpoint; when the
//! checkpoint is complete the coordinator commits every lane's files as one
//! Delta version ([`DeltaLog::commit`]) carrying:
//!
//! - an application transaction (`txn`: this job's id, the epoch), so that
//!   committing the same checkpoint again after a crash is a no-op;
//! - provenance in the commit info (`sluice`: the job, the epoch, the source
//!   positions the version covers, the files, rows, and the query's hash),
//!   which `sluice_commits` reads back.
//!
//! Files written after the last completed checkpoint are never committed
//! (a restore rewinds the sources and writes them again under new names).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use sluice_engine::datafusion::catalog::{Session as CatalogSession, TableProvider};
use sluice_engine::datafusion::datasource::TableType;
use sluice_engine::datafusion::error::DataFusionError;
use sluice_engine::datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use sluice_engine::datafusion::physical_plan::ExecutionPlan;
use sluice_engine::sink::{
    CommitRecord, CommitRequest, Committed, Committer, Landed, SinkConnector, SinkContext, SinkWriter,
    SourceRange, TableLog, TableVersion,
};
use sluice_engine::{ErrorKind, Result, SluiceError};
use url::Url;

use crate::commitlog::{PendingFile, pending_files, query_hash};
use crate::filesystem::{FsOptions, FsWriter, LogLane};

/// The key of Sluice's provenance in a Delta commit's `commitInfo`.
const PROVENANCE: &str = "sluice";

/// The `delta` sink connector.
#[derive(Debug, Default)]
pub struct DeltaSink;

/// Options of the filesystem sink that apply (the format is always
/// Parquet under a Delta log).
const OPTIONS: &[&str] = &[
    "path",
    "partition_by",
    "changelog",
    "sink.rolling-policy.file-size",
    "sink.rolling-policy.rollover-interval",
    "sink.multipart.threshold",
];

fn delta_error(e: DeltaTableError) -> SluiceError {
    let kind = match &e {
        DeltaTableError::ObjectStore { .. } => ErrorKind::StorageUnavailable,
        _ => ErrorKind::Internal,
    };
    SluiceError::new(kind, format!("delta: {e}"))
}

fn parse(options: &BTreeMap<String, String>, schema: &Schema, updating: bool) -> Result<FsOptions> {
    let mut o = options.clone();
    o.insert("format".into(), "parquet".into());
    let parsed = FsOptions::parse(&o, schema, updating)?;
    for c in &parsed.partition_by {
        let t = schema.field_with_name(c).map(|f| f.data_type().clone());
        if let Ok(t) = t
            && !matches!(
                t,
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Date32
                    | DataType::Boolean
            )
        {
            return Err(SluiceError::not_supported(format!(
                "the delta sink partitions by text, integer, date or boolean columns; {c} is {t} \
                 (partition by an expression such as to_char({c}, 'YYYY-MM-DD') AS dt)"
            )));
        }
    }
    Ok(parsed)
}

/// The landed schema in Delta's types: timestamps become microseconds
/// (zone-aware ones in UTC), as the Delta protocol stores them.
fn delta_schema(landed: &Schema) -> SchemaRef {
    let fields: Vec<Field> = landed
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
                DataType::Timestamp(_, Some(_)) => {
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
                }
                other => other.clone(),
            };
            f.as_ref().clone().with_data_type(t)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

impl SinkConnector for DeltaSink {
    fn name(&self) -> &'static str {
        "delta"
    }

    fn option_keys(&self) -> &[&'static str] {
        OPTIONS
    }

    fn validate(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
    ) -> Result<Option<Landed>> {
        let o = parse(options, schema, updating)?;
        Ok(Some(Landed {
            location: o.path.clone(),
            format: "delta".into(),
            partition_by: o.partition_by.clone(),
        }))
    }

    fn landed_schema(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
    ) -> SchemaRef {
        match parse(options, schema, updating) {
            Ok(o) => delta_schema(&o.landed_schema(schema)),
            Err(_) => schema.clone(),
        }
    }

    fn table_log(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
        ctx: &SinkContext,
        query: &str,
    ) -> Result<Option<Arc<dyn TableLog>>> {
        let o = parse(options, schema, updating)?;
        let (store, path) = ctx.resolve(&o.path)?;
        let url = table_url(&o.path, &path)?;
        let root: Arc<dyn ObjectStore> = if url.scheme() == "file" {
            Arc::new(object_store::local::LocalFileSystem::new())
        } else {
            store
        };
        Ok(Some(Arc::new(DeltaLog(Arc::new(Shared {
            name: ctx.name.clone(),
            url,
            store: root,
            schema: delta_schema(&o.landed_schema(schema)),
            partition_by: o.partition_by.clone(),
            job_id: ctx.job_id.clone(),
            query_hash: query_hash(query),
            table_schema: OnceLock::new(),
            committed: AtomicU64::new(0),
            last_sources: tokio::sync::Mutex::new(None),
            commits: Mutex::new(BTreeMap::new()),
            committed_files: Mutex::new(Default::default()),
        })))))
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        updating: bool,
        ctx: &SinkContext,
        lane: usize,
        _lanes: usize,
    ) -> Result<Box<dyn SinkWriter>> {
        let o = parse(options, schema, updating)?;
        let log = ctx
            .table_log
            .clone()
            .ok_or_else(|| SluiceError::internal("the delta sink was opened without its table log"))?;
        let landed = delta_schema(&o.landed_schema(schema));
        Ok(Box::new(FsWriter::new(
            o,
            landed,
            ctx,
            lane,
            Some(LogLane {
                pending: vec![],
                log,
                checkpointing: ctx.checkpointing,
                casts: true,
                staging: None,
            }),
        )?))
    }
}

/// The table's URL (a directory): `file:///abs/dir/` for local paths.
fn table_url(location: &str, path: &object_store::path::Path) -> Result<Url> {
    let bad = |e: String| SluiceError::invalid_parameter(format!("invalid delta location '{location}': {e}"));
    if location.contains("://") && !location.starts_with("file://") {
        let mut s = location.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        return Url::parse(&s).map_err(|e| bad(e.to_string()));
    }
    Url::parse(&format!("file:///{path}/")).map_err(|e| bad(e.to_string()))
}

/// Provenance recorded in each commit's `commitInfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Provenance {
    job: String,
    job_id: String,
    epoch: Option<u64>,
    sources: Vec<SourceRange>,
    rows: u64,
    query_hash: String,
}

/// A sink's Delta table.
#[derive(Debug, Clone)]
pub struct DeltaLog(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    name: String,
    url: Url,
    /// The store whose root `url`'s path is relative to.
    store: Arc<dyn ObjectStore>,
    /// The landed columns in Delta's types (partition columns included).
    schema: SchemaRef,
    partition_by: Vec<String>,
    job_id: String,
    query_hash: String,
    /// The columns readers see (as the Delta table provider orders them).
    table_schema: OnceLock<SchemaRef>,
    /// The newest epoch committed or found committed (0: none).
    committed: AtomicU64,
    /// Per source lane, the input the newest commit covered up to: the
    /// next commit covers from there (an empty checkpoint commits nothing
    /// but its input still counts).
    last_sources: tokio::sync::Mutex<Option<sluice_engine::sink::CommittedInput>>,
    /// Commits read from the log so far (they never change).
    commits: Mutex<BTreeMap<u64, CommitRecord>>,
    /// Files this process committed: a lane's last state (taken when its
    /// input ended) may name files whose commit was still under way.
    committed_files: Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    fn builder(&self) -> Result<DeltaTableBuilder> {
        Ok(DeltaTableBuilder::from_url(self.url.clone())
            .map_err(delta_error)?
            .with_storage_backend(self.store.clone(), self.url.clone()))
    }

    /// `_delta_log/` in the root store's terms.
    fn log_dir(&self) -> object_store::path::Path {
        let base = percent_encoding::percent_decode_str(self.url.path().trim_matches('/'))
            .decode_utf8_lossy()
            .into_owned();
        object_store::path::Path::from(base).clone().join("_delta_log")
    }

    async fn latest(&self) -> Result<DeltaTable> {
        self.builder()?.load().await.map_err(delta_error)
    }

    /// Reads commit `version` of the log into a record.
    async fn read_commit(&self, table: &DeltaTable, version: u64) -> Result<Option<CommitRecord>> {
        let Some(bytes) = table
            .log_store()
            .read_commit_entry(version as _)
            .await
            .map_err(delta_error)?
        else {
            return Ok(None);
        };
        let mut record = CommitRecord {
            version,
            committed_at: 0,
            checkpoint: None,
            files: vec![],
            rows: 0,
            bytes: 0,
            sources: vec![],
            query_hash: None,
            operation: String::new(),
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| SluiceError::internal(format!("delta log version {version}: {e}")))?;
            if let Some(info) = action.get("commitInfo") {
                record.committed_at = info.get("timestamp").and_then(|t| t.as_i64()).unwrap_or(0);
                record.operation = info
                    .get("operation")
                    .and_then(|o| o.as_str())
                    .unwrap_or_default()
                    .to_string();
                if let Some(p) = info
                    .get(PROVENANCE)
                    .and_then(|p| serde_json::from_value::<Provenance>(p.clone()).ok())
                {
                    record.checkpoint = p.epoch;
                    record.sources = p.sources;
                    record.query_hash = Some(p.query_hash);
                }
            }
            if let Some(add) = action.get("add") {
                let path = add.get("path").and_then(|p| p.as_str()).unwrap_or_default();
                record.files.push(
                    percent_encoding::percent_decode_str(path)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
                record.bytes += add.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
                let stats: Option<serde_json::Value> = add
                    .get("stats")
                    .and_then(|s| s.as_str())
                    .and_then(|s| serde_json::from_str(s).ok());
                record.rows += stats
                    .and_then(|s| s.get("numRecords").and_then(|n| n.as_u64()))
                    .unwrap_or(0);
            }
        }
        Ok(Some(record))
    }

    /// Every commit in the log, oldest first (cached: commits never change).
    async fn all_commits(&self, table: &DeltaTable) -> Result<Vec<CommitRecord>> {
        let Some(latest) = table.version() else {
            return Ok(vec![]);
        };
        let known: Vec<u64> = self.commits.lock().expect("commits").keys().copied().collect();
        for v in 0..=latest {
            if known.binary_search(&v).is_ok() {
                continue;
            }
            if let Some(record) = self.read_commit(table, v).await? {
                self.commits.lock().expect("commits").insert(v, record);
            }
        }
        Ok(self.commits.lock().expect("commits").values().cloned().collect())
    }
}

/// A Delta `add` path: the object store path, percent-encoded as a URI.
fn add_path(path: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'%')
        .add(b'#')
        .add(b'?')
        .add(b'"')
        .add(b'<')
        .add(b'>');
    percent_encoding::utf8_percent_encode(path, SET).to_string()
}

fn add_action(f: &PendingFile, now_ms: i64) -> Action {
    Action::Add(Add {
        path: add_path(&f.path),
        partition_values: f.partition.iter().cloned().collect::<HashMap<_, _>>(),
        size: f.size,
        modification_time: now_ms,
        data_change: true,
        stats: Some(serde_json::json!({ "numRecords": f.rows }).to_string()),
        ..Default::default()
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl Committer for DeltaLog {
    async fn commit(&self, request: CommitRequest) -> Result<Committed> {
        let s = &self.0;
        let table = s.latest().await?;
        let snapshot = table.snapshot().map_err(delta_error)?;
        if let Some(epoch) = request.epoch {
            let done = snapshot
                .transaction_version(table.log_store().as_ref(), &s.job_id)
                .await
                .map_err(delta_error)?;
            if let Some(done) = done
                && done >= epoch as i64
            {
                s.committed.fetch_max(epoch, Ordering::SeqCst);
                return Ok(Committed::default());
            }
        }
        let mut files: Vec<PendingFile> = vec![];
        for state in &request.lane_states {
            files.extend(pending_files(state)?);
        }
        {
            let done = s.committed_files.lock().expect("committed files");
            files.retain(|f| !done.contains(&f.path));
        }
        let mut last = s.last_sources.lock().await;
        if last.is_none() {
            let mut from_log = sluice_engine::sink::CommittedInput::default();
            for c in s.all_commits(&table).await? {
                for src in &c.sources {
                    from_log.record(src);
                }
            }
            *last = Some(from_log);
        }
        let last = last.as_mut().expect("set above");
        if files.is_empty() {
            // Nothing landed: no version. The input still counts as covered
            // by the next commit (its range starts where the last one ended).
            if let Some(epoch) = request.epoch {
                s.committed.fetch_max(epoch, Ordering::SeqCst);
            }
            return Ok(Committed::default());
        }
        let sources: Vec<SourceRange> = request
            .sources
            .iter()
            .map(|r| SourceRange {
                from: last.start_of(r),
                ..r.clone()
            })
            .collect();
        let now = now_ms();
        let provenance = Provenance {
            job: s.name.clone(),
            job_id: s.job_id.clone(),
            epoch: request.epoch,
            sources: sources.clone(),
            rows: files.iter().map(|f| f.rows as u64).sum(),
            query_hash: s.query_hash.clone(),
        };
        let mut properties = CommitProperties::default().with_metadata([(
            PROVENANCE.to_string(),
            serde_json::to_value(&provenance).map_err(|e| SluiceError::internal(e.to_string()))?,
        )]);
        if let Some(epoch) = request.epoch {
            properties = properties.with_application_transaction(Transaction::new_with_last_update(
                &s.job_id,
                epoch as i64,
                Some(now),
            ));
        }
        let actions: Vec<Action> = files.iter().map(|f| add_action(f, now)).collect();
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: (!s.partition_by.is_empty()).then(|| s.partition_by.clone()),
                    predicate: None,
                },
            )
            .await
            .map_err(delta_error)?;
        s.committed_files
            .lock()
            .expect("committed files")
            .extend(files.iter().map(|f| f.path.clone()));
        if let Some(epoch) = request.epoch {
            s.committed.fetch_max(epoch, Ordering::SeqCst);
        }
        for r in &sources {
            last.record(r);
        }
        Ok(Committed {
            version: Some(finalized.version()),
            rows: files.iter().map(|f| f.rows as u64).sum(),
            bytes: files.iter().map(|f| f.size as u64).sum(),
        })
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.0.committed.load(Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[async_trait]
impl TableLog for DeltaLog {
    async fn prepare(&self) -> Result<()> {
        let s = &self.0;
        // A new table has no log yet (loading it would log an error).
        let log_dir = s.log_dir();
        let exists = s
            .store
            .list_with_delimiter(Some(&log_dir))
            .await
            .map(|l| !l.objects.is_empty())
            .unwrap_or(true);
        let loaded = if exists {
            s.builder()?.load().await
        } else {
            Err(DeltaTableError::NotATable(s.url.to_string()))
        };
        let table = match loaded {
            Ok(t) => {
                let existing: Vec<String> = t
                    .snapshot()
                    .map_err(delta_error)?
                    .schema()
                    .fields()
                    .map(|f| f.name().to_string())
                    .collect();
                let wanted: Vec<String> = s.schema.fields().iter().map(|f| f.name().to_string()).collect();
                let (mut a, mut b) = (existing.clone(), wanted.clone());
                a.sort();
                b.sort();
                if a != b {
                    return Err(SluiceError::new(
                        ErrorKind::DuplicateObject,
                        format!(
                            "{} already holds a Delta table with columns ({}); the query produces ({}): \
                             land it somewhere else",
                            s.url,
                            existing.join(", "),
                            wanted.join(", ")
                        ),
                    ));
                }
                t
            }
            Err(e) if !matches!(e, DeltaTableError::NotATable(_)) => return Err(delta_error(e)),
            Err(_) => {
                let columns = StructType::try_from_arrow(s.schema.as_ref())
                    .map_err(|e| SluiceError::not_supported(format!("delta sink {}: {e}", s.name)))?;
                let log_store = s.builder()?.build().map_err(delta_error)?.log_store();
                deltalake::operations::create::CreateBuilder::new()
                    .with_log_store(log_store)
                    .with_table_name(s.name.clone())
                    .with_columns(columns.fields().cloned())
                    .with_partition_columns(s.partition_by.clone())
                    .with_save_mode(SaveMode::Ignore)
                    .await
                    .map_err(delta_error)?
            }
        };
        let provider = table.table_provider().await?;
        let _ = s.table_schema.set(provider.schema());
        Ok(())
    }

    fn table(&self, version: Option<TableVersion>) -> Result<Arc<dyn TableProvider>> {
        let schema = self
            .0
            .table_schema
            .get()
            .cloned()
            .ok_or_else(|| SluiceError::internal("delta table read before it was prepared"))?;
        Ok(Arc::new(DeltaLanded {
            log: self.0.clone(),
            version,
            schema,
        }))
    }

    async fn commits(&self) -> Result<Vec<CommitRecord>> {
        let table = self.0.latest().await?;
        self.0.all_commits(&table).await
    }
}

/// A sink's landed Delta table as of its newest version (loaded at each
/// scan, so queries see every commit) or as of a given version.
#[derive(Debug)]
struct DeltaLanded {
    log: Arc<Shared>,
    version: Option<TableVersion>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for DeltaLanded {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> sluice_engine::datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // The Delta scan prunes files and partitions with them; DataFusion
        // still applies them to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> sluice_engine::datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let external = |e: SluiceError| DataFusionError::External(Box::new(e));
        let mut builder = self.log.builder().map_err(external)?;
        match self.version {
            None => {}
            Some(TableVersion::Version(v)) => {
                let newest = self.log.latest().await.map_err(external)?.version().unwrap_or(0) as u64;
                if v > newest {
                    return Err(external(SluiceError::invalid_parameter(format!(
                        "{} has no version {v}: its versions are 0 to {newest} (SELECT * FROM sluice_commits)",
                        self.log.name
                    ))));
                }
                builder = builder.with_version(v as _)
            }
            Some(TableVersion::Timestamp(ms)) => {
                let latest = self.log.latest().await.map_err(external)?;
                let created = self.log.all_commits(&latest).await.map_err(external)?;
                if let Some(first) = created.first()
                    && ms < first.committed_at
                {
                    return Err(external(SluiceError::invalid_parameter(format!(
                        "{} did not exist yet at that time: its first version was committed at {} ms \
                         since the epoch (SELECT * FROM sluice_commits)",
                        self.log.name, first.committed_at
                    ))));
                }
                let at = chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| {
                    DataFusionError::Plan(format!("AS OF TIMESTAMP: {ms} ms is out of range"))
                })?;
                builder = builder.with_timestamp(at);
            }
        }
        let table = builder.load().await.map_err(|e| match (&self.version, &e) {
            (Some(TableVersion::Timestamp(_)), _) => external(SluiceError::invalid_parameter(format!(
                "{} has no version committed at or before that time ({e})",
                self.log.name
            ))),
            _ => external(delta_error(e)),
        })?;
        table
            .update_datafusion_session(state)
            .map_err(|e| external(delta_error(e)))?;
        let provider = table.table_provider().await?;
        if provider.schema().fields().len() != self.schema.fields().len() {
            return Err(DataFusionError::Plan(format!(
                "{}: this version has other columns than the table",
                self.log.name
            )));
        }
        provider.scan(state, projection, filters, limit).await
    }
}

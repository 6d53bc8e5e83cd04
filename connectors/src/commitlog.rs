//! The `filesystem` sink's commit log: exactly-once plain files.
//!
//! Lanes write each file under a hidden in-progress name next to where it
//! will land (`.part-<run>-<lane>-<seq>.parquet.<tag>.inprogress`: a dot
//! name with a foreign extension, which Hive, Spark, Trino and Sluice's own
//! listing skip) and hand it to the checkpoint. When the checkpoint is
//! complete the coordinator calls [`FsLog::commit`], which renames every
//! file to its final name (on S3 a server-side copy and a delete) and then
//! writes a commit record, `_sluice_commits/<version>.commit`: the files,
//! the rows, the checkpoint and the source offsets it covers (rows of
//! `sluice_commits`). A commit is idempotent: after a crash the restored
//! checkpoint is committed again, files already renamed are found under
//! their final name, and an epoch already in the log is skipped. In-progress
//! files of earlier runs that no restored checkpoint names are deleted after
//! the first commit of a run: their rows are produced again from the
//! restored source offsets.
//!
//! Partition commit (Flink's `success-file` policy): with
//! `sink.partition-commit.policy.kind = 'success-file'`, a `_SUCCESS` file
//! is written into a partition's directory once the partition is complete:
//! when every lane's watermark passed the partition's time plus the delay
//! (`partition-time` trigger, the time read from the partition values
//! through `partition.time-extractor.timestamp-pattern`), or once the delay
//! has passed since its first commit (`process-time`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_engine::datafusion::catalog::TableProvider;
use sluice_engine::retry::{retry, wait_for_descriptors};
use sluice_engine::sink::{
    CommitRecord, CommitRequest, Committed, Committer, Landed, SourceRange, TableLog, TableVersion,
    landed_table,
};
use sluice_engine::{ErrorKind, Result, SluiceError};

/// The directory of commit records, under the sink's location.
const COMMITS_DIR: &str = "_sluice_commits";
/// Schema metadata of a lane's checkpoint state.
pub(crate) const WATERMARK_KEY: &str = "sluice.watermark";
pub(crate) const LANE_KEY: &str = "sluice.lane";
pub(crate) const LANES_KEY: &str = "sluice.lanes";

/// When a partition counts as complete.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Trigger {
    /// The watermark passed the partition's time (from its values) plus
    /// the delay.
    PartitionTime { pattern: String },
    /// The delay passed since the partition's first commit.
    ProcessTime,
}

/// `sink.partition-commit.*`: a success file per completed partition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PartitionCommit {
    pub(crate) trigger: Trigger,
    pub(crate) delay: Duration,
    pub(crate) file_name: String,
}

impl PartitionCommit {
    /// The partition's time (µs since the epoch, read as UTC) from its
    /// values: `$col` in the pattern is replaced by the column's value.
    pub(crate) fn partition_time(pattern: &str, values: &[(String, Option<String>)]) -> Result<i64> {
        let mut text = pattern.to_string();
        // Longer names first: `$hour` before `$h`.
        let mut cols: Vec<&(String, Option<String>)> = values.iter().collect();
        cols.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (col, value) in cols {
            let value = value.as_deref().ok_or_else(|| {
                SluiceError::invalid_parameter(format!("partition column {col} is NULL: no partition time"))
            })?;
            text = text.replace(&format!("${col}"), value);
        }
        let nanos =
            arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text.trim()).map_err(|e| {
                SluiceError::invalid_parameter(format!(
                    "partition time '{text}' (from the pattern '{pattern}') is not a timestamp: {e}"
                ))
            })?;
        Ok(nanos.div_euclid(1000))
    }
}

/// A file in a commit record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredFile {
    path: String,
    size: i64,
    rows: i64,
    partition: BTreeMap<String, Option<String>>,
}

/// One commit record (`_sluice_commits/<version>.commit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredCommit {
    version: u64,
    job_id: String,
    epoch: Option<u64>,
    committed_at: i64,
    operation: String,
    query_hash: String,
    sources: Vec<SourceRange>,
    files: Vec<StoredFile>,
    /// Partition directories whose success file this commit wrote.
    #[serde(default)]
    partitions_done: Vec<String>,
}

/// A partition with committed files and no success file yet.
#[derive(Debug, Clone)]
struct OpenPartition {
    values: Vec<(String, Option<String>)>,
    /// When its first file was committed (ms).
    first_ms: i64,
}

#[derive(Debug, Default)]
struct LogState {
    loaded: bool,
    records: Vec<StoredCommit>,
    /// Every file in a record (relative paths).
    recorded: HashSet<String>,
    /// Per source lane, the input the newest commit covered up to.
    last_sources: sluice_engine::sink::CommittedInput,
    open: BTreeMap<String, OpenPartition>,
    /// The newest watermark each sink lane reported, and the lane count.
    lane_watermarks: BTreeMap<usize, i64>,
    lanes: usize,
    /// Whether this run swept in-progress files of earlier runs.
    swept: bool,
}

/// What a `filesystem` sink's log is made of.
#[derive(Debug)]
pub(crate) struct FsLogConfig {
    pub(crate) name: String,
    pub(crate) job_id: String,
    pub(crate) run_id: String,
    pub(crate) query_hash: String,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) base: Path,
    pub(crate) landed: Landed,
    pub(crate) landed_schema: SchemaRef,
    pub(crate) partition_commit: Option<PartitionCommit>,
}

/// The commit log of a `filesystem` sink (see the module docs).
#[derive(Debug)]
pub(crate) struct FsLog {
    config: FsLogConfig,
    /// Marks this job's in-progress files (from its job id).
    tag: String,
    committed: AtomicU64,
    state: tokio::sync::Mutex<LogState>,
}

/// The tag in a job's in-progress file names.
pub(crate) fn staging_tag(job_id: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(job_id.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `dir/.name.<tag>.inprogress` for `dir/name`.
pub(crate) fn staging_path(path: &Path, tag: &str) -> Path {
    let mut parts: Vec<String> = path.parts().map(|p| p.as_ref().to_string()).collect();
    let name = parts.pop().unwrap_or_default();
    let mut out = Path::from_iter(parts);
    out = out.join(format!(".{name}.{tag}.inprogress"));
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn storage_error(what: String, e: object_store::Error) -> SluiceError {
    SluiceError::new(ErrorKind::StorageUnavailable, format!("{what}: {e}"))
}

impl FsLog {
    pub(crate) fn new(config: FsLogConfig) -> Self {
        Self {
            tag: staging_tag(&config.job_id),
            config,
            committed: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(LogState::default()),
        }
    }

    fn join(&self, relative: &str) -> Path {
        let mut path = self.config.base.clone();
        for segment in relative.split('/').filter(|s| !s.is_empty()) {
            path = path.join(segment);
        }
        path
    }

    fn commits_dir(&self) -> Path {
        self.config.base.clone().join(COMMITS_DIR)
    }

    /// Reads the commit records (once per process: only this job writes).
    async fn load(&self, st: &mut LogState) -> Result<()> {
        if st.loaded {
            return Ok(());
        }
        let dir = self.commits_dir();
        let mut listed: Vec<Path> = self
            .config
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| storage_error(format!("listing {dir}"), e))?;
        listed.retain(|p| p.filename().is_some_and(|f| f.ends_with(".commit")));
        listed.sort();
        for path in listed {
            let bytes = self
                .config
                .store
                .get(&path)
                .await
                .map_err(|e| storage_error(format!("reading {path}"), e))?
                .bytes()
                .await
                .map_err(|e| storage_error(format!("reading {path}"), e))?;
            let record: StoredCommit = serde_json::from_slice(&bytes).map_err(|e| {
                SluiceError::internal(format!(
                    "{}: commit record {path} is damaged: {e}",
                    self.config.name
                ))
            })?;
            self.take(st, record);
        }
        // Partitions whose success file no record wrote are open.
        if self.config.partition_commit.is_some() {
            let done: HashSet<&String> = st.records.iter().flat_map(|r| &r.partitions_done).collect();
            let mut open = BTreeMap::new();
            for r in &st.records {
                for f in &r.files {
                    let dir = parent(&f.path);
                    if !f.partition.is_empty() && !done.contains(&dir) {
                        open.entry(dir).or_insert_with(|| OpenPartition {
                            values: f.partition.clone().into_iter().collect(),
                            first_ms: r.committed_at,
                        });
                    }
                }
            }
            st.open = open;
        }
        st.loaded = true;
        Ok(())
    }

    /// Takes a record (read or written) into the state.
    fn take(&self, st: &mut LogState, record: StoredCommit) {
        if record.job_id == self.config.job_id
            && let Some(epoch) = record.epoch
        {
            self.committed.fetch_max(epoch, Ordering::SeqCst);
        }
        st.recorded.extend(record.files.iter().map(|f| f.path.clone()));
        for src in &record.sources {
            st.last_sources.record(src);
        }
        st.records.push(record);
    }

    /// Makes a pending file visible under its final name (found there
    /// already when a crashed commit had renamed it).
    async fn publish(&self, file: &PendingFile) -> Result<()> {
        let target = self.join(&file.path);
        let staging = staging_path(&target, &self.tag);
        let store = self.config.store.as_ref();
        match retry(format!("renaming {staging}"), || store.rename(&staging, &target)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                match retry(format!("reading {target}"), || store.head(&target)).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!(
                            "{}: the in-progress file {staging} is gone and {target} was never made: {e}",
                            self.config.name
                        ),
                    )),
                }
            }
            Err(e) => Err(storage_error(format!("renaming {staging} to {target}"), e)),
        }
    }

    /// Takes the lanes' watermarks from their checkpoint states.
    fn take_watermarks(st: &mut LogState, states: &[Vec<RecordBatch>]) {
        for batch in states.iter().flatten() {
            let meta = batch.schema_ref().metadata();
            let get = |k: &str| meta.get(k).and_then(|v| v.parse::<i64>().ok());
            if let (Some(lane), Some(lanes)) = (get(LANE_KEY), get(LANES_KEY)) {
                st.lanes = lanes as usize;
                // A job restored at another parallelism has other lanes:
                // those gone hold the watermark back no more.
                st.lane_watermarks.retain(|l, _| *l < st.lanes);
                if let Some(w) = get(WATERMARK_KEY) {
                    let e = st.lane_watermarks.entry(lane as usize).or_insert(w);
                    *e = (*e).max(w);
                }
            }
        }
    }

    /// The open partitions that are complete now; writes their success
    /// files (an overwrite when a crash came before the record).
    async fn complete_partitions(&self, st: &mut LogState, now: i64) -> Result<Vec<String>> {
        let Some(pc) = &self.config.partition_commit else {
            return Ok(vec![]);
        };
        let delay_us = pc.delay.as_micros() as i64;
        let watermark = (st.lanes > 0 && st.lane_watermarks.len() >= st.lanes)
            .then(|| st.lane_watermarks.values().copied().min())
            .flatten();
        let mut done = vec![];
        for (dir, p) in &st.open {
            let complete = match &pc.trigger {
                Trigger::ProcessTime => now.saturating_sub(p.first_ms) * 1000 >= delay_us,
                Trigger::PartitionTime { pattern } => {
                    match (watermark, PartitionCommit::partition_time(pattern, &p.values)) {
                        (Some(w), Ok(t)) => w >= t.saturating_add(delay_us),
                        (_, Err(e)) => {
                            tracing::warn!(sink = %self.config.name, partition = %dir, "no partition commit: {e}");
                            false
                        }
                        (None, _) => false,
                    }
                }
            };
            if complete {
                done.push(dir.clone());
            }
        }
        for dir in &done {
            let path = self.join(dir).join(pc.file_name.as_str());
            let store = self.config.store.as_ref();
            retry(format!("writing {path}"), || store.put(&path, PutPayload::new()))
                .await
                .map_err(|e| storage_error(format!("writing {path}"), e))?;
            st.open.remove(dir);
        }
        Ok(done)
    }

    /// Deletes this job's in-progress files of earlier runs (after the
    /// restored checkpoint's were renamed: what is left belongs to epochs
    /// that never completed, and will be produced again).
    async fn sweep(&self) -> Result<usize> {
        let suffix = format!(".{}.inprogress", self.tag);
        let own = format!(".part-{}-", self.config.run_id);
        let stale: Vec<Path> = self
            .config
            .store
            .list(Some(&self.config.base))
            .try_filter_map(|m| {
                let name = m.location.filename().unwrap_or_default();
                let stale = name.starts_with(".part-") && name.ends_with(&suffix) && !name.starts_with(&own);
                futures::future::ready(Ok(stale.then_some(m.location)))
            })
            .try_collect()
            .await
            .map_err(|e| storage_error(format!("listing {}", self.config.base), e))?;
        for path in &stale {
            let store = self.config.store.as_ref();
            match retry(format!("deleting {path}"), || store.delete(path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(format!("deleting {path}"), e)),
            }
        }
        Ok(stale.len())
    }

    async fn write_record(&self, st: &mut LogState, mut record: StoredCommit) -> Result<()> {
        loop {
            let path = self.commits_dir().join(format!("{:020}.commit", record.version));
            let bytes =
                serde_json::to_vec_pretty(&record).map_err(|e| SluiceError::internal(e.to_string()))?;
            let store = self.config.store.as_ref();
            match wait_for_descriptors(format!("writing {path}"), || {
                store.put_opts(&path, PutPayload::from(bytes.clone()), PutMode::Create.into())
            })
            .await
            {
                Ok(_) => break,
                // Another writer took the version (a second sink on the
                // same path): take the next one.
                Err(object_store::Error::AlreadyExists { .. }) => record.version += 1,
                Err(e) => return Err(storage_error(format!("writing {path}"), e)),
            }
        }
        self.take(st, record);
        Ok(())
    }
}

fn parent(path: &str) -> String {
    path.rsplit_once('/')
        .map(|(d, _)| d.to_string())
        .unwrap_or_default()
}

#[async_trait]
impl Committer for FsLog {
    async fn commit(&self, request: CommitRequest) -> Result<Committed> {
        let mut st = self.state.lock().await;
        self.load(&mut st).await?;
        Self::take_watermarks(&mut st, &request.lane_states);
        let already = matches!((request.epoch, self.committed_epoch()), (Some(e), Some(c)) if e <= c);
        let now = now_ms();
        let mut committed = Committed::default();
        if !already {
            let mut files: Vec<PendingFile> = vec![];
            for state in &request.lane_states {
                files.extend(pending_files(state)?);
            }
            files.retain(|f| !st.recorded.contains(&f.path));
            for f in &files {
                self.publish(f).await?;
            }
            for f in &files {
                if !f.partition.is_empty() && self.config.partition_commit.is_some() {
                    st.open.entry(parent(&f.path)).or_insert_with(|| OpenPartition {
                        values: f.partition.clone(),
                        first_ms: now,
                    });
                }
            }
            let done = self.complete_partitions(&mut st, now).await?;
            if !files.is_empty() {
                let sources: Vec<SourceRange> = request
                    .sources
                    .iter()
                    .map(|r| SourceRange {
                        from: st.last_sources.start_of(r),
                        ..r.clone()
                    })
                    .collect();
                let version = st.records.iter().map(|r| r.version + 1).max().unwrap_or(1);
                committed = Committed {
                    version: Some(version),
                    rows: files.iter().map(|f| f.rows as u64).sum(),
                    bytes: files.iter().map(|f| f.size as u64).sum(),
                };
                let record = StoredCommit {
                    version,
                    job_id: self.config.job_id.clone(),
                    epoch: request.epoch,
                    committed_at: now,
                    operation: "WRITE".into(),
                    query_hash: self.config.query_hash.clone(),
                    sources,
                    files: files
                        .iter()
                        .map(|f| StoredFile {
                            path: f.path.clone(),
                            size: f.size,
                            rows: f.rows,
                            partition: f.partition.iter().cloned().collect(),
                        })
                        .collect(),
                    partitions_done: done,
                };
                self.write_record(&mut st, record).await?;
            }
            if let Some(epoch) = request.epoch {
                self.committed.fetch_max(epoch, Ordering::SeqCst);
            }
        } else {
            self.complete_partitions(&mut st, now).await?;
        }
        if !st.swept {
            let removed = self.sweep().await?;
            if removed > 0 {
                tracing::info!(sink = %self.config.name, removed, "removed in-progress files of uncompleted checkpoints");
            }
            st.swept = true;
        }
        Ok(committed)
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.committed.load(Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[async_trait]
impl TableLog for FsLog {
    async fn prepare(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        self.load(&mut st).await
    }

    fn table(&self, version: Option<TableVersion>) -> Result<Arc<dyn TableProvider>> {
        if version.is_some() {
            return Err(SluiceError::not_supported(format!(
                "{} is a filesystem sink: its commits are listed in sluice_commits, but its files \
                 are not versioned; land with connector = 'delta' to read AS OF a version",
                self.config.name
            )));
        }
        Ok(landed_table(&self.config.landed, &self.config.landed_schema)?)
    }

    async fn commits(&self) -> Result<Vec<CommitRecord>> {
        let mut st = self.state.lock().await;
        self.load(&mut st).await?;
        let mut out: Vec<CommitRecord> = st
            .records
            .iter()
            .map(|r| CommitRecord {
                version: r.version,
                committed_at: r.committed_at,
                checkpoint: r.epoch,
                files: r.files.iter().map(|f| f.path.clone()).collect(),
                rows: r.files.iter().map(|f| f.rows as u64).sum(),
                bytes: r.files.iter().map(|f| f.size as u64).sum(),
                sources: r.sources.clone(),
                query_hash: Some(r.query_hash.clone()),
                operation: r.operation.clone(),
            })
            .collect();
        out.sort_by_key(|c| c.version);
        Ok(out)
    }
}

/// A file written for a table log but not committed yet.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingFile {
    /// Relative to the table's location, in object store form.
    pub(crate) path: String,
    pub(crate) size: i64,
    pub(crate) rows: i64,
    /// Partition column -> value (None: NULL).
    pub(crate) partition: Vec<(String, Option<String>)>,
}

/// The checkpoint state of a lane's pending files.
pub(crate) fn pending_batch(files: &[PendingFile]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("partition", DataType::Utf8, false),
    ]));
    let path: StringArray = files.iter().map(|f| Some(f.path.as_str())).collect();
    let size: Int64Array = files.iter().map(|f| Some(f.size)).collect();
    let rows: Int64Array = files.iter().map(|f| Some(f.rows)).collect();
    let partition: StringArray = files
        .iter()
        .map(|f| {
            let map: serde_json::Map<String, serde_json::Value> = f
                .partition
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.clone()
                            .map_or(serde_json::Value::Null, serde_json::Value::String),
                    )
                })
                .collect();
            Some(serde_json::Value::Object(map).to_string())
        })
        .collect();
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(path),
            Arc::new(size),
            Arc::new(rows),
            Arc::new(partition),
        ],
    )?)
}

/// The pending files in checkpoint state (see [`pending_batch`]).
pub(crate) fn pending_files(batches: &[RecordBatch]) -> Result<Vec<PendingFile>> {
    let bad = || SluiceError::internal("sink checkpoint state is not a list of pending files");
    let mut out = vec![];
    for b in batches {
        if b.num_columns() != 4 {
            return Err(bad());
        }
        let path = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        let size = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(bad)?;
        let rows = b
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(bad)?;
        let partition = b
            .column(3)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        for i in 0..b.num_rows() {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(partition.value(i)).map_err(|_| bad())?;
            out.push(PendingFile {
                path: path.value(i).to_string(),
                size: size.value(i),
                rows: rows.value(i),
                partition: map
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().map(String::from)))
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// The SHA-256 of a job's query text, hex: commit records name the query
/// that landed them.
pub(crate) fn query_hash(query: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(query.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_times_come_from_the_values() {
        let v = |pairs: &[(&str, &str)]| -> Vec<(String, Option<String>)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect()
        };
        let t =
            PartitionCommit::partition_time("$dt $hour:00:00", &v(&[("dt", "2026-11-22"), ("hour", "10")]))
                .unwrap();
        assert_eq!(t, 1_795_341_600_000_000);
        let t = PartitionCommit::partition_time("$dt", &v(&[("dt", "2026-11-22")])).unwrap();
        assert_eq!(t, 1_795_305_600_000_000);
        let t = PartitionCommit::partition_time("$m:00", &v(&[("m", "2026-11-22 10:05")])).unwrap();
        assert_eq!(t, 1_795_341_900_000_000);
        assert!(PartitionCommit::partition_time("$dt", &v(&[("dt", "soon")])).is_err());
        assert!(PartitionCommit::partition_time("$dt", &[("dt".into(), None)]).is_err());
    }

    #[test]
    fn staging_names_hide_the_file_next_to_its_final_place() {
        let p = staging_path(&Path::from("lake/dt=1/part-9-0-00001.parquet"), "abc");
        assert_eq!(p.as_ref(), "lake/dt=1/.part-9-0-00001.parquet.abc.inprogress");
    }
}

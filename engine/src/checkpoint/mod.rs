//! Checkpoints: consistent snapshots of a running job, taken with barriers
//! (aligned, as in Flink's Chandy-Lamport variant), and restored when the
//! job starts again.
//!
//! ```text
//!  coordinator ──trigger(epoch)──▶ source lanes: record position, emit Barrier(epoch)
//!                                   │
//!                 keyed tasks: wait for the barrier on every input (holding back
//!                 inputs that already delivered it), snapshot state, forward it
//!                                   │
//!                 sink lanes: flush / snapshot, acknowledge
//!  coordinator ◀──acks── every source lane, keyed task and sink lane
//!      └─ all acknowledged: write `_manifest.json` last (temp file, fsync,
//!         rename): only then does the checkpoint exist.
//! ```
//!
//! On disk, under `<data dir>/checkpoints/<job>/`, one directory per epoch
//! holds Arrow IPC files of operator state and the manifest. A directory
//! without a manifest is a torn checkpoint (the process died while taking
//! it) and is ignored; older checkpoints are removed once a newer one is
//! complete.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SluiceError};

pub(crate) mod coordinator;

const MANIFEST: &str = "_manifest.json";
const JOB_ID: &str = "_job_id";
const COMMITTED: &str = "_committed";
const SETTINGS: &str = "_settings.json";

/// Completed checkpoints kept on disk (the newest is the one restored).
const KEEP: usize = 2;

/// Entries of a job's checkpoint history kept for SHOW CHECKPOINTS.
const HISTORY: usize = 20;

/// What a completed checkpoint recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub job: String,
    pub epoch: u64,
    /// When the barrier was injected (ms since the epoch).
    pub started_ms: i64,
    pub duration_ms: u64,
    /// Bytes of state written.
    pub bytes: u64,
    /// Per source lane (`<node>-<partition>`): where to resume.
    pub sources: BTreeMap<String, String>,
    /// Per source lane: where the previous checkpoint was (absent: the
    /// start), so that this checkpoint's commit names the input it covers.
    #[serde(default)]
    pub sources_from: BTreeMap<String, String>,
    /// Per source lane: the stream it reads (for `start_from`).
    #[serde(default)]
    pub streams: BTreeMap<String, String>,
    /// Per stateful task (`op-<node>-<task>`, `sink-<lane>`): its state
    /// file in the checkpoint's directory (absent: empty state).
    pub states: BTreeMap<String, String>,
    /// Per task whose state file is incremental (the groups changed since
    /// its last full snapshot): that full snapshot, as `<epoch dir>/<file>`
    /// of an earlier checkpoint. Restoring reads it, then the state file
    /// (if any: a finished sink lane's state is named here alone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bases: BTreeMap<String, String>,
    /// Tasks per keyed node: how many `op-<node>-<task>` snapshots there
    /// are, to be split over another number of tasks on restore.
    pub parallelism: BTreeMap<String, usize>,
    /// How keyed state was split over tasks
    /// (`crate::streaming::keygroups::routing`); absent: by hash modulo
    /// tasks, before key groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
}

impl Manifest {
    /// How many sink lanes kept state in this checkpoint (lanes with
    /// empty state are not named and need nothing restored).
    pub fn sink_lanes(&self) -> usize {
        lanes_named(self.states.keys().chain(self.bases.keys()), "sink-")
    }

    /// How many lanes of source node `node` have a position here.
    pub fn source_lanes(&self, node: &str) -> usize {
        lanes_named(self.sources.keys(), &format!("{node}-"))
    }
}

/// One more than the highest `n` among keys `<prefix><n>` (0: none).
fn lanes_named<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> usize {
    keys.filter_map(|k| k.strip_prefix(prefix)?.parse::<usize>().ok())
        .map(|lane| lane + 1)
        .max()
        .unwrap_or(0)
}

/// Where checkpoints live: a local directory (the default,
/// `<data dir>/checkpoints`) or a prefix of an object store (an `s3://` or
/// `hdfs://` checkpoint location), each job under its own name.
#[derive(Debug, Clone)]
pub enum CheckpointRoot {
    Local(PathBuf),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        /// The location as the user wrote it, for messages.
        url: String,
    },
}

impl CheckpointRoot {
    /// The default: `<data dir>/checkpoints`.
    pub fn local(data_dir: &Path) -> Self {
        CheckpointRoot::Local(data_dir.join("checkpoints"))
    }

    fn join(&self, part: &str) -> Self {
        match self {
            CheckpointRoot::Local(dir) => CheckpointRoot::Local(dir.join(part)),
            CheckpointRoot::Object { store, prefix, url } => CheckpointRoot::Object {
                store: store.clone(),
                prefix: prefix.clone().join(part),
                url: format!("{}/{part}", url.trim_end_matches('/')),
            },
        }
    }

    /// The location, for messages and logs.
    pub fn describe(&self) -> String {
        match self {
            CheckpointRoot::Local(dir) => dir.display().to_string(),
            CheckpointRoot::Object { url, .. } => url.clone(),
        }
    }
}

/// Runs object-store I/O to completion from synchronous code, on a runtime
/// of its own: the checkpoint store is called from blocking threads and
/// from async tasks alike, and a store's HTTP client keeps working whatever
/// runtime the caller is on.
fn block_on_io<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    static IO: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-checkpoint-io")
            .enable_all()
            .build()
            .expect("building the checkpoint I/O runtime")
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .expect("the checkpoint I/O task ended without an answer")
}

fn store_error(url: &str, e: object_store::Error) -> SluiceError {
    SluiceError::new(
        crate::error::ErrorKind::StorageUnavailable,
        format!("checkpoint location {url}: {e}"),
    )
}

/// Objects larger than this go up in parts.
const MULTIPART_OVER: usize = 16 << 20;

/// The format of checkpoint state files (the operators' and sinks'
/// snapshot layouts), kept in each file's footer. A restore refuses a
/// version it does not know rather than misread the state; a file without
/// one was written before versions were kept, in version 1.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The footer key holding [`STATE_FORMAT_VERSION`].
const STATE_VERSION_KEY: &str = "sluice.state.version";

fn check_state_version(
    meta: &std::collections::HashMap<String, String>,
    rel: &str,
    epoch: u64,
) -> Result<()> {
    match meta.get(STATE_VERSION_KEY) {
        None => Ok(()),
        Some(v) if v.parse::<u32>() == Ok(STATE_FORMAT_VERSION) => Ok(()),
        Some(v) => Err(SluiceError::new(
            crate::error::ErrorKind::NotSupported,
            format!(
                "checkpoint {epoch}: state file {rel} has state format version {v}, and this Sluice \
                 reads version {STATE_FORMAT_VERSION} (was it written by a newer Sluice?)"
            ),
        )),
    }
}

/// A job's checkpoints: one directory (or prefix) per epoch.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: CheckpointRoot,
}

impl CheckpointStore {
    pub fn new(root: &CheckpointRoot, job: &str) -> Self {
        Self { root: root.join(job) }
    }

    /// Writes `rel` (a path under the job) whole or not at all.
    fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        match &self.root {
            CheckpointRoot::Local(dir) => {
                let path = dir.join(rel);
                let parent = path.parent().unwrap_or(dir);
                fs::create_dir_all(parent)?;
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(rel);
                write_atomic(parent, name, &bytes)
            }
            CheckpointRoot::Object { store, prefix, url } => {
                let (store, path, url) = (store.clone(), object_path(prefix, rel), url.clone());
                block_on_io(async move {
                    if bytes.len() <= MULTIPART_OVER {
                        store.put(&path, bytes.into()).await.map(|_| ())
                    } else {
                        let upload = store.put_multipart(&path).await?;
                        let mut w = object_store::WriteMultipart::new(upload);
                        w.write(&bytes);
                        w.finish().await.map(|_| ())
                    }
                })
                .map_err(|e| store_error(&url, e))
            }
        }
    }

    /// The bytes of `rel`, None when there is no such file.
    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match &self.root {
            CheckpointRoot::Local(dir) => match fs::read(dir.join(rel)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            CheckpointRoot::Object { store, prefix, url } => {
                let (store, path, url) = (store.clone(), object_path(prefix, rel), url.clone());
                block_on_io(async move {
                    match store.get(&path).await {
                        Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .map_err(|e| store_error(&url, e))
            }
        }
    }

    fn exists(&self, rel: &str) -> bool {
        match &self.root {
            CheckpointRoot::Local(dir) => dir.join(rel).exists(),
            CheckpointRoot::Object { store, prefix, .. } => {
                let (store, path) = (store.clone(), object_path(prefix, rel));
                block_on_io(async move { store.head(&path).await.is_ok() })
            }
        }
    }

    /// Every object under `rel` (everything when empty), relative to the
    /// job's root.
    fn list_objects(&self, rel: &str) -> Result<Vec<ObjectPath>> {
        let CheckpointRoot::Object { store, prefix, url } = &self.root else {
            return Ok(vec![]);
        };
        let (store, under, url) = (store.clone(), object_path(prefix, rel), url.clone());
        block_on_io(async move {
            use futures::TryStreamExt;
            store
                .list(Some(&under))
                .map_ok(|m| m.location)
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(|e| store_error(&url, e))
    }

    /// Removes `rel` and everything under it (the whole job when empty).
    fn remove(&self, rel: &str) -> Result<()> {
        match &self.root {
            CheckpointRoot::Local(dir) => {
                let path = if rel.is_empty() {
                    dir.clone()
                } else {
                    dir.join(rel)
                };
                match fs::remove_dir_all(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                }
            }
            CheckpointRoot::Object { store, url, .. } => {
                let objects = self.list_objects(rel)?;
                let (store, url) = (store.clone(), url.clone());
                block_on_io(async move {
                    for o in objects {
                        match store.delete(&o).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .map_err(|e| store_error(&url, e))
            }
        }
    }

    /// The id of this incarnation of the job: made when the job is created
    /// (after [`Self::remove_all`]), kept across restarts. Table logs use
    /// it as their transaction id.
    pub fn job_id(&self) -> Result<String> {
        if let Some(id) = self.get(JOB_ID)? {
            let id = String::from_utf8_lossy(&id).trim().to_string();
            if !id.is_empty() {
                return Ok(id);
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let described = self.root.describe();
        let name = described
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("job");
        let id = format!("{name}-{nanos:x}-{:x}", std::process::id());
        self.put(JOB_ID, id.clone().into_bytes())?;
        Ok(id)
    }

    /// Keeps the settings the job was created with, so that a restart (of
    /// the server, or after a failure) runs it as its creator asked.
    pub fn save_settings(&self, settings: &JobSettings) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(settings).map_err(|e| SluiceError::internal(e.to_string()))?;
        self.put(SETTINGS, bytes)
    }

    /// The settings the job was created with (None for jobs created before
    /// they were kept, or an unreadable file).
    pub fn settings(&self) -> Option<JobSettings> {
        let bytes = self.get(SETTINGS).ok()??;
        serde_json::from_slice(&bytes)
            .map_err(|e| {
                tracing::warn!(location = %self.root.describe(), error = %e, "ignoring unreadable job settings")
            })
            .ok()
    }

    fn epoch_dir(epoch: u64) -> String {
        format!("{epoch:020}")
    }

    /// Writes one task's state for `epoch`; returns (file name, bytes).
    pub fn write_state(
        &self,
        epoch: u64,
        key: &str,
        batches: &[RecordBatch],
    ) -> Result<Option<(String, u64)>> {
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let name = format!("{key}.arrow");
        match &self.root {
            CheckpointRoot::Local(dir) => {
                // Streamed to the file: a large state is not held twice.
                let dir = dir.join(Self::epoch_dir(epoch));
                fs::create_dir_all(&dir)?;
                let file = File::create(dir.join(&name))?;
                let mut w = arrow::ipc::writer::FileWriter::try_new(file, &first.schema())?;
                w.write_metadata(STATE_VERSION_KEY, STATE_FORMAT_VERSION.to_string());
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
                let file = w.into_inner()?;
                file.sync_all()?;
                let bytes = file.metadata()?.len();
                Ok(Some((name, bytes)))
            }
            CheckpointRoot::Object { .. } => {
                let mut w = arrow::ipc::writer::FileWriter::try_new(Vec::new(), &first.schema())?;
                w.write_metadata(STATE_VERSION_KEY, STATE_FORMAT_VERSION.to_string());
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
                let bytes = w.into_inner()?;
                let len = bytes.len() as u64;
                self.put(&format!("{}/{name}", Self::epoch_dir(epoch)), bytes)?;
                Ok(Some((name, len)))
            }
        }
    }

    /// Makes `manifest` the newest complete checkpoint and removes older
    /// ones (keeping [`KEEP`]).
    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| SluiceError::internal(e.to_string()))?;
        self.put(&format!("{}/{MANIFEST}", Self::epoch_dir(manifest.epoch)), bytes)?;
        self.prune(manifest.epoch);
        Ok(())
    }

    /// Epochs with something written, newest first. An error when the
    /// location can't be listed: a job must not start over because its
    /// checkpoints could not be seen.
    fn epochs(&self) -> Result<Vec<u64>> {
        let names: Vec<String> = match &self.root {
            CheckpointRoot::Local(dir) => fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect(),
            CheckpointRoot::Object { store, prefix, url } => {
                let (store, prefix, url) = (store.clone(), prefix.clone(), url.clone());
                block_on_io(async move { store.list_with_delimiter(Some(&prefix)).await })
                    .map_err(|e| store_error(&url, e))?
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect()
            }
        };
        let mut out: Vec<u64> = names.iter().filter_map(|n| n.parse::<u64>().ok()).collect();
        out.sort_unstable_by_key(|e| std::cmp::Reverse(*e));
        Ok(out)
    }

    fn prune(&self, newest: u64) {
        let mut complete = 0;
        let epochs = self.epochs().unwrap_or_else(|e| {
            tracing::warn!(location = %self.root.describe(), error = %e, "could not list checkpoints to prune");
            vec![]
        });
        // Epoch directories holding the full snapshots that kept
        // incremental ones apply to (bases are always older).
        let mut referenced = std::collections::BTreeSet::new();
        for epoch in epochs {
            if epoch > newest {
                continue;
            }
            let dir = Self::epoch_dir(epoch);
            let has_manifest = self.exists(&format!("{dir}/{MANIFEST}"));
            let keep = has_manifest && complete < KEEP;
            if has_manifest {
                complete += 1;
            }
            if keep && let Ok(Some(bytes)) = self.get(&format!("{dir}/{MANIFEST}")) {
                match serde_json::from_slice::<Manifest>(&bytes) {
                    Ok(m) => referenced.extend(
                        m.bases
                            .values()
                            .filter_map(|b| b.split('/').next().map(str::to_string)),
                    ),
                    // A kept manifest that can't be read: keep everything
                    // older rather than guess what it needs.
                    Err(_) => return,
                }
            }
            if keep || referenced.contains(&dir) {
                continue;
            }
            if let Err(e) = self.remove(&dir) {
                tracing::warn!(location = %self.root.describe(), epoch, error = %e, "could not remove an old checkpoint");
            }
        }
    }

    /// Whether checkpoint `epoch` completed (its manifest is there).
    pub fn is_complete(&self, epoch: u64) -> bool {
        self.exists(&format!("{}/{MANIFEST}", Self::epoch_dir(epoch)))
    }

    /// The path of a state file relative to the job, as manifests name
    /// incremental snapshots' bases.
    pub fn state_path(epoch: u64, file: &str) -> String {
        format!("{}/{file}", Self::epoch_dir(epoch))
    }

    /// Records that `epoch`'s output was committed by the sink.
    pub fn mark_committed(&self, epoch: u64) -> Result<()> {
        self.put(&format!("{}/{COMMITTED}", Self::epoch_dir(epoch)), vec![])
    }

    /// The newest complete checkpoint whose output was committed.
    pub fn latest_committed(&self) -> Result<Option<Manifest>> {
        self.newest(true)
    }

    /// The newest complete checkpoint. Torn ones (no manifest, or one that
    /// does not parse) are skipped.
    pub fn latest(&self) -> Result<Option<Manifest>> {
        self.newest(false)
    }

    fn newest(&self, committed: bool) -> Result<Option<Manifest>> {
        for epoch in self.epochs()? {
            let dir = Self::epoch_dir(epoch);
            if committed && !self.exists(&format!("{dir}/{COMMITTED}")) {
                continue;
            }
            let Some(bytes) = self.get(&format!("{dir}/{MANIFEST}"))? else {
                continue;
            };
            match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => {
                    tracing::warn!(location = %self.root.describe(), epoch, error = %e, "ignoring an unreadable checkpoint")
                }
            }
        }
        Ok(None)
    }

    /// A task's state as of `manifest` (empty when it had none): its full
    /// snapshot, followed by the changes since when it is incremental.
    pub fn read_state(&self, manifest: &Manifest, key: &str) -> Result<Vec<RecordBatch>> {
        let mut out = match manifest.bases.get(key) {
            Some(base) => self.read_file(base, manifest.epoch)?,
            None => vec![],
        };
        // A base without a file of this checkpoint: the state is unchanged
        // since (a finished sink lane's).
        if let Some(name) = manifest.states.get(key) {
            out.extend(self.read_file(&Self::state_path(manifest.epoch, name), manifest.epoch)?);
        }
        Ok(out)
    }

    /// The batches of state file `rel` (for checkpoint `epoch`'s messages).
    fn read_file(&self, rel: &str, epoch: u64) -> Result<Vec<RecordBatch>> {
        let batches = match &self.root {
            CheckpointRoot::Local(dir) => {
                let file = File::open(dir.join(rel))?;
                let reader = arrow::ipc::reader::FileReader::try_new(file, None)?;
                check_state_version(reader.custom_metadata(), rel, epoch)?;
                reader.collect::<std::result::Result<Vec<_>, _>>()?
            }
            CheckpointRoot::Object { .. } => {
                let bytes = self.get(rel)?.ok_or_else(|| {
                    SluiceError::new(
                        crate::error::ErrorKind::StorageUnavailable,
                        format!(
                            "checkpoint {epoch} of {}: state file {rel} is missing",
                            self.root.describe()
                        ),
                    )
                })?;
                let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)?;
                check_state_version(reader.custom_metadata(), rel, epoch)?;
                reader.collect::<std::result::Result<Vec<_>, _>>()?
            }
        };
        Ok(batches)
    }

    /// Where a dropped job's checkpoints are kept, for a later sink's
    /// `start_from = 'sink:<name>'`.
    pub fn dropped(root: &CheckpointRoot, job: &str) -> Self {
        Self {
            root: root.join(".dropped").join(job),
        }
    }

    /// Moves the job's checkpoints to [`Self::dropped`] (DROP), replacing
    /// those of an earlier job of that name.
    pub fn park(&self, root: &CheckpointRoot, job: &str) {
        let to = Self::dropped(root, job);
        to.remove_all();
        let moved = match (&self.root, &to.root) {
            (CheckpointRoot::Local(from), CheckpointRoot::Local(to)) => {
                if !from.exists() {
                    return;
                }
                to.parent()
                    .map(fs::create_dir_all)
                    .transpose()
                    .and_then(|_| fs::rename(from, to))
                    .map_err(SluiceError::from)
            }
            (
                CheckpointRoot::Object { store, prefix, url },
                CheckpointRoot::Object {
                    prefix: to_prefix, ..
                },
            ) => self.list_objects("").and_then(|objects| {
                let (store, prefix, to_prefix, url) =
                    (store.clone(), prefix.clone(), to_prefix.clone(), url.clone());
                block_on_io(async move {
                    for o in objects {
                        let Some(rest) = o.prefix_match(&prefix) else {
                            continue;
                        };
                        let target = rest.fold(to_prefix.clone(), |p, part| p.join(part));
                        store.rename(&o, &target).await?;
                    }
                    Ok(())
                })
                .map_err(|e| store_error(&url, e))
            }),
            _ => Ok(()),
        };
        if let Err(e) = moved {
            tracing::warn!(location = %self.root.describe(), error = %e, "could not keep a dropped job's checkpoints");
            self.remove_all();
        }
    }

    /// Removes every checkpoint of the job.
    pub fn remove_all(&self) {
        if let Err(e) = self.remove("") {
            tracing::warn!(location = %self.root.describe(), error = %e, "could not remove checkpoints");
        }
    }
}

/// `prefix/rel` as an object path (`rel` split on `/`).
fn object_path(prefix: &ObjectPath, rel: &str) -> ObjectPath {
    rel.split('/')
        .filter(|p| !p.is_empty())
        .fold(prefix.clone(), |p, part| p.join(part))
}

/// Writes `dir/name` whole or not at all: a temporary file, fsync, rename,
/// fsync of the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// What a job keeps of the session that created it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSettings {
    /// `streaming.checkpoint_interval` in milliseconds (None: off).
    pub checkpoint_interval_ms: Option<u64>,
    /// `streaming.restart_attempts`: restarts after failures in a row.
    pub restart_attempts: u32,
    /// `streaming.checkpoint_timeout` in milliseconds (absent: the default).
    #[serde(default)]
    pub checkpoint_timeout_ms: Option<u64>,
    /// `streaming.state_ttl` in milliseconds (absent: state is kept until
    /// what the query says bounds it).
    #[serde(default)]
    pub state_ttl_ms: Option<u64>,
    /// `streaming.lookup_refresh` in milliseconds (absent: a lookup join's
    /// table is read once per job start).
    #[serde(default)]
    pub lookup_refresh_ms: Option<u64>,
}

/// How long a checkpoint may take before it counts as failed (Flink's
/// default too).
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);

impl JobSettings {
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.checkpoint_interval_ms.map(Duration::from_millis)
    }

    pub fn state_ttl(&self) -> Option<Duration> {
        self.state_ttl_ms.map(Duration::from_millis)
    }

    pub fn lookup_refresh(&self) -> Option<Duration> {
        self.lookup_refresh_ms.map(Duration::from_millis)
    }

    pub fn checkpoint_timeout(&self) -> Duration {
        self.checkpoint_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CHECKPOINT_TIMEOUT)
    }
}

/// `streaming.restart_attempts`: a count from 0 (never restart) to 1000.
pub fn parse_restart_attempts(value: &str) -> Result<u32> {
    value
        .trim()
        .trim_matches('\'')
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 1000)
        .ok_or_else(|| {
            SluiceError::invalid_parameter(format!(
                "invalid value for parameter \"streaming.restart_attempts\": \"{value}\"; \
                 write a count from 0 (a failed job stays failed) to 1000"
            ))
        })
}

/// `streaming.checkpoint_timeout`: a duration (`10min`, `30s`).
pub fn parse_timeout(value: &str) -> Result<Duration> {
    match parse_interval(value) {
        Ok(Some(d)) => Ok(d),
        _ => Err(SluiceError::invalid_parameter(format!(
            "invalid value for parameter \"streaming.checkpoint_timeout\": \"{value}\"; \
             write a duration between 100ms and 24h such as '10min' or '30s'"
        ))),
    }
}

/// `streaming.checkpoint_interval`: a duration (`10s`, `500ms`, `2min`,
/// `1h`) or `off`.
pub fn parse_interval(value: &str) -> Result<Option<Duration>> {
    let v = value.trim().trim_matches('\'').to_ascii_lowercase();
    if v == "off" || v == "0" || v == "none" {
        return Ok(None);
    }
    let secs = duration_secs(&v, false).ok_or_else(|| {
        SluiceError::invalid_parameter(format!(
            "invalid value for parameter \"streaming.checkpoint_interval\": \"{value}\"; \
             write a duration such as '10s', '500ms' or '2min', or 'off'"
        ))
    })?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err(SluiceError::invalid_parameter(format!(
            "streaming.checkpoint_interval = '{value}': use between 100ms and 24h, or 'off'"
        )));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

/// A number with a unit (ms, s, min, h; d when `days`) in seconds; a bare
/// number is seconds. `v` is lowercase.
fn duration_secs(v: &str, days: bool) -> Option<f64> {
    let digits = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let n: f64 = num.parse().ok()?;
    Some(match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" | "sec" | "second" | "seconds" => n,
        "min" | "minute" | "minutes" | "m" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" if days => n * 86_400.0,
        _ => return None,
    })
}

/// `streaming.state_ttl`: how long a join keeps a row nothing else bounds
/// ('off' or '0': until the query's own bounds drop it). A number with a
/// unit (ms, s, min, h, d), at least one second.
pub fn parse_state_ttl(value: &str) -> Result<Option<Duration>> {
    parse_duration_setting("streaming.state_ttl", value)
}

/// `streaming.lookup_refresh`: how often a lookup join reads its table
/// again ('off' or '0': once per job start). A duration as for
/// `streaming.state_ttl`.
pub fn parse_lookup_refresh(value: &str) -> Result<Option<Duration>> {
    parse_duration_setting("streaming.lookup_refresh", value)
}

fn parse_duration_setting(name: &str, value: &str) -> Result<Option<Duration>> {
    let v = value.trim().trim_matches('\'').to_ascii_lowercase();
    if v == "off" || v == "0" || v == "none" {
        return Ok(None);
    }
    let secs = duration_secs(&v, true).ok_or_else(|| {
        SluiceError::invalid_parameter(format!(
            "invalid value for parameter \"{name}\": \"{value}\"; write a duration such as \
             '30min', '12h' or '7d', or 'off'"
        ))
    })?;
    if !(1.0..=3650.0 * 86_400.0).contains(&secs) {
        return Err(SluiceError::invalid_parameter(format!(
            "{name} = '{value}': use at least 1s, or 'off'"
        )));
    }
    Ok(Some(Duration::from_millis((secs * 1000.0) as u64)))
}

/// How SHOW streaming.checkpoint_interval spells an interval.
pub fn format_interval(interval: Option<Duration>) -> String {
    match interval {
        None => "off".into(),
        Some(d) if d.subsec_millis() != 0 => format!("{}ms", d.as_millis()),
        Some(d) => format!("{}s", d.as_secs()),
    }
}

/// A checkpoint a job starts from.
#[derive(Debug, Clone)]
pub struct Restore {
    pub store: CheckpointStore,
    pub manifest: Manifest,
}

impl Restore {
    pub fn position(&self, key: &str) -> Option<&str> {
        self.manifest.sources.get(key).map(String::as_str)
    }

    pub fn state(&self, key: &str) -> Result<Vec<RecordBatch>> {
        self.store.read_state(&self.manifest, key)
    }
}

/// How a job checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub store: CheckpointStore,
    pub interval: Duration,
    /// A checkpoint not complete after this long fails (the next one is
    /// triggered as usual).
    pub timeout: Duration,
    /// The checkpoint to start from, if any.
    pub restore: Option<Restore>,
    /// Where the job's checkpoint history is kept for SHOW CHECKPOINTS.
    pub history: Arc<CheckpointHistory>,
    /// The sink's committer: each completed checkpoint is committed to it.
    pub committer: Option<Arc<dyn crate::sink::Committer>>,
}

/// One row of SHOW CHECKPOINTS.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    pub epoch: u64,
    pub started_ms: i64,
    pub duration_ms: Option<u64>,
    pub bytes: u64,
    /// `in progress`, `completed`, `failed` or `restored`.
    pub status: &'static str,
    pub detail: Option<String>,
}

/// A job's recent checkpoints, newest last, and how many completed and
/// failed since the job started (the recent ones are a window; the counts
/// only grow, as metrics counters must).
#[derive(Debug, Default)]
pub struct CheckpointHistory {
    entries: Mutex<VecDeque<CheckpointStats>>,
    completed: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    /// Completed checkpoints by duration: counts per bucket of
    /// [`DURATION_BUCKETS_MS`] (the last: longer than all), and the sum.
    durations: [std::sync::atomic::AtomicU64; DURATION_BUCKETS_MS.len() + 1],
    duration_sum_ms: std::sync::atomic::AtomicU64,
    /// How long the job took to start from its checkpoint (state read).
    restore_ms: std::sync::atomic::AtomicU64,
    /// The checkpoint the job started from, kept apart from the recent
    /// entries (which a long run pushes it out of).
    restored_from: Mutex<Option<u64>>,
    /// The sink's commits of completed checkpoints.
    sink: Mutex<SinkCommits>,
}

/// A job's sink commits since the job started: what `/metrics` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCommits {
    /// Commits that succeeded (an epoch committed before counts again
    /// when committed again after a restore; it adds no version).
    pub commits: u64,
    /// Attempts that failed (each is retried).
    pub failures: u64,
    /// Rows and bytes the commits made visible.
    pub rows: u64,
    pub bytes: u64,
    /// The newest table version a commit made.
    pub version: Option<u64>,
    /// When the newest commit finished, ms since the Unix epoch.
    pub last_commit_ms: Option<i64>,
}

/// Upper bounds of the checkpoint-duration buckets, in milliseconds.
pub const DURATION_BUCKETS_MS: [u64; 11] =
    [10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000];

/// Completed checkpoints by duration: cumulative counts per bound of
/// [`DURATION_BUCKETS_MS`], the count of all and the sum of durations (ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurationHistogram {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_ms: u64,
}

impl CheckpointHistory {
    pub fn record(&self, stats: CheckpointStats) {
        use std::sync::atomic::Ordering::Relaxed;
        if stats.status == "restored" {
            *self.restored_from.lock().expect("restored lock") = Some(stats.epoch);
        }
        let mut h = self.entries.lock().expect("checkpoint history lock");
        let before = h.iter().find(|s| s.epoch == stats.epoch).map(|s| s.status);
        if before != Some(stats.status) {
            if stats.status == "completed"
                && let Some(ms) = stats.duration_ms
            {
                let bucket = DURATION_BUCKETS_MS
                    .iter()
                    .position(|b| ms <= *b)
                    .unwrap_or(DURATION_BUCKETS_MS.len());
                self.durations[bucket].fetch_add(1, Relaxed);
                self.duration_sum_ms.fetch_add(ms, Relaxed);
            }
            match stats.status {
                "completed" => self.completed.fetch_add(1, Relaxed),
                "failed" => self.failed.fetch_add(1, Relaxed),
                _ => 0,
            };
        }
        if let Some(existing) = h.iter_mut().find(|s| s.epoch == stats.epoch) {
            *existing = stats;
            return;
        }
        h.push_back(stats);
        while h.len() > HISTORY {
            h.pop_front();
        }
    }

    pub fn entries(&self) -> Vec<CheckpointStats> {
        self.entries
            .lock()
            .expect("checkpoint history lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Completed checkpoints by duration.
    pub fn durations(&self) -> DurationHistogram {
        use std::sync::atomic::Ordering::Relaxed;
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(DURATION_BUCKETS_MS.len());
        for b in &self.durations[..DURATION_BUCKETS_MS.len()] {
            running += b.load(Relaxed);
            cumulative.push(running);
        }
        DurationHistogram {
            cumulative,
            count: running + self.durations[DURATION_BUCKETS_MS.len()].load(Relaxed),
            sum_ms: self.duration_sum_ms.load(Relaxed),
        }
    }

    /// Records how long the job took to start from its checkpoint.
    pub fn set_restore_time(&self, took: Duration) {
        self.restore_ms
            .store(took.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the job took to start from its checkpoint (`None`: it did
    /// not start from one).
    pub fn restore_time(&self) -> Option<Duration> {
        let ms = self.restore_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.restored_from().map(|_| Duration::from_millis(ms))
    }

    /// The checkpoint the job started from, if it did.
    pub fn restored_from(&self) -> Option<u64> {
        *self.restored_from.lock().expect("restored lock")
    }

    /// Records a commit of the sink's output and what it made visible.
    pub fn record_commit(&self, committed: crate::sink::Committed) {
        let mut s = self.sink.lock().expect("sink commits lock");
        s.commits += 1;
        s.rows += committed.rows;
        s.bytes += committed.bytes;
        if committed.version.is_some() {
            s.version = committed.version.max(s.version);
        }
        s.last_commit_ms = Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        );
    }

    /// Records a failed attempt to commit.
    pub fn record_commit_failure(&self) {
        self.sink.lock().expect("sink commits lock").failures += 1;
    }

    /// The sink's commits so far.
    pub fn sink_commits(&self) -> SinkCommits {
        *self.sink.lock().expect("sink commits lock")
    }

    /// Checkpoints completed and failed since the job started.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.completed.load(Relaxed), self.failed.load(Relaxed))
    }
}

/// What a task tells the coordinator about an epoch.
#[derive(Debug)]
pub(crate) enum Ack {
    /// A source lane injected the barrier at this position.
    Source {
        epoch: u64,
        key: String,
        position: String,
    },
    /// A stateful task (or sink lane) snapshotted: its file and size,
    /// and for an incremental snapshot the full one it applies to.
    State {
        epoch: u64,
        key: String,
        file: Option<(String, u64)>,
        base: Option<String>,
    },
    /// The task could not take part (the checkpoint fails, the job goes on).
    Failed { epoch: u64, key: String, error: String },
    /// A source lane ended (bounded input) at this position (None: its
    /// connector can't resume): it takes no more barriers, and later
    /// checkpoints record it at this position.
    Ended { key: String, position: Option<String> },
    /// A sink lane's input ended: its last state, taken after the barrier
    /// of checkpoint `after` (the last one it passed, or the one restored).
    /// It goes into the first checkpoint after `after` to complete (its
    /// output since then is committed with it); the lane takes no more
    /// barriers.
    Finished {
        key: String,
        after: u64,
        state: Vec<RecordBatch>,
    },
    /// Every input of a keyed task ended and it passed on all it had: it
    /// takes no more barriers and keeps no state (its output is in the
    /// state of the tasks below it).
    Done { key: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn manifest(epoch: u64) -> Manifest {
        Manifest {
            job: "j".into(),
            epoch,
            started_ms: 0,
            duration_ms: 1,
            bytes: 0,
            sources: BTreeMap::from([("1-0".to_string(), format!("{epoch}"))]),
            sources_from: BTreeMap::new(),
            streams: BTreeMap::new(),
            states: BTreeMap::new(),
            bases: BTreeMap::new(),
            parallelism: BTreeMap::new(),
            routing: None,
        }
    }

    #[test]
    fn intervals_parse_like_durations() {
        assert_eq!(parse_interval("2s").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(parse_interval("500ms").unwrap(), Some(Duration::from_millis(500)));
        assert_eq!(parse_interval("1min").unwrap(), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("off").unwrap(), None);
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("1ms").is_err());
        assert_eq!(format_interval(Some(Duration::from_secs(10))), "10s");
        assert_eq!(format_interval(Some(Duration::from_millis(500))), "500ms");
    }

    #[test]
    fn job_settings_round_trip_and_restart_attempts_parse() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(&CheckpointRoot::local(dir.path()), "j");
        assert_eq!(store.settings(), None);
        let settings = JobSettings {
            lookup_refresh_ms: None,
            checkpoint_interval_ms: Some(1500),
            restart_attempts: 2,
            checkpoint_timeout_ms: None,
            state_ttl_ms: Some(3_600_000),
        };
        store.save_settings(&settings).unwrap();
        assert_eq!(store.settings(), Some(settings));
        assert_eq!(
            store.settings().unwrap().checkpoint_interval(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_state_ttl("'12h'").unwrap(),
            Some(Duration::from_secs(43_200))
        );
        assert_eq!(parse_state_ttl("7d").unwrap(), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_state_ttl("off").unwrap(), None);
        assert!(parse_state_ttl("10ms").is_err());
        assert!(parse_state_ttl("soon").is_err());
        assert_eq!(parse_restart_attempts("3").unwrap(), 3);
        assert_eq!(parse_restart_attempts("'0'").unwrap(), 0);
        assert!(parse_restart_attempts("-1").is_err());
        assert!(parse_restart_attempts("many").is_err());
        assert!(parse_restart_attempts("1001").is_err());
    }

    fn torn_checkpoints_are_ignored_and_old_ones_pruned(root: &CheckpointRoot) {
        let store = CheckpointStore::new(root, "j");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        for epoch in 1..=3 {
            let mut m = manifest(epoch);
            let (file, _) = store
                .write_state(epoch, "op-1-0", std::slice::from_ref(&batch))
                .unwrap()
                .unwrap();
            m.states.insert("op-1-0".into(), file);
            store.commit(&m).unwrap();
        }
        // Epoch 4 died half-written: state file, no manifest.
        store
            .write_state(4, "op-1-0", std::slice::from_ref(&batch))
            .unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.epoch, 3);
        assert_eq!(store.read_state(&latest, "op-1-0").unwrap(), vec![batch]);
        assert!(store.read_state(&latest, "op-2-0").unwrap().is_empty());
        // Epoch 1 is gone, 2 and 3 are kept.
        assert_eq!(store.epochs().unwrap(), vec![4, 3, 2]);
        // A manifest that does not parse is torn too.
        store
            .put(
                &format!("{}/{MANIFEST}", CheckpointStore::epoch_dir(4)),
                b"{\"job\":".to_vec(),
            )
            .unwrap();
        assert_eq!(store.latest().unwrap().unwrap().epoch, 3);
        // Only committed checkpoints count for latest_committed.
        assert_eq!(store.latest_committed().unwrap(), None);
        store.mark_committed(2).unwrap();
        assert_eq!(store.latest_committed().unwrap().unwrap().epoch, 2);
        // The job id is made once and kept.
        let id = store.job_id().unwrap();
        assert_eq!(store.job_id().unwrap(), id);
        // DROP parks the checkpoints where start_from finds them.
        store.park(root, "j");
        assert_eq!(store.latest().unwrap(), None);
        assert_eq!(
            CheckpointStore::dropped(root, "j")
                .latest()
                .unwrap()
                .unwrap()
                .epoch,
            3
        );
        CheckpointStore::dropped(root, "j").remove_all();
        assert_eq!(CheckpointStore::dropped(root, "j").latest().unwrap(), None);
    }

    /// Incremental state: a manifest naming a base reads it first, and
    /// pruning keeps the base's checkpoint while a kept one needs it.
    fn incremental_states_read_their_base_and_keep_it(root: &CheckpointRoot) {
        let store = CheckpointStore::new(root, "inc");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch =
            |v: i64| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap();
        let (full, _) = store.write_state(1, "op-1-0", &[batch(1)]).unwrap().unwrap();
        let mut m = manifest(1);
        m.states.insert("op-1-0".into(), full.clone());
        store.commit(&m).unwrap();
        for epoch in 2..=4 {
            let (delta, _) = store
                .write_state(epoch, "op-1-0", &[batch(epoch as i64)])
                .unwrap()
                .unwrap();
            let mut m = manifest(epoch);
            m.states.insert("op-1-0".into(), delta);
            m.bases
                .insert("op-1-0".into(), CheckpointStore::state_path(1, &full));
            store.commit(&m).unwrap();
        }
        // 4 and 3 are the kept ones, 1 holds their base, 2 is gone.
        assert_eq!(store.epochs().unwrap(), vec![4, 3, 1]);
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(
            store.read_state(&latest, "op-1-0").unwrap(),
            vec![batch(1), batch(4)]
        );
        // A new full snapshot: the old base goes with the next prune.
        let (full, _) = store.write_state(5, "op-1-0", &[batch(5)]).unwrap().unwrap();
        let mut m = manifest(5);
        m.states.insert("op-1-0".into(), full);
        store.commit(&m).unwrap();
        let mut m = manifest(6);
        m.states.insert(
            "op-1-0".into(),
            store.write_state(6, "op-1-0", &[batch(6)]).unwrap().unwrap().0,
        );
        store.commit(&m).unwrap();
        assert_eq!(store.epochs().unwrap(), vec![6, 5]);
    }

    /// State files carry their format version; one written by a newer
    /// format is refused with a message naming both, one from before
    /// versions were kept is read as version 1.
    #[test]
    fn state_files_carry_a_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let root = CheckpointRoot::local(dir.path());
        let store = CheckpointStore::new(&root, "v");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![7]))]).unwrap();
        let (name, _) = store
            .write_state(1, "op-1-0", std::slice::from_ref(&batch))
            .unwrap()
            .unwrap();
        let mut m = manifest(1);
        m.states.insert("op-1-0".into(), name.clone());
        store.commit(&m).unwrap();
        let path = dir
            .path()
            .join("checkpoints/v")
            .join(CheckpointStore::state_path(1, &name));
        let meta = |p: &std::path::Path| {
            let r = arrow::ipc::reader::FileReader::try_new(File::open(p).unwrap(), None).unwrap();
            r.custom_metadata().clone()
        };
        assert_eq!(meta(&path).get(STATE_VERSION_KEY).map(String::as_str), Some("1"));
        assert_eq!(store.read_state(&m, "op-1-0").unwrap(), vec![batch.clone()]);
        // Rewritten as another version would write it, then without one.
        for (version, readable) in [(Some("2"), false), (None, true)] {
            let mut w =
                arrow::ipc::writer::FileWriter::try_new(File::create(&path).unwrap(), &schema).unwrap();
            if let Some(v) = version {
                w.write_metadata(STATE_VERSION_KEY, v);
            }
            w.write(&batch).unwrap();
            w.finish().unwrap();
            match store.read_state(&m, "op-1-0") {
                Ok(b) => assert!(readable && b == vec![batch.clone()], "{version:?}"),
                Err(e) => {
                    assert!(!readable, "{version:?}: {e}");
                    let e = e.to_string();
                    assert!(
                        e.contains("state format version 2") && e.contains("reads version 1"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn incremental_states_local_and_on_an_object_store() {
        let dir = tempfile::tempdir().unwrap();
        incremental_states_read_their_base_and_keep_it(&CheckpointRoot::local(dir.path()));
        incremental_states_read_their_base_and_keep_it(&CheckpointRoot::Object {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: ObjectPath::from("bucket/ckpt"),
            url: "memory:///bucket/ckpt".into(),
        });
    }

    #[test]
    fn local_checkpoints_skip_torn_ones_prune_and_park() {
        let dir = tempfile::tempdir().unwrap();
        torn_checkpoints_are_ignored_and_old_ones_pruned(&CheckpointRoot::local(dir.path()));
    }

    /// The same on an object store (in memory here; S3 in the server's
    /// tests).
    #[test]
    fn object_store_checkpoints_skip_torn_ones_prune_and_park() {
        let root = CheckpointRoot::Object {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: ObjectPath::from("bucket/ckpt"),
            url: "memory:///bucket/ckpt".into(),
        };
        torn_checkpoints_are_ignored_and_old_ones_pruned(&root);
    }
}

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
use serde::{Deserialize, Serialize};

use crate::error::{Result, SluiceError};

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
    /// Parallelism per keyed node, to refuse restoring state split for a
    /// different number of tasks.
    pub parallelism: BTreeMap<String, usize>,
}

/// A job's checkpoint directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn new(data_dir: &Path, job: &str) -> Self {
        Self {
            dir: data_dir.join("checkpoints").join(job),
        }
    }

    /// The id of this incarnation of the job: made when the job is created
    /// (after [`Self::remove_all`]), kept across restarts. Table logs use
    /// it as their transaction id.
    pub fn job_id(&self) -> Result<String> {
        let path = self.dir.join(JOB_ID);
        if let Ok(id) = fs::read_to_string(&path) {
            let id = id.trim();
            if !id.is_empty() {
                return Ok(id.to_string());
            }
        }
        fs::create_dir_all(&self.dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("job");
        let id = format!("{name}-{nanos:x}-{:x}", std::process::id());
        write_atomic(&self.dir, JOB_ID, id.as_bytes())?;
        Ok(id)
    }

    /// Keeps the settings the job was created with, so that a restart (of
    /// the server, or after a failure) runs it as its creator asked.
    pub fn save_settings(&self, settings: &JobSettings) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(settings).map_err(|e| SluiceError::internal(e.to_string()))?;
        write_atomic(&self.dir, SETTINGS, &bytes)
    }

    /// The settings the job was created with (None for jobs created before
    /// they were kept, or an unreadable file).
    pub fn settings(&self) -> Option<JobSettings> {
        let bytes = fs::read(self.dir.join(SETTINGS)).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(
                |e| tracing::warn!(dir = %self.dir.display(), error = %e, "ignoring unreadable job settings"),
            )
            .ok()
    }

    fn epoch_dir(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("{epoch:020}"))
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
        let dir = self.epoch_dir(epoch);
        fs::create_dir_all(&dir)?;
        let name = format!("{key}.arrow");
        let path = dir.join(&name);
        let file = File::create(&path)?;
        let mut w = arrow::ipc::writer::FileWriter::try_new(file, &first.schema())?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
        let file = w.into_inner()?;
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        Ok(Some((name, bytes)))
    }

    /// Makes `manifest` the newest complete checkpoint and removes older
    /// ones (keeping [`KEEP`]).
    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        let dir = self.epoch_dir(manifest.epoch);
        fs::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| SluiceError::internal(e.to_string()))?;
        write_atomic(&dir, MANIFEST, &bytes)?;
        self.prune(manifest.epoch);
        Ok(())
    }

    /// Epoch directories, newest first.
    fn epochs(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let epoch = e.file_name().to_str()?.parse::<u64>().ok()?;
                Some((epoch, e.path()))
            })
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        out
    }

    fn prune(&self, newest: u64) {
        let mut complete = 0;
        for (epoch, path) in self.epochs() {
            if epoch > newest {
                continue;
            }
            let keep = path.join(MANIFEST).exists() && complete < KEEP;
            if path.join(MANIFEST).exists() {
                complete += 1;
            }
            if !keep && let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an old checkpoint");
            }
        }
    }

    /// Records that `epoch`'s output was committed by the sink.
    pub fn mark_committed(&self, epoch: u64) -> Result<()> {
        let dir = self.epoch_dir(epoch);
        File::create(dir.join(COMMITTED))?.sync_all()?;
        File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// The newest complete checkpoint whose output was committed.
    pub fn latest_committed(&self) -> Option<Manifest> {
        self.newest(true)
    }

    /// The newest complete checkpoint. Torn ones (no manifest, or one that
    /// does not parse) are skipped.
    pub fn latest(&self) -> Option<Manifest> {
        self.newest(false)
    }

    fn newest(&self, committed: bool) -> Option<Manifest> {
        for (_, path) in self.epochs() {
            if committed && !path.join(COMMITTED).exists() {
                continue;
            }
            let Ok(bytes) = fs::read(path.join(MANIFEST)) else {
                continue;
            };
            match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => return Some(m),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable checkpoint")
                }
            }
        }
        None
    }

    /// A task's state as of `manifest` (empty when it had none).
    pub fn read_state(&self, manifest: &Manifest, key: &str) -> Result<Vec<RecordBatch>> {
        let Some(name) = manifest.states.get(key) else {
            return Ok(vec![]);
        };
        let file = File::open(self.epoch_dir(manifest.epoch).join(name))?;
        let reader = arrow::ipc::reader::FileReader::try_new(file, None)?;
        Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Where a dropped job's checkpoints are kept, for a later sink's
    /// `start_from = 'sink:<name>'`.
    pub fn dropped(data_dir: &Path, job: &str) -> Self {
        Self {
            dir: data_dir.join("checkpoints").join(".dropped").join(job),
        }
    }

    /// Moves the job's checkpoints to [`Self::dropped`] (DROP), replacing
    /// those of an earlier job of that name.
    pub fn park(&self, data_dir: &Path, job: &str) {
        let to = Self::dropped(data_dir, job);
        to.remove_all();
        if !self.dir.exists() {
            return;
        }
        let moved = to
            .dir
            .parent()
            .map(fs::create_dir_all)
            .transpose()
            .and_then(|_| fs::rename(&self.dir, &to.dir));
        if let Err(e) = moved {
            tracing::warn!(path = %self.dir.display(), error = %e, "could not keep a dropped job's checkpoints");
            self.remove_all();
        }
    }

    /// Removes every checkpoint of the job.
    pub fn remove_all(&self) {
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "could not remove checkpoints");
        }
    }
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
}

/// How long a checkpoint may take before it counts as failed (Flink's
/// default too).
pub const DEFAULT_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);

impl JobSettings {
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.checkpoint_interval_ms.map(Duration::from_millis)
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
    let digits = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let bad = || {
        SluiceError::invalid_parameter(format!(
            "invalid value for parameter \"streaming.checkpoint_interval\": \"{value}\"; \
             write a duration such as '10s', '500ms' or '2min', or 'off'"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" | "sec" | "second" | "seconds" => n,
        "min" | "minute" | "minutes" | "m" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(0.1..=86_400.0).contains(&secs) {
        return Err(SluiceError::invalid_parameter(format!(
            "streaming.checkpoint_interval = '{value}': use between 100ms and 24h, or 'off'"
        )));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
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

/// A job's recent checkpoints, newest last.
#[derive(Debug, Default)]
pub struct CheckpointHistory(Mutex<VecDeque<CheckpointStats>>);

impl CheckpointHistory {
    pub fn record(&self, stats: CheckpointStats) {
        let mut h = self.0.lock().expect("checkpoint history lock");
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
        self.0
            .lock()
            .expect("checkpoint history lock")
            .iter()
            .cloned()
            .collect()
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
    /// A stateful task (or sink lane) snapshotted: its file and size.
    State {
        epoch: u64,
        key: String,
        file: Option<(String, u64)>,
    },
    /// The task could not take part (the checkpoint fails, the job goes on).
    Failed { epoch: u64, error: String },
    /// A source lane ended (bounded input) at this position (None: its
    /// connector can't resume): it takes no more barriers.
    Ended { key: String, position: Option<String> },
    /// A sink lane's input ended: its state for the job's final checkpoint
    /// (its output since the last checkpoint is committed with it).
    Finished { key: String, state: Vec<RecordBatch> },
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
            parallelism: BTreeMap::new(),
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
        let store = CheckpointStore::new(dir.path(), "j");
        assert_eq!(store.settings(), None);
        let settings = JobSettings {
            checkpoint_interval_ms: Some(1500),
            restart_attempts: 2,
            checkpoint_timeout_ms: None,
        };
        store.save_settings(&settings).unwrap();
        assert_eq!(store.settings(), Some(settings));
        assert_eq!(
            store.settings().unwrap().checkpoint_interval(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_restart_attempts("3").unwrap(), 3);
        assert_eq!(parse_restart_attempts("'0'").unwrap(), 0);
        assert!(parse_restart_attempts("-1").is_err());
        assert!(parse_restart_attempts("many").is_err());
        assert!(parse_restart_attempts("1001").is_err());
    }

    #[test]
    fn torn_checkpoints_are_ignored_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "j");
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
        let latest = store.latest().unwrap();
        assert_eq!(latest.epoch, 3);
        assert_eq!(store.read_state(&latest, "op-1-0").unwrap(), vec![batch]);
        assert!(store.read_state(&latest, "op-2-0").unwrap().is_empty());
        // Epoch 1 is gone, 2 and 3 are kept.
        let epochs: Vec<u64> = store.epochs().into_iter().map(|(e, _)| e).collect();
        assert_eq!(epochs, vec![4, 3, 2]);
        // A manifest that does not parse is torn too.
        fs::write(store.epoch_dir(4).join(MANIFEST), b"{\"job\":").unwrap();
        assert_eq!(store.latest().unwrap().epoch, 3);
    }
}

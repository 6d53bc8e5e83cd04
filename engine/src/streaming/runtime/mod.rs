//! Running a dataflow: tasks, bounded channels, hash exchanges, watermarks.
//!
//! A plan becomes "lanes": streams of [`Message`]s. A source partition is a
//! lane; stateless operators map a lane in place, so a chain of them runs
//! fused in whichever task drives the lane. A keyed operator ends the lanes
//! below it (`keyed`): one exchange task per input lane hashes rows by
//! its input's keys into `P` bounded channels, and `P` operator tasks each
//! merge their lanes through an aligner (`align`: rows tagged with their
//! input, barriers aligned, watermarks per input and overall) and start a
//! new lane. A sink
//! drives each final lane in its own task. Every channel is bounded, so a
//! slow sink slows the sources and memory stays flat.
//!
//! All tasks of a job live in one `JoinSet`: the first failure marks the job
//! failed and aborts the rest; dropping the job aborts everything.
//!
//! Checkpoints (see [`crate::checkpoint`]): a coordinator task triggers an
//! epoch; each source lane records its position and sends `Barrier(epoch)`
//! down its lane; a keyed task holds back each input once its barrier came
//! until all inputs delivered it (alignment), then snapshots its operator;
//! a sink lane makes its output durable at the barrier. When every one of
//! them acknowledged, the coordinator writes the manifest.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::metrics::NodeMetrics;
use super::operators::ColumnarAggregate;
use super::operators::{
    JoinInput, KeyedOperator, OverAggregate, SessionAggregate, StreamingJoin, TopN, UpdatingAggregate,
    WindowAggregate, eval,
};
use super::plan::{Node, NodeKind};
use super::window::ticks_to_micros;
use crate::checkpoint::{Ack, CheckpointConfig, CheckpointStats, CheckpointStore, Manifest, Restore};
use crate::error::{Result, SluiceError};
use crate::sink::{CommitRequest, Committer, SinkWriter, SourceRange};
use crate::stream::{Message, StreamTable};

/// Messages per channel. With batches of a few thousand rows this bounds a
/// channel to some tens of thousands of rows.
const CHANNEL_CAPACITY: usize = 8;

mod align;
mod keyed;

use keyed::keyed;

type Lane = BoxStream<'static, Result<Message>>;
type Task = BoxFuture<'static, Result<()>>;

/// The state of a job as SHOW JOBS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    /// Every source ended and all output was written.
    Finished,
    Failed(String),
}

impl JobStatus {
    pub fn name(&self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Finished => "finished",
            JobStatus::Failed(_) => "failed",
        }
    }
}

/// A running job. Dropping it cancels every task and frees its state.
pub struct Job {
    pub plan: Arc<Node>,
    pub started: SystemTime,
    status: Arc<std::sync::Mutex<JobStatus>>,
    monitor: tokio::task::JoinHandle<()>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Starts `plan`, writing each output lane through a writer from
    /// `open_writer(lane, lanes)`.
    pub fn start(
        name: &str,
        plan: Node,
        mut open_writer: impl FnMut(usize, usize) -> Result<Box<dyn SinkWriter>>,
        checkpoints: Option<CheckpointConfig>,
        start_from: StartPositions,
    ) -> Result<Job> {
        let plan = Arc::new(plan);
        let mut tasks: Vec<Task> = Vec::new();
        let (trigger_tx, trigger) = tokio::sync::watch::channel(0u64);
        let (completed_tx, completed) = tokio::sync::watch::channel(0u64);
        let (acks, ack_rx) = mpsc::unbounded_channel();
        let mut wiring = Wiring {
            trigger,
            completed,
            acks,
            store: checkpoints.as_ref().map(|c| c.store.clone()),
            restore: checkpoints.as_ref().and_then(|c| c.restore.clone()),
            participants: vec![],
            parallelism: Default::default(),
            source_streams: Default::default(),
            resumed: Default::default(),
            start_from,
        };
        let lanes = build(&plan, &mut tasks, &mut wiring)?;
        let n = lanes.len();
        for (i, lane) in lanes.into_iter().enumerate() {
            let mut writer = open_writer(i, n)?;
            let key = format!("sink-{i}");
            if let Some(r) = &wiring.restore {
                // With fewer lanes than the checkpoint had, lane i takes
                // the state of old lanes i, i + n, ... too (a view's parts
                // are summed on read, so any lane may hold any rows).
                let mut state = vec![];
                for old in (i..r.manifest.sink_lanes().max(i + 1)).step_by(n) {
                    state.extend(r.state(&format!("sink-{old}"))?);
                }
                writer.restore(state)?;
            }
            wiring.participate(&key);
            tasks.push(drive_sink(lane, writer, wiring.task(key)).boxed());
        }
        let coordinator = match checkpoints {
            Some(config) => {
                if let Some(r) = &config.restore {
                    config.history.record(CheckpointStats {
                        epoch: r.manifest.epoch,
                        started_ms: r.manifest.started_ms,
                        duration_ms: Some(r.manifest.duration_ms),
                        bytes: r.manifest.bytes,
                        status: "restored",
                        detail: Some(describe_positions(&r.manifest)),
                    });
                }
                let coordinator = Coordinator {
                    job: name.to_string(),
                    config,
                    participants: std::mem::take(&mut wiring.participants),
                    parallelism: std::mem::take(&mut wiring.parallelism),
                    source_streams: std::mem::take(&mut wiring.source_streams),
                    resumed: std::mem::take(&mut wiring.resumed),
                    sink_lanes: n,
                };
                Some(tokio::spawn(coordinator.run(trigger_tx, completed_tx, ack_rx)))
            }
            None => None,
        };
        drop(wiring);
        let status = Arc::new(std::sync::Mutex::new(JobStatus::Running));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let job_status = status.clone();
        let job_name = name.to_string();
        let monitor = tokio::spawn(async move {
            // The coordinator stops with the job.
            let mut coordinator = coordinator.map(AbortOnDrop);
            let mut set = JoinSet::new();
            for t in tasks {
                set.spawn(t);
            }
            let mut result = JobStatus::Finished;
            while let Some(joined) = set.join_next().await {
                let failure = match joined {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) if e.is_panic() => Some(format!("a task panicked: {}", panic_message(e))),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(msg) = failure {
                    tracing::warn!(job = %job_name, error = %msg, "job failed");
                    result = JobStatus::Failed(msg);
                    set.abort_all();
                    break;
                }
            }
            // Every task finished: the job is done once its final checkpoint
            // (and the sink's commit of its last output) is.
            if result == JobStatus::Finished
                && let Some(c) = coordinator.as_mut()
            {
                let failure = match (&mut c.0).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) if e.is_panic() => Some(format!(
                        "the checkpoint coordinator panicked: {}",
                        panic_message(e)
                    )),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(msg) = failure {
                    tracing::warn!(job = %job_name, error = %msg, "job failed at its end");
                    result = JobStatus::Failed(msg);
                }
            }
            *job_status.lock().expect("job status poisoned") = result;
            let _ = done_tx.send(true);
        });
        Ok(Job {
            plan,
            started: SystemTime::now(),
            status,
            monitor,
            done,
        })
    }

    pub fn status(&self) -> JobStatus {
        self.status.lock().expect("job status poisoned").clone()
    }

    /// Flips to `true` when the job has finished or failed.
    pub fn done_receiver(&self) -> tokio::sync::watch::Receiver<bool> {
        self.done.clone()
    }

    /// Waits until the job has finished or failed.
    pub async fn wait(&self) -> JobStatus {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
        self.status()
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `build` hands each task for checkpoints.
struct Wiring {
    trigger: tokio::sync::watch::Receiver<u64>,
    /// The newest completed checkpoint.
    completed: tokio::sync::watch::Receiver<u64>,
    acks: mpsc::UnboundedSender<Ack>,
    /// None: the job does not checkpoint (a SUBSCRIBE's private job).
    store: Option<CheckpointStore>,
    restore: Option<Restore>,
    /// Tasks that acknowledge each checkpoint (by their keys).
    participants: Vec<String>,
    /// Parallelism per keyed node, recorded in manifests.
    parallelism: std::collections::BTreeMap<String, usize>,
    /// The stream each source lane reads (by its manifest key).
    source_streams: std::collections::BTreeMap<String, String>,
    /// The position each source lane resumes from (restored jobs).
    resumed: std::collections::BTreeMap<String, String>,
    /// Where sources start when there is no checkpoint to restore.
    start_from: StartPositions,
}

/// Source positions by (stream, partition), for a job that starts where
/// another one stopped (`start_from = 'sink:<name>'`).
pub type StartPositions = std::collections::BTreeMap<(String, usize), String>;

/// The positions of a checkpoint by (stream, partition).
pub fn start_positions(manifest: &Manifest) -> StartPositions {
    manifest
        .sources
        .iter()
        .filter_map(|(key, position)| {
            let stream = manifest.streams.get(key)?;
            let partition = key.rsplit_once('-')?.1.parse().ok()?;
            Some(((stream.clone(), partition), position.clone()))
        })
        .collect()
}

impl Wiring {
    fn task(&self, key: String) -> TaskCheckpoint {
        TaskCheckpoint {
            key,
            acks: self.acks.clone(),
            store: self.store.clone(),
            restored: self.restore.as_ref().map_or(0, |r| r.manifest.epoch),
            base: None,
        }
    }

    /// The task `key` acknowledges each checkpoint (when the job takes any).
    fn participate(&mut self, key: &str) {
        if self.store.is_some() {
            self.participants.push(key.to_string());
        }
    }
}

/// A stateful task's end of the checkpoint protocol.
struct TaskCheckpoint {
    key: String,
    acks: mpsc::UnboundedSender<Ack>,
    store: Option<CheckpointStore>,
    /// The checkpoint this run restored (0: none).
    restored: u64,
    /// This run's last full snapshot of the task's state (a keyed
    /// operator's or a sink lane's; epoch, file): what an incremental one
    /// applies to, while that checkpoint stands.
    base: Option<(u64, String)>,
}

impl TaskCheckpoint {
    /// A sink lane's input ended after it passed the barrier of checkpoint
    /// `after`: hands its last state to the next checkpoint.
    fn finish(&self, after: u64, state: Vec<RecordBatch>) {
        let _ = self.acks.send(Ack::Finished {
            key: self.key.clone(),
            after,
            state,
        });
    }

    /// A keyed task's inputs all ended and it passed on everything: it
    /// takes part in no more checkpoints.
    fn done(&self) {
        if self.store.is_some() {
            let _ = self.acks.send(Ack::Done {
                key: self.key.clone(),
            });
        }
    }

    /// Snapshots a keyed operator for `epoch`: only the groups changed
    /// since its last full snapshot when the operator can and that full
    /// snapshot's checkpoint completed (so a failed checkpoint never leaves
    /// a gap: the changes are cumulative), else in full.
    async fn save_operator(&mut self, epoch: u64, op: &mut dyn KeyedOperator) {
        if self.store.is_none() {
            return;
        }
        if let Some(base) = self.standing_base().await {
            match op.snapshot_changes() {
                Ok(Some(changes)) => {
                    self.write(epoch, Ok(changes), Some(base)).await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    self.write(epoch, Err(e.into()), None).await;
                    return;
                }
            }
        }
        self.base = None;
        if let Some(file) = self
            .write(epoch, op.snapshot().map_err(SluiceError::from), None)
            .await
        {
            self.base = Some((epoch, file));
        }
    }

    /// The last full snapshot, when its checkpoint completed (what an
    /// incremental one can apply to), as manifests name bases.
    async fn standing_base(&self) -> Option<String> {
        let store = self.store.clone()?;
        let (b, file) = self.base.clone()?;
        tokio::task::spawn_blocking(move || store.is_complete(b))
            .await
            .unwrap_or(false)
            .then(|| CheckpointStore::state_path(b, &file))
    }

    /// Snapshots a sink lane for `epoch` (its output made durable first):
    /// only what changed since its last full snapshot when the writer can
    /// and that snapshot's checkpoint completed, else in full. An error of
    /// the writer fails the job (its output could not be made durable).
    async fn save_sink(&mut self, epoch: u64, writer: &mut dyn SinkWriter) -> Result<()> {
        if let Some(base) = self.standing_base().await
            && let Some(changes) = writer.checkpoint_changes(epoch).await?
        {
            self.write(epoch, Ok(changes), Some(base)).await;
            return Ok(());
        }
        self.base = None;
        let state = writer.checkpoint(epoch).await?;
        if let Some(file) = self.write(epoch, Ok(state), None).await {
            self.base = Some((epoch, file));
        }
        Ok(())
    }

    /// Writes this task's state for `epoch` and acknowledges it; returns
    /// the file written. A failure fails the checkpoint, not the job.
    async fn write(
        &self,
        epoch: u64,
        state: Result<Vec<RecordBatch>>,
        base: Option<String>,
    ) -> Option<String> {
        let store = self.store.clone()?;
        let key = self.key.clone();
        let written = match state {
            Ok(batches) => tokio::task::spawn_blocking(move || store.write_state(epoch, &key, &batches))
                .await
                .unwrap_or_else(|e| Err(SluiceError::internal(format!("state writer: {e}")))),
            Err(e) => Err(e),
        };
        let (ack, file) = match written {
            Ok(file) => (
                Ack::State {
                    epoch,
                    key: self.key.clone(),
                    file: file.clone(),
                    // Incremental without changes: the base alone.
                    base,
                },
                file.map(|(name, _)| name),
            ),
            Err(e) => (
                Ack::Failed {
                    epoch,
                    key: self.key.clone(),
                    error: format!("{}: {e}", self.key),
                },
                None,
            ),
        };
        let _ = self.acks.send(ack);
        file
    }
}

/// Where each partition of a source resumes: its own position when the
/// checkpoint had as many partitions of it, else the connector splits the
/// checkpoint's positions anew (or refuses).
fn restored_positions(r: &Restore, node: &Node, table: &StreamTable) -> Result<Vec<Option<String>>> {
    let old: Vec<Option<String>> = (0..r.manifest.source_lanes(&node.id.to_string()))
        .map(|p| r.position(&format!("{}-{p}", node.id)).map(String::from))
        .collect();
    if old.is_empty() || old.len() == table.partitions {
        return Ok((0..table.partitions)
            .map(|p| old.get(p).cloned().flatten())
            .collect());
    }
    tracing::info!(
        stream = %table.name,
        checkpoint = r.manifest.epoch,
        from = old.len(),
        to = table.partitions,
        "resuming a source at another number of partitions"
    );
    table.rescale_positions(&old).map_err(|e| {
        SluiceError::new(
            e.kind(),
            format!(
                "checkpoint {} of job {}: stream {}: {e}",
                r.manifest.epoch, r.manifest.job, table.name
            ),
        )
    })
}

/// Source positions of a manifest, for SHOW CHECKPOINTS.
fn describe_positions(m: &Manifest) -> String {
    m.sources
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Triggers checkpoints at the interval and completes them.
struct Coordinator {
    job: String,
    config: CheckpointConfig,
    /// The keys of the tasks that acknowledge checkpoints.
    participants: Vec<String>,
    parallelism: std::collections::BTreeMap<String, usize>,
    source_streams: std::collections::BTreeMap<String, String>,
    /// Where each source lane of a restored job resumed (a checkpoint
    /// taken at another number of lanes split anew): what the first
    /// checkpoint's commit names as the start of its input.
    resumed: std::collections::BTreeMap<String, String>,
    sink_lanes: usize,
}

/// Waits between attempts to commit a completed checkpoint to a table log.
const COMMIT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Coordinator {
    /// Commits a completed checkpoint's sink output to the table log,
    /// retrying until it succeeds: the next checkpoint is not triggered
    /// before, so commits stay in epoch order and none is skipped (output
    /// keeps flowing into pending files meanwhile).
    async fn commit(&self, log: &Arc<dyn Committer>, manifest: &Manifest) {
        let sources: Vec<SourceRange> = manifest
            .sources
            .iter()
            .map(|(lane, to)| SourceRange {
                stream: self.source_streams.get(lane).cloned().unwrap_or_default(),
                lane: lane.clone(),
                from: manifest.sources_from.get(lane).cloned(),
                to: to.clone(),
            })
            .collect();
        let mut attempt = 1u32;
        loop {
            let store = self.config.store.clone();
            let m = manifest.clone();
            // The checkpoint's own lanes: a job restored with fewer lanes
            // still commits what the vanished ones handed to it.
            let lanes = self.sink_lanes.max(manifest.sink_lanes());
            let read = tokio::task::spawn_blocking(move || {
                (0..lanes)
                    .map(|i| store.read_state(&m, &format!("sink-{i}")))
                    .collect::<Result<Vec<_>>>()
            })
            .await
            .unwrap_or_else(|e| Err(SluiceError::internal(format!("reading sink state: {e}"))));
            let committed = match read {
                Ok(lane_states) => {
                    log.commit(CommitRequest {
                        epoch: Some(manifest.epoch),
                        lane_states,
                        sources: sources.clone(),
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            match committed {
                Ok(()) => {
                    let store = self.config.store.clone();
                    let epoch = manifest.epoch;
                    let marked = tokio::task::spawn_blocking(move || store.mark_committed(epoch)).await;
                    if matches!(marked, Ok(Ok(()))) {
                        tracing::info!(job = %self.job, epoch, "the checkpoint's output is committed");
                    } else {
                        tracing::warn!(job = %self.job, epoch, "could not mark the checkpoint committed");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %self.job, epoch = manifest.epoch, attempt, error = %e,
                        "committing the checkpoint's output failed; retrying");
                    self.config.history.record(CheckpointStats {
                        epoch: manifest.epoch,
                        started_ms: manifest.started_ms,
                        duration_ms: Some(manifest.duration_ms),
                        bytes: manifest.bytes,
                        status: "committing",
                        detail: Some(format!("attempt {attempt} to commit the output failed: {e}")),
                    });
                    attempt += 1;
                    tokio::time::sleep(
                        COMMIT_RETRY.min(std::time::Duration::from_millis(100 << attempt.min(4))),
                    )
                    .await;
                }
            }
        }
    }

    /// Triggers a checkpoint every interval while any source lane runs.
    /// Lanes that ended take part no more: a later checkpoint records an
    /// ended source lane at its final position and takes a finished sink
    /// lane's last state (so a job that reads a bounded and an unbounded
    /// stream keeps checkpointing after the bounded one ends). Once every
    /// sink lane has finished, takes the job's final checkpoint. Returns
    /// when that is done (or the job's tasks are gone); an error when the
    /// final checkpoint could not be taken.
    async fn run(
        self,
        trigger: tokio::sync::watch::Sender<u64>,
        completed: tokio::sync::watch::Sender<u64>,
        mut acks: mpsc::UnboundedReceiver<Ack>,
    ) -> Result<()> {
        let mut epoch = self.config.restore.as_ref().map_or(0, |r| r.manifest.epoch);
        // A restored job's first commit covers its input from where each
        // lane resumed (positions split anew when the lanes changed).
        let mut previous_sources = self.resumed.clone();
        if let (Some(log), Some(r)) = (&self.config.committer, &self.config.restore)
            && log.recommits()
        {
            // The crash may have come between the manifest and the commit:
            // commit the restored checkpoint again (skipped when it is in
            // the log already).
            self.commit(log, &r.manifest).await;
        }
        let mut ending = Ending::default();
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            if ending.sinks.len() == self.sink_lanes {
                return self.final_checkpoint(epoch + 1, &previous_sources, ending).await;
            }
            // Barriers enter through the source lanes: none left, none to
            // take (the final checkpoint follows when the sinks finish).
            let sources_run = ending.sources.len() < self.source_streams.len();
            tokio::select! {
                _ = ticker.tick(), if sources_run => {}
                ack = acks.recv() => {
                    let Some(ack) = ack else {
                        return Ok(());
                    };
                    // Between checkpoints only the ends count; other acks
                    // belong to an abandoned checkpoint.
                    ending.take(ack);
                    continue;
                }
            }
            epoch += 1;
            let (started, mut stats, mut manifest) = self.begin(epoch, None, &previous_sources);
            if trigger.send(epoch).is_err() {
                return Ok(());
            }
            let mut pending: std::collections::BTreeSet<&str> = self
                .participants
                .iter()
                .map(String::as_str)
                .filter(|k| !ending.ended(k))
                .collect();
            let mut failure: Option<String> = None;
            let deadline = tokio::time::Instant::now() + self.config.timeout;
            while !pending.is_empty() {
                let ack = match tokio::time::timeout_at(deadline, acks.recv()).await {
                    Ok(Some(ack)) => ack,
                    Ok(None) => return Ok(()),
                    Err(_) => {
                        // Late acknowledgements of this epoch are ignored;
                        // the next checkpoint is triggered as usual.
                        let waiting: Vec<&str> = pending.iter().take(4).copied().collect();
                        failure = Some(format!(
                            "timed out after {} ms waiting for {} of {} participants ({}{})",
                            self.config.timeout.as_millis(),
                            pending.len(),
                            self.participants.len(),
                            waiting.join(", "),
                            if pending.len() > waiting.len() {
                                ", ..."
                            } else {
                                ""
                            }
                        ));
                        break;
                    }
                };
                match ack {
                    Ack::Ended { .. } | Ack::Finished { .. } | Ack::Done { .. } => {
                        // The lane or task takes no more barriers: what it
                        // ended with stands in for its part (below).
                        let key = ending.take(ack);
                        pending.remove(key.as_str());
                    }
                    Ack::Source { epoch: e, .. }
                    | Ack::State { epoch: e, .. }
                    | Ack::Failed { epoch: e, .. }
                        if e != epoch =>
                    {
                        continue;
                    }
                    Ack::Source { key, position, .. } => {
                        pending.remove(key.as_str());
                        manifest.sources.insert(key, position);
                    }
                    Ack::State { key, file, base, .. } => {
                        pending.remove(key.as_str());
                        if let Some(base) = base {
                            manifest.bases.insert(key.clone(), base);
                        }
                        if let Some((name, bytes)) = file {
                            manifest.bytes += bytes;
                            manifest.states.insert(key, name);
                        }
                    }
                    Ack::Failed { key, error, .. } => {
                        pending.remove(key.as_str());
                        failure.get_or_insert(error);
                    }
                }
            }
            // Source lanes that ended before this barrier: at their end.
            for (key, position) in &ending.sources {
                if failure.is_some() || manifest.sources.contains_key(key) {
                    continue;
                }
                match position {
                    Some(p) => {
                        manifest.sources.insert(key.clone(), p.clone());
                    }
                    None => {
                        failure = Some(format!(
                            "source lane {key} ended and can't record a position to resume from"
                        ))
                    }
                }
            }
            if failure.is_none()
                && let Err(e) = self.write_finished(epoch, &mut ending, &mut manifest).await
            {
                failure = Some(format!("writing the state of finished sink lanes: {e}"));
            }
            manifest.duration_ms = started.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0);
            stats.duration_ms = Some(manifest.duration_ms);
            stats.bytes = manifest.bytes;
            if failure.is_none()
                && let Err(e) = self.write_manifest(&manifest).await
            {
                failure = Some(format!("writing the manifest: {e}"));
            }
            if failure.is_none()
                && let Some(log) = &self.config.committer
            {
                self.commit(log, &manifest).await;
            }
            match failure {
                None => {
                    ending.landed(epoch);
                    previous_sources = manifest.sources.clone();
                    stats.status = "completed";
                    stats.detail = Some(describe_positions(&manifest));
                    let _ = completed.send(epoch);
                }
                Some(e) => {
                    tracing::warn!(job = %self.job, epoch, error = %e, "checkpoint failed");
                    stats.status = "failed";
                    stats.detail = Some(e);
                }
            }
            self.config.history.record(stats);
        }
    }

    /// Writes the last state of the sink lanes that finished before
    /// checkpoint `epoch`'s barrier into it. With a committer, each such
    /// state goes into one completed checkpoint only (it is output to
    /// commit, and committing it again would land it twice); without one
    /// (a view's rows) into every later checkpoint, which a restore needs.
    async fn write_finished(&self, epoch: u64, ending: &mut Ending, manifest: &mut Manifest) -> Result<()> {
        let mut states = ending.states_for(epoch, self.config.committer.is_some());
        // A state already in a completed checkpoint is named, not copied.
        states.retain(
            |(key, _)| match ending.sinks.get(key).and_then(FinishedLane::kept) {
                Some(path) => {
                    manifest.bases.insert(key.clone(), path);
                    false
                }
                None => true,
            },
        );
        if states.is_empty() {
            return Ok(());
        }
        let store = self.config.store.clone();
        let files = tokio::task::spawn_blocking(move || {
            let mut files = vec![];
            for (key, state) in states {
                if let Some(file) = store.write_state(epoch, &key, &state)? {
                    files.push((key, file));
                }
            }
            Ok::<_, SluiceError>(files)
        })
        .await
        .unwrap_or_else(|e| Err(SluiceError::internal(format!("state writer: {e}"))))?;
        for (key, (name, bytes)) in files {
            manifest.bytes += bytes;
            if let Some(lane) = ending.sinks.get_mut(&key) {
                lane.written = Some((epoch, CheckpointStore::state_path(epoch, &name)));
            }
            manifest.states.insert(key, name);
        }
        Ok(())
    }

    /// Starts checkpoint `epoch`: when, its SHOW CHECKPOINTS row (recorded
    /// as in progress) and its manifest so far.
    fn begin(
        &self,
        epoch: u64,
        detail: Option<String>,
        previous_sources: &std::collections::BTreeMap<String, String>,
    ) -> (SystemTime, CheckpointStats, Manifest) {
        let started = SystemTime::now();
        let started_ms = started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let stats = CheckpointStats {
            epoch,
            started_ms,
            duration_ms: None,
            bytes: 0,
            status: "in progress",
            detail,
        };
        self.config.history.record(stats.clone());
        let manifest = Manifest {
            job: self.job.clone(),
            epoch,
            started_ms,
            duration_ms: 0,
            bytes: 0,
            sources: Default::default(),
            sources_from: previous_sources.clone(),
            streams: self.source_streams.clone(),
            states: Default::default(),
            bases: Default::default(),
            parallelism: self.parallelism.clone(),
            routing: Some(crate::streaming::keygroups::routing().to_string()),
        };
        (started, stats, manifest)
    }

    async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let store = self.config.store.clone();
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || store.commit(&m))
            .await
            .unwrap_or_else(|e| Err(SluiceError::internal(format!("checkpoint writer: {e}"))))
    }

    /// Every input ended and every sink lane handed over its last output:
    /// one more checkpoint with the sources' final positions, committed to
    /// the sink like any other. A restart after it resumes at the end of
    /// the input and lands nothing again.
    async fn final_checkpoint(
        &self,
        epoch: u64,
        previous_sources: &std::collections::BTreeMap<String, String>,
        mut ending: Ending,
    ) -> Result<()> {
        let (started, mut stats, mut manifest) =
            self.begin(epoch, Some("final: the input ended".into()), previous_sources);
        let mut sources = std::collections::BTreeMap::new();
        let mut unpositioned = vec![];
        for (key, position) in &ending.sources {
            match position {
                Some(p) => {
                    sources.insert(key.clone(), p.clone());
                }
                None => unpositioned.push(key.clone()),
            }
        }
        if !unpositioned.is_empty() {
            // Nothing to resume from: the output is committed all the same
            // (not lost), without a checkpoint.
            let reason = format!(
                "no final checkpoint: source lanes {} can't record a position",
                unpositioned.join(", ")
            );
            if let Some(log) = &self.config.committer {
                let mut lane_states = vec![vec![]; self.sink_lanes];
                for (key, state) in ending.states_for(epoch, true) {
                    if let Some(i) = key.strip_prefix("sink-").and_then(|i| i.parse::<usize>().ok())
                        && i < lane_states.len()
                    {
                        lane_states[i] = state;
                    }
                }
                log.commit(CommitRequest {
                    epoch: None,
                    lane_states,
                    sources: vec![],
                })
                .await?;
            }
            stats.status = "failed";
            stats.detail = Some(reason);
            self.config.history.record(stats);
            return Ok(());
        }
        manifest.sources = sources;
        let result = match self.write_finished(epoch, &mut ending, &mut manifest).await {
            Ok(()) => {
                manifest.duration_ms = started.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0);
                self.write_manifest(&manifest).await
            }
            Err(e) => Err(e),
        };
        stats.duration_ms = Some(manifest.duration_ms);
        stats.bytes = manifest.bytes;
        match result {
            Ok(()) => {
                if let Some(log) = &self.config.committer {
                    self.commit(log, &manifest).await;
                }
                stats.status = "completed";
                stats.detail = Some(format!("final: {}", describe_positions(&manifest)));
                self.config.history.record(stats);
                Ok(())
            }
            Err(e) => {
                stats.status = "failed";
                stats.detail = Some(format!("final: {e}"));
                self.config.history.record(stats);
                Err(SluiceError::new(
                    crate::error::ErrorKind::StorageUnavailable,
                    format!("the final checkpoint failed (its output is not committed): {e}"),
                ))
            }
        }
    }
}

/// What the coordinator has heard of lanes and tasks that ended: ended
/// source lanes (final positions), finished sink lanes (their last state)
/// and keyed tasks whose inputs all ended.
#[derive(Default)]
struct Ending {
    sources: std::collections::BTreeMap<String, Option<String>>,
    sinks: std::collections::BTreeMap<String, FinishedLane>,
    tasks: std::collections::BTreeSet<String>,
}

/// A sink lane whose input ended.
struct FinishedLane {
    /// The last checkpoint whose barrier it passed.
    after: u64,
    state: Vec<RecordBatch>,
    /// The completed checkpoint that took its state, if one did.
    landed: Option<u64>,
    /// The last checkpoint that wrote its state, and the file's path.
    written: Option<(u64, String)>,
}

impl FinishedLane {
    /// The state's file in a completed checkpoint, which later ones name
    /// as the lane's base instead of writing it again.
    fn kept(&self) -> Option<String> {
        match (&self.written, self.landed) {
            (Some((w, path)), Some(l)) if *w == l => Some(path.clone()),
            _ => None,
        }
    }
}

impl Ending {
    /// Takes an end acknowledgement (others are ignored); returns the key
    /// of the lane or task that ended.
    fn take(&mut self, ack: Ack) -> String {
        match ack {
            Ack::Ended { key, position } => {
                self.sources.insert(key.clone(), position);
                key
            }
            Ack::Finished { key, after, state } => {
                self.sinks.insert(
                    key.clone(),
                    FinishedLane {
                        after,
                        state,
                        landed: None,
                        written: None,
                    },
                );
                key
            }
            Ack::Done { key } => {
                self.tasks.insert(key.clone());
                key
            }
            Ack::Source { key, .. } | Ack::State { key, .. } | Ack::Failed { key, .. } => key,
        }
    }

    fn ended(&self, key: &str) -> bool {
        self.sources.contains_key(key) || self.sinks.contains_key(key) || self.tasks.contains(key)
    }

    /// The states of finished sink lanes that go into checkpoint `epoch`:
    /// of lanes that did not pass its barrier, and (`once`) not in a
    /// completed checkpoint yet.
    fn states_for(&self, epoch: u64, once: bool) -> Vec<(String, Vec<RecordBatch>)> {
        self.sinks
            .iter()
            .filter(|(_, l)| l.after < epoch && !(once && l.landed.is_some()))
            .map(|(k, l)| (k.clone(), l.state.clone()))
            .collect()
    }

    /// Checkpoint `epoch` completed: it took the states of the lanes that
    /// finished before its barrier.
    fn landed(&mut self, epoch: u64) {
        for l in self.sinks.values_mut() {
            if l.after < epoch && l.landed.is_none() {
                l.landed = Some(epoch);
            }
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    crate::compute::panic_text(&*e.into_panic())
}

async fn drive_sink(mut lane: Lane, mut writer: Box<dyn SinkWriter>, mut ck: TaskCheckpoint) -> Result<()> {
    let mut watermark = i64::MIN;
    // The last checkpoint whose barrier this lane passed.
    let mut passed = ck.restored;
    loop {
        // When the input goes quiet, still give the writer its progress
        // step now and then, so that time-based file rolling happens.
        let msg = match tokio::time::timeout(SOURCE_TICK * 2, lane.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                writer.on_watermark(watermark).await?;
                continue;
            }
        };
        match msg? {
            Message::Batch(b) => writer.write(b).await?,
            Message::Watermark(w) => {
                watermark = watermark.max(w);
                writer.on_watermark(w).await?
            }
            Message::Progress => writer.on_watermark(watermark).await?,
            Message::Barrier(epoch) => {
                passed = epoch;
                // Output before the barrier must be durable before the
                // checkpoint counts; a sink that can't is a failed job.
                ck.save_sink(epoch, writer.as_mut()).await?;
            }
            Message::Idle => {}
            Message::End => break,
        }
    }
    if ck.store.is_none() {
        return writer.finish().await;
    }
    // The output since the last barrier goes to the next checkpoint to
    // complete, which records the sources of this lane at their end (so a
    // two-phase-commit sink commits it with the final source positions, and
    // a restart after that lands nothing twice): the next checkpoint after
    // `passed`, or the job's final one when every lane has ended.
    let state = writer.checkpoint(passed + 1).await?;
    writer.finish().await?;
    ck.finish(passed, state);
    Ok(())
}

/// The lanes a node produces; tasks it needs go to `tasks`.
fn build(node: &Node, tasks: &mut Vec<Task>, wiring: &mut Wiring) -> Result<Vec<Lane>> {
    match &node.kind {
        NodeKind::Source { table } => {
            let mut resume: Vec<Option<String>> = match &wiring.restore {
                Some(r) => restored_positions(r, node, table)?,
                None => (0..table.partitions)
                    .map(|p| wiring.start_from.get(&(table.name.clone(), p)).cloned())
                    .collect(),
            };
            Ok((0..table.partitions)
                .map(|p| {
                    let key = format!("{}-{p}", node.id);
                    wiring.participate(&key);
                    wiring.source_streams.insert(key.clone(), table.name.clone());
                    if wiring.restore.is_some()
                        && let Some(position) = &resume[p]
                    {
                        wiring.resumed.insert(key.clone(), position.clone());
                    }
                    let ck = SourceCheckpoint {
                        resume: resume[p].take(),
                        trigger: wiring.store.is_some().then(|| wiring.trigger.clone()),
                        completed: wiring.store.is_some().then(|| wiring.completed.clone()),
                        acks: wiring.acks.clone(),
                        key,
                    };
                    source_lane(table.clone(), p, node.metrics.clone(), ck)
                })
                .collect())
        }
        NodeKind::Union => {
            let mut lanes = Vec::new();
            for input in &node.inputs {
                let schema = node.schema.clone();
                let updating = node.updating;
                for lane in build(input, tasks, wiring)? {
                    let schema = schema.clone();
                    lanes.push(
                        lane.map(move |m| match m {
                            Ok(Message::Batch(b)) => relabel(b, &schema, updating).map(Message::Batch),
                            other => other,
                        })
                        .boxed(),
                    );
                }
            }
            Ok(lanes)
        }
        NodeKind::Window { .. } | NodeKind::Filter { .. } | NodeKind::Project { .. } => {
            let input = &node.inputs[0];
            let lanes = build(input, tasks, wiring)?;
            let step = Arc::new(Step::new(node)?);
            Ok(lanes
                .into_iter()
                .enumerate()
                .map(|(i, lane)| {
                    let step = step.clone();
                    lane.filter_map(move |m| {
                        let out = match m {
                            Ok(Message::Batch(b)) => match step.apply(b) {
                                Ok(b) if b.num_rows() == 0 => None,
                                Ok(b) => Some(Ok(Message::Batch(b))),
                                Err(e) => Some(Err(e)),
                            },
                            Ok(Message::Watermark(w)) => {
                                step.metrics.set_watermark(i, w);
                                Some(Ok(Message::Watermark(w)))
                            }
                            other => Some(other),
                        };
                        futures::future::ready(out)
                    })
                    .boxed()
                })
                .collect())
        }
        NodeKind::WindowAggregate { keys, aggs, window } => {
            let input = &node.inputs[0];
            let mut ops: Vec<Box<dyn KeyedOperator>> = Vec::new();
            for _ in 0..node.parallelism {
                ops.push(Box::new(WindowAggregate::new(
                    keys.clone(),
                    &input.schema,
                    aggs.clone(),
                    *window,
                    node.schema.clone(),
                    node.metrics.clone(),
                )?));
            }
            keyed(node, vec![keys.clone()], ops, tasks, wiring)
        }
        NodeKind::SessionAggregate { keys, layout, aggs } => {
            let input = &node.inputs[0];
            let mut ops: Vec<Box<dyn KeyedOperator>> = Vec::new();
            for _ in 0..node.parallelism {
                ops.push(Box::new(SessionAggregate::new(
                    keys.clone(),
                    &input.schema,
                    layout.clone(),
                    aggs.clone(),
                    node.schema.clone(),
                    node.metrics.clone(),
                )?));
            }
            keyed(node, vec![keys.clone()], ops, tasks, wiring)
        }
        NodeKind::Aggregate { keys, aggs } => {
            let input = &node.inputs[0];
            let mut ops: Vec<Box<dyn KeyedOperator>> = Vec::new();
            for _ in 0..node.parallelism {
                // Column-wise state where every aggregate has that form and
                // nothing is retracted; boxed accumulators otherwise.
                let columnar = if input.updating {
                    None
                } else {
                    ColumnarAggregate::try_new(
                        keys.clone(),
                        &input.schema,
                        aggs.clone(),
                        node.schema.clone(),
                    )?
                };
                match columnar {
                    Some(op) => ops.push(Box::new(op)),
                    None => ops.push(Box::new(UpdatingAggregate::new(
                        keys.clone(),
                        &input.schema,
                        input.updating,
                        aggs.clone(),
                        node.schema.clone(),
                    )?)),
                }
            }
            keyed(node, vec![keys.clone()], ops, tasks, wiring)
        }
        NodeKind::Join {
            kind,
            keys,
            filter,
            time,
            expire,
            ttl,
        } => {
            let mut ops: Vec<Box<dyn KeyedOperator>> = Vec::new();
            let input = |i: usize| JoinInput {
                schema: node.inputs[i].schema.clone(),
                keys: keys[i].clone(),
                updating: node.inputs[i].updating,
                time: time[i].clone(),
                expire: expire[i].clone(),
            };
            for _ in 0..node.parallelism {
                ops.push(Box::new(
                    StreamingJoin::new(*kind, input(0), input(1), filter.clone(), node.schema.clone())?
                        .with_ttl(*ttl),
                ));
            }
            keyed(node, keys.to_vec(), ops, tasks, wiring)
        }
        NodeKind::Over {
            partition,
            time,
            aggs,
            frame,
        } => {
            let input = &node.inputs[0];
            let mut ops: Vec<Box<dyn KeyedOperator>> = Vec::new();
            for _ in 0..node.parallelism {
                ops.push(Box::new(OverAggregate::new(
                    partition.clone(),
                    *time,
                    aggs.clone(),
                    *frame,
                    input.schema.clone(),
                    node.schema.clone(),
                )?));
            }
            keyed(node, vec![partition.clone()], ops, tasks, wiring)
        }
        NodeKind::TopN {
            partition,
            order,
            limit,
            function,
        } => {
            let input = &node.inputs[0];
            let mut ops: Vec<Box<dyn KeyedOperator>> = Vec::new();
            for _ in 0..node.parallelism {
                ops.push(Box::new(
                    TopN::new(
                        partition.clone(),
                        order.clone(),
                        *limit,
                        input.schema.clone(),
                        input.updating,
                        node.schema.clone(),
                    )?
                    .with_function(*function),
                ));
            }
            keyed(node, vec![partition.clone()], ops, tasks, wiring)
        }
    }
}

/// Gives a batch the node's schema (UNION ALL inputs may name columns
/// differently).
fn relabel(b: RecordBatch, schema: &SchemaRef, updating: bool) -> Result<RecordBatch> {
    let target = if updating {
        super::operators::with_op_column(schema)
    } else {
        schema.clone()
    };
    if b.schema().fields().len() == target.fields().len() && !updating {
        return Ok(super::operators::batch_with_schema(
            &target,
            b.columns().to_vec(),
        )?);
    }
    let mut cols = b.columns().to_vec();
    if updating && cols.len() + 1 == target.fields().len() {
        // An append-only input into an updating union: all inserts.
        cols.push(Arc::new(arrow::array::Int8Array::from(vec![1i8; b.num_rows()])));
    }
    Ok(super::operators::batch_with_schema(&target, cols)?)
}

/// A fused stateless step.
struct Step {
    kind: StepKind,
    updating: bool,
    metrics: Arc<NodeMetrics>,
}

enum StepKind {
    Window(super::window::WindowSpec, SchemaRef),
    Filter(Arc<dyn datafusion::physical_expr::PhysicalExpr>),
    Project(Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>, SchemaRef),
}

impl Step {
    fn new(node: &Node) -> Result<Self> {
        let kind = match &node.kind {
            NodeKind::Window { spec } => StepKind::Window(spec.clone(), node.schema.clone()),
            NodeKind::Filter { predicate } => StepKind::Filter(predicate.clone()),
            NodeKind::Project { exprs } => StepKind::Project(exprs.clone(), node.schema.clone()),
            _ => return Err(SluiceError::internal("not a stateless operator")),
        };
        Ok(Self {
            kind,
            updating: node.inputs[0].updating,
            metrics: node.metrics.clone(),
        })
    }

    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        self.metrics.add_in(batch.num_rows());
        // An updating input's op column rides along untouched.
        let (rows, op) = if self.updating {
            let n = batch.num_columns();
            (
                batch.project(&(0..n - 1).collect::<Vec<_>>())?,
                Some(batch.column(n - 1).clone()),
            )
        } else {
            (batch, None)
        };
        let out = match &self.kind {
            StepKind::Window(spec, schema) => spec.assign(&rows, schema)?,
            StepKind::Filter(pred) => {
                let mask = eval(pred, &rows)?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .ok_or_else(|| SluiceError::internal("filter predicate is not boolean"))?;
                let mask = super::operators::null_as_false(mask);
                let with_op = match op {
                    Some(op) => {
                        let mut cols = rows.columns().to_vec();
                        cols.push(op);
                        let schema = super::operators::with_op_column(&rows.schema());
                        RecordBatch::try_new(schema, cols)?
                    }
                    None => rows,
                };
                let out = filter_record_batch(&with_op, &mask)?;
                self.metrics.add_out(out.num_rows());
                return Ok(out);
            }
            StepKind::Project(exprs, schema) => {
                let cols = exprs
                    .iter()
                    .map(|e| eval(e, &rows))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                if cols.is_empty() {
                    // count(*) reads no column: the batch keeps its row count.
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        vec![],
                        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
                    )?
                } else {
                    super::operators::batch_with_schema(schema, cols)?
                }
            }
        };
        let out = match op {
            Some(op) => {
                let mut cols = out.columns().to_vec();
                cols.push(op);
                RecordBatch::try_new(super::operators::with_op_column(&out.schema()), cols)?
            }
            None => out,
        };
        self.metrics.add_out(out.num_rows());
        Ok(out)
    }
}

/// One source partition as a lane: batches, each followed by the watermark
/// when it advanced; at the end of a bounded source, the watermark jumps to
/// the end of time (closing every window) and `End` follows.
fn source_lane(
    table: Arc<StreamTable>,
    partition: usize,
    metrics: Arc<NodeMetrics>,
    ck: SourceCheckpoint,
) -> Lane {
    struct State {
        /// When the lane next checks for idle splits (a deadline, so that
        /// frequent checkpoint barriers do not postpone it forever).
        tick: tokio::time::Instant,
        /// Checkpoint triggers (None: the job does not checkpoint).
        trigger: Option<tokio::sync::watch::Receiver<u64>>,
        /// Completed checkpoints, and the positions recorded for those in
        /// flight (by epoch).
        completed: Option<tokio::sync::watch::Receiver<u64>>,
        recorded: std::collections::VecDeque<(u64, String)>,
        /// This lane's name in manifests, and where it acknowledges.
        key: String,
        acks: mpsc::UnboundedSender<Ack>,
        source: Option<Box<dyn crate::stream::Source>>,
        pending: std::collections::VecDeque<Message>,
        watermark: i64,
        /// Per split: the watermark its rows allow, and when it last had rows.
        splits: Vec<(Option<i64>, Instant)>,
        /// Whether downstream was told this lane is idle.
        idle_sent: bool,
        done: bool,
    }
    let opened = table.open(partition, ck.resume.as_deref());
    let SourceCheckpoint {
        key,
        trigger,
        completed,
        acks,
        ..
    } = ck;
    let init = match opened {
        Ok(s) => Ok(State {
            tick: tokio::time::Instant::now() + SOURCE_TICK,
            trigger,
            completed,
            recorded: Default::default(),
            key,
            acks,
            splits: vec![(None, Instant::now()); s.splits().max(1)],
            idle_sent: false,
            source: Some(s),
            pending: Default::default(),
            watermark: i64::MIN,
            done: false,
        }),
        Err(e) => Err(e),
    };
    futures::stream::unfold(Some(init), move |state| {
        let table = table.clone();
        let metrics = metrics.clone();
        async move {
            let mut state = match state? {
                Ok(s) => s,
                Err(e) => return Some((Err(e), None)),
            };
            loop {
                if let Some(m) = state.pending.pop_front() {
                    return Some((Ok(m), Some(Ok(state))));
                }
                if state.done {
                    return None;
                }
                let source = state.source.as_mut().expect("open source");
                // Wake up now and then: a split that went idle must stop
                // holding the watermark back even when no row arrives, and a
                // lane whose splits are all idle tells downstream so
                // (sources keep `next_batch` cancel-safe).
                let trigger = &mut state.trigger;
                let completed = &mut state.completed;
                let timed = tokio::select! {
                    biased;
                    changed = async {
                        match trigger.as_mut() {
                            Some(t) => t.changed().await.map(|_| *t.borrow_and_update()),
                            None => futures::future::pending().await,
                        }
                    } => {
                        match changed {
                            Ok(epoch) => {
                                // Everything the source returned is ahead of
                                // the barrier (emitted or queued), so its
                                // position covers exactly the rows before it.
                                let ack = match source.position() {
                                    Some(position) => {
                                        state.recorded.push_back((epoch, position.clone()));
                                        Ack::Source {
                                            epoch,
                                            key: state.key.clone(),
                                            position,
                                        }
                                    }
                                    None => Ack::Failed {
                                        epoch,
                                        key: state.key.clone(),
                                        error: format!(
                                            "stream {}: its connector can't resume from a position, so it is not checkpointed",
                                            table.name
                                        ),
                                    },
                                };
                                let _ = state.acks.send(ack);
                                state.pending.push_back(Message::Barrier(epoch));
                            }
                            // The coordinator is gone: no more checkpoints.
                            Err(_) => state.trigger = None,
                        }
                        continue;
                    }
                    done = async {
                        match completed.as_mut() {
                            Some(c) => c.changed().await.map(|_| *c.borrow_and_update()),
                            None => futures::future::pending().await,
                        }
                    } => {
                        match done {
                            Ok(epoch) => {
                                while state.recorded.front().is_some_and(|(e, _)| *e < epoch) {
                                    state.recorded.pop_front();
                                }
                                if let Some((e, position)) = state.recorded.front()
                                    && *e == epoch
                                {
                                    source.checkpoint_completed(position);
                                    state.recorded.pop_front();
                                }
                            }
                            Err(_) => state.completed = None,
                        }
                        continue;
                    }
                    next = tokio::time::timeout_at(state.tick, source.next_batch()) => next,
                };
                let next = match timed {
                    Ok(next) => next,
                    Err(_) => {
                        state.tick = tokio::time::Instant::now() + SOURCE_TICK;
                        metrics.set_detail(partition, source.status());
                        let idle = idle_splits(&state.splits, &**source);
                        if idle.iter().all(|i| *i) {
                            if !state.idle_sent {
                                state.idle_sent = true;
                                state.pending.push_back(Message::Idle);
                            }
                        } else if let Some(wm) = split_watermark(&state.splits, &idle)
                            && wm > state.watermark
                        {
                            state.watermark = wm;
                            metrics.set_watermark(partition, wm);
                            state.pending.push_back(Message::Watermark(wm));
                        }
                        continue;
                    }
                };
                metrics.add_bad(source.take_bad_records());
                metrics.set_detail(partition, source.status());
                match next {
                    Ok(Some(batch)) => {
                        state.idle_sent = false;
                        metrics.add_out(batch.num_rows());
                        let split = source.last_split().min(state.splits.len() - 1);
                        if let Some(spec) = &table.watermark {
                            match max_time(&batch, spec.column) {
                                Ok(Some(t)) => {
                                    let wm = ticks_to_micros(t, spec.unit).saturating_sub(spec.delay_us);
                                    let s = &mut state.splits[split];
                                    s.0 = Some(s.0.map_or(wm, |w| w.max(wm)));
                                    s.1 = Instant::now();
                                }
                                Ok(None) => {}
                                Err(e) => return Some((Err(e), None)),
                            }
                        }
                        let wm = split_watermark(&state.splits, &idle_splits(&state.splits, &**source));
                        state.pending.push_back(Message::Batch(batch));
                        if table.watermark.is_none() {
                            // No event time: every batch is a progress step,
                            // so updating results downstream are emitted as
                            // rows arrive.
                            state.pending.push_back(Message::Progress);
                        }
                        if let Some(wm) = wm
                            && wm > state.watermark
                        {
                            state.watermark = wm;
                            metrics.set_watermark(partition, wm);
                            state.pending.push_back(Message::Watermark(wm));
                        }
                    }
                    Ok(None) => {
                        if state.trigger.is_some() {
                            let _ = state.acks.send(Ack::Ended {
                                key: state.key.clone(),
                                position: source.position(),
                            });
                        }
                        state.done = true;
                        state.idle_sent = false;
                        state.source = None;
                        metrics.set_watermark(partition, i64::MAX);
                        state.pending.push_back(Message::Watermark(i64::MAX));
                        state.pending.push_back(Message::End);
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
        }
    })
    .boxed()
}

/// A source lane's end of the checkpoint protocol.
struct SourceCheckpoint {
    /// `<node>-<partition>`: how the manifest names this lane's position.
    key: String,
    resume: Option<String>,
    trigger: Option<tokio::sync::watch::Receiver<u64>>,
    /// Completed checkpoints (None: the job does not checkpoint).
    completed: Option<tokio::sync::watch::Receiver<u64>>,
    acks: mpsc::UnboundedSender<Ack>,
}

/// How often a keyed task refreshes its state figures for SHOW JOBS when
/// the watermark does not move.
const STATE_METRICS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a waiting source lane wakes up to check for idle splits.
const SOURCE_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// A caught-up split with no rows for this long no longer holds the
/// watermark back.
const SPLIT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Per split: idle, i.e. no rows for [`SPLIT_IDLE_TIMEOUT`] and nothing
/// waiting to be read (the source says it is caught up). A split that is
/// only slow is not idle: its rows are still to come, and skipping it
/// would close windows before they arrive.
fn idle_splits(splits: &[(Option<i64>, Instant)], source: &dyn crate::stream::Source) -> Vec<bool> {
    splits
        .iter()
        .enumerate()
        .map(|(i, (_, seen))| seen.elapsed() >= SPLIT_IDLE_TIMEOUT && source.split_caught_up(i))
        .collect()
}

/// The watermark over splits: the least of the active ones. Idle splits
/// are skipped (an empty Kafka partition must not stall every window);
/// when all are idle, the greatest known one stands.
fn split_watermark(splits: &[(Option<i64>, Instant)], idle: &[bool]) -> Option<i64> {
    let active: Vec<Option<i64>> = splits
        .iter()
        .zip(idle)
        .filter(|(_, idle)| !**idle)
        .map(|((w, _), _)| *w)
        .collect();
    if active.is_empty() {
        return splits.iter().filter_map(|(w, _)| *w).max();
    }
    // An active split that has shown no row yet holds the watermark back.
    active
        .into_iter()
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()
}

fn max_time(batch: &RecordBatch, column: usize) -> Result<Option<i64>> {
    let ticks = cast(batch.column(column), &DataType::Int64)?;
    let ticks = ticks
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| SluiceError::internal("event time is not a timestamp"))?;
    Ok(arrow::compute::max(ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose splits are caught up as told.
    struct Splits(Vec<bool>);

    #[async_trait::async_trait]
    impl crate::stream::Source for Splits {
        async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
            Ok(None)
        }

        fn splits(&self) -> usize {
            self.0.len()
        }

        fn split_caught_up(&self, split: usize) -> bool {
            self.0[split]
        }
    }

    #[test]
    fn a_finished_lanes_state_goes_to_the_checkpoints_after_its_last_barrier() {
        let mut ending = Ending::default();
        let finished = |key: &str, after| Ack::Finished {
            key: key.into(),
            after,
            state: vec![],
        };
        assert_eq!(ending.take(finished("sink-0", 3)), "sink-0");
        ending.take(finished("sink-1", 4));
        assert_eq!(ending.take(Ack::Done { key: "op-2-0".into() }), "op-2-0");
        assert!(ending.ended("sink-1") && ending.ended("op-2-0") && !ending.ended("sink-2"));
        let keys = |states: Vec<(String, Vec<RecordBatch>)>| -> Vec<String> {
            states.into_iter().map(|(k, _)| k).collect()
        };
        // Lane 1 passed checkpoint 4's barrier: its last state is not 4's.
        assert_eq!(keys(ending.states_for(4, true)), ["sink-0"]);
        ending.landed(4);
        // Output to commit goes into one completed checkpoint; state a
        // restore needs (no committer) into every later one.
        assert_eq!(keys(ending.states_for(5, true)), ["sink-1"]);
        assert_eq!(keys(ending.states_for(5, false)), ["sink-0", "sink-1"]);
        ending.landed(5);
        assert!(ending.states_for(6, true).is_empty());
        assert_eq!(keys(ending.states_for(6, false)), ["sink-0", "sink-1"]);
    }

    #[test]
    fn only_a_caught_up_split_goes_idle() {
        let now = Instant::now();
        let quiet = now
            .checked_sub(SPLIT_IDLE_TIMEOUT + std::time::Duration::from_secs(1))
            .expect("a past instant");
        // Split 0 has rows; split 1 had none for longer than the timeout.
        let splits = [(Some(5_000), now), (Some(1_000), quiet)];
        // Caught up: split 1 is idle, the watermark is split 0's.
        let idle = idle_splits(&splits, &Splits(vec![true, true]));
        assert_eq!(idle, [false, true]);
        assert_eq!(split_watermark(&splits, &idle), Some(5_000));
        // Behind (its rows not fetched yet): split 1 holds the watermark.
        let idle = idle_splits(&splits, &Splits(vec![true, false]));
        assert_eq!(idle, [false, false]);
        assert_eq!(split_watermark(&splits, &idle), Some(1_000));
        // A split that never had a row and is behind holds it back entirely.
        let splits = [(Some(5_000), now), (None, quiet)];
        let idle = idle_splits(&splits, &Splits(vec![true, false]));
        assert_eq!(split_watermark(&splits, &idle), None);
        // All idle: the greatest known watermark stands.
        let splits = [(Some(5_000), quiet), (Some(1_000), quiet)];
        let idle = idle_splits(&splits, &Splits(vec![true, true]));
        assert_eq!(split_watermark(&splits, &idle), Some(5_000));
    }
}

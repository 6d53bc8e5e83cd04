//! The running jobs: the job manager keeps each sink's and materialized
//! view's running job, restarts failed ones from their newest checkpoint,
//! and reports what they do (SHOW JOBS, SHOW CHECKPOINTS, metrics).
//!
//! It knows nothing of sessions or SQL: what creates a job (the engine's
//! `CREATE SINK` / `CREATE MATERIALIZED VIEW`) hands it the started job,
//! and a restart goes back through [`Restart`], which the engine
//! implements.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::future::BoxFuture;

use crate::checkpoint::CheckpointHistory;
use crate::error::Result;
use crate::streaming::metrics::NodeSnapshot;
use crate::streaming::mview::MaterializedView;
use crate::streaming::runtime::{Job, JobStatus};

/// A sink or view and its running job.
pub(crate) struct RunningJob {
    pub(crate) sink: bool,
    pub(crate) job: Job,
    pub(crate) view: Option<Arc<MaterializedView>>,
    /// Recent checkpoints (None: the job does not checkpoint).
    pub(crate) checkpoints: Option<Arc<CheckpointHistory>>,
    /// Tells this run of the job from the one a restart replaces it with.
    pub(crate) incarnation: u64,
    /// Restarts after failures in a row that led to this run (None: it
    /// was created, restored at server start or altered).
    pub(crate) restarts: Option<Restarts>,
    /// Set while a restart of this failed run is scheduled.
    pub(crate) pending_restart: Arc<Mutex<Option<String>>>,
}

/// Restarts of a job after failures in a row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Restarts {
    pub(crate) count: u32,
    /// The failure the last restart recovered from.
    pub(crate) last_error: String,
}

/// Starts a failed job again (the engine: it re-plans the job from its
/// catalog entry). `Ok(false)`: run `incarnation` is no longer there
/// (dropped, altered); on an error the failed run must be put back.
pub(crate) trait Restart: Send + Sync {
    fn restart<'a>(
        &'a self,
        name: &'a str,
        sink: bool,
        incarnation: u64,
        attempt: u32,
        error: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
}

/// A new run of a job, for [`JobManager::start`].
pub(crate) struct NewRun {
    pub(crate) sink: bool,
    pub(crate) job: Job,
    pub(crate) view: Option<Arc<MaterializedView>>,
    pub(crate) checkpoints: Option<Arc<CheckpointHistory>>,
    /// Restart attempts allowed in a row (0: never restarted).
    pub(crate) restart_attempts: u32,
}

/// One operator of a running job, as the metrics see it.
#[derive(Debug, Clone)]
pub struct OperatorFigures {
    pub job: String,
    pub kind: &'static str,
    pub status: String,
    pub operator_id: usize,
    pub operator: String,
    pub parallelism: usize,
    /// The operators this one reads (their `operator_id`s).
    pub inputs: Vec<usize>,
    /// Summed over the operator's tasks.
    pub metrics: NodeSnapshot,
    /// Each task's own, by task number.
    pub tasks: Vec<NodeSnapshot>,
    /// A source's position in each split it reads.
    pub splits: Vec<crate::stream::SplitFigures>,
    /// A bounded source's progress through its input.
    pub progress: Option<crate::streaming::metrics::ProgressFigures>,
}

/// One job's checkpoint figures, as the metrics see them.
#[derive(Debug, Clone, Default)]
pub struct CheckpointFigures {
    pub job: String,
    pub completed: u64,
    pub failed: u64,
    pub last_completed_epoch: Option<u64>,
    pub last_duration_ms: Option<u64>,
    pub last_bytes: Option<u64>,
    pub restarts: u32,
    /// Completed checkpoints by duration.
    pub durations: crate::checkpoint::DurationHistogram,
    /// How long the job took to start from its checkpoint, if it did.
    pub restore_time: Option<std::time::Duration>,
    /// A sink's commits (None for a view; a sink that commits nothing,
    /// such as one writing to Kafka without transactions, shows none).
    pub sink: Option<crate::checkpoint::SinkCommits>,
}

/// The running jobs by name.
#[derive(Default)]
pub(crate) struct JobManager {
    jobs: Mutex<BTreeMap<String, RunningJob>>,
    /// Restarts of jobs being restarted, carried into their next run.
    restarts: Mutex<BTreeMap<String, Restarts>>,
    incarnations: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field(
                "jobs",
                &self.jobs.lock().expect("jobs lock").keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The pause before restart number `attempt` (from 1): 1 s, 2 s, 4 s, ...,
/// at most 30 s.
fn restart_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs((1u64 << attempt.saturating_sub(1).min(5)).min(30))
}

impl JobManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunningJob>> {
        self.jobs.lock().expect("jobs lock")
    }

    /// Registers a new run of job `name`. A job that checkpoints and may
    /// be restarted is watched: when it fails, `restart` starts it again
    /// (only such jobs: another would start over from the beginning of its
    /// input, and Flink does not restart jobs without checkpoints either).
    pub(crate) fn start(self: &Arc<Self>, name: String, run: NewRun, restart: Arc<dyn Restart>) {
        let incarnation = self
            .incarnations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let restarts = self.restarts.lock().expect("restarts lock").remove(&name);
        let watch = (run.checkpoints.is_some() && run.restart_attempts > 0).then(|| {
            supervise(
                Arc::downgrade(self),
                restart,
                name.clone(),
                run.sink,
                incarnation,
                run.job.done_receiver(),
                restarts.as_ref().map_or(0, |r| r.count),
                run.restart_attempts,
            )
        });
        self.lock().insert(
            name,
            RunningJob {
                sink: run.sink,
                job: run.job,
                view: run.view,
                checkpoints: run.checkpoints,
                incarnation,
                restarts,
                pending_restart: Default::default(),
            },
        );
        if let Some(watch) = watch {
            tokio::spawn(watch);
        }
    }

    /// Removes job `name`: dropping it aborts its tasks and frees their state.
    pub(crate) fn stop(&self, name: &str) {
        let job = self.lock().remove(name);
        drop(job);
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Takes out run `incarnation` of job `name` for a restart (`None`:
    /// that run is no longer there).
    pub(crate) fn take_run(&self, name: &str, incarnation: u64) -> Option<RunningJob> {
        let mut jobs = self.lock();
        if jobs.get(name).is_none_or(|j| j.incarnation != incarnation) {
            return None;
        }
        jobs.remove(name)
    }

    /// Puts back a run [`Self::take_run`] took, unless another took its
    /// place meanwhile (`false`).
    pub(crate) fn put_back(&self, name: &str, run: RunningJob) -> bool {
        let mut jobs = self.lock();
        if jobs.contains_key(name) {
            return false;
        }
        jobs.insert(name.to_string(), run);
        true
    }

    /// Records the restarts that lead to the next run of `name` (`None`:
    /// forgets them, the restart did not happen).
    pub(crate) fn set_restarts(&self, name: &str, restarts: Option<Restarts>) {
        let mut all = self.restarts.lock().expect("restarts lock");
        match restarts {
            Some(r) => all.insert(name.to_string(), r),
            None => all.remove(name),
        };
    }

    /// The materialized view job `name` maintains.
    pub(crate) fn view(&self, name: &str) -> Option<Arc<MaterializedView>> {
        self.lock().get(name).and_then(|j| j.view.clone())
    }

    /// Job `name`'s status and the rows its view holds (0 for a sink).
    pub(crate) fn status_and_rows(&self, name: &str) -> Option<(String, usize)> {
        self.lock().get(name).map(|j| {
            (
                j.job.status().name().to_string(),
                j.view.as_ref().map_or(0, |v| v.len()),
            )
        })
    }

    /// Names of the jobs that read stream `stream`.
    pub(crate) fn reading(&self, stream: &str) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, j)| j.job.plan.streams().iter().any(|s| s == stream))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Waits until job `name` has finished or failed; returns `finished` or
    /// `failed: <error>`, or `None` when there is no such job.
    pub(crate) async fn wait_for(&self, name: &str) -> Option<String> {
        let mut done = self.lock().get(name)?.job.done_receiver();
        let _ = done.wait_for(|d| *d).await;
        self.lock().get(name).map(|j| match j.job.status() {
            JobStatus::Failed(e) => format!("failed: {e}"),
            other => other.name().to_string(),
        })
    }

    /// Every operator of every job with its figures now.
    pub fn operators(&self) -> Vec<OperatorFigures> {
        let jobs = self.lock();
        let mut out = vec![];
        for (name, j) in jobs.iter() {
            let status = status_name(j);
            let mut nodes = vec![];
            j.job.plan.walk(&mut nodes);
            for n in nodes {
                out.push(OperatorFigures {
                    job: name.clone(),
                    kind: kind_name(j),
                    status: status.to_string(),
                    operator_id: n.id,
                    operator: n.label(),
                    parallelism: n.parallelism,
                    inputs: n.inputs.iter().map(|i| i.id).collect(),
                    metrics: n.metrics.snapshot(),
                    tasks: n.metrics.task_snapshots(),
                    splits: n.metrics.splits(),
                    progress: n.metrics.progress(),
                });
            }
        }
        out
    }

    /// Every checkpointing job's checkpoint figures now.
    pub fn checkpoints(&self) -> Vec<CheckpointFigures> {
        let jobs = self.lock();
        let mut out = vec![];
        for (name, j) in jobs.iter() {
            let Some(history) = &j.checkpoints else {
                continue;
            };
            let (completed, failed) = history.counts();
            let entries = history.entries();
            let last = entries.iter().rev().find(|c| c.status == "completed");
            out.push(CheckpointFigures {
                job: name.clone(),
                completed,
                failed,
                last_completed_epoch: last.map(|c| c.epoch),
                last_duration_ms: last.and_then(|c| c.duration_ms),
                last_bytes: last.map(|c| c.bytes),
                restarts: j.restarts.as_ref().map_or(0, |r| r.count),
                durations: history.durations(),
                restore_time: history.restore_time(),
                sink: j.sink.then(|| history.sink_commits()),
            });
        }
        out
    }

    /// SHOW JOBS: a row per operator of every job.
    pub(crate) fn show_jobs(&self) -> Result<RecordBatch> {
        let jobs = self.lock();
        let mut job = vec![];
        let mut kind = vec![];
        let mut status = vec![];
        let mut op_id = vec![];
        let mut op = vec![];
        let mut par = vec![];
        let mut rows_in = vec![];
        let mut rows_out = vec![];
        let mut wm: Vec<Option<i64>> = vec![];
        let mut state_rows = vec![];
        let mut state_bytes = vec![];
        let mut late = vec![];
        let mut bad = vec![];
        let mut error: Vec<Option<String>> = vec![];
        let mut detail: Vec<Option<String>> = vec![];
        let mut progress: Vec<Option<String>> = vec![];
        for (name, j) in jobs.iter() {
            let st = j.job.status();
            let pending = j.pending_restart.lock().expect("restart lock").clone();
            let status_name = status_name(j);
            let mut nodes = vec![];
            j.job.plan.walk(&mut nodes);
            // The job's checkpoint figures, on its first row.
            let mut summary = j.checkpoints.as_ref().map(|h| {
                let entries = h.entries();
                let last = entries.iter().rev().find(|c| c.status == "completed");
                let restored = h.restored_from();
                let mut s = match last {
                    Some(c) => format!(
                        "checkpoint {} completed in {} ms, {} bytes",
                        c.epoch,
                        c.duration_ms.unwrap_or(0),
                        c.bytes
                    ),
                    None => "no checkpoint completed yet".to_string(),
                };
                if let Some(r) = restored {
                    s.push_str(&format!("; restored from checkpoint {r}"));
                }
                if let Some(r) = &j.restarts {
                    s.push_str(&format!(
                        "; restart {} after a failure: {}",
                        r.count, r.last_error
                    ));
                }
                if let Some(p) = &pending {
                    s.push_str(&format!("; {p}"));
                }
                s
            });
            for n in nodes {
                let m = n.metrics.snapshot();
                job.push(name.clone());
                kind.push(kind_name(j));
                status.push(status_name);
                op_id.push(n.id as i64);
                op.push(n.label());
                par.push(n.parallelism as i64);
                rows_in.push(m.rows_in as i64);
                rows_out.push(m.rows_out as i64);
                // The end of time (a bounded source finished) has no
                // timestamp; show the largest representable one instead of
                // overflowing.
                wm.push(m.watermark.map(|w| w.min(253_402_300_799_000_000)));
                state_rows.push(m.state_rows as i64);
                state_bytes.push(m.state_bytes as i64);
                late.push(m.late_rows as i64);
                bad.push(m.bad_rows as i64);
                detail.push(match (summary.take(), n.metrics.detail()) {
                    (Some(s), Some(d)) => Some(format!("{s}; {d}")),
                    (Some(s), None) => Some(s),
                    (None, d) => d,
                });
                error.push(match &st {
                    JobStatus::Failed(e) => Some(e.clone()),
                    _ => None,
                });
                progress.push(n.metrics.progress().map(|p| p.describe()));
            }
        }
        batch(
            show_jobs_schema(),
            vec![
                Arc::new(StringArray::from(job)),
                Arc::new(StringArray::from(kind)),
                Arc::new(StringArray::from(status)),
                Arc::new(Int64Array::from(op_id)),
                Arc::new(StringArray::from(op)),
                Arc::new(Int64Array::from(par)),
                Arc::new(Int64Array::from(rows_in)),
                Arc::new(Int64Array::from(rows_out)),
                Arc::new(TimestampMicrosecondArray::from(wm)),
                Arc::new(Int64Array::from(state_rows)),
                Arc::new(Int64Array::from(state_bytes)),
                Arc::new(Int64Array::from(late)),
                Arc::new(StringArray::from(error)),
                Arc::new(Int64Array::from(bad)),
                Arc::new(StringArray::from(detail)),
                Arc::new(StringArray::from(progress)),
            ],
        )
    }

    /// SHOW CHECKPOINTS: the recent checkpoints of every job.
    pub(crate) fn show_checkpoints(&self) -> Result<RecordBatch> {
        let jobs = self.lock();
        let (mut job, mut epoch, mut status, mut started, mut duration, mut bytes, mut detail) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (name, j) in jobs.iter() {
            let Some(history) = &j.checkpoints else {
                continue;
            };
            for s in history.entries() {
                job.push(name.clone());
                epoch.push(s.epoch as i64);
                status.push(s.status);
                started.push(s.started_ms * 1000);
                duration.push(s.duration_ms.map(|d| d as i64));
                bytes.push(s.bytes as i64);
                detail.push(s.detail);
            }
        }
        batch(
            show_checkpoints_schema(),
            vec![
                Arc::new(StringArray::from(job)),
                Arc::new(Int64Array::from(epoch)),
                Arc::new(StringArray::from(status)),
                Arc::new(TimestampMicrosecondArray::from(started)),
                Arc::new(Int64Array::from(duration)),
                Arc::new(Int64Array::from(bytes)),
                Arc::new(StringArray::from(detail)),
            ],
        )
    }
}

fn kind_name(j: &RunningJob) -> &'static str {
    if j.sink { "sink" } else { "materialized view" }
}

/// A failed job with a restart on its way is `restarting`.
fn status_name(j: &RunningJob) -> &'static str {
    let pending = j.pending_restart.lock().expect("restart lock").is_some();
    match j.job.status() {
        JobStatus::Failed(_) if pending => "restarting",
        st => st.name(),
    }
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Watches one run of a job that checkpoints. When it fails, it is started
/// again from its newest checkpoint after [`restart_delay`], as Flink's
/// restart strategies do, at most `max` times in a row; a run that
/// completed a checkpoint before failing starts the count again, and a
/// failure for want of file descriptors is not counted. A run that is
/// dropped, altered or finished ends the watch.
/// (Boxed: a restart creates the next run's watch, and the future types
/// would otherwise contain themselves.)
#[allow(clippy::too_many_arguments)]
fn supervise(
    manager: Weak<JobManager>,
    restart: Arc<dyn Restart>,
    name: String,
    sink: bool,
    incarnation: u64,
    mut done: tokio::sync::watch::Receiver<bool>,
    restarts: u32,
    max: u32,
) -> BoxFuture<'static, ()> {
    let mut restarts = restarts;
    // Set once a restart of this run could not be started.
    let mut retrying = false;
    Box::pin(async move {
        loop {
            if done.wait_for(|d| *d).await.is_err() {
                return; // the run was dropped
            }
            let (error, progressed, pending) = {
                let Some(manager) = manager.upgrade() else { return };
                let jobs = manager.lock();
                let Some(j) = jobs.get(&name).filter(|j| j.incarnation == incarnation) else {
                    return;
                };
                let JobStatus::Failed(error) = j.job.status() else {
                    return;
                };
                let progressed = j
                    .checkpoints
                    .as_ref()
                    .is_some_and(|h| h.entries().iter().any(|c| c.status == "completed"));
                (error, progressed, j.pending_restart.clone())
            };
            let attempt = if progressed && !retrying { 1 } else { restarts + 1 };
            // Running out of file descriptors passes with whatever holds
            // them (a burst of connections): such a failure is restarted
            // after the longest pause however many came before it.
            let out_of_descriptors = error.contains("(os error 24)") || error.contains("(os error 23)");
            if attempt > max && !out_of_descriptors {
                tracing::warn!(job = %name, restarts, "job failed; no restart attempts left");
                return;
            }
            let delay = restart_delay(attempt);
            *pending.lock().expect("restart lock") = Some(if attempt > max {
                format!(
                    "restart {attempt} (out of file descriptors, not counted against {max}) in {} s \
                     from the newest checkpoint",
                    delay.as_secs()
                )
            } else {
                format!(
                    "restart {attempt} of {max} in {} s from the newest checkpoint",
                    delay.as_secs()
                )
            });
            tracing::warn!(job = %name, attempt, max, error = %error, "job failed; restarting from its newest checkpoint");
            tokio::time::sleep(delay).await;
            match restart.restart(&name, sink, incarnation, attempt, &error).await {
                // Restarted (the new run has its own watch), or the run is
                // no longer there (dropped, altered).
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(job = %name, attempt, error = %e, "could not restart the job");
                    *pending.lock().expect("restart lock") = None;
                    restarts = attempt;
                    retrying = true;
                    // The failed run is back in place: try again.
                }
            }
        }
    })
}

pub(crate) fn show_objects_schema(sink: bool) -> SchemaRef {
    let mut fields = vec![Field::new("name", DataType::Utf8, false)];
    if sink {
        fields.push(Field::new("connector", DataType::Utf8, false));
        fields.push(Field::new("options", DataType::Utf8, false));
    } else {
        fields.push(Field::new("rows", DataType::Int64, false));
    }
    fields.push(Field::new("status", DataType::Utf8, false));
    fields.push(Field::new("query", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

pub(crate) fn show_jobs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("operator_id", DataType::Int64, false),
        Field::new("operator", DataType::Utf8, false),
        Field::new("parallelism", DataType::Int64, false),
        Field::new("rows_in", DataType::Int64, false),
        Field::new("rows_out", DataType::Int64, false),
        Field::new(
            "watermark",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("state_rows", DataType::Int64, false),
        Field::new("state_bytes", DataType::Int64, false),
        Field::new("late_rows", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("bad_rows", DataType::Int64, false),
        Field::new("detail", DataType::Utf8, true),
        // A bounded source's share read and the time left at its rate.
        Field::new("progress", DataType::Utf8, true),
    ]))
}

pub(crate) fn show_checkpoints_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("duration_ms", DataType::Int64, true),
        Field::new("bytes", DataType::Int64, false),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

pub(crate) fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("QUERY PLAN", DataType::Utf8, false)]))
}

//! A running job: its tasks in one set, its status, and the start that
//! wires a plan's lanes, its sinks and its checkpoint coordinator.

use std::sync::Arc;
use std::time::SystemTime;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Task;
use super::build::build;
use super::sink::drive_sink;
use super::wiring::{StartPositions, Wiring};
use crate::checkpoint::coordinator::{Coordinator, describe_positions};
use crate::checkpoint::{CheckpointConfig, CheckpointStats};
use crate::error::Result;
use crate::sink::SinkWriter;
use crate::streaming::plan::Node;

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
            readers: super::wiring::readers(&plan),
            shared: Default::default(),
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
                Some(jobs_runtime().spawn(coordinator.run(trigger_tx, completed_tx, ack_rx)))
            }
            None => None,
        };
        drop(wiring);
        let status = Arc::new(std::sync::Mutex::new(JobStatus::Running));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let job_status = status.clone();
        let job_name = name.to_string();
        let monitor = jobs_runtime().spawn(async move {
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

/// The runtime every job's tasks run on: one worker per core, apart from
/// the engine's statement runtime (which has two per core, so that one
/// heavy query leaves workers for other sessions). A job's pipeline hands
/// batches between its tasks through channels; on twice as many workers as
/// cores those hand-offs cross threads the system keeps switching, which
/// cost a hop-window job 15% of its rate and a passthrough 30% (BENCHMARKS.md).
fn jobs_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
                .thread_name("sluice-job")
                .enable_all()
                .build()
                .expect("starting the jobs' runtime")
        })
        .handle()
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    crate::compute::panic_text(&*e.into_panic())
}

//! The checkpoint coordinator: triggers an epoch at the interval, collects
//! every task's acknowledgement, writes the manifest last, and commits a
//! completed checkpoint's sink output to the table log in epoch order.

use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use super::{Ack, CheckpointConfig, CheckpointStats, CheckpointStore, Manifest};
use crate::error::{Result, SluiceError};
use crate::sink::{CommitRequest, Committer, SourceRange};

/// Source positions of a manifest, for SHOW CHECKPOINTS.
pub(crate) fn describe_positions(m: &Manifest) -> String {
    m.sources
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Triggers checkpoints at the interval and completes them.
pub(crate) struct Coordinator {
    pub(crate) job: String,
    pub(crate) config: CheckpointConfig,
    /// The keys of the tasks that acknowledge checkpoints.
    pub(crate) participants: Vec<String>,
    pub(crate) parallelism: std::collections::BTreeMap<String, usize>,
    pub(crate) source_streams: std::collections::BTreeMap<String, String>,
    /// Where each source lane of a restored job resumed (a checkpoint
    /// taken at another number of lanes split anew): what the first
    /// checkpoint's commit names as the start of its input.
    pub(crate) resumed: std::collections::BTreeMap<String, String>,
    pub(crate) sink_lanes: usize,
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
                Ok(done) => {
                    self.config.history.record_commit(done);
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
                    self.config.history.record_commit_failure();
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
    pub(crate) async fn run(
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
                let done = log
                    .commit(CommitRequest {
                        epoch: None,
                        lane_states,
                        sources: vec![],
                    })
                    .await?;
                self.config.history.record_commit(done);
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
pub(crate) struct Ending {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! What a plan's tasks are handed for checkpoints: the trigger, the
//! acknowledgements, the restore, and a stateful task's end of the
//! protocol ([`TaskCheckpoint`]: snapshots written, full or incremental).

use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use crate::checkpoint::{Ack, CheckpointStore, Manifest, Restore};
use crate::error::{Result, SluiceError};
use crate::sink::SinkWriter;
use crate::stream::StreamTable;
use crate::streaming::operators::KeyedOperator;
use crate::streaming::plan::Node;

/// What `build` hands each task for checkpoints.
pub(super) struct Wiring {
    pub(super) trigger: tokio::sync::watch::Receiver<u64>,
    /// The newest completed checkpoint.
    pub(super) completed: tokio::sync::watch::Receiver<u64>,
    pub(super) acks: mpsc::UnboundedSender<Ack>,
    /// None: the job does not checkpoint (a SUBSCRIBE's private job).
    pub(super) store: Option<CheckpointStore>,
    pub(super) restore: Option<Restore>,
    /// Tasks that acknowledge each checkpoint (by their keys).
    pub(super) participants: Vec<String>,
    /// Parallelism per keyed node, recorded in manifests.
    pub(super) parallelism: std::collections::BTreeMap<String, usize>,
    /// The stream each source lane reads (by its manifest key).
    pub(super) source_streams: std::collections::BTreeMap<String, String>,
    /// The position each source lane resumes from (restored jobs).
    pub(super) resumed: std::collections::BTreeMap<String, String>,
    /// Where sources start when there is no checkpoint to restore.
    pub(super) start_from: StartPositions,
    /// Per source whose lanes other source nodes read too (by node id):
    /// those nodes' ids ([`readers`]).
    pub(super) readers: std::collections::BTreeMap<usize, Vec<usize>>,
    /// Per shared source: the lanes of the readers not built yet.
    pub(super) shared: std::collections::BTreeMap<usize, Vec<Vec<super::Lane>>>,
}

/// The other source nodes that read each shared source's lanes.
pub(super) fn readers(plan: &Node) -> std::collections::BTreeMap<usize, Vec<usize>> {
    let mut all = vec![];
    plan.walk(&mut all);
    let mut readers = std::collections::BTreeMap::<usize, Vec<usize>>::new();
    for n in all {
        if let crate::streaming::plan::NodeKind::Source { shares: Some(id), .. } = &n.kind {
            readers.entry(*id).or_default().push(n.id);
        }
    }
    readers
}

/// Whether sources `first` and `others` can share lanes when restoring
/// `manifest`: a checkpoint taken while they read separately may hold
/// different positions for them, and then each resumes from its own. (A
/// checkpoint of shared lanes names the first source's positions only.)
pub(super) fn may_share(manifest: &Manifest, first: usize, others: &[usize]) -> bool {
    let positions = |id: &usize| -> Vec<Option<&String>> {
        (0..manifest.source_lanes(&id.to_string()))
            .map(|p| manifest.sources.get(&format!("{id}-{p}")))
            .collect()
    };
    let first = positions(&first);
    others.iter().all(|id| {
        let own = positions(id);
        own.is_empty() || own == first
    })
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
    pub(super) fn task(&self, key: String) -> TaskCheckpoint {
        TaskCheckpoint {
            key,
            acks: self.acks.clone(),
            store: self.store.clone(),
            restored: self.restore.as_ref().map_or(0, |r| r.manifest.epoch),
            base: None,
        }
    }

    /// The task `key` acknowledges each checkpoint (when the job takes any).
    pub(super) fn participate(&mut self, key: &str) {
        if self.store.is_some() {
            self.participants.push(key.to_string());
        }
    }
}

/// A stateful task's end of the checkpoint protocol.
pub(super) struct TaskCheckpoint {
    pub(super) key: String,
    pub(super) acks: mpsc::UnboundedSender<Ack>,
    pub(super) store: Option<CheckpointStore>,
    /// The checkpoint this run restored (0: none).
    pub(super) restored: u64,
    /// This run's last full snapshot of the task's state (a keyed
    /// operator's or a sink lane's; epoch, file): what an incremental one
    /// applies to, while that checkpoint stands.
    pub(super) base: Option<(u64, String)>,
}

impl TaskCheckpoint {
    /// A sink lane's input ended after it passed the barrier of checkpoint
    /// `after`: hands its last state to the next checkpoint.
    pub(super) fn finish(&self, after: u64, state: Vec<RecordBatch>) {
        let _ = self.acks.send(Ack::Finished {
            key: self.key.clone(),
            after,
            state,
        });
    }

    /// A keyed task's inputs all ended and it passed on everything: it
    /// takes part in no more checkpoints.
    pub(super) fn done(&self) {
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
    pub(super) async fn save_operator(&mut self, epoch: u64, op: &mut dyn KeyedOperator) {
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
    pub(super) async fn standing_base(&self) -> Option<String> {
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
    pub(super) async fn save_sink(&mut self, epoch: u64, writer: &mut dyn SinkWriter) -> Result<()> {
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
    pub(super) async fn write(
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
pub(super) fn restored_positions(
    r: &Restore,
    node: &Node,
    table: &StreamTable,
) -> Result<Vec<Option<String>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sources: &[(&str, &str)]) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "job": "j", "epoch": 3, "started_ms": 0, "duration_ms": 0, "bytes": 0,
            "sources": sources.iter().map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "states": {}, "parallelism": {},
        }))
        .unwrap()
    }

    #[test]
    fn sources_share_lanes_on_restore_only_where_their_positions_agree() {
        // Taken while shared: only the first source has positions.
        assert!(may_share(&manifest(&[("2-0", "a"), ("2-1", "b")]), 2, &[5]));
        // Taken while reading separately, at the same positions.
        assert!(may_share(&manifest(&[("2-0", "a"), ("5-0", "a")]), 2, &[5]));
        // At different positions: each resumes from its own.
        assert!(!may_share(&manifest(&[("2-0", "a"), ("5-0", "b")]), 2, &[5]));
        assert!(!may_share(
            &manifest(&[("2-0", "a"), ("5-0", "a"), ("5-1", "c")]),
            2,
            &[5]
        ));
        assert!(!may_share(
            &manifest(&[("2-0", "a"), ("7-0", "a"), ("9-0", "x")]),
            2,
            &[7, 9]
        ));
    }
}

//! One source partition as a lane: reading, watermarks over splits (idle
//! ones skipped), barriers at the recorded position, and the end of a
//! bounded source.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Lane, SOURCE_TICK};
use crate::checkpoint::Ack;
use crate::error::{Result, SluiceError};
use crate::stream::{Message, StreamTable};
use crate::streaming::metrics::NodeMetrics;
use crate::streaming::window::ticks_to_micros;

/// One source partition as a lane: batches, each followed by the watermark
/// when it advanced; at the end of a bounded source, the watermark jumps to
/// the end of time (closing every window) and `End` follows.
pub(super) fn source_lane(
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
                        metrics.set_splits(partition, source.split_figures());
                        metrics.set_progress(partition, source.progress());
                        if table.watermark.is_none() && source.take_loaded() {
                            state.watermark = i64::MAX;
                            metrics.set_watermark(partition, i64::MAX);
                            state.pending.push_back(Message::Watermark(i64::MAX));
                            continue;
                        }
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
                metrics.add_bad(partition, source.take_bad_records());
                metrics.set_detail(partition, source.status());
                metrics.set_splits(partition, source.split_figures());
                metrics.set_progress(partition, source.progress());
                match next {
                    Ok(Some(batch)) => {
                        state.idle_sent = false;
                        metrics.add_out(partition, batch.num_rows());
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
                            if source.take_loaded() {
                                state.watermark = i64::MAX;
                                metrics.set_watermark(partition, i64::MAX);
                                state.pending.push_back(Message::Watermark(i64::MAX));
                            }
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
pub(super) struct SourceCheckpoint {
    /// `<node>-<partition>`: how the manifest names this lane's position.
    pub(super) key: String,
    pub(super) resume: Option<String>,
    pub(super) trigger: Option<tokio::sync::watch::Receiver<u64>>,
    /// Completed checkpoints (None: the job does not checkpoint).
    pub(super) completed: Option<tokio::sync::watch::Receiver<u64>>,
    pub(super) acks: mpsc::UnboundedSender<Ack>,
}

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

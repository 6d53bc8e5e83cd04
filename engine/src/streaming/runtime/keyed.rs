//! Keyed operators in a dataflow: a hash exchange per input lane, and `P`
//! parallel tasks that each run one instance of the operator over what the
//! exchanges send them.
//!
//! An operator may have several inputs (a join has two), each with its own
//! key expressions: every lane of input `i` is hashed on input `i`'s keys,
//! so rows of all inputs with equal keys meet in the same task. Each task
//! hands its messages to an [`Aligner`], which tags rows with their input,
//! aligns checkpoint barriers over every lane and tracks watermarks per
//! input and overall.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::ArrayRef;
use datafusion::physical_expr::PhysicalExpr;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::align::{Aligner, Event};
use super::wiring::{TaskCheckpoint, Wiring};
use super::{CHANNEL_CAPACITY, Lane, STATE_METRICS_EVERY, Task};
use crate::error::{Result, SluiceError};
use crate::stream::Message;
use crate::streaming::keygroups;
use crate::streaming::metrics::NodeMetrics;
use crate::streaming::operators::{KeyedOperator, eval};
use crate::streaming::plan::Node;

/// Exchanges plus parallel keyed operator tasks; returns their output
/// lanes. `keys[i]` are the key expressions of `node.inputs[i]`, `inputs[i]`
/// its lanes.
pub(super) fn keyed(
    node: &Node,
    keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    ops: Vec<Box<dyn KeyedOperator>>,
    inputs: Vec<Vec<Lane>>,
    tasks: &mut Vec<Task>,
    wiring: &mut Wiring,
) -> Result<Vec<Lane>> {
    if keys.len() != node.inputs.len() {
        return Err(SluiceError::internal(format!(
            "{} inputs but keys for {}",
            node.inputs.len(),
            keys.len()
        )));
    }
    let restore = wiring.restore.clone();
    wiring.parallelism.insert(node.id.to_string(), ops.len());
    // Every input's lanes, numbered across inputs.
    let mut lanes_in = Vec::new();
    let mut lane_inputs = Vec::new();
    // Per lane, the upstream task it comes from (its number within its input).
    let mut lane_tasks = Vec::new();
    for (i, lanes) in inputs.into_iter().enumerate() {
        for (t, lane) in lanes.into_iter().enumerate() {
            lanes_in.push(lane);
            lane_inputs.push(i);
            lane_tasks.push(t);
        }
    }
    let p = ops.len();
    let mut senders = Vec::with_capacity(p);
    let mut receivers = Vec::with_capacity(p);
    for _ in 0..p {
        let (tx, rx) = mpsc::channel::<(usize, Message)>(CHANNEL_CAPACITY * lanes_in.len().max(1));
        senders.push(tx);
        receivers.push(rx);
    }
    for (l, lane) in lanes_in.into_iter().enumerate() {
        // Waiting on a full exchange is the input's backpressure.
        let upstream = node.inputs[lane_inputs[l]].metrics.clone();
        tasks.push(
            exchange(
                lane,
                l,
                keys[lane_inputs[l]].clone(),
                senders.clone(),
                upstream,
                lane_tasks[l],
            )
            .boxed(),
        );
    }
    drop(senders);
    let lane_inputs: Arc<[usize]> = lane_inputs.into();
    // Snapshots name their key columns k0.. after the first input's keys
    // (every input of a keyed operator has as many).
    let n_keys = keys.first().map_or(0, Vec::len);
    let mut lanes = Vec::with_capacity(p);
    for (t, (rx, op)) in receivers.into_iter().zip(ops).enumerate() {
        let (tx, orx) = mpsc::channel::<Result<Message>>(CHANNEL_CAPACITY);
        let key = format!("op-{}-{t}", node.id);
        let ck = wiring.task(key.clone());
        wiring.participate(&key);
        let restore = restore.clone();
        let node_id = node.id.to_string();
        let metrics = node.metrics.clone();
        let aligner = Aligner::new(&lane_inputs);
        tasks.push(
            async move {
                // Each task restores its own state, in parallel with the
                // others and off the async workers (a large state takes
                // seconds to rebuild).
                let op = match restore {
                    Some(r) => tokio::task::spawn_blocking(move || -> Result<Box<dyn KeyedOperator>> {
                        let mut op = op;
                        let old_tasks = r.manifest.parallelism.get(&node_id).copied().unwrap_or(p);
                        if t == 0 && old_tasks != p {
                            tracing::info!(
                                operator = %node_id,
                                checkpoint = r.manifest.epoch,
                                from = old_tasks,
                                to = p,
                                "restoring keyed state at another parallelism"
                            );
                        }
                        let state = keygroups::gather_state(
                            r.manifest.routing.as_deref(),
                            old_tasks,
                            p,
                            t,
                            n_keys,
                            |old| r.state(&format!("op-{node_id}-{old}")),
                        )?;
                        op.restore(state)?;
                        Ok(op)
                    })
                    .await
                    .map_err(|e| SluiceError::internal(format!("restoring operator state: {e}")))??,
                    None => op,
                };
                run_keyed(rx, aligner, op, tx, metrics, t, ck).await
            }
            .boxed(),
        );
        lanes.push(tokio_stream_from(orx));
    }
    Ok(lanes)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Result<Message>>) -> Lane {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Sends `msg`, counting the time spent waiting when the channel is full
/// as `metrics`' backpressure; `false` when the receiver is gone.
async fn send_counted<T>(tx: &mpsc::Sender<T>, msg: T, metrics: &NodeMetrics, task: usize) -> bool {
    match tx.try_send(msg) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(msg)) => {
            let waiting = std::time::Instant::now();
            let sent = tx.send(msg).await.is_ok();
            metrics.add_blocked(task, waiting.elapsed());
            sent
        }
    }
}

/// Routes rows by key group (see [`keygroups`]); progress messages go to
/// every target.
async fn exchange(
    mut lane: Lane,
    lane_id: usize,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    targets: Vec<mpsc::Sender<(usize, Message)>>,
    upstream: Arc<NodeMetrics>,
    upstream_task: usize,
) -> Result<()> {
    let assignment = keygroups::Assignment::new(targets.len());
    let mut hashes: Vec<u64> = Vec::new();
    while let Some(msg) = lane.next().await {
        match msg? {
            Message::Batch(b) if targets.len() == 1 => {
                if !send_counted(
                    &targets[0],
                    (lane_id, Message::Batch(b)),
                    &upstream,
                    upstream_task,
                )
                .await
                {
                    return Ok(());
                }
            }
            Message::Batch(b) => {
                let cols: Vec<ArrayRef> = keys
                    .iter()
                    .map(|k| eval(k, &b))
                    .collect::<datafusion::error::Result<_>>()?;
                for (t, part) in assignment.split(&b, &cols, &mut hashes)? {
                    if !send_counted(
                        &targets[t],
                        (lane_id, Message::Batch(part)),
                        &upstream,
                        upstream_task,
                    )
                    .await
                    {
                        return Ok(());
                    }
                }
            }
            other => {
                let end = matches!(other, Message::End);
                for t in &targets {
                    if t.send((lane_id, other.clone())).await.is_err() {
                        return Ok(());
                    }
                }
                if end {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Sends the operator's output; false when downstream is gone.
async fn forward(
    out: &mut Vec<arrow::array::RecordBatch>,
    tx: &mpsc::Sender<Result<Message>>,
    metrics: &NodeMetrics,
    task: usize,
) -> bool {
    for b in out.drain(..) {
        metrics.add_out(task, b.num_rows());
        if !send_counted(tx, Ok(Message::Batch(b)), metrics, task).await {
            return false;
        }
    }
    true
}

/// One parallel task of a keyed operator.
async fn run_keyed(
    mut rx: mpsc::Receiver<(usize, Message)>,
    mut aligner: Aligner,
    mut op: Box<dyn KeyedOperator>,
    tx: mpsc::Sender<Result<Message>>,
    metrics: Arc<NodeMetrics>,
    task: usize,
    mut ck: TaskCheckpoint,
) -> Result<()> {
    let mut state_seen = Instant::now();
    let mut out = Vec::new();
    let mut events = Vec::new();
    let started = Instant::now();
    loop {
        // Held messages of lanes no longer blocked come first, in order.
        let next = match aligner.next_held() {
            Some(m) => Some(m),
            None => rx.recv().await,
        };
        let Some((lane, msg)) = next else {
            break;
        };
        aligner.push(lane, msg, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Batch { input, batch } => {
                    metrics.add_in(task, batch.num_rows());
                    op.on_batch(input, batch, &mut out)?;
                    let late = op.take_late();
                    if late > 0 {
                        metrics.add_late(task, late);
                    }
                }
                Event::InputWatermark { input, watermark } => {
                    op.on_input_watermark(input, watermark, &mut out)?;
                }
                Event::Progress { watermark, advanced } => {
                    op.on_watermark(watermark, &mut out)?;
                    if advanced {
                        metrics.set_watermark(task, watermark);
                    }
                    // State figures when time moves, and now and then
                    // without (a stream without event time never moves it).
                    if advanced || state_seen.elapsed() >= STATE_METRICS_EVERY {
                        state_seen = Instant::now();
                        let (r, by) = op.state_size();
                        metrics.set_state(task, r as u64, by as u64);
                        metrics.set_expired(task, op.expired_rows());
                        metrics.set_detail(task, op.detail());
                    }
                    let emitted = !out.is_empty();
                    if !forward(&mut out, &tx, &metrics, task).await {
                        return Ok(());
                    }
                    // Changes are followed by a progress step, so an
                    // updating operator downstream emits them too.
                    let step = if advanced {
                        Some(Message::Watermark(op.output_watermark(watermark)))
                    } else {
                        emitted.then_some(Message::Progress)
                    };
                    if let Some(step) = step
                        && tx.send(Ok(step)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                Event::Idle => {
                    if tx.send(Ok(Message::Idle)).await.is_err() {
                        return Ok(());
                    }
                }
                Event::Barrier(epoch) => {
                    // Every lane is at the barrier: emit what is pending (a
                    // progress step), snapshot, pass the barrier on.
                    op.on_watermark(aligner.watermark(), &mut out)?;
                    if !forward(&mut out, &tx, &metrics, task).await {
                        return Ok(());
                    }
                    ck.save_operator(epoch, op.as_mut()).await;
                    if tx.send(Ok(Message::Barrier(epoch))).await.is_err() {
                        return Ok(());
                    }
                }
                Event::End => {
                    if !forward(&mut out, &tx, &metrics, task).await {
                        return Ok(());
                    }
                    let _ = tx.send(Ok(Message::End)).await;
                    ck.done();
                    tracing::debug!(elapsed = ?started.elapsed(), "keyed task finished");
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_on_a_full_channel_counts_as_backpressure() {
        let metrics = NodeMetrics::new(1);
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        // Room: no wait.
        assert!(send_counted(&tx, 1, &metrics, 0).await);
        assert_eq!(metrics.snapshot().blocked_us, 0);
        // Full until the reader takes one, 20 ms later.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let first = rx.recv().await;
            (first, rx)
        });
        assert!(send_counted(&tx, 2, &metrics, 0).await);
        assert!(metrics.snapshot().blocked_us > 0, "the wait was not counted");
        let (first, rx) = reader.await.unwrap();
        assert_eq!(first, Some(1));
        drop(rx);
        // Nobody reads any more: false, not a hang.
        assert!(!send_counted(&tx, 3, &metrics, 0).await);
    }
}

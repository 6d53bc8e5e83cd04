//! A plan becomes lanes: sources start them, stateless operators map them
//! in place (fused), keyed operators end them in an exchange and start new
//! ones (see [`super::keyed`]).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use futures::{FutureExt, StreamExt};

use super::keyed::keyed;
use super::source::{SourceCheckpoint, source_lane};
use super::wiring::{Wiring, may_share, restored_positions};
use super::{Lane, Task};
use crate::error::{Result, SluiceError};
use crate::stream::Message;
use crate::streaming::metrics::NodeMetrics;
use crate::streaming::operators::{BuildContext, InputShape, eval};
use crate::streaming::plan::{Node, NodeKind};

/// The lanes a node produces; tasks it needs go to `tasks`.
pub(super) fn build(node: &Node, tasks: &mut Vec<Task>, wiring: &mut Wiring) -> Result<Vec<Lane>> {
    match &node.kind {
        NodeKind::Source { table, shares } => {
            if let Some(first) = shares
                && let Some(readers) = wiring.shared.get_mut(first)
                && let Some(lanes) = readers.pop()
            {
                return Ok(lanes);
            }
            let others = wiring.readers.get(&node.id).cloned().unwrap_or_default();
            let lanes = source_lanes(node, table, wiring)?;
            if others.is_empty()
                || wiring
                    .restore
                    .as_ref()
                    .is_some_and(|r| !may_share(&r.manifest, node.id, &others))
            {
                return Ok(lanes);
            }
            // Read once, copied to every reader (in order, so each sees
            // every barrier).
            let mut per_reader: Vec<Vec<Lane>> = (0..=others.len()).map(|_| Vec::new()).collect();
            for lane in lanes {
                for (r, copy) in tee(lane, others.len() + 1, tasks).into_iter().enumerate() {
                    per_reader[r].push(copy);
                }
            }
            let mine = per_reader.remove(0);
            wiring.shared.insert(node.id, per_reader);
            Ok(mine)
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
                            Ok(Message::Batch(b)) => match step.apply(i, b) {
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
        NodeKind::Keyed(spec) => {
            let ctx = BuildContext {
                inputs: node
                    .inputs
                    .iter()
                    .map(|i| InputShape {
                        schema: i.schema.clone(),
                        updating: i.updating,
                    })
                    .collect(),
                schema: node.schema.clone(),
            };
            let ops = (0..node.parallelism)
                .map(|_| spec.build(&ctx))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let inputs = node
                .inputs
                .iter()
                .map(|input| build(input, tasks, wiring))
                .collect::<Result<Vec<_>>>()?;
            keyed(node, spec.keys(), ops, inputs, tasks, wiring)
        }
    }
}

/// The lanes of a source node, one per partition, resuming where the
/// restored checkpoint (or `start_from`) says.
fn source_lanes(
    node: &Node,
    table: &Arc<crate::stream::StreamTable>,
    wiring: &mut Wiring,
) -> Result<Vec<Lane>> {
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

/// Messages per reader of a tee. A source's batches are its largest
/// (whole decoded records): a reader's copies are the same batches, but
/// each one queued is kept alive until every reader took it.
const TEE_CAPACITY: usize = 2;

/// Copies a lane to `n` readers from a task of its own. Each message goes
/// to every reader before the next is read, so a reader held back at a
/// barrier (aligning with another input) never keeps the others from it;
/// a reader that went away no longer gets copies.
fn tee(lane: Lane, n: usize, tasks: &mut Vec<Task>) -> Vec<Lane> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| tokio::sync::mpsc::channel::<Message>(TEE_CAPACITY))
        .unzip();
    tasks.push(
        async move {
            let mut lane = lane;
            while let Some(m) = lane.next().await {
                let m = m?;
                for tx in &senders {
                    // A reader that ended (its job is stopping) is skipped.
                    let _ = tx.send(m.clone()).await;
                }
            }
            Ok(())
        }
        .boxed(),
    );
    receivers
        .into_iter()
        .map(|rx| {
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) }).boxed()
        })
        .collect()
}

/// Gives a batch the node's schema (UNION ALL inputs may name columns
/// differently).
fn relabel(b: RecordBatch, schema: &SchemaRef, updating: bool) -> Result<RecordBatch> {
    let target = if updating {
        crate::streaming::operators::with_op_column(schema)
    } else {
        schema.clone()
    };
    if b.schema().fields().len() == target.fields().len() && !updating {
        return Ok(crate::streaming::operators::batch_with_schema(
            &target,
            b.columns().to_vec(),
        )?);
    }
    let mut cols = b.columns().to_vec();
    if updating && cols.len() + 1 == target.fields().len() {
        // An append-only input into an updating union: all inserts.
        cols.push(Arc::new(arrow::array::Int8Array::from(vec![1i8; b.num_rows()])));
    }
    Ok(crate::streaming::operators::batch_with_schema(&target, cols)?)
}

/// A fused stateless step.
struct Step {
    kind: StepKind,
    updating: bool,
    metrics: Arc<NodeMetrics>,
}

enum StepKind {
    Window(crate::streaming::window::WindowSpec, SchemaRef),
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

    /// Runs the step over a batch of lane (task) `task`.
    fn apply(&self, task: usize, batch: RecordBatch) -> Result<RecordBatch> {
        self.metrics.add_in(task, batch.num_rows());
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
                let mask = crate::streaming::operators::null_as_false(mask);
                let with_op = match op {
                    Some(op) => {
                        let mut cols = rows.columns().to_vec();
                        cols.push(op);
                        let schema = crate::streaming::operators::with_op_column(&rows.schema());
                        RecordBatch::try_new(schema, cols)?
                    }
                    None => rows,
                };
                let out = filter_record_batch(&with_op, &mask)?;
                self.metrics.add_out(task, out.num_rows());
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
                    crate::streaming::operators::batch_with_schema(schema, cols)?
                }
            }
        };
        let out = match op {
            Some(op) => {
                let mut cols = out.columns().to_vec();
                cols.push(op);
                RecordBatch::try_new(crate::streaming::operators::with_op_column(&out.schema()), cols)?
            }
            None => out,
        };
        self.metrics.add_out(task, out.num_rows());
        Ok(out)
    }
}

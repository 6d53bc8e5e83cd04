//! Incremental operators over Arrow batches.
//!
//! Expressions (group keys, aggregate arguments, FILTER clauses) are
//! DataFusion `PhysicalExpr`s and aggregates are DataFusion accumulators:
//! the operators own only what is streaming-specific, namely which state a
//! row updates, when results are emitted and what is retracted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int8Array, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::window::{micros_to_ticks, ticks_to_micros};

type Result<T> = datafusion::error::Result<T>;

mod columnar;
mod join;
mod over;
mod session;
mod temporal;
mod topn;
mod updating;
mod upsert;
mod window;

pub use columnar::ColumnarAggregate;
pub use join::{JoinInput, JoinKind, JoinSpec, StreamingJoin, output_updating as join_output_updating};
pub use over::{OverAggregate, OverFrame, OverSpec};
pub use session::{SessionAggregate, SessionAggregateSpec, SessionLayout};
pub use temporal::{TemporalJoin, TemporalJoinSpec};
pub use topn::{OrderTerm, RankFunction, TopN, TopNSpec, topn_schema};
pub use updating::{AggregateSpec, UpdatingAggregate, retractable};
pub use upsert::{UpsertNormalize, UpsertSpec};
pub use window::{WindowAggregate, WindowAggregateSpec, WindowKey};

pub use crate::stream::{OP_COLUMN, with_op_column};

/// A filter mask in which NULL counts as false, as in SQL.
pub fn null_as_false(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        mask.clone()
    } else {
        arrow::compute::prep_null_mask_filter(mask)
    }
}

/// An updating batch split by its op column (last) into the rows it
/// inserts and the rows it deletes, both without the op column.
pub(crate) fn split_changes(batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch)> {
    let n = batch.num_columns();
    let ops = batch
        .column(n.saturating_sub(1))
        .as_any()
        .downcast_ref::<Int8Array>()
        .ok_or_else(|| DataFusionError::Internal(format!("updating batch without {OP_COLUMN}")))?;
    let rows = batch.project(&(0..n - 1).collect::<Vec<_>>())?;
    let inserts: BooleanArray = ops.values().iter().map(|o| Some(*o > 0)).collect();
    let deletes = arrow::compute::not(&inserts)?;
    Ok((
        filter_record_batch(&rows, &inserts)?,
        filter_record_batch(&rows, &deletes)?,
    ))
}

/// Timestamps (any unit) as microseconds; NULL stays NULL.
pub(crate) fn as_micros(a: &ArrayRef) -> Result<TimestampMicrosecondArray> {
    let tz = match a.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        other => {
            return Err(DataFusionError::Internal(format!(
                "a time is {other}, not a timestamp"
            )));
        }
    };
    let micros = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, tz))?;
    Ok(micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("cast to microseconds")
        .clone())
}

/// Evaluates an expression to an array of the batch's length.
pub fn eval(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    expr.evaluate(batch)?.into_array(batch.num_rows())
}

/// One aggregate of a GROUP BY: the DataFusion aggregate, its argument
/// expressions and its FILTER clause.
#[derive(Debug, Clone)]
pub struct AggExpr {
    pub func: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggExpr {
    fn groups_accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.func.groups_accumulator_supported() {
            self.func.create_groups_accumulator()
        } else {
            let f = self.func.clone();
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                f.create_accumulator()
            })))
        }
    }

    pub(crate) fn args(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.func.expressions().iter().map(|e| eval(e, batch)).collect()
    }

    pub(crate) fn filter(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        match &self.filter {
            None => Ok(None),
            Some(f) => {
                let a = eval(f, batch)?;
                let b = a
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| DataFusionError::Internal("FILTER is not boolean".into()))?;
                Ok(Some(b.clone()))
            }
        }
    }
}

/// What a keyed operator does with its inputs; the runtime handles
/// channels, barrier alignment, watermarks across inputs and metrics (see
/// `runtime::align`).
pub trait KeyedOperator: Send {
    /// Rows arrived on input `input` (numbered from 0 in the node's inputs).
    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()>;
    /// A progress step: emit pending changes. `watermark` (microseconds)
    /// is the least over every input; windows it passed close.
    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()>;
    /// Input `input`'s own watermark moved to `watermark` (before the
    /// progress step that follows). For operators whose state one input's
    /// time bounds (an interval join); others ignore it.
    fn on_input_watermark(&mut self, input: usize, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        let _ = (input, watermark, out);
        Ok(())
    }
    /// The watermark passed downstream after a progress step at
    /// `watermark` (the least over the inputs): the same, unless the
    /// operator's output can come behind it (an interval join whose output
    /// time trails the other input's by up to a bound). Must not go back.
    fn output_watermark(&self, watermark: i64) -> i64 {
        watermark
    }
    /// (rows, bytes) of state held.
    fn state_size(&self) -> (usize, usize);
    /// Late rows dropped since the last call.
    fn take_late(&mut self) -> u64 {
        0
    }
    /// State rows the operator has dropped so far because time made them
    /// useless (an interval join's rows past their bound, rows past the
    /// state TTL); counted since the task started.
    fn expired_rows(&self) -> u64 {
        0
    }
    /// What the operator says about its state beyond rows and bytes (an
    /// interval join: rows expired), for SHOW JOBS.
    fn detail(&self) -> Option<String> {
        None
    }
    /// The state as batches, for a checkpoint. The runtime calls it at a
    /// barrier, right after a progress step (no change is pending).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Err(DataFusionError::NotImplemented(
            "this operator's state is not checkpointed yet".into(),
        ))
    }
    /// For an incremental checkpoint: the state of what changed since the
    /// last [`Self::snapshot`], such that restoring the snapshot's batches
    /// followed by these gives the current state. Changes are cumulative
    /// (a second call repeats the first's groups). None: a full snapshot
    /// is due (most of the state changed) or the operator takes only full
    /// ones.
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        Ok(None)
    }
    /// Takes back what [`Self::snapshot`] returned (on a fresh operator).
    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.is_empty() {
            return Ok(());
        }
        Err(DataFusionError::NotImplemented(
            "this operator's state is not checkpointed yet".into(),
        ))
    }
}

/// One input of a keyed operator as the planner declared it.
#[derive(Debug, Clone)]
pub struct InputShape {
    pub schema: SchemaRef,
    /// Whether its rows carry the op column (retractions).
    pub updating: bool,
}

/// What a task's operator is built from: the node's inputs and output
/// schema. (Operators report late rows and state size through
/// [`KeyedOperator`]; the runtime keeps the metrics.)
pub struct BuildContext {
    pub inputs: Vec<InputShape>,
    pub schema: SchemaRef,
}

/// A keyed operator as planned: the one place that says how it is named,
/// described, partitioned and built. The planner makes one per node; the
/// runtime hash-exchanges each input by [`Self::keys`] and builds one
/// operator per task. A new operator is its file (operator and spec) plus
/// the planner arm that makes its spec.
pub trait OperatorSpec: std::fmt::Debug + Send + Sync {
    /// One line naming the operator (SHOW JOBS, EXPLAIN).
    fn label(&self) -> String;
    /// How it runs, in EXPLAIN's brackets.
    fn explain(&self) -> String;
    /// Per input, the expressions its rows are partitioned by (as many on
    /// every input).
    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>>;
    /// One task's operator.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>>;
    /// `streaming.state_ttl`, for operators that evict by it.
    fn set_state_ttl(&mut self, ttl: Option<std::time::Duration>) {
        let _ = ttl;
    }
    /// Whether the output starts with the first input's columns unchanged
    /// (so its event time passes through).
    fn keeps_input_columns(&self) -> bool {
        false
    }
    /// The output column every row to come has at or after the watermark
    /// the operator passes on (its event time), when it has one of its own
    /// making (an interval join's).
    fn event_time_column(&self) -> Option<usize> {
        None
    }
}

/// Expressions as a comma-separated list, for labels.
pub(crate) fn expr_list(exprs: &[Arc<dyn PhysicalExpr>]) -> String {
    exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

/// Aggregate function names as a comma-separated list, for labels.
pub(crate) fn agg_names(aggs: &[AggExpr]) -> String {
    aggs.iter()
        .map(|a| a.func.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn take_batch(batch: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch> {
    if batch.num_columns() == 0 {
        // count(*) reads no column; keep the row count.
        return Ok(RecordBatch::try_new_with_options(
            batch.schema(),
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(idx.len())),
        )?);
    }
    Ok(arrow::compute::take_record_batch(batch, idx)?)
}

/// Builds a batch of `schema` from columns whose field metadata or
/// nullability may differ slightly from what the planner declared.
pub fn batch_with_schema(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                cast(&c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    match RecordBatch::try_new(schema.clone(), columns.clone()) {
        Ok(b) => Ok(b),
        Err(_) => {
            // A field declared NOT NULL that holds NULLs (DataFusion's
            // nullability can be stricter than an accumulator's output):
            // relax rather than fail the job.
            let relaxed: Vec<Field> = schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            Ok(RecordBatch::try_new(Arc::new(Schema::new(relaxed)), columns)?)
        }
    }
}

/// Row-format encoding of group keys (none for a global aggregate).
pub(crate) fn key_converter(keys: &[Arc<dyn PhysicalExpr>], input: &Schema) -> Result<Option<RowConverter>> {
    if keys.is_empty() {
        return Ok(None);
    }
    let fields = keys
        .iter()
        .map(|k| Ok(SortField::new(k.data_type(input)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(RowConverter::new(fields)?))
}

pub(crate) fn key_schema(keys: &[Arc<dyn PhysicalExpr>], input: &Schema) -> Result<SchemaRef> {
    let fields = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Ok(Field::new(format!("k{i}"), k.data_type(input)?, true)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests;

//! Incremental operators over Arrow batches.
//!
//! Expressions (group keys, aggregate arguments, FILTER clauses) are
//! DataFusion `PhysicalExpr`s and aggregates are DataFusion accumulators:
//! the operators own only what is streaming-specific, namely which state a
//! row updates, when results are emitted and what is retracted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int8Array, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::metrics::NodeMetrics;
use super::window::{micros_to_ticks, ticks_to_micros};

type Result<T> = datafusion::error::Result<T>;

/// Name of the operation column that updating streams carry last:
/// `1` inserts the row, `-1` deletes it (an update is a delete and an insert).
pub const OP_COLUMN: &str = "__sluice_op";

/// The schema of an updating stream's batches: the rows plus the op column.
pub fn with_op_column(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(OP_COLUMN, DataType::Int8, false));
    Arc::new(Schema::new(fields))
}

/// A filter mask in which NULL counts as false, as in SQL.
pub fn null_as_false(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        mask.clone()
    } else {
        arrow::compute::prep_null_mask_filter(mask)
    }
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

/// What a keyed operator does with its input; the runtime handles channels,
/// watermark alignment across inputs and metrics.
pub trait KeyedOperator: Send {
    /// Rows arrived.
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()>;
    /// The watermark (microseconds) advanced to `watermark` on every input.
    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()>;
    /// (rows, bytes) of state held.
    fn state_size(&self) -> (usize, usize);
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

/// The schema-metadata key under which a window aggregate's snapshot keeps
/// its watermark.
const WATERMARK_META: &str = "sluice.watermark";

/// A snapshot batch: named columns, all nullable (`extra` as schema
/// metadata).
pub(crate) fn state_batch(
    names: Vec<String>,
    columns: Vec<ArrayRef>,
    extra: HashMap<String, String>,
    rows: usize,
) -> Result<RecordBatch> {
    let fields: Vec<Field> = names
        .into_iter()
        .zip(&columns)
        .map(|(n, c)| Field::new(n, c.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, extra));
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// The schema-metadata key under which a snapshot says how many state
/// columns each aggregate has (a sliding accumulator's state can be wider
/// than the aggregate's declared state fields).
pub(crate) const WIDTHS_META: &str = "sluice.state_widths";

pub(crate) fn widths_meta(widths: &[usize]) -> String {
    widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(",")
}

/// How many state columns each aggregate has in a snapshot batch.
pub(crate) fn state_widths(batch: &RecordBatch, aggs: usize) -> Result<Vec<usize>> {
    let bad = || DataFusionError::Internal("snapshot without its state widths".into());
    let meta = batch
        .schema()
        .metadata()
        .get(WIDTHS_META)
        .cloned()
        .ok_or_else(bad)?;
    let widths = meta
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|w| w.parse::<usize>().map_err(|_| bad()))
        .collect::<Result<Vec<_>>>()?;
    if widths.len() != aggs {
        return Err(bad());
    }
    Ok(widths)
}

/// Where the window of each row is found among the group keys.
#[derive(Debug, Clone, Copy)]
pub struct WindowKey {
    /// Index of the group key that is `window_start` or `window_end`.
    pub key: usize,
    /// Whether that key is the window end (else the start).
    pub is_end: bool,
    /// The window length, microseconds.
    pub size_us: i64,
    /// Unit of the window column.
    pub unit: TimeUnit,
}

struct WindowState {
    groups: Box<dyn GroupValues>,
    accs: Vec<Box<dyn GroupsAccumulator>>,
}

/// GROUP BY over windows: state per open window, emitted once (append-only)
/// when the watermark passes the window's end. Rows for windows that have
/// already closed are late: dropped and counted.
pub struct WindowAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_schema: SchemaRef,
    aggs: Vec<AggExpr>,
    window: WindowKey,
    output: SchemaRef,
    /// Open windows by end (microseconds).
    windows: BTreeMap<i64, WindowState>,
    watermark: i64,
    metrics: Arc<NodeMetrics>,
    scratch: Vec<usize>,
}

impl WindowAggregate {
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: &Schema,
        aggs: Vec<AggExpr>,
        window: WindowKey,
        output: SchemaRef,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self> {
        let key_schema = key_schema(&keys, input)?;
        Ok(Self {
            keys,
            key_schema,
            aggs,
            window,
            output,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
            metrics,
            scratch: Vec::new(),
        })
    }

    fn window_ends(&self, batch: &RecordBatch) -> Result<Int64Array> {
        let col = eval(&self.keys[self.window.key], batch)?;
        let ticks = cast(&col, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64");
        let size = micros_to_ticks(self.window.size_us, self.window.unit);
        let unit = self.window.unit;
        let is_end = self.window.is_end;
        Ok(ticks.unary(|t| ticks_to_micros(if is_end { t } else { t + size }, unit)))
    }

    fn new_window(&self) -> Result<WindowState> {
        Ok(WindowState {
            groups: new_group_values(self.key_schema.clone(), &GroupOrdering::None)?,
            accs: self
                .aggs
                .iter()
                .map(|a| a.groups_accumulator())
                .collect::<Result<_>>()?,
        })
    }

    /// Puts groups (`keys`) with accumulator states into window `end`.
    fn load_window(
        &mut self,
        end: i64,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        rows: usize,
    ) -> Result<()> {
        let mut state = self.new_window()?;
        let mut idx = Vec::new();
        state.groups.intern(keys, &mut idx)?;
        let total = state.groups.len();
        for (acc, st) in state.accs.iter_mut().zip(states) {
            acc.merge_batch(st, &idx, total)?;
        }
        debug_assert_eq!(idx.len(), rows);
        self.windows.insert(end, state);
        Ok(())
    }

    fn update(&mut self, end: i64, batch: &RecordBatch) -> Result<()> {
        if !self.windows.contains_key(&end) {
            let state = self.new_window()?;
            self.windows.insert(end, state);
        }
        let state = self.windows.get_mut(&end).expect("inserted above");
        let keys: Vec<ArrayRef> = self.keys.iter().map(|k| eval(k, batch)).collect::<Result<_>>()?;
        self.scratch.clear();
        state.groups.intern(&keys, &mut self.scratch)?;
        let total = state.groups.len();
        for (agg, acc) in self.aggs.iter().zip(state.accs.iter_mut()) {
            let values = agg.args(batch)?;
            let filter = agg.filter(batch)?;
            acc.update_batch(&values, &self.scratch, filter.as_ref(), total)?;
        }
        Ok(())
    }
}

impl KeyedOperator for WindowAggregate {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ends = self.window_ends(&batch)?;
        let wm = self.watermark;
        let (mut batch, mut ends) = (batch, ends);
        if ends.null_count() > 0 || ends.values().iter().any(|e| *e <= wm) {
            let keep: BooleanArray = ends
                .iter()
                .map(|e| Some(matches!(e, Some(e) if e > wm)))
                .collect();
            let kept = keep.true_count();
            self.metrics.add_late((batch.num_rows() - kept) as u64);
            batch = filter_record_batch(&batch, &keep)?;
            ends = arrow::compute::filter(&ends, &keep)?
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("filtered Int64")
                .clone();
            if batch.num_rows() == 0 {
                return Ok(());
            }
        }
        // Usually a batch spans one or two windows.
        let mut distinct: Vec<i64> = Vec::new();
        for e in ends.values().iter() {
            if !distinct.contains(e) {
                distinct.push(*e);
                if distinct.len() > 64 {
                    break;
                }
            }
        }
        if distinct.len() == 1 {
            self.update(distinct[0], &batch)?;
        } else {
            // Partition rows by window: sort by end, then slice runs.
            let order = arrow::compute::sort_to_indices(&ends, None, None)?;
            let sorted = take_batch(&batch, &order)?;
            let sorted_ends = take(&ends, &order, None)?;
            let sorted_ends = sorted_ends.as_any().downcast_ref::<Int64Array>().expect("Int64");
            let v = sorted_ends.values();
            let mut start = 0;
            while start < v.len() {
                let mut end = start + 1;
                while end < v.len() && v[end] == v[start] {
                    end += 1;
                }
                self.update(v[start], &sorted.slice(start, end - start))?;
                start = end;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        // Never backwards: after a restore the inputs start low again.
        self.watermark = self.watermark.max(watermark);
        let watermark = self.watermark;
        while let Some(entry) = self.windows.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            let mut state = entry.remove();
            let mut columns = state.groups.emit(EmitTo::All)?;
            for acc in state.accs.iter_mut() {
                columns.push(acc.evaluate(EmitTo::All)?);
            }
            out.push(batch_with_schema(&self.output, columns)?);
        }
        Ok(())
    }

    fn state_size(&self) -> (usize, usize) {
        let mut rows = 0;
        let mut bytes = 0;
        for s in self.windows.values() {
            rows += s.groups.len();
            bytes += s.groups.size() + s.accs.iter().map(|a| a.size()).sum::<usize>();
        }
        (rows, bytes)
    }

    /// One batch per open window: its end, the group keys and every
    /// accumulator's state columns; the watermark in the schema metadata.
    /// Taking a groups accumulator's state empties it, so each window is
    /// loaded back right away.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut extra = HashMap::from([(WATERMARK_META.to_string(), self.watermark.to_string())]);
        let mut out = Vec::new();
        let ends: Vec<i64> = self.windows.keys().copied().collect();
        for end in ends {
            let mut state = self.windows.remove(&end).expect("listed above");
            let rows = state.groups.len();
            let keys = state.groups.emit(EmitTo::All)?;
            let states = state
                .accs
                .iter_mut()
                .map(|a| a.state(EmitTo::All))
                .collect::<Result<Vec<_>>>()?;
            self.load_window(end, &keys, &states, rows)?;
            let widths: Vec<usize> = states.iter().map(Vec::len).collect();
            extra.insert(WIDTHS_META.to_string(), widths_meta(&widths));
            let mut names = vec!["end".to_string()];
            let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![end; rows]))];
            for (i, k) in keys.into_iter().enumerate() {
                names.push(format!("k{i}"));
                cols.push(k);
            }
            for (a, st) in states.into_iter().enumerate() {
                for (j, c) in st.into_iter().enumerate() {
                    names.push(format!("a{a}_{j}"));
                    cols.push(c);
                }
            }
            out.push(state_batch(names, cols, extra.clone(), rows)?);
        }
        if out.is_empty() {
            out.push(state_batch(vec![], vec![], extra, 0)?);
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let n_keys = self.keys.len();
        for b in state {
            if let Some(w) = b.schema().metadata().get(WATERMARK_META) {
                let w: i64 = w
                    .parse()
                    .map_err(|_| DataFusionError::Internal(format!("bad watermark in snapshot: {w}")))?;
                self.watermark = self.watermark.max(w);
            }
            if b.num_rows() == 0 {
                continue;
            }
            let end = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| DataFusionError::Internal("window snapshot without its end".into()))?
                .value(0);
            let widths = state_widths(&b, self.aggs.len())?;
            let keys = b.columns()[1..1 + n_keys].to_vec();
            let mut at = 1 + n_keys;
            let mut states = Vec::new();
            for w in &widths {
                states.push(b.columns()[at..at + w].to_vec());
                at += w;
            }
            self.load_window(end, &keys, &states, b.num_rows())?;
        }
        Ok(())
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

/// GROUP BY without windows over an append-only input: an updating stream.
/// Changed groups are emitted at each watermark (a delete of the previous
/// row and an insert of the new one), so downstream sees a consistent
/// change set per progress step.
pub struct UpdatingAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Whether the input retracts (its batches carry the op column).
    input_updating: bool,
    /// Net rows per group: a group whose rows were all retracted is
    /// deleted from the output.
    rows: Vec<i64>,
    aggs: Vec<AggExpr>,
    output: SchemaRef,
    converter: Option<RowConverter>,
    /// Group id by key (hashbrown with its fast default hasher, as DataFusion uses).
    index: datafusion::common::HashMap<Box<[u8]>, usize>,
    key_rows: Option<Rows>,
    /// Per group its accumulators; empty for a group restored from a
    /// checkpoint and not touched since (see `origin`).
    accs: Vec<Vec<Box<dyn Accumulator>>>,
    emitted: Vec<Option<Vec<ScalarValue>>>,
    dirty: Vec<usize>,
    is_dirty: Vec<bool>,
    state_bytes: usize,
    /// Restored state batches. A restore only indexes the groups' keys; a
    /// group's accumulators are made from its row here when a new row
    /// first reaches it (so a restore costs about as much as reading the
    /// keys, whatever the number and kind of aggregates).
    restored: Vec<RecordBatch>,
    /// Per group: its (batch, row) in `restored` while not made yet.
    origin: Vec<Option<(u32, u32)>>,
    /// Groups with net rows above zero (the output's row count).
    live: usize,
    /// State columns per aggregate in `restored`.
    restored_widths: Vec<usize>,
    /// Groups changed since the last full snapshot (for incremental ones),
    /// and the groups incremental snapshots wrote since.
    changed: Vec<bool>,
    changed_list: Vec<usize>,
    written_since_full: usize,
}

impl UpdatingAggregate {
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: &Schema,
        input_updating: bool,
        aggs: Vec<AggExpr>,
        output: SchemaRef,
    ) -> Result<Self> {
        let converter = key_converter(&keys, input)?;
        let key_rows = converter.as_ref().map(|c| c.empty_rows(0, 0));
        Ok(Self {
            keys,
            input_updating,
            rows: Vec::new(),
            aggs,
            output: with_op_column(&output),
            converter,
            index: Default::default(),
            key_rows,
            accs: Vec::new(),
            emitted: Vec::new(),
            dirty: Vec::new(),
            is_dirty: Vec::new(),
            state_bytes: 0,
            restored: Vec::new(),
            origin: Vec::new(),
            restored_widths: Vec::new(),
            live: 0,
            changed: Vec::new(),
            changed_list: Vec::new(),
            written_since_full: 0,
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggs
            .iter()
            .map(|a| {
                if self.input_updating {
                    retracting_accumulator(a)
                } else {
                    a.func.create_accumulator()
                }
            })
            .collect()
    }

    /// Makes the accumulators of a group restored from a checkpoint from
    /// its state row, and what it emitted last from them.
    fn materialize(&mut self, g: usize) -> Result<()> {
        let Some((b, i)) = self.origin[g].take() else {
            return Ok(());
        };
        let mut accs = self.new_accumulators()?;
        let batch = &self.restored[b as usize];
        let mut at = batch.num_columns() - self.restored_widths.iter().sum::<usize>();
        for (acc, w) in accs.iter_mut().zip(&self.restored_widths) {
            let st: Vec<ArrayRef> = batch.columns()[at..at + w]
                .iter()
                .map(|c| c.slice(i as usize, 1))
                .collect();
            acc.merge_batch(&st)?;
            self.state_bytes += acc.size();
            at += w;
        }
        if self.rows[g] > 0 {
            let values = accs
                .iter_mut()
                .map(|a| a.evaluate())
                .collect::<Result<Vec<_>>>()?;
            self.emitted[g] = Some(values);
        }
        self.accs[g] = accs;
        Ok(())
    }

    fn new_group(&mut self) -> Result<usize> {
        let accs = self.new_accumulators()?;
        self.rows.push(0);
        self.accs.push(accs);
        self.emitted.push(None);
        self.is_dirty.push(false);
        self.origin.push(None);
        self.changed.push(false);
        Ok(self.accs.len() - 1)
    }

    fn group_indices(&mut self, batch: &RecordBatch) -> Result<Vec<u32>> {
        let n = batch.num_rows();
        let Some(converter) = &self.converter else {
            if self.accs.is_empty() {
                self.new_group()?;
            }
            self.materialize(0)?;
            return Ok(vec![0; n]);
        };
        let keys: Vec<ArrayRef> = self.keys.iter().map(|k| eval(k, batch)).collect::<Result<_>>()?;
        let rows = converter.convert_columns(&keys)?;
        let mut out = Vec::with_capacity(n);
        for row in rows.iter() {
            let bytes = row.as_ref();
            let g = match self.index.get(bytes) {
                Some(g) => *g,
                None => {
                    let g = self.new_group()?;
                    self.index.insert(bytes.into(), g);
                    self.key_rows.as_mut().expect("keyed").push(row);
                    self.state_bytes += bytes.len() + 64;
                    g
                }
            };
            out.push(g as u32);
        }
        if !self.restored.is_empty() {
            for &g in &out {
                self.materialize(g as usize)?;
            }
        }
        Ok(out)
    }

    fn flush(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut groups: Vec<usize> = Vec::new();
        let mut ops: Vec<i8> = Vec::new();
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggs.len()];
        let dirty = std::mem::take(&mut self.dirty);
        for g in dirty {
            self.is_dirty[g] = false;
            let old = self.emitted[g].take();
            if self.rows[g] <= 0 {
                // Every row of the group was retracted: the group is gone.
                if let Some(old) = old {
                    groups.push(g);
                    ops.push(-1);
                    for (col, v) in values.iter_mut().zip(old) {
                        col.push(v);
                    }
                }
                continue;
            }
            let new: Vec<ScalarValue> = self.accs[g]
                .iter_mut()
                .map(|a| a.evaluate())
                .collect::<Result<_>>()?;
            if old.as_ref() == Some(&new) {
                self.emitted[g] = old;
                continue;
            }
            if let Some(old) = old {
                groups.push(g);
                ops.push(-1);
                for (col, v) in values.iter_mut().zip(old) {
                    col.push(v);
                }
            }
            groups.push(g);
            ops.push(1);
            for (col, v) in values.iter_mut().zip(new.iter().cloned()) {
                col.push(v);
            }
            self.emitted[g] = Some(new);
        }
        if groups.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = match (&self.converter, &self.key_rows) {
            (Some(c), Some(rows)) => c.convert_rows(groups.iter().map(|g| rows.row(*g)))?,
            _ => vec![],
        };
        for (agg, col) in self.aggs.iter().zip(values) {
            let ty = agg.func.field().data_type().clone();
            if col.is_empty() {
                columns.push(arrow::array::new_empty_array(&ty));
            } else {
                columns.push(ScalarValue::iter_to_array(col)?);
            }
        }
        columns.push(Arc::new(Int8Array::from(ops)));
        out.push(batch_with_schema(&self.output, columns)?);
        Ok(())
    }
}

impl UpdatingAggregate {
    /// Feeds rows of one kind (inserts, or deletes when `retract`) to the
    /// accumulators of their groups.
    fn accumulate(&mut self, batch: &RecordBatch, retract: bool) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let gidx = self.group_indices(batch)?;
        // Rows of one group side by side, so each accumulator sees one slice.
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.sort_by_key(|&i| gidx[i as usize]);
        let order = UInt32Array::from(order);
        let sorted = take_batch(batch, &order)?;
        let sorted_groups: Vec<u32> = order.values().iter().map(|&i| gidx[i as usize]).collect();
        let mut runs: Vec<(u32, usize, usize)> = Vec::new();
        let mut start = 0;
        while start < sorted_groups.len() {
            let g = sorted_groups[start];
            let mut end = start + 1;
            while end < sorted_groups.len() && sorted_groups[end] == g {
                end += 1;
            }
            runs.push((g, start, end));
            start = end;
        }
        for (k, agg) in self.aggs.iter().enumerate() {
            let args = agg.args(&sorted)?;
            let filter = agg.filter(&sorted)?;
            for &(g, start, end) in &runs {
                let mut slice: Vec<ArrayRef> = args.iter().map(|a| a.slice(start, end - start)).collect();
                if let Some(f) = &filter {
                    let f = null_as_false(&f.slice(start, end - start));
                    slice = slice
                        .iter()
                        .map(|a| arrow::compute::filter(a, &f))
                        .collect::<std::result::Result<_, _>>()?;
                }
                let acc = &mut self.accs[g as usize][k];
                let before = acc.size();
                if retract {
                    acc.retract_batch(&slice)?;
                } else {
                    acc.update_batch(&slice)?;
                }
                self.state_bytes = (self.state_bytes + acc.size()).saturating_sub(before);
            }
        }
        for &(g, start, end) in &runs {
            let g = g as usize;
            let n = (end - start) as i64;
            let was = self.rows[g] > 0;
            self.rows[g] += if retract { -n } else { n };
            match (was, self.rows[g] > 0) {
                (false, true) => self.live += 1,
                (true, false) => self.live -= 1,
                _ => {}
            }
            if !self.is_dirty[g] {
                self.is_dirty[g] = true;
                self.dirty.push(g);
            }
            if !self.changed[g] {
                self.changed[g] = true;
                self.changed_list.push(g);
            }
        }
        Ok(())
    }
}

impl KeyedOperator for UpdatingAggregate {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.input_updating {
            return self.accumulate(&batch, false);
        }
        let n = batch.num_columns();
        let ops = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<Int8Array>()
            .ok_or_else(|| DataFusionError::Internal("updating batch without op column".into()))?
            .clone();
        let rows = batch.project(&(0..n - 1).collect::<Vec<_>>())?;
        let inserts: BooleanArray = ops.values().iter().map(|o| Some(*o > 0)).collect();
        let deletes = arrow::compute::not(&inserts)?;
        // Deletes and inserts of one batch commute (every accumulator used
        // here keeps a sum, a count or a multiset), but inserts go first:
        // a row inserted and deleted in one batch (a changelog source's
        // create and update) must not drive a count below zero on the way.
        self.accumulate(&filter_record_batch(&rows, &inserts)?, false)?;
        self.accumulate(&filter_record_batch(&rows, &deletes)?, true)
    }

    fn on_watermark(&mut self, _watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.flush(out)
    }

    fn state_size(&self) -> (usize, usize) {
        (self.live, self.state_bytes)
    }

    /// One row per group: the keys, the net row count and each
    /// accumulator's state. What was emitted is the current value (the
    /// runtime flushes before a snapshot), so it is not stored. Groups
    /// restored and not touched since are copied from their restored rows.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        for g in self.changed_list.drain(..) {
            self.changed[g] = false;
        }
        self.written_since_full = 0;
        let n = self.accs.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let all: Vec<usize> = (0..n).collect();
        self.snapshot_of(&all)
    }

    /// The groups changed since the last full snapshot, in its layout; a
    /// restore of both takes the later row of a group. A full snapshot
    /// instead once half the groups changed, or once the incremental ones
    /// since the last full one wrote more groups than there are.
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let changed = self.changed_list.len();
        let n = self.accs.len();
        if changed * 2 > n || self.written_since_full + changed > n {
            return Ok(None);
        }
        self.written_since_full += changed;
        if changed == 0 {
            // Nothing changed: the full snapshot alone stands.
            return Ok(Some(vec![]));
        }
        let mut list = self.changed_list.clone();
        list.sort_unstable();
        self.snapshot_of(&list).map(Some)
    }

    /// Indexes the restored groups' keys and keeps their rows; each
    /// group's accumulators are made when a row first reaches it. A group
    /// met again (an incremental snapshot after its full one) takes the
    /// later row.
    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.restore_batches(state)
    }
}

impl UpdatingAggregate {
    /// The snapshot rows of `groups` (ascending).
    fn snapshot_of(&mut self, groups: &[usize]) -> Result<Vec<RecordBatch>> {
        let n = groups.len();
        let mut names = Vec::new();
        let mut cols: Vec<ArrayRef> = match (&self.converter, &self.key_rows) {
            (Some(c), Some(rows)) => c.convert_rows(groups.iter().map(|&g| rows.row(g)))?,
            _ => vec![],
        };
        for i in 0..cols.len() {
            names.push(format!("k{i}"));
        }
        names.push("rows".into());
        cols.push(Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|&g| self.rows[g]),
        )));
        // Where each group's state comes from: (restored batch, row), or
        // (one past the restored batches, its place among made groups).
        let made: Vec<usize> = groups
            .iter()
            .copied()
            .filter(|g| self.origin[*g].is_none())
            .collect();
        let sources: Vec<(usize, usize)> = {
            let mut next = 0;
            groups
                .iter()
                .map(|&g| match self.origin[g] {
                    Some((b, i)) => (b as usize, i as usize),
                    None => {
                        next += 1;
                        (self.restored.len(), next - 1)
                    }
                })
                .collect()
        };
        let mut restored_at = self.restored.first().map_or(0, |b| {
            b.num_columns() - self.restored_widths.iter().sum::<usize>()
        });
        let mut widths = Vec::new();
        for k in 0..self.aggs.len() {
            let states = made
                .iter()
                .map(|&g| self.accs[g][k].state())
                .collect::<Result<Vec<_>>>()
                .map_err(|e| {
                    DataFusionError::NotImplemented(format!(
                        "{} over an updating input is not checkpointed yet ({e})",
                        self.aggs[k].func.name()
                    ))
                })?;
            let width = match (states.first(), self.restored_widths.get(k)) {
                (Some(s), Some(w)) if s.len() != *w => {
                    return Err(DataFusionError::Internal(format!(
                        "aggregate {k}: {} state columns, restored with {w}",
                        s.len()
                    )));
                }
                (Some(s), _) => s.len(),
                (None, Some(w)) => *w,
                (None, None) => 0,
            };
            widths.push(width);
            for j in 0..width {
                names.push(format!("a{k}_{j}"));
                let made_col = (!states.is_empty())
                    .then(|| ScalarValue::iter_to_array(states.iter().map(|s| s[j].clone())))
                    .transpose()?;
                if self.restored.is_empty() {
                    cols.push(made_col.expect("every group is made"));
                    continue;
                }
                let ty = self.restored[0].column(restored_at + j).data_type().clone();
                let made_col = match made_col {
                    Some(c) if c.data_type() != &ty => Some(cast(&c, &ty)?),
                    other => other,
                };
                let mut arrays: Vec<&dyn Array> = self
                    .restored
                    .iter()
                    .map(|b| b.column(restored_at + j).as_ref())
                    .collect();
                if let Some(c) = &made_col {
                    arrays.push(c.as_ref());
                }
                cols.push(arrow::compute::interleave(&arrays, &sources)?);
            }
            restored_at += width;
        }
        let extra = HashMap::from([(WIDTHS_META.to_string(), widths_meta(&widths))]);
        Ok(vec![state_batch(names, cols, extra, n)?])
    }

    fn restore_batches(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        for b in state {
            let widths = state_widths(&b, self.aggs.len())?;
            if !self.restored.is_empty() && widths != self.restored_widths {
                return Err(DataFusionError::Internal(
                    "aggregate snapshot batches disagree on their state columns".into(),
                ));
            }
            self.restored_widths = widths;
            let n_keys = if self.converter.is_some() {
                self.keys.len()
            } else {
                0
            };
            let keys = match &self.converter {
                Some(c) => Some(c.convert_columns(&b.columns()[..n_keys])?),
                None => None,
            };
            let rows = b
                .column(n_keys)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| DataFusionError::Internal("aggregate snapshot without row counts".into()))?
                .clone();
            let at = self.restored.len() as u32;
            let n = b.num_rows();
            self.accs.reserve(n);
            self.rows.reserve(n);
            self.emitted.reserve(n);
            self.is_dirty.reserve(n);
            self.origin.reserve(n);
            self.index.reserve(n);
            for i in 0..n {
                // A group restored before (from the full snapshot) takes
                // this later row.
                let known = match &keys {
                    Some(keys) => self.index.get(keys.row(i).as_ref()).copied(),
                    None => (!self.accs.is_empty()).then_some(0),
                };
                if let Some(g) = known {
                    self.live -= usize::from(self.rows[g] > 0);
                    self.rows[g] = rows.value(i);
                    self.live += usize::from(rows.value(i) > 0);
                    self.origin[g] = Some((at, i as u32));
                    self.accs[g] = Vec::new();
                    continue;
                }
                let g = self.accs.len();
                self.accs.push(Vec::new());
                self.rows.push(rows.value(i));
                self.live += usize::from(rows.value(i) > 0);
                self.emitted.push(None);
                self.is_dirty.push(false);
                self.origin.push(Some((at, i as u32)));
                self.changed.push(false);
                if let Some(keys) = &keys {
                    let row = keys.row(i);
                    self.index.insert(row.as_ref().into(), g);
                    self.key_rows.as_mut().expect("keyed").push(row);
                    self.state_bytes += row.as_ref().len() + 64;
                }
            }
            self.state_bytes += b.get_array_memory_size();
            self.restored.push(b);
        }
        Ok(())
    }
}

/// Whether an aggregate can take retractions here, and how: min, max and
/// DISTINCT aggregates keep a multiset of their inputs; the rest use
/// DataFusion's retractable (sliding-window) accumulators.
pub fn retractable(agg: &AggExpr) -> std::result::Result<(), String> {
    if multiset_kind(agg).is_some() {
        return Ok(());
    }
    if agg.func.is_distinct() {
        return Err(format!(
            "{}: DISTINCT over an updating input (a GROUP BY without windows) is supported for count and string_agg only",
            agg.func.name()
        ));
    }
    match agg.func.create_sliding_accumulator() {
        Ok(acc) if acc.supports_retract_batch() => Ok(()),
        _ => Err(format!(
            "{} can't take retractions, so it can't aggregate an updating input (a GROUP BY without \
             windows) yet; count, sum, avg, min, max, bool_and, bool_or, string_agg and count(DISTINCT) can",
            agg.func.fun().name()
        )),
    }
}

fn multiset_kind(agg: &AggExpr) -> Option<MultisetKind> {
    let name = agg.func.fun().name().to_ascii_lowercase();
    match (name.as_str(), agg.func.is_distinct()) {
        // false < true: bool_and is the least value, bool_or the greatest.
        ("min" | "bool_and", _) => Some(MultisetKind::Min),
        ("max" | "bool_or", _) => Some(MultisetKind::Max),
        ("count", true) => Some(MultisetKind::CountDistinct),
        ("string_agg", distinct) => {
            // The delimiter is the second argument, a constant.
            let args = agg.func.expressions();
            let delimiter = args.get(1).and_then(|d| {
                d.downcast_ref::<datafusion::physical_expr::expressions::Literal>()
                    .and_then(|l| match l.value() {
                        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                            Some(s.clone().unwrap_or_default())
                        }
                        _ => None,
                    })
            })?;
            Some(MultisetKind::StringAgg { delimiter, distinct })
        }
        _ => None,
    }
}

fn retracting_accumulator(agg: &AggExpr) -> Result<Box<dyn Accumulator>> {
    match multiset_kind(agg) {
        Some(kind) => {
            let data_type = agg.func.field().data_type().clone();
            // The type of the values kept: min / max / string_agg return
            // their input's type; count(DISTINCT) keeps a list of inputs.
            let value_type = match &kind {
                MultisetKind::CountDistinct => {
                    match agg.func.state_fields()?.first().map(|f| f.data_type().clone()) {
                        Some(DataType::List(f) | DataType::LargeList(f)) => f.data_type().clone(),
                        Some(other) => other,
                        None => DataType::Null,
                    }
                }
                _ => data_type.clone(),
            };
            Ok(Box::new(MultisetAccumulator {
                kind,
                data_type,
                value_type,
                values: BTreeMap::new(),
                bytes: 0,
            }))
        }
        None => agg.func.create_sliding_accumulator(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MultisetKind {
    Min,
    Max,
    CountDistinct,
    /// The present values joined in value order (SQL leaves the order of
    /// string_agg without ORDER BY unspecified).
    StringAgg {
        delimiter: String,
        distinct: bool,
    },
}

/// A value ordered for a BTreeMap (ScalarValue is only partially ordered;
/// values of one column always compare).
#[derive(Debug, Clone, PartialEq)]
struct OrdScalar(ScalarValue);

impl Eq for OrdScalar {}

impl PartialOrd for OrdScalar {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdScalar {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.partial_cmp(&other.0).unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// min / max / count(DISTINCT) over inputs that can be retracted: a
/// multiset of the values (with counts), so that retracting the current
/// minimum exposes the next one.
#[derive(Debug)]
struct MultisetAccumulator {
    kind: MultisetKind,
    data_type: DataType,
    /// The type of the values in the multiset (its state's list type).
    value_type: DataType,
    values: BTreeMap<OrdScalar, i64>,
    bytes: usize,
}

impl MultisetAccumulator {
    fn add(&mut self, values: &[ArrayRef], delta: i64) -> Result<()> {
        let a = &values[0];
        for i in 0..a.len() {
            if a.is_null(i) {
                continue;
            }
            self.add_value(ScalarValue::try_from_array(a, i)?, delta);
        }
        Ok(())
    }

    fn add_value(&mut self, v: ScalarValue, delta: i64) {
        let size = v.size();
        let entry = self.values.entry(OrdScalar(v.clone())).or_insert_with(|| 0);
        if *entry == 0 {
            self.bytes += size + 32;
        }
        *entry += delta;
        if *entry == 0 {
            self.values.remove(&OrdScalar(v));
            self.bytes = self.bytes.saturating_sub(size + 32);
        }
    }
}

impl Accumulator for MultisetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(values, 1)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(values, -1)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // Counts can dip below zero inside a batch (a delete before its
        // insert); only positive ones are present values.
        let mut present = self.values.iter().filter(|(_, c)| **c > 0).map(|(v, _)| &v.0);
        Ok(match &self.kind {
            MultisetKind::Min => match present.next() {
                Some(v) => v.clone(),
                None => ScalarValue::try_from(&self.data_type)?,
            },
            MultisetKind::Max => match present.next_back() {
                Some(v) => v.clone(),
                None => ScalarValue::try_from(&self.data_type)?,
            },
            MultisetKind::CountDistinct => ScalarValue::Int64(Some(present.count() as i64)),
            MultisetKind::StringAgg { delimiter, distinct } => {
                let mut parts: Vec<String> = Vec::new();
                for (v, c) in self.values.iter().filter(|(_, c)| **c > 0) {
                    let s = match &v.0 {
                        ScalarValue::Utf8(Some(s))
                        | ScalarValue::LargeUtf8(Some(s))
                        | ScalarValue::Utf8View(Some(s)) => s.clone(),
                        other => other.to_string(),
                    };
                    let times = if *distinct { 1 } else { *c as usize };
                    parts.extend(std::iter::repeat_n(s, times));
                }
                let joined = (!parts.is_empty()).then(|| parts.join(delimiter));
                match &self.data_type {
                    DataType::LargeUtf8 => ScalarValue::LargeUtf8(joined),
                    DataType::Utf8View => ScalarValue::Utf8View(joined),
                    _ => ScalarValue::Utf8(joined),
                }
            }
        })
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bytes
    }

    /// Two lists: the distinct values and their counts (a checkpoint keeps
    /// the multiset whole, so retractions after a restore still find the
    /// values they take back).
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: ArrayRef = if self.values.is_empty() {
            arrow::array::new_empty_array(&self.value_type)
        } else {
            let a = ScalarValue::iter_to_array(self.values.keys().map(|v| v.0.clone()))?;
            if a.data_type() == &self.value_type {
                a
            } else {
                cast(&a, &self.value_type)?
            }
        };
        let counts: ArrayRef = Arc::new(Int64Array::from_iter_values(self.values.values().copied()));
        Ok(vec![
            datafusion::common::utils::SingleRowListArrayBuilder::new(values).build_list_scalar(),
            datafusion::common::utils::SingleRowListArrayBuilder::new(counts).build_list_scalar(),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        use arrow::array::AsArray;
        let (values, counts) = match states {
            [v, c] => (v.as_list::<i32>(), c.as_list::<i32>()),
            _ => {
                return Err(DataFusionError::Internal(
                    "a multiset state is two lists: values and counts".into(),
                ));
            }
        };
        for row in 0..values.len() {
            if values.is_null(row) || counts.is_null(row) {
                continue;
            }
            let v = values.value(row);
            let c = counts.value(row);
            let c = c
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .ok_or_else(|| DataFusionError::Internal("multiset counts are not Int64".into()))?;
            for i in 0..v.len() {
                self.add_value(ScalarValue::try_from_array(&v, i)?, c.value(i));
            }
        }
        Ok(())
    }
}

/// Where a session aggregate finds the window columns among its keys and
/// in its output.
#[derive(Debug, Clone)]
pub struct SessionLayout {
    /// Output position of each non-window key.
    pub key_pos: Vec<usize>,
    /// Output positions of `window_start` / `window_end`, if grouped.
    pub start_pos: Option<usize>,
    pub end_pos: Option<usize>,
    /// The grouped window column (a row's own window bound).
    pub time: Arc<dyn PhysicalExpr>,
    /// Whether `time` is `window_end` (else `window_start`).
    pub time_is_end: bool,
    /// The gap, microseconds, and the unit of the time column.
    pub gap_us: i64,
    pub unit: TimeUnit,
}

struct Session {
    start: i64,
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
}

/// GROUP BY over SESSION windows: per key, rows closer than the gap merge
/// into one session (merging accumulator states when a row bridges two);
/// a session is emitted, append-only, when the watermark passes its end.
pub struct SessionAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    layout: SessionLayout,
    aggs: Vec<AggExpr>,
    output: SchemaRef,
    converter: Option<RowConverter>,
    sessions: HashMap<Box<[u8]>, Vec<Session>>,
    open: usize,
    watermark: i64,
    metrics: Arc<NodeMetrics>,
}

impl SessionAggregate {
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: &Schema,
        layout: SessionLayout,
        aggs: Vec<AggExpr>,
        output: SchemaRef,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self> {
        let converter = key_converter(&keys, input)?;
        Ok(Self {
            keys,
            layout,
            aggs,
            output,
            converter,
            sessions: HashMap::new(),
            open: 0,
            watermark: i64::MIN,
            metrics,
        })
    }

    fn new_accs(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggs.iter().map(|a| a.func.create_accumulator()).collect()
    }
}

fn merge_into(target: &mut [Box<dyn Accumulator>], from: &mut [Box<dyn Accumulator>]) -> Result<()> {
    for (t, f) in target.iter_mut().zip(from.iter_mut()) {
        let state: Vec<ArrayRef> = f
            .state()?
            .into_iter()
            .map(|v| v.to_array())
            .collect::<Result<_>>()?;
        t.merge_batch(&state)?;
    }
    Ok(())
}

impl KeyedOperator for SessionAggregate {
    /// One row per open session: the key columns, the session's start and
    /// end, and each accumulator's state; the watermark in the metadata.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(self.open);
        let (mut starts, mut ends) = (Vec::with_capacity(self.open), Vec::with_capacity(self.open));
        let mut states: Vec<Vec<Vec<ScalarValue>>> = vec![Vec::with_capacity(self.open); self.aggs.len()];
        for (key, list) in self.sessions.iter_mut() {
            for s in list.iter_mut() {
                keys.push(key);
                starts.push(s.start);
                ends.push(s.end);
                for (k, acc) in s.accs.iter_mut().enumerate() {
                    states[k].push(acc.state()?);
                }
            }
        }
        let n = starts.len();
        let extra = HashMap::from([(WATERMARK_META.to_string(), self.watermark.to_string())]);
        let mut names = Vec::new();
        let mut cols: Vec<ArrayRef> = match &self.converter {
            Some(c) => {
                let parser = c.parser();
                c.convert_rows(keys.iter().map(|k| parser.parse(k)))?
            }
            None => vec![],
        };
        for i in 0..cols.len() {
            names.push(format!("k{i}"));
        }
        names.push("start".into());
        cols.push(Arc::new(Int64Array::from(starts)));
        names.push("end".into());
        cols.push(Arc::new(Int64Array::from(ends)));
        let mut widths = Vec::new();
        for (k, agg) in self.aggs.iter().enumerate() {
            let width = match states[k].first() {
                Some(s) => s.len(),
                None => agg.func.state_fields()?.len(),
            };
            widths.push(width);
            for j in 0..width {
                names.push(format!("a{k}_{j}"));
                cols.push(if n == 0 {
                    let f = agg.func.state_fields()?;
                    arrow::array::new_empty_array(f[j].data_type())
                } else {
                    ScalarValue::iter_to_array(states[k].iter().map(|s| s[j].clone()))?
                });
            }
        }
        let mut extra = extra;
        extra.insert(WIDTHS_META.to_string(), widths_meta(&widths));
        Ok(vec![state_batch(names, cols, extra, n)?])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        for b in state {
            if let Some(w) = b.schema().metadata().get(WATERMARK_META) {
                let w: i64 = w
                    .parse()
                    .map_err(|_| DataFusionError::Internal(format!("bad watermark in snapshot: {w}")))?;
                self.watermark = self.watermark.max(w);
            }
            let widths = state_widths(&b, self.aggs.len())?;
            let n_keys = if self.converter.is_some() {
                self.keys.len()
            } else {
                0
            };
            let rows = match &self.converter {
                Some(c) => Some(c.convert_columns(&b.columns()[..n_keys])?),
                None => None,
            };
            let int = |i: usize| -> Result<Int64Array> {
                Ok(b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| DataFusionError::Internal("session snapshot without bounds".into()))?
                    .clone())
            };
            let (starts, ends) = (int(n_keys)?, int(n_keys + 1)?);
            for i in 0..b.num_rows() {
                let key: Box<[u8]> = match &rows {
                    Some(r) => r.row(i).as_ref().into(),
                    None => Box::new([]),
                };
                let mut accs = self.new_accs()?;
                let mut at = n_keys + 2;
                for (acc, w) in accs.iter_mut().zip(&widths) {
                    let st: Vec<ArrayRef> = b.columns()[at..at + w].iter().map(|c| c.slice(i, 1)).collect();
                    acc.merge_batch(&st)?;
                    at += w;
                }
                let list = self.sessions.entry(key).or_default();
                let s = Session {
                    start: starts.value(i),
                    end: ends.value(i),
                    accs,
                };
                let at = list.partition_point(|x| x.start < s.start);
                list.insert(at, s);
                self.open += 1;
            }
        }
        Ok(())
    }

    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let gap = micros_to_ticks(self.layout.gap_us, self.layout.unit).max(1);
        let times = cast(&eval(&self.layout.time, &batch)?, &DataType::Int64)?;
        let times = times
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("Int64")
            .clone();
        let keys: Vec<ArrayRef> = self.keys.iter().map(|k| eval(k, &batch)).collect::<Result<_>>()?;
        let rows = match &self.converter {
            Some(c) => Some(c.convert_columns(&keys)?),
            None => None,
        };
        let args: Vec<Vec<ArrayRef>> = self.aggs.iter().map(|a| a.args(&batch)).collect::<Result<_>>()?;
        let filters: Vec<Option<BooleanArray>> = self
            .aggs
            .iter()
            .map(|a| a.filter(&batch).map(|f| f.map(|f| null_as_false(&f))))
            .collect::<Result<_>>()?;
        // Rows in time order, so sessions grow forward.
        let mut order: Vec<usize> = (0..n).filter(|i| times.is_valid(*i)).collect();
        order.sort_by_key(|i| times.value(*i));
        let mut late = 0u64;
        for i in order {
            let start = times.value(i) - if self.layout.time_is_end { gap } else { 0 };
            let end = start + gap;
            if ticks_to_micros(end, self.layout.unit) <= self.watermark {
                late += 1;
                continue;
            }
            let key: Box<[u8]> = match &rows {
                Some(r) => r.row(i).as_ref().into(),
                None => Box::new([]),
            };
            if !self.sessions.contains_key(&key) {
                self.sessions.insert(key.clone(), Vec::new());
            }
            let fresh = self.new_accs()?;
            let list = self.sessions.get_mut(&key).expect("inserted");
            // Sessions overlapping [start, end) are contiguous in the list.
            let first = list.partition_point(|s| s.end <= start);
            let mut last = first;
            while last < list.len() && list[last].start < end {
                last += 1;
            }
            let target = if first == last {
                list.insert(
                    first,
                    Session {
                        start,
                        end,
                        accs: fresh,
                    },
                );
                self.open += 1;
                first
            } else {
                let mut merged: Vec<Session> = list.drain(first + 1..last).collect();
                self.open -= merged.len();
                let s = &mut list[first];
                s.start = s.start.min(start);
                s.end = s.end.max(end);
                for m in merged.iter_mut() {
                    s.start = s.start.min(m.start);
                    s.end = s.end.max(m.end);
                    merge_into(&mut s.accs, &mut m.accs)?;
                }
                first
            };
            let s = &mut list[target];
            for (k, acc) in s.accs.iter_mut().enumerate() {
                if let Some(f) = &filters[k]
                    && !f.value(i)
                {
                    continue;
                }
                let slice: Vec<ArrayRef> = args[k].iter().map(|a| a.slice(i, 1)).collect();
                acc.update_batch(&slice)?;
            }
        }
        self.metrics.add_late(late);
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.watermark = watermark;
        let unit = self.layout.unit;
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggs.len()];
        let mut emptied = Vec::new();
        for (key, list) in self.sessions.iter_mut() {
            let closed = list.partition_point(|s| ticks_to_micros(s.end, unit) <= watermark);
            if closed == 0 {
                continue;
            }
            for mut s in list.drain(..closed) {
                keys.push(key.clone());
                starts.push(s.start);
                ends.push(s.end);
                for (col, acc) in values.iter_mut().zip(s.accs.iter_mut()) {
                    col.push(acc.evaluate()?);
                }
            }
            if list.is_empty() {
                emptied.push(key.clone());
            }
        }
        for k in emptied {
            self.sessions.remove(&k);
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.open -= keys.len();
        // Emitted in the order sessions ended (then by key), not in hash
        // order, so that a run's output does not depend on the hasher.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|a, b| (ends[*a], &keys[*a]).cmp(&(ends[*b], &keys[*b])));
        let keys: Vec<Box<[u8]>> = order.iter().map(|i| keys[*i].clone()).collect();
        let starts: Vec<i64> = order.iter().map(|i| starts[*i]).collect();
        let ends: Vec<i64> = order.iter().map(|i| ends[*i]).collect();
        let values: Vec<Vec<ScalarValue>> = values
            .into_iter()
            .map(|col| order.iter().map(|i| col[*i].clone()).collect())
            .collect();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.output.fields().len()];
        if let Some(c) = &self.converter {
            let parser = c.parser();
            let key_cols = c.convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            for (col, pos) in key_cols.into_iter().zip(&self.layout.key_pos) {
                columns[*pos] = Some(col);
            }
        }
        if let Some(p) = self.layout.start_pos {
            columns[p] = Some(Arc::new(Int64Array::from(starts)));
        }
        if let Some(p) = self.layout.end_pos {
            columns[p] = Some(Arc::new(Int64Array::from(ends)));
        }
        let n_keys = columns.len() - self.aggs.len();
        for (j, col) in values.into_iter().enumerate() {
            columns[n_keys + j] = Some(ScalarValue::iter_to_array(col)?);
        }
        let columns = columns
            .into_iter()
            .map(|c| c.ok_or_else(|| DataFusionError::Internal("session output column missing".into())))
            .collect::<Result<Vec<_>>>()?;
        out.push(batch_with_schema(&self.output, columns)?);
        Ok(())
    }

    fn state_size(&self) -> (usize, usize) {
        let bytes = self
            .sessions
            .iter()
            .map(|(k, l)| {
                k.len()
                    + l.iter()
                        .map(|s| 16 + s.accs.iter().map(|a| a.size()).sum::<usize>())
                        .sum::<usize>()
            })
            .sum();
        (self.open, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use datafusion::physical_expr::expressions::col;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn rows(k: &[&str], v: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .unwrap()
    }

    fn sum_agg(schema: &SchemaRef) -> AggExpr {
        use datafusion::functions_aggregate::sum::sum_udaf;
        use datafusion::physical_expr::aggregate::AggregateExprBuilder;
        let func = AggregateExprBuilder::new(sum_udaf(), vec![col("v", schema).unwrap()])
            .schema(schema.clone())
            .alias("s")
            .build()
            .unwrap();
        AggExpr {
            func: Arc::new(func),
            filter: None,
        }
    }

    fn pretty(batches: &[RecordBatch]) -> String {
        arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string()
    }

    /// Snapshot, round trip through an Arrow IPC file as a checkpoint
    /// does, restore into a fresh operator.
    fn through_ipc(state: Vec<RecordBatch>) -> Vec<RecordBatch> {
        if state.is_empty() {
            return state;
        }
        let mut buf = Vec::new();
        {
            let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &state[0].schema()).unwrap();
            for b in &state {
                w.write(b).unwrap();
            }
            w.finish().unwrap();
        }
        arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(buf), None)
            .unwrap()
            .collect::<std::result::Result<Vec<_>, _>>()
            .unwrap()
    }

    /// Runs `steps` (a batch, then a watermark) through one operator, and
    /// through a second that is checkpointed after step `cut` and restored
    /// into a third: both must emit the same rows.
    fn recovery_matches<F: Fn() -> Box<dyn KeyedOperator>>(
        make: F,
        steps: &[(RecordBatch, i64)],
        cut: usize,
    ) {
        let mut straight = make();
        let mut expected = vec![];
        for (b, w) in steps {
            straight.on_batch(b.clone(), &mut expected).unwrap();
            straight.on_watermark(*w, &mut expected).unwrap();
        }
        let mut first = make();
        let mut got = vec![];
        for (b, w) in &steps[..cut] {
            first.on_batch(b.clone(), &mut got).unwrap();
            first.on_watermark(*w, &mut got).unwrap();
        }
        let state = through_ipc(first.snapshot().unwrap());
        // The snapshot leaves the operator as it was.
        let mut check = got.clone();
        for (b, w) in &steps[cut..] {
            first.on_batch(b.clone(), &mut check).unwrap();
            first.on_watermark(*w, &mut check).unwrap();
        }
        assert_eq!(pretty(&check), pretty(&expected), "after a snapshot");
        let prefix = got.clone();
        let mut restored = make();
        restored.restore(state.clone()).unwrap();
        // A restored job's inputs start their watermarks from scratch.
        restored.on_watermark(i64::MIN, &mut got).unwrap();
        for (b, w) in &steps[cut..] {
            restored.on_batch(b.clone(), &mut got).unwrap();
            restored.on_watermark(*w, &mut got).unwrap();
        }
        assert_eq!(pretty(&got), pretty(&expected), "after a restore");
        // Restored, one more step, a snapshot again (groups touched since
        // the restore beside groups only restored), restored again.
        let mut got = prefix;
        let mut restored = make();
        restored.restore(state).unwrap();
        restored.on_watermark(i64::MIN, &mut got).unwrap();
        let (b, w) = &steps[cut];
        restored.on_batch(b.clone(), &mut got).unwrap();
        restored.on_watermark(*w, &mut got).unwrap();
        let again = through_ipc(restored.snapshot().unwrap());
        let mut twice = make();
        twice.restore(again).unwrap();
        twice.on_watermark(i64::MIN, &mut got).unwrap();
        for (b, w) in &steps[cut + 1..] {
            twice.on_batch(b.clone(), &mut got).unwrap();
            twice.on_watermark(*w, &mut got).unwrap();
        }
        assert_eq!(pretty(&got), pretty(&expected), "after two restores");
    }

    #[test]
    fn aggregates_restored_from_a_snapshot_continue_like_the_uninterrupted_run() {
        use datafusion::functions_aggregate::count::count_udaf;
        use datafusion::physical_expr::aggregate::AggregateExprBuilder;
        let schema = input();
        let count = || AggExpr {
            func: Arc::new(
                AggregateExprBuilder::new(count_udaf(), vec![col("v", &schema).unwrap()])
                    .schema(schema.clone())
                    .alias("c")
                    .build()
                    .unwrap(),
            ),
            filter: None,
        };
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("s", DataType::Int64, true),
            Field::new("c", DataType::Int64, true),
        ]));
        let steps = vec![
            (rows(&["a", "b", "a"], &[1, 2, 3]), 0),
            (rows(&["c", "a"], &[5, 10]), 1),
            (rows(&["b", "d"], &[7, 1]), 2),
            (rows(&["a"], &[100]), 3),
        ];
        for cut in 1..steps.len() {
            // Append-only input: DataFusion's own accumulators.
            recovery_matches(
                || {
                    Box::new(
                        UpdatingAggregate::new(
                            vec![col("k", &schema).unwrap()],
                            &schema,
                            false,
                            vec![sum_agg(&schema), count()],
                            out.clone(),
                        )
                        .unwrap(),
                    )
                },
                &steps,
                cut,
            );
        }
        // Updating input: retractable (sliding) accumulators.
        let with_op = with_op_column(&schema);
        let changes = |k: &[&str], v: &[i64], op: &[i8]| {
            RecordBatch::try_new(
                with_op.clone(),
                vec![
                    Arc::new(StringArray::from(k.to_vec())),
                    Arc::new(Int64Array::from(v.to_vec())),
                    Arc::new(Int8Array::from(op.to_vec())),
                ],
            )
            .unwrap()
        };
        let steps = vec![
            (changes(&["a", "b"], &[1, 2], &[1, 1]), 0),
            (changes(&["a", "a"], &[1, 5], &[-1, 1]), 1),
            (changes(&["b"], &[2], &[-1]), 2),
            (changes(&["b", "a"], &[9, 1], &[1, 1]), 3),
        ];
        for cut in 1..steps.len() {
            recovery_matches(
                || {
                    Box::new(
                        UpdatingAggregate::new(
                            vec![col("k", &schema).unwrap()],
                            &schema,
                            true,
                            vec![sum_agg(&schema), count()],
                            out.clone(),
                        )
                        .unwrap(),
                    )
                },
                &steps,
                cut,
            );
        }
        // Updating input with min, max and count(DISTINCT): multisets.
        use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
        let agg = |udaf: Arc<datafusion::logical_expr::AggregateUDF>, alias: &str, distinct: bool| AggExpr {
            func: Arc::new(
                AggregateExprBuilder::new(udaf, vec![col("v", &schema).unwrap()])
                    .schema(schema.clone())
                    .alias(alias)
                    .with_distinct(distinct)
                    .build()
                    .unwrap(),
            ),
            filter: None,
        };
        let multiset_out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("lo", DataType::Int64, true),
            Field::new("hi", DataType::Int64, true),
            Field::new("d", DataType::Int64, true),
        ]));
        for cut in 1..steps.len() {
            recovery_matches(
                || {
                    let aggs = vec![
                        agg(min_udaf(), "lo", false),
                        agg(max_udaf(), "hi", false),
                        agg(count_udaf(), "d", true),
                    ];
                    for a in &aggs {
                        assert!(multiset_kind(a).is_some(), "{}", a.func.name());
                    }
                    Box::new(
                        UpdatingAggregate::new(
                            vec![col("k", &schema).unwrap()],
                            &schema,
                            true,
                            aggs,
                            multiset_out.clone(),
                        )
                        .unwrap(),
                    )
                },
                &steps,
                cut,
            );
        }
        // Windows: open ones survive, closed ones are not emitted again,
        // and rows for windows closed before the snapshot stay late.
        use arrow::array::TimestampMillisecondArray;
        let wschema = Arc::new(Schema::new(vec![
            Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let wb = |ws: &[i64], k: &[&str], v: &[i64]| {
            RecordBatch::try_new(
                wschema.clone(),
                vec![
                    Arc::new(TimestampMillisecondArray::from(ws.to_vec())),
                    Arc::new(StringArray::from(k.to_vec())),
                    Arc::new(Int64Array::from(v.to_vec())),
                ],
            )
            .unwrap()
        };
        let wout = Arc::new(Schema::new(vec![
            Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("k", DataType::Utf8, false),
            Field::new("s", DataType::Int64, true),
        ]));
        let steps = vec![
            (wb(&[0, 0, 10_000], &["a", "b", "a"], &[1, 2, 3]), 5_000_000),
            (wb(&[10_000, 0], &["b", "a"], &[4, 5]), 10_000_000),
            // Window 0 closed at 10 s: this row is late in both runs.
            (wb(&[0, 20_000], &["a", "a"], &[6, 7]), 20_000_000),
            (wb(&[20_000], &["b"], &[8]), i64::MAX),
        ];
        for cut in 1..steps.len() {
            recovery_matches(
                || {
                    Box::new(
                        WindowAggregate::new(
                            vec![col("ws", &wschema).unwrap(), col("k", &wschema).unwrap()],
                            &wschema,
                            vec![sum_agg(&wschema)],
                            WindowKey {
                                key: 0,
                                is_end: false,
                                size_us: 10_000_000,
                                unit: TimeUnit::Millisecond,
                            },
                            wout.clone(),
                            Arc::new(NodeMetrics::default()),
                        )
                        .unwrap(),
                    )
                },
                &steps,
                cut,
            );
        }
        // Session windows: open sessions survive (and merge with rows that
        // bridge them after the restore); closed ones are not emitted again.
        let steps = vec![
            (wb(&[0, 0, 5_000], &["a", "b", "a"], &[1, 2, 3]), 5_000_000),
            (wb(&[30_000, 12_000], &["b", "a"], &[4, 5]), 10_000_000),
            (
                wb(&[40_000, 1_000, 28_000], &["a", "a", "a"], &[6, 7, 9]),
                20_000_000,
            ),
            (wb(&[35_000, 21_000], &["b", "a"], &[8, 10]), i64::MAX),
        ];
        for cut in 1..steps.len() {
            recovery_matches(
                || {
                    Box::new(
                        SessionAggregate::new(
                            vec![col("k", &wschema).unwrap()],
                            &wschema,
                            SessionLayout {
                                key_pos: vec![1],
                                start_pos: Some(0),
                                end_pos: None,
                                time: col("ws", &wschema).unwrap(),
                                time_is_end: false,
                                gap_us: 10_000_000,
                                unit: TimeUnit::Millisecond,
                            },
                            vec![sum_agg(&wschema)],
                            wout.clone(),
                            Arc::new(NodeMetrics::default()),
                        )
                        .unwrap(),
                    )
                },
                &steps,
                cut,
            );
        }
    }

    /// count, sum, avg, min, max (one with a FILTER) over nullable ints.
    fn columnar_case() -> (SchemaRef, Vec<AggExpr>, SchemaRef) {
        use datafusion::functions_aggregate::average::avg_udaf;
        use datafusion::functions_aggregate::count::count_udaf;
        use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
        use datafusion::functions_aggregate::sum::sum_udaf;
        use datafusion::physical_expr::aggregate::AggregateExprBuilder;
        use datafusion::physical_expr::expressions::{BinaryExpr, lit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let v = col("v", &schema).unwrap();
        let as_float =
            datafusion::physical_expr::expressions::cast(v.clone(), &schema, DataType::Float64).unwrap();
        let agg =
            |udaf: Arc<datafusion::logical_expr::AggregateUDF>, arg: Arc<dyn PhysicalExpr>, alias: &str| {
                Arc::new(
                    AggregateExprBuilder::new(udaf, vec![arg])
                        .schema(schema.clone())
                        .alias(alias)
                        .build()
                        .unwrap(),
                )
            };
        let over_2: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            v.clone(),
            datafusion::logical_expr::Operator::Gt,
            lit(2i64),
        ));
        let aggs = vec![
            AggExpr {
                func: agg(count_udaf(), lit(1i64), "n"),
                filter: None,
            },
            AggExpr {
                func: agg(count_udaf(), v.clone(), "c"),
                filter: None,
            },
            AggExpr {
                func: agg(sum_udaf(), v.clone(), "s"),
                filter: None,
            },
            AggExpr {
                func: agg(avg_udaf(), as_float, "a"),
                filter: None,
            },
            AggExpr {
                func: agg(min_udaf(), v.clone(), "lo"),
                filter: None,
            },
            AggExpr {
                func: agg(max_udaf(), v.clone(), "hi"),
                filter: Some(over_2),
            },
        ];
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("c", DataType::Int64, true),
            Field::new("s", DataType::Int64, true),
            Field::new("a", DataType::Float64, true),
            Field::new("lo", DataType::Int64, true),
            Field::new("hi", DataType::Int64, true),
        ]));
        (schema, aggs, out)
    }

    fn columnar_steps(schema: &SchemaRef) -> Vec<(RecordBatch, i64)> {
        let b = |k: &[&str], v: &[Option<i64>]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(k.to_vec())),
                    Arc::new(Int64Array::from(v.to_vec())),
                ],
            )
            .unwrap()
        };
        vec![
            (b(&["a", "b", "a"], &[Some(1), None, Some(3)]), 0),
            (b(&["c", "a"], &[Some(5), Some(10)]), 1),
            // b gets its first value; a's max does not change but its count does.
            (b(&["b", "d", "a"], &[Some(7), None, Some(2)]), 2),
            (b(&["a"], &[Some(-100)]), 3),
            // Nothing changes any output value of c... except its count.
            (b(&["c", "e"], &[None, Some(1)]), 4),
        ]
    }

    fn columnar(schema: &SchemaRef, aggs: Vec<AggExpr>, out: &SchemaRef) -> Box<dyn KeyedOperator> {
        Box::new(
            super::super::columnar::ColumnarAggregate::try_new(
                vec![col("k", schema).unwrap()],
                schema,
                aggs,
                out.clone(),
            )
            .unwrap()
            .expect("every aggregate here has a column-wise form"),
        )
    }

    fn boxed(schema: &SchemaRef, aggs: Vec<AggExpr>, out: &SchemaRef) -> Box<dyn KeyedOperator> {
        Box::new(
            UpdatingAggregate::new(vec![col("k", schema).unwrap()], schema, false, aggs, out.clone())
                .unwrap(),
        )
    }

    /// The column-wise aggregate emits what the boxed one emits, step by
    /// step, and a checkpoint of either restores into either.
    #[test]
    fn columnar_aggregate_matches_the_boxed_one_and_shares_its_checkpoints() {
        let (schema, aggs, out) = columnar_case();
        let steps = columnar_steps(&schema);
        // Each step's rows in (key, op) order: the two operators list a
        // step's groups in different orders (which means nothing), and a
        // group's delete comes before its insert in both.
        let canon = |batches: &[RecordBatch]| {
            let sorted: Vec<RecordBatch> = batches
                .iter()
                .map(|b| {
                    let cols = [0, b.num_columns() - 1].map(|i| arrow::compute::SortColumn {
                        values: b.column(i).clone(),
                        options: None,
                    });
                    let idx = arrow::compute::lexsort_to_indices(&cols, None).unwrap();
                    arrow::compute::take_record_batch(b, &idx).unwrap()
                })
                .collect();
            pretty(&sorted)
        };
        let run = |op: &mut Box<dyn KeyedOperator>, steps: &[(RecordBatch, i64)]| {
            let mut got = vec![];
            for (b, w) in steps {
                op.on_batch(b.clone(), &mut got).unwrap();
                op.on_watermark(*w, &mut got).unwrap();
            }
            canon(&got)
        };
        let expected = run(&mut boxed(&schema, aggs.clone(), &out), &steps);
        assert_eq!(run(&mut columnar(&schema, aggs.clone(), &out), &steps), expected);
        // Spot checks of the expected output itself: a's first row (the
        // max's FILTER v > 2 leaves 3), b's NULL-only group, e's filtered
        // max, and a's change at step 3.
        for line in [
            "| a | 2 | 2 | 4   | 2.0               | 1    | 3  | 1           |",
            "| b | 1 | 0 |     |                   |      |    | 1           |",
            "| e | 1 | 1 | 1   | 1.0               | 1    |    | 1           |",
            "| a | 5 | 5 | -84 | -16.8             | -100 | 10 | 1           |",
        ] {
            assert!(expected.contains(line), "{line} in {expected}");
        }
        for cut in 1..steps.len() {
            recovery_matches(|| columnar(&schema, aggs.clone(), &out), &steps, cut);
            // Across the two operators, both ways.
            for (from, to) in [(true, false), (false, true)] {
                let make = |c: bool| {
                    if c {
                        columnar(&schema, aggs.clone(), &out)
                    } else {
                        boxed(&schema, aggs.clone(), &out)
                    }
                };
                let mut first = make(from);
                let mut got = vec![];
                for (b, w) in &steps[..cut] {
                    first.on_batch(b.clone(), &mut got).unwrap();
                    first.on_watermark(*w, &mut got).unwrap();
                }
                let mut second = make(to);
                second.restore(through_ipc(first.snapshot().unwrap())).unwrap();
                for (b, w) in &steps[cut..] {
                    second.on_batch(b.clone(), &mut got).unwrap();
                    second.on_watermark(*w, &mut got).unwrap();
                }
                assert_eq!(canon(&got), expected, "cut {cut}, columnar -> boxed: {from}");
            }
        }
    }

    /// An incremental snapshot (the groups changed since a full one)
    /// restored after that full one continues like the uninterrupted run,
    /// also when an earlier incremental one was taken in between (changes
    /// are cumulative).
    #[test]
    fn columnar_incremental_snapshots_restore_over_the_full_one() {
        incremental_snapshots_restore_over_the_full_one(columnar);
    }

    /// The same for the boxed GROUP BY (every aggregate; here the ones the
    /// column-wise operator has too).
    #[test]
    fn boxed_incremental_snapshots_restore_over_the_full_one() {
        incremental_snapshots_restore_over_the_full_one(boxed);
    }

    fn incremental_snapshots_restore_over_the_full_one(
        make: fn(&SchemaRef, Vec<AggExpr>, &SchemaRef) -> Box<dyn KeyedOperator>,
    ) {
        let columnar = make;
        let (schema, aggs, out) = columnar_case();
        let steps = columnar_steps(&schema);
        let run_to =
            |op: &mut Box<dyn KeyedOperator>, steps: &[(RecordBatch, i64)], got: &mut Vec<RecordBatch>| {
                for (b, w) in steps {
                    op.on_batch(b.clone(), got).unwrap();
                    op.on_watermark(*w, got).unwrap();
                }
            };
        let mut expected = vec![];
        run_to(&mut columnar(&schema, aggs.clone(), &out), &steps, &mut expected);
        let expected = pretty(&expected);
        for full_at in 1..steps.len() - 1 {
            for changes_at in full_at + 1..steps.len() {
                let mut op = columnar(&schema, aggs.clone(), &out);
                let mut got = vec![];
                run_to(&mut op, &steps[..full_at], &mut got);
                let full = through_ipc(op.snapshot().unwrap());
                run_to(&mut op, &steps[full_at..changes_at - 1], &mut got);
                // An earlier incremental snapshot, as of a checkpoint that
                // may have failed: the later one still covers its groups.
                let _ = op.snapshot_changes().unwrap();
                run_to(&mut op, &steps[changes_at - 1..changes_at], &mut got);
                let changes = op.snapshot_changes().unwrap();
                let Some(changes) = changes else {
                    // Most groups changed: a full snapshot is due.
                    continue;
                };
                let changes = through_ipc(changes);
                let mut restored = columnar(&schema, aggs.clone(), &out);
                restored
                    .restore(full.iter().cloned().chain(changes).collect())
                    .unwrap();
                restored.on_watermark(i64::MIN, &mut got).unwrap();
                run_to(&mut restored, &steps[changes_at..], &mut got);
                assert_eq!(
                    pretty(&got),
                    expected,
                    "full at {full_at}, changes at {changes_at}"
                );
            }
        }
        // Some case above took the incremental path.
        let mut op = columnar(&schema, aggs.clone(), &out);
        let mut sink = vec![];
        run_to(&mut op, &steps[..4], &mut sink);
        op.snapshot().unwrap();
        run_to(&mut op, &steps[4..], &mut sink);
        let changes = op.snapshot_changes().unwrap().expect("2 of 5 groups changed");
        assert_eq!(changes.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        // The same changes again (4 of 5 written since the full one), then
        // a third time: more than there are groups, a full snapshot is due.
        assert!(op.snapshot_changes().unwrap().is_some());
        assert!(op.snapshot_changes().unwrap().is_none());
    }

    /// Aggregates without a column-wise form here keep the boxed operator.
    #[test]
    fn columnar_aggregate_declines_what_it_cannot_do() {
        use datafusion::functions_aggregate::count::count_udaf;
        use datafusion::functions_aggregate::min_max::max_udaf;
        use datafusion::physical_expr::aggregate::AggregateExprBuilder;
        let schema = input();
        let one = |udaf, distinct| {
            vec![AggExpr {
                func: Arc::new(
                    AggregateExprBuilder::new(udaf, vec![col("k", &schema).unwrap()])
                        .schema(schema.clone())
                        .alias("x")
                        .with_distinct(distinct)
                        .build()
                        .unwrap(),
                ),
                filter: None,
            }]
        };
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("x", DataType::Int64, true),
        ]));
        let try_new = |aggs| {
            super::super::columnar::ColumnarAggregate::try_new(
                vec![col("k", &schema).unwrap()],
                &schema,
                aggs,
                out.clone(),
            )
            .unwrap()
            .is_some()
        };
        // max of text, count(DISTINCT): no; count of text: yes.
        assert!(!try_new(one(max_udaf(), false)));
        assert!(!try_new(one(count_udaf(), true)));
        assert!(try_new(one(count_udaf(), false)));
    }

    /// A per-key sum that leaves bigint's range fails the step (22003 at
    /// the job) instead of emitting a wrapped value; other keys are not
    /// affected before it.
    #[test]
    fn columnar_sum_overflow_is_an_error() {
        let (schema, aggs, out) = columnar_case();
        let mut op = columnar(&schema, aggs, &out);
        let b = |k: &[&str], v: &[i64]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(k.to_vec())),
                    Arc::new(Int64Array::from(v.to_vec())),
                ],
            )
            .unwrap()
        };
        let mut sink = Vec::new();
        op.on_batch(b(&["a", "b"], &[i64::MAX, 1]), &mut sink).unwrap();
        let err = op.on_batch(b(&["b", "a"], &[1, 1]), &mut sink).unwrap_err();
        assert!(err.to_string().contains("sum out of range"), "{err}");
        assert!(
            matches!(err.find_root(), DataFusionError::ArrowError(e, _) if matches!(**e, arrow::error::ArrowError::ArithmeticOverflow(_))),
            "{err:?}"
        );
    }

    #[test]
    fn updating_aggregate_retracts_the_previous_value() {
        let schema = input();
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("s", DataType::Int64, true),
        ]));
        let mut op = UpdatingAggregate::new(
            vec![col("k", &schema).unwrap()],
            &schema,
            false,
            vec![sum_agg(&schema)],
            out,
        )
        .unwrap();
        let mut outb = vec![];
        op.on_batch(rows(&["a", "b", "a"], &[1, 2, 3]), &mut outb)
            .unwrap();
        op.on_watermark(0, &mut outb).unwrap();
        op.on_batch(rows(&["a"], &[10]), &mut outb).unwrap();
        op.on_watermark(1, &mut outb).unwrap();
        // A watermark with nothing changed emits nothing.
        op.on_watermark(2, &mut outb).unwrap();
        let expected = "\
+---+----+-------------+
| k | s  | __sluice_op |
+---+----+-------------+
| a | 4  | 1           |
| b | 2  | 1           |
| a | 4  | -1          |
| a | 14 | 1           |
+---+----+-------------+";
        assert_eq!(pretty(&outb), expected);
        assert_eq!(op.state_size().0, 2);
    }

    #[test]
    fn window_aggregate_emits_at_the_watermark_and_drops_late_rows() {
        use arrow::array::TimestampMillisecondArray;
        let schema = Arc::new(Schema::new(vec![
            Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("v", DataType::Int64, false),
        ]));
        let b = |ws: Vec<i64>, v: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(TimestampMillisecondArray::from(ws)),
                    Arc::new(Int64Array::from(v)),
                ],
            )
            .unwrap()
        };
        let out = Arc::new(Schema::new(vec![
            Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("s", DataType::Int64, true),
        ]));
        let metrics = Arc::new(NodeMetrics::default());
        let mut op = WindowAggregate::new(
            vec![col("ws", &schema).unwrap()],
            &schema,
            vec![sum_agg(&schema)],
            WindowKey {
                key: 0,
                is_end: false,
                size_us: 10_000_000,
                unit: TimeUnit::Millisecond,
            },
            out,
            metrics.clone(),
        )
        .unwrap();
        let mut o = vec![];
        op.on_batch(b(vec![0, 10_000, 0], vec![1, 2, 3]), &mut o).unwrap();
        op.on_watermark(9_999_999, &mut o).unwrap();
        assert!(o.is_empty(), "window [0,10s) is still open");
        op.on_watermark(10_000_000, &mut o).unwrap();
        assert_eq!(o.len(), 1);
        op.on_batch(b(vec![0, 10_000], vec![100, 5]), &mut o).unwrap();
        assert_eq!(metrics.snapshot().late_rows, 1);
        op.on_watermark(i64::MAX, &mut o).unwrap();
        let expected = "\
+---------------------+---+
| ws                  | s |
+---------------------+---+
| 1970-01-01T00:00:00 | 4 |
| 1970-01-01T00:00:10 | 7 |
+---------------------+---+";
        assert_eq!(pretty(&o), expected);
        assert_eq!(op.state_size().0, 0);
    }

    #[test]
    fn multiset_min_max_expose_the_next_value_on_retraction() {
        let values = |v: Vec<i64>| vec![Arc::new(Int64Array::from(v)) as ArrayRef];
        for (kind, want) in [
            (MultisetKind::Min, [1, 2, 5]),
            (MultisetKind::Max, [9, 5, 5]),
            (MultisetKind::CountDistinct, [4, 3, 1]),
        ] {
            let fresh = || MultisetAccumulator {
                kind: kind.clone(),
                data_type: DataType::Int64,
                value_type: DataType::Int64,
                values: BTreeMap::new(),
                bytes: 0,
            };
            let mut first = fresh();
            first.update_batch(&values(vec![5, 1, 2, 9, 1])).unwrap();
            // Through its state into another (a checkpoint's round trip).
            let state: Vec<ArrayRef> = first
                .state()
                .unwrap()
                .into_iter()
                .map(|s| s.to_array().unwrap())
                .collect();
            let mut acc = fresh();
            acc.merge_batch(&state).unwrap();
            let v = |acc: &mut MultisetAccumulator| match acc.evaluate().unwrap() {
                ScalarValue::Int64(Some(v)) => v,
                other => panic!("{other:?}"),
            };
            assert_eq!(v(&mut acc), want[0], "{kind:?}");
            // one of two 1s goes, then the other; 9 goes
            acc.retract_batch(&values(vec![1, 9])).unwrap();
            assert_eq!(
                v(&mut acc),
                if kind == MultisetKind::Min { 1 } else { want[1] },
                "{kind:?}"
            );
            acc.retract_batch(&values(vec![1, 2])).unwrap();
            assert_eq!(v(&mut acc), want[2], "{kind:?}");
        }
    }
}

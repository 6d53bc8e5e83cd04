//! GROUP BY without windows over an append-only input, for the aggregates
//! most such queries are made of (`count`, `sum`, `avg`, and `min` / `max`
//! of integers), with the state kept column-wise: a vector per aggregate
//! indexed by group, group keys interned by DataFusion's `GroupValues`.
//!
//! [`super::UpdatingAggregate`] keeps boxed DataFusion
//! accumulators per group (any aggregate, retractions too) at about 1 KB of
//! memory per group; this one needs tens of bytes per group and writes and
//! restores its checkpoint state as whole columns. Both write the same
//! snapshot layout (keys, net row count, each aggregate's DataFusion state
//! columns), so a checkpoint taken by one restores into the other.
//!
//! The output is an updating stream, as the boxed operator's: at each
//! progress step every group that took rows emits a delete of its previous
//! row (if it had one and the values changed) and an insert of the new one.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int8Array, Int64Array, RecordBatch, UInt32Array,
    UInt64Array,
};
use arrow::compute::{cast, interleave, take};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef, UInt64Type};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, Rows};
use datafusion::common::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{
    AggExpr, KeyedOperator, batch_with_schema, eval, key_converter, key_schema, null_as_false, with_op_column,
};

use crate::streaming::state::{ChangedGroups, SnapshotBatch, SnapshotRows};

type Result<T> = datafusion::error::Result<T>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// One aggregate's state for every group.
struct ColumnAcc {
    kind: Kind,
    /// Values are f64 (else i64).
    float: bool,
    /// The aggregate's output type.
    out_type: DataType,
    /// Its DataFusion state columns' types (the snapshot layout).
    state_types: Vec<DataType>,
    ints: Vec<i64>,
    floats: Vec<f64>,
    /// Non-null values seen: the count itself, avg's divisor, and for
    /// sum / min / max whether the group has a value yet.
    counts: Vec<i64>,
    /// The state of groups at their last emission, saved when a step first
    /// changes them, to emit the previous row's values.
    old_ints: Vec<i64>,
    old_floats: Vec<f64>,
    old_counts: Vec<i64>,
}

impl ColumnAcc {
    /// The column-wise form of `agg` over `input`, if it has one.
    fn of(agg: &AggExpr, input: &Schema) -> Option<Self> {
        let func = &agg.func;
        if func.is_distinct() || func.ignore_nulls() || !func.order_bys().is_empty() {
            return None;
        }
        let args = func.expressions();
        let [arg] = args.as_slice() else {
            return None;
        };
        let arg_type = arg.data_type(input).ok()?;
        let int = matches!(
            arg_type,
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
        );
        let float = matches!(arg_type, DataType::Float32 | DataType::Float64);
        let kind = match func.fun().name() {
            "count" => Kind::Count,
            "sum" => Kind::Sum,
            "avg" => Kind::Avg,
            "min" => Kind::Min,
            "max" => Kind::Max,
            _ => return None,
        };
        let out_type = func.field().data_type().clone();
        let state_types: Vec<DataType> = func
            .state_fields()
            .ok()?
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        // Only the shapes whose DataFusion state this reproduces exactly.
        let (float, ok) = match kind {
            Kind::Count => (
                false,
                out_type == DataType::Int64 && state_types == [DataType::Int64],
            ),
            Kind::Sum if int => (
                false,
                out_type == DataType::Int64 && state_types == [DataType::Int64],
            ),
            Kind::Sum if float => (
                true,
                out_type == DataType::Float64 && state_types == [DataType::Float64],
            ),
            Kind::Avg if int || float => (
                true,
                out_type == DataType::Float64 && state_types == [DataType::UInt64, DataType::Float64],
            ),
            Kind::Min | Kind::Max if int => {
                (false, out_type == arg_type && state_types == [arg_type.clone()])
            }
            _ => (false, false),
        };
        ok.then(|| ColumnAcc {
            kind,
            float,
            out_type,
            state_types,
            ints: Vec::new(),
            floats: Vec::new(),
            counts: Vec::new(),
            old_ints: Vec::new(),
            old_floats: Vec::new(),
            old_counts: Vec::new(),
        })
    }

    fn resize(&mut self, groups: usize) {
        self.counts.resize(groups, 0);
        if self.float {
            self.floats.resize(groups, 0.0);
        } else if self.kind != Kind::Count {
            self.ints.resize(groups, 0);
        }
    }

    /// Adds the values (already the argument, filtered rows null) of rows
    /// in `groups`.
    fn update(&mut self, values: &ArrayRef, groups: &[usize]) -> Result<()> {
        if self.kind == Kind::Count {
            if values.null_count() == 0 {
                for &g in groups {
                    self.counts[g] += 1;
                }
            } else {
                for (i, &g) in groups.iter().enumerate() {
                    self.counts[g] += i64::from(values.is_valid(i));
                }
            }
            return Ok(());
        }
        if self.float {
            let v = cast(values, &DataType::Float64)?;
            let v = v.as_primitive::<Float64Type>();
            for (i, &g) in groups.iter().enumerate() {
                if v.is_valid(i) {
                    self.floats[g] += v.value(i);
                    self.counts[g] += 1;
                }
            }
            return Ok(());
        }
        let v = cast(values, &DataType::Int64)?;
        let v = v.as_primitive::<Int64Type>();
        for (i, &g) in groups.iter().enumerate() {
            if !v.is_valid(i) {
                continue;
            }
            let x = v.value(i);
            let first = self.counts[g] == 0;
            self.counts[g] += 1;
            let slot = &mut self.ints[g];
            match self.kind {
                Kind::Sum => {
                    *slot = slot.checked_add(x).ok_or_else(|| {
                        ArrowError::ArithmeticOverflow(format!("sum out of range for {}", self.out_type))
                    })?
                }
                Kind::Min => {
                    if first || x < *slot {
                        *slot = x
                    }
                }
                Kind::Max => {
                    if first || x > *slot {
                        *slot = x
                    }
                }
                Kind::Count | Kind::Avg => unreachable!("counted or float"),
            }
        }
        Ok(())
    }

    fn save_old(&mut self, g: usize) {
        self.old_counts.push(self.counts[g]);
        if self.float {
            self.old_floats.push(self.floats[g]);
        } else if self.kind != Kind::Count {
            self.old_ints.push(self.ints[g]);
        }
    }

    /// The output values from state vectors, one per listed index.
    fn evaluate_from(&self, ints: &[i64], floats: &[f64], counts: &[i64], idx: &[usize]) -> Result<ArrayRef> {
        let out: ArrayRef = match self.kind {
            Kind::Count => Arc::new(Int64Array::from_iter_values(idx.iter().map(|&g| counts[g]))),
            Kind::Avg => Arc::new(Float64Array::from_iter(
                idx.iter()
                    .map(|&g| (counts[g] > 0).then(|| floats[g] / counts[g] as f64)),
            )),
            _ if self.float => Arc::new(Float64Array::from_iter(
                idx.iter().map(|&g| (counts[g] > 0).then_some(floats[g])),
            )),
            _ => Arc::new(Int64Array::from_iter(
                idx.iter().map(|&g| (counts[g] > 0).then_some(ints[g])),
            )),
        };
        if out.data_type() == &self.out_type {
            Ok(out)
        } else {
            Ok(cast(&out, &self.out_type)?)
        }
    }

    fn evaluate(&self, groups: &[usize]) -> Result<ArrayRef> {
        self.evaluate_from(&self.ints, &self.floats, &self.counts, groups)
    }

    /// The saved previous values, in the order they were saved; forgets
    /// them.
    fn take_old(&mut self) -> Result<ArrayRef> {
        let idx: Vec<usize> = (0..self.old_counts.len()).collect();
        let out = self.evaluate_from(&self.old_ints, &self.old_floats, &self.old_counts, &idx)?;
        self.old_ints.clear();
        self.old_floats.clear();
        self.old_counts.clear();
        Ok(out)
    }

    /// DataFusion's state columns for the listed groups (every group when
    /// None).
    fn state(&self, groups: Option<&[usize]>) -> Result<Vec<ArrayRef>> {
        let n = self.counts.len();
        let idx = |i: usize| groups.map_or(i, |g| g[i]);
        let len = groups.map_or(n, <[usize]>::len);
        let cols: Vec<ArrayRef> = match self.kind {
            Kind::Count => vec![Arc::new(Int64Array::from_iter_values(
                (0..len).map(|i| self.counts[idx(i)]),
            ))],
            Kind::Avg => vec![
                Arc::new(UInt64Array::from_iter_values(
                    (0..len).map(|i| self.counts[idx(i)] as u64),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..len).map(|i| self.floats[idx(i)]),
                )),
            ],
            _ if self.float => vec![Arc::new(Float64Array::from_iter((0..len).map(|i| {
                let g = idx(i);
                (self.counts[g] > 0).then_some(self.floats[g])
            })))],
            _ => vec![Arc::new(Int64Array::from_iter((0..len).map(|i| {
                let g = idx(i);
                (self.counts[g] > 0).then_some(self.ints[g])
            })))],
        };
        cols.into_iter()
            .zip(&self.state_types)
            .map(|(c, t)| {
                if c.data_type() == t {
                    Ok(c)
                } else {
                    Ok(cast(&c, t)?)
                }
            })
            .collect()
    }

    /// Takes state columns (as [`Self::state`] writes them) for the groups
    /// `groups` (row i is group `groups[i]`, already sized for).
    fn load(&mut self, cols: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let bad = || DataFusionError::Internal(format!("{:?} state: unexpected columns", self.kind));
        match self.kind {
            Kind::Count => {
                let c = cast(cols.first().ok_or_else(bad)?, &DataType::Int64)?;
                let c = c.as_primitive::<Int64Type>();
                for (i, &g) in groups.iter().enumerate() {
                    self.counts[g] = if c.is_valid(i) { c.value(i) } else { 0 };
                }
            }
            Kind::Avg => {
                let [n, s] = cols else { return Err(bad()) };
                let n = cast(n, &DataType::UInt64)?;
                let n = n.as_primitive::<UInt64Type>();
                let s = cast(s, &DataType::Float64)?;
                let s = s.as_primitive::<Float64Type>();
                for (i, &g) in groups.iter().enumerate() {
                    self.counts[g] = if n.is_valid(i) { n.value(i) as i64 } else { 0 };
                    self.floats[g] = if s.is_valid(i) { s.value(i) } else { 0.0 };
                }
            }
            _ if self.float => {
                let v = cast(cols.first().ok_or_else(bad)?, &DataType::Float64)?;
                let v = v.as_primitive::<Float64Type>();
                for (i, &g) in groups.iter().enumerate() {
                    self.counts[g] = i64::from(v.is_valid(i));
                    self.floats[g] = if v.is_valid(i) { v.value(i) } else { 0.0 };
                }
            }
            _ => {
                let v = cast(cols.first().ok_or_else(bad)?, &DataType::Int64)?;
                let v = v.as_primitive::<Int64Type>();
                for (i, &g) in groups.iter().enumerate() {
                    self.counts[g] = i64::from(v.is_valid(i));
                    self.ints[g] = if v.is_valid(i) { v.value(i) } else { 0 };
                }
            }
        }
        Ok(())
    }

    fn size(&self) -> usize {
        (self.ints.capacity()
            + self.counts.capacity()
            + self.old_ints.capacity()
            + self.old_counts.capacity())
            * 8
            + (self.floats.capacity() + self.old_floats.capacity()) * 8
    }
}

/// See the module documentation.
pub struct ColumnarAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Interned group keys (None: a global aggregate, one group).
    groups: Option<Box<dyn GroupValues>>,
    converter: Option<RowConverter>,
    /// Group keys in row format by group, for the rows emitted.
    key_rows: Option<Rows>,
    n: usize,
    aggs: Vec<AggExpr>,
    accs: Vec<ColumnAcc>,
    output: SchemaRef,
    /// Input rows per group (the snapshot's row count column).
    rows: Vec<i64>,
    /// Whether the group's current row was emitted.
    emitted: Vec<bool>,
    is_dirty: Vec<bool>,
    /// Groups changed since the last step, and whether each saved an old
    /// state (in order, see [`ColumnAcc::save_old`]).
    dirty: Vec<usize>,
    had_row: Vec<bool>,
    /// Groups changed since the last full snapshot (for incremental ones).
    changed: ChangedGroups,
    scratch: Vec<usize>,
}

impl ColumnarAggregate {
    /// The operator for these aggregates over an append-only input, or
    /// None when one of them has no column-wise form here.
    pub fn try_new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: &Schema,
        aggs: Vec<AggExpr>,
        output: SchemaRef,
    ) -> Result<Option<Self>> {
        let Some(accs) = aggs
            .iter()
            .map(|a| ColumnAcc::of(a, input))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let converter = key_converter(&keys, input)?;
        let groups = match &converter {
            Some(_) => Some(new_group_values(key_schema(&keys, input)?, &GroupOrdering::None)?),
            None => None,
        };
        let key_rows = converter.as_ref().map(|c| c.empty_rows(0, 0));
        Ok(Some(Self {
            keys,
            groups,
            converter,
            key_rows,
            n: 0,
            aggs,
            accs,
            output: with_op_column(&output),
            rows: Vec::new(),
            emitted: Vec::new(),
            is_dirty: Vec::new(),
            dirty: Vec::new(),
            had_row: Vec::new(),
            changed: ChangedGroups::default(),
            scratch: Vec::new(),
        }))
    }

    /// Interns the key columns into `self.scratch` (group per row), keeping
    /// new groups' keys and sizing the state for them.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<()> {
        self.scratch.clear();
        match (&mut self.groups, &self.converter, &mut self.key_rows) {
            (Some(groups), Some(converter), Some(key_rows)) => {
                let before = groups.len();
                groups.intern(keys, &mut self.scratch)?;
                let after = groups.len();
                if after > before {
                    // The first row of each new group, in group order.
                    let mut first = Vec::with_capacity(after - before);
                    let mut next = before;
                    for (i, &g) in self.scratch.iter().enumerate() {
                        if g == next {
                            first.push(i as u32);
                            next += 1;
                        }
                    }
                    let idx = UInt32Array::from(first);
                    let new_keys = keys
                        .iter()
                        .map(|k| take(k, &idx, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let converted = converter.convert_columns(&new_keys)?;
                    for r in converted.iter() {
                        key_rows.push(r);
                    }
                }
                self.n = after;
            }
            _ => {
                self.scratch.resize(rows, 0);
                self.n = self.n.max(1);
            }
        }
        for acc in &mut self.accs {
            acc.resize(self.n);
        }
        self.rows.resize(self.n, 0);
        self.emitted.resize(self.n, false);
        self.is_dirty.resize(self.n, false);
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let had_row = std::mem::take(&mut self.had_row);
        let new: Vec<ArrayRef> = self
            .accs
            .iter()
            .map(|a| a.evaluate(&dirty))
            .collect::<Result<_>>()?;
        let old: Vec<ArrayRef> = self
            .accs
            .iter_mut()
            .map(|a| a.take_old())
            .collect::<Result<_>>()?;
        // Groups whose values did not change emit nothing.
        let with_old: Vec<u32> = (0..dirty.len() as u32).filter(|&i| had_row[i as usize]).collect();
        let with_old = UInt32Array::from(with_old);
        let mut unchanged: Option<BooleanArray> = None;
        for (n, o) in new.iter().zip(&old) {
            let same = arrow::compute::kernels::cmp::not_distinct(&take(n, &with_old, None)?, o)?;
            unchanged = Some(match unchanged {
                None => same,
                Some(u) => arrow::compute::and(&u, &same)?,
            });
        }
        let mut key_at: Vec<u32> = Vec::with_capacity(dirty.len() * 2);
        let mut value_at: Vec<(usize, usize)> = Vec::with_capacity(dirty.len() * 2);
        let mut ops: Vec<i8> = Vec::with_capacity(dirty.len() * 2);
        let mut j = 0;
        for (i, &g) in dirty.iter().enumerate() {
            self.is_dirty[g] = false;
            if had_row[i] {
                let same = unchanged.as_ref().is_some_and(|u| u.value(j));
                j += 1;
                if same {
                    continue;
                }
                key_at.push(i as u32);
                value_at.push((1, j - 1));
                ops.push(-1);
            }
            key_at.push(i as u32);
            value_at.push((0, i));
            ops.push(1);
            self.emitted[g] = true;
        }
        if ops.is_empty() {
            return Ok(());
        }
        let key_at = UInt32Array::from(key_at);
        let mut columns: Vec<ArrayRef> = match (&self.converter, &self.key_rows) {
            (Some(c), Some(rows)) => c
                .convert_rows(dirty.iter().map(|&g| rows.row(g)))?
                .iter()
                .map(|k| take(k, &key_at, None))
                .collect::<std::result::Result<_, _>>()?,
            _ => vec![],
        };
        for (n, o) in new.iter().zip(&old) {
            columns.push(interleave(&[n.as_ref(), o.as_ref()], &value_at)?);
        }
        columns.push(Arc::new(Int8Array::from(ops)));
        out.push(batch_with_schema(&self.output, columns)?);
        Ok(())
    }
}

impl KeyedOperator for ColumnarAggregate {
    fn on_batch(&mut self, _input: usize, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self.keys.iter().map(|k| eval(k, &batch)).collect::<Result<_>>()?;
        self.intern(&keys, n)?;
        let groups = std::mem::take(&mut self.scratch);
        // A group's state before this step's first row, for its old row.
        for &g in &groups {
            self.rows[g] += 1;
            if !self.is_dirty[g] {
                self.is_dirty[g] = true;
                self.dirty.push(g);
                let had = self.emitted[g];
                self.had_row.push(had);
                self.changed.mark(g);
                if had {
                    for acc in &mut self.accs {
                        acc.save_old(g);
                    }
                }
            }
        }
        for (agg, acc) in self.aggs.iter().zip(self.accs.iter_mut()) {
            let mut values = agg.args(&batch)?.swap_remove(0);
            if let Some(f) = agg.filter(&batch)? {
                // Filtered-out rows count as NULLs: none of these
                // aggregates takes a NULL into account.
                let keep = null_as_false(&f);
                values = arrow::compute::nullif(&values, &arrow::compute::not(&keep)?)?;
            }
            acc.update(&values, &groups)?;
        }
        self.scratch = groups;
        Ok(())
    }

    fn on_watermark(&mut self, _watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.flush(out)
    }

    fn state_size(&self) -> (usize, usize) {
        let keys =
            self.groups.as_ref().map_or(0, |g| g.size()) + self.key_rows.as_ref().map_or(0, |r| r.size());
        let accs: usize = self.accs.iter().map(ColumnAcc::size).sum();
        (
            self.n,
            keys + accs + self.rows.capacity() * 8 + self.emitted.capacity() * 2,
        )
    }

    /// The boxed operator's layout: keys, row counts, each aggregate's
    /// DataFusion state columns.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.changed.full_taken();
        if self.n == 0 {
            return Ok(vec![]);
        }
        self.state_rows(None)
    }

    /// The changed groups' rows in the same layout; restoring them after
    /// the full snapshot overwrites those groups (None when a full one is
    /// due, see [`crate::streaming::state::IncrementalRule`]).
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        match self.changed.incremental(self.n) {
            Some(list) => self.state_rows(Some(&list)).map(Some),
            None => Ok(None),
        }
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.load_state(state)
    }
}

impl ColumnarAggregate {
    /// Snapshot rows for the listed groups (all when None).
    fn state_rows(&self, groups: Option<&[usize]>) -> Result<Vec<RecordBatch>> {
        let len = groups.map_or(self.n, <[usize]>::len);
        let keys: Vec<ArrayRef> = match (&self.converter, &self.key_rows, groups) {
            (Some(c), Some(rows), None) => c.convert_rows(rows.iter())?,
            (Some(c), Some(rows), Some(list)) => c.convert_rows(list.iter().map(|&g| rows.row(g)))?,
            _ => vec![],
        };
        let rows = Arc::new(match groups {
            None => Int64Array::from(self.rows.clone()),
            Some(list) => Int64Array::from_iter_values(list.iter().map(|&g| self.rows[g])),
        });
        let states = self
            .accs
            .iter()
            .map(|acc| acc.state(groups))
            .collect::<Result<_>>()?;
        let batch = SnapshotBatch::new(len)
            .keys(keys)
            .column("rows", rows)
            .states(states)
            .build()?;
        Ok(vec![batch])
    }

    /// Restores snapshot batches in order: a later row of a group (an
    /// incremental snapshot's) overwrites an earlier one.
    fn load_state(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let n_keys = if self.converter.is_some() {
            self.keys.len()
        } else {
            0
        };
        for b in state {
            let b = SnapshotRows::new(b, "an aggregate");
            if b.is_empty() {
                continue;
            }
            let states = b.states(self.aggs.len())?;
            for (st, acc) in states.iter().zip(&self.accs) {
                if st.len() != acc.state_types.len() {
                    return Err(DataFusionError::Internal(format!(
                        "aggregate snapshot: {} state columns for {:?}, expected {}",
                        st.len(),
                        acc.kind,
                        acc.state_types.len()
                    )));
                }
            }
            self.intern(&b.keys(n_keys)?, b.len())?;
            let groups = std::mem::take(&mut self.scratch);
            let rows = b.int64("rows")?;
            for (i, &g) in groups.iter().enumerate() {
                self.rows[g] = rows.value(i);
                // The runtime flushes before a snapshot: every group with
                // rows has emitted its current values.
                self.emitted[g] = rows.value(i) > 0;
            }
            for (acc, st) in self.accs.iter_mut().zip(&states) {
                acc.load(st, &groups)?;
            }
            self.scratch = groups;
        }
        Ok(())
    }
}

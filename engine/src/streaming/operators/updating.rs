//! GROUP BY without windows: an updating result, with retractions, and
//! the accumulators that take retractions (multisets for min / max /
//! count(DISTINCT) / string_agg).

use super::*;
use crate::streaming::state::{ChangedGroups, SnapshotBatch, SnapshotRows};

/// A GROUP BY without windows, as planned: an updating result. Built
/// column-wise where every aggregate has that form and nothing is
/// retracted ([`ColumnarAggregate`]), with boxed accumulators otherwise.
#[derive(Debug)]
pub struct AggregateSpec {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub aggs: Vec<AggExpr>,
}

impl OperatorSpec for AggregateSpec {
    fn label(&self) -> String {
        format!(
            "Aggregate: keys=[{}] aggs=[{}]",
            expr_list(&self.keys),
            agg_names(&self.aggs)
        )
    }

    fn explain(&self) -> String {
        if self.keys.is_empty() {
            "global, emit changes on watermark".into()
        } else {
            "emit changes on watermark, hash exchange".into()
        }
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.keys.clone()]
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        let input = &ctx.inputs[0];
        if !input.updating
            && let Some(op) = ColumnarAggregate::try_new(
                self.keys.clone(),
                &input.schema,
                self.aggs.clone(),
                ctx.schema.clone(),
            )?
        {
            return Ok(Box::new(op));
        }
        Ok(Box::new(UpdatingAggregate::new(
            self.keys.clone(),
            &input.schema,
            input.updating,
            self.aggs.clone(),
            ctx.schema.clone(),
        )?))
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
    /// Restored aggregate states, per snapshot batch, per aggregate, its
    /// columns. A restore only indexes the groups' keys; a group's
    /// accumulators are made from its row here when a new row first
    /// reaches it (so a restore costs about as much as reading the keys,
    /// whatever the number and kind of aggregates).
    restored: Vec<Vec<Vec<ArrayRef>>>,
    /// Per group: its (batch, row) in `restored` while not made yet.
    origin: Vec<Option<(u32, u32)>>,
    /// Groups with net rows above zero (the output's row count).
    live: usize,
    /// State columns per aggregate in `restored`.
    restored_widths: Vec<usize>,
    /// Groups changed since the last full snapshot (for incremental ones).
    changed: ChangedGroups,
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
            changed: ChangedGroups::default(),
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
        for (acc, st) in accs.iter_mut().zip(&self.restored[b as usize]) {
            let st: Vec<ArrayRef> = st.iter().map(|c| c.slice(i as usize, 1)).collect();
            acc.merge_batch(&st)?;
            self.state_bytes += acc.size();
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
            self.changed.mark(g);
        }
        Ok(())
    }
}

impl KeyedOperator for UpdatingAggregate {
    fn on_batch(&mut self, _input: usize, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.input_updating {
            return self.accumulate(&batch, false);
        }
        let (inserts, deletes) = split_changes(&batch)?;
        // Deletes and inserts of one batch commute (every accumulator used
        // here keeps a sum, a count or a multiset), but inserts go first:
        // a row inserted and deleted in one batch (a changelog source's
        // create and update) must not drive a count below zero on the way.
        self.accumulate(&inserts, false)?;
        self.accumulate(&deletes, true)
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
        self.changed.full_taken();
        let n = self.accs.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let all: Vec<usize> = (0..n).collect();
        self.snapshot_of(&all)
    }

    /// The groups changed since the last full snapshot, in its layout; a
    /// restore of both takes the later row of a group (None when a full
    /// one is due, see [`crate::streaming::state::IncrementalRule`]).
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let Some(list) = self.changed.incremental(self.accs.len()) else {
            return Ok(None);
        };
        if list.is_empty() {
            // Nothing changed: the full snapshot alone stands.
            return Ok(Some(vec![]));
        }
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
        let keys: Vec<ArrayRef> = match (&self.converter, &self.key_rows) {
            (Some(c), Some(rows)) => c.convert_rows(groups.iter().map(|&g| rows.row(g)))?,
            _ => vec![],
        };
        let rows = Arc::new(Int64Array::from_iter_values(groups.iter().map(|&g| self.rows[g])));
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
        let mut states = Vec::with_capacity(self.aggs.len());
        for k in 0..self.aggs.len() {
            let made_states = made
                .iter()
                .map(|&g| self.accs[g][k].state())
                .collect::<Result<Vec<_>>>()
                .map_err(|e| {
                    DataFusionError::NotImplemented(format!(
                        "{} over an updating input is not checkpointed yet ({e})",
                        self.aggs[k].func.name()
                    ))
                })?;
            let width = match (made_states.first(), self.restored_widths.get(k)) {
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
            let mut columns = Vec::with_capacity(width);
            for j in 0..width {
                let made_col = (!made_states.is_empty())
                    .then(|| ScalarValue::iter_to_array(made_states.iter().map(|s| s[j].clone())))
                    .transpose()?;
                if self.restored.is_empty() {
                    columns.push(made_col.expect("every group is made"));
                    continue;
                }
                let ty = self.restored[0][k][j].data_type().clone();
                let made_col = match made_col {
                    Some(c) if c.data_type() != &ty => Some(cast(&c, &ty)?),
                    other => other,
                };
                let mut arrays: Vec<&dyn Array> = self.restored.iter().map(|b| b[k][j].as_ref()).collect();
                if let Some(c) = &made_col {
                    arrays.push(c.as_ref());
                }
                columns.push(arrow::compute::interleave(&arrays, &sources)?);
            }
            states.push(columns);
        }
        let batch = SnapshotBatch::new(n)
            .keys(keys)
            .column("rows", rows)
            .states(states)
            .build()?;
        Ok(vec![batch])
    }

    fn restore_batches(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        for b in state {
            let b = SnapshotRows::new(b, "an aggregate");
            let states = b.states(self.aggs.len())?;
            let widths: Vec<usize> = states.iter().map(Vec::len).collect();
            if !self.restored.is_empty() && widths != self.restored_widths {
                return Err(DataFusionError::Internal(
                    "aggregate snapshot batches disagree on their state columns".into(),
                ));
            }
            self.restored_widths = widths;
            let keys = match &self.converter {
                Some(c) => Some(c.convert_columns(&b.keys(self.keys.len())?)?),
                None => None,
            };
            let rows = b.int64("rows")?;
            let at = self.restored.len() as u32;
            let n = b.len();
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
                if let Some(keys) = &keys {
                    let row = keys.row(i);
                    self.index.insert(row.as_ref().into(), g);
                    self.key_rows.as_mut().expect("keyed").push(row);
                    self.state_bytes += row.as_ref().len() + 64;
                }
            }
            self.state_bytes += b.memory_size();
            self.restored.push(states);
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

pub(super) fn multiset_kind(agg: &AggExpr) -> Option<MultisetKind> {
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
pub(super) enum MultisetKind {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

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

//! OVER aggregates: `agg(x) OVER (PARTITION BY p ORDER BY t <frame>)` over
//! an append-only input ordered by its event time, as Flink runs them.
//!
//! A row waits until the watermark passes its time (rows to come are then
//! all later), and goes out once, with the aggregates over its frame:
//! rows are taken in event-time order per partition, arrival order among
//! equal times. Frames end at the current row and start
//!
//! - `n PRECEDING` rows: the partition's last `n + 1` rows are held and the
//!   one leaving is retracted from the accumulators;
//! - `d PRECEDING` in RANGE: the rows of the last `d` of event time are
//!   held, peers (equal time) share one result;
//! - `UNBOUNDED PRECEDING`: nothing is held but the accumulators (RANGE,
//!   the default with an ORDER BY, lets peers share one result).
//!
//! Accumulators are DataFusion's (sliding ones for bounded frames, which
//! retract). Rows behind the watermark are late: dropped and counted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int8Array, Int64Array, RecordBatch};
use arrow::datatypes::{Field, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::{
    AggExpr, BuildContext, KeyedOperator, OperatorSpec, Result, agg_names, as_micros, batch_with_schema,
    eval, expr_list, null_as_false,
};
use crate::streaming::state::{IncrementalRule, SnapshotBatch, SnapshotRows};

/// Where a frame starts (it ends at the current row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverFrame {
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW`.
    Rows(u64),
    /// `RANGE BETWEEN d PRECEDING AND CURRENT ROW`, `d` in microseconds.
    Range(i64),
    /// `ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW`.
    RowsUnbounded,
    /// `RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW` (the default).
    RangeUnbounded,
}

impl OverFrame {
    /// Whether rows of equal time share one result.
    fn peers(self) -> bool {
        matches!(self, OverFrame::Range(_) | OverFrame::RangeUnbounded)
    }

    /// Whether rows leave the frame (held, and retracted when they go).
    pub fn bounded(self) -> bool {
        matches!(self, OverFrame::Rows(_) | OverFrame::Range(_))
    }
}

impl std::fmt::Display for OverFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverFrame::Rows(n) => write!(f, "ROWS {n} PRECEDING"),
            OverFrame::Range(d) => write!(f, "RANGE {d}us PRECEDING"),
            OverFrame::RowsUnbounded => f.write_str("ROWS UNBOUNDED PRECEDING"),
            OverFrame::RangeUnbounded => f.write_str("RANGE UNBOUNDED PRECEDING"),
        }
    }
}

/// Aggregates `OVER (PARTITION BY .. ORDER BY <event time> <frame>)`, as
/// planned: each row once the watermark passes it, with its frame's values.
#[derive(Debug)]
pub struct OverSpec {
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    /// The input's event-time column (the ORDER BY) and its name.
    pub time: usize,
    pub time_name: String,
    pub aggs: Vec<AggExpr>,
    pub frame: OverFrame,
}

impl OperatorSpec for OverSpec {
    fn label(&self) -> String {
        format!(
            "OverAggregate: partition=[{}] order=[{}] frame=[{}] aggs=[{}]",
            expr_list(&self.partition),
            self.time_name,
            self.frame,
            agg_names(&self.aggs)
        )
    }

    fn explain(&self) -> String {
        if self.partition.is_empty() {
            "global, rows wait for the watermark, emitted in event-time order".into()
        } else {
            "rows wait for the watermark, emitted in event-time order per partition, hash exchange".into()
        }
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.partition.clone()]
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        Ok(Box::new(OverAggregate::new(
            self.partition.clone(),
            self.time,
            self.aggs.clone(),
            self.frame,
            ctx.inputs[0].schema.clone(),
            ctx.schema.clone(),
        )?))
    }

    fn keeps_input_columns(&self) -> bool {
        true
    }
}

/// Snapshot column saying what a row is.
const KIND: &str = "kind";
const PENDING: i8 = 0;
const FRAME: i8 = 1;
const ACCUMULATORS: i8 = 2;
/// In an incremental snapshot: the partition's earlier state is gone (the
/// batch's other rows of it are its state now).
const CLEARED: i8 = 3;

/// A row by its partition key's bytes and its own.
type KeyedRow = (Box<[u8]>, Box<[u8]>);
/// A row's bytes with its time.
type TimedRow = (i64, Box<[u8]>);

/// A partition's frame and accumulators.
struct Partition {
    /// Rows in the accumulators (bounded frames), oldest first.
    frame: VecDeque<TimedRow>,
    accs: Vec<Box<dyn Accumulator>>,
}

/// Output rows of a progress step, decoded together.
#[derive(Default)]
struct Emitted {
    rows: Vec<Box<[u8]>>,
    values: Vec<Vec<ScalarValue>>,
}

/// See the module docs.
pub struct OverAggregate {
    partition: Vec<Arc<dyn PhysicalExpr>>,
    /// The input's event-time column (the ORDER BY).
    time: usize,
    aggs: Vec<AggExpr>,
    frame: OverFrame,
    input: SchemaRef,
    output: SchemaRef,
    keys: RowConverter,
    rows: RowConverter,
    partitions: HashMap<Box<[u8]>, Partition>,
    /// Rows waiting for the watermark: (partition key, row) by time, in
    /// arrival order.
    pending: BTreeMap<i64, Vec<KeyedRow>>,
    watermark: i64,
    late: u64,
    held: usize,
    bytes: usize,
    /// Partitions (keys) whose waiting rows, frame or accumulators changed
    /// since the last full snapshot.
    changed: HashSet<Box<[u8]>>,
    rule: IncrementalRule,
}

/// Bytes a held row costs beyond its own.
const ROW_OVERHEAD: usize = 4 * std::mem::size_of::<usize>() + std::mem::size_of::<i64>();

impl OverAggregate {
    /// `output` is the input's columns followed by one per aggregate.
    pub fn new(
        partition: Vec<Arc<dyn PhysicalExpr>>,
        time: usize,
        aggs: Vec<AggExpr>,
        frame: OverFrame,
        input: SchemaRef,
        output: SchemaRef,
    ) -> Result<Self> {
        let key_types = partition
            .iter()
            .map(|p| Ok(SortField::new(p.data_type(&input)?)))
            .collect::<Result<Vec<_>>>()?;
        let rows = crate::streaming::state::row_converter(&input)?;
        Ok(Self {
            partition,
            time,
            aggs,
            frame,
            input,
            output,
            keys: RowConverter::new(key_types)?,
            rows,
            partitions: HashMap::new(),
            pending: BTreeMap::new(),
            watermark: i64::MIN,
            late: 0,
            held: 0,
            bytes: 0,
            changed: HashSet::new(),
            rule: IncrementalRule::default(),
        })
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggs
            .iter()
            .map(|a| {
                if self.frame.bounded() {
                    a.func.create_sliding_accumulator()
                } else {
                    a.func.create_accumulator()
                }
            })
            .collect()
    }

    fn decode(&self, rows: &[&[u8]]) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let cols = self.rows.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        Ok(RecordBatch::try_new_with_options(
            self.input.clone(),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?)
    }

    /// Each aggregate's arguments and FILTER over `batch`.
    #[allow(clippy::type_complexity)]
    fn inputs(&self, batch: &RecordBatch) -> Result<Vec<(Vec<ArrayRef>, Option<BooleanArray>)>> {
        self.aggs
            .iter()
            .map(|a| Ok((a.args(batch)?, a.filter(batch)?.map(|f| null_as_false(&f)))))
            .collect()
    }

    /// Adds (or retracts) row `i` of `inputs` to the accumulators.
    fn feed(
        accs: &mut [Box<dyn Accumulator>],
        inputs: &[(Vec<ArrayRef>, Option<BooleanArray>)],
        i: usize,
        retract: bool,
    ) -> Result<()> {
        for (acc, (args, filter)) in accs.iter_mut().zip(inputs) {
            if filter.as_ref().is_some_and(|f| !f.value(i)) {
                continue;
            }
            let one: Vec<ArrayRef> = args.iter().map(|a| a.slice(i, 1)).collect();
            if retract {
                acc.retract_batch(&one)?;
            } else {
                acc.update_batch(&one)?;
            }
        }
        Ok(())
    }

    /// A partition's rows passed by the watermark, in time order.
    fn advance(&mut self, key: Box<[u8]>, new: Vec<TimedRow>, emitted: &mut Emitted) -> Result<()> {
        let mut part = match self.partitions.remove(&key) {
            Some(p) => p,
            None => Partition {
                frame: VecDeque::new(),
                accs: self.accumulators()?,
            },
        };
        // The frame rows that leave in this step come first, then the new
        // rows: one batch to evaluate the arguments over.
        let held = part.frame.len();
        let leave = match self.frame {
            OverFrame::Rows(n) => (held + new.len()).saturating_sub(n as usize + 1).min(held),
            OverFrame::Range(d) => {
                let last = new.last().map_or(i64::MIN, |(t, _)| *t);
                part.frame
                    .iter()
                    .take_while(|(t, _)| *t < last.saturating_sub(d))
                    .count()
            }
            _ => 0,
        };
        let mut refs: Vec<&[u8]> = part.frame.iter().take(leave).map(|(_, r)| &**r).collect();
        refs.extend(new.iter().map(|(_, r)| &**r));
        let batch = self.decode(&refs)?;
        let inputs = self.inputs(&batch)?;
        // Position in `batch` of the k-th row to leave the frame.
        let mut left = 0usize;
        let at = |k: usize| -> Result<usize> {
            if k < leave {
                Ok(k)
            } else if k >= held {
                Ok(leave + (k - held))
            } else {
                Err(DataFusionError::Internal(
                    "an OVER frame row left out of order".into(),
                ))
            }
        };
        let evaluate = |accs: &mut [Box<dyn Accumulator>]| -> Result<Vec<ScalarValue>> {
            accs.iter_mut().map(|a| a.evaluate()).collect()
        };
        let mut i = 0;
        while i < new.len() {
            // The row and, in RANGE frames, its peers.
            let t = new[i].0;
            let mut end = i + 1;
            if self.frame.peers() {
                while end < new.len() && new[end].0 == t {
                    end += 1;
                }
            }
            for (j, (t, row)) in new.iter().enumerate().take(end).skip(i) {
                Self::feed(&mut part.accs, &inputs, leave + j, false)?;
                if self.frame.bounded() {
                    part.frame.push_back((*t, row.clone()));
                    self.held += 1;
                    self.bytes += row.len() + ROW_OVERHEAD;
                }
                if let OverFrame::Rows(n) = self.frame {
                    while part.frame.len() > n as usize + 1 {
                        let (_, gone) = part.frame.pop_front().expect("a frame row");
                        Self::feed(&mut part.accs, &inputs, at(left)?, true)?;
                        left += 1;
                        self.held -= 1;
                        self.bytes -= gone.len() + ROW_OVERHEAD;
                    }
                    let values = evaluate(&mut part.accs)?;
                    emitted.rows.push(row.clone());
                    emitted.values.push(values);
                }
            }
            if let OverFrame::Range(d) = self.frame {
                while part
                    .frame
                    .front()
                    .is_some_and(|(ft, _)| *ft < t.saturating_sub(d))
                {
                    let (_, gone) = part.frame.pop_front().expect("a frame row");
                    Self::feed(&mut part.accs, &inputs, at(left)?, true)?;
                    left += 1;
                    self.held -= 1;
                    self.bytes -= gone.len() + ROW_OVERHEAD;
                }
            }
            match self.frame {
                OverFrame::Rows(_) => {}
                OverFrame::RowsUnbounded => {
                    for row in &new[i..end] {
                        let values = evaluate(&mut part.accs)?;
                        emitted.rows.push(row.1.clone());
                        emitted.values.push(values);
                    }
                }
                OverFrame::Range(_) | OverFrame::RangeUnbounded => {
                    let values = evaluate(&mut part.accs)?;
                    for row in &new[i..end] {
                        emitted.rows.push(row.1.clone());
                        emitted.values.push(values.clone());
                    }
                }
            }
            i = end;
        }
        self.partitions.insert(key, part);
        Ok(())
    }

    fn emit(&self, emitted: Emitted, out: &mut Vec<RecordBatch>) -> Result<()> {
        let Emitted { rows, values } = emitted;
        for (rows, values) in rows.chunks(8192).zip(values.chunks(8192)) {
            let refs: Vec<&[u8]> = rows.iter().map(|r| &**r).collect();
            let mut cols = self.decode(&refs)?.columns().to_vec();
            for a in 0..self.aggs.len() {
                cols.push(ScalarValue::iter_to_array(values.iter().map(|v| v[a].clone()))?);
            }
            out.push(batch_with_schema(&self.output, cols)?);
        }
        Ok(())
    }

    /// Rows as a snapshot batch: partition keys `k0..`, `kind`, `t`, the
    /// row's columns `c0..`, then the accumulator state columns `s0..`
    /// (NULL).
    fn rows_batch(&self, kind: i8, rows: &[(i64, &[u8])], states: &[Field]) -> Result<RecordBatch> {
        let refs: Vec<&[u8]> = rows.iter().map(|(_, r)| *r).collect();
        let batch = self.decode(&refs)?;
        let keys: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|p| eval(p, &batch))
            .collect::<Result<_>>()?;
        let states = states
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), rows.len()));
        SnapshotBatch::new(rows.len())
            .keys(keys)
            .column(KIND, Arc::new(Int8Array::from(vec![kind; rows.len()])))
            .column(
                "t",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|(t, _)| *t))),
            )
            .numbered("c", batch.columns().iter().cloned())
            .numbered("s", states)
            .build()
    }

    /// The accumulators' state fields (unbounded frames keep only these).
    fn state_fields(&self) -> Result<Vec<Field>> {
        if self.frame.bounded() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for a in &self.aggs {
            out.extend(a.func.state_fields()?.iter().map(|f| f.as_ref().clone()));
        }
        Ok(out)
    }
}

impl KeyedOperator for OverAggregate {
    fn on_batch(&mut self, input: usize, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        if input != 0 {
            return Err(DataFusionError::Internal(format!(
                "an OVER aggregate has no input {input}"
            )));
        }
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let times = as_micros(batch.column(self.time))?;
        let key_cols = self
            .partition
            .iter()
            .map(|p| eval(p, &batch))
            .collect::<Result<Vec<_>>>()?;
        let keys = if key_cols.is_empty() {
            None
        } else {
            Some(self.keys.convert_columns(&key_cols)?)
        };
        let rows = self.rows.convert_columns(batch.columns())?;
        for i in 0..n {
            // Behind the watermark (or without a time): late.
            if times.is_null(i) || times.value(i) < self.watermark {
                self.late += 1;
                continue;
            }
            let key: Box<[u8]> = keys
                .as_ref()
                .map_or_else(|| Box::from(&[][..]), |k| k.row(i).data().into());
            let row: Box<[u8]> = rows.row(i).data().into();
            self.held += 1;
            self.bytes += key.len() + row.len() + ROW_OVERHEAD;
            if !self.changed.contains(&key) {
                self.changed.insert(key.clone());
            }
            self.pending.entry(times.value(i)).or_default().push((key, row));
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        self.watermark = self.watermark.max(watermark);
        if self
            .pending
            .first_key_value()
            .is_none_or(|(t, _)| *t >= self.watermark)
        {
            return Ok(());
        }
        let later = self.pending.split_off(&self.watermark);
        let ready = std::mem::replace(&mut self.pending, later);
        // Per partition, in time order (arrival order among equal times).
        let mut by_key: BTreeMap<Box<[u8]>, Vec<TimedRow>> = BTreeMap::new();
        for (t, rows) in ready {
            for (key, row) in rows {
                self.held -= 1;
                self.bytes -= key.len() + row.len() + ROW_OVERHEAD;
                by_key.entry(key).or_default().push((t, row));
            }
        }
        let mut emitted = Emitted::default();
        for (key, rows) in by_key {
            if !self.changed.contains(&key) {
                self.changed.insert(key.clone());
            }
            self.advance(key, rows, &mut emitted)?;
        }
        self.emit(emitted, out)
    }

    fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    fn state_size(&self) -> (usize, usize) {
        (self.held, self.bytes + self.keys.size() + self.rows.size())
    }

    /// Rows waiting for the watermark, each partition's frame rows in
    /// order, and (unbounded frames) each partition's accumulator state.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.rule.full_taken();
        self.changed.clear();
        self.snapshot_of(None)
    }

    /// The changed partitions whole, each first cleared of what the full
    /// snapshot held for it.
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let mut keys: HashSet<&[u8]> = self.partitions.keys().map(|k| &**k).collect();
        keys.extend(self.pending.values().flatten().map(|(k, _)| &**k));
        let total = keys.len().max(self.changed.len());
        if !self.rule.incremental(self.changed.len(), total) {
            return Ok(None);
        }
        let changed = std::mem::take(&mut self.changed);
        let out = self.snapshot_of(Some(&changed));
        self.changed = changed;
        out.map(Some)
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let width = self.input.fields().len();
        let n_states = self.state_fields()?.len();
        // Partitions an incremental snapshot replaced: cleared once, at
        // the first batch that names them.
        let mut replaced: HashSet<Box<[u8]>> = HashSet::new();
        for batch in state {
            let batch = SnapshotRows::new(batch, "an OVER");
            if batch.is_empty() {
                continue;
            }
            let replaces = batch.replaces();
            let kinds = batch.int8(KIND)?;
            let times = batch.int64("t")?;
            let key_cols = batch.keys(self.partition.len())?;
            let keys = if key_cols.is_empty() {
                None
            } else {
                Some(self.keys.convert_columns(&key_cols)?)
            };
            let key_of = |i: usize| -> Box<[u8]> {
                keys.as_ref()
                    .map_or_else(|| Box::from(&[][..]), |k| k.row(i).data().into())
            };
            let row_cols = batch_with_schema(&self.input, batch.numbered("c", width)?)?;
            let rows = self.rows.convert_columns(row_cols.columns())?;
            let state_cols = batch.numbered("s", n_states)?;
            if replaces {
                let fresh: HashSet<Box<[u8]>> = (0..batch.len())
                    .map(key_of)
                    .filter(|k| !replaced.contains(k))
                    .collect();
                if !fresh.is_empty() {
                    self.clear(&fresh);
                    replaced.extend(fresh);
                }
            }
            for i in 0..batch.len() {
                let key = key_of(i);
                match kinds.value(i) {
                    CLEARED => {}
                    PENDING => {
                        let row: Box<[u8]> = rows.row(i).data().into();
                        self.held += 1;
                        self.bytes += key.len() + row.len() + ROW_OVERHEAD;
                        self.pending.entry(times.value(i)).or_default().push((key, row));
                    }
                    FRAME => {
                        let row: Box<[u8]> = rows.row(i).data().into();
                        self.held += 1;
                        self.bytes += row.len() + ROW_OVERHEAD;
                        let accs = self.accumulators()?;
                        let part = self.partitions.entry(key).or_insert_with(|| Partition {
                            frame: VecDeque::new(),
                            accs,
                        });
                        part.frame.push_back((times.value(i), row));
                    }
                    ACCUMULATORS => {
                        let mut accs = self.accumulators()?;
                        let mut s = 0;
                        for (acc, a) in accs.iter_mut().zip(&self.aggs) {
                            let w = a.func.state_fields()?.len();
                            let one: Vec<ArrayRef> =
                                state_cols[s..s + w].iter().map(|c| c.slice(i, 1)).collect();
                            acc.merge_batch(&one)?;
                            s += w;
                        }
                        self.partitions.insert(
                            key,
                            Partition {
                                frame: VecDeque::new(),
                                accs,
                            },
                        );
                    }
                    other => {
                        return Err(DataFusionError::Internal(format!(
                            "an OVER snapshot row of kind {other}"
                        )));
                    }
                }
            }
        }
        // Frame rows back into their accumulators, in order.
        if self.frame.bounded() {
            let keys: Vec<Box<[u8]>> = self.partitions.keys().cloned().collect();
            for key in keys {
                let part = self.partitions.get(&key).expect("a partition");
                let refs: Vec<&[u8]> = part.frame.iter().map(|(_, r)| &**r).collect();
                let batch = self.decode(&refs)?;
                let inputs = self.inputs(&batch)?;
                let part = self.partitions.get_mut(&key).expect("a partition");
                for i in 0..batch.num_rows() {
                    Self::feed(&mut part.accs, &inputs, i, false)?;
                }
            }
        }
        Ok(())
    }
}

impl OverAggregate {
    /// The state of the partitions in `only` (None: all); with `only`,
    /// batches that replace those partitions' earlier state.
    fn snapshot_of(&mut self, only: Option<&HashSet<Box<[u8]>>>) -> Result<Vec<RecordBatch>> {
        let want = |k: &[u8]| only.is_none_or(|o| o.contains(k));
        let states = self.state_fields()?;
        let mut out = Vec::new();
        if let Some(only) = only
            && !only.is_empty()
        {
            let keys: Vec<&[u8]> = only.iter().map(|k| &**k).collect();
            out.push(self.cleared_batch(&keys, &states)?);
        }
        let pending: Vec<(i64, &[u8])> = self
            .pending
            .iter()
            .flat_map(|(t, rows)| rows.iter().filter(|(k, _)| want(k)).map(move |(_, r)| (*t, &**r)))
            .collect();
        for chunk in pending.chunks(8192) {
            out.push(self.rows_batch(PENDING, chunk, &states)?);
        }
        let frames: Vec<(i64, &[u8])> = self
            .partitions
            .iter()
            .filter(|(k, _)| want(k))
            .flat_map(|(_, p)| p.frame.iter().map(|(t, r)| (*t, &**r)))
            .collect();
        for chunk in frames.chunks(8192) {
            out.push(self.rows_batch(FRAME, chunk, &states)?);
        }
        if !states.is_empty() && self.partitions.keys().any(|k| want(k)) {
            let mut keys: Vec<Box<[u8]>> = Vec::new();
            let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); states.len()];
            for (key, p) in self.partitions.iter_mut().filter(|(k, _)| want(k)) {
                keys.push(key.clone());
                let mut s = 0;
                for acc in p.accs.iter_mut() {
                    for v in acc.state()? {
                        values[s].push(v);
                        s += 1;
                    }
                }
            }
            let n = keys.len();
            let keys = self.key_columns(keys.iter().map(|k| &**k))?;
            let nulls = self
                .input
                .fields()
                .iter()
                .map(|f| arrow::array::new_null_array(f.data_type(), n));
            let state_cols = states
                .iter()
                .zip(values)
                .map(|(field, vals)| {
                    let a = ScalarValue::iter_to_array(vals)?;
                    Ok(if a.data_type() == field.data_type() {
                        a
                    } else {
                        arrow::compute::cast(&a, field.data_type())?
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let batch = SnapshotBatch::new(n)
                .keys(keys)
                .column(KIND, Arc::new(Int8Array::from(vec![ACCUMULATORS; n])))
                .column("t", Arc::new(Int64Array::from(vec![0i64; n])))
                .numbered("c", nulls)
                .numbered("s", state_cols)
                .build()?;
            out.push(batch);
        }
        if only.is_some() {
            out = out
                .into_iter()
                .map(SnapshotBatch::mark_replaces)
                .collect::<Result<_>>()?;
        }
        Ok(out)
    }

    /// Drops what is held for the partitions in `keys` (waiting rows,
    /// frame, accumulators).
    fn clear(&mut self, keys: &HashSet<Box<[u8]>>) {
        for key in keys {
            if let Some(part) = self.partitions.remove(key) {
                for (_, row) in &part.frame {
                    self.held -= 1;
                    self.bytes -= row.len() + ROW_OVERHEAD;
                }
            }
        }
        for rows in self.pending.values_mut() {
            rows.retain(|(k, row)| {
                let gone = keys.contains(k);
                if gone {
                    self.held -= 1;
                    self.bytes -= k.len() + row.len() + ROW_OVERHEAD;
                }
                !gone
            });
        }
        self.pending.retain(|_, rows| !rows.is_empty());
    }

    /// Partition keys (in the row format) back as the key columns (none
    /// without PARTITION BY).
    fn key_columns<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Result<Vec<ArrayRef>> {
        if self.partition.is_empty() {
            return Ok(vec![]);
        }
        let parser = self.keys.parser();
        Ok(self.keys.convert_rows(keys.map(|k| parser.parse(k)))?)
    }

    /// A row per partition in `keys`, saying its earlier state is gone.
    fn cleared_batch(&self, keys: &[&[u8]], states: &[Field]) -> Result<RecordBatch> {
        let n = keys.len();
        let key_cols = self.key_columns(keys.iter().copied())?;
        let nulls = self
            .input
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), n));
        let state_nulls = states
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), n));
        SnapshotBatch::new(n)
            .keys(key_cols)
            .column(KIND, Arc::new(Int8Array::from(vec![CLEARED; n])))
            .column("t", Arc::new(Int64Array::from(vec![0i64; n])))
            .numbered("c", nulls)
            .numbered("s", state_nulls)
            .build()
    }
}

#[cfg(test)]
mod tests;

//! GROUP BY over tumbling and hopping windows: state per open window,
//! emitted once when the watermark passes the window's end.

use super::*;
use crate::streaming::state::{SnapshotBatch, SnapshotRows};

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
/// A GROUP BY over TUMBLE / HOP / CUMULATE windows, as planned.
#[derive(Debug)]
pub struct WindowAggregateSpec {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub aggs: Vec<AggExpr>,
    pub window: WindowKey,
}

impl OperatorSpec for WindowAggregateSpec {
    fn label(&self) -> String {
        format!(
            "WindowAggregate: keys=[{}] aggs=[{}]",
            expr_list(&self.keys),
            agg_names(&self.aggs)
        )
    }

    fn explain(&self) -> String {
        format!(
            "window {} of {}us, emit on watermark, hash exchange",
            if self.window.is_end {
                "window_end"
            } else {
                "window_start"
            },
            self.window.size_us
        )
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.keys.clone()]
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        Ok(Box::new(WindowAggregate::new(
            self.keys.clone(),
            &ctx.inputs[0].schema,
            self.aggs.clone(),
            self.window,
            ctx.schema.clone(),
        )?))
    }
}

pub struct WindowAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_schema: SchemaRef,
    aggs: Vec<AggExpr>,
    window: WindowKey,
    output: SchemaRef,
    /// Open windows by end (microseconds).
    windows: BTreeMap<i64, WindowState>,
    watermark: i64,
    /// Rows behind the watermark dropped since the runtime last asked.
    late: u64,
    scratch: Vec<usize>,
}

impl WindowAggregate {
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: &Schema,
        aggs: Vec<AggExpr>,
        window: WindowKey,
        output: SchemaRef,
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
            late: 0,
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
        // A window met again (in the snapshot of another task, restoring
        // at another parallelism) takes these groups in beside its own.
        if !self.windows.contains_key(&end) {
            let state = self.new_window()?;
            self.windows.insert(end, state);
        }
        let state = self.windows.get_mut(&end).expect("inserted above");
        let mut idx = Vec::new();
        state.groups.intern(keys, &mut idx)?;
        let total = state.groups.len();
        for (acc, st) in state.accs.iter_mut().zip(states) {
            acc.merge_batch(st, &idx, total)?;
        }
        debug_assert_eq!(idx.len(), rows);
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
    fn on_batch(&mut self, _input: usize, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
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
            self.late += (batch.num_rows() - kept) as u64;
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

    fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
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
            let batch = SnapshotBatch::new(rows)
                .column("end", Arc::new(Int64Array::from(vec![end; rows])))
                .keys(keys)
                .states(states)
                .watermark(self.watermark)
                .build()?;
            out.push(batch);
        }
        if out.is_empty() {
            out.push(SnapshotBatch::new(0).watermark(self.watermark).build()?);
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let n_keys = self.keys.len();
        for b in state {
            let b = SnapshotRows::new(b, "a window aggregate");
            if let Some(w) = b.watermark()? {
                self.watermark = self.watermark.max(w);
            }
            if b.is_empty() {
                continue;
            }
            let end = b.int64("end")?.value(0);
            let states = b.states(self.aggs.len())?;
            self.load_window(end, &b.keys(n_keys)?, &states, b.len())?;
        }
        Ok(())
    }
}

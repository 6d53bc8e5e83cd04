//! GROUP BY over SESSION windows: sessions per key that merge when a row
//! bridges them, emitted when the watermark passes their end.

use super::*;
use crate::streaming::state::{SnapshotBatch, SnapshotRows};

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

/// A GROUP BY over SESSION windows, as planned.
#[derive(Debug)]
pub struct SessionAggregateSpec {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub layout: SessionLayout,
    pub aggs: Vec<AggExpr>,
}

impl OperatorSpec for SessionAggregateSpec {
    fn label(&self) -> String {
        format!(
            "SessionAggregate: keys=[{}] aggs=[{}]",
            expr_list(&self.keys),
            agg_names(&self.aggs)
        )
    }

    fn explain(&self) -> String {
        format!(
            "session gap {}us, merge per key, emit on watermark, hash exchange",
            self.layout.gap_us
        )
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.keys.clone()]
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        Ok(Box::new(SessionAggregate::new(
            self.keys.clone(),
            &ctx.inputs[0].schema,
            self.layout.clone(),
            self.aggs.clone(),
            ctx.schema.clone(),
        )?))
    }
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
    /// Rows behind the watermark dropped since the runtime last asked.
    late: u64,
}

impl SessionAggregate {
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        input: &Schema,
        layout: SessionLayout,
        aggs: Vec<AggExpr>,
        output: SchemaRef,
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
            late: 0,
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
        let keys = match &self.converter {
            Some(c) => {
                let parser = c.parser();
                c.convert_rows(keys.iter().map(|k| parser.parse(k)))?
            }
            None => vec![],
        };
        let mut columns = Vec::with_capacity(self.aggs.len());
        for (k, agg) in self.aggs.iter().enumerate() {
            columns.push(if n == 0 {
                agg.func
                    .state_fields()?
                    .iter()
                    .map(|f| arrow::array::new_empty_array(f.data_type()))
                    .collect()
            } else {
                let width = states[k][0].len();
                (0..width)
                    .map(|j| ScalarValue::iter_to_array(states[k].iter().map(|s| s[j].clone())))
                    .collect::<Result<Vec<_>>>()?
            });
        }
        let batch = SnapshotBatch::new(n)
            .keys(keys)
            .column("start", Arc::new(Int64Array::from(starts)))
            .column("end", Arc::new(Int64Array::from(ends)))
            .states(columns)
            .watermark(self.watermark)
            .build()?;
        Ok(vec![batch])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        for b in state {
            let b = SnapshotRows::new(b, "a session aggregate");
            if let Some(w) = b.watermark()? {
                self.watermark = self.watermark.max(w);
            }
            let states = b.states(self.aggs.len())?;
            let rows = match &self.converter {
                Some(c) => Some(c.convert_columns(&b.keys(self.keys.len())?)?),
                None => None,
            };
            let (starts, ends) = (b.int64("start")?, b.int64("end")?);
            for i in 0..b.len() {
                let key: Box<[u8]> = match &rows {
                    Some(r) => r.row(i).as_ref().into(),
                    None => Box::new([]),
                };
                let mut accs = self.new_accs()?;
                for (acc, st) in accs.iter_mut().zip(&states) {
                    let st: Vec<ArrayRef> = st.iter().map(|c| c.slice(i, 1)).collect();
                    acc.merge_batch(&st)?;
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

    fn on_batch(&mut self, _input: usize, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
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
        self.late += late;
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

    fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
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

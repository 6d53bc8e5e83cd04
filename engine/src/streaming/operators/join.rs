//! Regular equi-joins (INNER, LEFT, RIGHT, FULL) over append-only or
//! updating inputs, computed incrementally.
//!
//! Each input keeps its rows per join key ([`KeyedRows`]: a multiset, so
//! an input without a unique key is fine). A change on one input is joined
//! with the other input's rows under its key and the residual ON
//! condition, and goes out with the change's sign: a retraction retracts
//! exactly the rows its insertion produced.
//!
//! For an outer side every held row counts the rows of the other input it
//! matches. A row matching nothing is out NULL-padded; when its count goes
//! 0 -> 1 the padded row is retracted, 1 -> 0 it is emitted again.
//!
//! Rows whose key holds a NULL match nothing (SQL's `=`); they are not
//! held, and on an outer side they go out NULL-padded at once.
//!
//! An interval join (the ON condition bounds one input's event time by the
//! other's row, as in `b.t BETWEEN a.t AND a.expires`) drops held rows once
//! nothing to come can match them: a row of input `s` goes when the other
//! input's watermark passes its bound (`a.expires` for an auction; for a
//! bid, `b.t`, since auctions to come start after the watermark). Expiry
//! is not a retraction: what the row produced stands. With expiry the
//! other input's late rows (behind its own watermark) are dropped and
//! counted, as they could have met rows already dropped. Only append-only
//! inputs expire (a retraction must find what it retracts). An outer or
//! anti interval join whose preserved inputs all expire defers the rows
//! that match nothing: such a row goes out (NULL-padded) when it expires
//! unmatched, never to be retracted, so the output is append-only, as in
//! Flink.
//!
//! The output has no event time: a row of one input can meet a row of the
//! other arbitrarily late, so windows over a join's output are not offered
//! (it feeds views, sinks and non-windowed aggregates).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int8Array, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::Rows;
use datafusion::common::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;

use super::{
    BuildContext, KeyedOperator, OperatorSpec, Result, as_micros, batch_with_schema, eval, null_as_false,
    split_changes,
};
use crate::stream::with_op_column;
use crate::streaming::state::{IncrementalRule, KeyedRows, RowsSnapshot, SnapshotBatch, SnapshotRows};

/// What a join emits: matched pairs (and, for outer joins, the rows of
/// the preserved inputs that match nothing, NULL-padded), or for semi and
/// anti joins the rows of one input that match something / nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
    LeftAnti,
    RightSemi,
    RightAnti,
}

impl JoinKind {
    /// Whether the held rows of input `side` (0 left, 1 right) count their
    /// matches: the preserved inputs of outer joins, the output input of
    /// semi and anti joins.
    pub fn preserves(self, side: usize) -> bool {
        match self {
            JoinKind::Inner => false,
            JoinKind::Left | JoinKind::LeftSemi | JoinKind::LeftAnti => side == 0,
            JoinKind::Right | JoinKind::RightSemi | JoinKind::RightAnti => side == 1,
            JoinKind::Full => true,
        }
    }

    /// Semi and anti joins emit one input's rows, not pairs.
    fn emits_pairs(self) -> bool {
        matches!(
            self,
            JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full
        )
    }

    fn is_semi(self) -> bool {
        matches!(self, JoinKind::LeftSemi | JoinKind::RightSemi)
    }

    /// Whether the output can retract with both inputs append-only: a row
    /// of an outer or anti join goes out unmatched and is retracted when
    /// a match comes; inner and semi joins only ever add matches.
    fn retracts(self) -> bool {
        !matches!(self, JoinKind::Inner | JoinKind::LeftSemi | JoinKind::RightSemi)
    }
}

impl std::fmt::Display for JoinKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoinKind::Inner => "Inner",
            JoinKind::Left => "Left",
            JoinKind::Right => "Right",
            JoinKind::Full => "Full",
            JoinKind::LeftSemi => "LeftSemi",
            JoinKind::LeftAnti => "LeftAnti",
            JoinKind::RightSemi => "RightSemi",
            JoinKind::RightAnti => "RightAnti",
        })
    }
}

/// Whether a join's output retracts: an input does, or an outer or anti
/// join emits rows matching nothing that a match retracts later, unless
/// every preserved input expires its rows (they then go out at expiry,
/// when nothing can match them any more). `expires[i]`: input `i` has an
/// interval bound.
pub fn output_updating(kind: JoinKind, updating: [bool; 2], expires: [bool; 2]) -> bool {
    updating[0] || updating[1] || (kind.retracts() && !defers_unmatched(kind, updating, expires))
}

/// See [`output_updating`].
fn defers_unmatched(kind: JoinKind, updating: [bool; 2], expires: [bool; 2]) -> bool {
    !updating[0] && !updating[1] && kind.retracts() && (0..2).all(|s| !kind.preserves(s) || expires[s])
}

/// Pairs joined per output batch: a row matching very many rows goes out
/// in batches of this size, never as one giant batch.
const PAIRS_PER_BATCH: usize = 8192;

/// Snapshot column saying which input a held row belongs to.
const SIDE: &str = "side";

/// What one input of the join is.
pub struct JoinInput {
    /// The input's row schema (without the op column).
    pub schema: SchemaRef,
    /// Its join key expressions (every input's keys have the same types).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Whether its batches carry the op column (inserts and deletes).
    pub updating: bool,
    /// A time (over its rows) every row not late has at or after the
    /// input's watermark: its event time, or a window's end.
    pub time: Option<Arc<dyn PhysicalExpr>>,
    /// An interval join's bound over this input's rows (a timestamp): a
    /// held row is dropped once the other input's watermark passes it.
    /// Only for append-only inputs whose other input is append-only and
    /// has an event time (the bound comes from a condition on it).
    pub expire: Option<Arc<dyn PhysicalExpr>>,
}

impl JoinInput {
    /// An input without event time or expiry.
    pub fn new(schema: SchemaRef, keys: Vec<Arc<dyn PhysicalExpr>>, updating: bool) -> Self {
        Self {
            schema,
            keys,
            updating,
            time: None,
            expire: None,
        }
    }
}

/// An equi-join of two inputs, as planned.
#[derive(Debug)]
pub struct JoinSpec {
    pub kind: JoinKind,
    /// Key expressions per input (same types on both).
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// The rest of the ON condition, over left then right columns.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Per input, a time (over its rows) every row not late has at or
    /// after the input's watermark: the event time, or a window's end.
    pub time: [Option<Arc<dyn PhysicalExpr>>; 2],
    /// Per input, an interval join's bound over its rows: a held row is
    /// dropped once the other input's watermark passes it.
    pub expire: [Option<Arc<dyn PhysicalExpr>>; 2],
    /// `streaming.state_ttl`: rows of an input without a bound are evicted
    /// this long after they came.
    pub ttl: Option<std::time::Duration>,
    /// The output column that is an event time (see the planner): an
    /// inner interval join whose condition bounds one input's event time
    /// from below by the other input's rows keeps it.
    pub event_time: Option<usize>,
    /// How far (µs) that time may trail the other input's (`b.t >= a.t -
    /// INTERVAL '1' SECOND`: 1 s): the watermark passed on trails by it.
    pub event_time_lag: i64,
}

impl OperatorSpec for JoinSpec {
    fn label(&self) -> String {
        let on = self.keys[0]
            .iter()
            .zip(&self.keys[1])
            .map(|(l, r)| format!("{l} = {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = match &self.filter {
            Some(f) => format!("{}Join: on=[{on}] filter={f}", self.kind),
            None => format!("{}Join: on=[{on}]", self.kind),
        };
        let bounds: Vec<String> = self
            .expire
            .iter()
            .enumerate()
            .filter_map(|(side, bound)| {
                let (this, other) = if side == 0 {
                    ("left", "right")
                } else {
                    ("right", "left")
                };
                bound
                    .as_ref()
                    .map(|b| format!("{this} until {other} watermark > {b}"))
            })
            .collect();
        if !bounds.is_empty() {
            s.push_str(&format!(" bounds=[{}]", bounds.join(", ")));
        }
        if let Some(ttl) = self.ttl
            && self.expire.iter().any(Option::is_none)
        {
            s.push_str(&format!(" ttl={}", crate::checkpoint::format_interval(Some(ttl))));
        }
        if let Some(t) = self.event_time {
            s.push_str(&format!(" event_time=#{t}"));
            if self.event_time_lag > 0 {
                s.push_str(&format!(" watermark_lag={}us", self.event_time_lag));
            }
        }
        s
    }

    fn event_time_column(&self) -> Option<usize> {
        self.event_time
    }

    fn explain(&self) -> String {
        if self.expire.iter().any(Option::is_some) {
            "interval join: state per key on both inputs, dropped as watermarks pass its bounds, emit \
             changes as they meet, hash exchange"
                .into()
        } else if self.ttl.is_some() {
            "state per key on both inputs, evicted after the ttl, emit changes as they meet, hash exchange"
                .into()
        } else {
            "state per key on both inputs (unbounded), emit changes as they meet, hash exchange".into()
        }
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        self.keys.to_vec()
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        let input = |i: usize| JoinInput {
            schema: ctx.inputs[i].schema.clone(),
            keys: self.keys[i].clone(),
            updating: ctx.inputs[i].updating,
            time: self.time[i].clone(),
            expire: self.expire[i].clone(),
        };
        Ok(Box::new(
            StreamingJoin::new(
                self.kind,
                input(0),
                input(1),
                self.filter.clone(),
                ctx.schema.clone(),
            )?
            .with_ttl(self.ttl)
            .with_watermark_lag(if self.event_time.is_some() {
                self.event_time_lag
            } else {
                0
            }),
        ))
    }

    fn set_state_ttl(&mut self, ttl: Option<std::time::Duration>) {
        self.ttl = ttl;
    }
}

/// An incremental equi-join of two inputs.
pub struct StreamingJoin {
    kind: JoinKind,
    inputs: [JoinInput; 2],
    /// Residual ON condition over a left row followed by a right row.
    filter: Option<Arc<dyn PhysicalExpr>>,
    pair_schema: SchemaRef,
    output: SchemaRef,
    updating: bool,
    sides: [KeyedRows; 2],
    rule: IncrementalRule,
    /// Deletes of rows the join did not hold (dropped).
    unmatched_deletes: u64,
    /// Each input's watermark (microseconds), as last reported.
    watermarks: [i64; 2],
    /// Rows dropped by expiry (or not held, their bound passed already),
    /// per input.
    expired: [u64; 2],
    /// Late rows dropped since the runtime last asked.
    late: u64,
    /// Rows matching nothing go out when they expire (see the module docs).
    defer: bool,
    /// `streaming.state_ttl` in microseconds: rows of an input without an
    /// interval bound are evicted this long after they first came.
    ttl_us: Option<i64>,
    /// The processing time to use instead of the clock (tests).
    fixed_now: Option<i64>,
    /// How far the watermark passed on trails the inputs' (µs; see
    /// `JoinSpec::event_time_lag`).
    watermark_lag: i64,
}

/// Processing time in microseconds.
fn clock_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl StreamingJoin {
    /// `output` is the join's row schema (left columns then right ones).
    pub fn new(
        kind: JoinKind,
        left: JoinInput,
        right: JoinInput,
        filter: Option<Arc<dyn PhysicalExpr>>,
        output: SchemaRef,
    ) -> Result<Self> {
        let key_types = join_key_types([&left.keys, &right.keys], [&left.schema, &right.schema])?;
        let pair_schema = pair_schema([&left.schema, &right.schema]);
        for (side, input) in [&left, &right].into_iter().enumerate() {
            let other = if side == 0 { &right } else { &left };
            if input.expire.is_some() && (input.updating || other.updating || other.time.is_none()) {
                return Err(DataFusionError::Internal(
                    "a join input expires rows but an input updates or the other has no event time".into(),
                ));
            }
        }
        let (ups, exps) = (
            [left.updating, right.updating],
            [left.expire.is_some(), right.expire.is_some()],
        );
        let updating = output_updating(kind, ups, exps);
        let defer = defers_unmatched(kind, ups, exps);
        let output = if updating { with_op_column(&output) } else { output };
        let sides = [
            KeyedRows::new(&key_types, left.schema.clone())?,
            KeyedRows::new(&key_types, right.schema.clone())?,
        ];
        Ok(Self {
            kind,
            inputs: [left, right],
            filter,
            pair_schema,
            output,
            updating,
            sides,
            rule: IncrementalRule::default(),
            unmatched_deletes: 0,
            watermarks: [i64::MIN; 2],
            expired: [0; 2],
            late: 0,
            defer,
            ttl_us: None,
            fixed_now: None,
            watermark_lag: 0,
        })
    }

    /// Passes on the watermark `lag` µs behind the inputs' (an output
    /// event time that trails the other input's by up to that).
    pub fn with_watermark_lag(mut self, lag: i64) -> Self {
        self.watermark_lag = lag.max(0);
        self
    }

    /// Evicts rows of inputs without an interval bound `ttl` after they
    /// first came (processing time), as Flink's state TTL does: what they
    /// produced stands, later rows no longer meet them, a retraction of
    /// one is dropped and counted.
    pub fn with_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.ttl_us = ttl.map(|d| d.as_micros().min(i64::MAX as u128) as i64);
        self
    }

    /// Uses `now` (microseconds) as the processing time (tests).
    #[cfg(test)]
    pub(crate) fn set_now(&mut self, now: i64) {
        self.fixed_now = Some(now);
    }

    fn now(&self) -> i64 {
        self.fixed_now.unwrap_or_else(clock_us)
    }

    /// Whether input `side`'s rows are evicted by the TTL.
    fn ttl_side(&self, side: usize) -> bool {
        self.ttl_us.is_some() && self.inputs[side].expire.is_none()
    }

    /// Whether the output carries the op column.
    pub fn is_updating(&self) -> bool {
        self.updating
    }

    /// Deletes of rows the join did not hold, dropped so far.
    pub fn unmatched_deletes(&self) -> u64 {
        self.unmatched_deletes
    }

    /// Rows dropped by expiry so far, per input.
    pub fn expired(&self) -> [u64; 2] {
        self.expired
    }

    /// With the other input's rows expiring, this input's rows behind its
    /// own watermark could have met rows already dropped: they are late,
    /// dropped and counted (NULL times are kept: they match no bound).
    fn drop_late(&mut self, input: usize, batch: RecordBatch) -> Result<RecordBatch> {
        let (Some(time), true) = (
            self.inputs[input].time.clone(),
            self.inputs[1 - input].expire.is_some(),
        ) else {
            return Ok(batch);
        };
        let wm = self.watermarks[input];
        if wm == i64::MIN {
            return Ok(batch);
        }
        let times = as_micros(&eval(&time, &batch)?)?;
        let keep: BooleanArray = times.iter().map(|t| Some(t.is_none_or(|t| t >= wm))).collect();
        let late = keep.false_count();
        if late == 0 {
            return Ok(batch);
        }
        self.late += late as u64;
        Ok(filter_record_batch(&batch, &keep)?)
    }

    /// Rows of `this` input changed by `delta` (+1 inserted, -1 deleted).
    fn apply(
        &mut self,
        this: usize,
        rows: RecordBatch,
        delta: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let n = rows.num_rows();
        if n == 0 {
            return Ok(());
        }
        let other = 1 - this;
        let key_cols = self.inputs[this]
            .keys
            .iter()
            .map(|k| eval(k, &rows))
            .collect::<Result<Vec<_>>>()?;
        let valid: Vec<bool> = (0..n).map(|i| key_cols.iter().all(|c| c.is_valid(i))).collect();
        let keys = self.sides[this].encode_keys(&key_cols)?;
        let encoded = self.sides[this].encode_rows(rows.columns())?;
        // A delete must find its row held (a changelog read from its middle
        // deletes rows never inserted): others are dropped.
        let mut keep = vec![true; n];
        if delta < 0 {
            let mut pending: HashMap<(&[u8], &[u8]), i64> = HashMap::new();
            for i in (0..n).filter(|i| valid[*i]) {
                let (k, r) = (keys.row(i).data(), encoded.row(i).data());
                let taken = pending.entry((k, r)).or_default();
                if self.sides[this].count_of(k, r) > *taken {
                    *taken += 1;
                } else {
                    keep[i] = false;
                    self.unmatched_deletes += 1;
                }
            }
        }
        // Matches, a batch of pairs at a time.
        let mut matched = vec![0i64; n];
        let mut other_deltas: BTreeMap<&[u8], BTreeMap<usize, i64>> = BTreeMap::new();
        let mut pairs: Vec<(u32, usize)> = Vec::new();
        for i in (0..n).filter(|i| keep[*i] && valid[*i]) {
            let bucket = self.sides[other].bucket(keys.row(i).data());
            for j in 0..bucket.len() {
                pairs.push((i as u32, j));
                if pairs.len() >= PAIRS_PER_BATCH {
                    self.join_pairs(
                        this,
                        &rows,
                        &keys,
                        &pairs,
                        delta,
                        &mut matched,
                        &mut other_deltas,
                        out,
                    )?;
                    pairs.clear();
                }
            }
        }
        self.join_pairs(
            this,
            &rows,
            &keys,
            &pairs,
            delta,
            &mut matched,
            &mut other_deltas,
            out,
        )?;
        // Rows of the other input that start or stop matching.
        if self.kind.preserves(other) {
            let (mut now_matched, mut now_unmatched) = (Vec::new(), Vec::new());
            for (key, deltas) in &other_deltas {
                for (&at, &d) in deltas {
                    if d == 0 {
                        continue;
                    }
                    let Some((before, after)) = self.sides[other].add_matches(key, at, d) else {
                        continue;
                    };
                    let e = self.sides[other].bucket(key).at(at);
                    let list = match (before > 0, after > 0) {
                        (false, true) => &mut now_matched,
                        (true, false) => &mut now_unmatched,
                        _ => continue,
                    };
                    for _ in 0..e.count {
                        list.push(Box::<[u8]>::from(e.row));
                    }
                }
            }
            // A row going out while it matches nothing (outer, anti) is
            // retracted when it first matches; a semi join's the other way.
            // Deferred: nothing went out for it yet.
            let first = if self.kind.is_semi() { 1 } else { -1 };
            if self.defer {
                now_matched.clear();
                now_unmatched.clear();
            }
            for (list, sign) in [(now_matched, first), (now_unmatched, -first)] {
                for chunk in list.chunks(PAIRS_PER_BATCH) {
                    let cols = self.sides[other].decode(chunk.iter().map(|r| &**r))?;
                    self.emit_padded(other, cols, chunk.len(), sign, out)?;
                }
            }
        }
        // This input's rows, held for the other input's changes to come
        // (an interval join's until the other input's watermark passes
        // their bound; those it passed already, or NULL, can match nothing
        // more and are not held).
        let bounds = match &self.inputs[this].expire {
            Some(e) => Some(as_micros(&eval(e, &rows)?)?),
            None => None,
        };
        let held: Vec<bool> = (0..n)
            .map(|i| {
                keep[i]
                    && valid[i]
                    && bounds
                        .as_ref()
                        .is_none_or(|b| b.is_valid(i) && b.value(i) >= self.watermarks[other])
            })
            .collect();
        // Rows of this input matching nothing (a semi join: matching);
        // deferred, only those not held (they never expire).
        if self.kind.preserves(this) {
            let semi = self.kind.is_semi();
            let lonely: Vec<u32> = (0..n as u32)
                .filter(|&i| {
                    let i = i as usize;
                    keep[i] && (matched[i] > 0) == semi && !(self.defer && held[i])
                })
                .collect();
            if !lonely.is_empty() {
                let idx = UInt32Array::from(lonely);
                let cols = rows
                    .columns()
                    .iter()
                    .map(|c| Ok(take(c, &idx, None)?))
                    .collect::<Result<Vec<_>>>()?;
                self.emit_padded(this, cols, idx.len(), delta, out)?;
            }
        }
        let evict_at = match self.ttl_us {
            Some(ttl) if self.ttl_side(this) && delta > 0 => Some(self.now().saturating_add(ttl)),
            _ => None,
        };
        for i in (0..n).filter(|i| keep[*i] && valid[*i]) {
            let (k, r) = (keys.row(i), encoded.row(i));
            // A row new to the state is given its time: its bound, or the TTL.
            let expire = match &bounds {
                Some(_) if !held[i] => {
                    self.expired[this] += 1;
                    continue;
                }
                Some(bounds) => Some(bounds.value(i)),
                None => evict_at,
            };
            if !self.sides[this].add_expiring(k.data(), r.data(), delta, matched[i], expire) {
                // Checked above: a delete finds its row.
                return Err(DataFusionError::Internal(
                    "a join deleted a row it did not hold".into(),
                ));
            }
        }
        Ok(())
    }

    /// Joins `pairs` (a row of `rows`, the index of a row held by the
    /// other input under its key), keeps those passing the residual
    /// condition, emits them and counts the matches.
    #[allow(clippy::too_many_arguments)]
    fn join_pairs<'k>(
        &self,
        this: usize,
        rows: &RecordBatch,
        keys: &'k Rows,
        pairs: &[(u32, usize)],
        delta: i64,
        matched: &mut [i64],
        other_deltas: &mut BTreeMap<&'k [u8], BTreeMap<usize, i64>>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let other = 1 - this;
        let idx = UInt32Array::from_iter_values(pairs.iter().map(|(i, _)| *i));
        let this_cols = rows
            .columns()
            .iter()
            .map(|c| Ok(take(c, &idx, None)?))
            .collect::<Result<Vec<_>>>()?;
        let entries: Vec<_> = pairs
            .iter()
            .map(|(i, j)| self.sides[other].bucket(keys.row(*i as usize).data()).at(*j))
            .collect();
        let other_cols = self.sides[other].decode(entries.iter().map(|e| e.row))?;
        let (left, right) = if this == 0 {
            (this_cols, other_cols)
        } else {
            (other_cols, this_cols)
        };
        let mut cols = left;
        cols.extend(right);
        let joined = RecordBatch::try_new(self.pair_schema.clone(), cols)?;
        let keep = match &self.filter {
            Some(f) => {
                let mask = eval(f, &joined)?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .ok_or_else(|| DataFusionError::Internal("join condition is not boolean".into()))?;
                Some(null_as_false(mask))
            }
            None => None,
        };
        // Kept pairs, each as many times as the held row is held.
        let mut repeat: Vec<u32> = Vec::with_capacity(pairs.len());
        for (p, ((i, j), e)) in pairs.iter().zip(&entries).enumerate() {
            if keep.as_ref().is_some_and(|k| !k.value(p)) {
                continue;
            }
            matched[*i as usize] += e.count;
            if self.kind.preserves(other) {
                *other_deltas
                    .entry(keys.row(*i as usize).data())
                    .or_default()
                    .entry(*j)
                    .or_default() += delta;
            }
            if self.kind.emits_pairs() {
                for _ in 0..e.count {
                    repeat.push(p as u32);
                }
            }
        }
        if repeat.is_empty() {
            return Ok(());
        }
        let repeat = UInt32Array::from(repeat);
        let cols = joined
            .columns()
            .iter()
            .map(|c| Ok(take(c, &repeat, None)?))
            .collect::<Result<Vec<_>>>()?;
        self.emit(cols, repeat.len(), delta, out)
    }

    /// Rows of input `side` with the other input's columns NULL (a semi or
    /// anti join: the rows alone).
    fn emit_padded(
        &self,
        side: usize,
        cols: Vec<ArrayRef>,
        len: usize,
        sign: i64,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !self.kind.emits_pairs() {
            return self.emit(cols, len, sign, out);
        }
        let nulls = |s: &SchemaRef| -> Vec<ArrayRef> {
            s.fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), len))
                .collect()
        };
        let all = if side == 0 {
            let mut all = cols;
            all.extend(nulls(&self.inputs[1].schema));
            all
        } else {
            let mut all = nulls(&self.inputs[0].schema);
            all.extend(cols);
            all
        };
        self.emit(all, len, sign, out)
    }

    fn emit(&self, mut cols: Vec<ArrayRef>, len: usize, sign: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.updating {
            let op = if sign > 0 { 1i8 } else { -1i8 };
            cols.push(Arc::new(Int8Array::from(vec![op; len])));
        }
        out.push(batch_with_schema(&self.output, cols)?);
        Ok(())
    }

    fn snapshot_batch(&self, side: usize, snap: RowsSnapshot) -> Result<RecordBatch> {
        two_sided_batch([&self.inputs[0].schema, &self.inputs[1].schema], side, snap).build()
    }
}

/// The types of a two-input join's keys, which must be the same on both
/// inputs (equal keys meet in one task and one table).
pub(super) fn join_key_types(
    keys: [&[Arc<dyn PhysicalExpr>]; 2],
    schemas: [&SchemaRef; 2],
) -> Result<Vec<DataType>> {
    let types = |side: usize| {
        keys[side]
            .iter()
            .map(|k| k.data_type(schemas[side]))
            .collect::<Result<Vec<DataType>>>()
    };
    let (left, right) = (types(0)?, types(1)?);
    if left != right {
        return Err(DataFusionError::Internal(format!(
            "join keys of different types: {left:?} and {right:?}"
        )));
    }
    Ok(left)
}

/// Left then right columns, all nullable: what a residual ON condition
/// reads (a padded side is NULL).
pub(super) fn pair_schema(schemas: [&SchemaRef; 2]) -> SchemaRef {
    let fields: Vec<Field> = schemas
        .iter()
        .flat_map(|s| s.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)))
        .collect();
    Arc::new(Schema::new(fields))
}

/// One input's rows (of two) as a snapshot batch: keys `k0..`, `side`,
/// `count`, `matches`, then the left input's columns `l0..` and the
/// right's `r0..` (the other input's NULL), so both inputs' batches share
/// one schema. Read back by [`restore_two_sided`].
pub(super) fn two_sided_batch(schemas: [&SchemaRef; 2], side: usize, snap: RowsSnapshot) -> SnapshotBatch {
    let len = snap.len();
    let columns = |s: usize| -> Vec<ArrayRef> {
        if s == side {
            snap.rows.clone()
        } else {
            schemas[s]
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), len))
                .collect()
        }
    };
    let (left, right) = (columns(0), columns(1));
    SnapshotBatch::new(len)
        .keys(snap.keys)
        .column(SIDE, Arc::new(Int8Array::from(vec![side as i8; len])))
        .column("count", Arc::new(snap.count))
        .column("matches", Arc::new(snap.matches))
        .numbered("l", left)
        .numbered("r", right)
}

/// Takes back what [`two_sided_batch`] wrote into both inputs' tables
/// (keyed by `n_keys` columns). `what` names the operator in errors.
pub(super) fn restore_two_sided(
    sides: &mut [KeyedRows; 2],
    n_keys: usize,
    batch: &SnapshotRows,
    what: &str,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let side_of = batch.int8(SIDE)?;
    for (side, table) in sides.iter_mut().enumerate() {
        let mask: arrow::array::BooleanArray = side_of.iter().map(|s| Some(s == Some(side as i8))).collect();
        if mask.true_count() == 0 {
            continue;
        }
        let part = batch.filter(&mask)?;
        let prefix = if side == 0 { "l" } else { "r" };
        let rows = part.numbered(prefix, table.schema().fields().len())?;
        for (i, c) in rows.iter().enumerate() {
            let want = table.schema().field(i).data_type();
            if c.data_type() != want {
                return Err(DataFusionError::Internal(format!(
                    "{what} snapshot's column {prefix}{i} is {} where the query has {want}",
                    c.data_type()
                )));
            }
        }
        let snap = RowsSnapshot {
            keys: part.keys(n_keys)?,
            rows,
            count: part.int64("count")?,
            matches: part.int64("matches")?,
        };
        table.restore(&snap)?;
    }
    Ok(())
}

impl KeyedOperator for StreamingJoin {
    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        if input > 1 {
            return Err(DataFusionError::Internal(format!("a join has no input {input}")));
        }
        if !self.inputs[input].updating {
            let batch = self.drop_late(input, batch)?;
            return self.apply(input, batch, 1, out);
        }
        let (inserts, deletes) = split_changes(&batch)?;
        // Inserts first: a row inserted and deleted in one batch (a
        // changelog's create and update) is then found by its delete.
        self.apply(input, inserts, 1, out)?;
        self.apply(input, deletes, -1, out)
    }

    fn on_watermark(&mut self, _watermark: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        // Changes go out as they are joined; rows past their TTL go.
        if self.ttl_us.is_some() {
            let now = self.now();
            for side in 0..2 {
                if self.ttl_side(side) {
                    self.expired[side] += self.sides[side].expire_before(now, |_, _, _| {});
                }
            }
        }
        Ok(())
    }

    /// The other input's rows whose bound `watermark` passed can match
    /// nothing to come: dropped.
    fn on_input_watermark(&mut self, input: usize, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        if input > 1 {
            return Err(DataFusionError::Internal(format!("a join has no input {input}")));
        }
        self.watermarks[input] = self.watermarks[input].max(watermark);
        let other = 1 - input;
        if self.inputs[other].expire.is_none() {
            return Ok(());
        }
        // Deferred rows that never matched go out as they expire.
        let emit = self.defer && self.kind.preserves(other);
        let mut lonely: Vec<Box<[u8]>> = Vec::new();
        self.expired[other] +=
            self.sides[other].expire_before(self.watermarks[input], |row, count, matches| {
                if emit && matches == 0 {
                    lonely.extend((0..count).map(|_| Box::<[u8]>::from(row)));
                }
            });
        for chunk in lonely.chunks(PAIRS_PER_BATCH) {
            let cols = self.sides[other].decode(chunk.iter().map(|r| &**r))?;
            self.emit_padded(other, cols, chunk.len(), 1, out)?;
        }
        Ok(())
    }

    fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    fn output_watermark(&self, watermark: i64) -> i64 {
        if watermark == i64::MAX {
            return watermark;
        }
        watermark.saturating_sub(self.watermark_lag)
    }

    fn expired_rows(&self) -> u64 {
        self.expired[0] + self.expired[1]
    }

    fn detail(&self) -> Option<String> {
        let bounded: Vec<String> = (0..2)
            .filter(|s| self.inputs[*s].expire.is_some() || self.ttl_side(*s))
            .map(|s| {
                let (rows, _) = self.sides[s].size();
                let name = if s == 0 { "left" } else { "right" };
                format!("{name}: {rows} rows held, {} expired", self.expired[s])
            })
            .collect();
        (!bounded.is_empty()).then(|| bounded.join(", "))
    }

    fn state_size(&self) -> (usize, usize) {
        let (a, b) = (self.sides[0].size(), self.sides[1].size());
        (a.0 + b.0, a.1 + b.1)
    }

    /// Both inputs' rows: key columns `k0..`, `side`, `count`, `matches`,
    /// then the left row's columns `l0..` and the right row's `r0..` (the
    /// other input's NULL).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.rule.full_taken();
        let mut out = Vec::new();
        for side in 0..2 {
            let snap = self.sides[side].snapshot()?;
            if snap.len() > 0 {
                out.push(self.snapshot_batch(side, snap)?);
            }
        }
        Ok(out)
    }

    /// The keys changed since the last full snapshot, each cleared and
    /// then written with what it holds now.
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let changed = self.sides[0].keys_changed() + self.sides[1].keys_changed();
        let total = self.sides[0].keys_held() + self.sides[1].keys_held();
        if !self.rule.incremental(changed, total.max(changed)) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for side in 0..2 {
            let snap = self.sides[side].snapshot_changes()?;
            if snap.len() > 0 {
                out.push(self.snapshot_batch(side, snap)?);
            }
        }
        Ok(Some(out))
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let n_keys = self.inputs[0].keys.len();
        for batch in state {
            restore_two_sided(
                &mut self.sides,
                n_keys,
                &SnapshotRows::new(batch, "a join"),
                "a join",
            )?;
        }
        // Restored rows get a fresh TTL.
        if let Some(ttl) = self.ttl_us {
            let at = self.now().saturating_add(ttl);
            let ttl_sides: Vec<usize> = (0..2).filter(|s| self.ttl_side(*s)).collect();
            for side in ttl_sides {
                self.sides[side].expire_all_at(at);
            }
        }
        for side in 0..2 {
            if let Some(bound) = self.inputs[side].expire.clone() {
                let schema = self.inputs[side].schema.clone();
                self.sides[side].rebuild_expiry(|cols| {
                    let batch = batch_with_schema(&schema, cols.to_vec())?;
                    Ok(as_micros(&eval(&bound, &batch)?)?.iter().collect())
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

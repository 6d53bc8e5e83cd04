//! Event-time temporal joins: `probe JOIN versioned FOR SYSTEM_TIME AS OF
//! probe.t ON probe.k = versioned.k`, as in Flink SQL.
//!
//! Every row of the versioned input is a version of its key (the join
//! key), valid from its event time until the key's next version. A probe
//! row meets the version of its key valid at its time `t`: the latest with
//! a time at or before `t`. It waits until the watermark (the least over
//! both inputs) passes `t`, since until then a version at or before `t`
//! can still come; then it goes out once, with that version's columns
//! (INNER: only if there is one and the rest of the ON condition holds;
//! LEFT: NULL-padded otherwise). The output is append-only and keeps the
//! probe's columns first, so its event time passes through.
//!
//! State: the waiting probe rows (by key, with their time to go out) and
//! per key the versions still needed: once the watermark passes `W`, every
//! probe row to come has a time at or after `W`, so of the versions at or
//! before `W` only the latest one is kept. Probe rows behind the watermark
//! are late: dropped and counted. Versions may come late (one at or before
//! the watermark is still the key's current version if none is newer).
//!
//! The versioned input may be a changelog (a Debezium stream): an insert
//! is a version from its time on; a retraction ends its row's version and
//! leaves the key without one from the retraction's time on (a tombstone,
//! held as a version is), until a version at or after that time. An update
//! is both at one time, the change's: at equal times a version wins over a
//! tombstone. So a changelog's event time must be its changes' times (the
//! planner requires Debezium's `value.source.timestamp` or
//! `value.ingestion-timestamp`): a column of the row would give an update's
//! retraction its old row's time.
//!
//! Both tables are [`KeyedRows`]: the probe rows expire at their time; a
//! version's time is kept in the row's counter, and a tombstone is its
//! retraction row held [`TOMBSTONE`] times. Snapshots are the join's
//! two-sided layout, incremental by changed keys, split by key on rescale.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;

use super::join::{join_key_types, pair_schema, restore_two_sided, two_sided_batch};
use super::{
    BuildContext, JoinKind, KeyedOperator, OperatorSpec, Result, as_micros, batch_with_schema, eval,
    null_as_false,
};
use crate::streaming::state::{IncrementalRule, KeyedRows, SnapshotRows, Taken};

/// Probe rows joined per output batch.
const ROWS_PER_BATCH: usize = 8192;

/// The count a tombstone (a deleted key, from the delete's time on) is
/// held with in the versions' table: far above any count of equal
/// versions, so the two can't be mistaken.
const TOMBSTONE: i64 = 1 << 48;

/// An event-time temporal join as planned.
#[derive(Debug)]
pub struct TemporalJoinSpec {
    /// Inner or Left.
    pub kind: JoinKind,
    /// Key expressions of the probe (left) and the versioned (right) input.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// The rest of the ON condition, over probe then version columns.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The probe's AS OF time, over its rows; None: processing time (each
    /// probe row meets its key's latest version when it comes).
    pub probe_time: Option<Arc<dyn PhysicalExpr>>,
    /// A version's event time, over the versioned input's rows (unused at
    /// processing time).
    pub version_time: Option<Arc<dyn PhysicalExpr>>,
    /// At processing time, over a bounded versioned input (a table read
    /// as a stream): probe rows wait until it is read whole.
    pub load_first: bool,
    /// At processing time, the versioned input is read anew at each start
    /// (a table, not a stream resuming at its offsets): after a restore,
    /// probe rows wait for the new read, and the versions of keys it no
    /// longer has are dropped.
    pub reread: bool,
}

impl OperatorSpec for TemporalJoinSpec {
    fn label(&self) -> String {
        let on = self.keys[0]
            .iter()
            .zip(&self.keys[1])
            .map(|(l, r)| format!("{l} = {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = match (&self.probe_time, &self.version_time) {
            (Some(p), Some(v)) => format!("{}TemporalJoin: on=[{on}] as of {p} versions by {v}", self.kind),
            _ => format!("{}TemporalJoin: on=[{on}] as of processing time", self.kind),
        };
        if self.load_first {
            s.push_str(" after the versions are read");
        }
        if let Some(f) = &self.filter {
            s.push_str(&format!(" filter={f}"));
        }
        s
    }

    fn explain(&self) -> String {
        if self.probe_time.is_some() {
            "temporal join: probe rows wait for the watermark to pass their time, then meet their key's \
             version valid then; versions the watermark passed are dropped but the latest, hash exchange"
                .into()
        } else {
            "lookup join: probe rows meet their key's latest version as they come; one version per key \
             held, hash exchange"
                .into()
        }
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        self.keys.to_vec()
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        if ctx.inputs.len() != 2 || ctx.inputs[0].updating {
            return Err(DataFusionError::Internal(
                "a temporal join takes an append-only probe input and a versioned input".into(),
            ));
        }
        Ok(Box::new(
            TemporalJoin::new(
                self,
                [ctx.inputs[0].schema.clone(), ctx.inputs[1].schema.clone()],
                ctx.schema.clone(),
            )?
            .with_changelog(ctx.inputs[1].updating),
        ))
    }

    /// By event time rows go out before the watermark passes their time,
    /// so the probe's event time passes through; at processing time rows
    /// may wait for the versions while the watermark moves on, so the
    /// output has no event time.
    fn keeps_input_columns(&self) -> bool {
        self.probe_time.is_some()
    }
}

/// One task's temporal join.
pub struct TemporalJoin {
    kind: JoinKind,
    keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    filter: Option<Arc<dyn PhysicalExpr>>,
    probe_time: Option<Arc<dyn PhysicalExpr>>,
    version_time: Option<Arc<dyn PhysicalExpr>>,
    /// Processing time over a bounded versioned input: probe rows wait
    /// until it is read whole (`loaded`).
    load_first: bool,
    loaded: bool,
    /// See [`TemporalJoinSpec::reread`].
    reread: bool,
    /// After a restore of a join whose versions are read anew: the keys
    /// the new read has not given a version yet. Those left when it is
    /// whole are gone from the table.
    stale: Option<HashSet<Box<[u8]>>>,
    /// The versioned input is a changelog (its batches end in the op
    /// column): retractions update and delete versions.
    changelog: bool,
    schemas: [SchemaRef; 2],
    /// Probe then version columns, all nullable (the filter's input).
    pair_schema: SchemaRef,
    output: SchemaRef,
    /// [0]: probe rows waiting, expiring at their time; [1]: versions, each
    /// row's counter holding its time.
    tables: [KeyedRows; 2],
    /// Keys holding more than one version or a tombstone (those the
    /// watermark may thin).
    many: HashSet<Box<[u8]>>,
    /// The watermark of the last progress step (at processing time: MAX
    /// once the versions are loaded, for the snapshot).
    watermark: i64,
    rule: IncrementalRule,
    late: u64,
    /// Versions dropped as superseded before the watermark.
    superseded: u64,
    /// Retractions read from a changelog (deletes and updates' old rows).
    retracted: u64,
}

impl TemporalJoin {
    pub fn new(spec: &TemporalJoinSpec, schemas: [SchemaRef; 2], output: SchemaRef) -> Result<Self> {
        if spec.probe_time.is_some() != spec.version_time.is_some() {
            return Err(DataFusionError::Internal(
                "a temporal join by event time has both times".into(),
            ));
        }
        if !matches!(spec.kind, JoinKind::Inner | JoinKind::Left) {
            return Err(DataFusionError::Internal(format!(
                "a temporal join is Inner or Left, not {}",
                spec.kind
            )));
        }
        let key_types = join_key_types([&spec.keys[0], &spec.keys[1]], [&schemas[0], &schemas[1]])?;
        Ok(Self {
            kind: spec.kind,
            keys: spec.keys.clone(),
            filter: spec.filter.clone(),
            probe_time: spec.probe_time.clone(),
            version_time: spec.version_time.clone(),
            load_first: spec.load_first,
            loaded: false,
            reread: spec.reread && spec.probe_time.is_none(),
            stale: None,
            changelog: false,
            pair_schema: pair_schema([&schemas[0], &schemas[1]]),
            output,
            tables: [
                KeyedRows::new(&key_types, schemas[0].clone())?,
                KeyedRows::new(&key_types, schemas[1].clone())?,
            ],
            schemas,
            many: HashSet::new(),
            watermark: i64::MIN,
            rule: IncrementalRule::default(),
            late: 0,
            superseded: 0,
            retracted: 0,
        })
    }

    /// Reads the versioned input as a changelog.
    pub fn with_changelog(mut self, changelog: bool) -> Self {
        self.changelog = changelog;
        self
    }

    /// Probe rows: held until the watermark passes their time. Rows that
    /// can never meet a version (a NULL key or time) go out at once
    /// NULL-padded in a LEFT join.
    fn probe(&mut self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_rows();
        let key_cols = self.keys[0]
            .iter()
            .map(|k| eval(k, batch))
            .collect::<Result<Vec<_>>>()?;
        let times = match &self.probe_time {
            Some(t) => Some(as_micros(&eval(t, batch)?)?),
            None => None,
        };
        let keys = self.tables[0].encode_keys(&key_cols)?;
        let rows = self.tables[0].encode_rows(batch.columns())?;
        // At processing time, rows meet the versions held now (once they
        // are loaded).
        let now = times.is_none() && (!self.load_first || self.loaded);
        let mut at_once = Vec::new();
        let mut lonely = Vec::new();
        for i in 0..n {
            // Behind the watermark: late, whatever its key.
            let t = times.as_ref().and_then(|t| t.is_valid(i).then(|| t.value(i)));
            if t.is_some_and(|t| t < self.watermark) {
                self.late += 1;
                continue;
            }
            let valid =
                times.as_ref().is_none_or(|t| t.is_valid(i)) && key_cols.iter().all(|c| c.is_valid(i));
            if !valid {
                lonely.push(i as u32);
                continue;
            }
            let (k, r) = (keys.row(i), rows.row(i));
            if now {
                at_once.push(Taken {
                    time: i64::MAX,
                    key: k.data().into(),
                    row: r.data().into(),
                    count: 1,
                    matches: 0,
                });
                continue;
            }
            let t = t.unwrap_or(i64::MIN);
            self.tables[0].add_expiring(k.data(), r.data(), 1, 0, Some(t));
        }
        self.release(&mut at_once, out)?;
        if self.kind == JoinKind::Left && !lonely.is_empty() {
            let idx = UInt32Array::from(lonely);
            let left = batch
                .columns()
                .iter()
                .map(|c| Ok(take(c, &idx, None)?))
                .collect::<Result<Vec<_>>>()?;
            let right = self.schemas[1]
                .fields()
                .iter()
                .map(|f| arrow::array::new_null_array(f.data_type(), idx.len()))
                .collect();
            self.emit(left, right, out)?;
        }
        Ok(())
    }

    /// Versions: each row is its key's version from its time on (of a
    /// changelog: each insert; deletes leave tombstones).
    fn version(&mut self, batch: &RecordBatch) -> Result<()> {
        let (batch, ops) = if self.changelog {
            let (rows, ops) = split_ops(batch)?;
            (rows, Some(ops))
        } else {
            (batch.clone(), None)
        };
        let key_cols = self.keys[1]
            .iter()
            .map(|k| eval(k, &batch))
            .collect::<Result<Vec<_>>>()?;
        let keys = self.tables[1].encode_keys(&key_cols)?;
        let rows = self.tables[1].encode_rows(batch.columns())?;
        let is_delete = |i: usize| ops.as_ref().is_some_and(|o| o.value(i) < 0);
        let Some(version_time) = &self.version_time else {
            for i in 0..batch.num_rows() {
                if key_cols.iter().any(|c| !c.is_valid(i)) {
                    continue;
                }
                let (k, r) = (keys.row(i).data(), rows.row(i).data());
                if is_delete(i) {
                    self.delete_latest(k);
                } else {
                    self.replace_latest(k, r);
                }
            }
            return Ok(());
        };
        let times = as_micros(&eval(version_time, &batch)?)?;
        for i in 0..batch.num_rows() {
            if !times.is_valid(i) || key_cols.iter().any(|c| !c.is_valid(i)) {
                continue;
            }
            let (k, r) = (keys.row(i).data(), rows.row(i).data());
            let held = self.tables[1].count_of(k, r);
            if is_delete(i) {
                if held >= TOMBSTONE {
                    continue;
                }
                // The row stops being a version, and from its time on the
                // key has none.
                self.tables[1].add(k, r, -held.min(1), 0);
                self.tables[1].add(k, r, TOMBSTONE, times.value(i));
                self.retracted += 1;
            } else {
                if held >= TOMBSTONE {
                    // The very row deleted before comes again.
                    self.tables[1].add(k, r, -held, 0);
                }
                self.tables[1].add(k, r, 1, times.value(i));
            }
            if thinnable(self.tables[1].bucket(k)) && !self.many.contains(k) {
                self.many.insert(k.into());
            }
        }
        Ok(())
    }

    /// At processing time a version replaces its key's version at once.
    fn replace_latest(&mut self, k: &[u8], r: &[u8]) {
        if let Some(stale) = &mut self.stale {
            stale.remove(k);
        }
        let old: Vec<(Box<[u8]>, i64)> = self.tables[1]
            .bucket(k)
            .iter()
            .filter(|e| e.row != r)
            .map(|e| (Box::<[u8]>::from(e.row), e.count))
            .collect();
        for (row, count) in old {
            self.tables[1].add(k, &row, -count, 0);
            self.superseded += count as u64;
        }
        if self.tables[1].count_of(k, r) == 0 {
            self.tables[1].add(k, r, 1, 0);
        }
    }

    /// At processing time a delete takes its key's version away (a
    /// Debezium delete names the row, an upsert topic's tombstone only the
    /// key).
    fn delete_latest(&mut self, k: &[u8]) {
        if let Some(stale) = &mut self.stale {
            stale.remove(k);
        }
        let held: Vec<(Box<[u8]>, i64)> = self.tables[1]
            .bucket(k)
            .iter()
            .map(|e| (Box::<[u8]>::from(e.row), e.count))
            .collect();
        for (row, count) in held {
            self.tables[1].add(k, &row, -count, 0);
        }
        self.retracted += 1;
    }

    /// The version of `key` valid at `t`: its index in the key's bucket
    /// (a tombstone: none from its time on). Among entries of equal time a
    /// version wins over a tombstone (an update's two halves), and of
    /// versions the one that came last.
    fn version_at(&self, key: &[u8], t: i64) -> Option<usize> {
        let mut best: Option<(usize, (i64, bool))> = None;
        for (at, e) in self.tables[1].bucket(key).iter().enumerate() {
            let rank = (e.matches, e.count < TOMBSTONE);
            if e.matches <= t && best.is_none_or(|(_, b)| rank >= b) {
                best = Some((at, rank));
            }
        }
        best.map(|(at, _)| at)
    }

    /// Probe rows whose time the watermark passed, joined and sent out.
    fn release(&mut self, taken: &mut [Taken], out: &mut Vec<RecordBatch>) -> Result<()> {
        // In time order, and by the rows' bytes among equal times, so that
        // a restored join (whose held rows come back in another order)
        // emits as the uninterrupted one does.
        taken.sort_unstable_by(|a, b| (a.time, &a.row).cmp(&(b.time, &b.row)));
        // Each probe row as many times as it was held, with its version.
        // The versions are borrowed from the state, not copied per row.
        let mut probes: Vec<&[u8]> = Vec::new();
        let mut versions: Vec<Option<&[u8]>> = Vec::new();
        for t in taken.iter() {
            let version = self
                .version_at(&t.key, t.time)
                .map(|at| self.tables[1].bucket(&t.key).at(at))
                .filter(|e| e.count < TOMBSTONE)
                .map(|e| e.row);
            for _ in 0..t.count {
                probes.push(&t.row);
                versions.push(version);
            }
        }
        for (p, v) in probes.chunks(ROWS_PER_BATCH).zip(versions.chunks(ROWS_PER_BATCH)) {
            let left = self.tables[0].decode(p.iter().copied())?;
            let right = self.version_columns(v)?;
            let matched: Vec<bool> = v.iter().map(Option::is_some).collect();
            let keep = match &self.filter {
                Some(f) => {
                    let mut cols = left.clone();
                    cols.extend(right.iter().cloned());
                    let pairs = RecordBatch::try_new(self.pair_schema.clone(), cols)?;
                    let mask = eval(f, &pairs)?;
                    let mask = mask
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| DataFusionError::Internal("join condition is not boolean".into()))?;
                    let mask = null_as_false(mask);
                    matched
                        .iter()
                        .enumerate()
                        .map(|(i, m)| *m && mask.value(i))
                        .collect()
                }
                None => matched,
            };
            match self.kind {
                JoinKind::Left => {
                    // Rows without a version meeting the condition keep
                    // their place, NULL-padded.
                    let padded: Vec<Option<&[u8]>> = v
                        .iter()
                        .zip(&keep)
                        .map(|(v, k)| if *k { *v } else { None })
                        .collect();
                    let all_kept = v.iter().zip(&keep).all(|(v, k)| v.is_none() || *k);
                    let right = if all_kept {
                        right
                    } else {
                        self.version_columns(&padded)?
                    };
                    self.emit(left, right, out)?;
                }
                _ => {
                    let idx =
                        UInt32Array::from_iter_values((0..keep.len() as u32).filter(|i| keep[*i as usize]));
                    if idx.is_empty() {
                        continue;
                    }
                    let pick = |cols: Vec<ArrayRef>| -> Result<Vec<ArrayRef>> {
                        cols.iter().map(|c| Ok(take(c, &idx, None)?)).collect()
                    };
                    self.emit(pick(left)?, pick(right)?, out)?;
                }
            }
        }
        Ok(())
    }

    /// Version rows (None: NULL) as columns of the versioned input.
    fn version_columns(&self, rows: &[Option<&[u8]>]) -> Result<Vec<ArrayRef>> {
        let present: Vec<&[u8]> = rows.iter().flatten().copied().collect();
        let decoded = self.tables[1].decode(present)?;
        let mut next = 0u32;
        let idx: UInt32Array = rows
            .iter()
            .map(|r| {
                r.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        decoded.iter().map(|c| Ok(take(c, &idx, None)?)).collect()
    }

    fn emit(&self, mut left: Vec<ArrayRef>, right: Vec<ArrayRef>, out: &mut Vec<RecordBatch>) -> Result<()> {
        left.extend(right);
        out.push(batch_with_schema(&self.output, left)?);
        Ok(())
    }

    /// Of each key's versions at or before `watermark`, all but the latest
    /// can meet no probe row to come.
    fn thin(&mut self, watermark: i64) {
        let keys: Vec<Box<[u8]>> = self.many.iter().cloned().collect();
        for key in keys {
            let Some(current) = self.version_at(&key, watermark) else {
                continue;
            };
            let bucket = self.tables[1].bucket(&key);
            let current = bucket.at(current);
            let (current_time, current_deleted) = (current.matches, current.count >= TOMBSTONE);
            // Older entries, and the tombstones of its time (which lose to
            // a version of that time; a tombstone current at the watermark
            // says no more than no version at all).
            let old: Vec<(Box<[u8]>, i64)> = bucket
                .iter()
                .filter(|e| e.matches < current_time || (e.matches == current_time && e.count >= TOMBSTONE))
                .map(|e| (Box::<[u8]>::from(e.row), e.count))
                .collect();
            for (row, count) in old {
                self.tables[1].add(&key, &row, -count, 0);
                if count < TOMBSTONE {
                    self.superseded += count as u64;
                }
            }
            debug_assert!(
                !current_deleted
                    || self.tables[1]
                        .bucket(&key)
                        .iter()
                        .all(|e| e.matches > current_time)
            );
            if !thinnable(self.tables[1].bucket(&key)) {
                self.many.remove(&key);
            }
        }
    }
}

impl KeyedOperator for TemporalJoin {
    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        match input {
            0 => self.probe(&batch, out),
            1 => self.version(&batch),
            _ => Err(DataFusionError::Internal(format!(
                "a temporal join has no input {input}"
            ))),
        }
    }

    /// A bounded versioned input read whole: the probe rows waiting for
    /// it meet the versions.
    fn on_input_watermark(&mut self, input: usize, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        if input == 1 && watermark == i64::MAX && self.probe_time.is_none() && !self.loaded {
            self.loaded = true;
            // Read anew after a restore: what the read no longer has is
            // gone.
            for k in self.stale.take().unwrap_or_default() {
                let held: Vec<(Box<[u8]>, i64)> = self.tables[1]
                    .bucket(&k)
                    .iter()
                    .map(|e| (Box::<[u8]>::from(e.row), e.count))
                    .collect();
                for (row, count) in held {
                    self.tables[1].add(&k, &row, -count, 0);
                    self.superseded += count as u64;
                }
            }
            self.watermark = i64::MAX;
            let mut taken = Vec::new();
            self.tables[0].take_before(i64::MAX, |t| taken.push(t));
            for t in &mut taken {
                t.time = i64::MAX;
            }
            self.release(&mut taken, out)?;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        if watermark <= self.watermark || self.probe_time.is_none() {
            return Ok(());
        }
        let mut taken = Vec::new();
        self.tables[0].take_before(watermark, |t| taken.push(t));
        self.release(&mut taken, out)?;
        self.watermark = watermark;
        self.thin(watermark);
        Ok(())
    }

    fn state_size(&self) -> (usize, usize) {
        let (a, b) = (self.tables[0].size(), self.tables[1].size());
        (a.0 + b.0, a.1 + b.1)
    }

    fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    fn detail(&self) -> Option<String> {
        let mut s = format!(
            "probe: {} rows waiting, versions: {} held, {} superseded",
            self.tables[0].size().0,
            self.tables[1].size().0,
            self.superseded
        );
        if self.changelog {
            s.push_str(&format!(", {} retractions", self.retracted));
        }
        Some(s)
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.rule.full_taken();
        let snaps = [self.tables[0].snapshot()?, self.tables[1].snapshot()?];
        self.batches(snaps)
    }

    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let changed = self.tables[0].keys_changed() + self.tables[1].keys_changed();
        let total = self.tables[0].keys_held() + self.tables[1].keys_held();
        if !self.rule.incremental(changed, total.max(changed)) {
            return Ok(None);
        }
        let snaps = [
            self.tables[0].snapshot_changes()?,
            self.tables[1].snapshot_changes()?,
        ];
        self.batches(snaps).map(Some)
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let n_keys = self.keys[0].len();
        let mut watermark: Option<i64> = None;
        for batch in state {
            let batch = SnapshotRows::new(batch, "a temporal join");
            if let Some(w) = batch.watermark()? {
                watermark = Some(watermark.map_or(w, |m| m.max(w)));
            }
            restore_two_sided(&mut self.tables, n_keys, &batch, "a temporal join")?;
        }
        if let Some(w) = watermark {
            self.watermark = w;
            self.loaded = self.probe_time.is_none() && w == i64::MAX;
        }
        if self.reread {
            // The versions are read again from the start: probe rows wait
            // for the read, and it says which keys are gone.
            self.loaded = false;
            self.stale = Some(self.tables[1].keys_where(|_| true).into_iter().collect());
        }
        // The probe rows' times and the keys with several versions.
        let (schema, time) = (self.schemas[0].clone(), self.probe_time.clone());
        self.tables[0].rebuild_expiry(|cols| match &time {
            Some(time) => {
                let batch = batch_with_schema(&schema, cols.to_vec())?;
                Ok(as_micros(&eval(time, &batch)?)?.iter().collect())
            }
            None => Ok(vec![Some(i64::MIN); cols.first().map_or(0, |c| c.len())]),
        })?;
        self.many = self.tables[1].keys_where(thinnable).into_iter().collect();
        Ok(())
    }
}

impl TemporalJoin {
    /// Both tables' snapshot rows as batches; the first carries the
    /// watermark (late probe rows stay late after a restore).
    fn batches(&self, snaps: [crate::streaming::state::RowsSnapshot; 2]) -> Result<Vec<RecordBatch>> {
        let schemas = [&self.schemas[0], &self.schemas[1]];
        let mut out = Vec::new();
        for (side, snap) in snaps.into_iter().enumerate() {
            if snap.len() > 0 || side == 0 {
                out.push(
                    two_sided_batch(schemas, side, snap)
                        .watermark(self.watermark)
                        .build()?,
                );
            }
        }
        Ok(out)
    }
}

/// Whether the watermark may thin a key's versions: it holds several,
/// or a tombstone (which goes once the watermark passes it).
fn thinnable(bucket: &crate::streaming::state::Bucket) -> bool {
    bucket.len() > 1 || bucket.iter().any(|e| e.count >= TOMBSTONE)
}

/// A changelog batch's rows (without the op column, in their order) and
/// its ops.
fn split_ops(batch: &RecordBatch) -> Result<(RecordBatch, arrow::array::Int8Array)> {
    let n = batch.num_columns();
    let ops = batch
        .column(n.saturating_sub(1))
        .as_any()
        .downcast_ref::<arrow::array::Int8Array>()
        .ok_or_else(|| DataFusionError::Internal("a changelog batch without its op column".into()))?
        .clone();
    Ok((batch.project(&(0..n - 1).collect::<Vec<_>>())?, ops))
}

#[cfg(test)]
mod tests;

//! Materialized views: a continuous query's current result, kept in memory
//! and served to SELECT.
//!
//! An append-only result is a list of batches. An updating result is a
//! multiset of rows (row bytes in Arrow's row format, with a count), so
//! that any retraction can be applied without knowing a key. Each batch is
//! applied under the write lock, and a SELECT copies the state under the
//! read lock: readers never see half of a batch.
//!
//! Each output lane of the job keeps its own part (what that lane inserted
//! and deleted), so that a checkpoint barrier, which reaches the lanes at
//! different moments, snapshots each part at its own barrier. Reads sum the
//! parts.

use crate::streaming::state::{IncrementalRule, RowCounts};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, Int8Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::operators::batch_with_schema;
use crate::error::{Result, SluiceError};
use crate::sink::SinkWriter;

/// Bytes of changes a subscriber may have waiting before it is cut off,
/// unless the server is configured otherwise: a slow subscriber must not
/// make the server's memory grow without bound. Counted in bytes, not
/// batches: a view that applies many small batches a second is not cut
/// off for their number.
pub const SUBSCRIBER_BACKLOG_BYTES: usize = 32 << 20;

/// Rows a subscriber reads in one batch at most when changes are waiting:
/// many small change batches are read as one.
const SUBSCRIBER_READ_ROWS: usize = 16 * 1024;

/// What one subscriber has waiting.
struct Backlog {
    limit: usize,
    bytes: std::sync::atomic::AtomicUsize,
    lagged: std::sync::atomic::AtomicBool,
}

/// One `SUBSCRIBE` to a view.
struct Subscriber {
    tx: tokio::sync::mpsc::UnboundedSender<(RecordBatch, usize)>,
    backlog: Arc<Backlog>,
}

/// `bytes` as MiB, or KiB under one MiB.
fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// A subscriber's side: the view's changes after its snapshot.
pub struct ChangeFeed {
    rx: tokio::sync::mpsc::UnboundedReceiver<(RecordBatch, usize)>,
    backlog: Arc<Backlog>,
    schema: SchemaRef,
}

impl ChangeFeed {
    /// The next changes: what is waiting, as one batch of up to
    /// [`SUBSCRIBER_READ_ROWS`] rows (more when one change batch is larger).
    /// None when the view is gone; an error when this subscriber fell more
    /// than its backlog behind and was cut off.
    pub async fn next(&mut self) -> Option<Result<RecordBatch>> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some((first, size)) = self.rx.recv().await else {
            // Said once; then the feed ends.
            return self.backlog.lagged.swap(false, Relaxed).then(|| {
                Err(SluiceError::internal(format!(
                    "the subscriber fell more than {} of changes behind and was disconnected \
                     to protect the server's memory; SUBSCRIBE again",
                    mib(self.backlog.limit)
                )))
            });
        };
        let mut rows = first.num_rows();
        let mut freed = size;
        let mut batches = vec![first];
        while rows < SUBSCRIBER_READ_ROWS {
            let Ok((batch, size)) = self.rx.try_recv() else {
                break;
            };
            rows += batch.num_rows();
            freed += size;
            batches.push(batch);
        }
        self.backlog.bytes.fetch_sub(freed, Relaxed);
        if batches.len() == 1 {
            return batches.pop().map(Ok);
        }
        Some(arrow::compute::concat_batches(&self.schema, &batches).map_err(SluiceError::from))
    }
}

enum State {
    Append(Vec<RecordBatch>),
    /// Distinct rows with their net count, and what changed since the
    /// lane's last full snapshot.
    Multiset(RowCounts),
}

/// A materialized view's contents.
pub struct MaterializedView {
    schema: SchemaRef,
    updating: bool,
    /// One part per output lane.
    state: RwLock<Vec<State>>,
    /// Guarded by the state lock's write side: see [`Self::apply`].
    subscribers: std::sync::Mutex<Vec<Subscriber>>,
    /// Latest watermark applied (microseconds).
    watermark: std::sync::atomic::AtomicI64,
    /// The view's query as planned from its SQL (before optimizing): a
    /// temporal join reads the view's versions by event time from it.
    definition: std::sync::OnceLock<datafusion::logical_expr::LogicalPlan>,
}

impl std::fmt::Debug for MaterializedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterializedView")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl MaterializedView {
    pub fn try_new(schema: SchemaRef, updating: bool) -> Result<Self> {
        let state = Self::new_part(&schema, updating)?;
        Ok(Self {
            schema,
            updating,
            state: RwLock::new(vec![state]),
            subscribers: Default::default(),
            watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            definition: Default::default(),
        })
    }

    /// Keeps the view's query (see [`Self::definition`]); set once.
    pub fn set_definition(&self, plan: datafusion::logical_expr::LogicalPlan) {
        let _ = self.definition.set(plan);
    }

    /// The view's query, planned from its SQL, when it was kept.
    pub fn definition(&self) -> Option<&datafusion::logical_expr::LogicalPlan> {
        self.definition.get()
    }

    fn new_part(schema: &SchemaRef, updating: bool) -> Result<State> {
        Ok(if updating {
            State::Multiset(RowCounts::new(schema.clone())?)
        } else {
            State::Append(Vec::new())
        })
    }

    /// Applies one batch of output of lane `lane` (with the op column when
    /// updating) and hands it to subscribers, under one lock so that a new
    /// subscriber's snapshot and its first change never overlap or leave a
    /// gap.
    pub fn apply(&self, lane: usize, batch: &RecordBatch) -> Result<()> {
        let mut state = self.state.write().expect("view lock poisoned");
        while state.len() <= lane {
            state.push(Self::new_part(&self.schema, self.updating)?);
        }
        self.apply_locked(&mut state[lane], batch)?;
        let mut subs = self.subscribers.lock().expect("subscribers lock");
        if !subs.is_empty() {
            use std::sync::atomic::Ordering::Relaxed;
            let changes = to_changes(&self.schema, batch, self.updating, self.watermark())?;
            let size = changes.get_array_memory_size();
            subs.retain(|s| {
                if s.backlog.bytes.fetch_add(size, Relaxed) + size > s.backlog.limit {
                    s.backlog.lagged.store(true, Relaxed);
                    return false;
                }
                s.tx.send((changes.clone(), size)).is_ok()
            });
        }
        Ok(())
    }

    /// The schema SUBSCRIBE returns: `op` (insert / delete), `progress`
    /// (the view's watermark when the change was applied), then the rows.
    pub fn changes_schema(&self) -> SchemaRef {
        subscribe_schema(&self.schema)
    }

    /// Starts a subscription: the current contents (as inserts) and the
    /// feed of later changes. The feed ends when the view is dropped, or
    /// fails when the subscriber falls more than `backlog` bytes behind.
    pub fn subscribe(&self, backlog: usize) -> Result<(Vec<RecordBatch>, ChangeFeed)> {
        // The write lock orders this against `apply`.
        let state = self.state.write().expect("view lock poisoned");
        let snapshot = Self::snapshot_of(&self.schema, &state)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog {
            limit: backlog,
            bytes: Default::default(),
            lagged: Default::default(),
        });
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push(Subscriber {
                tx,
                backlog: backlog.clone(),
            });
        drop(state);
        let wm = self.watermark();
        let snapshot = snapshot
            .iter()
            .map(|b| to_changes(&self.schema, b, false, wm))
            .collect::<Result<Vec<_>>>()?;
        let feed = ChangeFeed {
            rx,
            backlog,
            schema: self.changes_schema(),
        };
        Ok((snapshot, feed))
    }

    fn apply_locked(&self, state: &mut State, batch: &RecordBatch) -> Result<()> {
        match state {
            State::Append(batches) => {
                batches.push(batch_with_schema(&self.schema, batch.columns().to_vec())?);
            }
            State::Multiset(counts) => {
                let n = batch.num_columns();
                let ops = batch
                    .column(n - 1)
                    .as_any()
                    .downcast_ref::<Int8Array>()
                    .ok_or_else(|| SluiceError::internal("updating batch without op column"))?;
                counts.apply(&batch.columns()[..n - 1], ops)?;
            }
        }
        Ok(())
    }

    /// The current contents.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        let state = self.state.read().expect("view lock poisoned");
        Self::snapshot_of(&self.schema, &state)
    }

    /// The updating parts (none for an append-only view).
    fn counted(state: &[State]) -> Vec<&RowCounts> {
        state
            .iter()
            .filter_map(|s| match s {
                State::Multiset(c) => Some(c),
                State::Append(_) => None,
            })
            .collect()
    }

    fn snapshot_of(schema: &SchemaRef, state: &[State]) -> Result<Vec<RecordBatch>> {
        let parts = Self::counted(state);
        if let Some(first) = parts.first() {
            let merged = RowCounts::merged(&parts);
            return match first.rows(&merged)? {
                Some(cols) => Ok(vec![batch_with_schema(schema, cols)?]),
                None => Ok(vec![]),
            };
        }
        Ok(state
            .iter()
            .flat_map(|s| match s {
                State::Append(b) => b.clone(),
                State::Multiset(_) => vec![],
            })
            .collect())
    }

    /// Lane `lane`'s part, for a checkpoint: its batches (append), or its
    /// distinct rows with their counts (updating; counts can be negative
    /// when a row's delete came through this lane). An updating part
    /// tracks its changes from here.
    fn lane_state(&self, lane: usize) -> Result<Vec<RecordBatch>> {
        let mut state = self.state.write().expect("view lock poisoned");
        match state.get_mut(lane) {
            None => Ok(vec![]),
            Some(State::Append(b)) => Ok(b.clone()),
            Some(State::Multiset(counts)) => Ok(counts.snapshot()?),
        }
    }

    /// What lane `lane` changed since its full snapshot, for an incremental
    /// checkpoint restored on top of that snapshot: the batches appended
    /// after the first `since.appended` (append-only), or each changed row
    /// with its net change in count (updating). None when a full snapshot
    /// is due (see [`IncrementalRule`]).
    fn lane_changes(&self, lane: usize, since: &mut SinceFull) -> Result<Option<Vec<RecordBatch>>> {
        let mut state = self.state.write().expect("view lock poisoned");
        match state.get_mut(lane) {
            // Nothing yet, nothing changed: the full snapshot alone stands.
            None => Ok(Some(vec![])),
            Some(State::Append(b)) => {
                let total = b.iter().map(RecordBatch::num_rows).sum::<usize>();
                let after = b.get(since.appended..).unwrap_or_default();
                let changed = after.iter().map(RecordBatch::num_rows).sum::<usize>();
                if !since.rule.incremental(changed, total) {
                    return Ok(None);
                }
                Ok(Some(after.to_vec()))
            }
            Some(State::Multiset(counts)) => Ok(counts.snapshot_changes()?),
        }
    }

    /// Puts back lane `lane`'s part from a checkpoint.
    pub fn restore_lane(&self, lane: usize, batches: Vec<RecordBatch>) -> Result<()> {
        let mut state = self.state.write().expect("view lock poisoned");
        while state.len() <= lane {
            state.push(Self::new_part(&self.schema, self.updating)?);
        }
        match &mut state[lane] {
            State::Append(b) => {
                for batch in batches {
                    b.push(batch_with_schema(&self.schema, batch.columns().to_vec())?);
                }
            }
            State::Multiset(counts) => counts.restore(batches)?,
        }
        Ok(())
    }

    /// Rows currently held.
    pub fn len(&self) -> usize {
        let state = self.state.read().expect("view lock poisoned");
        let parts = Self::counted(&state);
        if !parts.is_empty() {
            return RowCounts::merged(&parts)
                .values()
                .map(|c| (*c).max(0) as usize)
                .sum();
        }
        state
            .iter()
            .map(|s| match s {
                State::Append(b) => b.iter().map(|b| b.num_rows()).sum(),
                State::Multiset(_) => 0,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The latest watermark the view has seen, if any.
    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark.load(std::sync::atomic::Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }

    /// A writer for output lane `lane` of the view's job.
    pub fn writer(self: &Arc<Self>, lane: usize) -> Box<dyn SinkWriter> {
        Box::new(ViewWriter {
            view: self.clone(),
            lane,
            since_full: None,
        })
    }
}

/// The schema of a subscription to rows of `schema`.
pub fn subscribe_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields = vec![
        arrow::datatypes::Field::new("op", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new(
            "progress",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            true,
        ),
    ];
    fields.extend(schema.fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// A batch of output as subscription rows: `op`, `progress`, the row.
pub fn to_changes(
    schema: &SchemaRef,
    batch: &RecordBatch,
    updating: bool,
    watermark: Option<i64>,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let (rows, ops): (Vec<arrow::array::ArrayRef>, Vec<&str>) = if updating {
        let k = batch.num_columns();
        let ops = batch
            .column(k - 1)
            .as_any()
            .downcast_ref::<Int8Array>()
            .ok_or_else(|| SluiceError::internal("updating batch without op column"))?;
        (
            batch.columns()[..k - 1].to_vec(),
            ops.values()
                .iter()
                .map(|o| if *o > 0 { "insert" } else { "delete" })
                .collect(),
        )
    } else {
        (batch.columns().to_vec(), vec!["insert"; n])
    };
    // Watermarks past the representable range (end of input) show as the
    // largest timestamp.
    let wm = watermark.map(|w| w.min(253_402_300_799_000_000));
    let mut cols: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(arrow::array::StringArray::from(ops)),
        Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![wm; n])),
    ];
    cols.extend(rows);
    Ok(batch_with_schema(&subscribe_schema(schema), cols)?)
}

struct ViewWriter {
    view: Arc<MaterializedView>,
    lane: usize,
    /// Since the last full snapshot (None: none taken in this run).
    since_full: Option<SinceFull>,
}

/// What a view lane changed since its last full snapshot.
struct SinceFull {
    /// Batches the snapshot held (append-only).
    appended: usize,
    /// When incremental snapshots give way to a full one.
    rule: IncrementalRule,
}

#[async_trait]
impl SinkWriter for ViewWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.view.apply(self.lane, &batch)
    }

    async fn checkpoint(&mut self, _epoch: u64) -> Result<Vec<RecordBatch>> {
        let state = self.view.lane_state(self.lane)?;
        self.since_full = Some(SinceFull {
            appended: state.len(),
            rule: IncrementalRule::default(),
        });
        Ok(state)
    }

    async fn checkpoint_changes(&mut self, _epoch: u64) -> Result<Option<Vec<RecordBatch>>> {
        match &mut self.since_full {
            Some(since) => self.view.lane_changes(self.lane, since),
            None => Ok(None),
        }
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.since_full = None;
        self.view.restore_lane(self.lane, state)
    }

    async fn on_watermark(&mut self, watermark: i64) -> Result<()> {
        self.view
            .watermark
            .fetch_max(watermark, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl TableProvider for MaterializedView {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batches = self.snapshot().map_err(|e| e.into_datafusion())?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| self.schema.clone());
        MemorySourceConfig::try_new_exec(&[batches], schema, projection.cloned())
            .map(|e| e as Arc<dyn ExecutionPlan>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    /// `k TEXT, n BIGINT`.
    fn k_n_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    /// An updating batch of `k_n_schema` rows with their operations.
    fn updating(schema: &SchemaRef, k: Vec<&str>, n: Vec<i64>, op: Vec<i8>) -> RecordBatch {
        RecordBatch::try_new(
            super::super::operators::with_op_column(schema),
            vec![
                Arc::new(StringArray::from(k)),
                Arc::new(Int64Array::from(n)),
                Arc::new(Int8Array::from(op)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn retractions_cancel_inserts() {
        let schema = k_n_schema();
        let view = MaterializedView::try_new(schema.clone(), true).unwrap();
        let b = |k, n, op| updating(&schema, k, n, op);
        view.apply(0, &b(vec!["a", "b"], vec![1, 1], vec![1, 1])).unwrap();
        // Lane 1 deletes a row lane 0 inserted.
        view.apply(1, &b(vec!["a", "a"], vec![1, 2], vec![-1, 1]))
            .unwrap();
        let snap = view.snapshot().unwrap();
        let mut rows: Vec<String> = arrow::util::pretty::pretty_format_batches(&snap)
            .unwrap()
            .to_string()
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains(" k "))
            .map(String::from)
            .collect();
        rows.sort();
        assert_eq!(rows, vec!["| a | 2 |", "| b | 1 |"]);
        assert_eq!(view.len(), 2);
        // Each lane's part round-trips through a checkpoint.
        let copy = MaterializedView::try_new(schema.clone(), true).unwrap();
        for lane in 0..2 {
            copy.restore_lane(lane, view.lane_state(lane).unwrap()).unwrap();
        }
        assert_eq!(copy.len(), 2);
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&copy.snapshot().unwrap())
                .unwrap()
                .to_string()
                .len(),
            arrow::util::pretty::pretty_format_batches(&snap)
                .unwrap()
                .to_string()
                .len()
        );
    }

    /// Lines of a snapshot, sorted (for comparing contents).
    fn lines(batches: &[RecordBatch]) -> Vec<String> {
        let mut rows: Vec<String> = arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string()
            .lines()
            .filter(|l| l.starts_with("| "))
            .map(String::from)
            .collect();
        rows.sort();
        rows
    }

    #[tokio::test]
    async fn incremental_checkpoints_restore_on_top_of_the_full_one() {
        let schema = k_n_schema();
        let b = |k, n, op| updating(&schema, k, n, op);
        // Updating: the changes are each changed row's net count change.
        let view = Arc::new(MaterializedView::try_new(schema.clone(), true).unwrap());
        let mut w = view.writer(0);
        assert!(
            w.checkpoint_changes(1).await.unwrap().is_none(),
            "no full one yet"
        );
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        w.write(b(keys.to_vec(), vec![1; 10], vec![1; 10])).await.unwrap();
        let full = w.checkpoint(1).await.unwrap();
        // a: 1 -> 2 (delete and insert), x new, a row inserted and deleted.
        w.write(b(
            vec!["a", "a", "x", "y", "y"],
            vec![1, 2, 1, 1, 1],
            vec![-1, 1, 1, 1, -1],
        ))
        .await
        .unwrap();
        let changes = w.checkpoint_changes(2).await.unwrap().expect("incremental");
        let rows: usize = changes.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 3, "a|1 -1, a|2 +1, x|1 +1; y cancelled out");
        let copy = MaterializedView::try_new(schema.clone(), true).unwrap();
        copy.restore_lane(0, full.iter().chain(&changes).cloned().collect())
            .unwrap();
        assert_eq!(lines(&copy.snapshot().unwrap()), lines(&view.snapshot().unwrap()));
        assert_eq!(copy.len(), 11);
        // Changes keep adding up from the full snapshot; once more than half
        // the rows changed, a full one is asked for.
        w.write(b(vec!["b"], vec![1], vec![-1])).await.unwrap();
        let changes = w.checkpoint_changes(3).await.unwrap().expect("incremental");
        let copy = MaterializedView::try_new(schema.clone(), true).unwrap();
        copy.restore_lane(0, full.iter().chain(&changes).cloned().collect())
            .unwrap();
        assert_eq!(lines(&copy.snapshot().unwrap()), lines(&view.snapshot().unwrap()));
        w.write(b(vec!["c", "d"], vec![1, 1], vec![-1, -1]))
            .await
            .unwrap();
        assert!(
            w.checkpoint_changes(4).await.unwrap().is_none(),
            "6 changes, 8 rows"
        );

        // Append-only: the batches after the full snapshot.
        let view = Arc::new(MaterializedView::try_new(schema.clone(), false).unwrap());
        let mut w = view.writer(0);
        let rows = |k: Vec<&str>| {
            let n = vec![1; k.len()];
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from(k)), Arc::new(Int64Array::from(n))],
            )
            .unwrap()
        };
        w.write(rows(vec!["a", "b", "c", "d"])).await.unwrap();
        let full = w.checkpoint(1).await.unwrap();
        let none = w.checkpoint_changes(2).await.unwrap().expect("incremental");
        assert_eq!(none.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
        w.write(rows(vec!["e"])).await.unwrap();
        w.write(rows(vec!["f"])).await.unwrap();
        let changes = w.checkpoint_changes(3).await.unwrap().expect("incremental");
        assert_eq!(changes.len(), 2);
        let copy = MaterializedView::try_new(schema.clone(), false).unwrap();
        copy.restore_lane(0, full.iter().chain(&changes).cloned().collect())
            .unwrap();
        assert_eq!(lines(&copy.snapshot().unwrap()), lines(&view.snapshot().unwrap()));
        w.write(rows(vec!["g", "h", "i"])).await.unwrap();
        assert!(
            w.checkpoint_changes(4).await.unwrap().is_none(),
            "5 new rows of 9"
        );
        // The same few changes written again and again: a full snapshot
        // once they add up to more rows than there are.
        let full = w.checkpoint(5).await.unwrap();
        assert_eq!(full.iter().map(RecordBatch::num_rows).sum::<usize>(), 9);
        w.write(rows(vec!["j", "k"])).await.unwrap();
        for epoch in 6..11 {
            let changes = w.checkpoint_changes(epoch).await.unwrap();
            assert!(
                changes.is_some(),
                "epoch {epoch}: {} of 11 rows written so far",
                (epoch - 6) * 2
            );
        }
        assert!(
            w.checkpoint_changes(11).await.unwrap().is_none(),
            "12 rows written > 11"
        );
    }
}

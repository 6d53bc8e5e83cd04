//! A table read as the versioned input of a lookup join:
//! `s JOIN t FOR SYSTEM_TIME AS OF PROCTIME() AS d ON s.k = d.k`, where `t`
//! is not a stream but anything SELECT reads (an external table over files,
//! a sink's landed data, a materialized view).
//!
//! The table is read through DataFusion's scan of it, as a source whose
//! rows are the join's versions (see `operators::temporal`): by default once
//! per job start (a bounded source, so probe rows wait until it is read
//! whole), or, with `streaming.lookup_refresh` set, again at that interval.
//! A refreshing source reads the table in one task, keeps what it read, and
//! emits the difference to the last read as a changelog (rows gone are
//! deleted, new rows inserted), so the join's versions follow the table. It
//! says when its first read is whole ([`Source::take_loaded`]), which is
//! when probe rows start to meet it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int8Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::execution::session_state::SessionState;
use futures::StreamExt;

use crate::error::{Result, SluiceError};
use crate::stream::{Source, SourceConnector, with_op_column};

/// The connector's name; the planner knows a table's source by it.
pub const TABLE_CONNECTOR: &str = "sluice-table";

/// The option carrying `streaming.lookup_refresh`, in milliseconds.
pub const REFRESH_OPTION: &str = "lookup.refresh-ms";

/// A table (a DataFusion provider) as a source.
pub struct TableSourceConnector {
    name: String,
    provider: Arc<dyn TableProvider>,
    state: SessionState,
}

impl std::fmt::Debug for TableSourceConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSourceConnector")
            .field("name", &self.name)
            .finish()
    }
}

impl TableSourceConnector {
    pub fn new(name: String, provider: Arc<dyn TableProvider>, state: SessionState) -> Self {
        Self {
            name,
            provider,
            state,
        }
    }
}

fn refresh(options: &BTreeMap<String, String>) -> Option<Duration> {
    options
        .get(REFRESH_OPTION)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// What a table source's position says: the table was read whole (a read
/// once source has nothing left), or it is to be read (again) from the
/// start.
const READ: &str = "read";
const UNREAD: &str = "unread";

impl SourceConnector for TableSourceConnector {
    fn name(&self) -> &'static str {
        TABLE_CONNECTOR
    }

    fn option_keys(&self) -> &[&'static str] {
        &[REFRESH_OPTION]
    }

    fn schema(
        &self,
        _options: &BTreeMap<String, String>,
        _declared: Option<&SchemaRef>,
    ) -> Result<SchemaRef> {
        Ok(self.provider.schema())
    }

    fn is_bounded(&self, options: &BTreeMap<String, String>) -> bool {
        refresh(options).is_none()
    }

    fn is_changelog(&self, options: &BTreeMap<String, String>) -> bool {
        refresh(options).is_some()
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        partition: usize,
        partitions: usize,
        resume: Option<&str>,
    ) -> Result<Box<dyn Source>> {
        let refresh = refresh(options);
        // A read-once table is split over the tasks by its scan's
        // partitions; a refreshing one is read by one task, so that a row
        // moving between files can't be deleted by one task after another
        // inserted it.
        let reads = match refresh {
            Some(_) => partition == 0,
            None => resume != Some(READ),
        };
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Box::new(TableReader {
            table: self.name.clone(),
            provider: self.provider.clone(),
            state: self.state.clone(),
            schema: schema.clone(),
            partition,
            partitions,
            refresh,
            reads,
            phase: Phase::Start,
            converter,
            held: HashMap::new(),
            reading: HashMap::new(),
            loaded: false,
            loaded_told: false,
            reads_done: 0,
        }))
    }

    fn rescale_positions(
        &self,
        options: &BTreeMap<String, String>,
        old: &[Option<String>],
        partitions: usize,
    ) -> Result<Vec<Option<String>>> {
        // A read-once table read whole stays read; otherwise it is read
        // again (its rows are versions: reading one twice changes nothing).
        let read = refresh(options).is_none() && old.iter().all(|p| p.as_deref() == Some(READ));
        let position = if read { READ } else { UNREAD };
        Ok(vec![Some(position.to_string()); partitions])
    }
}

enum Phase {
    /// Not reading yet: the next read starts now.
    Start,
    /// A read under way: its batches, from a task of its own (so a read
    /// is never cut off when the runtime stops waiting for a batch).
    Reading(tokio::sync::mpsc::Receiver<Result<RecordBatch>>),
    /// Waiting for the next refresh.
    Waiting(tokio::time::Instant),
    /// A read-once table read whole.
    Done,
}

struct TableReader {
    table: String,
    provider: Arc<dyn TableProvider>,
    state: SessionState,
    schema: SchemaRef,
    partition: usize,
    partitions: usize,
    refresh: Option<Duration>,
    /// Whether this task reads at all.
    reads: bool,
    phase: Phase,
    converter: RowConverter,
    /// A refreshing source: the rows of the last read whole (in the row
    /// format), with their counts.
    held: HashMap<Box<[u8]>, usize>,
    /// ... and of the read under way.
    reading: HashMap<Box<[u8]>, usize>,
    loaded: bool,
    loaded_told: bool,
    reads_done: u64,
}

impl TableReader {
    /// Starts a read of this task's share of the table's scan.
    fn start(&mut self) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (provider, state) = (self.provider.clone(), self.state.clone());
        let share = self
            .refresh
            .is_none()
            .then_some((self.partition, self.partitions));
        let table = self.table.clone();
        tokio::spawn(async move {
            let read = async {
                let plan = provider.scan(&state, None, &[], None).await?;
                let n = plan.properties().partitioning.partition_count();
                for p in (0..n).filter(|p| share.is_none_or(|(me, of)| p % of == me)) {
                    let mut stream = plan.execute(p, state.task_ctx())?;
                    while let Some(batch) = stream.next().await {
                        if tx.send(Ok(batch?)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Ok::<_, datafusion::error::DataFusionError>(())
            };
            if let Err(e) = read.await {
                let _ = tx
                    .send(Err(SluiceError::internal(format!("reading table {table}: {e}"))))
                    .await;
            }
        });
        self.phase = Phase::Reading(rx);
    }

    /// A batch of the scan as the source's schema.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    Ok(arrow::compute::cast(c, f.data_type())?)
                }
            })
            .collect::<Result<_>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?)
    }

    /// A refreshing read's batch: remembered, and sent as inserts on the
    /// first read (later reads send their difference at the end).
    fn remember(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let rows = self.converter.convert_columns(batch.columns())?;
        for r in rows.iter() {
            *self.reading.entry(r.data().into()).or_default() += 1;
        }
        if self.reads_done == 0 {
            return Ok(Some(with_ops(batch, 1)?));
        }
        Ok(None)
    }

    /// The end of a refreshing read: what changed since the last one, as
    /// deletes then inserts.
    fn difference(&mut self) -> Result<Option<RecordBatch>> {
        let reading = std::mem::take(&mut self.reading);
        let first = self.reads_done == 0;
        let old = std::mem::replace(&mut self.held, reading);
        self.reads_done += 1;
        if first {
            return Ok(None);
        }
        let mut gone: Vec<&[u8]> = Vec::new();
        let mut new: Vec<&[u8]> = Vec::new();
        for (row, n) in &old {
            let now = self.held.get(row).copied().unwrap_or(0);
            gone.extend(std::iter::repeat_n(&**row, n.saturating_sub(now)));
        }
        for (row, n) in &self.held {
            let before = old.get(row).copied().unwrap_or(0);
            new.extend(std::iter::repeat_n(&**row, n.saturating_sub(before)));
        }
        if gone.is_empty() && new.is_empty() {
            return Ok(None);
        }
        let mut ops = vec![-1i8; gone.len()];
        ops.extend(std::iter::repeat_n(1i8, new.len()));
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(gone.iter().chain(&new).map(|r| parser.parse(r)))?;
        let mut columns: Vec<ArrayRef> = columns;
        columns.push(Arc::new(Int8Array::from(ops)));
        Ok(Some(RecordBatch::try_new(with_op_column(&self.schema), columns)?))
    }
}

fn with_ops(batch: &RecordBatch, op: i8) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int8Array::from(vec![op; batch.num_rows()])));
    Ok(RecordBatch::try_new(with_op_column(&batch.schema()), columns)?)
}

#[async_trait]
impl Source for TableReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if !self.reads {
                // A task with nothing to read: a read-once table's is done;
                // a refreshing table's other tasks hold nothing ever.
                self.loaded = true;
                return Ok(None);
            }
            match &mut self.phase {
                Phase::Done => return Ok(None),
                Phase::Waiting(at) => {
                    tokio::time::sleep_until(*at).await;
                    self.phase = Phase::Start;
                }
                Phase::Start => self.start(),
                Phase::Reading(rx) => match rx.recv().await {
                    Some(batch) => {
                        let batch = self.conform(batch?)?;
                        if batch.num_rows() == 0 {
                            continue;
                        }
                        if self.refresh.is_none() {
                            return Ok(Some(batch));
                        }
                        if let Some(out) = self.remember(&batch)? {
                            return Ok(Some(out));
                        }
                    }
                    None => {
                        // Read whole.
                        self.loaded = true;
                        let Some(every) = self.refresh else {
                            self.phase = Phase::Done;
                            return Ok(None);
                        };
                        self.phase = Phase::Waiting(tokio::time::Instant::now() + every);
                        if let Some(changes) = self.difference()? {
                            return Ok(Some(changes));
                        }
                    }
                },
            }
        }
    }

    fn position(&self) -> Option<String> {
        Some(
            if matches!(self.phase, Phase::Done) {
                READ
            } else {
                UNREAD
            }
            .to_string(),
        )
    }

    fn take_loaded(&mut self) -> bool {
        if self.loaded && !self.loaded_told {
            self.loaded_told = true;
            return true;
        }
        false
    }

    fn status(&self) -> Option<String> {
        if !self.reads {
            return None;
        }
        Some(match (&self.phase, self.refresh) {
            (Phase::Done, _) => format!("table {} read", self.table),
            (_, Some(every)) => format!(
                "table {}: {} reads, {} rows held, read every {}s",
                self.table,
                self.reads_done,
                self.held.values().sum::<usize>(),
                every.as_secs_f64()
            ),
            _ => format!("reading table {}", self.table),
        })
    }
}

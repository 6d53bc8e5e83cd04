//! Materialized views: a continuous query's current result, kept in memory
//! and served to SELECT.
//!
//! An append-only result is a list of batches. An updating result is a
//! multiset of rows (row bytes in Arrow's row format, with a count), so
//! that any retraction can be applied without knowing a key. Each batch is
//! applied under the write lock, and a SELECT copies the state under the
//! read lock: readers never see half of a batch.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{Array, Int8Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::catalog::{Session as CatalogSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::operators::batch_with_schema;
use crate::error::{Result, SluiceError};
use crate::sink::SinkWriter;

enum State {
    Append(Vec<RecordBatch>),
    Multiset {
        converter: RowConverter,
        counts: HashMap<Box<[u8]>, i64>,
    },
}

/// A materialized view's contents.
pub struct MaterializedView {
    schema: SchemaRef,
    state: RwLock<State>,
    /// Latest watermark applied (microseconds).
    watermark: std::sync::atomic::AtomicI64,
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
        let state = if updating {
            let fields = schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            State::Multiset {
                converter: RowConverter::new(fields).map_err(datafusion::error::DataFusionError::from)?,
                counts: HashMap::new(),
            }
        } else {
            State::Append(Vec::new())
        };
        Ok(Self {
            schema,
            state: RwLock::new(state),
            watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// Applies one batch of output (with the op column when updating).
    pub fn apply(&self, batch: &RecordBatch) -> Result<()> {
        let mut state = self.state.write().expect("view lock poisoned");
        match &mut *state {
            State::Append(batches) => {
                batches.push(batch_with_schema(&self.schema, batch.columns().to_vec())?);
            }
            State::Multiset { converter, counts } => {
                let n = batch.num_columns();
                let ops = batch
                    .column(n - 1)
                    .as_any()
                    .downcast_ref::<Int8Array>()
                    .ok_or_else(|| SluiceError::internal("updating batch without op column"))?
                    .clone();
                let rows = converter
                    .convert_columns(&batch.columns()[..n - 1])
                    .map_err(datafusion::error::DataFusionError::from)?;
                for (row, op) in rows.iter().zip(ops.values().iter()) {
                    let key = row.as_ref();
                    match counts.get_mut(key) {
                        Some(c) => {
                            *c += *op as i64;
                            if *c == 0 {
                                counts.remove(key);
                            }
                        }
                        None => {
                            counts.insert(key.into(), *op as i64);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The current contents.
    pub fn snapshot(&self) -> Result<Vec<RecordBatch>> {
        let state = self.state.read().expect("view lock poisoned");
        match &*state {
            State::Append(batches) => Ok(batches.clone()),
            State::Multiset { converter, counts } => {
                if counts.is_empty() {
                    return Ok(vec![]);
                }
                let parser = converter.parser();
                let mut rows = Vec::with_capacity(counts.len());
                for (bytes, c) in counts.iter() {
                    for _ in 0..(*c).max(0) {
                        rows.push(parser.parse(bytes));
                    }
                }
                let cols = converter
                    .convert_rows(rows)
                    .map_err(datafusion::error::DataFusionError::from)?;
                Ok(vec![batch_with_schema(&self.schema, cols)?])
            }
        }
    }

    /// Rows currently held.
    pub fn len(&self) -> usize {
        let state = self.state.read().expect("view lock poisoned");
        match &*state {
            State::Append(b) => b.iter().map(|b| b.num_rows()).sum(),
            State::Multiset { counts, .. } => counts.values().map(|c| (*c).max(0) as usize).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The latest watermark the view has seen, if any.
    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark.load(std::sync::atomic::Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }

    /// A writer for one output lane of the view's job.
    pub fn writer(self: &Arc<Self>) -> Box<dyn SinkWriter> {
        Box::new(ViewWriter { view: self.clone() })
    }
}

struct ViewWriter {
    view: Arc<MaterializedView>,
}

#[async_trait]
impl SinkWriter for ViewWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.view.apply(&batch)
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

    #[test]
    fn retractions_cancel_inserts() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let view = MaterializedView::try_new(schema.clone(), true).unwrap();
        let with_op = super::super::operators::with_op_column(&schema);
        let b = |k: Vec<&str>, n: Vec<i64>, op: Vec<i8>| {
            RecordBatch::try_new(
                with_op.clone(),
                vec![
                    Arc::new(StringArray::from(k)),
                    Arc::new(Int64Array::from(n)),
                    Arc::new(Int8Array::from(op)),
                ],
            )
            .unwrap()
        };
        view.apply(&b(vec!["a", "b"], vec![1, 1], vec![1, 1])).unwrap();
        view.apply(&b(vec!["a", "a"], vec![1, 2], vec![-1, 1])).unwrap();
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
    }
}

//! The one layout of a snapshot batch, written by [`SnapshotBatch`] and read
//! by [`SnapshotRows`]; no operator places a column or parses metadata.
//!
//! | columns | what |
//! |---|---|
//! | `k0`, `k1`, .. | the key a row belongs to; a rescale splits snapshots by them ([`crate::streaming::keygroups`]) |
//! | named (`rows`, `end`, `count`, ..) and numbered (`c0`, `c1`, ..) | what the operator keeps per row |
//! | `a{k}_{j}` | column `j` of aggregate `k`'s state; each aggregate's width in the metadata |
//!
//! Schema metadata: the operator's watermark, the state widths, and whether
//! the batch's keys replace what earlier snapshots held for them (an
//! incremental snapshot that writes changed keys whole).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int8Array, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DataFusionError;

use super::Result;

const WATERMARK_META: &str = "sluice.watermark";
/// How many state columns each aggregate has (a sliding accumulator's state
/// can be wider than the aggregate's declared state fields).
const WIDTHS_META: &str = "sluice.state_widths";
const REPLACES_META: &str = "sluice.replaces";
/// What top-N snapshots wrote for [`REPLACES_META`] before it was shared.
const REPLACES_META_TOPN: &str = "sluice.topn.replace";

/// The name of key column `i`.
pub(crate) fn key_column(i: usize) -> String {
    format!("k{i}")
}

fn state_column(agg: usize, j: usize) -> String {
    format!("a{agg}_{j}")
}

/// A snapshot batch being written: key columns, then named columns, then
/// aggregate states, in the order given.
#[must_use]
pub(crate) struct SnapshotBatch {
    rows: usize,
    names: Vec<String>,
    columns: Vec<ArrayRef>,
    meta: HashMap<String, String>,
}

impl SnapshotBatch {
    /// A batch of `rows` rows (a batch may have rows and no column: a
    /// count over a global group).
    pub(crate) fn new(rows: usize) -> Self {
        Self {
            rows,
            names: Vec::new(),
            columns: Vec::new(),
            meta: HashMap::new(),
        }
    }

    /// The key columns `k0..`.
    pub(crate) fn keys(mut self, keys: Vec<ArrayRef>) -> Self {
        for (i, k) in keys.into_iter().enumerate() {
            self.names.push(key_column(i));
            self.columns.push(k);
        }
        self
    }

    pub(crate) fn column(mut self, name: &str, column: ArrayRef) -> Self {
        self.names.push(name.to_string());
        self.columns.push(column);
        self
    }

    /// Columns `{prefix}0`, `{prefix}1`, .. (a held row's columns).
    pub(crate) fn numbered(mut self, prefix: &str, columns: impl IntoIterator<Item = ArrayRef>) -> Self {
        for (i, c) in columns.into_iter().enumerate() {
            self.names.push(format!("{prefix}{i}"));
            self.columns.push(c);
        }
        self
    }

    /// Each aggregate's state columns (their widths recorded).
    pub(crate) fn states(mut self, states: Vec<Vec<ArrayRef>>) -> Self {
        let widths: Vec<String> = states.iter().map(|s| s.len().to_string()).collect();
        self.meta.insert(WIDTHS_META.to_string(), widths.join(","));
        for (k, state) in states.into_iter().enumerate() {
            for (j, c) in state.into_iter().enumerate() {
                self.names.push(state_column(k, j));
                self.columns.push(c);
            }
        }
        self
    }

    pub(crate) fn watermark(mut self, watermark: i64) -> Self {
        self.meta
            .insert(WATERMARK_META.to_string(), watermark.to_string());
        self
    }

    /// The batch's keys replace what earlier snapshots held for them.
    pub(crate) fn replaces(mut self) -> Self {
        self.meta.insert(REPLACES_META.to_string(), "true".to_string());
        self
    }

    /// A built batch, marked as [`Self::replaces`] marks one.
    pub(crate) fn mark_replaces(batch: RecordBatch) -> Result<RecordBatch> {
        let mut meta = batch.schema().metadata().clone();
        meta.insert(REPLACES_META.to_string(), "true".to_string());
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
        Ok(batch.with_schema(schema)?)
    }

    /// Every column nullable (a snapshot holds what the operator held).
    pub(crate) fn build(self) -> Result<RecordBatch> {
        let fields: Vec<Field> = self
            .names
            .into_iter()
            .zip(&self.columns)
            .map(|(n, c)| Field::new(n, c.data_type().clone(), true))
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(fields, self.meta));
        Ok(RecordBatch::try_new_with_options(
            schema,
            self.columns,
            &RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )?)
    }
}

/// A snapshot batch being read; errors name the operator (`what`: "a
/// join") and the column that is missing or of the wrong type.
pub(crate) struct SnapshotRows {
    batch: RecordBatch,
    what: &'static str,
}

impl SnapshotRows {
    pub(crate) fn new(batch: RecordBatch, what: &'static str) -> Self {
        Self { batch, what }
    }

    pub(crate) fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    /// Its memory, for state accounting.
    pub(crate) fn memory_size(&self) -> usize {
        self.batch.get_array_memory_size()
    }

    fn error(&self, message: String) -> DataFusionError {
        DataFusionError::Internal(format!("{} snapshot {message}", self.what))
    }

    /// The rows where `mask` is true.
    pub(crate) fn filter(&self, mask: &arrow::array::BooleanArray) -> Result<Self> {
        Ok(Self {
            batch: arrow::compute::filter_record_batch(&self.batch, mask)?,
            what: self.what,
        })
    }

    pub(crate) fn column(&self, name: &str) -> Result<ArrayRef> {
        let at = self
            .batch
            .schema()
            .index_of(name)
            .map_err(|_| self.error(format!("without its {name} column")))?;
        Ok(self.batch.column(at).clone())
    }

    /// The key columns `k0..k{n-1}`.
    pub(crate) fn keys(&self, n: usize) -> Result<Vec<ArrayRef>> {
        (0..n).map(|i| self.column(&key_column(i))).collect()
    }

    /// Columns `{prefix}0..{prefix}{n-1}`.
    pub(crate) fn numbered(&self, prefix: &str, n: usize) -> Result<Vec<ArrayRef>> {
        (0..n).map(|i| self.column(&format!("{prefix}{i}"))).collect()
    }

    /// An integer column as Int64.
    pub(crate) fn int64(&self, name: &str) -> Result<Int64Array> {
        let c = self.column(name)?;
        let c = match c.data_type() {
            DataType::Int64 => c,
            t if t.is_integer() => arrow::compute::cast(&c, &DataType::Int64)?,
            t => return Err(self.error(format!("column {name} is {t}, not an integer"))),
        };
        Ok(c.as_any().downcast_ref::<Int64Array>().expect("Int64").clone())
    }

    pub(crate) fn int8(&self, name: &str) -> Result<Int8Array> {
        let c = self.column(name)?;
        c.as_any()
            .downcast_ref::<Int8Array>()
            .cloned()
            .ok_or_else(|| self.error(format!("column {name} is {}, not Int8", c.data_type())))
    }

    /// How many state columns each of `aggs` aggregates has.
    pub(crate) fn widths(&self, aggs: usize) -> Result<Vec<usize>> {
        let bad = || self.error("without its state widths".into());
        let meta = self
            .batch
            .schema()
            .metadata()
            .get(WIDTHS_META)
            .cloned()
            .ok_or_else(bad)?;
        let widths = meta
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|w| w.parse::<usize>().map_err(|_| bad()))
            .collect::<Result<Vec<_>>>()?;
        if widths.len() != aggs {
            return Err(self.error(format!(
                "has state for {} aggregates, the query has {aggs}",
                widths.len()
            )));
        }
        Ok(widths)
    }

    /// Each of `aggs` aggregates' state columns.
    pub(crate) fn states(&self, aggs: usize) -> Result<Vec<Vec<ArrayRef>>> {
        let widths = self.widths(aggs)?;
        widths
            .iter()
            .enumerate()
            .map(|(k, w)| (0..*w).map(|j| self.column(&state_column(k, j))).collect())
            .collect()
    }

    /// The watermark the operator had, if it keeps one.
    pub(crate) fn watermark(&self) -> Result<Option<i64>> {
        match self.batch.schema().metadata().get(WATERMARK_META) {
            None => Ok(None),
            Some(w) => w
                .parse()
                .map(Some)
                .map_err(|_| self.error(format!("with a bad watermark: {w}"))),
        }
    }

    /// Whether its keys replace what earlier snapshots held for them.
    pub(crate) fn replaces(&self) -> bool {
        let schema = self.batch.schema();
        let meta = schema.metadata();
        meta.contains_key(REPLACES_META) || meta.contains_key(REPLACES_META_TOPN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_by_name() {
        let ints = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let batch = SnapshotBatch::new(2)
            .keys(vec![ints(vec![1, 2])])
            .column("rows", ints(vec![3, 4]))
            .numbered("c", vec![ints(vec![5, 6]), ints(vec![7, 8])])
            .states(vec![
                vec![ints(vec![9, 10])],
                vec![],
                vec![ints(vec![11, 12]), ints(vec![13, 14])],
            ])
            .watermark(42)
            .replaces()
            .build()
            .unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["k0", "rows", "c0", "c1", "a0_0", "a2_0", "a2_1"]);
        let read = SnapshotRows::new(batch, "a test");
        assert_eq!(read.keys(1).unwrap()[0].as_ref(), ints(vec![1, 2]).as_ref());
        assert_eq!(read.int64("rows").unwrap().values().to_vec(), vec![3, 4]);
        assert_eq!(
            read.numbered("c", 2).unwrap()[1].as_ref(),
            ints(vec![7, 8]).as_ref()
        );
        let states = read.states(3).unwrap();
        assert_eq!(states.iter().map(Vec::len).collect::<Vec<_>>(), [1, 0, 2]);
        assert_eq!(states[2][1].as_ref(), ints(vec![13, 14]).as_ref());
        assert_eq!(read.watermark().unwrap(), Some(42));
        assert!(read.replaces());
        // What is not there is an error naming the operator and the column.
        let err = read.column("end").unwrap_err().to_string();
        assert!(err.contains("a test snapshot without its end column"), "{err}");
        let err = read.states(2).unwrap_err().to_string();
        assert!(err.contains("state for 3 aggregates, the query has 2"), "{err}");
        let bare = SnapshotRows::new(SnapshotBatch::new(0).build().unwrap(), "a test");
        assert_eq!(bare.watermark().unwrap(), None);
        assert!(!bare.replaces() && bare.is_empty());
    }
}

//! [`RowCounts`]: whole rows of a declared schema with a signed count each,
//! in Arrow's row format, and what changed since the last full snapshot.
//! A materialized view's lane keeps one: a count can be negative there, when
//! a row's insert came through another lane than its delete.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::RowConverter;

use super::snapshot::{SnapshotBatch, SnapshotRows};
use super::{IncrementalRule, Result, row_converter};

/// Net count per row (row bytes in Arrow's row format); no zero counts.
type Counts = HashMap<Box<[u8]>, i64>;

/// Adds `n` to a row's count; a count that reaches zero is removed.
fn add_count(counts: &mut Counts, row: &[u8], n: i64) {
    match counts.get_mut(row) {
        Some(c) => {
            *c += n;
            if *c == 0 {
                counts.remove(row);
            }
        }
        None if n != 0 => {
            counts.insert(row.into(), n);
        }
        None => {}
    }
}

/// Snapshot column of each row's count (the row's columns are `c0..`).
const COUNT: &str = "count";
/// What view lanes called it before the shared layout, with the row's
/// columns named as the view's, in order.
const LEGACY_COUNT: &str = "__count";

pub(crate) struct RowCounts {
    schema: SchemaRef,
    converter: RowConverter,
    counts: Counts,
    /// Net change per row since the last full snapshot (None: no full
    /// snapshot taken since the start or a restore: the next is full).
    since_full: Option<Counts>,
    rule: IncrementalRule,
}

impl RowCounts {
    pub(crate) fn new(schema: SchemaRef) -> Result<Self> {
        Ok(Self {
            converter: row_converter(&schema)?,
            schema,
            counts: Counts::new(),
            since_full: None,
            rule: IncrementalRule::default(),
        })
    }

    /// Adds each row of `columns` (of the declared schema) with its op
    /// (+1 insert, -1 delete).
    pub(crate) fn apply(&mut self, columns: &[ArrayRef], ops: &Int8Array) -> Result<()> {
        let rows = self.converter.convert_columns(columns)?;
        for (row, op) in rows.iter().zip(ops.values().iter()) {
            if let Some(d) = self.since_full.as_mut() {
                add_count(d, row.as_ref(), *op as i64);
            }
            add_count(&mut self.counts, row.as_ref(), *op as i64);
        }
        Ok(())
    }

    /// Net count per row over several tables of one schema (a row may be
    /// inserted through one lane and deleted through another).
    pub(crate) fn merged<'a>(parts: &[&'a RowCounts]) -> std::borrow::Cow<'a, Counts> {
        let Some((first, rest)) = parts.split_first() else {
            return std::borrow::Cow::Owned(Counts::new());
        };
        if rest.is_empty() {
            return std::borrow::Cow::Borrowed(&first.counts);
        }
        let mut merged = first.counts.clone();
        for p in rest {
            for (row, c) in &p.counts {
                add_count(&mut merged, row, *c);
            }
        }
        std::borrow::Cow::Owned(merged)
    }

    /// Rows held more than zero times, each as often as held (merged
    /// counts of this table's schema); None when there is none.
    pub(crate) fn rows(&self, counts: &Counts) -> Result<Option<Vec<ArrayRef>>> {
        let parser = self.converter.parser();
        let mut rows = Vec::new();
        for (bytes, c) in counts {
            for _ in 0..(*c).max(0) {
                rows.push(parser.parse(bytes));
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.converter.convert_rows(rows)?))
    }

    fn snapshot_of<'a>(&self, counts: impl Iterator<Item = (&'a Box<[u8]>, &'a i64)>) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let (rows, values): (Vec<_>, Vec<i64>) = counts.map(|(r, c)| (parser.parse(r), *c)).unzip();
        let cols = self.converter.convert_rows(rows)?;
        SnapshotBatch::new(values.len())
            .numbered("c", cols)
            .column(COUNT, Arc::new(Int64Array::from(values)))
            .build()
    }

    /// Every row with its count (none when empty); changes are tracked
    /// from here.
    pub(crate) fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.since_full = Some(Counts::new());
        self.rule.full_taken();
        if self.counts.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![self.snapshot_of(self.counts.iter())?])
    }

    /// Each row whose count changed since the last full snapshot, with its
    /// net change ([`Self::restore`] adds counts); None when a full
    /// snapshot is due.
    pub(crate) fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let Some(delta) = &self.since_full else {
            return Ok(None);
        };
        if !self.rule.incremental(delta.len(), self.counts.len()) {
            return Ok(None);
        }
        if delta.is_empty() {
            return Ok(Some(vec![]));
        }
        Ok(Some(vec![self.snapshot_of(delta.iter())?]))
    }

    /// Adds a snapshot's counts (a full snapshot's, then the changes after
    /// it, in order). The next snapshot is a full one.
    pub(crate) fn restore(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        self.since_full = None;
        for batch in batches {
            let n = batch.num_columns();
            let (cols, counts) = if batch.schema().column_with_name(LEGACY_COUNT).is_some() {
                let counts = SnapshotRows::new(batch.clone(), "a view").int64(LEGACY_COUNT)?;
                (batch.columns()[..n - 1].to_vec(), counts)
            } else {
                let batch = SnapshotRows::new(batch, "a view");
                (
                    batch.numbered("c", self.schema.fields().len())?,
                    batch.int64(COUNT)?,
                )
            };
            let rows = self.converter.convert_columns(&cols)?;
            for (row, c) in rows.iter().zip(counts.values().iter()) {
                add_count(&mut self.counts, row.as_ref(), *c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn counts_net_out_and_changes_restore_on_top_of_the_full_snapshot() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let col = |v: Vec<&str>| vec![Arc::new(arrow::array::StringArray::from(v)) as ArrayRef];
        let mut t = RowCounts::new(schema.clone()).unwrap();
        let first = col(vec!["a", "b", "a", "d", "e", "f"]);
        t.apply(&first, &Int8Array::from(vec![1; 6])).unwrap();
        // No full snapshot yet: a change set cannot stand on its own.
        assert!(t.snapshot_changes().unwrap().is_none());
        let full = t.snapshot().unwrap();
        t.apply(&col(vec!["b", "c"]), &Int8Array::from(vec![-1, -1]))
            .unwrap();
        assert_eq!(t.counts.len(), 5, "a: 2, d, e, f: 1, c: -1");
        let changes = t.snapshot_changes().unwrap().unwrap();
        assert_eq!(changes[0].num_rows(), 2);
        let mut back = RowCounts::new(schema).unwrap();
        back.restore(full).unwrap();
        back.restore(changes).unwrap();
        assert_eq!(back.counts, t.counts);
        // Only rows held more than zero times are rows.
        let rows = back.rows(&back.counts).unwrap().unwrap();
        assert_eq!(rows[0].len(), 5);
        let merged = RowCounts::merged(&[&t, &back]);
        let c = t.converter.convert_columns(&col(vec!["c"])).unwrap();
        assert_eq!(merged.get(c.row(0).data()), Some(&-2));
    }
}

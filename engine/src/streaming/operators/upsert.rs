//! An upsert changelog made whole: each record of an upsert stream (a
//! compacted Kafka topic) is the new row of its key or a tombstone deleting
//! it, without the row it replaces. This operator keeps each key's current
//! row and turns an upsert into the delete of that row (if any, and unless
//! it is the same row) and the insert of the new one, and a tombstone into
//! the delete of the key's row (nothing if the key has none): the inserts
//! and deletes of whole rows every updating operator downstream takes
//! (Flink's ChangelogNormalize). State: one row per key, in a
//! [`KeyedRows`], checkpointed incrementally by changed keys and split by
//! key on rescale.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int8Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;

use super::join::join_key_types;
use super::{BuildContext, KeyedOperator, OperatorSpec, Result, batch_with_schema, eval};
use crate::streaming::state::{IncrementalRule, KeyedRows, RowsSnapshot, SnapshotBatch, SnapshotRows};

/// The operator as planned.
#[derive(Debug)]
pub struct UpsertSpec {
    /// The key columns' expressions over the stream's rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
}

impl OperatorSpec for UpsertSpec {
    fn label(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        format!("UpsertNormalize: key=[{}]", keys.join(", "))
    }

    fn explain(&self) -> String {
        "each key's current row held; upserts and tombstones become deletes and inserts of whole rows, \
         hash exchange"
            .into()
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.keys.clone()]
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        if ctx.inputs.len() != 1 || !ctx.inputs[0].updating {
            return Err(DataFusionError::Internal(
                "an upsert normalization takes one upsert stream".into(),
            ));
        }
        Ok(Box::new(UpsertNormalize::new(
            self.keys.clone(),
            ctx.inputs[0].schema.clone(),
        )?))
    }
}

/// One task's normalization.
pub struct UpsertNormalize {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    input: SchemaRef,
    /// The rows and the op column.
    output: SchemaRef,
    rows: KeyedRows,
    rule: IncrementalRule,
    /// Upserts that changed nothing, tombstones of keys without a row.
    unchanged: u64,
}

impl UpsertNormalize {
    /// Over a stream of `input`'s columns; the output is those and the op
    /// column.
    pub fn new(keys: Vec<Arc<dyn PhysicalExpr>>, input: SchemaRef) -> Result<Self> {
        let key_types = join_key_types([&keys, &keys], [&input, &input])?;
        Ok(Self {
            rows: KeyedRows::new(&key_types, input.clone())?,
            output: crate::stream::with_op_column(&input),
            keys,
            input,
            rule: IncrementalRule::default(),
            unchanged: 0,
        })
    }
}

impl KeyedOperator for UpsertNormalize {
    fn on_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let n = batch.num_columns();
        let ops = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<Int8Array>()
            .ok_or_else(|| DataFusionError::Internal("an upsert batch without its op column".into()))?
            .clone();
        let rows_batch = batch.project(&(0..n - 1).collect::<Vec<_>>())?;
        let key_cols = self
            .keys
            .iter()
            .map(|k| eval(k, &rows_batch))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keys = self.rows.encode_keys(&key_cols)?;
        let rows = self.rows.encode_rows(rows_batch.columns())?;
        // Rows out, in the row format, and their ops.
        let mut changed: Vec<(Box<[u8]>, i8)> = Vec::new();
        for i in 0..batch.num_rows() {
            if key_cols.iter().any(|c| c.is_null(i)) {
                // A record without its key deletes or upserts nothing.
                self.unchanged += 1;
                continue;
            }
            let (k, r) = (keys.row(i).data(), rows.row(i).data());
            let old: Option<(Box<[u8]>, i64)> = self
                .rows
                .bucket(k)
                .iter()
                .next()
                .map(|e| (Box::<[u8]>::from(e.row), e.count));
            let upsert = ops.value(i) > 0;
            if upsert && old.as_ref().is_some_and(|(o, _)| &**o == r) {
                self.unchanged += 1;
                continue;
            }
            match old {
                Some((o, count)) => {
                    self.rows.add(k, &o, -count, 0);
                    changed.push((o, -1));
                }
                None if !upsert => {
                    self.unchanged += 1;
                    continue;
                }
                None => {}
            }
            if upsert {
                self.rows.add(k, r, 1, 0);
                changed.push((r.into(), 1));
            }
        }
        for chunk in changed.chunks(8192) {
            let mut cols = self.rows.decode(chunk.iter().map(|(r, _)| &**r))?;
            cols.push(Arc::new(Int8Array::from_iter_values(
                chunk.iter().map(|(_, o)| *o),
            )));
            out.push(batch_with_schema(&self.output, cols)?);
        }
        Ok(())
    }

    fn on_watermark(&mut self, _watermark: i64, _out: &mut Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    fn state_size(&self) -> (usize, usize) {
        self.rows.size()
    }

    fn detail(&self) -> Option<String> {
        Some(format!(
            "{} keys held, {} upserts or tombstones changed nothing",
            self.rows.size().0,
            self.unchanged
        ))
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.rule.full_taken();
        let snap = self.rows.snapshot()?;
        Ok(vec![self.batch(snap)?])
    }

    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        let changed = self.rows.keys_changed();
        let total = self.rows.keys_held().max(changed);
        if !self.rule.incremental(changed, total) {
            return Ok(None);
        }
        let snap = self.rows.snapshot_changes()?;
        Ok(Some(vec![self.batch(snap)?]))
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let width = self.input.fields().len();
        for batch in state {
            let batch = SnapshotRows::new(batch, "an upsert normalization");
            if batch.is_empty() {
                continue;
            }
            let rows = batch_with_schema(&self.input, batch.numbered("c", width)?)?;
            let snap = RowsSnapshot {
                keys: batch.keys(self.keys.len())?,
                rows: rows.columns().to_vec(),
                count: batch.int64("count")?,
                matches: batch.int64("matches")?,
            };
            self.rows.restore(&snap)?;
        }
        Ok(())
    }
}

impl UpsertNormalize {
    fn batch(&self, snap: RowsSnapshot) -> Result<RecordBatch> {
        let len = snap.len();
        SnapshotBatch::new(len)
            .keys(snap.keys)
            .column("count", Arc::new(snap.count) as ArrayRef)
            .column("matches", Arc::new(snap.matches) as ArrayRef)
            .numbered("c", snap.rows)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::streaming::operators::tests::{Step, net, recovery_matches_inputs};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ]))
    }

    fn keys() -> Vec<Arc<dyn PhysicalExpr>> {
        vec![Arc::new(Column::new("k", 0))]
    }

    fn make() -> UpsertNormalize {
        UpsertNormalize::new(keys(), schema()).unwrap()
    }

    /// Records: (key, Some(value)) an upsert, (key, None) a tombstone.
    fn records(rs: &[(i64, Option<&str>)]) -> RecordBatch {
        RecordBatch::try_new(
            crate::stream::with_op_column(&schema()),
            vec![
                Arc::new(Int64Array::from_iter_values(rs.iter().map(|r| r.0))),
                Arc::new(arrow::array::StringArray::from_iter(rs.iter().map(|r| r.1))),
                Arc::new(Int8Array::from_iter_values(
                    rs.iter().map(|r| if r.1.is_some() { 1 } else { -1 }),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn upserts_and_tombstones_become_whole_row_changes() {
        let mut op = make();
        let mut out = vec![];
        op.on_batch(
            0,
            records(&[(1, Some("a")), (2, Some("b")), (1, Some("c")), (3, None)]),
            &mut out,
        )
        .unwrap();
        op.on_batch(0, records(&[(2, Some("b")), (2, None), (1, Some("d"))]), &mut out)
            .unwrap();
        let mut lines = BTreeMap::new();
        net(&out, true, &mut lines);
        // What is held now: key 1 with d; key 2 deleted; key 3 never was.
        assert_eq!(lines, BTreeMap::from([("1|d".to_string(), 1)]));
        // Every delete names the row it deletes: a then c for key 1, b.
        let deletes: usize = out
            .iter()
            .map(|b| {
                let ops = b.column(2).as_any().downcast_ref::<Int8Array>().unwrap();
                ops.values().iter().filter(|o| **o < 0).count()
            })
            .sum();
        assert_eq!(deletes, 3);
        assert_eq!(
            op.detail().unwrap(),
            "1 keys held, 2 upserts or tombstones changed nothing"
        );
    }

    #[test]
    fn random_upserts_restore_and_rescale_like_the_uninterrupted_run() {
        let mut rng = crate::streaming::operators::tests::Rng(99);
        let values = ["a", "b", "c"];
        let steps: Vec<Step> = (0..40)
            .map(|_| {
                let n = 1 + rng.below(6) as usize;
                let rs: Vec<(i64, Option<&str>)> = (0..n)
                    .map(|_| {
                        let k = rng.below(8) as i64;
                        let v = (rng.below(4) > 0).then(|| values[rng.below(3) as usize]);
                        (k, v)
                    })
                    .collect();
                (0, records(&rs), i64::MIN)
            })
            .collect();
        // The net output is each key's last upsert, unless a tombstone
        // came after it.
        let mut model: BTreeMap<i64, String> = BTreeMap::new();
        for (_, b, _) in &steps {
            let k = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let v = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                if v.is_null(i) {
                    model.remove(&k.value(i));
                } else {
                    model.insert(k.value(i), v.value(i).to_string());
                }
            }
        }
        let mut op = make();
        let mut out = vec![];
        for (_, b, _) in &steps {
            op.on_batch(0, b.clone(), &mut out).unwrap();
        }
        let mut lines = BTreeMap::new();
        net(&out, true, &mut lines);
        let want: BTreeMap<String, i64> = model.iter().map(|(k, v)| (format!("{k}|{v}"), 1)).collect();
        assert_eq!(lines, want);
        for cut in [1, 10, 20, 39] {
            recovery_matches_inputs(
                || Box::new(make()) as Box<dyn KeyedOperator>,
                &[keys()],
                &steps,
                cut,
            );
        }
    }
}

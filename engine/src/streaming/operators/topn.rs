//! Top-N per group: `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o) AS rn`
//! filtered by `rn <= N` (TopN) or `rn = 1` (deduplication), computed
//! incrementally over an append-only or updating input. `RANK()` and
//! `DENSE_RANK()` keep every row ranked N or better: rows tied on the
//! ORDER BY share a rank (RANK then skips, DENSE_RANK does not).
//!
//! Each group holds its rows ordered by the ORDER BY in Arrow's row format
//! (whose bytes sort as the ORDER BY does), ties broken by the row's own
//! bytes so that ranks are deterministic. Over an append-only input a
//! group keeps only its first N rows: a row pushed out can never come
//! back. Over an updating input every row is kept, since a retraction can
//! bring a lower one up.
//!
//! Changes are emitted per progress step: for each group touched since the
//! last step, the ranked rows emitted then are compared rank by rank with
//! the group's top N now, and only the ranks that differ are retracted and
//! inserted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;

use super::{
    BuildContext, KeyedOperator, OperatorSpec, Result, batch_with_schema, eval, expr_list, split_changes,
};
use crate::stream::with_op_column;
use crate::streaming::state::{IncrementalRule, SnapshotBatch, SnapshotRows};

/// One ORDER BY term.
#[derive(Debug, Clone)]
pub struct OrderTerm {
    pub expr: Arc<dyn PhysicalExpr>,
    pub descending: bool,
    pub nulls_first: bool,
}

/// (order key, row) in the row format: sorts as the group's order.
type Ranked = (Box<[u8]>, Box<[u8]>);

/// Which ranking the filter bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RankFunction {
    /// One rank per row (ties broken by the row's bytes).
    #[default]
    RowNumber,
    /// Ties share a rank; the next rank skips as many.
    Rank,
    /// Ties share a rank; the next rank is the next number.
    DenseRank,
}

impl std::fmt::Display for RankFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RankFunction::RowNumber => "row_number",
            RankFunction::Rank => "rank",
            RankFunction::DenseRank => "dense_rank",
        })
    }
}

/// `ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..) <= limit` (or RANK,
/// DENSE_RANK), as planned: the ranked first rows per group, updating.
#[derive(Debug)]
pub struct TopNSpec {
    pub partition: Vec<Arc<dyn PhysicalExpr>>,
    pub order: Vec<OrderTerm>,
    pub limit: usize,
    pub function: RankFunction,
}

impl OperatorSpec for TopNSpec {
    fn label(&self) -> String {
        let order = self
            .order
            .iter()
            .map(|o| format!("{}{}", o.expr, if o.descending { " DESC" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "TopN: partition=[{}] order=[{order}] {}<={}",
            expr_list(&self.partition),
            self.function,
            self.limit
        )
    }

    fn explain(&self) -> String {
        if self.partition.is_empty() {
            "global, emit changed ranks on watermark".into()
        } else {
            "rows per group in order, emit changed ranks on watermark, hash exchange".into()
        }
    }

    fn keys(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.partition.clone()]
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn KeyedOperator>> {
        let input = &ctx.inputs[0];
        Ok(Box::new(
            TopN::new(
                self.partition.clone(),
                self.order.clone(),
                self.limit,
                input.schema.clone(),
                input.updating,
                ctx.schema.clone(),
            )?
            .with_function(self.function),
        ))
    }
}

/// The first N rows per group, ranked.
pub struct TopN {
    partition: Vec<Arc<dyn PhysicalExpr>>,
    order: Vec<OrderTerm>,
    limit: usize,
    function: RankFunction,
    input: SchemaRef,
    input_updating: bool,
    output: SchemaRef,
    keys: Option<RowConverter>,
    sort: RowConverter,
    rows: RowConverter,
    groups: HashMap<Box<[u8]>, BTreeMap<Ranked, i64>>,
    /// Groups touched since the last progress step, with the ranked rows
    /// they had emitted before.
    touched: BTreeMap<Box<[u8]>, Vec<(u64, Ranked)>>,
    /// Groups changed since the last full snapshot.
    changed: HashSet<Box<[u8]>>,
    rule: IncrementalRule,
    held: usize,
    bytes: usize,
    unmatched_deletes: u64,
}

impl TopN {
    /// `output` is the input's columns followed by the rank (UInt64).
    pub fn new(
        partition: Vec<Arc<dyn PhysicalExpr>>,
        order: Vec<OrderTerm>,
        limit: usize,
        input: SchemaRef,
        input_updating: bool,
        output: SchemaRef,
    ) -> Result<Self> {
        let keys = if partition.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                partition
                    .iter()
                    .map(|p| Ok(SortField::new(p.data_type(&input)?)))
                    .collect::<Result<Vec<_>>>()?,
            )?)
        };
        let sort = RowConverter::new(
            order
                .iter()
                .map(|o| {
                    Ok(SortField::new_with_options(
                        o.expr.data_type(&input)?,
                        arrow::compute::SortOptions {
                            descending: o.descending,
                            nulls_first: o.nulls_first,
                        },
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        )?;
        let rows = crate::streaming::state::row_converter(&input)?;
        Ok(Self {
            partition,
            order,
            limit: limit.max(1),
            function: RankFunction::RowNumber,
            input,
            input_updating,
            output: with_op_column(&output),
            keys,
            sort,
            rows,
            groups: HashMap::new(),
            touched: BTreeMap::new(),
            changed: HashSet::new(),
            rule: IncrementalRule::default(),
            held: 0,
            bytes: 0,
            unmatched_deletes: 0,
        })
    }

    /// Deletes of rows not held (dropped).
    pub fn unmatched_deletes(&self) -> u64 {
        self.unmatched_deletes
    }

    /// The group keys of `rows` (a global top N: one empty key).
    fn group_keys(&self, rows: &RecordBatch) -> Result<Option<Rows>> {
        match &self.keys {
            None => Ok(None),
            Some(conv) => {
                let cols = self
                    .partition
                    .iter()
                    .map(|p| eval(p, rows))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some(conv.convert_columns(&cols)?))
            }
        }
    }

    fn sort_keys(&self, rows: &RecordBatch) -> Result<Rows> {
        let cols = self
            .order
            .iter()
            .map(|o| eval(&o.expr, rows))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.sort.convert_columns(&cols)?)
    }

    /// Ranks with `function` instead of ROW_NUMBER.
    pub fn with_function(mut self, function: RankFunction) -> Self {
        self.function = function;
        self
    }

    /// A group's rows ranked `limit` or better, in order, with their rank
    /// (a row held twice is two rows).
    fn top(&self, group: &[u8]) -> Vec<(u64, Ranked)> {
        match self.groups.get(group) {
            Some(rows) => self.ranked(rows),
            None => Vec::new(),
        }
    }

    fn ranked(&self, rows: &BTreeMap<Ranked, i64>) -> Vec<(u64, Ranked)> {
        let limit = self.limit as u64;
        let mut out: Vec<(u64, Ranked)> = Vec::new();
        // The rank of the first row of the current ties, and the count of
        // distinct order keys so far.
        let (mut first, mut dense) = (0u64, 0u64);
        let mut previous: Option<&[u8]> = None;
        for (r, n) in rows {
            if previous != Some(&*r.0) {
                first = out.len() as u64 + 1;
                dense += 1;
            }
            previous = Some(&*r.0);
            for _ in 0..*n {
                let rank = match self.function {
                    RankFunction::RowNumber => out.len() as u64 + 1,
                    RankFunction::Rank => first,
                    RankFunction::DenseRank => dense,
                };
                if rank > limit {
                    return out;
                }
                out.push((rank, r.clone()));
            }
        }
        out
    }

    fn apply(&mut self, batch: &RecordBatch, delta: i64) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let groups = self.group_keys(batch)?;
        let sorts = self.sort_keys(batch)?;
        let rows = self.rows.convert_columns(batch.columns())?;
        for i in 0..n {
            let g: &[u8] = groups.as_ref().map_or(&[], |g| g.row(i).data());
            if !self.touched.contains_key(g) {
                let before = self.top(g);
                self.touched.insert(g.into(), before);
            }
            if !self.changed.contains(g) {
                self.changed.insert(g.into());
            }
            let key: Ranked = (sorts.row(i).data().into(), rows.row(i).data().into());
            let size = key.0.len() + key.1.len() + 16;
            if !self.groups.contains_key(g) {
                if delta < 0 {
                    self.unmatched_deletes += 1;
                    continue;
                }
                self.groups.insert(g.into(), BTreeMap::new());
                self.bytes += g.len() + 48;
            }
            if delta > 0 {
                let group = self.groups.get_mut(g).expect("inserted above");
                let count = group.entry(key).or_insert(0);
                if *count == 0 {
                    self.held += 1;
                    self.bytes += size;
                }
                *count += 1;
                if !self.input_updating {
                    let group = self.groups.get(g).expect("inserted above");
                    // Append-only: rows ranked past N never come back.
                    let mut total: i64 = group.values().sum();
                    let keep = match self.function {
                        RankFunction::RowNumber => (self.limit as i64).min(total),
                        _ => {
                            let group = self.groups.get(g).expect("inserted above");
                            self.ranked(group).len() as i64
                        }
                    };
                    let group = self.groups.get_mut(g).expect("inserted above");
                    while total > keep {
                        let mut last = group.last_entry().expect("non-empty");
                        let over = (total - keep).min(*last.get());
                        *last.get_mut() -= over;
                        total -= over;
                        if *last.get() == 0 {
                            let (k, _) = last.remove_entry();
                            self.held -= 1;
                            self.bytes -= k.0.len() + k.1.len() + 16;
                        }
                    }
                }
            } else {
                let group = self.groups.get_mut(g).expect("inserted above");
                match group.get_mut(&key) {
                    Some(count) => {
                        *count -= 1;
                        if *count == 0 {
                            group.remove(&key);
                            self.held -= 1;
                            self.bytes -= size;
                        }
                    }
                    None => self.unmatched_deletes += 1,
                }
                if group.is_empty() {
                    self.groups.remove(g);
                    self.bytes -= g.len() + 48;
                }
            }
        }
        Ok(())
    }

    /// Ranked rows as output rows with `rank` and `op`.
    fn emit(&self, rows: &[(u64, &[u8])], op: i8, out: &mut Vec<RecordBatch>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let parser = self.rows.parser();
        let mut cols = self
            .rows
            .convert_rows(rows.iter().map(|(_, r)| parser.parse(r)))?;
        cols.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(k, _)| *k),
        )));
        cols.push(Arc::new(Int8Array::from(vec![op; rows.len()])));
        out.push(batch_with_schema(&self.output, cols)?);
        Ok(())
    }

    fn snapshot_of(&self, groups: &[&[u8]], replaces: bool) -> Result<Vec<RecordBatch>> {
        let parser = self.rows.parser();
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut counts: Vec<i64> = Vec::new();
        for g in groups {
            for ((_, r), n) in self.groups.get(*g).into_iter().flatten() {
                rows.push(r);
                counts.push(*n);
            }
        }
        let cols = self.rows.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        let as_batch = RecordBatch::try_new_with_options(
            self.input.clone(),
            cols.clone(),
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?;
        let keys: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|p| eval(p, &as_batch))
            .collect::<Result<_>>()?;
        let batch = SnapshotBatch::new(rows.len())
            .keys(keys)
            .column("count", Arc::new(Int64Array::from(counts)))
            .numbered("c", cols);
        let batch = if replaces { batch.replaces() } else { batch };
        Ok(vec![batch.build()?])
    }
}

impl KeyedOperator for TopN {
    fn on_batch(&mut self, _input: usize, batch: RecordBatch, _out: &mut Vec<RecordBatch>) -> Result<()> {
        if !self.input_updating {
            return self.apply(&batch, 1);
        }
        // Inserts first: a row inserted and deleted in one batch is then
        // found by its delete.
        let (inserts, deletes) = split_changes(&batch)?;
        self.apply(&inserts, 1)?;
        self.apply(&deletes, -1)
    }

    fn on_watermark(&mut self, _watermark: i64, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let touched = std::mem::take(&mut self.touched);
        let mut tops = Vec::with_capacity(touched.len());
        for (g, before) in touched {
            let after = self.top(&g);
            tops.push((before, after));
        }
        let (mut gone, mut new) = (Vec::new(), Vec::new());
        for (before, after) in &tops {
            for at in 0..before.len().max(after.len()) {
                let (b, a) = (before.get(at), after.get(at));
                if b == a {
                    continue;
                }
                if let Some((rank, b)) = b {
                    gone.push((*rank, &*b.1));
                }
                if let Some((rank, a)) = a {
                    new.push((*rank, &*a.1));
                }
            }
        }
        for chunk in gone.chunks(8192) {
            self.emit(chunk, -1, out)?;
        }
        for chunk in new.chunks(8192) {
            self.emit(chunk, 1, out)?;
        }
        Ok(())
    }

    fn state_size(&self) -> (usize, usize) {
        (self.held, self.bytes)
    }

    /// Every held row: group keys `k0..`, `count`, the row's columns `c0..`.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.changed.clear();
        self.rule.full_taken();
        let groups: Vec<&[u8]> = self.groups.keys().map(|g| &**g).collect();
        self.snapshot_of(&groups, false)
    }

    /// The groups changed since the last full snapshot, each whole (it
    /// replaces what the full snapshot held for it). A group emptied since
    /// has no row to say so: then a full snapshot is taken.
    fn snapshot_changes(&mut self) -> Result<Option<Vec<RecordBatch>>> {
        if self.changed.iter().any(|g| !self.groups.contains_key(g)) {
            return Ok(None);
        }
        if !self.rule.incremental(self.changed.len(), self.groups.len()) {
            return Ok(None);
        }
        let groups: Vec<&[u8]> = self.changed.iter().map(|g| &**g).collect();
        // A changed group is written whole: restoring it replaces what the
        // full snapshot held for it.
        Ok(Some(self.snapshot_of(&groups, true)?))
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let width = self.input.fields().len();
        for batch in state {
            let batch = SnapshotRows::new(batch, "a top-N");
            if batch.is_empty() {
                continue;
            }
            let replace = batch.replaces();
            let counts = batch.int64("count")?;
            let rows = batch_with_schema(&self.input, batch.numbered("c", width)?)?;
            let groups = self.group_keys(&rows)?;
            let sorts = self.sort_keys(&rows)?;
            let encoded = self.rows.convert_columns(rows.columns())?;
            let mut replaced: HashSet<Box<[u8]>> = HashSet::new();
            for i in 0..rows.num_rows() {
                let g: &[u8] = groups.as_ref().map_or(&[], |g| g.row(i).data());
                if replace && !replaced.contains(g) {
                    if let Some(old) = self.groups.remove(g) {
                        self.held -= old.len();
                        self.bytes -= g.len() + 48;
                        self.bytes -= old.keys().map(|k| k.0.len() + k.1.len() + 16).sum::<usize>();
                    }
                    replaced.insert(g.into());
                }
                let key: Ranked = (sorts.row(i).data().into(), encoded.row(i).data().into());
                let size = key.0.len() + key.1.len() + 16;
                if !self.groups.contains_key(g) {
                    self.groups.insert(g.into(), BTreeMap::new());
                    self.bytes += g.len() + 48;
                }
                let group = self.groups.get_mut(g).expect("inserted above");
                let count = group.entry(key).or_insert(0);
                if *count == 0 {
                    self.held += 1;
                    self.bytes += size;
                }
                *count += counts.value(i);
            }
        }
        self.changed.clear();
        Ok(())
    }
}

/// The output schema of a top-N: the input's columns and the rank.
pub fn topn_schema(input: &Schema, rank: &str) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(rank, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests;

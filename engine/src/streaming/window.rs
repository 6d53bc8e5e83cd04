//! Window table functions: `TUMBLE(t, ts, size)` and `HOP(t, ts, slide, size)`.
//!
//! A window function call names a stream and its event-time column; the
//! result is the stream's rows with `window_start` and `window_end` added
//! (a hopping window repeats each row once per window it falls in). The
//! same assignment code serves the batch scan (ad-hoc `SELECT` over a
//! bounded stream) and the streaming operator, so the two can't disagree on
//! which window a row is in; what is checked against DataFusion is the
//! aggregation and emission, against plain `date_bin` queries.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, Ident, TableAlias, TableFactor, Value, VisitMut,
    VisitorMut,
};

use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;

use crate::stream::{SourcePartition, StreamTable};

/// Which windows a row belongs to. Sizes are in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size`.
    Tumble { size: i64 },
    /// Windows of `size` starting every `slide`.
    Hop { slide: i64, size: i64 },
    /// Windows growing by `step` from the start of each `size`-long period:
    /// `[start, start + step)`, `[start, start + 2 step)`, ... up to
    /// `[start, start + size)`. A row is in every one that reaches past it.
    Cumulate { step: i64, size: i64 },
    /// Per key, rows closer than `gap` to each other form one window. Each
    /// row starts as its own window `[t, t + gap)`; the session aggregate
    /// merges overlapping ones.
    Session { gap: i64 },
}

impl WindowKind {
    /// The window length in microseconds.
    pub fn size(&self) -> i64 {
        match self {
            WindowKind::Tumble { size }
            | WindowKind::Hop { size, .. }
            | WindowKind::Cumulate { size, .. } => *size,
            WindowKind::Session { gap } => *gap,
        }
    }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowKind::Tumble { size } => write!(f, "TUMBLE(size={})", fmt_micros(*size)),
            WindowKind::Hop { slide, size } => {
                write!(f, "HOP(slide={}, size={})", fmt_micros(*slide), fmt_micros(*size))
            }
            WindowKind::Cumulate { step, size } => {
                write!(
                    f,
                    "CUMULATE(step={}, size={})",
                    fmt_micros(*step),
                    fmt_micros(*size)
                )
            }
            WindowKind::Session { gap } => write!(f, "SESSION(gap={})", fmt_micros(*gap)),
        }
    }
}

fn fmt_micros(us: i64) -> String {
    if us % 1_000_000 == 0 {
        format!("{}s", us / 1_000_000)
    } else if us % 1000 == 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// A window over a stream's event-time column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// Index of the event-time column in the input schema.
    pub time_column: usize,
    /// Unit of that column (window columns have the same type).
    pub unit: TimeUnit,
}

/// Microseconds per one tick of `unit`, as a (multiplier, divisor) pair.
pub(crate) fn ticks_per_micro(unit: TimeUnit) -> (i64, i64) {
    match unit {
        TimeUnit::Second => (1, 1_000_000),
        TimeUnit::Millisecond => (1, 1000),
        TimeUnit::Microsecond => (1, 1),
        TimeUnit::Nanosecond => (1000, 1),
    }
}

/// Converts microseconds to ticks of `unit` (rounding down).
pub(crate) fn micros_to_ticks(us: i64, unit: TimeUnit) -> i64 {
    let (mul, div) = ticks_per_micro(unit);
    us.saturating_mul(mul).div_euclid(div)
}

/// Converts ticks of `unit` to microseconds.
pub(crate) fn ticks_to_micros(t: i64, unit: TimeUnit) -> i64 {
    let (mul, div) = ticks_per_micro(unit);
    t.saturating_mul(div) / mul
}

impl WindowSpec {
    /// The schema of a windowed input: the input plus `window_start` and
    /// `window_end` of the time column's type.
    pub fn output_schema(&self, input: &Schema) -> SchemaRef {
        let ty = input.field(self.time_column).data_type().clone();
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("window_start", ty.clone(), false));
        fields.push(Field::new("window_end", ty, false));
        Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
    }

    /// Adds `window_start` / `window_end` to `batch` (repeating rows for
    /// hopping windows). Rows whose event time is NULL belong to no window
    /// and are dropped.
    pub fn assign(&self, batch: &RecordBatch, schema: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
        let time = batch.column(self.time_column);
        let ty = time.data_type().clone();
        let ticks = cast(time, &DataType::Int64)?;
        let ticks = ticks
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataFusionError::Internal("event time is not a timestamp".into()))?;
        let unit = self.unit;
        let (indices, starts, ends): (Option<UInt32Array>, Vec<i64>, Vec<i64>) = match self.kind {
            WindowKind::Tumble { size } => {
                let size = micros_to_ticks(size, unit).max(1);
                if ticks.null_count() == 0 {
                    let starts: Vec<i64> = ticks.values().iter().map(|t| t - t.rem_euclid(size)).collect();
                    let ends = starts.iter().map(|s| s + size).collect();
                    (None, starts, ends)
                } else {
                    let mut idx = Vec::with_capacity(ticks.len());
                    let mut starts = Vec::with_capacity(ticks.len());
                    for (i, t) in ticks.iter().enumerate() {
                        if let Some(t) = t {
                            idx.push(i as u32);
                            starts.push(t - t.rem_euclid(size));
                        }
                    }
                    let ends = starts.iter().map(|s| s + size).collect();
                    (Some(UInt32Array::from(idx)), starts, ends)
                }
            }
            WindowKind::Session { gap } => {
                let gap = micros_to_ticks(gap, unit).max(1);
                let mut idx = Vec::with_capacity(ticks.len());
                let mut starts = Vec::with_capacity(ticks.len());
                for (i, t) in ticks.iter().enumerate() {
                    if let Some(t) = t {
                        idx.push(i as u32);
                        starts.push(t);
                    }
                }
                let ends = starts.iter().map(|s| s + gap).collect();
                let idx = (idx.len() < ticks.len()).then(|| UInt32Array::from(idx));
                (idx, starts, ends)
            }
            WindowKind::Hop { slide, size } => {
                let slide = micros_to_ticks(slide, unit).max(1);
                let size = micros_to_ticks(size, unit).max(1);
                let per_row = ((size + slide - 1) / slide) as usize;
                let mut idx = Vec::with_capacity(ticks.len() * per_row);
                let mut starts = Vec::with_capacity(ticks.len() * per_row);
                for (i, t) in ticks.iter().enumerate() {
                    let Some(t) = t else { continue };
                    let last = t - t.rem_euclid(slide);
                    // Oldest window first, so output is in window order.
                    for j in (0..per_row as i64).rev() {
                        let start = last - j * slide;
                        if start + size > t {
                            idx.push(i as u32);
                            starts.push(start);
                        }
                    }
                }
                let ends = starts.iter().map(|s| s + size).collect();
                (Some(UInt32Array::from(idx)), starts, ends)
            }
            WindowKind::Cumulate { step, size } => {
                let step = micros_to_ticks(step, unit).max(1);
                let size = micros_to_ticks(size, unit).max(1);
                let per_row = (size / step) as usize;
                let mut idx = Vec::with_capacity(ticks.len() * per_row);
                let mut starts = Vec::with_capacity(ticks.len() * per_row);
                let mut ends = Vec::with_capacity(ticks.len() * per_row);
                for (i, t) in ticks.iter().enumerate() {
                    let Some(t) = t else { continue };
                    let start = t - t.rem_euclid(size);
                    // The first window reaching past t, then every larger one.
                    let mut end = start + ((t - start) / step + 1) * step;
                    while end <= start + size {
                        idx.push(i as u32);
                        starts.push(start);
                        ends.push(end);
                        end += step;
                    }
                }
                (Some(UInt32Array::from(idx)), starts, ends)
            }
        };
        let mut columns: Vec<ArrayRef> = match &indices {
            None => batch.columns().to_vec(),
            Some(idx) => batch
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), idx, None))
                .collect::<std::result::Result<_, _>>()?,
        };
        columns.push(cast(&Int64Array::from(starts), &ty)?);
        columns.push(cast(&Int64Array::from(ends), &ty)?);
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// A windowed stream as a table: what `TUMBLE(...)` / `HOP(...)` in FROM
/// resolve to. The streaming planner recognizes it and plans the source
/// and a window-assignment step; a batch scan assigns windows on the fly.
#[derive(Debug)]
pub struct WindowedTable {
    pub stream: Arc<StreamTable>,
    pub spec: WindowSpec,
    schema: SchemaRef,
}

impl WindowedTable {
    pub fn schema_ref(&self) -> &SchemaRef {
        &self.schema
    }
}

#[async_trait]
impl TableProvider for WindowedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if let WindowKind::Session { .. } = self.spec.kind {
            return plan_err!(
                "SESSION windows merge rows per key as they arrive, so they run only in continuous \
                 queries (CREATE MATERIALIZED VIEW, CREATE SINK, SUBSCRIBE TO (...))"
            );
        }
        let table = self
            .stream
            .windowed_batch_table(self.spec.clone(), self.schema.clone())?;
        table.scan(state, projection, &[], None).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }
}

/// Resolves stream names for the window functions.
pub trait StreamLookup: Send + Sync + fmt::Debug {
    fn stream(&self, name: &str) -> Option<Arc<StreamTable>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Tumble,
    Hop,
    Cumulate,
    Session,
}

/// The `tumble` / `hop` / `session` table functions.
#[derive(Debug)]
pub struct WindowFunction {
    call: Call,
    streams: Arc<dyn StreamLookup>,
}

impl WindowFunction {
    pub fn tumble(streams: Arc<dyn StreamLookup>) -> Self {
        Self {
            call: Call::Tumble,
            streams,
        }
    }

    pub fn hop(streams: Arc<dyn StreamLookup>) -> Self {
        Self {
            call: Call::Hop,
            streams,
        }
    }

    pub fn cumulate(streams: Arc<dyn StreamLookup>) -> Self {
        Self {
            call: Call::Cumulate,
            streams,
        }
    }

    pub fn session(streams: Arc<dyn StreamLookup>) -> Self {
        Self {
            call: Call::Session,
            streams,
        }
    }
}

fn string_arg(e: &Expr, what: &str, call: &str) -> datafusion::error::Result<String> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Ok(s.clone()),
        other => plan_err!("{call}: the {what} must be a name, found {other}"),
    }
}

/// An interval argument in microseconds.
pub(crate) fn interval_arg(e: &Expr, call: &str) -> datafusion::error::Result<i64> {
    let us = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            v.days as i64 * 86_400_000_000 + v.nanoseconds / 1000
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            v.days as i64 * 86_400_000_000 + v.milliseconds as i64 * 1000
        }
        Expr::Literal(ScalarValue::IntervalYearMonth(_), _)
        | Expr::Literal(ScalarValue::IntervalMonthDayNano(_), _) => {
            return plan_err!("{call}: window sizes in months or years are not supported; use days or less");
        }
        other => return plan_err!("{call}: window sizes must be INTERVAL literals, found {other}"),
    };
    if us <= 0 {
        return plan_err!("{call}: window sizes must be positive");
    }
    Ok(us)
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let (call, want) = match self.call {
            Call::Hop => ("HOP(stream, time_column, slide, size)", 4),
            Call::Cumulate => ("CUMULATE(stream, time_column, step, size)", 4),
            Call::Tumble => ("TUMBLE(stream, time_column, size)", 3),
            Call::Session => ("SESSION(stream, time_column, gap)", 3),
        };
        if exprs.len() != want {
            return plan_err!("{call} takes {want} arguments, found {}", exprs.len());
        }
        let name = string_arg(&exprs[0], "stream", call)?;
        let column = string_arg(&exprs[1], "time column", call)?;
        let Some(stream) = self.streams.stream(&name) else {
            return plan_err!(
                "{call}: {name} is not a stream (windows apply to streams declared with CREATE STREAM)"
            );
        };
        let schema = stream.schema_ref().clone();
        let Some(time_column) = schema.fields().iter().position(|f| f.name() == &column) else {
            return plan_err!("{call}: stream {name} has no column {column}");
        };
        let unit = match schema.field(time_column).data_type() {
            DataType::Timestamp(unit, _) => *unit,
            other => return plan_err!("{call}: {column} is {other}, a window needs a TIMESTAMP column"),
        };
        let kind = match self.call {
            Call::Hop => {
                let slide = interval_arg(&exprs[2], call)?;
                let size = interval_arg(&exprs[3], call)?;
                if size % slide != 0 {
                    return plan_err!("{call}: the size must be a multiple of the slide");
                }
                WindowKind::Hop { slide, size }
            }
            Call::Cumulate => {
                let step = interval_arg(&exprs[2], call)?;
                let size = interval_arg(&exprs[3], call)?;
                if size % step != 0 {
                    return plan_err!("{call}: the size must be a multiple of the step");
                }
                WindowKind::Cumulate { step, size }
            }
            Call::Tumble => WindowKind::Tumble {
                size: interval_arg(&exprs[2], call)?,
            },
            Call::Session => WindowKind::Session {
                gap: interval_arg(&exprs[2], call)?,
            },
        };
        let steps = match kind {
            WindowKind::Tumble { size } | WindowKind::Session { gap: size } => vec![size],
            WindowKind::Hop { slide, size } => vec![slide, size],
            WindowKind::Cumulate { step, size } => vec![step, size],
        };
        for us in steps {
            let (mul, div) = ticks_per_micro(unit);
            if (us * mul) % div != 0 {
                return plan_err!("{call}: the window size is finer than {column}'s precision");
            }
        }
        let spec = WindowSpec {
            kind,
            time_column,
            unit,
        };
        let out = spec.output_schema(&schema);
        if schema
            .fields()
            .iter()
            .any(|f| f.name() == "window_start" || f.name() == "window_end")
        {
            return plan_err!("{call}: stream {name} already has a window_start or window_end column");
        }
        Ok(Arc::new(WindowedTable {
            stream,
            spec,
            schema: out,
        }))
    }
}

/// Rewrites `FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)` so that
/// DataFusion can plan it: the stream and column names become string
/// literals (DataFusion plans table-function arguments as constant
/// expressions), and the call gets the stream's name as its alias so that
/// `bid.price` keeps working. Flink's `TABLE bid` and `DESCRIPTOR(col)`
/// spellings are accepted too.
pub fn rewrite_window_calls<V: VisitMut>(node: &mut V) {
    struct Rewriter;
    impl VisitorMut for Rewriter {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> std::ops::ControlFlow<()> {
            if let TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } = factor
            {
                let fname = name.to_string().to_ascii_lowercase();
                if !["tumble", "hop", "cumulate", "session"].contains(&fname.as_str()) {
                    return std::ops::ControlFlow::Continue(());
                }
                // DataFusion looks table functions up by exact name.
                *name = datafusion::sql::sqlparser::ast::ObjectName::from(vec![Ident::new(fname)]);
                let mut stream_name = None;
                for (i, arg) in args.args.iter_mut().enumerate().take(2) {
                    let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg else {
                        continue;
                    };
                    let name = match e {
                        SqlExpr::Identifier(id) => Some(ident_name(id)),
                        SqlExpr::CompoundIdentifier(ids) => ids.last().map(ident_name),
                        SqlExpr::Function(f) => {
                            // DESCRIPTOR(col) or TABLE(name)
                            let fname = f.name.to_string().to_ascii_lowercase();
                            match &f.args {
                                datafusion::sql::sqlparser::ast::FunctionArguments::List(l)
                                    if (fname == "descriptor" || fname == "table") && l.args.len() == 1 =>
                                {
                                    match &l.args[0] {
                                        FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Identifier(
                                            id,
                                        ))) => Some(ident_name(id)),
                                        _ => None,
                                    }
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    if let Some(n) = name {
                        if i == 0 {
                            stream_name = Some(n.clone());
                        }
                        *e = SqlExpr::Value(Value::SingleQuotedString(n).into());
                    }
                }
                if alias.is_none()
                    && let Some(n) = stream_name
                {
                    *alias = Some(TableAlias {
                        explicit: true,
                        at: None,
                        name: Ident::new(n),
                        columns: vec![],
                    });
                }
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Rewriter);
}

fn ident_name(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

/// One partition of a stream with windows assigned, for batch scans of
/// `TUMBLE(...)` / `HOP(...)`.
#[derive(Debug)]
struct WindowedPartition {
    inner: SourcePartition,
    spec: WindowSpec,
    schema: SchemaRef,
}

impl PartitionStream for WindowedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let spec = self.spec.clone();
        let schema = self.schema.clone();
        let out = schema.clone();
        let stream = self
            .inner
            .execute(ctx)
            .map(move |batch| batch.and_then(|b| spec.assign(&b, &out)));
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

impl StreamTable {
    /// The stream with windows assigned, as a table for batch scans.
    pub(crate) fn windowed_batch_table(
        &self,
        spec: WindowSpec,
        schema: SchemaRef,
    ) -> datafusion::error::Result<StreamingTable> {
        self.check_batch_scan()?;
        let parts: Vec<Arc<dyn PartitionStream>> = (0..self.partitions)
            .map(|p| {
                Arc::new(WindowedPartition {
                    inner: self.partition(p),
                    spec: spec.clone(),
                    schema: schema.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(StreamingTable::try_new(schema, parts)?.with_infinite_table(!self.is_bounded()))
    }
}

/// The declared streams by name.
#[derive(Debug, Default)]
pub(crate) struct Streams(std::sync::RwLock<std::collections::HashMap<String, Arc<StreamTable>>>);

impl Streams {
    pub(crate) fn insert(&self, name: String, table: Arc<StreamTable>) {
        self.0.write().expect("streams lock").insert(name, table);
    }

    pub(crate) fn remove(&self, name: &str) {
        self.0.write().expect("streams lock").remove(name);
    }
}

impl StreamLookup for Streams {
    fn stream(&self, name: &str) -> Option<Arc<StreamTable>> {
        self.0.read().expect("streams lock").get(name).cloned()
    }
}

/// `WATERMARK FOR col AS col [- INTERVAL '...']`: how far the watermark
/// trails the largest event time, in microseconds.
pub(crate) fn watermark_delay(
    col: &str,
    expr: &datafusion::sql::sqlparser::ast::Expr,
) -> crate::error::Result<i64> {
    let is_col = |e: &datafusion::sql::sqlparser::ast::Expr| matches!(e, datafusion::sql::sqlparser::ast::Expr::Identifier(id) if id.value.eq_ignore_ascii_case(col));
    let unsupported = || {
        crate::error::SluiceError::not_supported(format!(
            "WATERMARK FOR {col} AS {expr}: the watermark must be {col} or {col} - INTERVAL '...'"
        ))
    };
    if is_col(expr) {
        return Ok(0);
    }
    let datafusion::sql::sqlparser::ast::Expr::BinaryOp { left, op, right } = expr else {
        return Err(unsupported());
    };
    if !is_col(left) || *op != datafusion::sql::sqlparser::ast::BinaryOperator::Minus {
        return Err(unsupported());
    }
    let datafusion::sql::sqlparser::ast::Expr::Interval(_) = right.as_ref() else {
        return Err(unsupported());
    };
    // DataFusion turns the interval literal into a value.
    let ctx = datafusion::prelude::SessionContext::new();
    let planned = ctx
        .state()
        .create_logical_expr(&right.to_string(), &datafusion::common::DFSchema::empty())?;
    match planned {
        Expr::Literal(..) => Ok(interval_arg(&planned, "WATERMARK")?),
        _ => Err(unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;

    fn batch(ts: Vec<Option<i64>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(TimestampMillisecondArray::from(ts))]).unwrap()
    }

    fn starts(b: &RecordBatch) -> Vec<i64> {
        let c = cast(b.column(1), &DataType::Int64).unwrap();
        c.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
    }

    #[test]
    fn tumble_floors_to_the_window_including_negative_times() {
        let b = batch(vec![Some(0), Some(9_999), Some(10_000), Some(-1), None]);
        let spec = WindowSpec {
            kind: WindowKind::Tumble { size: 10_000_000 },
            time_column: 0,
            unit: TimeUnit::Millisecond,
        };
        let schema = spec.output_schema(&b.schema());
        let out = spec.assign(&b, &schema).unwrap();
        assert_eq!(out.num_rows(), 4, "the NULL time row belongs to no window");
        assert_eq!(starts(&out), vec![0, 0, 10_000, -10_000]);
    }

    #[test]
    fn cumulate_puts_a_row_in_every_window_of_its_period_reaching_past_it() {
        let b = batch(vec![Some(4_500), Some(6_000), Some(-1), None]);
        let spec = WindowSpec {
            kind: WindowKind::Cumulate {
                step: 2_000_000,
                size: 6_000_000,
            },
            time_column: 0,
            unit: TimeUnit::Millisecond,
        };
        let schema = spec.output_schema(&b.schema());
        let out = spec.assign(&b, &schema).unwrap();
        let ends = cast(out.column(2), &DataType::Int64).unwrap();
        let ends = ends
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        // 4500: [0,6000); 6000 starts the next period: [6000,8000),
        // [6000,10000), [6000,12000); -1 is in the last window of the period
        // before: [-6000,0).
        assert_eq!(starts(&out), vec![0, 6_000, 6_000, 6_000, -6_000]);
        assert_eq!(ends, vec![6_000, 8_000, 10_000, 12_000, 0]);
    }

    #[test]
    fn hop_repeats_each_row_per_window_oldest_first() {
        let b = batch(vec![Some(4_500)]);
        let spec = WindowSpec {
            kind: WindowKind::Hop {
                slide: 2_000_000,
                size: 6_000_000,
            },
            time_column: 0,
            unit: TimeUnit::Millisecond,
        };
        let schema = spec.output_schema(&b.schema());
        let out = spec.assign(&b, &schema).unwrap();
        // windows [0,6000), [2000,8000), [4000,10000) contain 4500
        assert_eq!(starts(&out), vec![0, 2_000, 4_000]);
    }
}

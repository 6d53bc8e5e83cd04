//! `versioned FOR SYSTEM_TIME AS OF probe.t`: a stream read as a versioned
//! table in a temporal join.
//!
//! The parser rewrites the clause to the table function call
//! `sluice_versions('rates', 'ts', 'o')` (the stream, then the probe's
//! time column and its qualifier), which resolves to a [`VersionsOf`]
//! table: the stream's rows, marked with the time the other input of the
//! join reads it at. An ASOF JOIN becomes the same call with a fourth
//! argument, the right stream's time column its match condition names. DataFusion plans the join as any equi-join; the
//! streaming planner sees the mark on the join's right input and plans a
//! temporal join (see `operators::temporal`).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::window::StreamLookup;
use crate::stream::StreamTable;

/// The table function the parser's rewrite calls.
pub const VERSIONS_FUNCTION: &str = "sluice_versions";

/// A stream read as a versioned table, at the time a column of the join's
/// other input names.
#[derive(Debug, Clone)]
pub struct VersionsOf {
    pub stream: Arc<StreamTable>,
    /// The probe input's time column (`o.ts`); None: `PROCTIME()`.
    pub as_of: Option<Column>,
    /// The column of this stream the versions' time is (an ASOF JOIN's
    /// match condition names it; it must be the event time).
    pub version_time: Option<String>,
}

#[async_trait]
impl TableProvider for VersionsOf {
    fn schema(&self) -> SchemaRef {
        self.stream.schema_ref().clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(datafusion::error::DataFusionError::External(Box::new(
            crate::error::SluiceError::not_supported(format!(
                "{} FOR SYSTEM_TIME AS OF is a temporal join, which runs as a continuous query \
                 (CREATE MATERIALIZED VIEW, CREATE SINK, SUBSCRIBE TO (...)); an ad-hoc SELECT can join \
                 on {}'s time column instead",
                self.stream.name, self.stream.name
            )),
        )))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }
}

/// `sluice_versions('stream', 'column'[, 'qualifier'[, 'version time']])`;
/// the column NULL for `PROCTIME()`.
#[derive(Debug)]
pub struct VersionsFunction {
    streams: Arc<dyn StreamLookup>,
}

impl VersionsFunction {
    pub fn new(streams: Arc<dyn StreamLookup>) -> Self {
        Self { streams }
    }
}

impl TableFunctionImpl for VersionsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let text = |i: usize| match args.exprs().get(i) {
            Some(Expr::Literal(ScalarValue::Utf8(Some(s)), _)) => Some(s.clone()),
            _ => None,
        };
        let Some(name) = text(0) else {
            return plan_err!(
                "FOR SYSTEM_TIME AS OF: write versioned FOR SYSTEM_TIME AS OF probe.time_column"
            );
        };
        let as_of = text(1).map(|column| Column::new(text(2), column));
        let stream = match self.streams.stream(&name) {
            Some(stream) => stream,
            None => table_as_stream(&name, args.session(), as_of.as_ref())?,
        };
        Ok(Arc::new(VersionsOf {
            stream,
            as_of,
            version_time: text(3),
        }))
    }
}

/// A table (not a stream: an external table, a sink's landed data, a
/// materialized view) read as the versions of a lookup join, at processing
/// time only: it has no versions by event time.
fn table_as_stream(
    name: &str,
    session: &dyn CatalogSession,
    as_of: Option<&Column>,
) -> datafusion::error::Result<Arc<StreamTable>> {
    use futures::FutureExt;
    let not_supported = |what: String| {
        datafusion::error::DataFusionError::External(Box::new(crate::error::SluiceError::not_supported(what)))
    };
    let Some(state) = session
        .as_any()
        .downcast_ref::<datafusion::execution::session_state::SessionState>()
    else {
        return plan_err!("{name} FOR SYSTEM_TIME AS OF: no session to find {name} in");
    };
    let reference = datafusion::common::TableReference::from(name);
    let provider = match state.schema_for_ref(reference.clone()) {
        Ok(schema) => match schema.table(reference.table()).now_or_never() {
            Some(found) => found?,
            None => return plan_err!("{name} FOR SYSTEM_TIME AS OF: {name} can't be looked up here"),
        },
        Err(_) => None,
    };
    let Some(provider) = provider else {
        return Err(datafusion::error::DataFusionError::External(Box::new(
            crate::error::SluiceError::new(
                crate::error::ErrorKind::UndefinedTable,
                format!("relation \"{name}\" does not exist"),
            ),
        )));
    };
    if let Some(column) = as_of {
        return Err(not_supported(format!(
            "{name} FOR SYSTEM_TIME AS OF {column}: {name} is a table, not a stream, so it has no versions by \
             event time; join its current rows FOR SYSTEM_TIME AS OF PROCTIME() (a lookup join), or declare \
             the versions as a stream"
        )));
    }
    let connector = Arc::new(super::lookup::TableSourceConnector::new(
        name.to_string(),
        provider,
        state.clone(),
    ));
    let table = StreamTable::try_new(
        name.to_string(),
        connector,
        Default::default(),
        state.config().target_partitions().max(1),
        None,
        None,
    )
    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    Ok(Arc::new(table))
}

/// The name of [`AsOfMark`].
pub const AS_OF_MARK: &str = "sluice_temporal_times";

/// `sluice_temporal_times(probe.t, versioned.t)`: put into a temporal
/// join's ON condition by [`MarkTemporalJoins`] so that the two time
/// columns stay in the plan (the optimizer prunes columns nothing reads)
/// and the streaming planner finds them resolved. It is true for every
/// row; the streaming planner takes it out of the condition. Volatile, so
/// nothing folds or moves it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsOfMark {
    signature: datafusion::logical_expr::Signature,
}

impl Default for AsOfMark {
    fn default() -> Self {
        Self {
            signature: datafusion::logical_expr::Signature::any(
                2,
                datafusion::logical_expr::Volatility::Volatile,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for AsOfMark {
    fn name(&self) -> &str {
        AS_OF_MARK
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[arrow::datatypes::DataType],
    ) -> datafusion::error::Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        Ok(datafusion::logical_expr::ColumnarValue::Array(
            std::sync::Arc::new(arrow::array::BooleanArray::from(vec![true; args.number_rows])),
        ))
    }
}

/// The stream read `FOR SYSTEM_TIME AS OF` under a join input, through
/// the steps that keep its rows as they are (projections, filters,
/// aliases).
pub(crate) fn versions_of(plan: &datafusion::logical_expr::LogicalPlan) -> Option<VersionsOf> {
    use datafusion::logical_expr::LogicalPlan;
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
            provider.downcast_ref::<VersionsOf>().cloned()
        }
        LogicalPlan::Projection(p) => versions_of(&p.input),
        LogicalPlan::Filter(f) => versions_of(&f.input),
        LogicalPlan::SubqueryAlias(a) => versions_of(&a.input),
        _ => None,
    }
}

/// Adds [`AsOfMark`] over the probe's AS OF column and the versioned
/// stream's time column to the ON condition of each join whose right
/// input is read `FOR SYSTEM_TIME AS OF` a column (before the optimizer
/// prunes columns). A column that does not resolve is left to the
/// streaming planner to report.
#[derive(Debug, Default)]
pub struct MarkTemporalJoins;

impl datafusion::optimizer::AnalyzerRule for MarkTemporalJoins {
    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::Transformed;
        use datafusion::logical_expr::LogicalPlan;
        plan.transform_up_with_subqueries(|plan| {
            let LogicalPlan::Join(join) = &plan else {
                return Ok(Transformed::no(plan));
            };
            let Some(v) = versions_of(&join.right) else {
                return Ok(Transformed::no(plan));
            };
            let Some(as_of) = &v.as_of else {
                return Ok(Transformed::no(plan));
            };
            let (ls, rs) = (join.left.schema(), join.right.schema());
            let Ok(at) = ls.index_of_column(as_of) else {
                return Ok(Transformed::no(plan));
            };
            let version = match &v.version_time {
                Some(name) => Some(name.clone()),
                None => v
                    .stream
                    .watermark
                    .as_ref()
                    .map(|w| v.stream.schema_ref().field(w.column).name().clone()),
            };
            let Some(version_at) = version.and_then(|n| rs.fields().iter().position(|f| *f.name() == n))
            else {
                return Ok(Transformed::no(plan));
            };
            let column = |schema: &datafusion::common::DFSchema, idx: usize| {
                Expr::Column(Column::from(schema.qualified_field(idx)))
            };
            let mark = datafusion::logical_expr::ScalarUDF::new_from_impl(AsOfMark::default())
                .call(vec![column(ls, at), column(rs, version_at)]);
            let LogicalPlan::Join(mut join) = plan else {
                unreachable!("matched above")
            };
            join.filter = Some(match join.filter.take() {
                Some(f) => f.and(mark),
                None => mark,
            });
            Ok(Transformed::yes(LogicalPlan::Join(join)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_mark_temporal_joins"
    }
}

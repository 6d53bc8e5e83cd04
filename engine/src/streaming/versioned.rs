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
            None => match table_as_stream(&name, args.session(), as_of.as_ref())? {
                Versions::Stream(stream) => stream,
                Versions::View(view) => return Ok(view),
            },
        };
        Ok(Arc::new(VersionsOf {
            stream,
            as_of,
            version_time: text(3),
        }))
    }
}

/// What a name read `FOR SYSTEM_TIME AS OF` resolves to when it is not a
/// stream.
enum Versions {
    /// A table read as a stream of its rows.
    Stream(Arc<StreamTable>),
    /// A materialized view's query over its stream's versions.
    View(Arc<dyn TableProvider>),
}

/// A table (not a stream: an external table, a sink's landed data, a
/// materialized view) read as the versions of a lookup join, at processing
/// time; or a materialized view that keeps each key's latest row, by event
/// time (see [`view_versions`]).
fn table_as_stream(
    name: &str,
    session: &dyn CatalogSession,
    as_of: Option<&Column>,
) -> datafusion::error::Result<Versions> {
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
        if let Some(view) = provider.downcast_ref::<super::mview::MaterializedView>()
            && let Some(definition) = view.definition()
        {
            return view_versions(name, definition, column);
        }
        if let Some(view) = provider.downcast_ref::<datafusion::datasource::ViewTable>() {
            return view_versions(name, view.logical_plan(), column);
        }
    }
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
    Ok(Versions::Stream(Arc::new(table)))
}

/// A view or materialized view read `FOR SYSTEM_TIME AS OF` the probe's
/// event time: a materialized view holds only its current rows, so its
/// versions come from its query, run again by the joining job over its
/// stream read as versions. A view is versioned when it keeps each key's latest row by
/// event time (Flink's versioned view):
///
/// ```sql
/// CREATE MATERIALIZED VIEW latest_rates AS SELECT currency, rate, ts FROM (
///   SELECT *, ROW_NUMBER() OVER (PARTITION BY currency ORDER BY ts DESC) AS rn FROM rates)
/// WHERE rn = 1
/// ```
///
/// The version of a key at time t is then its row with the latest time up
/// to t, which is what a temporal join over the stream itself looks up:
/// the streaming planner leaves the deduplication out (see
/// `Planner::top_n`) and checks that the join's key is the view's. Row
/// filters and projections of the stream may stand anywhere; anything else
/// (an aggregate, a join, a filter on the latest row) is refused, here or
/// by the streaming planner.
fn view_versions(
    name: &str,
    definition: &datafusion::logical_expr::LogicalPlan,
    as_of: &Column,
) -> datafusion::error::Result<Versions> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    let refuse = |why: String| {
        datafusion::error::DataFusionError::External(Box::new(crate::error::SluiceError::not_supported(
            format!(
                "{name} FOR SYSTEM_TIME AS OF {as_of}: {why}; a materialized view has versions by event time \
                 when it keeps each key's latest row of one stream (SELECT ... FROM (SELECT *, ROW_NUMBER() \
                 OVER (PARTITION BY key ORDER BY event_time DESC) AS rn FROM stream) WHERE rn = 1), or join \
                 {name}'s current rows FOR SYSTEM_TIME AS OF PROCTIME()"
            ),
        )))
    };
    // What the view is made of.
    let mut streams = Vec::new();
    let mut other = None;
    definition.apply(|plan| {
        match plan {
            LogicalPlan::TableScan(scan) => {
                match datafusion::datasource::source_as_provider(&scan.source)
                    .ok()
                    .and_then(|p| p.downcast_ref::<StreamTable>().map(|s| Arc::new(s.clone())))
                {
                    Some(stream) => streams.push(stream),
                    None => other = Some(format!("it reads {}, which is not a stream", scan.table_name)),
                }
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Window(_) => {}
            p => {
                other = Some(format!(
                    "its query has {}",
                    match p {
                        LogicalPlan::Aggregate(_) => "an aggregate".to_string(),
                        LogicalPlan::Join(_) => "a join".to_string(),
                        p => format!(
                            "a {}",
                            p.display().to_string().split(':').next().unwrap_or("step")
                        ),
                    }
                ))
            }
        }
        Ok(if other.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if let Some(why) = other {
        return Err(refuse(why));
    }
    let [stream] = streams.as_slice() else {
        return Err(refuse(format!(
            "its query reads {} streams, not one",
            streams.len()
        )));
    };
    let Some(watermark) = &stream.watermark else {
        return Err(refuse(format!(
            "{} has no event time (WATERMARK FOR)",
            stream.name
        )));
    };
    if stream.is_changelog() || stream.upsert_key().is_some() {
        return Err(refuse(format!(
            "{} is a changelog; join it FOR SYSTEM_TIME AS OF itself",
            stream.name
        )));
    }
    let time = stream.schema_ref().field(watermark.column).name().clone();
    if definition.schema().fields().iter().all(|f| *f.name() != time) {
        return Err(refuse(format!(
            "{name} does not show {}'s event time {time}",
            stream.name
        )));
    }
    let versions: Arc<dyn TableProvider> = Arc::new(VersionsOf {
        stream: stream.clone(),
        as_of: Some(as_of.clone()),
        version_time: None,
    });
    let plan = definition
        .clone()
        .transform_up(|plan| match plan {
            LogicalPlan::TableScan(mut scan) => {
                scan.source = datafusion::datasource::provider_as_source(versions.clone());
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            p => Ok(Transformed::no(p)),
        })?
        .data;
    Ok(Versions::View(Arc::new(VersionedView { plan })))
}

/// [`view_versions`]' answer: a view whose plan DataFusion inlines where
/// it is read.
#[derive(Debug)]
struct VersionedView {
    plan: datafusion::logical_expr::LogicalPlan,
}

#[async_trait]
impl TableProvider for VersionedView {
    fn schema(&self) -> SchemaRef {
        Arc::new(self.plan.schema().as_arrow().clone())
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, datafusion::logical_expr::LogicalPlan>> {
        Some(std::borrow::Cow::Borrowed(&self.plan))
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan_err!("a versioned view is read through its plan")
    }
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
        // A versioned view's deduplication (see `view_versions`).
        LogicalPlan::Window(w) => versions_of(&w.input),
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

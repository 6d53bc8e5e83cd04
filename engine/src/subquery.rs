//! Correlated scalar subqueries that DataFusion cannot turn into joins,
//! evaluated once per distinct set of outer values, as Postgres evaluates
//! them.
//!
//! DataFusion runs a correlated scalar subquery only by decorrelating it
//! into a join, which needs an aggregate at its top (`(SELECT max(x) FROM
//! t WHERE t.k = o.k)`) and outer references in equalities it can pull up.
//! Catalog queries that clients send at connect do neither: SQLAlchemy's
//! column reflection reads `(SELECT pg_get_expr(d.adbin, d.adrelid) FROM
//! pg_attrdef d WHERE a.atthasdef AND d.adrelid = a.attrelid ...)` and
//! builds JSON from outer columns inside another; psql's `\dT` has its own.
//! DataFusion refuses the first kind ("must be aggregated") and leaves the
//! second in the plan for the physical planner to refuse.
//!
//! Two rules find them: an analyzer rule for the subqueries the analyzer
//! would refuse, and an optimizer rule, run last, for the ones
//! decorrelation left behind. Both put a [`SubqueryPerRow`] node under the
//! projection or filter that holds them: it adds one column per subquery,
//! which the projection or filter then reads in place of the subquery. Its
//! physical node substitutes each row's outer values into the subquery's
//! plan and runs it, caching the answer by those values. Zero rows give
//! NULL, one row its value, more than one the error Postgres gives (21000).
//!
//! This is for small inputs (catalog tables, a few thousand rows): every
//! distinct set of outer values plans and runs the subquery once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, Result, ScalarValue, internal_err};
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, Filter, LogicalPlan, Projection, Subquery, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::{AnalyzerRule, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use crate::error::{ErrorKind, SluiceError};

/// The prefix of the columns a [`SubqueryPerRow`] adds.
const COLUMN: &str = "__sluice_subquery";

/// Whether DataFusion cannot run this scalar subquery as a join: it is
/// correlated and has no aggregate at its top (the analyzer refuses those
/// that may return more than one row).
fn refused_by_analyzer(s: &Subquery) -> bool {
    if s.outer_ref_columns.is_empty() {
        return false;
    }
    fn strip(p: &LogicalPlan) -> &LogicalPlan {
        match p {
            LogicalPlan::Projection(x) => strip(&x.input),
            LogicalPlan::SubqueryAlias(x) => strip(&x.input),
            other => other,
        }
    }
    let aggregated = match strip(&s.subquery) {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Filter(f) => matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)),
        _ => false,
    };
    // One that is not aggregated is not decorrelated either (a `LIMIT 1`
    // one passes the analyzer), and DataFusion leaves every subquery of a
    // projection in place when it cannot decorrelate one of them: it is
    // taken here, so that the others still become joins. Nor is one that
    // reads an outer column other than in a filter or join condition
    // (`ARRAY(SELECT 'toast.' || x FROM unnest(tc.reloptions) x)`, psql's
    // `\d+`): decorrelation would leave the outer column in the plan.
    !aggregated || outer_columns_outside_conditions(&s.subquery)
}

/// Whether a node of `plan` other than a filter or a join reads an outer
/// column.
fn outer_columns_outside_conditions(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(!matches!(node, LogicalPlan::Filter(_) | LogicalPlan::Join(_))
            && node.expressions().iter().any(|e| {
                e.exists(|x| Ok(matches!(x, Expr::OuterReferenceColumn(..))))
                    .unwrap_or(false)
            }))
    })
    .unwrap_or(false)
}

/// Any correlated scalar subquery still in the plan after decorrelation.
fn correlated(s: &Subquery) -> bool {
    !s.outer_ref_columns.is_empty()
}

/// The analyzer rule: correlated scalar subqueries the analyzer would
/// refuse are run per row instead.
#[derive(Debug, Default)]
pub struct PerRowSubqueries;

impl AnalyzerRule for PerRowSubqueries {
    fn name(&self) -> &str {
        "sluice_per_row_subqueries"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        rewrite(plan, refused_by_analyzer).data()
    }
}

/// The optimizer rule, added last: correlated scalar subqueries that
/// decorrelation could not turn into joins are run per row instead.
#[derive(Debug, Default)]
pub struct LeftoverSubqueries;

impl OptimizerRule for LeftoverSubqueries {
    fn name(&self) -> &str {
        "sluice_leftover_subqueries"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        rewrite(plan, correlated)
    }
}

fn rewrite(plan: LogicalPlan, pick: fn(&Subquery) -> bool) -> Result<Transformed<LogicalPlan>> {
    plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::Projection(p) if holds(&p.expr, pick) => {
            let mut found = Vec::new();
            let exprs = p
                .expr
                .iter()
                .zip(p.schema.iter())
                .map(|(e, (qualifier, field))| {
                    let new = take_subqueries(e.clone(), pick, &mut found)?;
                    Ok(if new.transformed {
                        new.data.alias_qualified(qualifier.cloned(), field.name())
                    } else {
                        new.data
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let input = SubqueryPerRow::plan(Arc::unwrap_or_clone(p.input), found)?;
            Ok(Transformed::yes(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(input),
            )?)))
        }
        // In an aggregate's arguments (psql's `\dp` nests one ARRAY
        // subquery in another, and decorrelating the outer one puts the
        // inner one into an `array_agg`): the rows are given the subquery's
        // value before they are aggregated. Each changed expression keeps
        // its name, which the nodes above read.
        LogicalPlan::Aggregate(a)
            if (holds(&a.aggr_expr, pick) || holds(&a.group_expr, pick))
                && !a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) =>
        {
            let mut found = Vec::new();
            let names: Vec<(Option<datafusion::common::TableReference>, String)> = a
                .schema
                .iter()
                .map(|(q, f)| (q.cloned(), f.name().clone()))
                .collect();
            let mut rename = |e: Expr, k: usize| -> Result<Expr> {
                let new = take_subqueries(e, pick, &mut found)?;
                Ok(match (new.transformed, names.get(k)) {
                    (true, Some((q, name))) => new.data.alias_qualified(q.clone(), name),
                    _ => new.data,
                })
            };
            let groups = a.group_expr.len();
            let group_expr = a
                .group_expr
                .into_iter()
                .enumerate()
                .map(|(k, e)| rename(e, k))
                .collect::<Result<Vec<_>>>()?;
            let aggr_expr = a
                .aggr_expr
                .into_iter()
                .enumerate()
                .map(|(k, e)| rename(e, groups + k))
                .collect::<Result<Vec<_>>>()?;
            let input = SubqueryPerRow::plan(Arc::unwrap_or_clone(a.input), found)?;
            Ok(Transformed::yes(LogicalPlan::Aggregate(
                datafusion::logical_expr::Aggregate::try_new(Arc::new(input), group_expr, aggr_expr)?,
            )))
        }
        LogicalPlan::Filter(f) if holds(std::slice::from_ref(&f.predicate), pick) => {
            let mut found = Vec::new();
            let predicate = take_subqueries(f.predicate, pick, &mut found)?.data;
            let columns: Vec<Expr> = f
                .input
                .schema()
                .iter()
                .map(|(q, field)| Expr::Column(Column::new(q.cloned(), field.name())))
                .collect();
            let input = SubqueryPerRow::plan(Arc::unwrap_or_clone(f.input), found)?;
            let filtered = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?);
            Ok(Transformed::yes(LogicalPlan::Projection(Projection::try_new(
                columns,
                Arc::new(filtered),
            )?)))
        }
        other => Ok(Transformed::no(other)),
    })
}

fn holds(exprs: &[Expr], pick: fn(&Subquery) -> bool) -> bool {
    exprs.iter().any(|e| {
        e.exists(|x| Ok(matches!(x, Expr::ScalarSubquery(s) if pick(s))))
            .unwrap_or(false)
    })
}

/// A subquery taken out of an expression, and the condition under which
/// the expression reads it (`CASE WHEN t.typtype = 'd' THEN (SELECT ...)
/// END`: only those rows run it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
struct Taken {
    subquery: Subquery,
    guard: Option<Expr>,
}

/// Replaces the picked subqueries in `e` with columns named after their
/// place in `found`, which gets them.
fn take_subqueries(
    e: Expr,
    pick: fn(&Subquery) -> bool,
    found: &mut Vec<Taken>,
) -> Result<Transformed<Expr>> {
    e.transform_down(|x| match x {
        Expr::ScalarSubquery(s) if pick(&s) => Ok(Transformed::new(
            take(s, None, found),
            true,
            TreeNodeRecursion::Jump,
        )),
        // A searched CASE whose branch is a subquery: the subquery runs
        // only for the rows that take that branch.
        Expr::Case(mut c)
            if c.expr.is_none()
                && !c
                    .when_then_expr
                    .iter()
                    .any(|(w, _)| holds(std::slice::from_ref(w.as_ref()), pick))
                && c.when_then_expr
                    .iter()
                    .any(|(_, t)| matches!(t.as_ref(), Expr::ScalarSubquery(s) if pick(s))) =>
        {
            let conditions: Vec<Expr> = c.when_then_expr.iter().map(|(w, _)| w.as_ref().clone()).collect();
            for (k, (_, then)) in c.when_then_expr.iter_mut().enumerate() {
                let inner = std::mem::replace(then.as_mut(), Expr::Literal(ScalarValue::Null, None));
                **then = match inner {
                    Expr::ScalarSubquery(s) if pick(&s) => {
                        // Branch k is taken when its condition is true and
                        // no earlier one is.
                        let guard = conditions[..k]
                            .iter()
                            .fold(conditions[k].clone().is_true(), |g, earlier| {
                                g.and(earlier.clone().is_not_true())
                            });
                        take(s, Some(guard), found)
                    }
                    other => take_subqueries(other, pick, found)?.data,
                };
            }
            if let Some(otherwise) = c.else_expr.take() {
                c.else_expr = Some(Box::new(take_subqueries(*otherwise, pick, found)?.data));
            }
            Ok(Transformed::new(Expr::Case(c), true, TreeNodeRecursion::Jump))
        }
        other => Ok(Transformed::no(other)),
    })
}

/// The column standing for `s`, which `found` gets.
fn take(s: Subquery, guard: Option<Expr>, found: &mut Vec<Taken>) -> Expr {
    let name = format!("{COLUMN}{}", found.len());
    found.push(Taken { subquery: s, guard });
    Expr::Column(Column::from_name(name))
}

/// Adds to its input one column per subquery: the subquery's value with
/// the row's outer values put in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubqueryPerRow {
    input: LogicalPlan,
    subqueries: Vec<Taken>,
    /// The input's columns the subqueries read, as the node's expressions
    /// (so projection pushdown keeps them).
    outer: Vec<Expr>,
    schema: DFSchemaRef,
}

impl SubqueryPerRow {
    fn plan(input: LogicalPlan, subqueries: Vec<Taken>) -> Result<LogicalPlan> {
        let node = Self::new(input, subqueries)?;
        Ok(LogicalPlan::Extension(Extension { node: Arc::new(node) }))
    }

    fn new(input: LogicalPlan, subqueries: Vec<Taken>) -> Result<Self> {
        let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> = input
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), f.clone()))
            .collect();
        let mut outer = Vec::new();
        for (i, taken) in subqueries.iter().enumerate() {
            let s = &taken.subquery;
            let Some(field) = s.subquery.schema().fields().first() else {
                return internal_err!("a scalar subquery without a column");
            };
            fields.push((
                None,
                Arc::new(Field::new(
                    format!("{COLUMN}{i}"),
                    field.data_type().clone(),
                    true,
                )),
            ));
            let guard_columns = taken.guard.iter().flat_map(|g| g.column_refs()).cloned();
            for c in outer_columns(s).into_iter().chain(guard_columns) {
                let e = Expr::Column(c);
                if !outer.contains(&e) {
                    outer.push(e);
                }
            }
        }
        let schema = DFSchema::new_with_metadata(fields, input.schema().metadata().clone())?;
        Ok(Self {
            input,
            subqueries,
            outer,
            schema: Arc::new(schema),
        })
    }
}

/// The outer columns a subquery reads.
fn outer_columns(s: &Subquery) -> Vec<Column> {
    s.outer_ref_columns
        .iter()
        .filter_map(|e| match e {
            Expr::OuterReferenceColumn(_, c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

impl PartialOrd for SubqueryPerRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.input.partial_cmp(&other.input) {
            Some(std::cmp::Ordering::Equal) => self.subqueries.partial_cmp(&other.subqueries),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for SubqueryPerRow {
    fn name(&self) -> &str {
        "SubqueryPerRow"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.outer.clone()
    }

    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        (0..self.subqueries.len())
            .map(|i| format!("{COLUMN}{i}"))
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SubqueryPerRow: {} subquer", self.subqueries.len())?;
        write!(f, "{}", if self.subqueries.len() == 1 { "y" } else { "ies" })?;
        write!(f, " over outer columns [")?;
        for (i, e) in self.outer.iter().enumerate() {
            write!(f, "{}{e}", if i == 0 { "" } else { ", " })?;
        }
        write!(f, "]")
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Some(input) = inputs.pop() else {
            return internal_err!("SubqueryPerRow takes one input");
        };
        Self::new(input, self.subqueries.clone())
    }
}

/// Plans [`SubqueryPerRow`] nodes (with DataFusion's planner for the rest).
#[derive(Debug, Default)]
pub struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PerRowPlanner)])
            .create_physical_plan(logical_plan, session_state)
            .await
    }
}

struct PerRowPlanner;

#[async_trait]
impl ExtensionPlanner for PerRowPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<SubqueryPerRow>() else {
            return Ok(None);
        };
        let Some(session_state) = session.as_any().downcast_ref::<SessionState>() else {
            return internal_err!("SubqueryPerRow needs a SessionState to plan its subqueries");
        };
        let [input] = physical_inputs else {
            return internal_err!("SubqueryPerRow takes one input");
        };
        let input_schema = input.schema();
        let subqueries = node
            .subqueries
            .iter()
            .map(|taken| {
                let s = &taken.subquery;
                let outer = outer_columns(s)
                    .into_iter()
                    .map(|c| {
                        let i = node.input.schema().index_of_column(&c)?;
                        Ok((c, i))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let guard = match &taken.guard {
                    Some(g) => Some(session_state.create_physical_expr(g.clone(), node.input.schema())?),
                    None => None,
                };
                Ok(Planned {
                    plan: s.subquery.clone(),
                    outer,
                    guard,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            input_schema
                .fields()
                .iter()
                .cloned()
                .chain(
                    node.schema
                        .fields()
                        .iter()
                        .skip(input_schema.fields().len())
                        .cloned(),
                )
                .collect::<Vec<_>>(),
            input_schema.metadata().clone(),
        ));
        Ok(Some(Arc::new(SubqueryPerRowExec::new(
            input.clone(),
            Arc::new(subqueries),
            schema,
            session_state.clone(),
        ))))
    }
}

/// A subquery and where its outer values are in the input.
#[derive(Debug)]
struct Planned {
    plan: Arc<LogicalPlan>,
    outer: Vec<(Column, usize)>,
    /// Rows for which this is not true read no value (NULL).
    guard: Option<Arc<dyn PhysicalExpr>>,
}

/// Runs [`SubqueryPerRow`].
#[derive(Debug)]
pub struct SubqueryPerRowExec {
    input: Arc<dyn ExecutionPlan>,
    subqueries: Arc<Vec<Planned>>,
    schema: SchemaRef,
    state: SessionState,
    properties: Arc<PlanProperties>,
}

impl SubqueryPerRowExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        subqueries: Arc<Vec<Planned>>,
        schema: SchemaRef,
        state: SessionState,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.properties().output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            subqueries,
            schema,
            state,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for SubqueryPerRowExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SubqueryPerRowExec: {} subqueries", self.subqueries.len())
    }
}

impl ExecutionPlan for SubqueryPerRowExec {
    fn name(&self) -> &str {
        "SubqueryPerRowExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("SubqueryPerRowExec takes one input");
        }
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.subqueries.clone(),
            self.schema.clone(),
            self.state.clone(),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let runner = Runner {
            subqueries: self.subqueries.clone(),
            state: self.state.clone(),
            schema: self.schema.clone(),
            cache: HashMap::new(),
        };
        let stream = futures::stream::unfold((input, runner), |(mut input, mut runner)| async move {
            let batch = match input.next().await? {
                Ok(b) => b,
                Err(e) => return Some((Err(e), (input, runner))),
            };
            let out = runner.extend(batch).await;
            Some((out, (input, runner)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

struct Runner {
    subqueries: Arc<Vec<Planned>>,
    state: SessionState,
    schema: SchemaRef,
    /// Answers by subquery and outer values.
    cache: HashMap<(usize, Vec<ScalarValue>), ScalarValue>,
}

impl Runner {
    async fn extend(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let first = batch.num_columns();
        for (i, s) in self.subqueries.iter().enumerate() {
            let mut values = Vec::with_capacity(batch.num_rows());
            let guard = match &s.guard {
                Some(g) => Some(g.evaluate(&batch)?.into_array(batch.num_rows())?),
                None => None,
            };
            let guard = guard.as_ref().map(|g| g.as_boolean());
            for row in 0..batch.num_rows() {
                if guard.is_some_and(|g| g.is_null(row) || !g.value(row)) {
                    values.push(ScalarValue::try_from(self.schema.field(first + i).data_type())?);
                    continue;
                }
                let outer = s
                    .outer
                    .iter()
                    .map(|(_, col)| ScalarValue::try_from_array(batch.column(*col), row))
                    .collect::<Result<Vec<_>>>()?;
                let key = (i, outer);
                let value = match self.cache.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let field = self.schema.field(first + i);
                        let v = run_once(&self.state, s, &key.1, field).await?;
                        self.cache.insert(key, v.clone());
                        v
                    }
                };
                values.push(value);
            }
            let field = self.schema.field(first + i);
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The subquery's value with these outer values.
async fn run_once(
    state: &SessionState,
    s: &Planned,
    outer: &[ScalarValue],
    field: &Field,
) -> Result<ScalarValue> {
    let plan = s
        .plan
        .as_ref()
        .clone()
        .transform_up_with_subqueries(|p| {
            // Names stay those of the expressions with outer references,
            // which the nodes above read.
            let names = NamePreserver::new(&p);
            p.map_expressions(|e| {
                let name = names.save(&e);
                e.transform(|x| match &x {
                    Expr::OuterReferenceColumn(_, c) => match s.outer.iter().position(|(o, _)| o == c) {
                        Some(k) => Ok(Transformed::yes(Expr::Literal(outer[k].clone(), None))),
                        None => Ok(Transformed::no(x)),
                    },
                    _ => Ok(Transformed::no(x)),
                })
                .map(|t| t.update_data(|e| name.restore(e)))
            })
        })?
        .data
        // A lateral relation (`FROM unnest(o.a) x`) is a subquery node in
        // the plan; with its outer values put in, it is a plain relation.
        .transform_up(|p| match p {
            LogicalPlan::Subquery(lateral) => Ok(Transformed::yes(Arc::unwrap_or_clone(lateral.subquery))),
            other => Ok(Transformed::no(other)),
        })?
        .data;
    let physical = state.create_physical_plan(&plan).await?;
    let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    match rows {
        0 => ScalarValue::try_from(field.data_type()),
        1 => {
            let b = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
            let v = ScalarValue::try_from_array(b.column(0), 0)?;
            if v.data_type() == *field.data_type() {
                Ok(v)
            } else {
                v.cast_to(field.data_type())
            }
        }
        _ => Err(SluiceError::new(
            ErrorKind::CardinalityViolation,
            "more than one row returned by a subquery used as an expression",
        )
        .into_datafusion()),
    }
}

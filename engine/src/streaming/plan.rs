//! The streaming planner: DataFusion's optimized logical plan rewritten into
//! a dataflow of incremental operators.
//!
//! Every expression is compiled by DataFusion into a `PhysicalExpr` and
//! every aggregate into a DataFusion accumulator; the planner decides only
//! the dataflow shape (what is stateless and fused, what is keyed and
//! exchanged by hash, what is append-only or updating) and refuses, naming
//! the construct, what cannot run incrementally.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef, TimeUnit};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::common::{JoinType, NullEquality};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::type_coercion::binary::comparison_coercion;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::expressions::CastExpr;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use super::metrics::NodeMetrics;
use super::operators::{
    AggExpr, AggregateSpec, JoinKind, JoinSpec, OperatorSpec, OrderTerm, OverFrame, OverSpec, RankFunction,
    SessionAggregateSpec, SessionLayout, TemporalJoinSpec, TopNSpec, WindowAggregateSpec, WindowKey,
    expr_list,
};
use super::versioned::{AS_OF_MARK, VersionsOf, versions_of};
use super::window::{WindowSpec, WindowedTable};
use crate::error::{ErrorKind, Result, SluiceError};
use crate::stream::StreamTable;

/// A window column's meaning, carried through projections so that a
/// GROUP BY on it is recognized as a windowed aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCol {
    pub is_end: bool,
    pub size_us: i64,
    pub unit: TimeUnit,
    /// A SESSION window bound (`size_us` is the gap).
    pub session: bool,
    /// A CUMULATE window bound (windows share their start; `size_us` is
    /// the largest window).
    pub cumulate: bool,
}

/// One operator of a streaming dataflow.
#[derive(Debug)]
pub enum NodeKind {
    /// Reads a stream, one task per source partition, and derives its
    /// watermark. `shares`: the id of an earlier source of the same stream,
    /// read by the same settings, whose lanes this one reads too (the
    /// stream is read and decoded once; both see the same rows, watermarks
    /// and barriers).
    Source {
        table: Arc<StreamTable>,
        shares: Option<usize>,
    },
    /// Adds `window_start` / `window_end` (stateless).
    Window { spec: WindowSpec },
    /// Keeps rows matching the predicate (stateless).
    Filter { predicate: Arc<dyn PhysicalExpr> },
    /// Computes output columns (stateless).
    Project { exprs: Vec<Arc<dyn PhysicalExpr>> },
    /// Concatenates inputs (UNION ALL).
    Union,
    /// A keyed, stateful operator (GROUP BY, windows, joins, top-N, OVER):
    /// each input hash-exchanged by its keys into the node's tasks. The
    /// spec names, describes and builds it.
    Keyed(Box<dyn OperatorSpec>),
}

impl NodeKind {
    /// Stateless operators are fused into the task of their input.
    pub fn is_stateless(&self) -> bool {
        matches!(
            self,
            NodeKind::Window { .. } | NodeKind::Filter { .. } | NodeKind::Project { .. } | NodeKind::Union
        )
    }
}

/// A planned operator with its inputs.
#[derive(Debug)]
pub struct Node {
    /// Position in pre-order, unique in the job.
    pub id: usize,
    pub kind: NodeKind,
    pub inputs: Vec<Node>,
    /// The rows' schema (updating streams add the op column to batches).
    pub schema: SchemaRef,
    /// Whether the output retracts (else append-only).
    pub updating: bool,
    /// Per output column: is it a window bound?
    pub window_cols: Vec<Option<WindowCol>>,
    /// Parallel tasks.
    pub parallelism: usize,
    pub metrics: Arc<NodeMetrics>,
}

impl Node {
    /// Applies `streaming.state_ttl` to every join of the plan.
    pub fn set_state_ttl(&mut self, state_ttl: Option<std::time::Duration>) {
        if let NodeKind::Keyed(spec) = &mut self.kind {
            spec.set_state_ttl(state_ttl);
        }
        for i in &mut self.inputs {
            i.set_state_ttl(state_ttl);
        }
    }

    /// Operators in pre-order.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Node>) {
        out.push(self);
        for i in &self.inputs {
            i.walk(out);
        }
    }

    /// One line naming the operator, e.g. for SHOW JOBS.
    pub fn label(&self) -> String {
        match &self.kind {
            NodeKind::Source { table, .. } => format!("Source: {}", table.name),
            NodeKind::Window { spec } => format!("Window: {}", spec.kind),
            NodeKind::Filter { predicate } => format!("Filter: {predicate}"),
            NodeKind::Project { exprs } => format!("Project: {}", expr_list(exprs)),
            NodeKind::Union => "Union".into(),
            NodeKind::Keyed(spec) => spec.label(),
        }
    }

    /// The streaming plan as text: one operator per line, inputs indented,
    /// with parallelism, keys and whether each output is append-only or
    /// updating.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        self.explain_into(&mut s, 0);
        s
    }

    fn explain_into(&self, s: &mut String, depth: usize) {
        let mode = if self.updating { "updating" } else { "append-only" };
        let pad = "  ".repeat(depth);
        let detail = match &self.kind {
            NodeKind::Source { table, shares } => {
                let wm = match &table.watermark {
                    Some(w) => format!(
                        ", watermark {} - {}us",
                        table.schema_ref().field(w.column).name(),
                        w.delay_us
                    ),
                    None => ", no watermark".into(),
                };
                let refresh = table
                    .options
                    .get(super::lookup::REFRESH_OPTION)
                    .map_or(String::new(), |ms| format!(", read again every {ms}ms"));
                let shared = shares.map_or(String::new(), |id| format!(", reads the lanes of node {id}"));
                format!(
                    "connector={}, partitions={}{wm}{}{refresh}{shared}",
                    table.connector.name(),
                    table.partitions,
                    if table.is_bounded() { ", bounded" } else { "" }
                )
            }
            NodeKind::Keyed(spec) => spec.explain(),
            NodeKind::Window { .. }
            | NodeKind::Filter { .. }
            | NodeKind::Project { .. }
            | NodeKind::Union => "fused".into(),
        };
        let _ = writeln!(
            s,
            "{pad}{} [{detail}] parallelism={} {mode}",
            self.label(),
            self.parallelism
        );
        for i in &self.inputs {
            i.explain_into(s, depth + 1);
        }
    }

    /// Names of the streams the plan reads.
    pub fn streams(&self) -> Vec<String> {
        let mut all = vec![];
        self.walk(&mut all);
        let mut names: Vec<String> = all
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Source { table, .. } => Some(table.name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Turns an optimized logical plan into a dataflow.
pub struct Planner<'a> {
    props: &'a ExecutionProps,
    parallelism: usize,
    next_id: usize,
    /// Planning the versioned input of a temporal join (where a stream
    /// `FOR SYSTEM_TIME AS OF` may be read).
    in_versions: bool,
    /// `streaming.lookup_refresh`: how often a table a lookup join reads
    /// is read again (None: once per job start).
    lookup_refresh: Option<std::time::Duration>,
    /// The key of the versioned view a temporal join's versioned input
    /// read (its deduplication's PARTITION BY columns), which must be the
    /// join's key.
    versions_key: Option<Vec<String>>,
}

fn refuse(what: impl Into<String>) -> SluiceError {
    SluiceError::new(ErrorKind::NotSupported, what.into())
}

impl<'a> Planner<'a> {
    pub fn new(props: &'a ExecutionProps, parallelism: usize) -> Self {
        Self {
            props,
            parallelism: parallelism.max(1),
            next_id: 0,
            in_versions: false,
            lookup_refresh: None,
            versions_key: None,
        }
    }

    /// Reads the tables of lookup joins again at this interval.
    pub fn with_lookup_refresh(mut self, every: Option<std::time::Duration>) -> Self {
        self.lookup_refresh = every;
        self
    }

    /// Plans the whole query.
    pub fn plan(&mut self, plan: &LogicalPlan) -> Result<Node> {
        let node = self.node(plan)?;
        if node.streams().is_empty() {
            return Err(refuse("a continuous query must read a stream"));
        }
        // Ids in pre-order: the root is 0.
        let mut node = renumber(node, &mut 0);
        share_sources(&mut node, &mut Vec::new());
        Ok(node)
    }

    fn physical(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(create_physical_expr(
            e,
            schema,
            self.props,
            &PhysicalPlanningContext::default(),
        )?)
    }

    fn make(
        &mut self,
        kind: NodeKind,
        inputs: Vec<Node>,
        schema: SchemaRef,
        updating: bool,
        window_cols: Vec<Option<WindowCol>>,
        parallelism: usize,
    ) -> Node {
        self.next_id += 1;
        Node {
            id: self.next_id,
            kind,
            inputs,
            schema,
            updating,
            window_cols,
            parallelism,
            metrics: Arc::new(NodeMetrics::new(parallelism)),
        }
    }

    fn node(&mut self, plan: &LogicalPlan) -> Result<Node> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(refuse(
                        "LIMIT over a stream can't run incrementally; SELECT ... LIMIT from the view instead",
                    ));
                }
                if !scan.filters.is_empty() {
                    return Err(SluiceError::internal("a filter was pushed into a stream scan"));
                }
                let provider = source_as_provider(&scan.source)?;
                let (source, spec) = if let Some(s) = provider.downcast_ref::<StreamTable>() {
                    (Arc::new(s.clone()), None)
                } else if let Some(w) = provider.downcast_ref::<WindowedTable>() {
                    (w.stream.clone(), Some(w.spec.clone()))
                } else if let Some(v) = provider.downcast_ref::<VersionsOf>() {
                    if !self.in_versions {
                        return Err(refuse(format!(
                            "{} FOR SYSTEM_TIME AS OF must be the right input of a join: \
                             probe [LEFT] JOIN versioned FOR SYSTEM_TIME AS OF probe.time ON probe.key = versioned.key",
                            v.stream.name
                        )));
                    }
                    if v.stream.connector.name() == super::lookup::TABLE_CONNECTOR {
                        // A table read for a lookup join: by this job's
                        // tasks, again every `streaming.lookup_refresh`.
                        let mut options = v.stream.options.clone();
                        if let Some(every) = self.lookup_refresh {
                            options.insert(
                                super::lookup::REFRESH_OPTION.to_string(),
                                every.as_millis().to_string(),
                            );
                        }
                        let table = StreamTable::try_new(
                            v.stream.name.clone(),
                            v.stream.connector.clone(),
                            options,
                            self.parallelism,
                            None,
                            None,
                        )?;
                        (Arc::new(table), None)
                    } else {
                        (v.stream.clone(), None)
                    }
                } else {
                    return Err(refuse(format!(
                        "{} is not a stream: continuous queries read streams declared with CREATE STREAM \
                         (joining streams with tables comes later)",
                        scan.table_name
                    )));
                };
                let schema = source.schema_ref().clone();
                let parallelism = source.partitions;
                // A changelog source (Debezium records) is an updating input.
                let changelog = source.is_changelog();
                if changelog && spec.is_some() {
                    return Err(refuse(format!(
                        "windows over {} can't be computed: it is a changelog stream (its records insert \
                         and delete rows); aggregate it with GROUP BY without windows",
                        source.name
                    )));
                }
                let cols = vec![None; schema.fields().len()];
                let upsert_key = source.upsert_key().map(<[usize]>::to_vec);
                let mut node = self.make(
                    NodeKind::Source {
                        table: source,
                        shares: None,
                    },
                    vec![],
                    schema.clone(),
                    changelog,
                    cols,
                    parallelism,
                );
                // An upsert topic's records become inserts and deletes of
                // whole rows; a temporal join reads its upserts and
                // tombstones as versions themselves.
                if let Some(key) = upsert_key
                    && !self.in_versions
                {
                    let keys = key
                        .iter()
                        .map(|&i| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                schema.field(i).name(),
                                i,
                            )) as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    let cols = vec![None; schema.fields().len()];
                    node = self.make(
                        NodeKind::Keyed(Box::new(super::operators::UpsertSpec { keys })),
                        vec![node],
                        schema.clone(),
                        true,
                        cols,
                        parallelism,
                    );
                }
                // The scan's projection, in terms of the current node's columns.
                let mut projection = scan.projection.clone();
                if let Some(mut spec) = spec {
                    // Drop the columns nobody reads before windows are
                    // assigned: a hopping window copies every row it keeps.
                    let n_src = schema.fields().len();
                    if let Some(proj) = &projection {
                        let mut needed: Vec<usize> = proj.iter().copied().filter(|i| *i < n_src).collect();
                        needed.push(spec.time_column);
                        needed.sort_unstable();
                        needed.dedup();
                        if needed.len() < n_src {
                            let exprs: Vec<Arc<dyn PhysicalExpr>> = needed
                                .iter()
                                .map(|&i| {
                                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                                        schema.field(i).name(),
                                        i,
                                    )) as Arc<dyn PhysicalExpr>
                                })
                                .collect();
                            let narrowed: SchemaRef = Arc::new(schema.project(&needed)?);
                            let cols = vec![None; needed.len()];
                            node = self.make(
                                NodeKind::Project { exprs },
                                vec![node],
                                narrowed,
                                changelog,
                                cols,
                                parallelism,
                            );
                            spec.time_column = needed
                                .iter()
                                .position(|i| *i == spec.time_column)
                                .expect("time column kept");
                            projection = Some(
                                proj.iter()
                                    .map(|&i| {
                                        if i < n_src {
                                            needed.iter().position(|n| *n == i).expect("kept")
                                        } else {
                                            needed.len() + (i - n_src)
                                        }
                                    })
                                    .collect(),
                            );
                        }
                    }
                    let schema = node.schema.clone();
                    let out = spec.output_schema(&schema);
                    let mut cols = vec![None; schema.fields().len()];
                    let wc = |is_end| WindowCol {
                        is_end,
                        size_us: spec.kind.size(),
                        unit: spec.unit,
                        session: matches!(spec.kind, super::window::WindowKind::Session { .. }),
                        cumulate: matches!(spec.kind, super::window::WindowKind::Cumulate { .. }),
                    };
                    cols.push(Some(wc(false)));
                    cols.push(Some(wc(true)));
                    node = self.make(
                        NodeKind::Window { spec },
                        vec![node],
                        out,
                        changelog,
                        cols,
                        parallelism,
                    );
                }
                if let Some(proj) = &projection {
                    let is_identity = proj.len() == node.schema.fields().len()
                        && proj.iter().enumerate().all(|(i, p)| i == *p);
                    if !is_identity {
                        let exprs: Vec<Arc<dyn PhysicalExpr>> = proj
                            .iter()
                            .map(|&i| {
                                Arc::new(datafusion::physical_expr::expressions::Column::new(
                                    node.schema.field(i).name(),
                                    i,
                                )) as Arc<dyn PhysicalExpr>
                            })
                            .collect();
                        let cols = proj.iter().map(|&i| node.window_cols[i]).collect();
                        let out: SchemaRef = Arc::new(scan.projected_schema.as_arrow().clone());
                        node = self.make(
                            NodeKind::Project { exprs },
                            vec![node],
                            out,
                            changelog,
                            cols,
                            parallelism,
                        );
                    }
                }
                Ok(node)
            }
            LogicalPlan::Projection(p) => {
                let input = self.node(&p.input)?;
                let in_schema = p.input.schema();
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| self.physical(e, in_schema))
                    .collect::<Result<Vec<_>>>()?;
                let cols = p
                    .expr
                    .iter()
                    .map(|e| column_of(e, in_schema).and_then(|i| input.window_cols[i]))
                    .collect();
                let (updating, par) = (input.updating, input.parallelism);
                Ok(self.make(
                    NodeKind::Project { exprs },
                    vec![input],
                    Arc::new(p.schema.as_arrow().clone()),
                    updating,
                    cols,
                    par,
                ))
            }
            LogicalPlan::Filter(f) => {
                if let LogicalPlan::Window(w) = f.input.as_ref()
                    && let Some(node) = self.top_n(&f.predicate, w)?
                {
                    return Ok(node);
                }
                // The optimizer may prune columns between the filter and
                // the ranking: the same top-N, then the projection.
                if let LogicalPlan::Projection(p) = f.input.as_ref()
                    && let LogicalPlan::Window(w) = p.input.as_ref()
                    && p.expr.iter().all(|e| matches!(e, Expr::Column(_)))
                    && let Some(node) = self.top_n(&f.predicate, w)?
                {
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| self.physical(e, &w.schema))
                        .collect::<Result<Vec<_>>>()?;
                    let cols = vec![None; p.expr.len()];
                    let (updating, par) = (node.updating, node.parallelism);
                    return Ok(self.make(
                        NodeKind::Project { exprs },
                        vec![node],
                        Arc::new(p.schema.as_arrow().clone()),
                        updating,
                        cols,
                        par,
                    ));
                }
                let input = self.node(&f.input)?;
                let predicate = self.physical(&f.predicate, f.input.schema())?;
                let (schema, updating, cols, par) = (
                    input.schema.clone(),
                    input.updating,
                    input.window_cols.clone(),
                    input.parallelism,
                );
                Ok(self.make(
                    NodeKind::Filter { predicate },
                    vec![input],
                    schema,
                    updating,
                    cols,
                    par,
                ))
            }
            LogicalPlan::SubqueryAlias(a) => self.node(&a.input),
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.node(i))
                    .collect::<Result<Vec<_>>>()?;
                let updating = inputs.iter().any(|i| i.updating);
                let n = u.schema.fields().len();
                let cols = (0..n)
                    .map(|c| {
                        let first = inputs[0].window_cols.get(c).copied().flatten();
                        inputs
                            .iter()
                            .all(|i| i.window_cols.get(c).copied().flatten() == first)
                            .then_some(first)
                            .flatten()
                    })
                    .collect();
                let par = inputs.iter().map(|i| i.parallelism).sum();
                Ok(self.make(
                    NodeKind::Union,
                    inputs,
                    Arc::new(u.schema.as_arrow().clone()),
                    updating,
                    cols,
                    par,
                ))
            }
            LogicalPlan::Aggregate(agg) => {
                let input = self.node(&agg.input)?;
                let in_df = agg.input.schema();
                let in_arrow: Schema = in_df.as_arrow().clone();
                if agg.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return Err(refuse(
                        "GROUPING SETS / ROLLUP / CUBE can't run incrementally yet",
                    ));
                }
                let keys = agg
                    .group_expr
                    .iter()
                    .map(|e| self.physical(e, in_df))
                    .collect::<Result<Vec<_>>>()?;
                let mut aggs = Vec::new();
                for e in &agg.aggr_expr {
                    let planning = PhysicalPlanningContext::default();
                    let lowered =
                        LoweredAggregateBuilder::new(e, in_df, &in_arrow, self.props, &planning).build()?;
                    let (func, filter) = (lowered.aggregate, lowered.filter);
                    if !lowered.order_bys.is_empty() {
                        return Err(refuse(format!(
                            "{}: ORDER BY inside an aggregate can't run incrementally yet",
                            func.name()
                        )));
                    }
                    aggs.push(AggExpr { func, filter });
                }
                let windows: Vec<(usize, WindowCol)> = agg
                    .group_expr
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        column_of(e, in_df)
                            .and_then(|c| input.window_cols[c])
                            .map(|wc| (i, wc))
                    })
                    .collect();
                let mut window = windows.first().copied();
                if window.is_some_and(|(_, wc)| wc.cumulate) {
                    // Cumulating windows share their start: each is told by
                    // its end, and closes there.
                    window = windows.iter().copied().find(|(_, wc)| wc.is_end);
                    if window.is_none() {
                        return Err(refuse(
                            "CUMULATE windows share their window_start: GROUP BY window_end (with or \
                             without window_start) to aggregate each window",
                        ));
                    }
                }
                let schema: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
                let n_out = schema.fields().len();
                if let Some((_, wc)) = window
                    && wc.session
                {
                    // Sessions are per key: the window columns are computed,
                    // not grouped on.
                    let mut session_keys = Vec::new();
                    let mut key_pos = Vec::new();
                    let (mut start_pos, mut end_pos, mut time) = (None, None, None);
                    for (i, e) in agg.group_expr.iter().enumerate() {
                        match column_of(e, in_df).and_then(|c| input.window_cols[c]) {
                            Some(w) if w.session => {
                                if w.is_end {
                                    end_pos = Some(i);
                                } else {
                                    start_pos = Some(i);
                                }
                                if time.is_none() || !w.is_end {
                                    time = Some((keys[i].clone(), w.is_end));
                                }
                            }
                            _ => {
                                session_keys.push(keys[i].clone());
                                key_pos.push(i);
                            }
                        }
                    }
                    let (time, time_is_end) = time.expect("a session column is grouped");
                    let layout = SessionLayout {
                        key_pos,
                        start_pos,
                        end_pos,
                        time,
                        time_is_end,
                        gap_us: wc.size_us,
                        unit: wc.unit,
                    };
                    let mut cols = vec![None; n_out];
                    for p in [layout.start_pos, layout.end_pos].into_iter().flatten() {
                        cols[p] = None;
                    }
                    let par = if session_keys.is_empty() {
                        1
                    } else {
                        self.parallelism
                    };
                    return Ok(self.make(
                        NodeKind::Keyed(Box::new(SessionAggregateSpec {
                            keys: session_keys,
                            layout,
                            aggs,
                        })),
                        vec![input],
                        schema,
                        false,
                        cols,
                        par,
                    ));
                }
                let par = if keys.is_empty() { 1 } else { self.parallelism };
                if input.updating {
                    if window.is_some() {
                        return Err(refuse(
                            "a windowed aggregate over an updating result (a GROUP BY without windows) \
                             can't run incrementally: windows close once, and a retraction could arrive after",
                        ));
                    }
                    for a in &aggs {
                        super::operators::retractable(a).map_err(refuse)?;
                    }
                }
                match window {
                    Some((key, wc)) => {
                        let mut cols = vec![None; n_out];
                        for (i, e) in agg.group_expr.iter().enumerate() {
                            cols[i] = column_of(e, in_df).and_then(|c| input.window_cols[c]);
                        }
                        let window = WindowKey {
                            key,
                            is_end: wc.is_end,
                            size_us: wc.size_us,
                            unit: wc.unit,
                        };
                        Ok(self.make(
                            NodeKind::Keyed(Box::new(WindowAggregateSpec { keys, aggs, window })),
                            vec![input],
                            schema,
                            false,
                            cols,
                            par,
                        ))
                    }
                    None => Ok(self.make(
                        NodeKind::Keyed(Box::new(AggregateSpec { keys, aggs })),
                        vec![input],
                        schema,
                        true,
                        vec![None; n_out],
                        par,
                    )),
                }
            }
            LogicalPlan::Sort(_) => Err(refuse(
                "ORDER BY over a stream can't run incrementally: a continuous result has no final order; \
                 drop the ORDER BY and order when you SELECT from the view",
            )),
            LogicalPlan::Limit(_) => Err(refuse(
                "LIMIT over a stream can't run incrementally; SELECT ... LIMIT from the view instead",
            )),
            LogicalPlan::Join(j) => self.join(j),
            LogicalPlan::Window(w) => self.over(w),
            LogicalPlan::Distinct(_) => Err(refuse("DISTINCT ON can't run incrementally yet")),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Err(refuse("a continuous query must read a stream"))
            }
            other => Err(refuse(format!(
                "{} can't run incrementally",
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("this plan node")
            ))),
        }
    }
}

impl Planner<'_> {
    /// Aggregates OVER a frame ending at the current row, ordered by the
    /// input's event time, over an append-only input.
    fn over(&mut self, w: &datafusion::logical_expr::Window) -> Result<Node> {
        use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
        use datafusion::logical_expr::{WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition};
        const USE: &str = "OVER aggregates run over an append-only stream as \
             agg(x) OVER (PARTITION BY .. ORDER BY <event time> ROWS|RANGE BETWEEN .. PRECEDING AND CURRENT ROW)";
        let mut spec: Option<&WindowFunction> = None;
        let mut funcs = Vec::new();
        for e in &w.window_expr {
            let e = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            let Expr::WindowFunction(wf) = e else {
                return Err(refuse(format!("{e} is not a window function")));
            };
            let WindowFunctionDefinition::AggregateUDF(udaf) = &wf.fun else {
                return Err(refuse(format!(
                    "{}() OVER (...) can't run incrementally yet (only ROW_NUMBER(), RANK() or DENSE_RANK() filtered to its first \
                     ranks, WHERE rn <= N, and aggregates such as sum, avg, min, max, count); {USE}",
                    wf.fun.name()
                )));
            };
            if wf.params.distinct {
                return Err(refuse(format!(
                    "{}(DISTINCT ..) OVER (...) can't run incrementally yet",
                    udaf.name()
                )));
            }
            if let Some(first) = spec {
                if first.params.partition_by != wf.params.partition_by
                    || first.params.order_by != wf.params.order_by
                    || first.params.window_frame != wf.params.window_frame
                {
                    return Err(refuse(
                        "OVER aggregates with different windows in one SELECT can't run incrementally yet; \
                         use one PARTITION BY, ORDER BY and frame",
                    ));
                }
            } else {
                spec = Some(wf);
            }
            funcs.push((udaf.clone(), wf));
        }
        let Some(spec) = spec else {
            return Err(SluiceError::internal("a window node without window functions"));
        };
        let input = self.node(&w.input)?;
        if input.updating {
            return Err(refuse(format!(
                "OVER aggregates over an updating input (a GROUP BY result, a changelog) can't run \
                 incrementally yet; {USE}"
            )));
        }
        let in_df = w.input.schema();
        let in_arrow: Schema = in_df.as_arrow().clone();
        let times = time_columns(&input);
        let time = match spec.params.order_by.as_slice() {
            [o] if o.asc => column_of(&o.expr, in_df).filter(|c| times.first() == Some(c)),
            _ => None,
        };
        let Some(time) = time else {
            return Err(refuse(format!(
                "OVER aggregates must be ordered by the stream's event time, ascending (the column its \
                 watermark is declared on); {USE}"
            )));
        };
        let frame = &spec.params.window_frame;
        if !matches!(frame.end_bound, WindowFrameBound::CurrentRow) {
            return Err(refuse(format!(
                "an OVER frame must end at the current row (rows after it are in the future); {USE}"
            )));
        }
        let WindowFrameBound::Preceding(start) = &frame.start_bound else {
            return Err(refuse(format!(
                "an OVER frame must start before the current row; {USE}"
            )));
        };
        let frame = match (frame.units, start.is_null()) {
            (WindowFrameUnits::Rows, true) => OverFrame::RowsUnbounded,
            (WindowFrameUnits::Range, true) => OverFrame::RangeUnbounded,
            (WindowFrameUnits::Rows, false) => match start.cast_to(&arrow::datatypes::DataType::UInt64) {
                Ok(ScalarValue::UInt64(Some(n))) => OverFrame::Rows(n),
                _ => return Err(refuse(format!("ROWS {start} PRECEDING: not a row count"))),
            },
            (WindowFrameUnits::Range, false) => match interval_micros(start) {
                Some(d) => OverFrame::Range(d),
                None => {
                    return Err(refuse(format!(
                        "RANGE {start} PRECEDING over event time needs a fixed interval (seconds, minutes, \
                         hours or days)"
                    )));
                }
            },
            (WindowFrameUnits::Groups, _) => {
                return Err(refuse(format!(
                    "GROUPS frames can't run incrementally yet; {USE}"
                )));
            }
        };
        let mut aggs = Vec::new();
        for (udaf, wf) in funcs {
            let e = Expr::AggregateFunction(AggregateFunction::new_udf(
                udaf,
                wf.params.args.clone(),
                false,
                wf.params.filter.clone(),
                vec![],
                wf.params.null_treatment,
            ));
            let planning = PhysicalPlanningContext::default();
            let lowered =
                LoweredAggregateBuilder::new(&e, in_df, &in_arrow, self.props, &planning).build()?;
            let agg = AggExpr {
                func: lowered.aggregate,
                filter: lowered.filter,
            };
            if frame.bounded() && !agg.func.create_sliding_accumulator()?.supports_retract_batch() {
                return Err(refuse(format!(
                    "{}() can't take back a row leaving a bounded OVER frame; use UNBOUNDED PRECEDING",
                    agg.func.name()
                )));
            }
            aggs.push(agg);
        }
        let partition = spec
            .params
            .partition_by
            .iter()
            .map(|e| self.physical(e, in_df))
            .collect::<Result<Vec<_>>>()?;
        let schema: SchemaRef = Arc::new(w.schema.as_arrow().clone());
        let mut cols = input.window_cols.clone();
        cols.resize(schema.fields().len(), None);
        let par = if partition.is_empty() { 1 } else { self.parallelism };
        Ok(self.make(
            NodeKind::Keyed(Box::new(OverSpec {
                partition,
                time,
                time_name: input.schema.field(time).name().clone(),
                aggs,
                frame,
            })),
            vec![input],
            schema,
            false,
            cols,
            par,
        ))
    }

    /// `ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..)` filtered to its
    /// first ranks (`rn <= N`, `rn < N`, `rn = 1`): a top-N per group. None
    /// when the filter bounds no rank (the window is then refused).
    fn top_n(&mut self, predicate: &Expr, w: &datafusion::logical_expr::Window) -> Result<Option<Node>> {
        use datafusion::logical_expr::{Operator, utils::split_conjunction};
        let [Expr::WindowFunction(wf)] = w.window_expr.as_slice() else {
            return Ok(None);
        };
        let function = match wf.fun.name() {
            "row_number" => RankFunction::RowNumber,
            "rank" => RankFunction::Rank,
            "dense_rank" => RankFunction::DenseRank,
            _ => return Ok(None),
        };
        if !wf.params.args.is_empty() || wf.params.filter.is_some() {
            return Ok(None);
        }
        let rank = w.schema.fields().len() - 1;
        let bound = |e: &Expr| -> Option<i64> {
            let Expr::BinaryExpr(b) = e else { return None };
            let (op, lit) = if column_of(&b.left, &w.schema) == Some(rank) {
                (b.op, b.right.as_ref())
            } else if column_of(&b.right, &w.schema) == Some(rank) {
                (b.op.swap()?, b.left.as_ref())
            } else {
                return None;
            };
            let Expr::Literal(v, _) = lit else { return None };
            let n = match v.cast_to(&arrow::datatypes::DataType::Int64).ok()? {
                datafusion::common::ScalarValue::Int64(Some(n)) => n,
                _ => return None,
            };
            match op {
                Operator::LtEq => Some(n),
                Operator::Lt => Some(n - 1),
                Operator::Eq if n == 1 => Some(1),
                _ => None,
            }
        };
        let mut limit: Option<i64> = None;
        let mut rest = Vec::new();
        for c in split_conjunction(predicate) {
            match bound(c) {
                Some(n) => limit = Some(limit.map_or(n, |l| l.min(n))),
                None => rest.push(c.clone()),
            }
        }
        let Some(limit) = limit else {
            return Ok(None);
        };
        if limit < 1 {
            return Err(refuse(format!("a {function}() bound that keeps no row")));
        }
        if wf.params.order_by.is_empty() {
            return Err(refuse(
                "ROW_NUMBER() / RANK() without ORDER BY ranks rows in no defined order; say which rows come first",
            ));
        }
        let in_schema = w.input.schema();
        let partition = wf
            .params
            .partition_by
            .iter()
            .map(|e| self.physical(e, in_schema))
            .collect::<Result<Vec<_>>>()?;
        let order = wf
            .params
            .order_by
            .iter()
            .map(|s| {
                Ok(OrderTerm {
                    expr: self.physical(&s.expr, in_schema)?,
                    descending: !s.asc,
                    nulls_first: s.nulls_first,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let input = self.node(&w.input)?;
        if self.in_versions {
            return self.versioned_view(wf, w, input, limit, &rest).map(Some);
        }
        let schema: SchemaRef = Arc::new(w.schema.as_arrow().clone());
        let cols = vec![None; schema.fields().len()];
        let par = if partition.is_empty() { 1 } else { self.parallelism };
        let mut node = self.make(
            NodeKind::Keyed(Box::new(TopNSpec {
                partition,
                order,
                limit: limit as usize,
                function,
            })),
            vec![input],
            schema.clone(),
            true,
            cols.clone(),
            par,
        );
        if let Some(rest) = datafusion::logical_expr::utils::conjunction(rest) {
            let predicate = self.physical(&rest, &w.schema)?;
            node = self.make(
                NodeKind::Filter { predicate },
                vec![node],
                schema,
                true,
                cols,
                par,
            );
        }
        Ok(Some(node))
    }

    /// The deduplication of a versioned view read by a temporal join
    /// (`ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time DESC) = 1`,
    /// see `versioned::view_versions`): the temporal join over the rows
    /// themselves looks up the same version (the key's row with the latest
    /// time up to the probe's), so the rows go on as they are, their rank 1.
    /// The key is kept for the join to check.
    fn versioned_view(
        &mut self,
        wf: &datafusion::logical_expr::expr::WindowFunction,
        w: &datafusion::logical_expr::Window,
        input: Node,
        limit: i64,
        rest: &[Expr],
    ) -> Result<Node> {
        let keeps_latest = wf.fun.name() == "row_number"
            && limit == 1
            && rest.is_empty()
            && !input.updating
            && matches!(wf.params.order_by.as_slice(), [s] if !s.asc
                && column_of(&s.expr, w.input.schema()).is_some_and(|c| event_time(&input) == Some(c)));
        if !keeps_latest {
            return Err(refuse(
                "a view read FOR SYSTEM_TIME AS OF has versions by event time when it keeps each key's \
                 latest row: ROW_NUMBER() OVER (PARTITION BY key ORDER BY event_time DESC) = 1, and no \
                 other condition on the rank",
            ));
        }
        let in_schema = w.input.schema();
        let mut key = Vec::new();
        for e in &wf.params.partition_by {
            let Some(c) = column_of(e, in_schema) else {
                return Err(refuse(
                    "a versioned view's PARTITION BY must name columns (they are the key the temporal join \
                     looks versions up by)",
                ));
            };
            key.push(in_schema.field(c).name().clone());
        }
        self.versions_key = Some(key);
        let schema: SchemaRef = Arc::new(w.schema.as_arrow().clone());
        let rank = schema.field(schema.fields().len() - 1);
        let one = datafusion::common::ScalarValue::Int64(Some(1)).cast_to(rank.data_type())?;
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = (0..input.schema.fields().len())
            .map(|i| {
                Arc::new(datafusion::physical_expr::expressions::Column::new(
                    input.schema.field(i).name(),
                    i,
                )) as Arc<dyn PhysicalExpr>
            })
            .collect();
        exprs.push(Arc::new(datafusion::physical_expr::expressions::Literal::new(
            one,
        )));
        let mut cols = input.window_cols.clone();
        cols.resize(schema.fields().len(), None);
        let par = input.parallelism;
        Ok(self.make(NodeKind::Project { exprs }, vec![input], schema, false, cols, par))
    }

    /// A regular equi-join: both inputs hashed on their keys, each task
    /// holding both inputs' rows of its keys.
    fn join(&mut self, j: &datafusion::logical_expr::Join) -> Result<Node> {
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti if !j.null_aware => JoinKind::LeftAnti,
            JoinType::RightSemi => JoinKind::RightSemi,
            JoinType::RightAnti => JoinKind::RightAnti,
            other => {
                return Err(refuse(format!(
                    "{other} joins (from NOT IN subqueries, whose NULLs decide for every row) can't run \
                     incrementally yet; write NOT EXISTS"
                )));
            }
        };
        if j.on.is_empty() {
            return Err(refuse(
                "a join without an equality between its two inputs (a cross join, or only a non-equi \
                 condition) can't run incrementally: it would hold both streams whole and pair every row \
                 with every row; join on a key (a.k = b.k)",
            ));
        }
        if j.null_equality == NullEquality::NullEqualsNull {
            return Err(refuse(
                "a join whose keys match NULL to NULL (IS NOT DISTINCT FROM) can't run incrementally yet",
            ));
        }
        if let Some(v) = versions_of(&j.right) {
            return self.temporal_join(j, kind, &v);
        }
        if let Some(v) = versions_of(&j.left) {
            return Err(refuse(format!(
                "{} FOR SYSTEM_TIME AS OF must be the right input of the join (the versions are \
                 looked up for the left input's rows)",
                v.stream.name
            )));
        }
        let left = self.node(&j.left)?;
        let right = self.node(&j.right)?;
        let (ls, rs) = (j.left.schema(), j.right.schema());
        let keys = self.join_keys(j)?;
        let both = ls.join(rs)?;
        let filter = match &j.filter {
            Some(f) => Some(self.physical(f, &both)?),
            None => None,
        };
        // An interval join: held rows go once the other input's watermark
        // passes their bound. Append-only inputs only: a retraction must
        // find the rows it retracts. An input's times are the columns its
        // watermark bounds: the event time, and window ends (a row to come
        // is in windows ending after the watermark; a window aggregate
        // emits a window before the watermark that closed it).
        let times = [time_columns(&left), time_columns(&right)];
        let column = |schema: &DFSchema, idx: usize| {
            Expr::Column(datafusion::common::Column::from(schema.qualified_field(idx)))
        };
        // Per input, a time every row not late has at or after the input's
        // watermark (rows before it are late where the other input expires).
        let mut late_time: [Option<Expr>; 2] = [
            times[0].first().map(|&i| column(ls, i)),
            times[1].first().map(|&i| column(rs, i)),
        ];
        let mut bounds: Vec<(usize, Expr)> = Vec::new();
        let mut window_join = false;
        if !left.updating && !right.updating {
            // A window join: equal windows on both inputs (same kind and
            // size), a row's window ends where the other input's rows to
            // come can't reach.
            for (l, r) in &j.on {
                let (Some(li), Some(ri)) = (column_of(l, ls), column_of(r, rs)) else {
                    continue;
                };
                let (Some(lw), Some(rw)) = (left.window_cols[li], right.window_cols[ri]) else {
                    continue;
                };
                if lw != rw || lw.session || (lw.cumulate && !lw.is_end) {
                    continue;
                }
                window_join = true;
                for (side, idx, schema) in [(0, li, ls), (1, ri, rs)] {
                    let col = column(schema, idx);
                    let end = if lw.is_end {
                        col
                    } else {
                        col + datafusion::logical_expr::lit(ScalarValue::new_interval_mdn(
                            0,
                            0,
                            lw.size_us.saturating_mul(1000),
                        ))
                    };
                    if late_time[side].is_none() {
                        late_time[side] = Some(end.clone());
                    }
                    bounds.push((side, end));
                }
            }
            if let Some(f) = &j.filter {
                bounds.extend(interval_bounds(f, &both, ls.fields().len(), &times));
            }
        }
        // An inner join of append-only inputs whose condition bounds an
        // input's event time from below by the other input's rows (`b.t >=
        // a.t`, as in `b.t BETWEEN a.t AND ..`: a bid's rows expire at its
        // own time) keeps that event time: a pair goes out when its later
        // row comes, and that row is not late, so the pair's time is at or
        // after the watermark (the least over both inputs). Both inputs
        // expire, so late rows of either are dropped.
        // With a lag (`b.t >= a.t - INTERVAL '1' SECOND`) the watermark
        // passed on trails by it. Per side: the least lag found.
        let own_time: Vec<(usize, i64)> = (0..2)
            .filter_map(|side| {
                let (node, schema) = if side == 0 { (&left, ls) } else { (&right, rs) };
                let t = event_time(node)?;
                let col = column(schema, t);
                bounds
                    .iter()
                    .filter(|(s, _)| *s == side)
                    .filter_map(|(_, b)| bound_lag(b, &col))
                    .min()
                    .map(|lag| (side, lag))
            })
            .collect();
        let bounded_sides: Vec<usize> = bounds.iter().map(|(s, _)| *s).collect();
        let mut expire: [Option<Arc<dyn PhysicalExpr>>; 2] = [None, None];
        for (side, bound) in bounds {
            let schema = if side == 0 { ls } else { rs };
            let e = self.physical(&bound, schema)?;
            if matches!(
                e.data_type(schema.as_arrow())?,
                arrow::datatypes::DataType::Timestamp(..)
            ) && expire[side].is_none()
            {
                expire[side] = Some(e);
            }
        }
        let mut time: [Option<Arc<dyn PhysicalExpr>>; 2] = [None, None];
        for side in 0..2 {
            if let Some(t) = &late_time[side] {
                time[side] = Some(self.physical(t, if side == 0 { ls } else { rs })?);
            }
        }
        let updating = super::operators::join_output_updating(
            kind,
            [left.updating, right.updating],
            [expire[0].is_some(), expire[1].is_some()],
        );
        let schema: SchemaRef = Arc::new(j.schema.as_arrow().clone());
        // A window join's append-only output keeps its inputs' windows: a
        // pair goes out before the watermark passes its window's end, so
        // windowed aggregates can follow.
        let cols = if window_join
            && !updating
            && matches!(kind, JoinKind::Inner | JoinKind::LeftSemi | JoinKind::RightSemi)
        {
            match kind {
                JoinKind::LeftSemi | JoinKind::LeftAnti => left.window_cols.clone(),
                JoinKind::RightSemi | JoinKind::RightAnti => right.window_cols.clone(),
                _ => left
                    .window_cols
                    .iter()
                    .chain(&right.window_cols)
                    .copied()
                    .collect(),
            }
        } else {
            vec![None; schema.fields().len()]
        };
        let own_time = own_time.iter().min_by_key(|(_, lag)| *lag).copied();
        let event_time_out = match own_time {
            Some((side, _))
                if kind == JoinKind::Inner
                    && !updating
                    && !window_join
                    && bounded_sides.contains(&0)
                    && bounded_sides.contains(&1)
                    && expire.iter().all(Option::is_some) =>
            {
                let t = event_time(if side == 0 { &left } else { &right }).expect("checked above");
                Some(if side == 0 { t } else { ls.fields().len() + t })
            }
            _ => None,
        };
        let par = self.parallelism;
        Ok(self.make(
            NodeKind::Keyed(Box::new(JoinSpec {
                kind,
                keys,
                filter,
                time,
                expire,
                ttl: None,
                event_time: event_time_out,
                event_time_lag: own_time.map_or(0, |(_, lag)| lag),
            })),
            vec![left, right],
            schema,
            updating,
            cols,
            par,
        ))
    }

    /// A join's key expressions per input, cast to one type per key so
    /// that equal keys meet in one task.
    fn join_keys(&self, j: &datafusion::logical_expr::Join) -> Result<[Vec<Arc<dyn PhysicalExpr>>; 2]> {
        let (ls, rs) = (j.left.schema(), j.right.schema());
        let mut keys: [Vec<Arc<dyn PhysicalExpr>>; 2] = [vec![], vec![]];
        for (l, r) in &j.on {
            let mut l = self.physical(l, ls)?;
            let mut r = self.physical(r, rs)?;
            let lt = l.data_type(ls.as_arrow())?;
            let rt = r.data_type(rs.as_arrow())?;
            // Both inputs are hashed on their keys: equal keys must be
            // equal values of one type to meet in one task.
            if lt != rt {
                let common = comparison_coercion(&lt, &rt)
                    .ok_or_else(|| refuse(format!("join keys of types {lt} and {rt} can't be compared")))?;
                if lt != common {
                    l = Arc::new(CastExpr::new(l, common.clone(), None));
                }
                if rt != common {
                    r = Arc::new(CastExpr::new(r, common, None));
                }
            }
            keys[0].push(l);
            keys[1].push(r);
        }
        Ok(keys)
    }

    /// An event-time temporal join: the left input's rows meet the right
    /// input's version of their key valid at their time (see
    /// `operators::temporal`).
    fn temporal_join(
        &mut self,
        j: &datafusion::logical_expr::Join,
        kind: JoinKind,
        versions: &VersionsOf,
    ) -> Result<Node> {
        let name = &versions.stream.name;
        if !matches!(kind, JoinKind::Inner | JoinKind::Left) {
            return Err(refuse(format!(
                "a temporal join (FOR SYSTEM_TIME AS OF) is INNER or LEFT, not {kind}"
            )));
        }
        let left = self.node(&j.left)?;
        let in_versions = std::mem::replace(&mut self.in_versions, true);
        let right = self.node(&j.right);
        self.in_versions = in_versions;
        let right = right?;
        if let Some(key) = self.versions_key.take() {
            // A versioned view holds a row per key: the join must look
            // versions up by that key.
            let rs = j.right.schema();
            let mut on: Vec<String> =
                j.on.iter()
                    .filter_map(|(_, r)| column_of(r, rs).map(|c| rs.field(c).name().clone()))
                    .collect();
            let mut want = key.clone();
            on.sort();
            on.dedup();
            want.sort();
            want.dedup();
            if on != want {
                return Err(refuse(format!(
                    "{name} FOR SYSTEM_TIME AS OF: the join must be ON the view's key ({}), the columns its \
                     ROW_NUMBER() is PARTITION BY, and nothing else",
                    key.join(", ")
                )));
            }
        }
        if left.updating {
            return Err(refuse(
                "the left input of a temporal join must be append-only (its rows are looked up once, \
                 when the watermark passes their time)",
            ));
        }
        let (ls, rs) = (j.left.schema(), j.right.schema());
        let column = |schema: &DFSchema, idx: usize| {
            Expr::Column(datafusion::common::Column::from(schema.qualified_field(idx)))
        };
        // The analyzer marked the two times in the ON condition (see
        // `versioned::MarkTemporalJoins`); the mark is not a condition.
        let conjuncts: Vec<&Expr> = j
            .filter
            .as_ref()
            .map(datafusion::logical_expr::utils::split_conjunction)
            .unwrap_or_default();
        let mark = conjuncts.iter().find_map(|c| match c {
            Expr::ScalarFunction(f) if f.name() == AS_OF_MARK && f.args.len() == 2 => Some(&f.args),
            _ => None,
        });
        let rest: Vec<Expr> = conjuncts
            .iter()
            .filter(|c| !matches!(c, Expr::ScalarFunction(f) if f.name() == AS_OF_MARK))
            .map(|c| (*c).clone())
            .collect();
        let (probe_time, version_time, load_first) = match &versions.as_of {
            Some(as_of) => {
                let Some(mark) = mark else {
                    return Err(if ls.index_of_column(as_of).is_err() {
                        refuse(format!(
                            "{name} FOR SYSTEM_TIME AS OF {as_of}: no such column in the join's left input"
                        ))
                    } else {
                        refuse(format!(
                            "{name} FOR SYSTEM_TIME AS OF {as_of}: {name} has no event time; declare one with \
                             WATERMARK FOR in CREATE STREAM (a version is valid from its row's time), or join \
                             its latest versions FOR SYSTEM_TIME AS OF PROCTIME()"
                        ))
                    });
                };
                let index = |e: &Expr, schema: &DFSchema| match e {
                    Expr::Column(c) => schema.index_of_column(c).ok(),
                    _ => None,
                };
                let (Some(at), Some(version_at)) = (index(&mark[0], ls), index(&mark[1], rs)) else {
                    return Err(SluiceError::internal(
                        "a temporal join's times are not its inputs' columns",
                    ));
                };
                if !time_columns(&left).contains(&at) {
                    return Err(refuse(format!(
                        "{name} FOR SYSTEM_TIME AS OF {as_of}: the time must be the left input's event time \
                         (its WATERMARK column) or a window bound of it, or PROCTIME()"
                    )));
                }
                if !time_columns(&right).contains(&version_at) {
                    let stream = &versions.stream;
                    let event_time = stream.watermark.as_ref().map_or("none".to_string(), |w| {
                        stream.schema_ref().field(w.column).name().clone()
                    });
                    return Err(refuse(format!(
                        "ASOF JOIN {name}: the match condition must compare with {name}'s event time \
                         ({event_time}), not {}",
                        rs.field(version_at).name()
                    )));
                }
                if right.updating {
                    // A changelog's retraction must carry its change's time
                    // (see `operators::temporal`).
                    let stream = &versions.stream;
                    // An upsert topic's tombstones carry only their key and
                    // the record's own metadata.
                    let upsert = stream.upsert_key().is_some();
                    let change_time = stream.watermark.as_ref().is_some_and(|w| {
                        crate::stream::metadata_key(stream.schema_ref().field(w.column)).is_some_and(|k| {
                            if upsert {
                                k == "timestamp"
                            } else {
                                crate::stream::CHANGE_TIME_METADATA.contains(&k)
                            }
                        })
                    });
                    if !change_time && upsert {
                        return Err(refuse(format!(
                            "{name} FOR SYSTEM_TIME AS OF {as_of}: {name} is an upsert topic, so its versions' \
                             time must be each record's own (a tombstone has no other): declare `ts TIMESTAMP(3) \
                             METADATA FROM 'timestamp'` and WATERMARK FOR ts"
                        )));
                    }
                    if !change_time {
                        return Err(refuse(format!(
                            "{name} FOR SYSTEM_TIME AS OF {as_of}: {name} is a changelog, so its versions' \
                             time must be each change's time, not a column of its rows (an update's old row \
                             carries its old time): declare `changed TIMESTAMP(3) METADATA FROM \
                             'value.source.timestamp'` and WATERMARK FOR changed"
                        )));
                    }
                }
                (
                    Some(self.physical(&column(ls, at), ls)?),
                    Some(self.physical(&column(rs, version_at), rs)?),
                    false,
                )
            }
            // Processing time: a bounded versioned input (a table read as
            // a stream) is read whole before rows meet it.
            None => (None, None, sources_bounded(&right) || reads_table(&right)),
        };
        if j.on.is_empty() {
            return Err(refuse(format!(
                "a temporal join needs an equality between the left input and {name}'s key \
                 (ON probe.key = {name}.key)"
            )));
        }
        let keys = self.join_keys(j)?;
        let both = ls.join(rs)?;
        let filter = match datafusion::logical_expr::utils::conjunction(rest) {
            Some(f) => Some(self.physical(&f, &both)?),
            None => None,
        };
        let schema: SchemaRef = Arc::new(j.schema.as_arrow().clone());
        // By event time the left input's columns come first, unchanged,
        // and its rows go out before the watermark passes their time: its
        // window bounds stay window bounds. At processing time rows can
        // wait for the versions while the watermark moves on.
        let mut cols = if probe_time.is_some() {
            left.window_cols.clone()
        } else {
            vec![]
        };
        cols.resize(schema.fields().len(), None);
        let par = self.parallelism;
        Ok(self.make(
            NodeKind::Keyed(Box::new(TemporalJoinSpec {
                kind,
                keys,
                filter,
                probe_time,
                version_time,
                load_first,
                // A table read again every `lookup_refresh` is read anew
                // after a restore; one read once keeps what it read.
                reread: load_first && reads_table(&right) && self.lookup_refresh.is_some(),
            })),
            vec![left, right],
            schema,
            false,
            cols,
            par,
        ))
    }
}

/// A fixed interval (no months) in microseconds.
fn interval_micros(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i64::from(i.days) * 86_400_000_000 + i.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some(i64::from(i.days) * 86_400_000_000 + i64::from(i.milliseconds) * 1000)
        }
        ScalarValue::DurationMicrosecond(Some(d)) => Some(*d),
        ScalarValue::DurationMillisecond(Some(d)) => Some(d * 1000),
        ScalarValue::DurationSecond(Some(d)) => Some(d * 1_000_000),
        ScalarValue::DurationNanosecond(Some(d)) => Some(d / 1000),
        _ => None,
    }
    .filter(|d| *d >= 0)
}

/// The column of a node's output that its watermark bounds (the source's
/// event time, through stateless operators that keep it as is).
fn event_time(node: &Node) -> Option<usize> {
    use datafusion::physical_expr::expressions::Column;
    match &node.kind {
        NodeKind::Source { table, .. } => table.watermark.as_ref().map(|w| w.column),
        NodeKind::Filter { .. } | NodeKind::Window { .. } => event_time(&node.inputs[0]),
        NodeKind::Keyed(spec) if spec.event_time_column().is_some() => spec.event_time_column(),
        NodeKind::Keyed(spec) if spec.keeps_input_columns() => event_time(&node.inputs[0]),
        NodeKind::Project { exprs } => {
            let t = event_time(&node.inputs[0])?;
            exprs
                .iter()
                .position(|e| e.downcast_ref::<Column>().is_some_and(|c| c.index() == t))
        }
        NodeKind::Union => {
            let first = event_time(node.inputs.first()?)?;
            node.inputs
                .iter()
                .all(|i| event_time(i) == Some(first))
                .then_some(first)
        }
        _ => None,
    }
}

/// Columns of a node's output that its watermark bounds from below for
/// every row not late: the event time first, then window ends.
fn time_columns(node: &Node) -> Vec<usize> {
    let ends = node
        .window_cols
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_some_and(|c| c.is_end && !c.session))
        .map(|(i, _)| i);
    event_time(node).into_iter().chain(ends).collect()
}

/// An interval join's bounds, from the ON condition's conjuncts of the
/// form `o.t <= f(s)` (`<`, mirrored `>=` / `>`, BETWEEN's bounds, and
/// `o.t + c` / `o.t - c` with a constant `c` moved across), where `o.t` is
/// one input's event time and `f` reads only the other input `s`: rows of
/// `s` can match nothing to come once `o`'s watermark passes `f(s)`.
/// Returns `(s, f)` pairs; `times` are each input's time columns (see
/// [`time_columns`]), `schema` is left then right (`n_left` columns of the
/// left).
fn interval_bounds(
    filter: &Expr,
    schema: &DFSchema,
    n_left: usize,
    times: &[Vec<usize>; 2],
) -> Vec<(usize, Expr)> {
    use datafusion::logical_expr::{BinaryExpr, Operator, utils::split_conjunction};
    let mut pairs: Vec<(&Expr, &Expr)> = Vec::new();
    for c in split_conjunction(filter) {
        match c {
            Expr::BinaryExpr(b) => match b.op {
                Operator::Lt | Operator::LtEq => pairs.push((&b.left, &b.right)),
                Operator::Gt | Operator::GtEq => pairs.push((&b.right, &b.left)),
                _ => {}
            },
            Expr::Between(b) if !b.negated => {
                pairs.push((&b.low, &b.expr));
                pairs.push((&b.expr, &b.high));
            }
            _ => {}
        }
    }
    let side_of = |e: &Expr| -> Option<usize> {
        let idx: Vec<usize> = e
            .column_refs()
            .into_iter()
            .map(|c| schema.index_of_column(c).ok())
            .collect::<Option<_>>()?;
        if idx.iter().all(|i| *i < n_left) {
            Some(0)
        } else if idx.iter().all(|i| *i >= n_left) {
            Some(1)
        } else {
            None
        }
    };
    let mut out = Vec::new();
    for (lo, hi) in pairs {
        // lo is o.t, maybe plus or minus a constant.
        let (col, offset) = match lo {
            Expr::Column(c) => (c, None),
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if matches!(op, Operator::Plus | Operator::Minus)
                    && matches!(right.as_ref(), Expr::Literal(..)) =>
            {
                let Expr::Column(c) = left.as_ref() else { continue };
                (c, Some((*op, right.as_ref().clone())))
            }
            _ => continue,
        };
        let Ok(at) = schema.index_of_column(col) else {
            continue;
        };
        let (other, local) = if at < n_left { (0, at) } else { (1, at - n_left) };
        if !times[other].contains(&local) {
            continue;
        }
        let side = 1 - other;
        if side_of(hi).is_some_and(|s| s != side) {
            continue;
        }
        let bound = match offset {
            None => hi.clone(),
            Some((Operator::Plus, c)) => Expr::BinaryExpr(BinaryExpr::new(
                Box::new(hi.clone()),
                Operator::Minus,
                Box::new(c),
            )),
            Some((_, c)) => {
                Expr::BinaryExpr(BinaryExpr::new(Box::new(hi.clone()), Operator::Plus, Box::new(c)))
            }
        };
        out.push((side, bound));
    }
    out
}

/// How far (µs) an input's event time `col` may trail the other input's
/// time given its interval bound `bound` (`col`: 0; `col + c`: c; `col -
/// c`: it can't trail, 0). None: the bound is not of that form.
fn bound_lag(bound: &Expr, col: &Expr) -> Option<i64> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    if bound == col {
        return Some(0);
    }
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = bound else {
        return None;
    };
    if left.as_ref() != col {
        return None;
    }
    let Expr::Literal(c, _) = right.as_ref() else {
        return None;
    };
    let micros = match c {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1000
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            i64::from(v.days) * 86_400_000_000 + i64::from(v.milliseconds) * 1000
        }
        _ => return None,
    };
    match op {
        Operator::Plus => Some(micros.max(0)),
        Operator::Minus => Some(0),
        _ => None,
    }
}

/// Whether every source under a node ends (bounded input).
fn sources_bounded(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Source { table, .. } => table.is_bounded(),
        _ => node.inputs.iter().all(sources_bounded),
    }
}

/// Whether a node reads a table for a lookup join (which says when its
/// first read is whole, even when it reads again later).
fn reads_table(node: &Node) -> bool {
    match &node.kind {
        NodeKind::Source { table, .. } => table.connector.name() == super::lookup::TABLE_CONNECTOR,
        _ => node.inputs.iter().all(reads_table),
    }
}

/// Marks each source that reads a stream an earlier source (in pre-order)
/// reads by the same settings as sharing that one's lanes, and gives it
/// that source's metrics (its rows are counted once). Flink calls this
/// source reuse: a self-join or a query reading a stream in two branches
/// (Nexmark q7) decodes each record once.
fn share_sources(node: &mut Node, seen: &mut Vec<(usize, Arc<StreamTable>, Arc<NodeMetrics>)>) {
    if let NodeKind::Source { table, shares } = &mut node.kind {
        match seen.iter().find(|(_, t, _)| same_reading(t, table)) {
            Some((id, _, metrics)) => {
                *shares = Some(*id);
                node.metrics = metrics.clone();
            }
            None => seen.push((node.id, table.clone(), node.metrics.clone())),
        }
    }
    for i in &mut node.inputs {
        share_sources(i, seen);
    }
}

/// Whether two sources read the same rows the same way.
fn same_reading(a: &StreamTable, b: &StreamTable) -> bool {
    a.name == b.name
        && a.connector.name() == b.connector.name()
        && a.options == b.options
        && a.partitions == b.partitions
        && a.watermark.as_ref().map(|w| (w.column, w.delay_us))
            == b.watermark.as_ref().map(|w| (w.column, w.delay_us))
        && a.schema_ref() == b.schema_ref()
}

fn renumber(mut node: Node, next: &mut usize) -> Node {
    node.id = *next;
    *next += 1;
    node.inputs = std::mem::take(&mut node.inputs)
        .into_iter()
        .map(|i| renumber(i, next))
        .collect();
    node
}

/// The input column an expression is, when it is a bare (maybe aliased)
/// column reference.
fn column_of(e: &Expr, schema: &DFSchema) -> Option<usize> {
    match e {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        Expr::Alias(a) => column_of(&a.expr, schema),
        _ => None,
    }
}

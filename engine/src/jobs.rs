//! Sinks and materialized views: creating, running, dropping and showing
//! continuous queries.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::Expr;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Statement as SqlStatement};

use crate::catalog::{CatalogEntry, ObjectKind};
use crate::checkpoint::{CheckpointConfig, CheckpointHistory, CheckpointStore, JobSettings, Restore};
use crate::engine::{Engine, Output, Session};
use crate::error::{ErrorKind, Result, SluiceError};
use crate::parser::{CreateJob, Statement, SubscribeTarget};
use crate::sink::SinkWriter;
use crate::sink::{SinkContext, TableLog, check_sink_options};
use crate::stream::StreamTable;
use crate::streaming::mview::MaterializedView;
use crate::streaming::mview::{SUBSCRIBER_BACKLOG, subscribe_schema, to_changes};
use crate::streaming::plan::{Node, Planner};
use crate::streaming::runtime::Job;
use crate::streaming::window::{StreamLookup, interval_arg, rewrite_window_calls};
use arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

/// The declared streams by name.
#[derive(Debug, Default)]
pub(crate) struct Streams(RwLock<HashMap<String, Arc<StreamTable>>>);

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

/// A sink or view and its running job.
pub(crate) struct RunningJob {
    pub(crate) sink: bool,
    pub(crate) job: Job,
    pub(crate) view: Option<Arc<MaterializedView>>,
    /// Recent checkpoints (None: the job does not checkpoint).
    pub(crate) checkpoints: Option<Arc<CheckpointHistory>>,
    /// Tells this run of the job from the one a restart replaces it with.
    pub(crate) incarnation: u64,
    /// Restarts after failures in a row that led to this run (None: it
    /// was created, restored at server start or altered).
    pub(crate) restarts: Option<Restarts>,
    /// Set while a restart of this failed run is scheduled.
    pub(crate) pending_restart: Arc<std::sync::Mutex<Option<String>>>,
}

/// Restarts of a job after failures in a row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Restarts {
    pub(crate) count: u32,
    /// The failure the last restart recovered from.
    pub(crate) last_error: String,
}

static INCARNATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The pause before restart number `attempt` (from 1): 1 s, 2 s, 4 s, ...,
/// at most 30 s.
fn restart_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs((1u64 << attempt.saturating_sub(1).min(5)).min(30))
}

/// Watches one run of a job that checkpoints. When it fails, it is started
/// again from its newest checkpoint after [`restart_delay`], as Flink's
/// restart strategies do, at most `max` times in a row; a run that
/// completed a checkpoint before failing starts the count again, and a
/// failure for want of file descriptors is not counted. A run that is
/// dropped, altered or finished ends the watch.
/// (Boxed: a restart creates the next run's watch, and the future types
/// would otherwise contain themselves.)
fn supervise(
    engine: std::sync::Weak<crate::engine::Inner>,
    name: String,
    sink: bool,
    incarnation: u64,
    mut done: tokio::sync::watch::Receiver<bool>,
    restarts: u32,
    max: u32,
) -> futures::future::BoxFuture<'static, ()> {
    let mut restarts = restarts;
    // Set once a restart of this run could not be started.
    let mut retrying = false;
    Box::pin(async move {
        loop {
            if done.wait_for(|d| *d).await.is_err() {
                return; // the run was dropped
            }
            let (error, progressed, pending) = {
                let Some(inner) = engine.upgrade() else { return };
                let jobs = inner.jobs.lock().expect("jobs lock");
                let Some(j) = jobs.get(&name).filter(|j| j.incarnation == incarnation) else {
                    return;
                };
                let crate::streaming::runtime::JobStatus::Failed(error) = j.job.status() else {
                    return;
                };
                let progressed = j
                    .checkpoints
                    .as_ref()
                    .is_some_and(|h| h.entries().iter().any(|c| c.status == "completed"));
                (error, progressed, j.pending_restart.clone())
            };
            let attempt = if progressed && !retrying { 1 } else { restarts + 1 };
            // Running out of file descriptors passes with whatever holds
            // them (a burst of connections): such a failure is restarted
            // after the longest pause however many came before it.
            let out_of_descriptors = error.contains("(os error 24)") || error.contains("(os error 23)");
            if attempt > max && !out_of_descriptors {
                tracing::warn!(job = %name, restarts, "job failed; no restart attempts left");
                return;
            }
            let delay = restart_delay(attempt);
            *pending.lock().expect("restart lock") = Some(if attempt > max {
                format!(
                    "restart {attempt} (out of file descriptors, not counted against {max}) in {} s \
                     from the newest checkpoint",
                    delay.as_secs()
                )
            } else {
                format!(
                    "restart {attempt} of {max} in {} s from the newest checkpoint",
                    delay.as_secs()
                )
            });
            tracing::warn!(job = %name, attempt, max, error = %error, "job failed; restarting from its newest checkpoint");
            tokio::time::sleep(delay).await;
            let Some(inner) = engine.upgrade() else { return };
            let engine_handle = Engine { inner };
            match engine_handle
                .restart_job(&name, sink, incarnation, attempt, &error)
                .await
            {
                // Restarted (the new run has its own watch), or the run is
                // no longer there (dropped, altered).
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(job = %name, attempt, error = %e, "could not restart the job");
                    *pending.lock().expect("restart lock") = None;
                    restarts = attempt;
                    retrying = true;
                    // The failed run is back in place: try again.
                }
            }
        }
    })
}

impl Engine {
    /// Replaces the failed run `incarnation` of job `name` by a new one
    /// restored from its newest checkpoint. `Ok(false)`: that run is no
    /// longer there (dropped, altered). On an error the failed run is put
    /// back.
    async fn restart_job(
        &self,
        name: &str,
        sink: bool,
        incarnation: u64,
        attempt: u32,
        error: &str,
    ) -> Result<bool> {
        let sql = {
            let catalog = self.inner.catalog.lock().await;
            match catalog.get(name) {
                Some(e) => e.sql.clone(),
                None => return Ok(false),
            }
        };
        let create = match crate::parser::parse(&sql)?.pop() {
            Some(Statement::CreateSink(c)) | Some(Statement::CreateMaterializedView(c)) => c,
            _ => {
                return Err(SluiceError::internal(format!(
                    "catalog entry {name} is not a job"
                )));
            }
        };
        let old = {
            let mut jobs = self.inner.jobs.lock().expect("jobs lock");
            if jobs.get(name).is_none_or(|j| j.incarnation != incarnation) {
                return Ok(false);
            }
            jobs.remove(name).expect("checked above")
        };
        let session = self.new_session();
        let table = session.ctx.deregister_table(name).ok().flatten();
        let log = self.inner.versioned.remove(name);
        self.inner.restarts.lock().expect("restarts lock").insert(
            name.to_string(),
            Restarts {
                count: attempt,
                last_error: error.to_string(),
            },
        );
        match session.create_job(create, sink, false).await {
            Ok(()) => Ok(true),
            Err(e) => {
                self.inner.restarts.lock().expect("restarts lock").remove(name);
                let mut jobs = self.inner.jobs.lock().expect("jobs lock");
                if jobs.contains_key(name) {
                    return Ok(false); // someone else started it meanwhile
                }
                if let Some(table) = table {
                    let _ = session.ctx.register_table(name, table);
                }
                if let Some(log) = log {
                    self.inner.versioned.insert(name, log);
                }
                jobs.insert(name.to_string(), old);
                Err(e)
            }
        }
    }
}

/// `WATERMARK FOR col AS col [- INTERVAL '...']`: how far the watermark
/// trails the largest event time, in microseconds.
pub(crate) fn watermark_delay(col: &str, expr: &SqlExpr) -> Result<i64> {
    let is_col = |e: &SqlExpr| matches!(e, SqlExpr::Identifier(id) if id.value.eq_ignore_ascii_case(col));
    let unsupported = || {
        SluiceError::not_supported(format!(
            "WATERMARK FOR {col} AS {expr}: the watermark must be {col} or {col} - INTERVAL '...'"
        ))
    };
    if is_col(expr) {
        return Ok(0);
    }
    let SqlExpr::BinaryOp { left, op, right } = expr else {
        return Err(unsupported());
    };
    if !is_col(left) || *op != datafusion::sql::sqlparser::ast::BinaryOperator::Minus {
        return Err(unsupported());
    }
    let SqlExpr::Interval(_) = right.as_ref() else {
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

pub(crate) fn show_objects_schema(sink: bool) -> SchemaRef {
    let mut fields = vec![Field::new("name", DataType::Utf8, false)];
    if sink {
        fields.push(Field::new("connector", DataType::Utf8, false));
        fields.push(Field::new("options", DataType::Utf8, false));
    } else {
        fields.push(Field::new("rows", DataType::Int64, false));
    }
    fields.push(Field::new("status", DataType::Utf8, false));
    fields.push(Field::new("query", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

pub(crate) fn show_jobs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("operator_id", DataType::Int64, false),
        Field::new("operator", DataType::Utf8, false),
        Field::new("parallelism", DataType::Int64, false),
        Field::new("rows_in", DataType::Int64, false),
        Field::new("rows_out", DataType::Int64, false),
        Field::new(
            "watermark",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("state_rows", DataType::Int64, false),
        Field::new("state_bytes", DataType::Int64, false),
        Field::new("late_rows", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("bad_rows", DataType::Int64, false),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

pub(crate) fn show_checkpoints_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("started", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("duration_ms", DataType::Int64, true),
        Field::new("bytes", DataType::Int64, false),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

pub(crate) fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("QUERY PLAN", DataType::Utf8, false)]))
}

impl Engine {
    /// Names of the jobs that read stream `stream`.
    pub(crate) fn jobs_reading(&self, stream: &str) -> Vec<String> {
        let jobs = self.inner.jobs.lock().expect("jobs lock");
        jobs.iter()
            .filter(|(_, j)| j.job.plan.streams().iter().any(|s| s == stream))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Waits until job `name` has finished or failed (for tests and tools);
    /// returns `finished` or `failed: <error>`, or `None` when there is no
    /// such job.
    pub async fn wait_for_job(&self, name: &str) -> Option<String> {
        let waiter = {
            let jobs = self.inner.jobs.lock().expect("jobs lock");
            let job = jobs.get(name)?;
            let mut done = job.job.done_receiver();
            async move {
                let _ = done.wait_for(|d| *d).await;
            }
        };
        waiter.await;
        let jobs = self.inner.jobs.lock().expect("jobs lock");
        jobs.get(name).map(|j| match j.job.status() {
            crate::streaming::runtime::JobStatus::Failed(e) => format!("failed: {e}"),
            other => other.name().to_string(),
        })
    }
}

fn one_batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Output> {
    let batch = arrow::array::RecordBatch::try_new(schema.clone(), columns)?;
    let stream = futures::stream::once(async move { Ok(batch) });
    Ok(Output::Rows(Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream),
    )))
}

impl Session {
    /// Plans a continuous query into a streaming dataflow.
    pub(crate) async fn plan_job(&self, query: &datafusion::sql::sqlparser::ast::Query) -> Result<Node> {
        let mut query = query.clone();
        rewrite_window_calls(&mut query);
        let state = self.ctx.state();
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(SqlStatement::Query(Box::new(
                query,
            )))))
            .await?;
        let plan = state.optimize(&plan)?;
        Planner::new(state.execution_props(), self.engine.inner.parallelism).plan(&plan)
    }

    /// The settings a job runs with: a new one (`persist`) takes this
    /// session's; a restarted, restored or altered one those it was created
    /// with (a job from before they were kept: this session's).
    fn job_settings(&self, name: &str, persist: bool) -> Result<JobSettings> {
        if !persist && let Some(kept) = CheckpointStore::new(&self.engine.inner.checkpoints, name).settings()
        {
            return Ok(kept);
        }
        let interval = match self.vars.get(crate::engine::CHECKPOINT_INTERVAL_VAR) {
            Some(v) => crate::checkpoint::parse_interval(v)?,
            None => self.engine.inner.checkpoint_interval,
        };
        let restart_attempts = match self.vars.get(crate::engine::RESTART_ATTEMPTS_VAR) {
            Some(v) => crate::checkpoint::parse_restart_attempts(v)?,
            None => crate::engine::DEFAULT_RESTART_ATTEMPTS,
        };
        let checkpoint_timeout_ms = match self.vars.get(crate::engine::CHECKPOINT_TIMEOUT_VAR) {
            Some(v) => Some(crate::checkpoint::parse_timeout(v)?.as_millis() as u64),
            None => None,
        };
        let state_ttl_ms = match self.vars.get(crate::engine::STATE_TTL_VAR) {
            Some(v) => crate::checkpoint::parse_state_ttl(v)?.map(|d| d.as_millis() as u64),
            None => None,
        };
        Ok(JobSettings {
            checkpoint_interval_ms: interval.map(|d| d.as_millis() as u64),
            restart_attempts,
            checkpoint_timeout_ms,
            state_ttl_ms,
        })
    }

    /// How a new (`persist`) or restored job checkpoints: at its
    /// `streaming.checkpoint_interval`; a restored job from its newest
    /// complete checkpoint. Keeps the settings with the job.
    fn checkpoint_config(
        &self,
        name: &str,
        persist: bool,
        settings: &JobSettings,
    ) -> Result<Option<CheckpointConfig>> {
        let store = CheckpointStore::new(&self.engine.inner.checkpoints, name);
        let interval = settings.checkpoint_interval();
        if persist {
            // A new job: nothing of an earlier one by this name applies.
            store.remove_all();
        }
        store.save_settings(settings)?;
        let restore = if persist {
            None
        } else {
            store.latest()?.map(|manifest| Restore {
                store: store.clone(),
                manifest,
            })
        };
        let Some(interval) = interval else {
            return Ok(None);
        };
        Ok(Some(CheckpointConfig {
            store,
            interval,
            timeout: settings.checkpoint_timeout(),
            restore,
            history: Arc::new(CheckpointHistory::default()),
            committer: None,
        }))
    }

    /// A relative sink path lands in the data directory (the default
    /// landing zone); URLs are kept; local paths must be ones SQL may use
    /// (see [`crate::paths`]) and come back absolute.
    pub(crate) fn landing_path(&self, path: &str) -> Result<String> {
        if path.contains("://") && !path.starts_with("file://") {
            return Ok(path.to_string());
        }
        self.engine.inner.stores.local_path(path)
    }

    /// `CREATE SINK` (`sink`) or `CREATE MATERIALIZED VIEW`: plans the query,
    /// starts the job, and records it durably when `persist`.
    pub(crate) async fn create_job(&self, create: CreateJob, sink: bool, persist: bool) -> Result<()> {
        let name = crate::parser::normalize_name(&create.name);
        let statement = if sink {
            Statement::CreateSink(create.clone())
        } else {
            Statement::CreateMaterializedView(create.clone())
        };
        let mut catalog = self.engine.inner.catalog.lock().await;
        // On restore (`!persist`) the entry is in the catalog already,
        // unless the job was dropped while a restart was on its way.
        if !persist && catalog.get(&name).is_none() {
            return Err(SluiceError::new(
                ErrorKind::UndefinedTable,
                format!("\"{name}\" was dropped"),
            ));
        }
        if (persist && catalog.get(&name).is_some()) || self.ctx.table_exist(name.as_str())? {
            if create.if_not_exists {
                return Ok(());
            }
            return Err(SluiceError::new(
                ErrorKind::DuplicateObject,
                format!("relation \"{name}\" already exists"),
            ));
        }
        let node = self.plan_job(&create.query).await?;
        let schema = node.schema.clone();
        let updating = node.updating;
        // Read before this job's own checkpoints are reset: a sink may start
        // where another (even a dropped one of the same name) stopped.
        let start_from = match create.options.get("start_from") {
            Some(from) => self.start_positions(from)?,
            None => Default::default(),
        };
        let settings = self.job_settings(&name, persist)?;
        let mut node = node;
        node.set_state_ttl(settings.state_ttl());
        let mut checkpoints = self.checkpoint_config(&name, persist, &settings)?;
        if persist {
            CheckpointStore::dropped(&self.engine.inner.checkpoints, &name).remove_all();
        }
        let mut table_log: Option<Arc<dyn TableLog>> = None;
        let history = checkpoints.as_ref().map(|c| c.history.clone());
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let (job, view) = if sink {
            let stores = &self.engine.inner.stores;
            let mut options = crate::secrets::resolve(&create.options, |n| catalog.secret(n).cloned())?;
            let store_options: BTreeMap<String, String> = options
                .iter()
                .filter(|(k, _)| stores.is_store_option(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            options.retain(|k, _| !stores.is_store_option(k) && k != "start_from");
            let connector_name = options.remove("connector").ok_or_else(|| {
                SluiceError::invalid_parameter(format!(
                    "CREATE SINK {name}: the connector option is required"
                ))
            })?;
            if let Some(path) = options.get_mut("path") {
                *path = self.landing_path(path)?;
            }
            let connector = self.engine.inner.sinks.get(&connector_name)?;
            check_sink_options(connector.as_ref(), &options)?;
            let landed = connector.validate(&options, &schema, updating)?;
            let mut ctx = SinkContext {
                name: name.clone(),
                run_id,
                job_id: CheckpointStore::new(&self.engine.inner.checkpoints, &name).job_id()?,
                checkpointing: checkpoints.is_some(),
                table_log: None,
                committer: None,
                stores: stores.clone(),
                store_options: store_options.clone(),
            };
            if let Some(landed) = &landed {
                self.register_store(&landed.location, &store_options)?;
                // Creates the directory for local sinks, so the table lists.
                crate::storage::resolve_location(stores, &landed.location, &store_options)?;
                table_log =
                    connector.table_log(&options, &schema, updating, &ctx, &create.query.to_string())?;
                let table: Arc<dyn datafusion::catalog::TableProvider> = match &table_log {
                    Some(log) => {
                        log.prepare().await?;
                        log.table(None)?
                    }
                    None => crate::sink::landed_table(
                        landed,
                        &connector.landed_schema(&options, &schema, updating),
                    )?,
                };
                self.ctx.register_table(name.as_str(), table)?;
            }
            ctx.table_log = table_log.clone();
            ctx.committer = match &table_log {
                Some(log) => Some(log.clone() as Arc<dyn crate::sink::Committer>),
                None if ctx.checkpointing => connector.committer(&options, &ctx)?,
                None => None,
            };
            if let Some(c) = checkpoints.as_mut() {
                c.committer = ctx.committer.clone();
                if let Some(committer) = &ctx.committer
                    && !committer.recommits()
                {
                    // Only a checkpoint whose output was committed can be
                    // restored: a later one's output is produced again.
                    if let Some(r) = c.restore.take() {
                        c.restore = r.store.latest_committed()?.map(|manifest| Restore {
                            store: r.store.clone(),
                            manifest,
                        });
                    }
                }
            }
            let started = Job::start(
                &name,
                node,
                |lane, lanes| connector.open(&options, &schema, updating, &ctx, lane, lanes),
                checkpoints,
                start_from,
            );
            match started {
                Ok(job) => (job, None),
                Err(e) => {
                    let _ = self.ctx.deregister_table(name.as_str());
                    return Err(e);
                }
            }
        } else {
            if !create.options.is_empty() {
                return Err(SluiceError::invalid_parameter(
                    "CREATE MATERIALIZED VIEW takes no WITH options",
                ));
            }
            let view = Arc::new(MaterializedView::try_new(schema.clone(), updating)?);
            self.ctx.register_table(name.as_str(), view.clone())?;
            let job = Job::start(
                &name,
                node,
                |lane, _| Ok(view.writer(lane)),
                checkpoints,
                start_from,
            )?;
            (job, Some(view))
        };
        if persist
            && let Err(e) = catalog.put(CatalogEntry {
                name: name.clone(),
                kind: if sink {
                    ObjectKind::Sink
                } else {
                    ObjectKind::MaterializedView
                },
                sql: statement.to_string(),
            })
        {
            let _ = self.ctx.deregister_table(name.as_str());
            return Err(e);
        }
        if let Some(log) = &table_log {
            self.engine.inner.versioned.insert(&name, log.clone());
        }
        let incarnation = INCARNATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let restarts = self
            .engine
            .inner
            .restarts
            .lock()
            .expect("restarts lock")
            .remove(&name);
        // Only jobs that checkpoint are restarted: another would start over
        // from the beginning of its input (as Flink, which does not restart
        // jobs without checkpoints).
        let watch = (history.is_some() && settings.restart_attempts > 0).then(|| {
            supervise(
                Arc::downgrade(&self.engine.inner),
                name.clone(),
                sink,
                incarnation,
                job.done_receiver(),
                restarts.as_ref().map_or(0, |r| r.count),
                settings.restart_attempts,
            )
        });
        self.engine.inner.jobs.lock().expect("jobs lock").insert(
            name,
            RunningJob {
                sink,
                job,
                view,
                checkpoints: history,
                incarnation,
                restarts,
                pending_restart: Default::default(),
            },
        );
        if let Some(watch) = watch {
            tokio::spawn(watch);
        }
        Ok(())
    }

    /// `ALTER SINK name SET (...)`: options that change neither what the
    /// sink lands nor where (file sizes, rollover, client properties) take
    /// effect by restarting the job from its newest checkpoint with the new
    /// options; the catalog keeps them. Output since that checkpoint is
    /// produced again (a delta sink never showed it; other sinks land it
    /// again, as after a crash).
    pub(crate) async fn alter_sink(&self, name: &str, set: &BTreeMap<String, String>) -> Result<()> {
        const FIXED: &[&str] = &[
            "connector",
            "path",
            "format",
            "partition_by",
            "changelog",
            "topic",
            "key",
            "sink.mode",
        ];
        if let Some(key) = set.keys().find(|k| FIXED.contains(&k.as_str())) {
            return Err(SluiceError::not_supported(format!(
                "ALTER SINK can't change '{key}': it decides what the sink lands or where;                  create a new sink instead (options that can change: file sizes, rollover,                  multipart threshold, properties.*)"
            )));
        }
        let old = {
            let catalog = self.engine.inner.catalog.lock().await;
            match catalog.get(name) {
                Some(e) if e.kind == ObjectKind::Sink => e.sql.clone(),
                Some(e) => {
                    return Err(SluiceError::new(
                        ErrorKind::Semantic,
                        format!("{name} is a {}, not a sink", e.kind.noun()),
                    ));
                }
                None => {
                    return Err(SluiceError::new(
                        ErrorKind::UndefinedTable,
                        format!("sink \"{name}\" does not exist"),
                    ));
                }
            }
        };
        let Some(Statement::CreateSink(old)) = crate::parser::parse(&old)?.pop() else {
            return Err(SluiceError::internal(format!(
                "catalog entry {name} is not a CREATE SINK"
            )));
        };
        let mut new = old.clone();
        new.options
            .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Checked against the connector before anything stops.
        {
            let connector_name = new.options.get("connector").cloned().unwrap_or_default();
            let connector = self.engine.inner.sinks.get(&connector_name)?;
            let mut options = new.options.clone();
            options.retain(|k, _| k != "connector" && !self.engine.inner.stores.is_store_option(k));
            check_sink_options(connector.as_ref(), &options)?;
        }
        self.stop_job(name);
        match self.create_job(new.clone(), true, false).await {
            Ok(()) => {
                let mut catalog = self.engine.inner.catalog.lock().await;
                catalog.put(CatalogEntry {
                    name: name.to_string(),
                    kind: ObjectKind::Sink,
                    sql: Statement::CreateSink(new).to_string(),
                })
            }
            Err(e) => {
                // Back to the options it ran with.
                self.stop_job(name);
                if let Err(again) = self.create_job(old, true, false).await {
                    tracing::error!(sink = %name, error = %again, "could not restart the sink after a failed ALTER");
                }
                Err(e)
            }
        }
    }

    /// `start_from = 'sink:<name>'`: the source positions of that sink's
    /// newest checkpoint (a running sink's, else a dropped one's).
    fn start_positions(&self, from: &str) -> Result<crate::streaming::runtime::StartPositions> {
        let Some(other) = from.strip_prefix("sink:").map(|s| s.trim().to_ascii_lowercase()) else {
            return Err(SluiceError::invalid_parameter(format!(
                "start_from = '{from}': write start_from = 'sink:<name>' (start at that sink's newest checkpoint)"
            )));
        };
        let data = &self.engine.inner.checkpoints;
        let live = CheckpointStore::new(data, &other).latest()?;
        let manifest = match live {
            Some(m) => Some(m),
            None => CheckpointStore::dropped(data, &other).latest()?,
        }
        .ok_or_else(|| {
            SluiceError::invalid_parameter(format!(
                "start_from: sink {other} has no completed checkpoint to start from"
            ))
        })?;
        Ok(crate::streaming::runtime::start_positions(&manifest))
    }

    /// Stops a running job and unregisters its table, keeping its catalog
    /// entry and checkpoints.
    fn stop_job(&self, name: &str) {
        let _ = self.ctx.deregister_table(name);
        let job = self.engine.inner.jobs.lock().expect("jobs lock").remove(name);
        drop(job);
        self.engine.inner.versioned.remove(name);
    }

    pub(crate) async fn drop_job(&self, name: &str, sink: bool, if_exists: bool) -> Result<()> {
        let mut catalog = self.engine.inner.catalog.lock().await;
        let want = if sink {
            ObjectKind::Sink
        } else {
            ObjectKind::MaterializedView
        };
        match catalog.get(name).map(|e| e.kind) {
            Some(kind) if kind == want => {}
            Some(kind) => {
                return Err(SluiceError::new(
                    ErrorKind::Semantic,
                    format!(
                        "{name} is a {}, not a {}; use DROP {} {name}",
                        kind.noun(),
                        want.noun(),
                        kind.noun().to_ascii_uppercase()
                    ),
                ));
            }
            None if if_exists => return Ok(()),
            None => {
                return Err(SluiceError::new(
                    ErrorKind::UndefinedTable,
                    format!("{} \"{name}\" does not exist", want.noun()),
                ));
            }
        }
        catalog.remove(name)?;
        let _ = self.ctx.deregister_table(name);
        // Dropping the job aborts its tasks and frees their state.
        let job = self.engine.inner.jobs.lock().expect("jobs lock").remove(name);
        drop(job);
        self.engine.inner.versioned.remove(name);
        // Kept aside for a sink created with start_from = 'sink:<name>'.
        CheckpointStore::new(&self.engine.inner.checkpoints, name).park(&self.engine.inner.checkpoints, name);
        Ok(())
    }

    pub(crate) async fn show_job_objects(&self, sink: bool) -> Result<Output> {
        let catalog = self.engine.inner.catalog.lock().await;
        let want = if sink {
            ObjectKind::Sink
        } else {
            ObjectKind::MaterializedView
        };
        let jobs = self.engine.inner.jobs.lock().expect("jobs lock");
        let mut names = vec![];
        let mut connectors = vec![];
        let mut options = vec![];
        let mut rows = vec![];
        let mut statuses = vec![];
        let mut queries = vec![];
        for entry in catalog.entries().filter(|e| e.kind == want) {
            let Some(Statement::CreateSink(c) | Statement::CreateMaterializedView(c)) =
                crate::parser::parse(&entry.sql)?.pop()
            else {
                continue;
            };
            names.push(entry.name.clone());
            let job = jobs.get(&entry.name);
            statuses.push(match job {
                Some(j) => j.job.status().name().to_string(),
                None => "not running".to_string(),
            });
            queries.push(c.query.to_string());
            connectors.push(c.options.get("connector").cloned().unwrap_or_default());
            options.push(crate::secrets::options_text(&c.options));
            rows.push(
                job.and_then(|j| j.view.as_ref())
                    .map(|v| v.len() as i64)
                    .unwrap_or(0),
            );
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(names))];
        if sink {
            cols.push(Arc::new(StringArray::from(connectors)));
            cols.push(Arc::new(StringArray::from(options)));
        } else {
            cols.push(Arc::new(Int64Array::from(rows)));
        }
        cols.push(Arc::new(StringArray::from(statuses)));
        cols.push(Arc::new(StringArray::from(queries)));
        one_batch(show_objects_schema(sink), cols)
    }

    pub(crate) fn show_jobs(&self) -> Result<Output> {
        let jobs = self.engine.inner.jobs.lock().expect("jobs lock");
        let mut job = vec![];
        let mut kind = vec![];
        let mut status = vec![];
        let mut op_id = vec![];
        let mut op = vec![];
        let mut par = vec![];
        let mut rows_in = vec![];
        let mut rows_out = vec![];
        let mut wm: Vec<Option<i64>> = vec![];
        let mut state_rows = vec![];
        let mut state_bytes = vec![];
        let mut late = vec![];
        let mut bad = vec![];
        let mut error: Vec<Option<String>> = vec![];
        let mut detail: Vec<Option<String>> = vec![];
        for (name, j) in jobs.iter() {
            let st = j.job.status();
            let pending = j.pending_restart.lock().expect("restart lock").clone();
            let status_name = match (&st, &pending) {
                (crate::streaming::runtime::JobStatus::Failed(_), Some(_)) => "restarting",
                _ => st.name(),
            };
            let mut nodes = vec![];
            j.job.plan.walk(&mut nodes);
            // The job's checkpoint figures, on its first row.
            let mut summary = j.checkpoints.as_ref().map(|h| {
                let entries = h.entries();
                let last = entries.iter().rev().find(|c| c.status == "completed");
                let restored = entries.iter().find(|c| c.status == "restored");
                let mut s = match last {
                    Some(c) => format!(
                        "checkpoint {} completed in {} ms, {} bytes",
                        c.epoch,
                        c.duration_ms.unwrap_or(0),
                        c.bytes
                    ),
                    None => "no checkpoint completed yet".to_string(),
                };
                if let Some(r) = restored {
                    s.push_str(&format!("; restored from checkpoint {}", r.epoch));
                }
                if let Some(r) = &j.restarts {
                    s.push_str(&format!(
                        "; restart {} after a failure: {}",
                        r.count, r.last_error
                    ));
                }
                if let Some(p) = &pending {
                    s.push_str(&format!("; {p}"));
                }
                s
            });
            for n in nodes {
                let m = n.metrics.snapshot();
                job.push(name.clone());
                kind.push(if j.sink { "sink" } else { "materialized view" });
                status.push(status_name);
                op_id.push(n.id as i64);
                op.push(n.label());
                par.push(n.parallelism as i64);
                rows_in.push(m.rows_in as i64);
                rows_out.push(m.rows_out as i64);
                // The end of time (a bounded source finished) has no
                // timestamp; show the largest representable one instead of
                // overflowing.
                wm.push(m.watermark.map(|w| w.min(253_402_300_799_000_000)));
                state_rows.push(m.state_rows as i64);
                state_bytes.push(m.state_bytes as i64);
                late.push(m.late_rows as i64);
                bad.push(m.bad_rows as i64);
                detail.push(match (summary.take(), n.metrics.detail()) {
                    (Some(s), Some(d)) => Some(format!("{s}; {d}")),
                    (Some(s), None) => Some(s),
                    (None, d) => d,
                });
                error.push(match &st {
                    crate::streaming::runtime::JobStatus::Failed(e) => Some(e.clone()),
                    _ => None,
                });
            }
        }
        one_batch(
            show_jobs_schema(),
            vec![
                Arc::new(StringArray::from(job)),
                Arc::new(StringArray::from(kind)),
                Arc::new(StringArray::from(status)),
                Arc::new(Int64Array::from(op_id)),
                Arc::new(StringArray::from(op)),
                Arc::new(Int64Array::from(par)),
                Arc::new(Int64Array::from(rows_in)),
                Arc::new(Int64Array::from(rows_out)),
                Arc::new(TimestampMicrosecondArray::from(wm)),
                Arc::new(Int64Array::from(state_rows)),
                Arc::new(Int64Array::from(state_bytes)),
                Arc::new(Int64Array::from(late)),
                Arc::new(StringArray::from(error)),
                Arc::new(Int64Array::from(bad)),
                Arc::new(StringArray::from(detail)),
            ],
        )
    }

    pub(crate) fn show_checkpoints(&self) -> Result<Output> {
        let jobs = self.engine.inner.jobs.lock().expect("jobs lock");
        let (mut job, mut epoch, mut status, mut started, mut duration, mut bytes, mut detail) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (name, j) in jobs.iter() {
            let Some(history) = &j.checkpoints else {
                continue;
            };
            for s in history.entries() {
                job.push(name.clone());
                epoch.push(s.epoch as i64);
                status.push(s.status);
                started.push(s.started_ms * 1000);
                duration.push(s.duration_ms.map(|d| d as i64));
                bytes.push(s.bytes as i64);
                detail.push(s.detail);
            }
        }
        one_batch(
            show_checkpoints_schema(),
            vec![
                Arc::new(StringArray::from(job)),
                Arc::new(Int64Array::from(epoch)),
                Arc::new(StringArray::from(status)),
                Arc::new(TimestampMicrosecondArray::from(started)),
                Arc::new(Int64Array::from(duration)),
                Arc::new(Int64Array::from(bytes)),
                Arc::new(StringArray::from(detail)),
            ],
        )
    }

    fn view(&self, name: &datafusion::sql::sqlparser::ast::ObjectName) -> Result<Arc<MaterializedView>> {
        let name = crate::parser::normalize_name(name);
        let jobs = self.engine.inner.jobs.lock().expect("jobs lock");
        if let Some(view) = jobs.get(&name).and_then(|j| j.view.clone()) {
            return Ok(view);
        }
        let what = if self.engine.inner.streams.stream(&name).is_some() {
            format!("{name} is a stream; write SUBSCRIBE TO (SELECT * FROM {name})")
        } else if jobs.contains_key(&name) {
            format!("{name} is a sink; SUBSCRIBE follows materialized views or queries")
        } else {
            return Err(SluiceError::new(
                ErrorKind::UndefinedTable,
                format!("materialized view \"{name}\" does not exist"),
            ));
        };
        Err(SluiceError::new(ErrorKind::Semantic, what))
    }

    /// The rows a `SUBSCRIBE` returns.
    pub(crate) async fn subscribe_schema(&self, target: &SubscribeTarget) -> Result<SchemaRef> {
        match target {
            SubscribeTarget::View(name) => Ok(self.view(name)?.changes_schema()),
            SubscribeTarget::Query(q) => Ok(subscribe_schema(&self.plan_job(q).await?.schema)),
        }
    }

    /// Starts a subscription. To a view: its snapshot, then its changes.
    /// To a query: a private job whose output streams to this client, with
    /// backpressure (a slow client slows its own job only); the job stops
    /// when the client goes away.
    pub(crate) async fn subscribe(&self, target: &SubscribeTarget) -> Result<SendableRecordBatchStream> {
        match target {
            SubscribeTarget::View(name) => {
                let view = self.view(name)?;
                let schema = view.changes_schema();
                let (snapshot, rx, lagged) = view.subscribe()?;
                let changes = futures::stream::unfold(
                    (rx, lagged, false),
                    |(mut rx, lagged, done)| async move {
                        if done {
                            return None;
                        }
                        match rx.recv().await {
                        Some(b) => Some((Ok(b), (rx, lagged, false))),
                        None if lagged.load(std::sync::atomic::Ordering::Relaxed) => Some((
                            Err(SluiceError::new(
                                ErrorKind::Internal,
                                format!(
                                    "the subscriber fell more than {SUBSCRIBER_BACKLOG} change batches behind \
                                     and was disconnected to protect the server's memory; SUBSCRIBE again"
                                ),
                            )
                            .into_datafusion()),
                            (rx, lagged, true),
                        )),
                        None => None,
                    }
                    },
                );
                let stream = futures::stream::iter(snapshot.into_iter().map(Ok)).chain(changes);
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
            }
            SubscribeTarget::Query(q) => {
                let node = self.plan_job(q).await?;
                let rows_schema = node.schema.clone();
                let schema = subscribe_schema(&rows_schema);
                let updating = node.updating;
                let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(16);
                let job = Arc::new(Job::start(
                    "subscribe",
                    node,
                    |_, _| {
                        Ok(Box::new(ChannelWriter {
                            tx: tx.clone(),
                            schema: rows_schema.clone(),
                            updating,
                            watermark: None,
                        }) as Box<dyn SinkWriter>)
                    },
                    None,
                    Default::default(),
                )?);
                drop(tx);
                let stream = futures::stream::unfold((rx, job, false), |(mut rx, job, done)| async move {
                    if done {
                        return None;
                    }
                    match rx.recv().await {
                        Some(b) => Some((Ok(b), (rx, job, false))),
                        None => match job.wait().await {
                            crate::streaming::runtime::JobStatus::Failed(e) => Some((
                                Err(SluiceError::new(ErrorKind::Internal, e).into_datafusion()),
                                (rx, job, true),
                            )),
                            _ => None,
                        },
                    }
                });
                Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
            }
        }
    }

    pub(crate) async fn explain_job(&self, create: &CreateJob, sink: bool) -> Result<Output> {
        let mut node = self.plan_job(&create.query).await?;
        if let Some(v) = self.vars.get(crate::engine::STATE_TTL_VAR) {
            node.set_state_ttl(crate::checkpoint::parse_state_ttl(v)?);
        }
        let mut lines = vec![];
        let target = if sink {
            let connector = create.options.get("connector").cloned().unwrap_or_default();
            let c = self.engine.inner.sinks.get(&connector)?;
            let mut options = self.resolve_secrets(&create.options).await?;
            options.retain(|k, _| k != "connector" && !self.engine.inner.stores.is_store_option(k));
            check_sink_options(c.as_ref(), &options)?;
            c.validate(&options, &node.schema, node.updating)?;
            format!("Sink: {connector} [{} lanes]", node.parallelism)
        } else {
            format!(
                "MaterializedView: {} [{}]",
                crate::parser::normalize_name(&create.name),
                if node.updating { "keyed multiset" } else { "append" }
            )
        };
        lines.push(target);
        for l in node.explain().lines() {
            lines.push(format!("  {l}"));
        }
        one_batch(explain_schema(), vec![Arc::new(StringArray::from(lines))])
    }
}

/// A subscription's end of a private job.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<RecordBatch>,
    schema: SchemaRef,
    updating: bool,
    watermark: Option<i64>,
}

#[async_trait::async_trait]
impl SinkWriter for ChannelWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let changes = to_changes(&self.schema, &batch, self.updating, self.watermark)?;
        // The client went away: the job is being dropped with it.
        let _ = self.tx.send(changes).await;
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64) -> Result<()> {
        self.watermark = Some(watermark);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    async fn checkpoint(&mut self, _epoch: u64) -> Result<Vec<RecordBatch>> {
        Ok(vec![])
    }
}

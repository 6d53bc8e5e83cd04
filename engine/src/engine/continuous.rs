//! Sinks and materialized views as SQL: `CREATE SINK`, `CREATE
//! MATERIALIZED VIEW`, `ALTER SINK`, `DROP`, `SHOW`, `SUBSCRIBE` and
//! `EXPLAIN` of continuous queries. A session plans the query and starts
//! the job; the job manager ([`crate::jobs`]) keeps it running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::{Engine, Inner, Output, Session};
use crate::catalog::{CatalogEntry, ObjectKind};
use crate::checkpoint::{CheckpointConfig, CheckpointHistory, CheckpointStore, JobSettings, Restore};
use crate::error::{ErrorKind, Result, SluiceError};
use crate::jobs::{NewRun, Restart, Restarts, explain_schema, show_objects_schema};
use crate::parser::{CreateJob, Statement, SubscribeTarget};
use crate::sink::{SinkContext, SinkWriter, TableLog, check_sink_options};
use crate::streaming::mview::{MaterializedView, subscribe_schema, to_changes};
use crate::streaming::plan::{Node, Planner};
use crate::streaming::runtime::{Job, JobStatus};
use crate::streaming::window::{StreamLookup, rewrite_window_calls};

/// Restarts the engine's failed jobs; holds the engine weakly (a job
/// being watched must not keep a dropped engine alive).
pub(super) struct Restarter(pub(super) std::sync::Weak<Inner>);

impl Restart for Restarter {
    /// Replaces the failed run `incarnation` of job `name` by a new one
    /// restored from its newest checkpoint. `Ok(false)`: that run is no
    /// longer there (dropped, altered). On an error the failed run is put
    /// back.
    fn restart<'a>(
        &'a self,
        name: &'a str,
        sink: bool,
        incarnation: u64,
        attempt: u32,
        error: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let Some(inner) = self.0.upgrade() else {
                return Ok(false);
            };
            let engine = Engine { inner: inner.clone() };
            let sql = {
                let catalog = inner.catalog.lock().await;
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
            let Some(old) = inner.jobs.take_run(name, incarnation) else {
                return Ok(false);
            };
            let session = engine.new_session();
            let table = session.ctx.deregister_table(name).ok().flatten();
            let log = inner.versioned.remove(name);
            inner.jobs.set_restarts(
                name,
                Some(Restarts {
                    count: attempt,
                    last_error: error.to_string(),
                }),
            );
            match session.create_job(create, sink, false).await {
                Ok(()) => Ok(true),
                Err(e) => {
                    inner.jobs.set_restarts(name, None);
                    if inner.jobs.contains(name) {
                        return Ok(false); // someone else started it meanwhile
                    }
                    if let Some(table) = table {
                        let _ = session.ctx.register_table(name, table);
                    }
                    if let Some(log) = log {
                        inner.versioned.insert(name, log);
                    }
                    if !inner.jobs.put_back(name, old) {
                        return Ok(false);
                    }
                    Err(e)
                }
            }
        })
    }
}

impl Engine {
    /// Names of the jobs that read stream `stream`.
    pub(crate) fn jobs_reading(&self, stream: &str) -> Vec<String> {
        self.inner.jobs.reading(stream)
    }

    /// Waits until job `name` has finished or failed (for tests and tools);
    /// returns `finished` or `failed: <error>`, or `None` when there is no
    /// such job.
    pub async fn wait_for_job(&self, name: &str) -> Option<String> {
        self.inner.jobs.wait_for(name).await
    }

    /// Every operator of every running job with its figures now (metrics).
    pub fn job_operators(&self) -> Vec<crate::jobs::OperatorFigures> {
        self.inner.jobs.operators()
    }

    /// Every checkpointing job's checkpoint figures now (metrics).
    pub fn job_checkpoints(&self) -> Vec<crate::jobs::CheckpointFigures> {
        self.inner.jobs.checkpoints()
    }
}
fn one_batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Output> {
    Ok(rows_output(RecordBatch::try_new(schema, columns)?))
}

fn rows_output(batch: RecordBatch) -> Output {
    let schema = batch.schema();
    let stream = futures::stream::once(async move { Ok(batch) });
    Output::Rows(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}

impl Session {
    /// Plans a continuous query into a streaming dataflow.
    pub(crate) async fn plan_job(&self, query: &datafusion::sql::sqlparser::ast::Query) -> Result<Node> {
        let refresh = match self.vars.get(super::LOOKUP_REFRESH_VAR) {
            Some(v) => crate::checkpoint::parse_lookup_refresh(v)?,
            None => None,
        };
        self.plan_job_with(query, refresh).await
    }

    /// [`Self::plan_job`] with a job's kept `streaming.lookup_refresh`.
    pub(crate) async fn plan_job_with(
        &self,
        query: &datafusion::sql::sqlparser::ast::Query,
        lookup_refresh: Option<std::time::Duration>,
    ) -> Result<Node> {
        let state = self.ctx.state();
        let plan = self.job_query_plan(query).await?;
        let plan = state.optimize(&plan)?;
        Planner::new(state.execution_props(), self.engine.inner.parallelism)
            .with_lookup_refresh(lookup_refresh)
            .plan(&plan)
    }

    /// A continuous query's logical plan, as planned from its SQL (not yet
    /// optimized).
    async fn job_query_plan(
        &self,
        query: &datafusion::sql::sqlparser::ast::Query,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        let mut query = query.clone();
        rewrite_window_calls(&mut query);
        Ok(self
            .ctx
            .state()
            .statement_to_plan(DFStatement::Statement(Box::new(SqlStatement::Query(Box::new(
                query,
            )))))
            .await?)
    }

    /// The settings a job runs with: a new one (`persist`) takes this
    /// session's; a restarted, restored or altered one those it was created
    /// with (a job from before they were kept: this session's).
    fn job_settings(&self, name: &str, persist: bool) -> Result<JobSettings> {
        if !persist && let Some(kept) = CheckpointStore::new(&self.engine.inner.checkpoints, name).settings()
        {
            return Ok(kept);
        }
        let interval = match self.vars.get(super::CHECKPOINT_INTERVAL_VAR) {
            Some(v) => crate::checkpoint::parse_interval(v)?,
            None => self.engine.inner.checkpoint_interval,
        };
        let restart_attempts = match self.vars.get(super::RESTART_ATTEMPTS_VAR) {
            Some(v) => crate::checkpoint::parse_restart_attempts(v)?,
            None => super::DEFAULT_RESTART_ATTEMPTS,
        };
        let checkpoint_timeout_ms = match self.vars.get(super::CHECKPOINT_TIMEOUT_VAR) {
            Some(v) => Some(crate::checkpoint::parse_timeout(v)?.as_millis() as u64),
            None => None,
        };
        let state_ttl_ms = match self.vars.get(super::STATE_TTL_VAR) {
            Some(v) => crate::checkpoint::parse_state_ttl(v)?.map(|d| d.as_millis() as u64),
            None => None,
        };
        let lookup_refresh_ms = match self.vars.get(super::LOOKUP_REFRESH_VAR) {
            Some(v) => crate::checkpoint::parse_lookup_refresh(v)?.map(|d| d.as_millis() as u64),
            None => None,
        };
        Ok(JobSettings {
            checkpoint_interval_ms: interval.map(|d| d.as_millis() as u64),
            restart_attempts,
            checkpoint_timeout_ms,
            state_ttl_ms,
            lookup_refresh_ms,
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

    /// `CREATE SINK` (`sink`) or `CREATE MATERIALIZED VIEW`: checks the
    /// name, plans the query, sets up its checkpoints, starts the job
    /// ([`Self::start_sink`] / [`Self::start_view`]), records it durably
    /// when `persist`, and hands it to the job manager.
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
        let settings = self.job_settings(&name, persist)?;
        let mut node = self
            .plan_job_with(&create.query, settings.lookup_refresh())
            .await?;
        // A view keeps its query: a temporal join reads its versions from it.
        let definition = self.job_query_plan(&create.query).await?;
        // Read before this job's own checkpoints are reset: a sink may start
        // where another (even a dropped one of the same name) stopped.
        let start_from = match create.options.get("start_from") {
            Some(from) => self.start_positions(from)?,
            None => Default::default(),
        };
        node.set_state_ttl(settings.state_ttl());
        let checkpoints = self.checkpoint_config(&name, persist, &settings)?;
        if persist {
            CheckpointStore::dropped(&self.engine.inner.checkpoints, &name).remove_all();
        }
        let history = checkpoints.as_ref().map(|c| c.history.clone());
        let restoring = checkpoints.as_ref().is_some_and(|c| c.restore.is_some());
        let starting = std::time::Instant::now();
        let (job, view, table_log) = if sink {
            let options = crate::secrets::resolve(&create.options, |n| catalog.secret(n).cloned())?;
            let (job, log) = self
                .start_sink(
                    &name,
                    options,
                    &create.query.to_string(),
                    node,
                    checkpoints,
                    start_from,
                )
                .await?;
            (job, None, log)
        } else {
            let (job, view) = self.start_view(&name, &create.options, node, checkpoints, start_from)?;
            view.set_definition(definition);
            (job, Some(view), None)
        };
        if restoring && let Some(h) = &history {
            h.set_restore_time(starting.elapsed());
        }
        if persist
            && let Err(e) = catalog.put(CatalogEntry {
                name: name.clone(),
                kind: if sink {
                    ObjectKind::Sink
                } else {
                    ObjectKind::MaterializedView
                },
                sql: statement.to_string(),
                owner: Some(self.user.clone()),
            })
        {
            let _ = self.ctx.deregister_table(name.as_str());
            return Err(e);
        }
        if let Some(log) = &table_log {
            self.engine.inner.versioned.insert(&name, log.clone());
        }
        self.engine.inner.jobs.start(
            name,
            NewRun {
                sink,
                job,
                view,
                checkpoints: history,
                restart_attempts: settings.restart_attempts,
            },
            Arc::new(Restarter(Arc::downgrade(&self.engine.inner))),
        );
        Ok(())
    }

    /// Starts sink `name`'s job: resolves its connector and landing place,
    /// registers the table it lands (if any), and wires its committer to
    /// the checkpoints. Returns the job and the sink's table log (versions).
    async fn start_sink(
        &self,
        name: &str,
        mut options: BTreeMap<String, String>,
        query: &str,
        node: Node,
        mut checkpoints: Option<CheckpointConfig>,
        start_from: crate::streaming::runtime::StartPositions,
    ) -> Result<(Job, Option<Arc<dyn TableLog>>)> {
        let name = name.to_string();
        let stores = &self.engine.inner.stores;
        let mut table_log: Option<Arc<dyn TableLog>> = None;
        let schema = node.schema.clone();
        let updating = node.updating;
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let store_options: BTreeMap<String, String> = options
            .iter()
            .filter(|(k, _)| stores.is_store_option(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        options.retain(|k, _| !stores.is_store_option(k) && k != "start_from");
        let connector_name = options.remove("connector").ok_or_else(|| {
            SluiceError::invalid_parameter(format!("CREATE SINK {name}: the connector option is required"))
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
            table_log = connector.table_log(&options, &schema, updating, &ctx, query)?;
            let table: Arc<dyn datafusion::catalog::TableProvider> = match &table_log {
                Some(log) => {
                    log.prepare().await?;
                    log.table(None)?
                }
                None => {
                    crate::sink::landed_table(landed, &connector.landed_schema(&options, &schema, updating))?
                }
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
            Ok(job) => Ok((job, table_log)),
            Err(e) => {
                let _ = self.ctx.deregister_table(name.as_str());
                Err(e)
            }
        }
    }

    /// Starts materialized view `name`'s job and registers the view.
    fn start_view(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
        node: Node,
        checkpoints: Option<CheckpointConfig>,
        start_from: crate::streaming::runtime::StartPositions,
    ) -> Result<(Job, Arc<MaterializedView>)> {
        if !options.is_empty() {
            return Err(SluiceError::invalid_parameter(
                "CREATE MATERIALIZED VIEW takes no WITH options",
            ));
        }
        let view = Arc::new(MaterializedView::try_new(node.schema.clone(), node.updating)?);
        self.ctx.register_table(name, view.clone())?;
        let job = Job::start(
            name,
            node,
            |lane, _| Ok(view.writer(lane)),
            checkpoints,
            start_from,
        )?;
        Ok((job, view))
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
                // Altered, not made anew: its owner stays.
                let owner = catalog.get(name).and_then(|e| e.owner.clone());
                catalog.put(CatalogEntry {
                    name: name.to_string(),
                    kind: ObjectKind::Sink,
                    sql: Statement::CreateSink(new).to_string(),
                    owner,
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
        self.engine.inner.jobs.stop(name);
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
            Some(kind) => return Err(kind.not_a(name, want)),
            None if if_exists => return Ok(()),
            None => {
                return Err(SluiceError::new(
                    ErrorKind::UndefinedTable,
                    format!("{} \"{name}\" does not exist", want.noun()),
                ));
            }
        }
        if !sink && let Some(reader) = super::views::reader_of(&catalog, name)? {
            return Err(super::views::still_read(name, want, reader));
        }
        catalog.remove(name)?;
        let _ = self.ctx.deregister_table(name);
        // Dropping the job aborts its tasks and frees their state.
        self.engine.inner.jobs.stop(name);
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
            let job = self.engine.inner.jobs.status_and_rows(&entry.name);
            statuses.push(match &job {
                Some((status, _)) => status.clone(),
                None => "not running".to_string(),
            });
            queries.push(c.query.to_string());
            connectors.push(c.options.get("connector").cloned().unwrap_or_default());
            options.push(crate::secrets::options_text(&c.options));
            rows.push(job.map_or(0, |(_, rows)| rows as i64));
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
        Ok(rows_output(self.engine.inner.jobs.show_jobs()?))
    }

    pub(crate) fn show_checkpoints(&self) -> Result<Output> {
        Ok(rows_output(self.engine.inner.jobs.show_checkpoints()?))
    }

    fn view(&self, name: &datafusion::sql::sqlparser::ast::ObjectName) -> Result<Arc<MaterializedView>> {
        let name = crate::parser::normalize_name(name);
        let jobs = &self.engine.inner.jobs;
        if let Some(view) = jobs.view(&name) {
            return Ok(view);
        }
        let what = if self.engine.inner.streams.stream(&name).is_some() {
            format!("{name} is a stream; write SUBSCRIBE TO (SELECT * FROM {name})")
        } else if jobs.contains(&name) {
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
                let (snapshot, feed) = view.subscribe(self.engine.inner.subscriber_backlog)?;
                let changes = futures::stream::unfold(feed, |mut feed| async move {
                    let next = feed.next().await?;
                    Some((next.map_err(SluiceError::into_datafusion), feed))
                });
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
                            JobStatus::Failed(e) => Some((
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
        if let Some(v) = self.vars.get(super::STATE_TTL_VAR) {
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

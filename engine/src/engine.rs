//! The engine and its sessions.
//!
//! An [`Engine`] owns what all sessions share: DataFusion's catalog and
//! runtime (object stores, memory pool), the durable catalog and the storage
//! providers. A [`Session`] is one client's view: its own settings over the
//! shared catalog. Statements go through two steps, so that the extended
//! query protocol can describe a statement before running it:
//! [`Session::prepare`] plans, [`Session::execute`] runs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{CreateExternalTable, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{self, Expr as SqlExpr, Set, Statement as SqlStatement, Value};
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::catalog::{CatalogEntry, DurableCatalog, ObjectKind};
use crate::error::{ErrorKind, Result, SluiceError};
use crate::jobs::JobManager;
use crate::parser::{self, CreateJob, CreateStream, Statement, normalize_name};
use crate::sink::SinkRegistry;
use crate::storage::StoreRegistry;
use crate::stream::{SourceRegistry, StreamTable, check_options};
use crate::streaming::window::{Streams, WindowFunction, rewrite_window_calls, watermark_delay};

mod continuous;
mod views;

/// The name of Sluice's one catalog (what `current_database()` returns).
pub const CATALOG_NAME: &str = "sluice";
/// The schema user objects live in.
pub const DEFAULT_SCHEMA: &str = "public";
/// The Postgres version Sluice reports to clients. psql adapts its catalog
/// queries to this number.
pub const PG_SERVER_VERSION: &str = "15.0";

/// How long a statement may wait for storage while creating a table.
const STORAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds the catalog (and later checkpoints and the default landing zone).
    pub data_dir: PathBuf,
    /// Storage for non-local locations (`s3://`, `hdfs://`).
    pub stores: StoreRegistry,
    /// Partitions DataFusion splits a query into; defaults to the core count.
    pub target_partitions: Option<usize>,
    /// Source connectors for `CREATE STREAM`.
    pub sources: SourceRegistry,
    /// Sink connectors for `CREATE SINK`.
    pub sinks: SinkRegistry,
    /// How often jobs checkpoint unless a session sets
    /// `streaming.checkpoint_interval`; `None`: they don't.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// Where jobs keep their checkpoints: `None` for `<data dir>/checkpoints`,
    /// else a local path or a URL of a registered store (`s3://bucket/prefix`,
    /// `hdfs://namenode:port/path`).
    pub checkpoint_location: Option<String>,
    /// Directories besides the data directory where SQL may read and write
    /// local files (see [`crate::paths`]).
    pub file_roots: Vec<PathBuf>,
    /// Memory all queries together may hold in DataFusion's operators
    /// (sorts, aggregates, joins spill to disk past it where they can, and
    /// fail with 53200 where they can't); `None`: half of physical memory.
    pub memory_limit: Option<usize>,
    /// Bytes of changes a `SUBSCRIBE` to a view may have waiting before the
    /// subscriber is cut off; `None`:
    /// [`crate::streaming::mview::SUBSCRIBER_BACKLOG_BYTES`].
    pub subscriber_backlog: Option<usize>,
    /// Password authentication, for `CREATE ROLE ... PASSWORD`; `None`:
    /// roles can't be given passwords.
    pub auth: Option<EngineAuth>,
}

/// What the server's authentication tells the engine about roles.
#[derive(Clone)]
pub struct EngineAuth {
    /// Derives what a login is checked against from a password and salt.
    pub hasher: crate::roles::PasswordHasher,
    /// Users of the config file (superusers; SQL can't make or change them).
    pub config_users: Vec<String>,
}

impl std::fmt::Debug for EngineAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineAuth")
            .field("config_users", &self.config_users)
            .finish_non_exhaustive()
    }
}

/// The shared state of a running Sluice: catalog, runtime and storage.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// The checkpoint root for `location` (see [`EngineConfig::checkpoint_location`]).
fn checkpoint_root(
    stores: &StoreRegistry,
    data_dir: &std::path::Path,
    location: Option<&str>,
) -> Result<crate::checkpoint::CheckpointRoot> {
    use crate::checkpoint::CheckpointRoot;
    let Some(location) = location.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(CheckpointRoot::local(data_dir));
    };
    match stores.store_for_location(location, &Default::default())? {
        None => {
            let path = location.strip_prefix("file://").unwrap_or(location);
            std::fs::create_dir_all(path)?;
            Ok(CheckpointRoot::Local(std::path::PathBuf::from(path)))
        }
        Some((_, store)) => {
            let url = url::Url::parse(location).map_err(|e| {
                SluiceError::invalid_parameter(format!("checkpoint location {location}: {e}"))
            })?;
            let prefix = object_store::path::Path::from_url_path(url.path()).map_err(|e| {
                SluiceError::invalid_parameter(format!("checkpoint location {location}: {e}"))
            })?;
            Ok(CheckpointRoot::Object {
                store,
                prefix,
                url: location.trim_end_matches('/').to_string(),
            })
        }
    }
}

pub(crate) struct Inner {
    pub(crate) template: SessionContext,
    pub(crate) catalog: Mutex<DurableCatalog>,
    pub(crate) stores: StoreRegistry,
    pub(crate) sources: SourceRegistry,
    pub(crate) sinks: SinkRegistry,
    /// Where jobs keep their checkpoints.
    pub(crate) checkpoints: crate::checkpoint::CheckpointRoot,
    /// Parallel tasks per stream and per keyed operator.
    pub(crate) parallelism: usize,
    /// Catalog entries that could not be restored at start, with the reason.
    pub(crate) unavailable: std::sync::Mutex<HashMap<String, String>>,
    /// Declared streams, for the window table functions and the planner.
    pub(crate) streams: Arc<Streams>,
    /// Running sinks and materialized views, by name.
    pub(crate) jobs: Arc<JobManager>,
    /// The default `streaming.checkpoint_interval`.
    pub(crate) checkpoint_interval: Option<std::time::Duration>,
    /// Sinks with a table log (AS OF, sluice_commits).
    pub(crate) versioned: Arc<crate::versions::VersionedTables>,
    /// Where statements and jobs run.
    pub(crate) compute: crate::compute::ComputeRuntime,
    pub(crate) password_hasher: Option<crate::roles::PasswordHasher>,
    pub(crate) config_users: Vec<String>,
    /// See [`EngineConfig::subscriber_backlog`].
    pub(crate) subscriber_backlog: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the data directory, loads the catalog and brings every declared
    /// object back. An object whose storage cannot be reached stays in the
    /// catalog (it is not forgotten) and queries on it say why it is missing.
    pub async fn open(config: EngineConfig) -> Result<Self> {
        // Queries and jobs run on the engine's own runtime (see
        // `compute`), restored jobs included: open there.
        let threads = config
            .target_partitions
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        // Twice as many workers as partitions: a query keeps at most
        // `target_partitions` tasks busy (plus the one pulling its result),
        // so one heavy query leaves workers free for everyone else and the
        // operating system shares the cores among them.
        let compute = crate::compute::ComputeRuntime::new(threads * 2)?;
        let handle = compute.handle();
        let opened = crate::compute::Offloaded::new(handle.spawn(Self::open_on_compute(config, compute)));
        opened
            .await
            .map_err(|e| SluiceError::internal(format!("opening the engine: {e}")))?
    }

    async fn open_on_compute(config: EngineConfig, compute: crate::compute::ComputeRuntime) -> Result<Self> {
        let mut session_config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_SCHEMA)
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(true);
        // Sessions start in UTC, as Postgres's default TimeZone here does;
        // with a zone set, TIMESTAMP WITH TIME ZONE is zone-aware in
        // DataFusion too.
        session_config.options_mut().execution.time_zone = Some("+00:00".into());
        // `0.1` is an exact NUMERIC, as in Postgres, Flink and the SQL
        // standard (`0.1 + 0.2` is `0.3`), not a float.
        session_config.options_mut().sql_parser.parse_float_as_decimal = true;
        if let Some(p) = config.target_partitions {
            session_config = session_config.with_target_partitions(p.max(1));
        }
        let parallelism = session_config.target_partitions();
        // Landed data changes under running sinks: every query lists the
        // files again (DataFusion's list cache would keep a stale listing
        // forever).
        let memory_limit = config.memory_limit.unwrap_or_else(default_memory_limit);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(memory_limit, 1.0)
            .with_cache_manager(
                datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                    .with_list_files_cache_limit(0),
            )
            .build_arc()?;
        // Correlated scalar subqueries DataFusion cannot decorrelate
        // (catalog queries' kind) run per row: engine/src/subquery.rs.
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(crate::subquery::SluiceQueryPlanner))
            .build();
        let mut state = state;
        // After DataFusion's own: they leave comparisons of an array with
        // text alone, which this one reads as Postgres does.
        datafusion::execution::FunctionRegistry::register_expr_planner(
            &mut state,
            Arc::new(crate::pgliterals::PgLiteralPlanner),
        )?;
        let template = SessionContext::new_with_state(state);
        // Postgres' to_char templates ('YYYY-MM-DD') besides chrono's.
        template.register_udf(crate::functions::PgToChar::udf());
        template.register_udf(crate::functions::Mod::udf());
        template.register_udf(crate::functions::PgTypeof::udf());
        template.register_udf(crate::functions::ToRegtype::udf());
        template.register_udf(crate::functions::JsonBuildObject::udf());
        template.register_udf(crate::functions::PgFormat::udf());
        template.register_udf(crate::functions::PgSleep::udf());
        template.register_udf(crate::functions::UndefinedFunction::udf());
        template.register_udf(crate::functions::PgSizePretty::udf());
        template.register_udf(crate::functions::PgExpandArray::udf());
        // array_agg of an oid column is an oid[] (asyncpg's introspection).
        template.register_udaf(crate::oidarrays::PgArrayAgg::udaf());
        for f in crate::functions::FixedAnswer::udfs() {
            template.register_udf(f);
        }
        template.register_udf(
            datafusion::functions::string::uuid()
                .as_ref()
                .clone()
                .with_aliases(["gen_random_uuid"]),
        );
        for f in crate::functions::LengthCapped::udfs() {
            template.register_udf(f);
        }
        // What `::json`, `::jsonb` and `::uuid` become.
        crate::types::register(&template);
        template.add_optimizer_rule(Arc::new(crate::optimizer::GroupByFixedColumns));
        template.add_optimizer_rule(Arc::new(crate::subquery::LeftoverSubqueries));
        template.add_analyzer_rule(Arc::new(crate::subquery::PerRowSubqueries));
        // Integer + - * fail with 22003 on overflow (after type coercion).
        template.add_analyzer_rule(Arc::new(crate::overflow::CheckedIntegerArithmetic::default()));
        // ... and so does sum() over integers (replaces the built-in `sum`).
        template.register_udaf(crate::overflow::CheckedSum::udaf().as_ref().clone());
        let streams = Arc::new(Streams::default());
        template.register_udtf("tumble", Arc::new(WindowFunction::tumble(streams.clone())));
        template.register_udtf("hop", Arc::new(WindowFunction::hop(streams.clone())));
        template.register_udtf("cumulate", Arc::new(WindowFunction::cumulate(streams.clone())));
        template.register_udtf("session", Arc::new(WindowFunction::session(streams.clone())));
        template.add_analyzer_rule(Arc::new(crate::streaming::versioned::MarkTemporalJoins));
        template.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            crate::streaming::versioned::AsOfMark::default(),
        ));
        template.register_udtf(
            crate::streaming::versioned::VERSIONS_FUNCTION,
            Arc::new(crate::streaming::versioned::VersionsFunction::new(
                streams.clone(),
            )),
        );
        let versioned = Arc::new(crate::versions::VersionedTables::default());
        template.register_udtf(
            crate::versions::AS_OF_FUNCTION,
            Arc::new(crate::versions::AsOfFunction::new(versioned.clone())),
        );
        template.register_table(
            "sluice_commits",
            Arc::new(crate::versions::CommitsTable::commits(versioned.clone())),
        )?;
        template.register_table(
            "sluice_commit_sources",
            Arc::new(crate::versions::CommitsTable::sources(versioned.clone())),
        )?;
        let catalog = DurableCatalog::open(&config.data_dir)?;
        // Catalog, checkpoints and landed data are the server's own (as
        // Postgres wants its data directory 0700): options in them may hold
        // secrets.
        crate::catalog::restrict(&config.data_dir, 0o700)?;
        let checkpoints = checkpoint_root(
            &config.stores,
            &config.data_dir,
            config.checkpoint_location.as_deref(),
        )?;
        let own = match &checkpoints {
            crate::checkpoint::CheckpointRoot::Local(dir) => vec![dir.clone()],
            _ => vec![],
        };
        // Writes cut off by a crash leave staging files behind (a COPY's or a
        // sink's); nothing writes yet, so they are garbage.
        let (files, bytes) = crate::paths::remove_staging_files(&config.data_dir, &own);
        if files > 0 {
            tracing::info!(files, bytes, "removed staging files of interrupted writes");
        }
        config.stores.confine_local(crate::paths::LocalPaths::new(
            &config.data_dir,
            &config.file_roots,
            &own,
        )?);
        let entries: Vec<CatalogEntry> = catalog.entries().cloned().collect();
        let engine = Engine {
            inner: Arc::new(Inner {
                template,
                catalog: Mutex::new(catalog),
                stores: config.stores,
                sources: config.sources,
                sinks: config.sinks,
                parallelism,
                unavailable: Default::default(),
                streams,
                jobs: Default::default(),
                checkpoint_interval: config.checkpoint_interval,
                checkpoints,
                versioned,
                compute,
                password_hasher: config.auth.as_ref().map(|a| a.hasher.clone()),
                config_users: config.auth.map(|a| a.config_users).unwrap_or_default(),
                subscriber_backlog: config
                    .subscriber_backlog
                    .unwrap_or(crate::streaming::mview::SUBSCRIBER_BACKLOG_BYTES),
            }),
        };
        // Tables and streams first, then views, then sinks and materialized
        // views: each reads what comes before it.
        let mut failed: Vec<(CatalogEntry, SluiceError)> = Vec::new();
        let (views, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.kind == ObjectKind::View);
        let (first, jobs): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|e| matches!(e.kind, ObjectKind::Table | ObjectKind::Stream));
        for entry in first {
            if let Err(e) = engine.restore(&entry).await {
                failed.push((entry, e));
            }
        }
        // Views in rounds: one that reads a view not yet restored comes
        // back in a later round.
        let mut waiting = views;
        loop {
            let before = waiting.len();
            let mut again = Vec::new();
            for entry in std::mem::take(&mut waiting) {
                if let Err(e) = engine.restore(&entry).await {
                    again.push((entry, e));
                }
            }
            if again.is_empty() || again.len() == before {
                failed.extend(again);
                break;
            }
            waiting = again.into_iter().map(|(entry, _)| entry).collect();
        }
        for entry in jobs {
            if let Err(e) = engine.restore(&entry).await {
                failed.push((entry, e));
            }
        }
        for (entry, e) in failed {
            tracing::warn!(name = %entry.name, error = %e, "could not restore catalog entry");
            engine
                .inner
                .unavailable
                .lock()
                .expect("unavailable map poisoned")
                .insert(entry.name.clone(), e.to_string());
        }
        Ok(engine)
    }

    /// A role created with `CREATE ROLE`, if there is one by that name.
    pub async fn role(&self, name: &str) -> Option<crate::catalog::Role> {
        self.inner.catalog.lock().await.role(name).cloned()
    }

    /// Every object of the durable catalog (tables, streams, sinks,
    /// materialized views), with the SQL that made it.
    /// The users of the config file, in its order.
    pub fn config_users(&self) -> &[String] {
        &self.inner.config_users
    }

    pub async fn objects(&self) -> Vec<crate::catalog::CatalogEntry> {
        self.inner.catalog.lock().await.entries().cloned().collect()
    }

    /// Every role created with `CREATE ROLE`.
    pub async fn roles(&self) -> Vec<crate::catalog::Role> {
        self.inner.catalog.lock().await.roles().cloned().collect()
    }

    /// Runs `work` on the engine's runtime, away from the caller's (the
    /// server's, which must stay free to accept connections and cancel
    /// requests). Dropping the returned future aborts the work.
    pub fn spawn<F>(&self, work: F) -> crate::compute::Offloaded<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::compute::Offloaded::new(self.inner.compute.handle().spawn(work))
    }

    /// The context new sessions are cloned from. The server uses it once at
    /// start to install the Postgres catalog emulation (pg_catalog and its
    /// functions), before any session exists.
    pub fn template_context(&self) -> &SessionContext {
        &self.inner.template
    }

    /// The settings a new session starts with (what `RESET` goes back to).
    fn session_defaults(&self) -> BTreeMap<String, String> {
        let mut vars = default_session_vars();
        vars.insert(
            CHECKPOINT_INTERVAL_VAR.into(),
            crate::checkpoint::format_interval(self.inner.checkpoint_interval),
        );
        vars.insert(RESTART_ATTEMPTS_VAR.into(), DEFAULT_RESTART_ATTEMPTS.to_string());
        vars.insert(
            CHECKPOINT_TIMEOUT_VAR.into(),
            crate::checkpoint::format_interval(Some(crate::checkpoint::DEFAULT_CHECKPOINT_TIMEOUT)),
        );
        vars
    }

    /// A new session over the shared catalog.
    pub fn new_session(&self) -> Session {
        let vars = self.session_defaults();
        let session = Session {
            engine: self.clone(),
            ctx: SessionContext::new_with_state(self.inner.template.state()),
            vars,
            user: "sluice".into(),
            superuser: true,
            cursors: HashMap::new(),
            startup_vars: BTreeMap::new(),
            pending_settings: Default::default(),
        };
        session.register_session_functions();
        session
    }

    async fn restore(&self, entry: &CatalogEntry) -> Result<()> {
        let session = self.new_session();
        match parser::parse(&entry.sql)?.pop() {
            Some(Statement::DataFusion(DFStatement::CreateExternalTable(create))) => {
                session.create_external_table(create, false).await
            }
            Some(Statement::CreateStream(create)) => session.create_stream(create, false).await,
            Some(Statement::CreateSink(create)) => session.create_job(create, true, false).await,
            Some(Statement::CreateMaterializedView(create)) => session.create_job(create, false, false).await,
            Some(Statement::DataFusion(statement @ DFStatement::Statement(_))) => {
                match session.prepare_inner(statement).await?.action {
                    Action::CreateView { plan, name, sql, .. } => {
                        session.create_view(plan, &name, &sql, false, false, false).await
                    }
                    _ => Err(SluiceError::internal(format!(
                        "catalog entry {} does not hold a CREATE statement",
                        entry.name
                    ))),
                }
            }
            _ => Err(SluiceError::internal(format!(
                "catalog entry {} does not hold a CREATE statement",
                entry.name
            ))),
        }
    }
}

/// The session setting jobs created afterwards checkpoint at.
pub(crate) const CHECKPOINT_INTERVAL_VAR: &str = "streaming.checkpoint_interval";

/// The session setting: how many times in a row a failed job created
/// afterwards is restarted from its newest checkpoint.
pub(crate) const RESTART_ATTEMPTS_VAR: &str = "streaming.restart_attempts";

/// Session variable: how long a job's joins keep rows nothing else bounds
/// (see [`crate::checkpoint::parse_state_ttl`]).
pub(crate) const STATE_TTL_VAR: &str = "streaming.state_ttl";
/// `SET streaming.lookup_refresh = '5min'`: how often the jobs created
/// next read the tables of their lookup joins again.
pub(crate) const LOOKUP_REFRESH_VAR: &str = "streaming.lookup_refresh";

/// The session setting: how long a checkpoint of a job created afterwards
/// may take before it counts as failed.
pub(crate) const CHECKPOINT_TIMEOUT_VAR: &str = "streaming.checkpoint_timeout";

/// The default of [`RESTART_ATTEMPTS_VAR`].
pub(crate) const DEFAULT_RESTART_ATTEMPTS: u32 = 5;

/// `statement_timeout` as Postgres takes it: milliseconds, or a number with
/// a unit (`ms`, `s`, `min`, `h`); 0 turns it off.
fn parse_statement_timeout(value: &str) -> Result<Option<std::time::Duration>> {
    let v = value.trim().trim_matches('\'').to_ascii_lowercase();
    let digits = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let bad = || {
        SluiceError::invalid_parameter(format!(
            "invalid value for parameter \"statement_timeout\": \"{value}\""
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000.0,
        "min" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        _ => return Err(bad()),
    };
    if !(0.0..=i32::MAX as f64).contains(&ms) {
        return Err(bad());
    }
    Ok((ms >= 1.0).then(|| std::time::Duration::from_millis(ms as u64)))
}

/// Half of physical memory (`MemTotal` of /proc/meminfo), or 4 GiB where
/// that can't be read.
fn default_memory_limit() -> usize {
    let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
    });
    total_kb.map_or(4 << 30, |kb| kb * 1024 / 2)
}

/// The `-c name=value` (or `--name=value`) pairs of a startup message's
/// `options`, names lower-cased and `-` read as `_`, as Postgres reads them.
fn startup_options(options: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let pair = if w == "-c" {
            words.next()
        } else {
            w.strip_prefix("-c").or_else(|| w.strip_prefix("--"))
        };
        if let Some((name, value)) = pair.and_then(|p| p.split_once('=')) {
            out.push((name.to_ascii_lowercase().replace('-', "_"), value.to_string()));
        }
    }
    out
}

/// Settings a session can read and not change (`is_superuser` says what
/// the login is).
const READ_ONLY_SETTINGS: [&str; 6] = [
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "max_identifier_length",
    "is_superuser",
];

fn default_session_vars() -> BTreeMap<String, String> {
    [
        ("server_version", PG_SERVER_VERSION),
        ("server_version_num", "150000"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("timezone", "UTC"),
        ("datestyle", "ISO, MDY"),
        ("intervalstyle", "postgres"),
        ("search_path", "public"),
        ("standard_conforming_strings", "on"),
        ("transaction_isolation", "read committed"),
        ("default_transaction_isolation", "read committed"),
        ("application_name", ""),
        ("extra_float_digits", "1"),
        ("integer_datetimes", "on"),
        ("is_superuser", "on"),
        ("max_identifier_length", "63"),
        ("statement_timeout", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What a statement produced.
pub enum Output {
    /// Rows, streamed: nothing collects the whole result.
    Rows(SendableRecordBatchStream),
    /// `SUBSCRIBE`: rows that keep coming (`op`, `progress`, then the
    /// row) until the client cancels; `copy` when the client asked for
    /// `COPY (SUBSCRIBE ...) TO STDOUT`.
    Subscribe {
        rows: SendableRecordBatchStream,
        copy: bool,
    },
    /// `COPY ... TO STDOUT`: rows for the client in COPY's text or CSV
    /// format.
    CopyOut {
        rows: SendableRecordBatchStream,
        options: crate::parser::CopyOptions,
    },
    /// `COPY ... FROM STDIN`: the client sends rows for this table next
    /// (read them with [`crate::copy::CopyInTarget::read`], then
    /// [`Session::copy_in`]).
    CopyIn(crate::copy::CopyInTarget),
    /// A command that returns no rows, with its completion tag (`CREATE
    /// TABLE`, `SET`, ...) and, for DML, the row count.
    Command { tag: String, rows: Option<usize> },
    /// `BEGIN` and its synonyms.
    TransactionStart,
    /// `COMMIT` (`rollback: false`) or `ROLLBACK` (`rollback: true`).
    TransactionEnd { rollback: bool },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(s) => write!(f, "Rows({:?})", s.schema()),
            Output::Subscribe { rows, copy } => write!(f, "Subscribe({:?}, copy={copy})", rows.schema()),
            Output::CopyOut { rows, .. } => write!(f, "CopyOut({:?})", rows.schema()),
            Output::CopyIn(t) => write!(f, "CopyIn({})", t.table),
            Output::Command { tag, rows } => write!(f, "Command({tag}, {rows:?})"),
            Output::TransactionStart => write!(f, "TransactionStart"),
            Output::TransactionEnd { rollback } => write!(f, "TransactionEnd({rollback})"),
        }
    }
}

/// A planned statement, ready to describe and to run (possibly many times,
/// with different parameters).
#[derive(Debug, Clone)]
pub struct Prepared {
    action: Action,
    /// A query's output column names as Postgres gives them, where they
    /// differ from the plan's (see [`crate::colnames`]).
    names: Option<Arc<[String]>>,
}

#[derive(Debug, Clone)]
enum Action {
    /// Run through DataFusion.
    Plan(LogicalPlan),
    /// `CREATE EXTERNAL TABLE`: Sluice registers storage and records the
    /// table in the durable catalog around DataFusion's own handling.
    CreateTable(Box<CreateExternalTable>),
    /// `DROP TABLE`: DataFusion drops, Sluice forgets it durably.
    DropTable {
        plan: LogicalPlan,
        names: Vec<String>,
    },
    CreateStream(Box<CreateStream>),
    /// `CREATE [OR REPLACE] VIEW`: DataFusion registers the view, Sluice
    /// records it durably (`sql`).
    CreateView {
        plan: LogicalPlan,
        name: String,
        sql: String,
        replace: bool,
        if_not_exists: bool,
    },
    /// `DROP VIEW`.
    DropView {
        names: Vec<String>,
        if_exists: bool,
    },
    /// `CREATE SINK` (`sink: true`) or `CREATE MATERIALIZED VIEW`.
    CreateJob {
        create: Box<CreateJob>,
        sink: bool,
    },
    /// `DROP SINK` / `DROP MATERIALIZED VIEW`.
    DropJob {
        name: String,
        sink: bool,
        if_exists: bool,
    },
    /// `ALTER SINK name SET (...)`.
    AlterSink {
        name: String,
        options: BTreeMap<String, String>,
    },
    /// `SHOW SINKS` / `SHOW MATERIALIZED VIEWS`.
    ShowJobObjects {
        sink: bool,
    },
    ShowJobs,
    ShowCheckpoints,
    /// `SUBSCRIBE`, with the schema of its rows.
    Subscribe {
        target: crate::parser::SubscribeTarget,
        copy: bool,
        schema: SchemaRef,
    },
    /// `EXPLAIN CREATE SINK|MATERIALIZED VIEW`: the streaming plan.
    ExplainJob {
        create: Box<CreateJob>,
        sink: bool,
    },
    DropStream {
        name: String,
        if_exists: bool,
    },
    ShowStreams,
    SetVar {
        name: String,
        value: String,
    },
    ShowVar {
        name: String,
    },
    TransactionStart,
    TransactionEnd {
        rollback: bool,
    },
    /// `CREATE ROLE`, `ALTER ROLE`, `DROP ROLE`.
    Role(crate::roles::RoleChange),
    /// `CREATE SECRET` / `ALTER SECRET` (`replace`).
    CreateSecret {
        name: String,
        if_not_exists: bool,
        replace: bool,
        value: String,
    },
    DropSecret {
        name: String,
        if_exists: bool,
    },
    ShowSecrets,
    /// `COPY (query) TO STDOUT`: the query's rows in COPY's format.
    CopyOut {
        plan: LogicalPlan,
        options: crate::parser::CopyOptions,
    },
    /// `COPY table FROM STDIN`.
    CopyIn(crate::copy::CopyInTarget),
    /// `DECLARE name CURSOR [WITH HOLD] FOR query`.
    DeclareCursor {
        name: String,
        plan: LogicalPlan,
        hold: bool,
        /// `SCROLL`: it keeps the rows it has read, to move back.
        scroll: bool,
        /// The query's Postgres column names (see [`Prepared`]).
        names: Option<Arc<[String]>>,
    },
    /// `FETCH [direction] [FROM | IN] name`, with the cursor's row schema.
    Fetch {
        name: String,
        motion: Motion,
        schema: SchemaRef,
    },
    /// `MOVE [direction] [FROM | IN] name`: a FETCH that returns no rows.
    Move {
        name: String,
        motion: Motion,
    },
    /// `CLOSE name` (None: `CLOSE ALL`).
    CloseCursor {
        name: Option<String>,
    },
    /// A statement accepted with nothing to do (`SAVEPOINT`, `RELEASE`,
    /// `ROLLBACK TO`: Sluice's transactions hold no changes to undo),
    /// answered with its tag.
    Accepted {
        tag: &'static str,
    },
    /// `RESET name` / `RESET ALL` (None): settings back to a new
    /// session's.
    ResetVar {
        name: Option<String>,
    },
    /// `DISCARD ALL`: every setting reset and every cursor closed.
    DiscardAll,
}

impl Action {
    /// What the action changes, for a role that may only read: `None` for
    /// actions that read (queries, SHOW, SUBSCRIBE, EXPLAIN, SET).
    fn writes(&self) -> Option<&'static str> {
        match self {
            Action::Plan(plan) => match plan {
                LogicalPlan::Dml(_) => Some("change table data"),
                LogicalPlan::Ddl(_) => Some("create or drop objects"),
                LogicalPlan::Copy(_) => Some("write files with COPY"),
                _ => None,
            },
            Action::CreateTable(_) => Some("create tables"),
            Action::DropTable { .. } => Some("drop tables"),
            Action::CreateStream(_) => Some("create streams"),
            Action::CreateView { .. } => Some("create views"),
            Action::DropView { .. } => Some("drop views"),
            Action::DropStream { .. } => Some("drop streams"),
            Action::CreateJob { .. } => Some("create sinks or materialized views"),
            Action::DropJob { .. } => Some("drop sinks or materialized views"),
            Action::AlterSink { .. } => Some("alter sinks"),
            Action::Role(_) => Some("manage roles"),
            Action::CreateSecret { .. } | Action::DropSecret { .. } => Some("manage secrets"),
            Action::ShowJobObjects { .. }
            | Action::ShowJobs
            | Action::ShowCheckpoints
            | Action::Subscribe { .. }
            | Action::ExplainJob { .. }
            | Action::ShowStreams
            | Action::ShowSecrets
            | Action::SetVar { .. }
            | Action::ShowVar { .. }
            | Action::TransactionStart
            | Action::TransactionEnd { .. }
            | Action::CopyOut { .. }
            | Action::CopyIn(_)
            | Action::DeclareCursor { .. }
            | Action::Fetch { .. }
            | Action::Move { .. }
            | Action::CloseCursor { .. }
            | Action::Accepted { .. }
            | Action::ResetVar { .. }
            | Action::DiscardAll => None,
        }
    }
}

impl Prepared {
    /// The schema of the rows this statement returns, or `None` for a
    /// command that returns none.
    pub fn result_schema(&self) -> Option<SchemaRef> {
        match &self.action {
            Action::Plan(plan) => returns_rows(plan).then(|| {
                let schema = plan.schema().inner().clone();
                match &self.names {
                    Some(names) => renamed_schema(&schema, names),
                    None => schema,
                }
            }),
            Action::ShowVar { name } => Some(show_schema(name)),
            Action::ShowStreams => Some(show_streams_schema()),
            Action::ShowSecrets => Some(Arc::new(Schema::new(vec![Field::new(
                "name",
                DataType::Utf8,
                false,
            )]))),
            Action::ShowJobObjects { sink } => Some(crate::jobs::show_objects_schema(*sink)),
            Action::ShowJobs => Some(crate::jobs::show_jobs_schema()),
            Action::ShowCheckpoints => Some(crate::jobs::show_checkpoints_schema()),
            Action::ExplainJob { .. } => Some(crate::jobs::explain_schema()),
            Action::Subscribe { schema, .. } => Some(schema.clone()),
            Action::Fetch { schema, .. } => Some(schema.clone()),
            _ => None,
        }
    }

    /// Whether this is a `SUBSCRIBE` (rows keep coming until cancelled).
    pub fn is_subscribe(&self) -> bool {
        matches!(self.action, Action::Subscribe { .. })
    }

    /// Parameter placeholders (`$1`, `$2`, ...) and the types DataFusion
    /// inferred for them, in order.
    pub fn parameter_types(&self) -> Result<Vec<Option<DataType>>> {
        let Action::Plan(plan) = &self.action else {
            return Ok(vec![]);
        };
        let mut types = plan.get_parameter_types()?;
        for (id, t) in any_parameter_types(plan) {
            if let Some(slot @ None) = types.get_mut(&id) {
                *slot = Some(t);
            }
        }
        let mut indexed: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(name, ty)| {
                name.strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .map(|n| (n, ty))
            })
            .collect();
        indexed.sort_by_key(|(n, _)| *n);
        let count = indexed.last().map(|(n, _)| *n).unwrap_or(0);
        let mut out = vec![None; count];
        for (n, ty) in indexed {
            out[n - 1] = ty;
        }
        Ok(out)
    }
}

/// Types of parameters DataFusion leaves open:
/// - in `x = ANY($1)` (planned as `array_has($1, x)`): a list of `x`'s
///   type. Without one, a client that sends the array as text
///   (node-postgres: `{"north","east"}`) would have it read as one string,
///   and the query would silently match nothing.
/// - in `$1::bigint`: the cast's type, as Postgres infers it (pgx prepares
///   the statement and encodes its parameters by the types it is told).
fn any_parameter_types(plan: &LogicalPlan) -> Vec<(String, DataType)> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, ExprSchemable};
    let mut found = vec![];
    let _ = plan.apply_with_subqueries(|node| {
        let inputs = node.inputs();
        let Some(input) = inputs.first() else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let schema = input.schema().clone();
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::Cast(datafusion::logical_expr::Cast { expr, field })
                | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) = e
                    && let Expr::Placeholder(p) = expr.as_ref()
                {
                    found.push((p.id.clone(), field.data_type().clone()));
                }
                if let Expr::ScalarFunction(f) = e
                    && matches!(f.name(), "array_has" | "array_contains")
                    && let [Expr::Placeholder(p), x] = f.args.as_slice()
                    && let Ok(t) = x.get_type(&schema)
                {
                    found.push((
                        p.id.clone(),
                        DataType::List(Arc::new(Field::new_list_field(t, true))),
                    ));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A cursor's name as Postgres folds it: as written when quoted, else in
/// lower case.
fn cursor_name(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

fn no_cursor(name: &str) -> SluiceError {
    SluiceError::new(
        ErrorKind::InvalidCursorName,
        format!("cursor \"{name}\" does not exist"),
    )
}

/// Where a FETCH moves a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    /// The next n rows (None: all that are left).
    Forward(Option<u64>),
    /// The n rows before the current one, nearest first (None: all).
    Backward(Option<u64>),
    /// Row n from the start (n < 0: from the end; 0: before the first).
    Absolute(i64),
    /// Row n from the current one (0: the current row again).
    Relative(i64),
}

/// The motion a FETCH direction asks for.
fn fetch_motion(direction: &ast::FetchDirection) -> Result<Motion> {
    use ast::FetchDirection as D;
    let number = |v: &ast::ValueWithSpan| -> Result<i64> {
        match &v.value {
            ast::Value::Number(n, _) => n
                .parse::<i64>()
                .map_err(|_| SluiceError::invalid_parameter(format!("FETCH count {n}: a number of rows"))),
            other => Err(SluiceError::invalid_parameter(format!("FETCH count {other}"))),
        }
    };
    // A negative count goes the other way, as in Postgres.
    let forward = |n: i64| {
        if n >= 0 {
            Motion::Forward(Some(n as u64))
        } else {
            Motion::Backward(Some(n.unsigned_abs()))
        }
    };
    Ok(match direction {
        D::Next => Motion::Forward(Some(1)),
        D::Prior => Motion::Backward(Some(1)),
        D::First => Motion::Absolute(1),
        D::Last => Motion::Absolute(-1),
        D::Absolute { limit } => Motion::Absolute(number(limit)?),
        D::Relative { limit } => Motion::Relative(number(limit)?),
        D::Count { limit } | D::Forward { limit: Some(limit) } => forward(number(limit)?),
        D::Forward { limit: None } => Motion::Forward(Some(1)),
        D::All | D::ForwardAll => Motion::Forward(None),
        D::Backward { limit: Some(limit) } => match forward(number(limit)?) {
            Motion::Forward(n) => Motion::Backward(n),
            Motion::Backward(n) => Motion::Forward(n),
            other => other,
        },
        D::Backward { limit: None } => Motion::Backward(Some(1)),
        D::BackwardAll => Motion::Backward(None),
    })
}

/// `schema` with its fields named `names` (which may repeat a name).
fn renamed_schema(schema: &SchemaRef, names: &[String]) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(f, n)| f.as_ref().clone().with_name(n))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A result's rows with their columns named `names`.
fn renamed_rows(rows: SendableRecordBatchStream, names: Arc<[String]>) -> SendableRecordBatchStream {
    let schema = renamed_schema(&rows.schema(), &names);
    let batches = rows.map(move |b| {
        let b = b?;
        let schema = renamed_schema(&b.schema(), &names);
        Ok(RecordBatch::try_new_with_options(
            schema,
            b.columns().to_vec(),
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

fn returns_rows(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_)
    )
}

fn show_streams_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        Field::new("options", DataType::Utf8, false),
    ]))
}

fn one_batch(schema: SchemaRef, columns: Vec<arrow::array::ArrayRef>) -> Result<Output> {
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(datafusion::error::DataFusionError::from)?;
    let stream = futures::stream::once(async move { Ok(batch) });
    Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
        schema, stream,
    ))))
}

fn show_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

/// One client's session: settings over the shared catalog.
pub struct Session {
    pub(crate) engine: Engine,
    pub(crate) ctx: SessionContext,
    pub(crate) vars: BTreeMap<String, String>,
    /// Who is logged in, and whether they may change things (see
    /// [`crate::roles`]); a session the server has not told is a superuser
    /// (the engine's own use and tests).
    user: String,
    superuser: bool,
    /// Open cursors (`DECLARE ... CURSOR FOR query`), by name.
    cursors: HashMap<String, Cursor>,
    /// Settings the client sent at connect (`application_name`, `TimeZone`,
    /// `options=-c name=value`): this session's defaults, which `RESET`
    /// goes back to, as in Postgres.
    startup_vars: BTreeMap<String, String>,
    /// What `set_config(name, value, false)` set while a statement ran,
    /// applied as `SET` before the next one is planned or run.
    pending_settings: crate::functions::PendingSettings,
}

/// A cursor: its query's rows, read as FETCH asks for them.
struct Cursor {
    /// In a mutex only so that a session is `Sync`; FETCH reaches it
    /// through `&mut` (`get_mut`), never by locking.
    rows: std::sync::Mutex<SendableRecordBatchStream>,
    schema: SchemaRef,
    /// Rows of the last batch that a FETCH did not take.
    pending: Option<RecordBatch>,
    /// `WITH HOLD`: it outlives the transaction it was declared in.
    hold: bool,
    /// `SCROLL`: the rows read so far and where the cursor is among them.
    scroll: Option<Scroll>,
}

/// A scrollable cursor's rows, kept as they are read (as Postgres keeps
/// them), and its position: 0 before the first row, n on row n, one past
/// the last once it has gone beyond the end.
#[derive(Default)]
struct Scroll {
    read: Vec<RecordBatch>,
    /// Rows in `read`.
    len: u64,
    /// The query has no more rows.
    done: bool,
    position: u64,
}

impl Cursor {
    /// The next `n` rows (None: all that are left) of the query.
    async fn next_rows(&mut self, n: Option<u64>) -> Result<Vec<RecordBatch>> {
        let rows = self.rows.get_mut().expect("cursor lock");
        let mut want = n.unwrap_or(u64::MAX);
        let mut batches = vec![];
        while want > 0 {
            let batch = match self.pending.take() {
                Some(b) => b,
                None => match rows.next().await {
                    Some(b) => b?,
                    None => break,
                },
            };
            let len = batch.num_rows() as u64;
            if len > want {
                let want_rows = want as usize;
                self.pending = Some(batch.slice(want_rows, batch.num_rows() - want_rows));
                batches.push(batch.slice(0, want_rows));
                want = 0;
            } else {
                want -= len;
                batches.push(batch);
            }
        }
        Ok(batches)
    }

    /// Reads the query until row `row` (1-based; `u64::MAX`: all of it) is
    /// kept, or to its end.
    async fn read_upto(&mut self, row: u64) -> Result<()> {
        let Some(scroll) = self.scroll.as_ref() else {
            return Ok(());
        };
        let missing = row.saturating_sub(scroll.len);
        if missing == 0 || scroll.done {
            return Ok(());
        }
        let ask = if row == u64::MAX { None } else { Some(missing) };
        let batches = self.next_rows(ask).await?;
        let got: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let scroll = self.scroll.as_mut().expect("a scroll cursor");
        scroll.len += got;
        scroll
            .read
            .extend(batches.into_iter().filter(|b| b.num_rows() > 0));
        if ask.is_none_or(|a| got < a) {
            scroll.done = true;
        }
        Ok(())
    }

    /// The rows a FETCH returns, moving the cursor.
    async fn fetch(&mut self, motion: Motion) -> Result<Vec<RecordBatch>> {
        if self.scroll.is_none() {
            return match motion {
                Motion::Forward(n) => self.next_rows(n).await,
                _ => Err(SluiceError::new(
                    ErrorKind::ObjectNotInPrerequisiteState,
                    "cursor can only scan forward: declare it with SCROLL to move backward or to a row",
                )),
            };
        }
        let position = self.scroll.as_ref().map_or(0, |s| s.position);
        // The rows to return, by number, and where the cursor ends up.
        let (rows, end): (Vec<u64>, u64) = match motion {
            Motion::Forward(n) => {
                let last = n.map_or(u64::MAX, |n| position.saturating_add(n));
                self.read_upto(last).await?;
                let len = self.scroll.as_ref().map_or(0, |s| s.len);
                let rows: Vec<u64> = (position + 1..=last.min(len)).collect();
                let end = if last > len { len + 1 } else { last };
                (rows, if n == Some(0) { position } else { end })
            }
            Motion::Backward(n) => {
                let first = n.map_or(0, |n| position.saturating_sub(n));
                let rows: Vec<u64> = (first.max(1)..position).rev().collect();
                (rows, first)
            }
            Motion::Absolute(n) | Motion::Relative(n) => {
                let target = match motion {
                    Motion::Relative(r) => position as i64 + r,
                    _ if n < 0 => {
                        self.read_upto(u64::MAX).await?;
                        let len = self.scroll.as_ref().map_or(0, |s| s.len);
                        len as i64 + 1 + n
                    }
                    _ => n,
                };
                if target < 1 {
                    (vec![], 0)
                } else {
                    let target = target as u64;
                    self.read_upto(target).await?;
                    let len = self.scroll.as_ref().map_or(0, |s| s.len);
                    if target <= len {
                        (vec![target], target)
                    } else {
                        (vec![], len + 1)
                    }
                }
            }
        };
        let scroll = self.scroll.as_mut().expect("a scroll cursor");
        scroll.position = end;
        if matches!(motion, Motion::Forward(Some(0))) || motion == Motion::Backward(Some(0)) {
            // FETCH 0 / BACKWARD 0: the current row again.
            let current: Vec<u64> = (1..=scroll.len)
                .contains(&position)
                .then_some(position)
                .into_iter()
                .collect();
            return scroll.rows(&self.schema, &current);
        }
        scroll.rows(&self.schema, &rows)
    }
}

impl Scroll {
    /// Rows `numbers` (1-based, in that order) of what has been read.
    fn rows(&self, schema: &SchemaRef, numbers: &[u64]) -> Result<Vec<RecordBatch>> {
        if numbers.is_empty() {
            return Ok(vec![]);
        }
        let all = arrow::compute::concat_batches(schema, &self.read)?;
        let indices = arrow::array::UInt64Array::from_iter_values(numbers.iter().map(|n| n - 1));
        Ok(vec![arrow::compute::take_record_batch(&all, &indices)?])
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Parses SQL text (one or more statements): Sluice's own statements
    /// plus everything DataFusion's parser takes, in the Postgres dialect.
    pub fn parse(sql: &str) -> Result<Vec<Statement>> {
        parser::parse(sql)
    }

    /// Plans one statement.
    /// `options` with references to secrets (`key = SECRET name`) replaced
    /// by the secrets' values.
    pub(crate) async fn resolve_secrets(
        &self,
        options: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let catalog = self.engine.inner.catalog.lock().await;
        crate::secrets::resolve(options, |n| catalog.secret(n).cloned())
    }

    /// Applies the settings a client sent in its startup message (pgwire
    /// keeps them by name; `options` may hold `-c name=value` pairs), and
    /// keeps them as the session's defaults. Names that are not settings
    /// (`user`, `database`) are left out; a value a setting refuses is
    /// logged and skipped, so that a login never fails over one.
    pub fn apply_startup_parameters<'a>(&mut self, params: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut settings: Vec<(String, String)> = vec![];
        for (name, value) in params {
            let name = name.to_ascii_lowercase();
            if name == "options" {
                settings.extend(startup_options(value));
            } else if self.vars.contains_key(&name) && !READ_ONLY_SETTINGS.contains(&name.as_str()) {
                settings.push((name, value.to_string()));
            }
        }
        for (name, value) in settings {
            match self.set_var(&name, &value) {
                Ok(()) => {
                    self.startup_vars.insert(name, value);
                }
                Err(e) => tracing::warn!(setting = %name, %value, error = %e, "startup setting not applied"),
            }
        }
        self.register_session_functions();
    }

    /// The logged-in user and whether they are a superuser.
    pub fn set_user(&mut self, user: &str, superuser: bool) {
        self.user = user.to_string();
        self.superuser = superuser;
        self.vars
            .insert("is_superuser".into(), if superuser { "on" } else { "off" }.into());
        self.register_session_functions();
    }

    /// The functions whose value is the session's: `current_user` (and
    /// `session_user`, `user`, `current_role`), `current_setting(name)`,
    /// and `version()` (registered here so that nothing installed on the
    /// template later shadows it).
    fn register_session_functions(&self) {
        use crate::functions::{CurrentSetting, FixedText, postgres_version};
        self.ctx.register_udf(FixedText::udf(
            "current_user",
            &["session_user", "user", "current_role"],
            self.user.clone(),
        ));
        self.ctx.register_udf(CurrentSetting::udf(self.vars.clone()));
        self.ctx.register_udf(crate::functions::SetConfig::udf(
            self.pending_settings.clone(),
            READ_ONLY_SETTINGS.iter().map(|s| s.to_string()).collect(),
        ));
        self.ctx.register_udf(FixedText::udf(
            "version",
            &[],
            postgres_version(PG_SERVER_VERSION),
        ));
    }

    /// Applies what `set_config` set in earlier statements, as `SET` would
    /// (the server calls this before planning each statement; [`Self::execute`]
    /// does too).
    pub fn apply_pending_settings(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending_settings.lock().expect("settings lock"));
        if pending.is_empty() {
            return Ok(());
        }
        for (name, value) in pending {
            self.set_var(&name, &value)?;
        }
        self.register_session_functions();
        Ok(())
    }

    /// The row schema of the open cursor `name`.
    pub fn cursor_schema(&self, name: &str) -> Option<SchemaRef> {
        self.cursors.get(name).map(|c| c.schema.clone())
    }

    /// The session's `statement_timeout`, if one is set.
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        self.vars
            .get("statement_timeout")
            .and_then(|v| parse_statement_timeout(v).ok().flatten())
    }

    /// The engine this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub async fn prepare(&self, statement: Statement) -> Result<Prepared> {
        let action = match statement {
            Statement::DataFusion(s) => return self.prepare_statement(s).await,
            Statement::CreateStream(c) => {
                return Ok(Prepared {
                    action: Action::CreateStream(Box::new(c)),
                    names: None,
                });
            }
            Statement::DropStream { name, if_exists } => {
                return Ok(Prepared {
                    action: Action::DropStream {
                        name: normalize_name(&name),
                        if_exists,
                    },
                    names: None,
                });
            }
            Statement::ShowStreams => {
                return Ok(Prepared {
                    action: Action::ShowStreams,
                    names: None,
                });
            }
            Statement::CreateSecret {
                name,
                if_not_exists,
                replace,
                value,
            } => Action::CreateSecret {
                name: normalize_name(&name),
                if_not_exists,
                replace,
                value,
            },
            Statement::DropSecret { name, if_exists } => Action::DropSecret {
                name: normalize_name(&name),
                if_exists,
            },
            Statement::ShowSecrets => Action::ShowSecrets,
            Statement::CreateSink(create) => Action::CreateJob {
                create: Box::new(create),
                sink: true,
            },
            Statement::CreateMaterializedView(create) => Action::CreateJob {
                create: Box::new(create),
                sink: false,
            },
            Statement::AlterSink { name, options } => Action::AlterSink {
                name: normalize_name(&name),
                options,
            },
            Statement::DropSink { name, if_exists } => Action::DropJob {
                name: normalize_name(&name),
                sink: true,
                if_exists,
            },
            Statement::DropMaterializedView { name, if_exists } => Action::DropJob {
                name: normalize_name(&name),
                sink: false,
                if_exists,
            },
            Statement::ShowSinks => Action::ShowJobObjects { sink: true },
            Statement::ShowMaterializedViews => Action::ShowJobObjects { sink: false },
            Statement::ShowJobs => Action::ShowJobs,
            Statement::ShowCheckpoints => Action::ShowCheckpoints,
            Statement::Move { name, direction } => {
                let name = cursor_name(&name);
                self.cursors.get(&name).ok_or_else(|| no_cursor(&name))?;
                Action::Move {
                    name,
                    motion: fetch_motion(&direction)?,
                }
            }
            Statement::Subscribe { target, copy } => {
                let schema = self.subscribe_schema(&target).await?;
                Action::Subscribe { target, copy, schema }
            }
            Statement::CopyIn {
                table,
                columns,
                options,
            } => Action::CopyIn(self.copy_in_target(&table, &columns, options).await?),
            Statement::CopyOut { query, options } => {
                let prepared = self
                    .prepare_statement(DFStatement::Statement(Box::new(SqlStatement::Query(query))))
                    .await?;
                let Action::Plan(plan) = prepared.action else {
                    return Err(SluiceError::internal("COPY of a query that is not one"));
                };
                return Ok(Prepared {
                    action: Action::CopyOut { plan, options },
                    names: prepared.names,
                });
            }
            Statement::Explain(inner) => match *inner {
                Statement::CreateSink(create) => Action::ExplainJob {
                    create: Box::new(create),
                    sink: true,
                },
                Statement::CreateMaterializedView(create) => Action::ExplainJob {
                    create: Box::new(create),
                    sink: false,
                },
                other => {
                    return Err(SluiceError::not_supported(format!("EXPLAIN {other}")));
                }
            },
        };
        Ok(Prepared { action, names: None })
    }

    async fn prepare_statement(&self, statement: DFStatement) -> Result<Prepared> {
        let statement = match statement {
            DFStatement::Statement(mut stmt) => {
                rewrite_window_calls(&mut *stmt);
                DFStatement::Statement(stmt)
            }
            other => other,
        };
        let mut statement = statement;
        let items = match &mut statement {
            DFStatement::Statement(s) => {
                let mut items = crate::colnames::select_items(s);
                crate::colnames::unnest_set_returning(s);
                if let Some(items) = items.as_mut() {
                    crate::colnames::alias_duplicates(s, items);
                }
                items
            }
            _ => None,
        };
        let mut prepared = self
            .prepare_inner(statement)
            .await
            .map_err(|e| self.explain_missing(e))?;
        if let (Some(items), Action::Plan(plan)) = (items, &prepared.action)
            && returns_rows(plan)
        {
            let fields: Vec<String> = plan.schema().fields().iter().map(|f| f.name().clone()).collect();
            prepared.names = crate::colnames::rename(&items, &fields).map(Arc::from);
        }
        Ok(prepared)
    }

    /// A table that is in the durable catalog but failed to restore at start
    /// (its storage was unreachable) is not "undefined": say what happened.
    fn explain_missing(&self, e: SluiceError) -> SluiceError {
        if e.kind() != ErrorKind::UndefinedTable {
            return e;
        }
        let message = e.to_string();
        let unavailable = self
            .engine
            .inner
            .unavailable
            .lock()
            .expect("unavailable map poisoned");
        for (name, reason) in unavailable.iter() {
            if message.contains(&format!(".{name}'")) || message.contains(&format!("'{name}'")) {
                return SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!(
                        "table {name} is in the catalog but could not be restored at start: {reason}; \
                         once its storage is back, CREATE it again or restart the server"
                    ),
                );
            }
        }
        e
    }

    async fn prepare_inner(&self, statement: DFStatement) -> Result<Prepared> {
        let action = match statement {
            DFStatement::CreateExternalTable(create) => Action::CreateTable(Box::new(create)),
            DFStatement::Statement(stmt) => match *stmt {
                ref role if crate::roles::role_change(role).is_some() => {
                    Action::Role(crate::roles::role_change(role).expect("a role statement")?)
                }
                SqlStatement::StartTransaction { .. } => Action::TransactionStart,
                SqlStatement::Commit { .. } => Action::TransactionEnd { rollback: false },
                SqlStatement::Rollback {
                    savepoint: Some(_), ..
                } => Action::Accepted { tag: "ROLLBACK" },
                SqlStatement::Rollback { .. } => Action::TransactionEnd { rollback: true },
                SqlStatement::Savepoint { .. } => Action::Accepted { tag: "SAVEPOINT" },
                SqlStatement::Declare { stmts } => self.plan_declare(stmts).await?,
                SqlStatement::Fetch { name, direction, .. } => {
                    let name = cursor_name(&name);
                    let motion = fetch_motion(&direction)?;
                    let cursor = self.cursors.get(&name).ok_or_else(|| no_cursor(&name))?;
                    Action::Fetch {
                        schema: cursor.schema.clone(),
                        name,
                        motion,
                    }
                }
                SqlStatement::Close { cursor } => Action::CloseCursor {
                    name: match cursor {
                        ast::CloseCursor::All => None,
                        ast::CloseCursor::Specific { name } => Some(cursor_name(&name)),
                    },
                },
                SqlStatement::ReleaseSavepoint { .. } => Action::Accepted { tag: "RELEASE" },
                SqlStatement::Discard { object_type } => match object_type {
                    ast::DiscardObject::ALL => Action::DiscardAll,
                    // No plans, sequences or temporary objects are kept
                    // per session: nothing to drop.
                    ast::DiscardObject::PLANS => Action::Accepted { tag: "DISCARD PLANS" },
                    ast::DiscardObject::SEQUENCES => Action::Accepted {
                        tag: "DISCARD SEQUENCES",
                    },
                    ast::DiscardObject::TEMP => Action::Accepted { tag: "DISCARD TEMP" },
                },
                // LISTEN is not supported, so no session listens to
                // anything (asyncpg's pool resets connections with it).
                SqlStatement::UNLISTEN { .. } => Action::Accepted { tag: "UNLISTEN" },
                SqlStatement::Set(set) => self.plan_set(set).await?,
                SqlStatement::ShowVariable { variable } => {
                    let name = variable
                        .iter()
                        .map(|i| i.value.to_ascii_lowercase())
                        .collect::<Vec<_>>()
                        .join(" ");
                    let name = match name.as_str() {
                        "time zone" => "timezone".to_string(),
                        "transaction isolation level" => "transaction_isolation".to_string(),
                        // SHOW streaming.checkpoint_interval: dotted names.
                        _ if !self.vars.contains_key(&name) => name.replace(' ', "."),
                        _ => name,
                    };
                    if self.vars.contains_key(&name) {
                        Action::ShowVar { name }
                    } else {
                        self.plan_with_datafusion(SqlStatement::ShowVariable { variable })
                            .await?
                    }
                }
                SqlStatement::ShowTables { .. } => {
                    let plan = self
                        .ctx
                        .state()
                        .create_logical_plan(
                            "SELECT table_name AS name, \
                             CASE table_type WHEN 'BASE TABLE' THEN 'table' \
                             WHEN 'VIEW' THEN 'view' ELSE lower(table_type) END AS kind \
                             FROM information_schema.tables \
                             WHERE table_schema = 'public' \
                             AND table_name NOT IN ('sluice_commits', 'sluice_commit_sources') \
                             ORDER BY table_name",
                        )
                        .await?;
                    Action::Plan(plan)
                }
                SqlStatement::Drop {
                    object_type: ast::ObjectType::Table,
                    ref names,
                    ..
                } => {
                    let names = names.iter().map(normalize_name).collect();
                    let plan = self
                        .ctx
                        .state()
                        .statement_to_plan(DFStatement::Statement(stmt))
                        .await?;
                    Action::DropTable { plan, names }
                }
                SqlStatement::CreateTable(ct) if ct.external => {
                    return Err(SluiceError::new(
                        ErrorKind::Syntax,
                        "CREATE EXTERNAL TABLE needs STORED AS PARQUET|CSV|JSON and LOCATION '<path or url>'",
                    ));
                }
                SqlStatement::CreateTable(_) => {
                    return Err(SluiceError::not_supported(
                        "CREATE TABLE: Sluice keeps no data of its own; declare files as \
                         CREATE EXTERNAL TABLE name STORED AS PARQUET|CSV|JSON LOCATION '...'",
                    ));
                }
                SqlStatement::Grant(_) | SqlStatement::Revoke(_) => {
                    return Err(SluiceError::not_supported(
                        "GRANT and REVOKE on objects are not supported: a role with SUPERUSER \
                         changes everything, one without reads every table and changes nothing \
                         (ALTER ROLE name SUPERUSER | NOSUPERUSER)",
                    ));
                }
                SqlStatement::CreateView(mut create) if !create.materialized => {
                    crate::streaming::window::rewrite_window_calls(&mut create.query);
                    let name = normalize_name(&create.name);
                    let (replace, if_not_exists) = (create.or_replace, create.if_not_exists);
                    let sql = SqlStatement::CreateView(create.clone()).to_string();
                    let plan = self
                        .ctx
                        .state()
                        .statement_to_plan(DFStatement::Statement(Box::new(SqlStatement::CreateView(create))))
                        .await?;
                    Action::CreateView {
                        plan,
                        name,
                        sql,
                        replace,
                        if_not_exists,
                    }
                }
                SqlStatement::Drop {
                    object_type: ast::ObjectType::View,
                    ref names,
                    if_exists,
                    ..
                } => Action::DropView {
                    names: names.iter().map(normalize_name).collect(),
                    if_exists,
                },
                other => self.plan_with_datafusion(other).await?,
            },
            DFStatement::CopyTo(copy) => {
                // COPY ... TO 's3://...' writes through the same storage as
                // tables, with the server's settings.
                self.register_store(&copy.target, &BTreeMap::new())?;
                Action::Plan(
                    self.ctx
                        .state()
                        .statement_to_plan(DFStatement::CopyTo(copy))
                        .await?,
                )
            }
            // DataFusion parses RESET itself; its own settings stay its.
            DFStatement::Reset(datafusion::sql::parser::ResetStatement::Variable(name))
                if !name.to_string().to_ascii_lowercase().starts_with("datafusion.") =>
            {
                let name = name.to_string().to_ascii_lowercase();
                Action::ResetVar {
                    name: (name != "all").then_some(name),
                }
            }
            other => Action::Plan(self.ctx.state().statement_to_plan(other).await?),
        };
        Ok(Prepared { action, names: None })
    }

    /// `DECLARE name [BINARY] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR query`.
    async fn plan_declare(&self, mut stmts: Vec<ast::Declare>) -> Result<Action> {
        let refuse = |what: &str| {
            SluiceError::not_supported(format!("DECLARE {what}: Sluice's cursors are query cursors"))
        };
        if stmts.len() != 1 {
            return Err(refuse("of several names"));
        }
        let d = stmts.remove(0);
        if d.declare_type != Some(ast::DeclareType::Cursor) || d.names.len() != 1 {
            return Err(refuse("of a variable"));
        }
        let Some(query) = d.for_query else {
            return Err(refuse("without FOR query"));
        };
        let name = cursor_name(&d.names[0]);
        if self.cursors.contains_key(&name) {
            return Err(SluiceError::new(
                ErrorKind::DuplicateCursor,
                format!("cursor \"{name}\" already exists"),
            ));
        }
        let prepared =
            Box::pin(self.prepare_statement(DFStatement::Statement(Box::new(SqlStatement::Query(query)))))
                .await?;
        let Action::Plan(plan) = prepared.action else {
            return Err(SluiceError::internal("a cursor over a query that is not one"));
        };
        Ok(Action::DeclareCursor {
            name,
            plan,
            hold: d.hold == Some(true),
            scroll: d.scroll == Some(true),
            names: prepared.names,
        })
    }

    async fn plan_with_datafusion(&self, stmt: SqlStatement) -> Result<Action> {
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
            .await?;
        Ok(Action::Plan(plan))
    }

    async fn plan_set(&self, set: Set) -> Result<Action> {
        match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = variable.to_string().to_ascii_lowercase();
                if name.starts_with("datafusion.") {
                    return self
                        .plan_with_datafusion(SqlStatement::Set(Set::SingleAssignment {
                            scope: None,
                            hivevar: false,
                            variable,
                            values,
                        }))
                        .await;
                }
                let value = values.iter().map(expr_to_setting).collect::<Vec<_>>().join(", ");
                Ok(Action::SetVar { name, value })
            }
            Set::SetTimeZone { value, .. } => Ok(Action::SetVar {
                name: "timezone".into(),
                value: expr_to_setting(&value),
            }),
            // SET NAMES, SET TRANSACTION ...: accepted, nothing to change.
            Set::SetNames { charset_name, .. } => Ok(Action::SetVar {
                name: "client_encoding".into(),
                value: charset_name.to_string(),
            }),
            Set::SetTransaction { .. } => Ok(Action::SetVar {
                name: "transaction_isolation".into(),
                value: self
                    .vars
                    .get("transaction_isolation")
                    .cloned()
                    .unwrap_or_default(),
            }),
            other => Err(SluiceError::not_supported(format!(
                "{other}: only SET name = value, SET TIME ZONE and SET NAMES are supported"
            ))),
        }
    }

    /// Runs a prepared statement. `params` binds `$n` placeholders.
    pub async fn execute(&mut self, prepared: &Prepared, params: Option<ParamValues>) -> Result<Output> {
        self.apply_pending_settings()?;
        if !self.superuser
            && let Some(what) = prepared.action.writes()
        {
            return Err(SluiceError::new(
                ErrorKind::InsufficientPrivilege,
                format!(
                    "permission denied: role \"{}\" reads only (NOSUPERUSER) and may not {what}",
                    self.user
                ),
            ));
        }
        match &prepared.action {
            Action::CreateSecret {
                name,
                if_not_exists,
                replace,
                value,
            } => {
                let mut catalog = self.engine.inner.catalog.lock().await;
                let exists = catalog.secret(name).is_some();
                if *replace && !exists {
                    return Err(SluiceError::new(
                        ErrorKind::UndefinedObject,
                        format!("secret \"{name}\" does not exist"),
                    ));
                }
                if !*replace && exists {
                    if *if_not_exists {
                        return Ok(Output::Command {
                            tag: "CREATE SECRET".into(),
                            rows: None,
                        });
                    }
                    return Err(SluiceError::new(
                        ErrorKind::DuplicateObject,
                        format!("secret \"{name}\" already exists"),
                    ));
                }
                catalog.put_secret(name, value)?;
                Ok(Output::Command {
                    tag: if *replace { "ALTER SECRET" } else { "CREATE SECRET" }.into(),
                    rows: None,
                })
            }
            Action::DropSecret { name, if_exists } => {
                let mut catalog = self.engine.inner.catalog.lock().await;
                // Not while a stream or sink refers to it.
                for entry in catalog.entries() {
                    let options = match parser::parse(&entry.sql)?.pop() {
                        Some(Statement::CreateStream(c)) => c.options,
                        Some(Statement::CreateSink(c)) => c.options,
                        Some(Statement::DataFusion(DFStatement::CreateExternalTable(c))) => c
                            .options
                            .iter()
                            .map(|(k, v)| (k.clone(), value_to_string(v)))
                            .collect(),
                        _ => continue,
                    };
                    if options
                        .values()
                        .any(|v| crate::secrets::reference(v) == Some(name.as_str()))
                    {
                        return Err(SluiceError::new(
                            ErrorKind::DependentObjectsStillExist,
                            format!(
                                "cannot drop secret \"{name}\": {} {} uses it",
                                entry.kind.noun(),
                                entry.name
                            ),
                        ));
                    }
                }
                if !catalog.remove_secret(name)? && !*if_exists {
                    return Err(SluiceError::new(
                        ErrorKind::UndefinedObject,
                        format!("secret \"{name}\" does not exist"),
                    ));
                }
                Ok(Output::Command {
                    tag: "DROP SECRET".into(),
                    rows: None,
                })
            }
            Action::ShowSecrets => {
                let catalog = self.engine.inner.catalog.lock().await;
                let names: Vec<String> = catalog.secret_names().cloned().collect();
                one_batch(
                    Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)])),
                    vec![Arc::new(StringArray::from(names))],
                )
            }
            Action::Role(change) => {
                let config_users = self.engine.inner.config_users.clone();
                let tag = crate::roles::apply(&self.engine, change, |n| config_users.iter().any(|u| u == n))
                    .await?;
                Ok(Output::Command {
                    tag: tag.into(),
                    rows: None,
                })
            }
            Action::Plan(plan) => {
                let plan = match params {
                    Some(p) => plan.clone().with_param_values(p)?,
                    None => plan.clone(),
                };
                let output = self.run_plan(plan).await?;
                Ok(match (&prepared.names, output) {
                    (Some(names), Output::Rows(rows)) => Output::Rows(renamed_rows(rows, names.clone())),
                    (_, output) => output,
                })
            }
            Action::CreateTable(create) => {
                self.create_external_table((**create).clone(), true).await?;
                Ok(Output::Command {
                    tag: "CREATE TABLE".into(),
                    rows: None,
                })
            }
            Action::DropTable { plan, names } => {
                let mut catalog = self.engine.inner.catalog.lock().await;
                for name in names {
                    if let Some(e) = catalog.get(name)
                        && e.kind != ObjectKind::Table
                    {
                        return Err(e.kind.not_a(name, ObjectKind::Table));
                    }
                    if let Some(reader) = views::reader_of(&catalog, name)?
                        && !names.contains(&reader.name)
                    {
                        return Err(views::still_read(name, ObjectKind::Table, reader));
                    }
                }
                self.ctx.execute_logical_plan(plan.clone()).await?;
                for name in names {
                    catalog.remove(name)?;
                }
                Ok(Output::Command {
                    tag: "DROP TABLE".into(),
                    rows: None,
                })
            }
            Action::CreateView {
                plan,
                name,
                sql,
                replace,
                if_not_exists,
            } => {
                self.create_view(plan.clone(), name, sql, *replace, *if_not_exists, true)
                    .await?;
                Ok(Output::Command {
                    tag: "CREATE VIEW".into(),
                    rows: None,
                })
            }
            Action::DropView { names, if_exists } => {
                self.drop_views(names, *if_exists).await?;
                Ok(Output::Command {
                    tag: "DROP VIEW".into(),
                    rows: None,
                })
            }
            Action::CreateStream(create) => {
                self.create_stream((**create).clone(), true).await?;
                Ok(Output::Command {
                    tag: "CREATE STREAM".into(),
                    rows: None,
                })
            }
            Action::DropStream { name, if_exists } => {
                let mut catalog = self.engine.inner.catalog.lock().await;
                match catalog.get(name).map(|e| e.kind) {
                    Some(ObjectKind::Stream) => {
                        if let Some(job) = self.engine.jobs_reading(name).first() {
                            return Err(SluiceError::new(
                                ErrorKind::Semantic,
                                format!("cannot drop stream {name}: {job} reads it; drop {job} first"),
                            ));
                        }
                        if let Some(reader) = views::reader_of(&catalog, name)? {
                            return Err(views::still_read(name, ObjectKind::Stream, reader));
                        }
                        self.ctx.deregister_table(name.as_str())?;
                        self.engine.inner.streams.remove(name);
                        catalog.remove(name)?;
                    }
                    Some(kind) => return Err(kind.not_a(name, ObjectKind::Stream)),
                    None if *if_exists => {}
                    None => {
                        return Err(SluiceError::new(
                            ErrorKind::UndefinedTable,
                            format!("stream \"{name}\" does not exist"),
                        ));
                    }
                }
                Ok(Output::Command {
                    tag: "DROP STREAM".into(),
                    rows: None,
                })
            }
            Action::ShowStreams => {
                let catalog = self.engine.inner.catalog.lock().await;
                let mut names = Vec::new();
                let mut connectors = Vec::new();
                let mut options = Vec::new();
                for entry in catalog.entries().filter(|e| e.kind == ObjectKind::Stream) {
                    if let Some(Statement::CreateStream(c)) = parser::parse(&entry.sql)?.pop() {
                        names.push(entry.name.clone());
                        connectors.push(c.options.get("connector").cloned().unwrap_or_default());
                        options.push(crate::secrets::options_text(&c.options));
                    }
                }
                one_batch(
                    show_streams_schema(),
                    vec![
                        Arc::new(StringArray::from(names)),
                        Arc::new(StringArray::from(connectors)),
                        Arc::new(StringArray::from(options)),
                    ],
                )
            }
            Action::SetVar { name, value } => {
                self.set_var(name, value)?;
                self.register_session_functions();
                Ok(Output::Command {
                    tag: "SET".into(),
                    rows: None,
                })
            }
            Action::ShowVar { name } => {
                let value = self.vars.get(name).cloned().unwrap_or_default();
                let schema = show_schema(name);
                let batch =
                    RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec![value]))])
                        .map_err(datafusion::error::DataFusionError::from)?;
                let stream = futures::stream::once(async move { Ok(batch) });
                Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
                    schema, stream,
                ))))
            }
            Action::CreateJob { create, sink } => {
                self.create_job((**create).clone(), *sink, true).await?;
                Ok(Output::Command {
                    tag: if *sink {
                        "CREATE SINK"
                    } else {
                        "CREATE MATERIALIZED VIEW"
                    }
                    .into(),
                    rows: None,
                })
            }
            Action::AlterSink { name, options } => {
                self.alter_sink(name, options).await?;
                Ok(Output::Command {
                    tag: "ALTER SINK".into(),
                    rows: None,
                })
            }
            Action::DropJob {
                name,
                sink,
                if_exists,
            } => {
                self.drop_job(name, *sink, *if_exists).await?;
                Ok(Output::Command {
                    tag: if *sink {
                        "DROP SINK"
                    } else {
                        "DROP MATERIALIZED VIEW"
                    }
                    .into(),
                    rows: None,
                })
            }
            Action::ShowJobObjects { sink } => self.show_job_objects(*sink).await,
            Action::ShowJobs => self.show_jobs(),
            Action::ShowCheckpoints => self.show_checkpoints(),
            Action::ExplainJob { create, sink } => self.explain_job(create, *sink).await,
            Action::Subscribe { target, copy, .. } => Ok(Output::Subscribe {
                rows: self.subscribe(target).await?,
                copy: *copy,
            }),
            Action::TransactionStart => Ok(Output::TransactionStart),
            Action::CopyOut { plan, options } => {
                let plan = match params {
                    Some(p) => plan.clone().with_param_values(p)?,
                    None => plan.clone(),
                };
                let Output::Rows(rows) = self.run_plan(plan).await? else {
                    return Err(SluiceError::internal("COPY of a query that returns no rows"));
                };
                let rows = match &prepared.names {
                    Some(names) => renamed_rows(rows, names.clone()),
                    None => rows,
                };
                Ok(Output::CopyOut {
                    rows,
                    options: options.clone(),
                })
            }
            Action::CopyIn(target) => Ok(Output::CopyIn(target.clone())),
            Action::DeclareCursor {
                name,
                plan,
                hold,
                scroll,
                names,
            } => {
                if self.cursors.contains_key(name) {
                    return Err(SluiceError::new(
                        ErrorKind::DuplicateCursor,
                        format!("cursor \"{name}\" already exists"),
                    ));
                }
                let Output::Rows(rows) = self.run_plan(plan.clone()).await? else {
                    return Err(SluiceError::internal(
                        "a cursor over a query that returns no rows",
                    ));
                };
                let rows = match names {
                    Some(names) => renamed_rows(rows, names.clone()),
                    None => rows,
                };
                self.cursors.insert(
                    name.clone(),
                    Cursor {
                        schema: rows.schema(),
                        rows: std::sync::Mutex::new(rows),
                        pending: None,
                        hold: *hold,
                        scroll: scroll.then(Scroll::default),
                    },
                );
                Ok(Output::Command {
                    tag: "DECLARE CURSOR".into(),
                    rows: None,
                })
            }
            Action::Fetch { name, motion, .. } => {
                let cursor = self.cursors.get_mut(name).ok_or_else(|| no_cursor(name))?;
                let schema = cursor.schema.clone();
                let batches = cursor.fetch(*motion).await?;
                let stream = futures::stream::iter(batches.into_iter().map(Ok));
                Ok(Output::Rows(Box::pin(RecordBatchStreamAdapter::new(
                    schema, stream,
                ))))
            }
            Action::Move { name, motion } => {
                let cursor = self.cursors.get_mut(name).ok_or_else(|| no_cursor(name))?;
                let moved: usize = cursor.fetch(*motion).await?.iter().map(|b| b.num_rows()).sum();
                Ok(Output::Command {
                    tag: "MOVE".into(),
                    rows: Some(moved),
                })
            }
            Action::CloseCursor { name } => {
                match name {
                    None => self.cursors.clear(),
                    Some(name) => {
                        self.cursors.remove(name).ok_or_else(|| no_cursor(name))?;
                    }
                }
                Ok(Output::Command {
                    tag: "CLOSE CURSOR".into(),
                    rows: None,
                })
            }
            Action::Accepted { tag } => Ok(Output::Command {
                tag: (*tag).into(),
                rows: None,
            }),
            Action::ResetVar { name } => {
                self.reset_vars(name.as_deref())?;
                Ok(Output::Command {
                    tag: "RESET".into(),
                    rows: None,
                })
            }
            Action::DiscardAll => {
                self.reset_vars(None)?;
                self.cursors.clear();
                Ok(Output::Command {
                    tag: "DISCARD ALL".into(),
                    rows: None,
                })
            }
            Action::TransactionEnd { rollback } => {
                // A cursor without HOLD ends with its transaction.
                self.cursors.retain(|_, c| c.hold);
                Ok(Output::TransactionEnd { rollback: *rollback })
            }
        }
    }

    /// `RESET name` (a read-only one is refused as SET refuses it), or
    /// every setting when `name` is None (read-only ones stay).
    fn reset_vars(&mut self, name: Option<&str>) -> Result<()> {
        let mut defaults = self.engine.session_defaults();
        defaults.extend(self.startup_vars.clone());
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => self
                .vars
                .keys()
                .filter(|n| !READ_ONLY_SETTINGS.contains(&n.as_str()))
                .cloned()
                .collect(),
        };
        for n in names {
            match defaults.get(&n) {
                Some(v) => self.set_var(&n, v)?,
                None if READ_ONLY_SETTINGS.contains(&n.as_str()) => self.set_var(&n, "")?,
                None => {
                    self.vars.remove(&n);
                }
            }
        }
        self.register_session_functions();
        Ok(())
    }

    fn set_var(&mut self, name: &str, value: &str) -> Result<()> {
        if READ_ONLY_SETTINGS.contains(&name) {
            return Err(SluiceError::new(
                ErrorKind::InvalidParameter,
                format!("parameter \"{name}\" cannot be changed"),
            ));
        }
        if name == "timezone" {
            // DataFusion evaluates now() and timestamptz casts in this zone.
            let tz = if value.eq_ignore_ascii_case("utc") || value == "Etc/UTC" {
                "+00:00"
            } else {
                value
            };
            self.ctx
                .state_ref()
                .write()
                .config_mut()
                .options_mut()
                .set("datafusion.execution.time_zone", tz)
                .map_err(|_| {
                    SluiceError::invalid_parameter(format!(
                        "invalid value for parameter \"TimeZone\": \"{value}\""
                    ))
                })?;
        }
        if name == CHECKPOINT_TIMEOUT_VAR {
            let timeout = crate::checkpoint::parse_timeout(value)?;
            self.vars.insert(
                name.to_string(),
                crate::checkpoint::format_interval(Some(timeout)),
            );
            return Ok(());
        }
        if name == "statement_timeout" {
            let timeout = parse_statement_timeout(value)?;
            self.vars.insert(
                name.to_string(),
                timeout.map_or("0".to_string(), |d| format!("{}ms", d.as_millis())),
            );
            return Ok(());
        }
        if name == LOOKUP_REFRESH_VAR {
            let every = crate::checkpoint::parse_lookup_refresh(value)?;
            self.vars
                .insert(name.to_string(), crate::checkpoint::format_interval(every));
            return Ok(());
        }
        if name == STATE_TTL_VAR {
            let ttl = crate::checkpoint::parse_state_ttl(value)?;
            self.vars
                .insert(name.to_string(), crate::checkpoint::format_interval(ttl));
            return Ok(());
        }
        if name == RESTART_ATTEMPTS_VAR {
            let n = crate::checkpoint::parse_restart_attempts(value)?;
            self.vars.insert(name.to_string(), n.to_string());
            return Ok(());
        }
        if name == CHECKPOINT_INTERVAL_VAR {
            let interval = crate::checkpoint::parse_interval(value)?;
            self.vars
                .insert(name.to_string(), crate::checkpoint::format_interval(interval));
            return Ok(());
        }
        self.vars.insert(name.to_string(), value.to_string());
        Ok(())
    }

    async fn run_plan(&self, plan: LogicalPlan) -> Result<Output> {
        if let LogicalPlan::Dml(DmlStatement { op, .. }) = &plan {
            let tag = match op {
                WriteOp::Insert(_) => "INSERT",
                WriteOp::Delete => "DELETE",
                WriteOp::Update => "UPDATE",
                WriteOp::Ctas => "SELECT",
                _ => "TRUNCATE TABLE",
            };
            let rows = self.count_rows(plan).await?;
            return Ok(Output::Command {
                tag: tag.into(),
                rows: Some(rows),
            });
        }
        if let LogicalPlan::Copy(copy) = &plan {
            // COPY ... TO a local file: only where SQL may write.
            let plan = if !copy.output_url.contains("://") || copy.output_url.starts_with("file://") {
                let mut copy = copy.clone();
                copy.output_url = self.engine.inner.stores.local_path(&copy.output_url)?;
                LogicalPlan::Copy(copy)
            } else {
                plan
            };
            let rows = self.count_rows(plan).await?;
            return Ok(Output::Command {
                tag: "COPY".into(),
                rows: Some(rows),
            });
        }
        let tag = match &plan {
            LogicalPlan::Ddl(ddl) => Some(ddl_tag(ddl)),
            LogicalPlan::Statement(_) => Some("SET".to_string()),
            _ => None,
        };
        let df = self.ctx.execute_logical_plan(plan).await?;
        match tag {
            Some(tag) => {
                df.collect().await?;
                Ok(Output::Command { tag, rows: None })
            }
            None => Ok(Output::Rows(df.execute_stream().await?)),
        }
    }

    /// What `COPY name [(columns)] FROM STDIN` writes into: an external
    /// table over files (streams are written by their sources).
    async fn copy_in_target(
        &self,
        table: &datafusion::sql::sqlparser::ast::ObjectName,
        columns: &[String],
        options: crate::parser::CopyOptions,
    ) -> Result<crate::copy::CopyInTarget> {
        let name = normalize_name(table);
        let provider = self.ctx.table_provider(name.as_str()).await?;
        let (schema, stream) = if provider.is::<datafusion::datasource::listing::ListingTable>() {
            (provider.schema(), None)
        } else {
            let stream =
                crate::streaming::window::StreamLookup::stream(self.engine.inner.streams.as_ref(), &name);
            let appendable = match &stream {
                Some(s) => s.connector.appendable(&s.options, s.schema_ref())?,
                None => None,
            };
            match (stream, appendable) {
                (Some(stream), Some(schema)) => (schema, Some(stream)),
                (Some(stream), None) => {
                    return Err(SluiceError::not_supported(format!(
                        "COPY FROM STDIN writes into external tables and file streams; {name} is a {} stream, \
                         written by its source",
                        stream.connector.name()
                    )));
                }
                (None, _) => {
                    return Err(SluiceError::not_supported(format!(
                        "COPY FROM STDIN writes into external tables over files and file streams; {name} is neither"
                    )));
                }
            }
        };
        let columns = if columns.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| {
                        SluiceError::new(
                            ErrorKind::UndefinedColumn,
                            format!("column {c} of table {name} does not exist"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(crate::copy::CopyInTarget {
            table: name,
            schema,
            columns,
            options,
            stream,
        })
    }

    /// Appends the rows a `COPY ... FROM STDIN` read to its table; returns
    /// how many were written.
    pub async fn copy_in(
        &self,
        target: &crate::copy::CopyInTarget,
        batches: Vec<RecordBatch>,
    ) -> Result<usize> {
        if batches.is_empty() {
            return Ok(0);
        }
        if let Some(stream) = &target.stream {
            return stream
                .connector
                .append(&stream.options, stream.schema_ref(), batches)
                .await;
        }
        let df = self.ctx.read_batches(batches)?;
        let written = df
            .write_table(
                target.table.as_str(),
                datafusion::dataframe::DataFrameWriteOptions::new(),
            )
            .await?;
        Ok(written
            .iter()
            .filter_map(|b| b.columns().first())
            .filter_map(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
            .map(|c| c.iter().flatten().sum::<u64>() as usize)
            .sum())
    }

    /// DML and COPY return one row with the count of rows written.
    async fn count_rows(&self, plan: LogicalPlan) -> Result<usize> {
        let mut stream = self
            .ctx
            .execute_logical_plan(plan)
            .await?
            .execute_stream()
            .await?;
        let mut total = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if let Some(col) = batch.columns().first()
                && let Some(counts) = col.as_any().downcast_ref::<arrow::array::UInt64Array>()
            {
                total += counts.iter().flatten().sum::<u64>() as usize;
            }
        }
        Ok(total)
    }

    /// Registers storage for the table's location, lets DataFusion create
    /// the listing table (schema inference, partition discovery), and, when
    /// `persist`, records it in the durable catalog.
    async fn create_external_table(&self, mut create: CreateExternalTable, persist: bool) -> Result<()> {
        let name = normalize_name(&create.name);
        let normalized_sql = render_create_external_table(&create);
        // `'key' SECRET name` values: the catalog keeps the reference (so
        // ALTER SECRET applies at the next start), storage gets the value.
        {
            let catalog = self.engine.inner.catalog.lock().await;
            for (k, v) in create.options.iter_mut() {
                if let Some(name) = crate::secrets::reference(&value_to_string(v)) {
                    let value = catalog.secret(name).cloned().ok_or_else(|| {
                        SluiceError::new(
                            ErrorKind::UndefinedObject,
                            format!("option '{k}': secret \"{name}\" does not exist (CREATE SECRET {name} AS '...')"),
                        )
                    })?;
                    *v = ast::Value::SingleQuotedString(value);
                }
            }
        }
        let mut store_options = BTreeMap::new();
        let stores = &self.engine.inner.stores;
        create.options.retain(|(k, v)| {
            let key = k.to_ascii_lowercase();
            if stores.is_store_option(&key) {
                store_options.insert(key, value_to_string(v));
                false
            } else {
                true
            }
        });
        for location in create.locations.iter_mut() {
            self.register_store(location, &store_options)?;
            // A local location must be one SQL may use; DataFusion gets it
            // absolute (a relative one names the data directory).
            if !location.contains("://") || location.starts_with("file://") {
                *location = self.engine.inner.stores.local_path(location)?;
            }
        }
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DFStatement::CreateExternalTable(create))
            .await?;
        // Holding the catalog lock across creation serializes concurrent
        // CREATEs, so memory and disk agree on which one won.
        let mut catalog = self.engine.inner.catalog.lock().await;
        // Creating the table lists the location and reads file footers to
        // infer the schema; an unreachable store must fail it in bounded time.
        tokio::time::timeout(STORAGE_TIMEOUT, self.ctx.execute_logical_plan(plan))
            .await
            .map_err(|_| {
                SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!(
                        "storage for table {name} did not answer within {}s",
                        STORAGE_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                let e = SluiceError::from(e);
                if e.kind() == ErrorKind::InvalidParameter {
                    // Say which options exist besides the format's own.
                    SluiceError::invalid_parameter(format!(
                        "{e}; storage options: hdfs has none, {}; format options are DataFusion's \
                         format.* keys (e.g. 'format.has_header' for CSV)",
                        self.engine.inner.stores.store_option_keys().join(", ")
                    ))
                } else {
                    e
                }
            })?;
        if persist {
            if let Err(e) = catalog.put(CatalogEntry {
                name: name.clone(),
                kind: ObjectKind::Table,
                sql: normalized_sql,
                owner: Some(self.user.clone()),
            }) {
                // Keep memory and disk in agreement: without a durable entry
                // the table would vanish on restart, so it must not exist now.
                let _ = self.ctx.deregister_table(name.as_str());
                return Err(e);
            }
            self.engine
                .inner
                .unavailable
                .lock()
                .expect("unavailable map poisoned")
                .remove(&name);
        }
        Ok(())
    }

    /// Declares a stream: checks the connector and its options, registers a
    /// table over the source, and records it durably when `persist`.
    async fn create_stream(&self, create: CreateStream, persist: bool) -> Result<()> {
        let name = normalize_name(&create.name);
        let connector_name = create.options.get("connector").ok_or_else(|| {
            SluiceError::invalid_parameter(format!("CREATE STREAM {name}: the connector option is required"))
        })?;
        let connector = self.engine.inner.sources.get(connector_name)?;
        check_options(connector.as_ref(), &create.options)?;
        let mut options = self.resolve_secrets(&create.options).await?;
        options.remove("connector");
        // Relative paths name the data directory, as a sink's do: a stream
        // can read what a sink landed there.
        for key in ["path", "dead_letter.path"] {
            if let Some(path) = options.get_mut(key) {
                *path = self.landing_path(path)?;
            }
        }
        let watermark = match &create.watermark {
            Some((col, expr)) => Some((col.clone(), watermark_delay(col, expr)?)),
            None => None,
        };
        let declared = if create.columns.is_empty() {
            None
        } else {
            Some(declared_schema(&create.columns, &create.metadata)?)
        };
        let table = Arc::new(StreamTable::try_new(
            name.clone(),
            connector,
            options,
            self.engine.inner.parallelism,
            declared,
            watermark,
        )?);
        let mut catalog = self.engine.inner.catalog.lock().await;
        if self.ctx.table_exist(name.as_str())? {
            if create.if_not_exists {
                return Ok(());
            }
            return Err(SluiceError::new(
                ErrorKind::DuplicateObject,
                format!("relation \"{name}\" already exists"),
            ));
        }
        self.ctx.register_table(name.as_str(), table.clone())?;
        if persist
            && let Err(e) = catalog.put(CatalogEntry {
                name: name.clone(),
                kind: ObjectKind::Stream,
                sql: create.to_string(),
                owner: Some(self.user.clone()),
            })
        {
            let _ = self.ctx.deregister_table(name.as_str());
            return Err(e);
        }
        self.engine.inner.streams.insert(name, table);
        Ok(())
    }

    pub(crate) fn register_store(&self, location: &str, options: &BTreeMap<String, String>) -> Result<()> {
        if let Some((url, store)) = self.engine.inner.stores.store_for_location(location, options)? {
            self.ctx.runtime_env().register_object_store(&url, store);
        }
        Ok(())
    }

    /// Why a cataloged object is missing, if it failed to restore at start.
    pub fn unavailable_reason(&self, name: &str) -> Option<String> {
        self.engine
            .inner
            .unavailable
            .lock()
            .expect("unavailable map poisoned")
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// The DataFusion context of this session, for catalog introspection.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }
}

/// Declared stream columns as an Arrow schema. DataFusion maps the SQL
/// types (the same mapping as in CREATE EXTERNAL TABLE and CAST).
fn declared_schema(columns: &[ast::ColumnDef], metadata: &BTreeMap<String, String>) -> Result<SchemaRef> {
    let ctx = SessionContext::new();
    let state = ctx.state();
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        let expr = state.create_logical_expr(
            &format!("CAST(NULL AS {})", c.data_type),
            &datafusion::common::DFSchema::empty(),
        )?;
        let ty = match expr {
            datafusion::logical_expr::Expr::Cast(cast) => cast.field.data_type().clone(),
            other => {
                return Err(SluiceError::not_supported(format!(
                    "column {}: type {} is not supported ({other})",
                    c.name, c.data_type
                )));
            }
        };
        let not_null = c
            .options
            .iter()
            .any(|o| matches!(o.option, ast::ColumnOption::NotNull));
        let name = crate::parser::column_name(&c.name);
        if fields.iter().any(|f: &Field| f.name() == &name) {
            return Err(SluiceError::new(
                ErrorKind::DuplicateObject,
                format!("column \"{name}\" specified more than once"),
            ));
        }
        let mut field = Field::new(name, ty, !not_null);
        if let Some(key) = metadata.get(field.name()) {
            field = field.with_metadata([(crate::stream::METADATA_KEY.to_string(), key.clone())].into());
        }
        fields.push(field);
    }
    Ok(Arc::new(Schema::new(fields)))
}

fn ddl_tag(ddl: &DdlStatement) -> String {
    match ddl {
        DdlStatement::CreateExternalTable(_) | DdlStatement::CreateMemoryTable(_) => "CREATE TABLE",
        DdlStatement::CreateView(_) => "CREATE VIEW",
        DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
        DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
        DdlStatement::CreateIndex(_) => "CREATE INDEX",
        DdlStatement::DropTable(_) => "DROP TABLE",
        DdlStatement::DropView(_) => "DROP VIEW",
        DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
        DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
        DdlStatement::DropFunction(_) => "DROP FUNCTION",
    }
    .to_string()
}

fn value_to_string(v: &Value) -> String {
    match v {
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
        other => other.to_string(),
    }
}

fn expr_to_setting(e: &SqlExpr) -> String {
    match e {
        SqlExpr::Value(v) => value_to_string(&v.value),
        SqlExpr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// DataFusion's own rendering of `CREATE EXTERNAL TABLE` drops the columns,
/// partitions and options, so the catalog renders the full statement itself.
pub(crate) fn render_create_external_table(c: &CreateExternalTable) -> String {
    let mut sql = String::from("CREATE EXTERNAL TABLE ");
    sql.push_str(&c.name.to_string());
    if !c.columns.is_empty() {
        let cols: Vec<String> = c.columns.iter().map(|c| c.to_string()).collect();
        sql.push_str(&format!(" ({})", cols.join(", ")));
    }
    sql.push_str(&format!(" STORED AS {}", c.file_type));
    if !c.table_partition_cols.is_empty() {
        sql.push_str(&format!(
            " PARTITIONED BY ({})",
            c.table_partition_cols.join(", ")
        ));
    }
    if !c.order_exprs.is_empty() {
        for order in &c.order_exprs {
            let parts: Vec<String> = order.iter().map(|o| o.to_string()).collect();
            sql.push_str(&format!(" WITH ORDER ({})", parts.join(", ")));
        }
    }
    if !c.options.is_empty() {
        let opts: Vec<String> = c
            .options
            .iter()
            .map(|(k, v)| {
                let v = value_to_string(v);
                match crate::secrets::reference(&v) {
                    Some(name) => format!("{} SECRET {}", quote_literal(k), quote_ident(name)),
                    None => format!("{} {}", quote_literal(k), quote_literal(&v)),
                }
            })
            .collect();
        sql.push_str(&format!(" OPTIONS ({})", opts.join(", ")));
    }
    let locs: Vec<String> = c.locations.iter().map(|l| quote_literal(l)).collect();
    if locs.len() == 1 {
        sql.push_str(&format!(" LOCATION {}", locs[0]));
    } else {
        sql.push_str(&format!(" LOCATION ({})", locs.join(", ")));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_create(sql: &str) -> CreateExternalTable {
        match Session::parse(sql).unwrap().remove(0) {
            Statement::DataFusion(DFStatement::CreateExternalTable(c)) => c,
            other => panic!("not a create: {other:?}"),
        }
    }

    #[test]
    fn rendering_round_trips_every_clause() {
        let sql = "CREATE EXTERNAL TABLE trips (id BIGINT, fare DOUBLE, dt TEXT) STORED AS PARQUET \
                   PARTITIONED BY (dt) OPTIONS ('s3.endpoint' 'http://x', 'format.has_header' 'true') \
                   LOCATION 's3://lake/trips/'";
        let c = parse_create(sql);
        let rendered = render_create_external_table(&c);
        assert_eq!(parse_create(&rendered), c, "{rendered}");
        assert!(rendered.contains("PARTITIONED BY (dt)"), "{rendered}");
        assert!(rendered.contains("'s3.endpoint' 'http://x'"), "{rendered}");
    }

    #[test]
    fn quoted_names_keep_case() {
        let c = parse_create("CREATE EXTERNAL TABLE \"Trips\" STORED AS CSV LOCATION 'it''s'");
        assert_eq!(normalize_name(&c.name), "Trips");
        assert_eq!(parse_create(&render_create_external_table(&c)), c);
        let c = parse_create("CREATE EXTERNAL TABLE Trips STORED AS CSV LOCATION '/x'");
        assert_eq!(normalize_name(&c.name), "trips");
    }
}

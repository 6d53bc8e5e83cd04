//! The Sluice server: Postgres wire protocol in front of the engine.
//!
//! ```text
//!  psql / any Postgres client ──TCP──▶ run() ──per connection──▶ ConnectionHandler ──▶ engine Session
//!                                        │                               (SCRAM auth, cancel, SQLSTATE)
//!                                   shutdown signal
//! ```
//!
//! `main.rs` is thin: it reads flags and config, then calls [`run`]; tests
//! bind `127.0.0.1:0` and call the same [`run`].

pub mod auth;
pub mod config;
mod connection;
pub mod console;
mod debug;
pub mod errors;
mod handler;
pub mod http;
pub mod metrics;
mod pgarrays;
mod pgcatalog;
mod pgroles;
mod pgtypes;
mod rows;
mod tls;

use std::future::Future;
use std::sync::Arc;

use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ConnectionManager, PgWireServerHandlers, RandomPidSecretKeyGenerator};
use sluice_connectors::datagen::DatagenConnector;
use sluice_connectors::filesource::FileSystemSource;
use sluice_connectors::filesystem::{BlackholeSink, FileSystemSink};
use sluice_connectors::kafka::{KafkaConnector, KafkaSink};
use sluice_connectors::nexmark::NexmarkConnector;
use sluice_connectors::storage::{HdfsStoreProvider, S3StoreProvider};
use sluice_engine::{
    CATALOG_NAME, Engine, EngineConfig, PG_SERVER_VERSION, SinkRegistry, SourceRegistry, StoreRegistry,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::Config;
use handler::{ConnectionHandler, SqlParser};

/// Everything connections share.
pub struct Server {
    engine: Engine,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    users: auth::Users,
    auth: auth::AuthMethod,
    connections: Arc<ConnectionManager>,
    sql_parser: Arc<SqlParser>,
    /// One generator for the server, so each connection gets its own pid.
    pids: Arc<RandomPidSecretKeyGenerator>,
    throttle: Arc<auth::LoginThrottle>,
    limits: connection::ConnectionLimits,
    max_connections: usize,
    /// The certificate chain (PEM), for SCRAM channel binding.
    tls_cert_pem: Option<Vec<u8>>,
    /// The web console's logged-in sessions.
    console: console::ConsoleSessions,
    /// Statements the console runs now (for its Cancel button).
    queries: console::RunningQueries,
    /// Whether `/metrics` asks for a login.
    metrics_auth: bool,
}

impl Server {
    /// Opens the engine on the configured data directory and installs the
    /// Postgres catalog emulation.
    pub async fn open(config: &Config) -> anyhow::Result<Arc<Self>> {
        let mut stores = StoreRegistry::default();
        stores.register(Arc::new(S3StoreProvider::new(config.s3.clone())));
        stores.register(Arc::new(HdfsStoreProvider));
        let mut sources = SourceRegistry::default();
        sources.register(Arc::new(NexmarkConnector));
        sources.register(Arc::new(DatagenConnector));
        sources.register(Arc::new(KafkaConnector::new(stores.clone())));
        sources.register(Arc::new(FileSystemSource::new(stores.clone())));
        let mut sinks = SinkRegistry::default();
        sinks.register(Arc::new(FileSystemSink));
        sinks.register(Arc::new(sluice_connectors::delta::DeltaSink));
        sinks.register(Arc::new(BlackholeSink));
        sinks.register(Arc::new(KafkaSink));
        let engine = Engine::open(EngineConfig {
            data_dir: config.data_dir.clone(),
            stores,
            target_partitions: config.target_partitions,
            sources,
            sinks,
            checkpoint_interval: sluice_engine::checkpoint::parse_interval(&config.checkpoint_interval)?,
            checkpoint_location: config.checkpoint_location.clone(),
            file_roots: config.file_roots.clone(),
            memory_limit: config.memory_limit_mb.map(|mb| mb << 20),
            subscriber_backlog: config.subscriber_backlog_mb.map(|mb| mb << 20),
            auth: Some(sluice_engine::EngineAuth {
                hasher: Arc::new(|password: &str, salt: &[u8]| {
                    pgwire::api::auth::sasl::scram::gen_salted_password(
                        password,
                        salt,
                        auth::SCRAM_ITERATIONS,
                    )
                }),
                config_users: config.users.keys().cloned().collect(),
            }),
        })
        .await?;
        datafusion_pg_catalog::setup_pg_catalog(
            engine.template_context(),
            CATALOG_NAME,
            pgroles::Roles::new(engine.clone(), config.users.keys().cloned().collect()),
        )
        .map_err(|e| anyhow::anyhow!("installing pg_catalog: {e}"))?;
        pgcatalog::install(engine.template_context(), CATALOG_NAME, engine.clone())?;
        if config.debug_functions {
            engine.template_context().register_udf(debug::panic_udf());
            engine
                .template_context()
                .register_udf(debug::fail_if_exists_udf());
            engine
                .template_context()
                .register_udf(debug::sleep_if_exists_udf());
        }
        if config.auth == auth::AuthMethod::Trust {
            if !is_loopback(&config.listen) {
                anyhow::bail!(
                    "--auth trust lets anyone who can connect in without a password; it is refused on {}, \
                     which is not a loopback address (listen on 127.0.0.1, or use scram-sha-256)",
                    config.listen
                );
            }
            tracing::warn!(
                listen = %config.listen,
                "AUTHENTICATION IS OFF (--auth trust): anyone who can connect is let in without a password"
            );
        } else if config.users.get("sluice").is_some_and(|p| p == "sluice") {
            tracing::warn!(
                "the built-in user sluice has the default password 'sluice': set [users] in the config file \
                 before anyone else can reach this server"
            );
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
        };
        if config.require_tls && tls.is_none() {
            anyhow::bail!("--require-tls needs TLS configured (--tls-cert and --tls-key)");
        }
        let tls_cert_pem = match &config.tls_cert {
            Some(cert) => Some(
                std::fs::read(cert)
                    .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", cert.display()))?,
            ),
            None => None,
        };
        Ok(Arc::new(Self {
            tls,
            users: auth::Users::new(config.users.clone(), engine.clone()),
            engine,
            auth: config.auth,
            connections: Arc::new(ConnectionManager::new()),
            sql_parser: Arc::new(SqlParser::default()),
            pids: Arc::new(RandomPidSecretKeyGenerator::default()),
            throttle: Arc::new(auth::LoginThrottle::new(
                config.login_failures_per_minute,
                std::time::Duration::from_secs(60),
            )),
            limits: connection::ConnectionLimits {
                login_timeout: std::time::Duration::from_secs(config.login_timeout_secs.max(1)),
                max_message_size: config.max_message_bytes.max(1024),
                require_tls: config.require_tls,
            },
            max_connections: config.max_connections.max(1),
            tls_cert_pem,
            console: Default::default(),
            queries: Default::default(),
            metrics_auth: config.metrics_auth,
        }))
    }

    /// The engine behind the server.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The handlers of one connection; `secure`: it negotiated TLS.
    fn handlers(&self, secure: bool) -> ConnectionHandlers {
        let mut scram = ScramAuth::new(Arc::new(self.users.clone()));
        scram.set_iterations(auth::SCRAM_ITERATIONS);
        // Channel binding (SCRAM-SHA-256-PLUS) binds the login to this TLS
        // session's certificate; offered over TLS only, as Postgres does.
        if secure
            && let Some(pem) = &self.tls_cert_pem
            && let Err(e) = scram.configure_certificate(pem)
        {
            tracing::warn!(error = %e, "SCRAM channel binding unavailable for this certificate");
        }
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = format!("{PG_SERVER_VERSION} (Sluice {})", env!("CARGO_PKG_VERSION"));
        let startup = match self.auth {
            auth::AuthMethod::Scram => auth::Startup::Scram(
                SASLAuthStartupHandler::new(Arc::new(params))
                    .with_scram(scram)
                    .with_connection_manager(self.connections.clone())
                    .with_pid_secret_key_generator(self.pids.clone()),
            ),
            auth::AuthMethod::Trust => auth::Startup::Trust {
                params: Arc::new(params),
                connections: self.connections.clone(),
                pids: self.pids.clone(),
            },
        };
        ConnectionHandlers {
            users: self.users.clone(),
            query: Arc::new(ConnectionHandler::new(
                self.engine.new_session(),
                self.sql_parser.clone(),
            )),
            startup: Arc::new(startup),
            cancel: Arc::new(DefaultCancelHandler::new(self.connections.clone())),
        }
    }
}

struct ConnectionHandlers {
    users: auth::Users,
    query: Arc<ConnectionHandler>,
    startup: Arc<auth::Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl connection::OnLogin for ConnectionHandlers {
    async fn logged_in(&self, user: &str, params: &[(String, String)]) {
        let superuser = self.users.is_superuser(user).await;
        self.query.set_user(user, superuser, params).await;
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.query.clone()
    }
}

/// Whether a listen address (`host:port`) is a loopback one.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
}

/// Counts a connection in `sluice_connections_open` while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        crate::metrics::METRICS.connections_open.inc();
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::METRICS.connections_open.dec();
    }
}

/// Accepts connections until `shutdown` resolves, then stops accepting and
/// waits (briefly) for open connections to end.
///
/// At most `max_connections` connections are served at once; beyond that a
/// few more are read far enough to serve a cancel request or refuse a
/// login with 53300, and the rest are closed at once.
pub async fn run(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Connections over the limit that are still read (for a cancel request).
    const OVERFLOW: usize = 16;
    struct Slot(Arc<AtomicUsize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let open = Arc::new(AtomicUsize::new(0));
    let overflow = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Running out of file descriptors and the like: log
                        // and keep serving the connections we have.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let admitted = open.fetch_add(1, Ordering::Relaxed) < server.max_connections;
                let slot = if admitted {
                    Slot(open.clone())
                } else {
                    open.fetch_sub(1, Ordering::Relaxed);
                    if overflow.fetch_add(1, Ordering::Relaxed) >= OVERFLOW {
                        overflow.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(%peer, "connection refused: too many connections");
                        drop(socket);
                        continue;
                    }
                    Slot(overflow.clone())
                };
                let handlers = {
                    let server = server.clone();
                    move |secure| server.handlers(secure)
                };
                let tls = server.tls.clone();
                let mut limits = server.limits.clone();
                if !admitted {
                    limits.login_timeout = limits.login_timeout.min(std::time::Duration::from_secs(5));
                }
                let throttle = server.throttle.clone();
                crate::metrics::METRICS.connections.inc();
                connections.spawn(async move {
                    let _slot = slot;
                    let _open = OpenConnection::new();
                    tracing::debug!(%peer, "connection opened");
                    let served = connection::serve(socket, peer, tls, handlers, limits, throttle, admitted);
                    if let Err(e) = served.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a connection task panicked; the server keeps serving");
                }
            }
        }
    }
    tracing::info!(open = connections.len(), "shutting down");
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        connections.shutdown().await;
    }
    Ok(())
}

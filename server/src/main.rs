//! The `sluice` binary: flags, config, tracing, bind, run.

use std::path::PathBuf;

use clap::Parser;

/// jemalloc, with a background thread that returns freed pages to the
/// system about a second after they were freed (settings in
/// .cargo/config.toml): glibc's allocator kept them, and RSS after cancelled
/// sorts stayed hundreds of MB high (BENCHMARKS.md, "Memory returned").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use sluice_server::{Config, Server, run};
use tracing_subscriber::EnvFilter;

/// Sluice: a SQL-first streaming query engine that speaks the Postgres wire protocol.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on [default: 127.0.0.1:6866]
    #[arg(long, env = "SLUICE_LISTEN")]
    listen: Option<String>,
    /// HTTP address for the web console and /metrics (Prometheus), or off [default: 127.0.0.1:6867]
    #[arg(long, env = "SLUICE_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// /metrics asks for a user and password (HTTP basic), as the console does
    #[arg(long, env = "SLUICE_METRICS_AUTH")]
    metrics_auth: bool,
    /// Data directory (catalog, checkpoints, landed data) [default: ./sluice-data]
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML config file; flags and env override it
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. info or sluice_server=debug [default: info]
    #[arg(long, env = "SLUICE_LOG")]
    log: Option<String>,
    /// Authentication: scram-sha-256 (default) or trust (no password, local use only)
    #[arg(long, env = "SLUICE_AUTH", value_parser = parse_auth)]
    auth: Option<sluice_server::auth::AuthMethod>,
    /// PEM certificate chain for TLS (with --tls-key)
    #[arg(long, env = "SLUICE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert)
    #[arg(long, env = "SLUICE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS (needs --tls-cert and --tls-key)
    #[arg(long, env = "SLUICE_REQUIRE_TLS")]
    require_tls: bool,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000
    #[arg(long, env = "SLUICE_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region
    #[arg(long, env = "SLUICE_S3_REGION")]
    s3_region: Option<String>,
    /// S3 access key id
    #[arg(long, env = "SLUICE_S3_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,
    /// S3 secret access key (on the command line it shows in `ps`: prefer
    /// the environment variable or --s3-secret-access-key-file)
    #[arg(long, env = "SLUICE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
    /// A file holding the S3 secret access key
    #[arg(long, env = "SLUICE_S3_SECRET_ACCESS_KEY_FILE")]
    s3_secret_access_key_file: Option<PathBuf>,
    /// How often jobs checkpoint: a duration such as 10s or 500ms, or off
    #[arg(long, env = "SLUICE_CHECKPOINT_INTERVAL")]
    checkpoint_interval: Option<String>,
    /// Where jobs keep their checkpoints: a local path, s3://bucket/prefix or
    /// hdfs://namenode:port/path (default: <data-dir>/checkpoints)
    #[arg(long, env = "SLUICE_CHECKPOINT_LOCATION")]
    checkpoint_location: Option<String>,
    /// Directories besides the data directory where SQL may read and write
    /// local files, separated by ':' [default: the data directory only]
    #[arg(long, env = "SLUICE_FILE_ROOTS", value_delimiter = ':')]
    file_roots: Vec<PathBuf>,
    /// Tasks per keyed operator of a continuous query, and DataFusion's
    /// target partitions for queries [default: the number of cores]. Jobs
    /// restored from a checkpoint taken at another parallelism split their
    /// state anew.
    #[arg(long, env = "SLUICE_PARALLELISM", value_parser = clap::value_parser!(u16).range(1..=1024))]
    parallelism: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http_listen = Some(v);
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.log {
        config.log = v;
    }
    if let Some(v) = args.parallelism {
        config.target_partitions = Some(v.into());
    }
    if let Some(v) = args.checkpoint_interval {
        config.checkpoint_interval = v;
    }
    if let Some(v) = args.checkpoint_location {
        config.checkpoint_location = Some(v);
    }
    if !args.file_roots.is_empty() {
        config.file_roots = args.file_roots;
    }
    if args.metrics_auth {
        config.metrics_auth = true;
    }
    if args.require_tls {
        config.require_tls = true;
    }
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.auth {
        config.auth = v;
    }
    if std::env::var("SLUICE_DEBUG_FUNCTIONS").is_ok_and(|v| v == "1") {
        config.debug_functions = true;
    }
    if let Some(v) = args.s3_endpoint {
        config.s3.endpoint = Some(v);
    }
    if let Some(v) = args.s3_region {
        config.s3.region = Some(v);
    }
    if let Some(v) = args.s3_access_key_id {
        config.s3.access_key_id = Some(v);
    }
    if let Some(v) = args.s3_secret_access_key {
        config.s3.secret_access_key = Some(v);
    }
    if let Some(path) = &args.s3_secret_access_key_file {
        let key = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--s3-secret-access-key-file {}: {e}", path.display()))?;
        config.s3.secret_access_key = Some(key.trim_end_matches(['\r', '\n']).to_string());
    }
    let secret_on_command_line = std::env::args()
        .any(|a| a.starts_with("--s3-secret-access-key") && !a.starts_with("--s3-secret-access-key-file"));
    // The Delta libraries narrate every table load at info; keep them to
    // warnings unless the filter names them.
    let mut filter = config.log.clone();
    for quiet in ["buoyant_kernel", "deltalake_core"] {
        if !filter.contains(quiet) {
            filter.push_str(&format!(",{quiet}=warn"));
        }
    }
    // Logs go to stderr (stdout stays free, and test harnesses that keep a
    // server's stderr show its warnings when a test fails).
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter)?)
        .with_writer(std::io::stderr)
        .init();
    if secret_on_command_line {
        tracing::warn!(
            "--s3-secret-access-key on the command line shows in `ps` to every user: use \
             SLUICE_S3_SECRET_ACCESS_KEY or --s3-secret-access-key-file"
        );
    }
    // Connections, sink files and Kafka clients all take file descriptors;
    // the soft limit (often 1024) is raised to the hard one, as Postgres
    // sizes its own use to the limit it finds.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
        let server = Server::open(&config).await?;
        let listener = tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
        let http = http_listener(&config).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let http = http.map(|listener| {
            let mut stopped = stopped.clone();
            tokio::spawn(sluice_server::http::serve(listener, server.clone(), async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
        tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "Sluice is ready");
        let served = run(listener, server, async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        })
        .await;
        if let Some(http) = http {
            let _ = http.await;
        }
        served
    })
}

/// Binds the HTTP listener: `--http-listen` (or the config's `http_listen`),
/// else 127.0.0.1:6867; `off` for none. An address asked for must be
/// free; when the default is taken (another Sluice on this machine) the
/// server runs without HTTP and says so.
async fn http_listener(config: &sluice_server::Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let (addr, asked) = match config.http_listen.as_deref() {
        Some("off") => return Ok(None),
        Some(addr) => (addr, true),
        None => (sluice_server::config::DEFAULT_HTTP_LISTEN, false),
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(http = %l.local_addr()?, "serving /metrics");
            Ok(Some(l))
        }
        Err(e) if !asked => {
            tracing::warn!(http = %addr, error = %e, "no HTTP listener (/metrics): the default address is taken; set --http-listen");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("listening for HTTP on {addr}: {e}")),
    }
}

fn parse_auth(s: &str) -> Result<sluice_server::auth::AuthMethod, String> {
    match s {
        "scram-sha-256" => Ok(sluice_server::auth::AuthMethod::Scram),
        "trust" => Ok(sluice_server::auth::AuthMethod::Trust),
        other => Err(format!("unknown auth method {other}; use scram-sha-256 or trust")),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

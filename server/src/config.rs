//! Server configuration: defaults, then an optional TOML file, then flags
//! and environment variables (see `main.rs`).
//!
//! ```toml
//! listen = "127.0.0.1:6866"
//! http_listen = "127.0.0.1:6867"   # the console and /metrics; or "off"
//! metrics_auth = false             # true: /metrics asks for a login too
//! data_dir = "./sluice-data"
//! log = "info"
//! checkpoint_interval = "10s"   # or "off"
//! checkpoint_location = "s3://bucket/checkpoints"   # default: <data_dir>/checkpoints
//! [users]
//! sluice = "sluice"
//! [s3]
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! access_key_id = "test"
//! secret_access_key = "test"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_connectors::storage::S3Config;

/// Everything the server reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// HTTP address for `/metrics`; `off` for none. Default:
    /// [`DEFAULT_HTTP_LISTEN`].
    pub http_listen: Option<String>,
    /// Whether `/metrics` asks for the same users and passwords as the
    /// console (HTTP basic, as Prometheus's `basic_auth` sends them). Off by
    /// default: the metrics carry no row values or secrets, and scrapers
    /// usually reach them unauthenticated on a private address.
    pub metrics_auth: bool,
    /// Data directory: catalog, checkpoints, default landing zone.
    pub data_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `sluice=debug`.
    pub log: String,
    /// Users and passwords accepted by SCRAM-SHA-256 authentication.
    pub users: BTreeMap<String, String>,
    /// `scram-sha-256` (default) or `trust` (no password; local use only).
    pub auth: crate::auth::AuthMethod,
    /// Server-wide S3 settings (tables may override with `s3.*` options).
    pub s3: S3Config,
    /// Tasks per keyed operator of a continuous query and DataFusion's
    /// target partitions (default: number of cores; `--parallelism`).
    pub target_partitions: Option<usize>,
    /// How often jobs checkpoint (`10s`, `500ms`, `off`); sessions may
    /// change it for the jobs they create (`SET streaming.checkpoint_interval`).
    pub checkpoint_interval: String,
    /// Where jobs keep their checkpoints: a local path, or `s3://bucket/prefix`
    /// (with the `[s3]` settings) or `hdfs://namenode:port/path`. Default:
    /// `<data_dir>/checkpoints`.
    pub checkpoint_location: Option<String>,
    /// PEM certificate chain; with `tls_key`, clients may connect with TLS
    /// (`sslmode=require`). Without both, the server speaks plain TCP only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Registers `sluice_debug_panic(text)`, a function that panics, and
    /// `sluice_debug_fail_if_exists(path)`, one that fails while a file is
    /// there, so tests can check how failures are handled. Never set in
    /// production.
    pub debug_functions: bool,
    /// Most client connections at once, logged in or not; one more is
    /// refused with 53300 (a cancel request is still served).
    pub max_connections: usize,
    /// Seconds from connecting to a finished login.
    pub login_timeout_secs: u64,
    /// The largest message (a query's text, a Bind's values) a logged-in
    /// client may send, in bytes; before login the limit is 10,000.
    pub max_message_bytes: usize,
    /// Failed logins from one address within a minute after which its
    /// logins are refused until the minute has passed (0: no limit).
    pub login_failures_per_minute: usize,
    /// Directories besides the data directory where SQL may read and write
    /// local files (tables, COPY, sinks, file streams).
    pub file_roots: Vec<PathBuf>,
    /// Memory, in MiB, that all queries together may hold in sorts,
    /// aggregates and joins before they spill to disk (or fail with 53200
    /// where they can't); default: half of physical memory.
    pub memory_limit_mb: Option<usize>,
    /// Changes, in MiB, that one `SUBSCRIBE` to a materialized view may have
    /// waiting (a client reading slower than the view changes) before it is
    /// cut off with an error; default 32.
    pub subscriber_backlog_mb: Option<usize>,
    /// Refuse logins over connections without TLS (needs `tls_cert` and
    /// `tls_key`), as a `hostssl`-only pg_hba.conf does.
    pub require_tls: bool,
}

/// Where `/metrics` is served unless configured otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:6867";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6866".into(),
            http_listen: None,
            metrics_auth: false,
            data_dir: PathBuf::from("./sluice-data"),
            log: "info".into(),
            users: BTreeMap::from([("sluice".to_string(), "sluice".to_string())]),
            auth: crate::auth::AuthMethod::Scram,
            s3: S3Config::default(),
            target_partitions: None,
            checkpoint_interval: "10s".into(),
            checkpoint_location: None,
            tls_cert: None,
            tls_key: None,
            debug_functions: false,
            max_connections: 100,
            login_timeout_secs: 60,
            max_message_bytes: 64 << 20,
            login_failures_per_minute: 10,
            file_roots: Vec::new(),
            memory_limit_mb: None,
            subscriber_backlog_mb: None,
            require_tls: false,
        }
    }
}

impl Config {
    /// Reads a TOML config file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        if config.users.is_empty() {
            anyhow::bail!("config {}: [users] is empty, nobody could log in", path.display());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sluice.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:7000\"\n[users]\nalice = \"pw\"\n[s3]\nendpoint = \"http://127.0.0.1:9000\"\n").unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000");
        assert_eq!(c.users.get("alice").map(String::as_str), Some("pw"));
        assert_eq!(c.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.data_dir, PathBuf::from("./sluice-data"));
        std::fs::write(&p, "lisen = \"x\"\n").unwrap();
        assert!(Config::from_file(&p).unwrap_err().to_string().contains("lisen"));
    }
}

//! Object-store providers for table locations: S3 (any S3-compatible
//! endpoint) and HDFS.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;
use sluice_engine::{ErrorKind, Result, SluiceError, StoreProvider};
use url::Url;

/// Server-wide S3 settings; a table's `s3.*` options override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    /// Unset means AWS.
    pub endpoint: Option<String>,
    /// Region; any value works for most S3-compatible servers.
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints (local servers).
    pub allow_http: Option<bool>,
    /// Use virtual-hosted-style requests (`bucket.host`) instead of
    /// path-style (`host/bucket`). Off by default: local servers want
    /// path-style.
    pub virtual_hosted_style: Option<bool>,
}

const S3_OPTIONS: &[&str] = &[
    "s3.endpoint",
    "s3.region",
    "s3.access_key_id",
    "s3.secret_access_key",
    "s3.allow_http",
    "s3.virtual_hosted_style",
];

/// Builds S3 stores, one per bucket.
#[derive(Debug, Clone)]
pub struct S3StoreProvider {
    config: S3Config,
}

impl S3StoreProvider {
    pub fn new(config: S3Config) -> Self {
        // object_store's HTTP client uses rustls without choosing a crypto
        // provider; install ring (already in the tree) once per process. An
        // error only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self { config }
    }
}

pub(crate) fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(SluiceError::invalid_parameter(format!(
            "option '{key}' takes true or false, not '{value}'"
        ))),
    }
}

impl StoreProvider for S3StoreProvider {
    fn schemes(&self) -> &[&'static str] {
        &["s3", "s3a"]
    }

    fn option_keys(&self) -> &[&'static str] {
        S3_OPTIONS
    }

    fn build(&self, url: &Url, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
        let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
            SluiceError::invalid_parameter(format!("location {url}: an s3:// location needs a bucket"))
        })?;
        let get = |key: &str, server: &Option<String>| options.get(key).cloned().or_else(|| server.clone());
        let endpoint = get("s3.endpoint", &self.config.endpoint);
        let allow_http = match options.get("s3.allow_http") {
            Some(v) => parse_bool("s3.allow_http", v)?,
            None => self
                .config
                .allow_http
                .unwrap_or_else(|| endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
        };
        let virtual_hosted = match options.get("s3.virtual_hosted_style") {
            Some(v) => parse_bool("s3.virtual_hosted_style", v)?,
            None => self.config.virtual_hosted_style.unwrap_or(false),
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(virtual_hosted)
            // An unreachable endpoint must fail a query in seconds, not hang
            // it through minutes of retries.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60))
                    // Part of the client options: set here, or they reset it.
                    .with_allow_http(allow_http),
            );
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder =
            builder.with_region(get("s3.region", &self.config.region).unwrap_or_else(|| "us-east-1".into()));
        if let Some(k) = get("s3.access_key_id", &self.config.access_key_id) {
            builder = builder.with_access_key_id(k);
        }
        if let Some(k) = get("s3.secret_access_key", &self.config.secret_access_key) {
            builder = builder.with_secret_access_key(k);
        }
        let store = builder
            .build()
            .map_err(|e| SluiceError::invalid_parameter(format!("location {url}: {e}")))?;
        Ok(Arc::new(store))
    }
}

/// Builds HDFS stores, one per NameNode (`hdfs://host:port`), through the
/// native Rust HDFS client (no JVM, no libhdfs).
#[derive(Debug, Clone, Default)]
pub struct HdfsStoreProvider;

impl StoreProvider for HdfsStoreProvider {
    fn schemes(&self) -> &[&'static str] {
        &["hdfs"]
    }

    fn option_keys(&self) -> &[&'static str] {
        &[]
    }

    fn build(&self, url: &Url, _options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
            SluiceError::invalid_parameter(format!(
                "location {url}: an hdfs:// location needs a NameNode, as in hdfs://host:8020/path"
            ))
        })?;
        let namenode = match url.port() {
            Some(port) => format!("hdfs://{host}:{port}"),
            None => format!("hdfs://{host}"),
        };
        let store = HdfsObjectStoreBuilder::new()
            .with_url(namenode)
            .build()
            .map_err(|e| SluiceError::new(ErrorKind::StorageUnavailable, format!("location {url}: {e}")))?;
        Ok(Arc::new(store))
    }
}

//! Where landed data lives: the object stores behind table locations.
//!
//! The engine reads and writes every location through `object_store`. Local
//! paths work out of the box; other schemes (`s3://`, `hdfs://`) come from
//! [`StoreProvider`]s that the connectors crate implements and the server
//! registers. When a statement names a location, the engine asks the provider
//! for that scheme to build a store for the location's bucket or namenode and
//! registers it with DataFusion's runtime, so DataFusion's listing tables
//! (Hive partition discovery and pruning included) work on it unchanged.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use object_store::ObjectStore;
use url::Url;

use crate::error::{Result, SluiceError};

/// Builds object stores for one or more URL schemes.
pub trait StoreProvider: Send + Sync + Debug {
    /// The schemes this provider serves, such as `["s3", "s3a"]`.
    fn schemes(&self) -> &[&'static str];

    /// The option keys a table may set for this provider (for example
    /// `s3.endpoint`). They are taken out of the table's options before the
    /// rest go to the file format, and listed in the error for an unknown
    /// option.
    fn option_keys(&self) -> &[&'static str];

    /// Builds a store for the bucket / authority of `url`, with per-table
    /// `options` (only keys from [`Self::option_keys`]) layered over the
    /// server's configuration.
    fn build(&self, url: &Url, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>>;
}

/// The providers the engine knows, by scheme, and which local paths SQL
/// may use (shared by every clone, set once by the engine at start).
#[derive(Debug, Default, Clone)]
pub struct StoreRegistry {
    providers: Vec<Arc<dyn StoreProvider>>,
    local: Arc<std::sync::OnceLock<crate::paths::LocalPaths>>,
}

impl StoreRegistry {
    /// Confines local paths to `paths` from now on (the first call wins).
    pub fn confine_local(&self, paths: crate::paths::LocalPaths) {
        let _ = self.local.set(paths);
    }

    /// A local path (absolute, relative to the data directory, or
    /// `file://`) as an absolute one, if SQL may use it (42501 if not).
    /// Without confinement (the engine's own tests, library use) relative
    /// paths are taken from the working directory, as the file system does.
    pub fn local_path(&self, path: &str) -> Result<String> {
        let resolved = match self.local.get() {
            Some(paths) => paths.check(path)?,
            None => std::path::absolute(path.strip_prefix("file://").unwrap_or(path))?,
        };
        let mut out = resolved.display().to_string();
        // A trailing slash says "directory" to DataFusion: keep it.
        if path.ends_with('/') && !out.ends_with('/') {
            out.push('/');
        }
        Ok(out)
    }

    /// Adds a provider; a later provider for the same scheme wins.
    pub fn register(&mut self, provider: Arc<dyn StoreProvider>) {
        self.providers.insert(0, provider);
    }

    fn provider_for(&self, scheme: &str) -> Option<&Arc<dyn StoreProvider>> {
        self.providers.iter().find(|p| p.schemes().contains(&scheme))
    }

    /// True when some provider claims `key` as one of its options.
    pub fn is_store_option(&self, key: &str) -> bool {
        self.providers.iter().any(|p| p.option_keys().contains(&key))
    }

    /// Every option key any provider accepts, for error messages.
    pub fn store_option_keys(&self) -> Vec<&'static str> {
        let mut keys: Vec<_> = self
            .providers
            .iter()
            .flat_map(|p| p.option_keys().iter().copied())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Resolves a table location to the store URL DataFusion should use and
    /// the store to register for it, or `None` for local paths, which
    /// DataFusion reads without help.
    pub fn store_for_location(
        &self,
        location: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Option<(Url, Arc<dyn ObjectStore>)>> {
        let Ok(url) = Url::parse(location) else {
            // A plain path: local disk.
            return Ok(None);
        };
        let scheme = url.scheme();
        if scheme == "file" || scheme.len() == 1 {
            // `file://` or a Windows drive letter: local disk.
            return Ok(None);
        }
        let Some(provider) = self.provider_for(scheme) else {
            let mut known: Vec<_> = self
                .providers
                .iter()
                .flat_map(|p| p.schemes().iter().copied())
                .collect();
            known.sort_unstable();
            return Err(SluiceError::not_supported(format!(
                "location {location}: no storage for scheme '{scheme}://'; \
                 supported: file://, {}",
                known
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let store = provider.build(&url, options)?;
        let mut base = url.clone();
        base.set_path("");
        base.set_query(None);
        base.set_fragment(None);
        Ok(Some((base, store)))
    }
}

/// The object store and the path inside it for a location: `file://` URLs
/// and plain paths are local (inside the directories SQL may use), other
/// schemes come from the registry (with storage options such as
/// `s3.endpoint`).
pub fn resolve_location(
    stores: &StoreRegistry,
    location: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path)> {
    if let Some((_, store)) = stores.store_for_location(location, options)? {
        let url = url::Url::parse(location)
            .map_err(|e| SluiceError::invalid_parameter(format!("invalid location '{location}': {e}")))?;
        let path = object_store::path::Path::parse(url.path().trim_start_matches('/'))
            .map_err(|e| SluiceError::invalid_parameter(format!("invalid path in '{location}': {e}")))?;
        return Ok((store, path));
    }
    let local = location.strip_prefix("file://").unwrap_or(location);
    if local.contains("://") {
        return Err(SluiceError::invalid_parameter(format!(
            "no storage for '{location}': use file://, s3:// or hdfs://"
        )));
    }
    let local = stores.local_path(local)?;
    std::fs::create_dir_all(&local)?;
    let abs = std::fs::canonicalize(&local)?;
    let store = Arc::new(object_store::local::LocalFileSystem::new());
    let path = object_store::path::Path::from_filesystem_path(&abs).map_err(|e| {
        SluiceError::new(
            crate::error::ErrorKind::InvalidParameter,
            format!("invalid path '{location}': {e}"),
        )
    })?;
    Ok((store, path))
}

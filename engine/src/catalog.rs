//! The durable catalog: what a user has declared, kept in the data directory.
//!
//! The catalog is one JSON document, `catalog.json`. Every change writes the
//! whole document to a temporary file, fsyncs it, renames it over the old one
//! and fsyncs the directory, so a crash (even `kill -9`) at any moment leaves
//! either the old or the new catalog, never a half-written one. Catalogs are
//! small (one entry per declared object), so rewriting the whole file is
//! cheap and keeps the format trivially inspectable.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, SluiceError};

const CATALOG_FILE: &str = "catalog.json";
const FORMAT_VERSION: u32 = 1;

/// What kind of object a catalog entry declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// An external table over files (Parquet, CSV, JSON) in object storage.
    Table,
    /// A stream backed by a source connector.
    Stream,
    /// A continuous query writing to a sink connector.
    Sink,
    /// A continuous query whose result is kept and served.
    MaterializedView,
    /// A named query, planned into the queries that read it.
    View,
}

impl ObjectKind {
    /// What users call it.
    pub fn noun(&self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Stream => "stream",
            ObjectKind::Sink => "sink",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::View => "view",
        }
    }

    /// The error for `DROP <want> name` when `name` is this kind of
    /// object: says what it is and the DROP that fits it.
    pub fn not_a(self, name: &str, want: ObjectKind) -> SluiceError {
        SluiceError::new(
            ErrorKind::Semantic,
            format!(
                "{name} is a {}, not a {}; use DROP {} {name}",
                self.noun(),
                want.noun(),
                self.noun().to_ascii_uppercase()
            ),
        )
    }
}

/// One declared object. `sql` is the normalized statement that recreates it;
/// replaying it on start is how the object comes back after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Lower-case object name, unique across kinds.
    pub name: String,
    /// What the entry declares.
    pub kind: ObjectKind,
    /// The statement that recreates the object.
    pub sql: String,
    /// The role that created it (entries written before owners were kept
    /// have none: the first user of the config file owns them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A role created with `CREATE ROLE` (users of the config file are not
/// stored here). The password is kept as SCRAM-SHA-256 needs it to check a
/// login: a salt and the salted password (PBKDF2), never the password
/// itself; the salted password is as good as the password for logging in,
/// which is one more reason the catalog file is the server's own (0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// May log in (`LOGIN`).
    pub login: bool,
    /// May change things (`SUPERUSER`); otherwise the role reads only.
    pub superuser: bool,
    /// `(salt, salted password)`, hex; `None`: no password, no login.
    pub password: Option<(String, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    entries: BTreeMap<String, CatalogEntry>,
    /// Roles, by name (a namespace of their own, as in Postgres).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    roles: BTreeMap<String, Role>,
    /// `CREATE SECRET` values, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, String>,
}

/// The catalog on disk, with its current contents in memory.
#[derive(Debug)]
pub struct DurableCatalog {
    dir: PathBuf,
    entries: BTreeMap<String, CatalogEntry>,
    roles: BTreeMap<String, Role>,
    secrets: BTreeMap<String, String>,
}

impl DurableCatalog {
    /// Opens the catalog in `dir`, creating the directory and an empty catalog
    /// if there is none.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(CATALOG_FILE);
        // A catalog written by an older build may be readable by all.
        restrict(&path, 0o600)?;
        let (entries, roles, secrets) = match fs::read(&path) {
            Ok(bytes) => {
                let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| {
                    SluiceError::new(
                        ErrorKind::Internal,
                        format!("catalog {} is not valid: {e}", path.display()),
                    )
                })?;
                if file.version != FORMAT_VERSION {
                    return Err(SluiceError::internal(format!(
                        "catalog {} has format version {}, this build reads {FORMAT_VERSION}",
                        path.display(),
                        file.version
                    )));
                }
                (file.entries, file.roles, file.secrets)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e.into()),
        };
        // A temporary file left by a crash mid-write is garbage: the rename
        // never happened, so the old catalog is the truth.
        let _ = fs::remove_file(dir.join(format!("{CATALOG_FILE}.tmp")));
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
            roles,
            secrets,
        })
    }

    /// A secret's value, if there is one by that name.
    pub fn secret(&self, name: &str) -> Option<&String> {
        self.secrets.get(name)
    }

    /// The names of all secrets.
    pub fn secret_names(&self) -> impl Iterator<Item = &String> {
        self.secrets.keys()
    }

    /// Adds or replaces a secret, durably.
    pub fn put_secret(&mut self, name: &str, value: &str) -> Result<()> {
        let mut secrets = self.secrets.clone();
        secrets.insert(name.to_string(), value.to_string());
        self.write_file(&self.entries, &self.roles, &secrets)?;
        self.secrets = secrets;
        Ok(())
    }

    /// Removes a secret, durably; false if there was none.
    pub fn remove_secret(&mut self, name: &str) -> Result<bool> {
        let mut secrets = self.secrets.clone();
        if secrets.remove(name).is_none() {
            return Ok(false);
        }
        self.write_file(&self.entries, &self.roles, &secrets)?;
        self.secrets = secrets;
        Ok(true)
    }

    /// The role with that name, if any.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every role made with `CREATE ROLE`, by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// Adds or replaces a role, durably.
    pub fn put_role(&mut self, role: Role) -> Result<()> {
        let mut roles = self.roles.clone();
        roles.insert(role.name.clone(), role);
        self.persist(&self.entries, &roles)?;
        self.roles = roles;
        Ok(())
    }

    /// Removes a role, durably; false if there was none.
    pub fn remove_role(&mut self, name: &str) -> Result<bool> {
        let mut roles = self.roles.clone();
        if roles.remove(name).is_none() {
            return Ok(false);
        }
        self.persist(&self.entries, &roles)?;
        self.roles = roles;
        Ok(true)
    }

    /// All entries, in name order.
    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.values()
    }

    /// The entry with that name, if any.
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(name)
    }

    /// Adds or replaces an entry and makes the change durable before
    /// returning.
    pub fn put(&mut self, entry: CatalogEntry) -> Result<()> {
        let mut next = self.entries.clone();
        next.insert(entry.name.clone(), entry);
        self.persist(&next, &self.roles)?;
        self.entries = next;
        Ok(())
    }

    /// Removes an entry, durably. Removing a missing entry is not an error.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        if !self.entries.contains_key(name) {
            return Ok(());
        }
        let mut next = self.entries.clone();
        next.remove(name);
        self.persist(&next, &self.roles)?;
        self.entries = next;
        Ok(())
    }

    fn persist(
        &self,
        entries: &BTreeMap<String, CatalogEntry>,
        roles: &BTreeMap<String, Role>,
    ) -> Result<()> {
        self.write_file(entries, roles, &self.secrets)
    }

    fn write_file(
        &self,
        entries: &BTreeMap<String, CatalogEntry>,
        roles: &BTreeMap<String, Role>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<()> {
        let file = CatalogFile {
            version: FORMAT_VERSION,
            entries: entries.clone(),
            roles: roles.clone(),
            secrets: secrets.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| SluiceError::internal(format!("catalog serialization: {e}")))?;
        let tmp = self.dir.join(format!("{CATALOG_FILE}.tmp"));
        {
            // Options may hold secrets: the file is the server's own.
            let mut f = private_file(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(CATALOG_FILE))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// Creates (truncating) a file only its owner can read and write.
fn private_file(path: &Path) -> std::io::Result<File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let f = o.open(path)?;
    // The mode applies only when the file is created.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(f)
}

/// Sets the mode of `path` if it exists (Unix only).
pub fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    match fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> CatalogEntry {
        CatalogEntry {
            name: name.into(),
            kind: ObjectKind::Table,
            sql: format!("CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION '/x'"),
            owner: None,
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_catalog_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CATALOG_FILE), br#"{"version":1,"entries":{}}"#).unwrap();
        fs::set_permissions(dir.path().join(CATALOG_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = DurableCatalog::open(dir.path()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(CATALOG_FILE)), 0o600);
        c.put(entry("t")).unwrap();
        assert_eq!(mode(&dir.path().join(CATALOG_FILE)), 0o600);
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DurableCatalog::open(dir.path()).unwrap();
        c.put(entry("a")).unwrap();
        c.put(entry("b")).unwrap();
        c.remove("a").unwrap();
        drop(c);
        let c = DurableCatalog::open(dir.path()).unwrap();
        let names: Vec<_> = c.entries().map(|e| e.name.clone()).collect();
        assert_eq!(names, vec!["b"]);
        assert_eq!(c.get("b"), Some(&entry("b")));
    }

    #[test]
    fn leftover_temp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DurableCatalog::open(dir.path()).unwrap();
        c.put(entry("a")).unwrap();
        fs::write(dir.path().join("catalog.json.tmp"), b"{ half writ").unwrap();
        let c = DurableCatalog::open(dir.path()).unwrap();
        assert_eq!(c.entries().count(), 1);
        assert!(!dir.path().join("catalog.json.tmp").exists());
    }

    #[test]
    fn corrupt_catalog_is_an_error_not_an_empty_catalog() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("catalog.json"), b"not json").unwrap();
        let err = DurableCatalog::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not valid"), "{err}");
    }
}

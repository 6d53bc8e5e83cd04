//! Which local paths SQL may read and write.
//!
//! The server runs with its own file permissions (often root), so a local
//! path in `CREATE EXTERNAL TABLE ... LOCATION`, `COPY ... TO`, a sink's or a
//! file stream's `path` must stay inside the directories the operator
//! allowed: the data directory and the config's `file_roots`. Sluice's own
//! files are never reachable from SQL, even inside the data directory: the
//! catalog (which holds connector options, secrets among them), the
//! checkpoints, and the data directory's root itself (a sink with `path = ''`
//! would write beside the catalog).
//!
//! Paths are resolved before they are checked: the longest existing prefix
//! through `canonicalize` (symlinks followed), the rest lexically, so
//! `lake/../../etc` and a symlink out of a root are both caught.

use std::path::{Component, Path, PathBuf};

use crate::error::{ErrorKind, Result, SluiceError};

/// The local paths SQL may use.
#[derive(Debug, Clone)]
pub struct LocalPaths {
    data_dir: PathBuf,
    roots: Vec<PathBuf>,
    /// Sluice's own files and directories inside the roots.
    own: Vec<PathBuf>,
}

impl LocalPaths {
    /// The data directory and `extra_roots` (which must exist); `own` are
    /// paths SQL may never touch (besides the catalog and the data
    /// directory's root).
    pub fn new(data_dir: &Path, extra_roots: &[PathBuf], own: &[PathBuf]) -> Result<Self> {
        let data_dir = std::fs::canonicalize(data_dir)?;
        let mut roots = vec![data_dir.clone()];
        for r in extra_roots {
            let c = std::fs::canonicalize(r)
                .map_err(|e| SluiceError::invalid_parameter(format!("file root {}: {e}", r.display())))?;
            roots.push(c);
        }
        let mut own: Vec<PathBuf> = own.iter().map(|p| resolve(p)).collect();
        own.push(data_dir.join("catalog.json"));
        own.push(data_dir.join("catalog.json.tmp"));
        Ok(Self { data_dir, roots, own })
    }

    /// The data directory (relative paths in SQL are taken from it).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `path` (absolute, or relative to the data directory; `file://`
    /// allowed) resolved, if SQL may use it; else 42501.
    pub fn check(&self, path: &str) -> Result<PathBuf> {
        let local = path.strip_prefix("file://").unwrap_or(path);
        let p = Path::new(local);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.data_dir.join(p)
        };
        let resolved = resolve(&abs);
        let refuse = |why: &str| {
            Err(SluiceError::new(
                ErrorKind::InsufficientPrivilege,
                format!("path '{path}' {why}"),
            ))
        };
        if !self.roots.iter().any(|r| resolved.starts_with(r)) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return refuse(&format!(
                "is outside the directories SQL may use ({}); add it to file_roots in the config",
                roots.join(", ")
            ));
        }
        if resolved == self.data_dir {
            return refuse("is the data directory itself; name a directory inside it");
        }
        if self.own.iter().any(|o| resolved.starts_with(o)) {
            return refuse("is one of Sluice's own files (catalog or checkpoints)");
        }
        Ok(resolved)
    }
}

/// Removes the staging files object_store's local file system leaves when a
/// write is cut off (`<file>#<n>`: COPY and sinks write there, then rename;
/// after a kill -9 they stay, invisible to listings, taking disk) under
/// `dir`, except under `skip`. Symlinks are not followed. Returns the number
/// of files and bytes removed. Meant for start-up, when no write runs.
pub fn remove_staging_files(dir: &Path, skip: &[PathBuf]) -> (usize, u64) {
    let mut removed = (0, 0);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if skip.iter().any(|s| d.starts_with(s)) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() && is_staging_name(&entry.file_name().to_string_lossy()) {
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(&path).is_ok() {
                    removed.0 += 1;
                    removed.1 += bytes;
                }
            }
        }
    }
    removed
}

/// `name#123`: a staging file's name.
fn is_staging_name(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((base, n)) => !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// `path` made absolute and resolved component by component: while the
/// path exists each step is canonicalized (symlinks followed, so `..` after
/// a symlink leaves its target), past that point the rest is lexical
/// (nothing that does not exist can be a symlink).
fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut cur = PathBuf::from("/");
    let mut exists = true;
    for c in abs.components() {
        match c {
            Component::Normal(name) => {
                let next = cur.join(name);
                match std::fs::canonicalize(&next) {
                    Ok(real) if exists => cur = real,
                    _ => {
                        exists = false;
                        cur = next;
                    }
                }
            }
            Component::ParentDir => {
                cur.pop();
                // Back out of the part that does not exist: from here on
                // components are followed again (a symlink among them).
                if !exists {
                    exists = std::fs::canonicalize(&cur).is_ok_and(|real| real == cur);
                }
            }
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake/dt=1");
        let ck = dir.path().join("checkpoints");
        std::fs::create_dir_all(&lake).unwrap();
        std::fs::create_dir_all(&ck).unwrap();
        for f in [
            "part-0.parquet#1",
            "part-0.parquet#12",
            "part-0.parquet",
            "a#b",
            "#3",
            "notes#",
        ] {
            std::fs::write(lake.join(f), b"x").unwrap();
        }
        std::fs::write(ck.join("state#1"), b"x").unwrap();
        assert_eq!(
            remove_staging_files(dir.path(), std::slice::from_ref(&ck)),
            (2, 2)
        );
        let mut left: Vec<String> = std::fs::read_dir(&lake)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["#3", "a#b", "notes#", "part-0.parquet"]);
        assert!(ck.join("state#1").exists());
    }

    #[test]
    fn paths_stay_inside_the_roots_and_out_of_sluices_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let extra = dir.path().join("lake");
        std::fs::create_dir_all(data.join("checkpoints")).unwrap();
        std::fs::create_dir_all(&extra).unwrap();
        let paths =
            LocalPaths::new(&data, std::slice::from_ref(&extra), &[data.join("checkpoints")]).unwrap();
        let data = std::fs::canonicalize(&data).unwrap();
        let extra = std::fs::canonicalize(&extra).unwrap();
        assert_eq!(paths.check("out/a").unwrap(), data.join("out/a"));
        assert_eq!(paths.check("missing/../b").unwrap(), data.join("b"));
        assert_eq!(
            paths.check(extra.join("t").to_str().unwrap()).unwrap(),
            extra.join("t")
        );
        assert_eq!(
            paths.check(&format!("file://{}/x/", extra.display())).unwrap(),
            extra.join("x")
        );
        let refused = |p: &str| paths.check(p).map(|_| ()).map_err(|e| e.kind());
        for p in [
            "/etc/shadow",
            "/proc/self",
            "",
            ".",
            "catalog.json",
            "checkpoints/job/1",
            "../outside",
            "out/../../outside",
            "out/../../../etc",
            "missing/../../outside",
        ] {
            assert_eq!(refused(p), Err(ErrorKind::InsufficientPrivilege), "{p:?}");
        }
        // A symlink out of a root is followed and refused.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", data.join("link")).unwrap();
            assert_eq!(refused("link/passwd"), Err(ErrorKind::InsufficientPrivilege));
            assert_eq!(
                refused("missing/../link/passwd"),
                Err(ErrorKind::InsufficientPrivilege)
            );
        }
    }
}

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

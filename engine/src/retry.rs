//! Storage operations retried through transient failures.
//!
//! Running out of file descriptors (EMFILE for the process, ENFILE for the
//! system) is caused by other work (a burst of client connections, another
//! job's files) and passes when that work does. A sink that failed on it
//! would fail for good once its restarts ran out, so storage operations
//! wait it out, for up to [`OUT_OF_DESCRIPTORS_FOR`], before failing. Any
//! other error gets a few quick attempts.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long an operation keeps retrying while descriptors are exhausted.
pub const OUT_OF_DESCRIPTORS_FOR: Duration = Duration::from_secs(300);

/// Attempts at an operation that failed for another reason.
pub const ATTEMPTS: u32 = 3;

/// Retries taken because descriptors were exhausted, since the process
/// started.
pub static OUT_OF_DESCRIPTORS_RETRIES: AtomicU64 = AtomicU64::new(0);

/// True when `e`, or an error it wraps, is EMFILE or ENFILE ("Too many open
/// files").
pub fn out_of_descriptors(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // EMFILE 24, ENFILE 23 on Linux and the BSDs.
            if matches!(io.raw_os_error(), Some(23 | 24)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Runs `op` until it succeeds: while it fails with exhausted descriptors
/// for up to [`OUT_OF_DESCRIPTORS_FOR`] (backing off to 5 s), otherwise up
/// to [`ATTEMPTS`] times. `op` must be safe to repeat after a failure.
pub async fn retry<T, E, F, Fut>(what: impl Display, op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    retry_up_to(what, ATTEMPTS, op).await
}

/// [`retry`] for an operation that is not safe to repeat after an unknown
/// failure (a create-if-absent that may have succeeded): waits out
/// exhausted descriptors only, which fail before anything is written.
pub async fn wait_for_descriptors<T, E, F, Fut>(what: impl Display, op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    retry_up_to(what, 1, op).await
}

async fn retry_up_to<T, E, F, Fut>(what: impl Display, attempts: u32, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let started = Instant::now();
    let mut attempt = 1u32;
    let mut waits = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if out_of_descriptors(&e) && started.elapsed() < OUT_OF_DESCRIPTORS_FOR => {
                OUT_OF_DESCRIPTORS_RETRIES.fetch_add(1, Ordering::Relaxed);
                if waits.is_power_of_two() || waits == 0 {
                    tracing::warn!(
                        waited_s = started.elapsed().as_secs(),
                        "{what}: out of file descriptors, waiting for some to be freed: {e}"
                    );
                }
                waits += 1;
                tokio::time::sleep(Duration::from_millis((50u64 << waits.min(7)).min(5_000))).await;
            }
            Err(e) if attempt < attempts => {
                tracing::warn!(attempt, "{what} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    /// Descriptors really run out (the open-files limit lowered and every
    /// one taken): a write through object_store waits, and lands once some
    /// are freed. (Each test is a process of its own under nextest.)
    #[test]
    fn a_write_waits_out_exhausted_descriptors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        rlimit::setrlimit(rlimit::Resource::NOFILE, open + 16, hard).unwrap();
        let mut hog = vec![];
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hog.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(24), "{e}");
                    break;
                }
            }
        }
        let before = OUT_OF_DESCRIPTORS_RETRIES.load(Ordering::Relaxed);
        let path = Path::from("out/f.json");
        rt.block_on(async {
            let write = retry("writing f.json", || {
                store.put(&path, PutPayload::from_static(b"{}"))
            });
            tokio::pin!(write);
            // Not done while every descriptor is taken...
            let waited = tokio::time::timeout(Duration::from_millis(800), &mut write).await;
            assert!(
                waited.is_err(),
                "the write finished without descriptors: {waited:?}"
            );
            assert!(OUT_OF_DESCRIPTORS_RETRIES.load(Ordering::Relaxed) > before);
            // ...and done once they are back.
            hog.clear();
            write.await.unwrap();
        });
        rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
        assert_eq!(std::fs::read(dir.path().join("out/f.json")).unwrap(), b"{}");
    }

    #[test]
    fn other_failures_get_a_few_attempts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let mut tries = 0;
        let (missing, elsewhere) = (Path::from("missing"), Path::from("elsewhere"));
        let out = rt.block_on(retry("renaming", || {
            tries += 1;
            store.rename(&missing, &elsewhere)
        }));
        assert!(
            matches!(out, Err(object_store::Error::NotFound { .. })),
            "{out:?}"
        );
        assert_eq!(tries, ATTEMPTS);
        let mut tries = 0;
        let out = rt.block_on(wait_for_descriptors("renaming", || {
            tries += 1;
            store.rename(&missing, &elsewhere)
        }));
        assert!(out.is_err());
        assert_eq!(tries, 1);
    }
}

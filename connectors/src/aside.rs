//! Work run aside from the caller's runtime.

use std::future::Future;
use std::time::Duration;

use sluice_engine::{Result, SluiceError};

/// Runs `future` on a thread of its own, for at most `timeout` (`None`
/// when it took longer). For checks at CREATE: those run inside any kind
/// of runtime, and must not block it.
pub fn run_aside<T: Send>(future: impl Future<Output = T> + Send, timeout: Duration) -> Result<Option<T>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok::<_, std::io::Error>(rt.block_on(async { tokio::time::timeout(timeout, future).await.ok() }))
        })
        .join()
        .map_err(|_| SluiceError::internal("a check at CREATE panicked"))
    })?
    .map_err(|e| SluiceError::internal(format!("a check at CREATE: {e}")))
}

//! Where queries and jobs run: a Tokio runtime of the engine's own.
//!
//! A query's work (planning, DataFusion's operators, a job's tasks) is CPU
//! bound and yields only between batches, if at all. On the runtime that
//! accepts connections it would starve the accept loop, cancel requests,
//! other sessions and the shutdown signal (a cross join of two large
//! `generate_series` froze the whole server). So the server hands every
//! statement to [`Engine::spawn`](crate::Engine::spawn) and reads result
//! rows through [`forward`]: the connection side only waits, and the
//! operating system shares the cores between the two runtimes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::task::{JoinError, JoinHandle};

use crate::error::{Result, SluiceError};

/// The engine's runtime; shut down (without waiting) when the engine is
/// dropped, which may happen on one of its own threads.
pub(crate) struct ComputeRuntime {
    runtime: Option<Runtime>,
}

impl ComputeRuntime {
    pub(crate) fn new(threads: usize) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sluice-compute")
            // Planning recurses over expression trees (up to the parser's
            // nesting limit): room to spare, reserved rather than used.
            .thread_stack_size(8 << 20)
            .enable_all()
            .build()
            .map_err(|e| SluiceError::internal(format!("starting the compute runtime: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub(crate) fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("runtime runs until dropped")
            .handle()
            .clone()
    }
}

impl Drop for ComputeRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A task on the compute runtime; dropping this aborts it (a client that
/// goes away or cancels stops its statement at its next await).
pub struct Offloaded<T> {
    handle: JoinHandle<T>,
}

impl<T> Offloaded<T> {
    pub(crate) fn new(handle: JoinHandle<T>) -> Self {
        Self { handle }
    }

    /// A handle that stops the work from elsewhere (a cancel request).
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.handle.abort_handle()
    }
}

impl<T> Future for Offloaded<T> {
    type Output = std::result::Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle).poll(cx)
    }
}

impl<T> Drop for Offloaded<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A result stream read on another runtime: a task on the current runtime
/// (the compute one) pulls `stream` and hands batches over a small channel.
/// When the reader drops its end, the task drops `stream` (and with it
/// DataFusion's own tasks) at once, even while it waits for a batch.
pub fn forward(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let pull = async move {
        let mut stream = stream;
        loop {
            let next = tokio::select! {
                _ = tx.closed() => break,
                next = AssertUnwindSafe(stream.next()).catch_unwind() => next,
            };
            let item = match next {
                Ok(Some(item)) => item,
                Ok(None) => break,
                // A panic while computing rows fails this query alone (the
                // reader sees an error, not a short result).
                Err(panic) => {
                    let msg = panic_text(&*panic);
                    tracing::error!(panic = %msg, "statement panicked");
                    Err(SluiceError::internal(format!("internal error: {msg}")).into_datafusion())
                }
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    tokio::spawn(pull);
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// The message a panic was raised with.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

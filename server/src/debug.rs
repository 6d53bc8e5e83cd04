//! Functions for testing failure handling; registered only when the config
//! says `debug_functions = true`.

use std::sync::Arc;

use sluice_engine::datafusion::arrow::datatypes::DataType;
use sluice_engine::datafusion::common::{DataFusionError, ScalarValue};
use sluice_engine::datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// `sluice_debug_panic(text)`: panics with the given message when evaluated.
/// Volatile, so the planner never folds it away at planning time.
pub fn panic_udf() -> ScalarUDF {
    create_udf(
        "sluice_debug_panic",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(|args: &[ColumnarValue]| {
            let msg = match &args[0] {
                ColumnarValue::Scalar(s) => s.to_string(),
                ColumnarValue::Array(a) => format!("{} rows", a.len()),
            };
            panic!("sluice_debug_panic: {msg}");
        }),
    )
}

/// `sluice_debug_fail_if_exists(path)`: `true` while no file is at `path`,
/// an execution error while one is. A test fails a running job at a moment
/// of its choosing by creating the file, and lets its restarts succeed by
/// removing it.
pub fn fail_if_exists_udf() -> ScalarUDF {
    create_udf(
        "sluice_debug_fail_if_exists",
        vec![DataType::Utf8],
        DataType::Boolean,
        Volatility::Volatile,
        Arc::new(|args: &[ColumnarValue]| {
            let path = match &args[0] {
                ColumnarValue::Scalar(s) => s.to_string(),
                ColumnarValue::Array(_) => {
                    return Err(DataFusionError::Execution(
                        "sluice_debug_fail_if_exists takes a constant path".into(),
                    ));
                }
            };
            if std::path::Path::new(&path).exists() {
                return Err(DataFusionError::Execution(format!(
                    "sluice_debug_fail_if_exists: {path} exists"
                )));
            }
            Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
        }),
    )
}

/// Whether a call of `sluice_debug_sleep_if_exists` is sleeping.
static SLEEPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `sluice_debug_sleep_if_exists(path, ms)`: `true`, after sleeping `ms`
/// milliseconds per call while a file is at `path`. A test stalls a task at
/// a moment of its choosing (so that it can't take part in a checkpoint).
/// One call sleeps at a time, and it gives its runtime thread's other work
/// to another thread first (`block_in_place`): the server keeps answering.
pub fn sleep_if_exists_udf() -> ScalarUDF {
    create_udf(
        "sluice_debug_sleep_if_exists",
        vec![DataType::Utf8, DataType::Int64],
        DataType::Boolean,
        Volatility::Volatile,
        Arc::new(|args: &[ColumnarValue]| {
            let (ColumnarValue::Scalar(path), ColumnarValue::Scalar(ScalarValue::Int64(Some(ms)))) =
                (&args[0], &args[1])
            else {
                return Err(DataFusionError::Execution(
                    "sluice_debug_sleep_if_exists takes a constant path and milliseconds".into(),
                ));
            };
            use std::sync::atomic::Ordering;
            if std::path::Path::new(&path.to_string()).exists()
                && SLEEPING
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                let sleep = || std::thread::sleep(std::time::Duration::from_millis((*ms).max(0) as u64));
                // On the server's runtime the thread is handed over first,
                // so that what was queued on it (a connection's accept, the
                // checkpoint coordinator) runs elsewhere meanwhile: only the
                // calling task stalls.
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(sleep)
                    }
                    _ => sleep(),
                }
                SLEEPING.store(false, Ordering::SeqCst);
            }
            Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
        }),
    )
}

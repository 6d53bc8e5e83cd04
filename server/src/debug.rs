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

//! Functions for testing failure handling; registered only when the config
//! says `debug_functions = true`.

use std::sync::Arc;

use sluice_engine::datafusion::arrow::datatypes::DataType;
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

//! Functions Sluice adds to or adjusts in DataFusion's set.
//!
//! `lpad`, `rpad`, `repeat`: DataFusion's, refusing (54000) a result over
//! 1 GiB in one batch before allocating it, as Postgres refuses strings over
//! 1 GB; `lpad('x', 2147483647)` on a few rows would otherwise ask for more
//! memory than there is and abort the process.
//!
//! `to_char(ts, template)`: DataFusion's takes chrono patterns (`%Y-%m-%d`);
//! Postgres users write Postgres templates (`YYYY-MM-DD`), which DataFusion
//! would print back literally. A template without `%` is read as a Postgres
//! template and translated; one with `%` goes to DataFusion as it is.
//!
//! `mod(y, x)`: Postgres' (and Flink's) remainder function, as `y % x` with
//! the operator's type coercion; division by zero is 22012.

use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    ColumnarValue, Operator, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// Postgres' `to_char` templates on top of DataFusion's.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgToChar {
    inner: Arc<ScalarUDF>,
}

impl PgToChar {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            inner: datafusion::functions::datetime::to_char(),
        })
    }
}

impl ScalarUDFImpl for PgToChar {
    fn name(&self) -> &str {
        "to_char"
    }

    /// DataFusion's aliases too (`date_format`), so that no name still
    /// leads to the replaced function when a session's state is rebuilt.
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some(template) = args.args.get_mut(1) {
            *template = match std::mem::replace(template, ColumnarValue::Scalar(ScalarValue::Null)) {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(t))) => {
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(chrono_template(&t))))
                }
                ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(t))) => {
                    ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(chrono_template(&t))))
                }
                ColumnarValue::Scalar(ScalarValue::Utf8View(Some(t))) => {
                    ColumnarValue::Scalar(ScalarValue::Utf8View(Some(chrono_template(&t))))
                }
                ColumnarValue::Array(a) if matches!(a.data_type(), DataType::Utf8) => {
                    let a = a.as_any().downcast_ref::<StringArray>().expect("utf8");
                    let translated: StringArray = a.iter().map(|t| t.map(chrono_template)).collect();
                    ColumnarValue::Array(Arc::new(translated))
                }
                other => other,
            };
        }
        self.inner.invoke_with_args(args)
    }
}

/// A Postgres template as a chrono format; a template with `%` is taken to
/// be chrono's already.
pub fn chrono_template(template: &str) -> String {
    if template.contains('%') {
        return template.to_string();
    }
    // Longest patterns first; `FM` (no padding) is handled before them.
    const PATTERNS: &[(&str, &str, &str)] = &[
        // (Postgres, chrono, chrono without padding)
        ("HH24", "%H", "%-H"),
        ("HH12", "%I", "%-I"),
        ("YYYY", "%Y", "%Y"),
        ("Month", "%B", "%B"),
        ("MONTH", "%B", "%B"),
        ("month", "%B", "%B"),
        ("DDD", "%j", "%-j"),
        ("Mon", "%b", "%b"),
        ("MON", "%b", "%b"),
        ("mon", "%b", "%b"),
        ("Day", "%A", "%A"),
        ("DAY", "%A", "%A"),
        ("day", "%A", "%A"),
        ("A.M.", "%p", "%p"),
        ("P.M.", "%p", "%p"),
        ("YY", "%y", "%y"),
        ("MM", "%m", "%-m"),
        ("DD", "%d", "%-d"),
        ("HH", "%I", "%-I"),
        ("MI", "%M", "%-M"),
        ("SS", "%S", "%-S"),
        ("MS", "%3f", "%3f"),
        ("US", "%6f", "%6f"),
        ("AM", "%p", "%p"),
        ("PM", "%p", "%p"),
        ("am", "%P", "%P"),
        ("pm", "%P", "%P"),
        ("Dy", "%a", "%a"),
        ("DY", "%a", "%a"),
        ("dy", "%a", "%a"),
        ("TZ", "%Z", "%Z"),
        ("OF", "%:z", "%:z"),
    ];
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    'outer: while !rest.is_empty() {
        // "quoted text" is literal.
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push_str(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("");
            continue;
        }
        let (fill, body) = match rest.strip_prefix("FM") {
            Some(b) => (true, b),
            None => (false, rest),
        };
        for (pg, padded, unpadded) in PATTERNS {
            if let Some(after) = body.strip_prefix(pg) {
                out.push_str(if fill { unpadded } else { padded });
                rest = after;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `mod(y, x)`: the remainder of `y / x`, as the `%` operator computes it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Mod {
    signature: Signature,
}

impl Mod {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::user_defined(datafusion::logical_expr::Volatility::Immutable),
        })
    }

    fn coercer<'a>(lhs: &'a DataType, rhs: &'a DataType) -> BinaryTypeCoercer<'a> {
        BinaryTypeCoercer::new(lhs, &Operator::Modulo, rhs)
    }
}

impl ScalarUDFImpl for Mod {
    fn name(&self) -> &str {
        "mod"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [y, x] = arg_types else {
            return datafusion::common::plan_err!("mod(y, x) takes two arguments, not {}", arg_types.len());
        };
        let (y, x) = Self::coercer(y, x).get_input_types()?;
        Ok(vec![y, x])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let [y, x] = arg_types else {
            return datafusion::common::plan_err!("mod(y, x) takes two arguments, not {}", arg_types.len());
        };
        Self::coercer(y, x).get_result_type()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [y, x] = args.args.as_slice() else {
            return datafusion::common::exec_err!("mod(y, x) takes two arguments");
        };
        let scalar = matches!((y, x), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
        let (y, x) = (y.to_array(rows)?, x.to_array(rows)?);
        let out = arrow::compute::kernels::numeric::rem(&y, &x)?;
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chrono_template;

    #[test]
    fn postgres_templates_become_chrono_formats() {
        assert_eq!(chrono_template("YYYY-MM-DD"), "%Y-%m-%d");
        assert_eq!(
            chrono_template("YYYY-MM-DD HH24:MI:SS.MS"),
            "%Y-%m-%d %H:%M:%S.%3f"
        );
        assert_eq!(chrono_template("FMDD Mon YYYY, HH12 AM"), "%-d %b %Y, %I %p");
        assert_eq!(chrono_template("\"week of\" Dy DD"), "week of %a %d");
        // chrono formats pass as they are.
        assert_eq!(chrono_template("%Y-%m-%d"), "%Y-%m-%d");
    }
}

/// The most bytes `lpad`, `rpad` and `repeat` may make in one batch.
pub const MAX_STRING_RESULT: usize = 1 << 30;

/// DataFusion's `lpad`, `rpad` or `repeat`, with the size of the result
/// checked first (see the module comment).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LengthCapped {
    inner: Arc<ScalarUDF>,
    /// `repeat`: the result is the text's length times the count; the pads
    /// make the count in characters.
    times_text: bool,
}

impl LengthCapped {
    /// `lpad`, `rpad` and `repeat`, capped.
    pub fn udfs() -> Vec<ScalarUDF> {
        use datafusion::functions::{string, unicode};
        [
            (unicode::lpad(), false),
            (unicode::rpad(), false),
            (string::repeat(), true),
        ]
        .into_iter()
        .map(|(inner, times_text)| ScalarUDF::new_from_impl(Self { inner, times_text }))
        .collect()
    }

    /// The bytes the call would make, at most (a character is up to 4 bytes).
    fn result_bytes(&self, args: &ScalarFunctionArgs) -> Result<usize> {
        let rows = args.number_rows.max(1);
        let counts = counts(&args.args[1], rows)?;
        let per_unit = if self.times_text {
            let lengths = byte_lengths(&args.args[0], rows)?;
            return Ok(counts
                .iter()
                .zip(lengths.iter().cycle())
                .map(|(n, len)| n.saturating_mul(*len))
                .fold(0usize, usize::saturating_add));
        } else {
            4
        };
        Ok(counts
            .iter()
            .map(|n| n.saturating_mul(per_unit))
            .fold(0usize, usize::saturating_add))
    }
}

/// The non-negative counts of an integer argument, per row (a scalar for
/// every row).
fn counts(arg: &ColumnarValue, rows: usize) -> Result<Vec<usize>> {
    let as_count = |v: i64| v.max(0) as usize;
    match arg {
        ColumnarValue::Scalar(s) => {
            let n = match s {
                ScalarValue::Int64(Some(v)) => as_count(*v),
                ScalarValue::Int32(Some(v)) => as_count(*v as i64),
                other => match other.cast_to(&DataType::Int64)? {
                    ScalarValue::Int64(Some(v)) => as_count(v),
                    _ => 0,
                },
            };
            Ok(vec![n; rows])
        }
        ColumnarValue::Array(a) => {
            let a = arrow::compute::cast(a, &DataType::Int64)?;
            let a = a
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .expect("cast to Int64");
            Ok(a.iter().map(|v| v.map_or(0, as_count)).collect())
        }
    }
}

/// Byte lengths of a text argument, per row (one for a scalar).
fn byte_lengths(arg: &ColumnarValue, rows: usize) -> Result<Vec<usize>> {
    let array = match arg {
        ColumnarValue::Scalar(s) => s.to_array_of_size(1)?,
        ColumnarValue::Array(a) => a.clone(),
    };
    let text = arrow::compute::cast(&array, &DataType::Utf8)?;
    let text = text.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
    let lengths: Vec<usize> = text.iter().map(|v| v.map_or(0, str::len)).collect();
    Ok(if lengths.len() == 1 {
        vec![lengths[0]; rows]
    } else {
        lengths
    })
}

impl ScalarUDFImpl for LengthCapped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() >= 2 {
            let bytes = self.result_bytes(&args)?;
            if bytes > MAX_STRING_RESULT {
                return Err(crate::error::SluiceError::new(
                    crate::error::ErrorKind::ProgramLimitExceeded,
                    format!(
                        "{}: requested length too large ({bytes} bytes in one batch; the limit is {MAX_STRING_RESULT})",
                        self.inner.name()
                    ),
                )
                .into_datafusion());
            }
        }
        self.inner.invoke_with_args(args)
    }
}

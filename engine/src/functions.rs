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
//! template and translated; one with `%` goes to DataFusion as it is. A
//! timestamp column (without time zone) by one template is formatted here,
//! the template parsed once per batch (DataFusion's parses it for every row:
//! a third of an updating `GROUP BY to_char(...)` query's time).
//!
//! `mod(y, x)`: Postgres' (and Flink's) remainder function, as `y % x` with
//! the operator's type coercion; division by zero is 22012.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    ColumnarValue, Operator, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
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
        if let Some(out) = to_char_timestamps(&args.args)? {
            return Ok(out);
        }
        self.inner.invoke_with_args(args)
    }
}

/// `to_char` of a timestamp column without time zone by one (chrono)
/// template, the template parsed once. `None` leaves the call to
/// DataFusion's: another shape of arguments, a template chrono can't parse
/// or a value it can't render, so errors stay DataFusion's.
fn to_char_timestamps(args: &[ColumnarValue]) -> Result<Option<ColumnarValue>> {
    use arrow::array::{AsArray, StringBuilder};
    use arrow::datatypes::{
        TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    use chrono::format::{Item, StrftimeItems};
    use std::fmt::Write;
    let [ColumnarValue::Array(values), ColumnarValue::Scalar(template)] = args else {
        return Ok(None);
    };
    let Some(Some(template)) = template.try_as_str() else {
        return Ok(None);
    };
    let DataType::Timestamp(unit, None) = values.data_type() else {
        return Ok(None);
    };
    let items: Vec<Item> = StrftimeItems::new(template).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Ok(None);
    }
    let raw: &[i64] = match unit {
        TimeUnit::Second => values.as_primitive::<TimestampSecondType>().values(),
        TimeUnit::Millisecond => values.as_primitive::<TimestampMillisecondType>().values(),
        TimeUnit::Microsecond => values.as_primitive::<TimestampMicrosecondType>().values(),
        TimeUnit::Nanosecond => values.as_primitive::<TimestampNanosecondType>().values(),
    };
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * template.len());
    let mut text = String::new();
    for (i, v) in raw.iter().enumerate() {
        if values.is_null(i) {
            out.append_null();
            continue;
        }
        let time = match unit {
            TimeUnit::Second => chrono::DateTime::from_timestamp(*v, 0),
            TimeUnit::Millisecond => chrono::DateTime::from_timestamp_millis(*v),
            TimeUnit::Microsecond => chrono::DateTime::from_timestamp_micros(*v),
            TimeUnit::Nanosecond => Some(chrono::DateTime::from_timestamp_nanos(*v)),
        };
        let Some(time) = time else { return Ok(None) };
        text.clear();
        if write!(text, "{}", time.naive_utc().format_with_items(items.iter())).is_err() {
            return Ok(None);
        }
        out.append_value(&text);
    }
    Ok(Some(ColumnarValue::Array(Arc::new(out.finish()))))
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

/// A function without arguments whose value is fixed when it is
/// registered: `version()`, and per session `current_user` (also
/// `session_user`, `user`) once the server says who logged in.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FixedText {
    name: String,
    aliases: Vec<String>,
    value: String,
    signature: Signature,
}

impl FixedText {
    pub fn udf(name: &str, aliases: &[&str], value: String) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            value,
            signature: Signature::nullary(Volatility::Stable),
        })
    }
}

impl ScalarUDFImpl for FixedText {
    fn name(&self) -> &str {
        &self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(self.value.clone()))))
    }
}

/// `version()` as Postgres clients parse it (`PostgreSQL <major>.<minor>
/// ...`: SQLAlchemy, pgjdbc and others read the server's version from it),
/// naming Sluice after it.
pub fn postgres_version(server_version: &str) -> String {
    format!(
        "PostgreSQL {server_version} (Sluice {}) on {}-{}, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// `current_setting(name [, missing_ok])`: a session setting's value, as
/// `SHOW name` gives it. The settings are the session's when the function
/// was registered (the session registers it again at every `SET`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CurrentSetting {
    settings: std::collections::BTreeMap<String, String>,
    signature: Signature,
}

impl CurrentSetting {
    pub fn udf(settings: std::collections::BTreeMap<String, String>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            settings,
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
        })
    }

    fn lookup(&self, name: Option<&str>, missing_ok: bool) -> Result<Option<String>> {
        let Some(name) = name else { return Ok(None) };
        match self.settings.get(&name.to_ascii_lowercase()) {
            Some(v) => Ok(Some(v.clone())),
            None if missing_ok => Ok(None),
            None => datafusion::common::plan_err!("unrecognized configuration parameter \"{name}\""),
        }
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let missing_ok = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Boolean(b))) => b.unwrap_or(false),
            Some(_) => {
                return datafusion::common::exec_err!("current_setting: missing_ok must be a constant");
            }
            None => false,
        };
        match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(name)) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(
                self.lookup(name.as_deref(), missing_ok)?,
            ))),
            ColumnarValue::Array(a) => {
                let names = a.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal("current_setting of non-text".into())
                })?;
                let values = names
                    .iter()
                    .map(|n| self.lookup(n, missing_ok))
                    .collect::<Result<StringArray>>()?;
                Ok(ColumnarValue::Array(Arc::new(values)))
            }
            other => datafusion::common::exec_err!("current_setting of {}", other.data_type()),
        }
    }
}

/// What `set_config` set during a statement, for the session to apply.
pub type PendingSettings = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// `set_config(name, value, is_local)`: sets a session setting as `SET`
/// does and returns the value. The session applies it before its next
/// statement (this one's `current_setting` still sees the old value).
/// With `is_local` true the setting lasts for the current transaction:
/// Sluice's statements are each their own, so nothing is kept, as in
/// Postgres outside a transaction block. asyncpg calls it before its type
/// introspection (`set_config('jit', 'off', false)`).
#[derive(Debug)]
pub struct SetConfig {
    pending: PendingSettings,
    read_only: Vec<String>,
    signature: Signature,
}

impl PartialEq for SetConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pending, &other.pending)
    }
}

impl Eq for SetConfig {}

impl std::hash::Hash for SetConfig {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.pending) as usize).hash(state);
    }
}

impl SetConfig {
    pub fn udf(pending: PendingSettings, read_only: Vec<String>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            pending,
            read_only,
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
                Volatility::Volatile,
            ),
        })
    }
}

impl ScalarUDFImpl for SetConfig {
    fn name(&self) -> &str {
        "set_config"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let text = |a: &ArrayRef| arrow::compute::cast(a, &DataType::Utf8);
        let (names, values) = (text(&arrays[0])?, text(&arrays[1])?);
        let (names, values) = (
            names
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8"),
            values
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8"),
        );
        let local = arrays[2]
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .expect("a boolean argument");
        let mut out = Vec::with_capacity(rows);
        for i in 0..names.len() {
            if names.is_null(i) {
                return Err(
                    crate::error::SluiceError::invalid_parameter("SET requires a parameter name")
                        .into_datafusion(),
                );
            }
            let name = names.value(i).to_ascii_lowercase();
            if self.read_only.contains(&name) {
                return Err(crate::error::SluiceError::invalid_parameter(format!(
                    "parameter \"{name}\" cannot be changed"
                ))
                .into_datafusion());
            }
            let value = if values.is_null(i) { "" } else { values.value(i) };
            if !(local.is_valid(i) && local.value(i)) {
                self.pending
                    .lock()
                    .expect("settings lock")
                    .push((name, value.to_string()));
            }
            out.push(Some(value.to_string()));
        }
        let out: ArrayRef = Arc::new(StringArray::from(out));
        if args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// `pg_typeof(x)`: the Postgres name of its argument's type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgTypeof {
    signature: Signature,
}

impl PgTypeof {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let field = &args.arg_fields[0];
        let t = field.data_type();
        let name = if crate::oidarrays::is_oid(field) {
            "oid".to_string()
        } else if crate::oidarrays::is_oid_list(t) {
            "oid[]".to_string()
        } else {
            postgres_type_name(t)
        };
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// The Postgres name of the type an Arrow type stands for.
pub fn postgres_type_name(t: &DataType) -> String {
    let name = match t {
        DataType::Null => "unknown",
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::UInt64 | DataType::Decimal32(..) | DataType::Decimal64(..) => "numeric",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "bytea"
        }
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone",
        DataType::Timestamp(_, None) => "timestamp without time zone",
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone",
        DataType::Interval(_) | DataType::Duration(_) => "interval",
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::FixedSizeList(f, _) => {
            return format!("{}[]", postgres_type_name(f.data_type()));
        }
        DataType::Struct(_) => "record",
        DataType::Dictionary(_, v) => return postgres_type_name(v),
        _ => "unknown",
    };
    name.to_string()
}

/// `to_regtype(name)`: the OID of the type a name stands for (with the
/// usual spellings and `[]` for arrays), NULL for a type Sluice does not
/// have. psycopg's `TypeInfo.fetch` (run by SQLAlchemy at connect) looks
/// types up with it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToRegtype {
    signature: Signature,
}

impl ToRegtype {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Stable),
        })
    }
}

/// The OID of a Postgres type name, for the types Sluice has.
pub fn type_oid(name: &str) -> Option<i32> {
    let name = name.trim().trim_matches('"').to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    if let Some(element) = name.strip_suffix("[]") {
        let oid = match type_oid(element)? {
            16 => 1000,
            17 => 1001,
            20 => 1016,
            21 => 1005,
            23 => 1007,
            25 => 1009,
            114 => 199,
            700 => 1021,
            701 => 1022,
            1042 => 1014,
            1043 => 1015,
            1082 => 1182,
            1083 => 1183,
            1114 => 1115,
            1184 => 1185,
            1186 => 1187,
            1700 => 1231,
            2950 => 2951,
            3802 => 3807,
            _ => return None,
        };
        return Some(oid);
    }
    Some(match name {
        "boolean" | "bool" => 16,
        "bytea" => 17,
        "name" => 19,
        "bigint" | "int8" => 20,
        "smallint" | "int2" => 21,
        "integer" | "int" | "int4" => 23,
        "text" => 25,
        "oid" => 26,
        "json" => 114,
        "real" | "float4" => 700,
        "double precision" | "float8" => 701,
        "character" | "char" | "bpchar" => 1042,
        "character varying" | "varchar" => 1043,
        "date" => 1082,
        "time" | "time without time zone" => 1083,
        "timestamp" | "timestamp without time zone" => 1114,
        "timestamptz" | "timestamp with time zone" => 1184,
        "interval" => 1186,
        "numeric" | "decimal" => 1700,
        "regclass" => 2205,
        "regtype" => 2206,
        "uuid" => 2950,
        "jsonb" => 3802,
        _ => return None,
    })
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(name)) => Ok(ColumnarValue::Scalar(ScalarValue::Int32(
                name.as_deref().and_then(type_oid),
            ))),
            ColumnarValue::Array(a) => {
                let names = a.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal("to_regtype of non-text".into())
                })?;
                let oids: arrow::array::Int32Array = names.iter().map(|n| n.and_then(type_oid)).collect();
                Ok(ColumnarValue::Array(Arc::new(oids)))
            }
            other => datafusion::common::exec_err!("to_regtype of {}", other.data_type()),
        }
    }
}

/// A catalog function with one answer in Sluice, whatever its arguments:
/// NULL for `pg_get_serial_sequence(table, column)` (no sequences),
/// `obj_description(oid [, catalog])` and `col_description(oid, column)`
/// (no comments); true for `pg_collation_is_visible(oid)`. Clients call
/// them while reading a table's columns (SQLAlchemy's
/// `inspect().get_columns`, pgAdmin, DBeaver). NULL (void) for
/// `pg_advisory_unlock_all()`: Sluice takes no advisory locks, so there are
/// none to release (asyncpg's pool calls it whenever it hands a connection
/// back). psql's `\df`, `\dT`, `\db` and `\dt+` call the visibility,
/// tablespace and size ones.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FixedAnswer {
    name: String,
    value: ScalarValue,
    signature: Signature,
}

impl FixedAnswer {
    pub fn udfs() -> Vec<ScalarUDF> {
        let null = ScalarValue::Utf8(None);
        [
            ("pg_get_serial_sequence", vec![2], null.clone()),
            ("obj_description", vec![1, 2], null.clone()),
            ("shobj_description", vec![2], null.clone()),
            ("col_description", vec![2], null),
            (
                "pg_collation_is_visible",
                vec![1],
                ScalarValue::Boolean(Some(true)),
            ),
            ("pg_advisory_unlock_all", vec![0], ScalarValue::Utf8(None)),
            // Every function and type is in the search path (one schema).
            (
                "pg_function_is_visible",
                vec![1],
                ScalarValue::Boolean(Some(true)),
            ),
            ("pg_type_is_visible", vec![1], ScalarValue::Boolean(Some(true))),
            // The default tablespace, whose location Postgres gives as ''.
            (
                "pg_tablespace_location",
                vec![1],
                ScalarValue::Utf8(Some(String::new())),
            ),
            // Sizes Sluice does not know (tables over files and streams):
            // NULL, which psql's \dt+ shows as an empty Size.
            ("pg_table_size", vec![1], ScalarValue::Int64(None)),
            ("pg_indexes_size", vec![1], ScalarValue::Int64(None)),
            ("pg_database_size", vec![1], ScalarValue::Int64(None)),
            // Sluice has no indexes (SQLAlchemy's index reflection).
            ("pg_get_indexdef", vec![1, 3], ScalarValue::Utf8(None)),
            // pg_proc lists no functions with arguments to describe.
            ("pg_get_function_result", vec![1], ScalarValue::Utf8(None)),
            ("pg_get_function_arguments", vec![1], ScalarValue::Utf8(None)),
            (
                "pg_get_function_identity_arguments",
                vec![1],
                ScalarValue::Utf8(None),
            ),
        ]
        .into_iter()
        .map(|(name, arities, value)| {
            ScalarUDF::new_from_impl(Self {
                name: name.into(),
                value,
                signature: Signature::one_of(
                    arities
                        .into_iter()
                        .map(|n| match n {
                            0 => TypeSignature::Nullary,
                            n => TypeSignature::Any(n),
                        })
                        .collect(),
                    Volatility::Stable,
                ),
            })
        })
        .collect()
    }
}

impl ScalarUDFImpl for FixedAnswer {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `json_build_object(k1, v1, ...)`: a JSON object from key/value pairs,
/// as text (SQLAlchemy's column reflection builds identity options with it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

/// A scalar as a JSON value.
fn json_value(v: &ScalarValue, out: &mut String) {
    use std::fmt::Write as _;
    if v.is_null() {
        out.push_str("null");
        return;
    }
    match v {
        ScalarValue::Boolean(Some(b)) => out.push_str(if *b { "true" } else { "false" }),
        v if v.data_type().is_numeric() => {
            let _ = write!(out, "{v}");
        }
        v => json_string(&v.to_string(), out),
    }
}

fn json_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if !arg_types.len().is_multiple_of(2) {
            return datafusion::common::plan_err!(
                "json_build_object takes key/value pairs: an even number of arguments"
            );
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut text = String::from("{");
            for (i, pair) in arrays.chunks(2).enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return datafusion::common::exec_err!("json_build_object: a key is NULL");
                }
                json_string(&key.to_string(), &mut text);
                text.push_str(" : ");
                json_value(&ScalarValue::try_from_array(&pair[1], row)?, &mut text);
            }
            text.push('}');
            out.push(text);
        }
        let array: ArrayRef = Arc::new(StringArray::from(out));
        if args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

/// `pg_expandarray(a)`: the elements of a one-dimensional array with
/// their 1-based positions, as a list of `(x, n)` structs; unnested, the
/// rows of Postgres' `information_schema._pg_expandarray(a)`, which
/// pgjdbc's `getPrimaryKeys` and `getIndexInfo` read (see
/// [`crate::colnames::unnest_set_returning`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgExpandArray {
    signature: Signature,
}

impl PgExpandArray {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }

    fn item(element: &DataType) -> arrow::datatypes::FieldRef {
        use arrow::datatypes::{Field, Fields};
        let fields = Fields::from(vec![
            Field::new("x", element.clone(), true),
            Field::new("n", DataType::Int32, false),
        ]);
        Arc::new(Field::new("item", DataType::Struct(fields), true))
    }
}

impl ScalarUDFImpl for PgExpandArray {
    fn name(&self) -> &str {
        "pg_expandarray"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match &args[0] {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                Ok(DataType::List(Self::item(f.data_type())))
            }
            DataType::Null => Ok(DataType::List(Self::item(&DataType::Null))),
            other => datafusion::common::plan_err!("pg_expandarray of {other}, not an array"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::{AsArray, Int32Array, ListArray, StructArray};
        let rows = args.number_rows;
        let input = args.args[0].to_array(rows)?;
        let DataType::List(item) = args.return_field.data_type() else {
            return datafusion::common::exec_err!("pg_expandarray returns a list");
        };
        let DataType::Struct(fields) = item.data_type() else {
            return datafusion::common::exec_err!("pg_expandarray returns structs");
        };
        let element = fields[0].data_type().clone();
        let list = arrow::compute::cast(
            &input,
            &DataType::List(Arc::new(arrow::datatypes::Field::new("item", element, true))),
        )?;
        let list = list.as_list::<i32>();
        let mut positions = Vec::with_capacity(list.values().len());
        for w in list.offsets().windows(2) {
            positions.extend(1..=(w[1] - w[0]));
        }
        let offsets = list.offsets().clone();
        let first = offsets[0] as usize;
        let len = *offsets.last().expect("offsets") as usize - first;
        let values = list.values().slice(first, len);
        let positions = Int32Array::from(positions);
        let structs = StructArray::try_new(fields.clone(), vec![values, Arc::new(positions)], None)?;
        let offsets = arrow::buffer::OffsetBuffer::new(offsets.iter().map(|o| o - offsets[0]).collect());
        let out = ListArray::try_new(item.clone(), offsets, Arc::new(structs), list.nulls().cloned())?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::chrono_template;

    /// A timestamp column by one template gives what DataFusion's
    /// `to_char` gives, in every unit, NULLs and all.
    #[test]
    fn timestamps_by_one_template_format_as_datafusion_does() {
        use arrow::array::{
            Array, TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
            TimestampSecondArray,
        };
        use datafusion::common::config::ConfigOptions;
        use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
        let values: Vec<Option<i64>> = (0..200i64)
            .map(|i| (i % 17 != 0).then(|| i * 7_919_003 - 400_000_000 + i * i * 31))
            .collect();
        let columns: Vec<arrow::array::ArrayRef> = vec![
            std::sync::Arc::new(TimestampSecondArray::from(values.clone())),
            std::sync::Arc::new(TimestampMillisecondArray::from(values.clone())),
            std::sync::Arc::new(TimestampMicrosecondArray::from(values.clone())),
            std::sync::Arc::new(TimestampNanosecondArray::from(values)),
        ];
        let datafusion = datafusion::functions::datetime::to_char();
        for column in &columns {
            for template in [
                "%Y-%m-%d",
                "%H:%M",
                "%Y-%m-%d %H:%M:%S%.3f",
                "%a %-d %b %Y, %I %p",
                "day %j",
            ] {
                let args = vec![
                    ColumnarValue::Array(column.clone()),
                    ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(Some(template.into()))),
                ];
                let ours = super::to_char_timestamps(&args).unwrap().expect("formatted here");
                let fields = args
                    .iter()
                    .map(|a| std::sync::Arc::new(arrow::datatypes::Field::new("a", a.data_type(), true)))
                    .collect();
                let theirs = datafusion
                    .invoke_with_args(ScalarFunctionArgs {
                        args,
                        arg_fields: fields,
                        number_rows: column.len(),
                        return_field: std::sync::Arc::new(arrow::datatypes::Field::new(
                            "r",
                            arrow::datatypes::DataType::Utf8,
                            true,
                        )),
                        config_options: std::sync::Arc::new(ConfigOptions::default()),
                    })
                    .unwrap();
                let (ColumnarValue::Array(ours), ColumnarValue::Array(theirs)) = (ours, theirs) else {
                    panic!("arrays");
                };
                let theirs = arrow::compute::cast(&theirs, &arrow::datatypes::DataType::Utf8).unwrap();
                assert_eq!(
                    ours.as_ref(),
                    theirs.as_ref(),
                    "{template} on {}",
                    column.data_type()
                );
            }
        }
    }

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

/// Postgres' `format(formatstr, args...)`: `%s` (the value as text, NULL as
/// nothing), `%I` (an SQL identifier, quoted where needed; NULL is an
/// error), `%L` (an SQL literal; NULL as `NULL`), `%%`, with Postgres'
/// optional argument position (`%2$s`), `-` flag and width (`%-10s`).
/// Errors are 22023, as in Postgres.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgFormat {
    signature: Signature,
}

impl PgFormat {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::variadic_any(Volatility::Stable),
        })
    }
}

fn format_error(message: impl Into<String>) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::External(Box::new(crate::error::SluiceError::invalid_parameter(
        message,
    )))
}

/// A value as Postgres prints it in text (NULL: None).
fn pg_text(v: &ScalarValue) -> Result<Option<String>> {
    if v.is_null() {
        return Ok(None);
    }
    Ok(Some(match v {
        ScalarValue::Boolean(Some(b)) => if *b { "t" } else { "f" }.to_string(),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            s.clone()
        }
        other => match other.cast_to(&DataType::Utf8)? {
            ScalarValue::Utf8(Some(s)) => s,
            _ => other.to_string(),
        },
    }))
}

/// An identifier quoted as Postgres' `quote_ident` quotes it: left alone
/// when it is lower-case letters, digits and underscores not starting with
/// a digit; in double quotes (doubled inside) otherwise.
fn quote_ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// A literal quoted as Postgres' `quote_literal` quotes it (`E'..'` when it
/// holds a backslash).
fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// One row of `format`: `args` are the values after the format string.
fn format_one(fmt: &str, args: &[ScalarValue]) -> Result<String> {
    let mut out = String::with_capacity(fmt.len());
    let mut chars = fmt.chars().peekable();
    let mut next_arg = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        // [position$][-][width]type
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let mut position = None;
        if !digits.is_empty() && chars.peek() == Some(&'$') {
            chars.next();
            let p: usize = digits
                .parse()
                .map_err(|_| format_error("number is out of range"))?;
            if p == 0 {
                return Err(format_error(
                    "format specifies argument 0, but arguments are numbered from 1",
                ));
            }
            position = Some(p - 1);
            digits.clear();
        }
        let mut left = false;
        if digits.is_empty() {
            if chars.peek() == Some(&'-') {
                chars.next();
                left = true;
            }
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
        }
        let width: usize = if digits.is_empty() {
            0
        } else {
            digits
                .parse()
                .map_err(|_| format_error("number is out of range"))?
        };
        let kind = chars
            .next()
            .ok_or_else(|| format_error("unterminated format() type specifier"))?;
        if !matches!(kind, 's' | 'I' | 'L') {
            return Err(format_error(format!(
                "unrecognized format() type specifier \"{kind}\""
            )));
        }
        let at = position.unwrap_or(next_arg);
        next_arg = at + 1;
        let value = args
            .get(at)
            .ok_or_else(|| format_error("too few arguments for format()"))?;
        let text = pg_text(value)?;
        let piece = match (kind, text) {
            ('s', t) => t.unwrap_or_default(),
            ('I', Some(t)) => quote_ident(&t),
            ('I', None) => {
                return Err(format_error(
                    "null values cannot be formatted as an SQL identifier",
                ));
            }
            ('L', Some(t)) => quote_literal(&t),
            _ => "NULL".to_string(),
        };
        let pad = width.saturating_sub(piece.chars().count());
        if left {
            out.push_str(&piece);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&piece);
        }
    }
    Ok(out)
}

impl ScalarUDFImpl for PgFormat {
    fn name(&self) -> &str {
        "format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = if all_scalar { 1 } else { rows };
        let mut out = arrow::array::StringBuilder::with_capacity(n, n * 16);
        for row in 0..n {
            let values = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => Ok(s.clone()),
                    ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row),
                })
                .collect::<Result<Vec<_>>>()?;
            let Some(fmt) = values.first().map(pg_text).transpose()? else {
                return datafusion::common::exec_err!("format() needs a format string");
            };
            match fmt {
                // A NULL format string: NULL, as in Postgres.
                None => out.append_null(),
                Some(fmt) => out.append_value(format_one(&fmt, &values[1..])?),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        if all_scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// `pg_sleep(seconds)`: waits, as Postgres does, once per row. The wait is
/// an async timer, so a cancelled statement (or one past its
/// `statement_timeout`) stops at once and the engine's threads stay free.
/// Returns NULL (Postgres' `void` prints as an empty value).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgSleep {
    signature: Signature,
}

/// The longest one call waits (Postgres has no limit; a day is beyond any
/// real use and keeps `Duration` arithmetic far from overflow).
const MAX_SLEEP_SECONDS: f64 = 86_400.0;

impl PgSleep {
    pub fn udf() -> ScalarUDF {
        datafusion::logical_expr::async_udf::AsyncScalarUDF::new(Arc::new(Self {
            signature: Signature::uniform(1, vec![DataType::Float64], Volatility::Volatile),
        }))
        .into_scalar_udf()
    }
}

impl ScalarUDFImpl for PgSleep {
    fn name(&self) -> &str {
        "pg_sleep"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        datafusion::common::exec_err!("pg_sleep is evaluated asynchronously")
    }
}

#[async_trait::async_trait]
impl datafusion::logical_expr::async_udf::AsyncScalarUDFImpl for PgSleep {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let seconds = args.args[0].to_array(rows)?;
        let seconds = arrow::compute::cast(&seconds, &DataType::Float64)?;
        let seconds = seconds
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .expect("cast to Float64");
        for s in seconds.iter().flatten() {
            if s > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(s.min(MAX_SLEEP_SECONDS))).await;
            }
        }
        Ok(ColumnarValue::Array(arrow::array::new_null_array(
            &DataType::Utf8,
            rows,
        )))
    }
}

/// Fails with 42883 `function "name" does not exist` when a row reaches it:
/// what `'name'::regproc` raises in Postgres for a function there is none
/// of (psql's `\\sf name` reads it so). Volatile, so that it is not folded
/// into a constant (and raised) while planning a branch no row takes.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UndefinedFunction {
    signature: Signature,
}

impl UndefinedFunction {
    pub const NAME: &str = "sluice_undefined_function";

    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Volatile),
        })
    }
}

impl ScalarUDFImpl for UndefinedFunction {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let names = args.args[0].to_array(args.number_rows)?;
        let names = names.as_any().downcast_ref::<StringArray>();
        match names.and_then(|n| n.iter().flatten().next()) {
            Some(name) => Err(crate::error::SluiceError::new(
                crate::error::ErrorKind::UndefinedFunction,
                format!("function \"{name}\" does not exist"),
            )
            .into_datafusion()),
            None => Ok(ColumnarValue::Array(arrow::array::new_null_array(
                &DataType::Int32,
                args.number_rows,
            ))),
        }
    }
}

/// `pg_size_pretty(bytes)`: a size in bytes as Postgres prints it
/// (`8192 bytes`, `10 kB`, `15 MB`: a unit once the number reaches 10 kB,
/// the next unit from 20 of this one, halves rounded away from zero).
/// psql's `\dt+`, `\l+` and `\d+` show sizes through it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgSizePretty {
    signature: Signature,
}

impl PgSizePretty {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::user_defined(Volatility::Immutable),
        })
    }
}

/// Postgres' size text: `bytes` below 10 kB, then kB, MB, GB, TB, PB,
/// each used below 20 of the next (its `pg_size_pretty` rule).
pub fn size_pretty(bytes: i64) -> String {
    // (name, limit below which it is used, rounded by halves, bits)
    const UNITS: [(&str, i64, bool, u32); 6] = [
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    let mut size = bytes;
    for (i, (name, limit, round, bits)) in UNITS.iter().enumerate() {
        let Some(next) = UNITS.get(i + 1) else {
            return format!("{} {name}", if *round { half_rounded(size) } else { size });
        };
        if size.unsigned_abs() < *limit as u64 {
            return format!("{} {name}", if *round { half_rounded(size) } else { size });
        }
        // One bit less when the next unit rounds by halves (it halves
        // last), one more when this one did.
        let shift = next.3 - bits - u32::from(next.2) + u32::from(*round);
        size /= 1i64 << shift;
    }
    unreachable!("the last unit returns")
}

impl ScalarUDFImpl for PgSizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [t] if t.is_numeric() || t.is_null() => Ok(vec![DataType::Int64]),
            _ => datafusion::common::plan_err!("pg_size_pretty(bigint) takes one number"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let sizes = arrow::compute::cast(&args.args[0].to_array(rows)?, &DataType::Int64)?;
        let sizes = sizes
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .expect("cast to Int64");
        let out: StringArray = sizes.iter().map(|s| s.map(size_pretty)).collect();
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::size_pretty;

    /// Figures Postgres 15 prints for the same numbers.
    #[test]
    fn sizes_print_as_postgres_prints_them() {
        for (bytes, want) in [
            (0, "0 bytes"),
            (8192, "8192 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (10 * 1024 * 1024 - 513, "10239 kB"),
            (10 * 1024 * 1024 - 1, "10 MB"),
            (20 * 1024 * 1024, "20 MB"),
            (123_456_789, "118 MB"),
            (1_000_000_000_000, "931 GB"),
            (-10240, "-10 kB"),
            (i64::MAX, "8192 PB"),
        ] {
            assert_eq!(size_pretty(bytes), want, "{bytes}");
        }
    }
}

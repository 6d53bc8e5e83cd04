//! Postgres types DataFusion has no SQL name for: `json`, `jsonb` and
//! `uuid`. A value of one of them is text in Arrow (jsonb normalized, a
//! uuid in its canonical form) and its field carries the Postgres type in
//! its metadata, so that the wire protocol names the type and encodes it
//! (binary jsonb with its version byte, binary uuid as 16 bytes).
//!
//! `x::json`, `CAST(x AS jsonb)`, `x::uuid` are rewritten by the parser into
//! calls of the functions here (a cast to a type with metadata would give
//! the logical and the physical plan different fields in DataFusion 55).
//! The marking is an Arrow extension type name (`arrow.json`, the canonical
//! one, and `sluice.jsonb` / `sluice.uuid` for text): DataFusion drops
//! extension names through a cast, so `j::text` is text again, while other
//! metadata would be carried through it. Parquet columns with Arrow's
//! canonical extension types (`arrow.json`, `arrow.uuid`) are named the same
//! way; fields marked by earlier versions (`sluice.pg_type`) still are.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The field-metadata key earlier versions named a column's Postgres type
/// with (still read, no longer written).
pub const PG_TYPE_KEY: &str = "sluice.pg_type";

/// Arrow's field-metadata key for an extension type's name.
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";

/// A Postgres type beyond what the Arrow type says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgType {
    Json,
    Jsonb,
    Uuid,
}

impl PgType {
    pub fn name(self) -> &'static str {
        match self {
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::Uuid => "uuid",
        }
    }

    /// The Arrow extension type name a text column of this type carries.
    pub fn extension_name(self) -> &'static str {
        match self {
            PgType::Json => "arrow.json",
            PgType::Jsonb => "sluice.jsonb",
            PgType::Uuid => "sluice.uuid",
        }
    }

    /// The function `::<type>` is rewritten into.
    pub fn function(self) -> &'static str {
        match self {
            PgType::Json => "sluice_to_json",
            PgType::Jsonb => "sluice_to_jsonb",
            PgType::Uuid => "sluice_to_uuid",
        }
    }

    /// The Postgres type a field stands for, if its Arrow type does not say.
    pub fn of_field(field: &Field) -> Option<PgType> {
        match field.metadata().get(PG_TYPE_KEY).map(String::as_str) {
            Some("json") => return Some(PgType::Json),
            Some("jsonb") => return Some(PgType::Jsonb),
            Some("uuid") => return Some(PgType::Uuid),
            _ => {}
        }
        match field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str) {
            Some("arrow.json") => Some(PgType::Json),
            Some("sluice.jsonb") => Some(PgType::Jsonb),
            Some("sluice.uuid") => Some(PgType::Uuid),
            Some("arrow.uuid") if field.data_type() == &DataType::FixedSizeBinary(16) => Some(PgType::Uuid),
            _ => None,
        }
    }

    /// Checks and normalizes one text value as Postgres' input function
    /// does.
    fn input(self, text: &str) -> Result<String> {
        let bad = |why: String| {
            DataFusionError::Execution(format!(
                "invalid input syntax for type {}: \"{text}\" ({why})",
                self.name()
            ))
        };
        match self {
            PgType::Json => {
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| bad(e.to_string()))?;
                Ok(text.to_string())
            }
            PgType::Jsonb => {
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                let mut out = String::with_capacity(text.len());
                write_jsonb(&v, &mut out);
                Ok(out)
            }
            PgType::Uuid => parse_uuid(text)
                .map(|b| format_uuid(&b))
                .ok_or_else(|| bad("a uuid is 32 hexadecimal digits".into())),
        }
    }
}

/// jsonb's text form: object keys ordered by length, then bytes (the last of
/// duplicate keys wins), `", "` and `": "` between items.
fn write_jsonb(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_jsonb(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A uuid in any form Postgres reads (hyphens anywhere between groups of
/// four digits, optional braces, any case) as its 16 bytes.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    let t = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(t);
    let digits: Vec<u8> = t.bytes().filter(|b| *b != b'-').collect();
    if digits.len() != 32 || t.starts_with('-') || t.ends_with('-') || t.contains("--") {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// The canonical text form: lowercase, hyphenated 8-4-4-4-12.
pub fn format_uuid(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

/// `sluice_to_json(text)` and its siblings: what `::json`, `::jsonb` and
/// `::uuid` become.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToPgType {
    to: PgType,
    signature: Signature,
}

impl ToPgType {
    pub fn udf(to: PgType) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            to,
            signature: Signature::string(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for ToPgType {
    fn name(&self) -> &str {
        self.to.function()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(
            Field::new(self.name(), DataType::Utf8, nullable).with_metadata(HashMap::from([(
                EXTENSION_NAME_KEY.to_string(),
                self.to.extension_name().to_string(),
            )])),
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let input = args.args[0].to_array(args.number_rows)?;
        let input = arrow::compute::cast(&input, &DataType::Utf8)?;
        let input = input
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("text expected".into()))?;
        let out: StringArray = input
            .iter()
            .map(|v| v.map(|t| self.to.input(t)).transpose())
            .collect::<Result<_>>()?;
        let out: ArrayRef = Arc::new(out);
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// Registers the conversion functions.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    for t in [PgType::Json, PgType::Jsonb, PgType::Uuid] {
        ctx.register_udf(ToPgType::udf(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_as_postgres_reads_them() {
        assert_eq!(
            PgType::Jsonb
                .input(r#"{"bb": [1, {"y":2,"x":1}], "a": null, "a": true}"#)
                .unwrap(),
            r#"{"a": true, "bb": [1, {"x": 1, "y": 2}]}"#
        );
        assert_eq!(
            PgType::Json.input(r#"{"b":1,  "a":2}"#).unwrap(),
            r#"{"b":1,  "a":2}"#
        );
        assert!(PgType::Json.input("{nope").is_err());
        assert_eq!(
            PgType::Uuid
                .input("{A0EEBC99-9C0B4EF8-BB6D-6BB9BD380A11}")
                .unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(PgType::Uuid.input("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1").is_err());
        assert!(PgType::Uuid.input("-a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
    }
}

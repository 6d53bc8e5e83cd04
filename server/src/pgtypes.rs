//! json, jsonb and uuid on the wire. arrow-pg maps Arrow types to Postgres
//! types; these three are text (or a 16-byte uuid) in Arrow and named by
//! field metadata (see `sluice_engine::types`), so their fields are renamed
//! here and their binary forms made: jsonb with its version byte, a uuid as
//! its 16 bytes. The text forms are the values as they are.

use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use sluice_engine::datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch, StringBuilder,
};
use sluice_engine::datafusion::arrow::compute::cast;
use sluice_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::oidarrays::is_oid_list;
use sluice_engine::types::{PgType, format_uuid, parse_uuid};
use sluice_engine::{Result, SluiceError};

fn wire_type(t: PgType) -> Type {
    match t {
        PgType::Json => Type::JSON,
        PgType::Jsonb => Type::JSONB,
        PgType::Uuid => Type::UUID,
    }
}

/// Array columns arrow-pg does not write: lists of lists (multi-dimensional
/// arrays) and `oid[]`.
fn made_here(t: &DataType) -> bool {
    crate::pgarrays::nested_leaf(t).is_some() || is_oid_list(t)
}

/// The result fields: arrow-pg's, with json / jsonb / uuid columns named as
/// such.
pub fn pg_fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    // Lists of lists (multi-dimensional arrays) are made here, not by
    // arrow-pg: it is shown them as text.
    let nested = schema.fields().iter().any(|f| made_here(f.data_type()));
    let mut fields = if nested {
        let shown: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| {
                if made_here(f.data_type()) {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        arrow_schema_to_pg_fields(&Schema::new(shown), format, None)?
    } else {
        arrow_schema_to_pg_fields(schema, format, None)?
    };
    for (info, field) in fields.iter_mut().zip(schema.fields()) {
        if let Some(t) = PgType::of_field(field) {
            *info = FieldInfo::new(info.name().into(), None, None, wire_type(t), info.format());
        } else if is_oid_list(field.data_type()) {
            *info = FieldInfo::new(info.name().into(), None, None, Type::OID_ARRAY, info.format());
        } else if let Some(leaf) = crate::pgarrays::nested_leaf(field.data_type()) {
            let t = crate::pgarrays::wire_type(leaf);
            *info = FieldInfo::new(info.name().into(), None, None, t, info.format());
        }
    }
    Ok(fields)
}

/// A batch as arrow-pg should encode it for `fields`: the json / jsonb /
/// uuid columns in the form their field's format wants. Other batches pass
/// as they are.
pub fn wire_batch(batch: RecordBatch, fields: &[FieldInfo]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let special: Vec<(usize, PgType)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| PgType::of_field(f).map(|t| (i, t)))
        .collect();
    let nested: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| made_here(f.data_type()))
        .map(|(i, _)| i)
        .collect();
    if special.is_empty() && nested.is_empty() {
        return Ok(batch);
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut out_fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for i in nested {
        let binary = fields.get(i).is_some_and(|f| f.format() == FieldFormat::Binary);
        let converted = crate::pgarrays::encode(&columns[i], binary)?;
        out_fields[i] = Field::new(out_fields[i].name(), converted.data_type().clone(), true);
        columns[i] = converted;
    }
    for (i, t) in special {
        let binary = fields.get(i).is_some_and(|f| f.format() == FieldFormat::Binary);
        let column = &columns[i];
        let converted: ArrayRef = match (t, binary) {
            (PgType::Uuid, true) => uuid_bytes(column)?,
            (PgType::Uuid, false) => uuid_text(column)?,
            (PgType::Jsonb, true) => {
                let text = cast(column, &DataType::Utf8)?;
                let mut b = BinaryBuilder::new();
                for v in text.as_string::<i32>().iter() {
                    match v {
                        Some(s) => {
                            let mut bytes = Vec::with_capacity(s.len() + 1);
                            bytes.push(1u8); // jsonb's binary format version
                            bytes.extend_from_slice(s.as_bytes());
                            b.append_value(bytes);
                        }
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            (PgType::Json | PgType::Jsonb, false) | (PgType::Json, true) => cast(column, &DataType::Utf8)?,
        };
        out_fields[i] = Field::new(out_fields[i].name(), converted.data_type().clone(), true);
        columns[i] = converted;
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(out_fields)), columns)?)
}

/// A uuid column (canonical text, or 16 bytes) as 16-byte binary values
/// (arrow-pg writes binary values as they are).
fn uuid_bytes(column: &ArrayRef) -> Result<ArrayRef> {
    let mut b = BinaryBuilder::new();
    if column.data_type() == &DataType::FixedSizeBinary(16) {
        let bytes = column.as_fixed_size_binary();
        for i in 0..bytes.len() {
            if bytes.is_null(i) {
                b.append_null();
            } else {
                b.append_value(bytes.value(i));
            }
        }
        return Ok(Arc::new(b.finish()));
    }
    let text = cast(column, &DataType::Utf8)?;
    for v in text.as_string::<i32>().iter() {
        match v {
            Some(s) => {
                let bytes = parse_uuid(s)
                    .ok_or_else(|| SluiceError::invalid_parameter(format!("not a uuid: {s}")))?;
                b.append_value(bytes);
            }
            None => b.append_null(),
        }
    }
    Ok(Arc::new(b.finish()))
}

/// A uuid column as canonical text.
fn uuid_text(column: &ArrayRef) -> Result<ArrayRef> {
    if column.data_type() != &DataType::FixedSizeBinary(16) {
        return Ok(cast(column, &DataType::Utf8)?);
    }
    let bytes = column.as_fixed_size_binary();
    let mut b = StringBuilder::new();
    for i in 0..bytes.len() {
        if bytes.is_null(i) {
            b.append_null();
        } else {
            b.append_value(format_uuid(bytes.value(i)));
        }
    }
    Ok(Arc::new(b.finish()))
}

/// Postgres's text form of a one-dimensional array, `{a,"b c",NULL}`, as
/// its elements (None for NULL); None when it is not one (a nested array,
/// unbalanced quotes).
pub fn parse_text_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = vec![];
    let mut chars = inner.chars().peekable();
    if inner.trim().is_empty() {
        return Some(out);
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    ',' => break,
                    '{' | '}' | '"' => return None,
                    '\\' => {
                        chars.next();
                        item.push(chars.next()?);
                        continue;
                    }
                    c => item.push(c),
                }
                chars.next();
            }
            item.truncate(item.trim_end().len());
        }
        out.push((quoted || !item.eq_ignore_ascii_case("NULL")).then_some(item));
        match chars.next() {
            Some(',') => continue,
            None => return Some(out),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod array_tests {
    use super::parse_text_array;

    #[test]
    fn array_text_reads_as_postgres_writes_it() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            parse_text_array(r#"{"north","east"}"#),
            Some(vec![s("north"), s("east")])
        );
        assert_eq!(parse_text_array("{a, b ,NULL}"), Some(vec![s("a"), s("b"), None]));
        assert_eq!(
            parse_text_array(r#"{"NULL","x \"y\"",""}"#),
            Some(vec![s("NULL"), s(r#"x "y""#), s("")])
        );
        assert_eq!(parse_text_array("{}"), Some(vec![]));
        assert_eq!(parse_text_array("{{1,2},{3,4}}"), None);
        assert_eq!(parse_text_array(r#"{"open}"#), None);
    }
}

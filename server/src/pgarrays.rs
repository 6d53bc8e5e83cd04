//! Multi-dimensional arrays on the wire (`SELECT ARRAY[ARRAY[1,2],ARRAY[3,4]]`).
//!
//! A list of lists in Arrow is one Postgres array of two (or more)
//! dimensions, of the innermost element's array type (`int8[]` is `_int8`
//! whatever its dimensions). arrow-pg encodes lists of one level only, so
//! these columns are made here: the text form `{{1,2},{3,4}}`, or the
//! binary array format (its dimensions, then each element) for the element
//! types clients read in binary. Postgres's arrays are rectangular; a list
//! of lists of different lengths has a text form but no binary one (2202E,
//! as Postgres refuses to build it).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pgwire::api::Type;
use sluice_engine::error::ErrorKind;
use sluice_engine::{Result, SluiceError};

/// The innermost element type when `t` is a list of lists.
pub fn nested_leaf(t: &DataType) -> Option<&DataType> {
    let inner = list_item(t)?;
    list_item(inner)?;
    let mut leaf = inner;
    while let Some(next) = list_item(leaf) {
        leaf = next;
    }
    Some(leaf)
}

fn list_item(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => Some(f.data_type()),
        _ => None,
    }
}

/// The Postgres type of a nested list column: the array type of its leaf.
pub fn wire_type(leaf: &DataType) -> Type {
    let one_level = DataType::List(Arc::new(Field::new("item", leaf.clone(), true)));
    arrow_pg::datatypes::into_pg_type(&one_level).unwrap_or(Type::TEXT_ARRAY)
}

/// `column` (a list of lists) in Postgres's text or binary array form.
pub fn encode(column: &ArrayRef, binary: bool) -> Result<ArrayRef> {
    let column = as_list(column)?;
    let list = column.as_list::<i32>();
    if binary {
        let mut b = BinaryBuilder::new();
        for i in 0..list.len() {
            if list.is_null(i) {
                b.append_null();
            } else {
                b.append_value(binary_array(&list.value(i))?);
            }
        }
        Ok(Arc::new(b.finish()))
    } else {
        let mut b = StringBuilder::new();
        for i in 0..list.len() {
            if list.is_null(i) {
                b.append_null();
            } else {
                let mut text = String::new();
                text_array(&list.value(i), &mut text)?;
                b.append_value(text);
            }
        }
        Ok(Arc::new(b.finish()))
    }
}

/// Large and fixed-size lists as plain lists, at every level.
fn as_list(column: &ArrayRef) -> Result<ArrayRef> {
    fn plain(t: &DataType) -> DataType {
        match list_item(t) {
            Some(item) => DataType::List(Arc::new(Field::new("item", plain(item), true))),
            None => t.clone(),
        }
    }
    let want = plain(column.data_type());
    if column.data_type() == &want {
        return Ok(column.clone());
    }
    Ok(arrow::compute::cast(column, &want)?)
}

/// `{...}` of one array value (`items` holds its elements: lists one level
/// up, or leaves).
fn text_array(items: &ArrayRef, out: &mut String) -> Result<()> {
    out.push('{');
    if let DataType::List(_) = items.data_type() {
        let lists = items.as_list::<i32>();
        for i in 0..lists.len() {
            if i > 0 {
                out.push(',');
            }
            if lists.is_null(i) {
                out.push_str("NULL");
            } else {
                text_array(&lists.value(i), out)?;
            }
        }
    } else {
        let format = FormatOptions::default();
        let formatter = ArrayFormatter::try_new(items.as_ref(), &format)?;
        let text = matches!(
            items.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        for i in 0..items.len() {
            if i > 0 {
                out.push(',');
            }
            if items.is_null(i) {
                out.push_str("NULL");
            } else if let DataType::Boolean = items.data_type() {
                out.push(if items.as_boolean().value(i) { 't' } else { 'f' });
            } else {
                let v = formatter.value(i).to_string();
                if text { quoted(&v, out) } else { out.push_str(&v) }
            }
        }
    }
    out.push('}');
    Ok(())
}

/// An element as Postgres writes it in an array: quoted when it is empty,
/// `NULL`, or holds a brace, comma, quote, backslash or white space.
fn quoted(v: &str, out: &mut String) {
    let needs = v.is_empty()
        || v.eq_ignore_ascii_case("null")
        || v.chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if !needs {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Writes element `i` of a leaf array in its binary form.
type ElementEncoder = fn(&ArrayRef, usize, &mut Vec<u8>);

/// Postgres's binary array: dimensions, flags, element type, each
/// dimension's length and lower bound (1), then each element as its length
/// and bytes (-1 for NULL).
fn binary_array(value: &ArrayRef) -> Result<Vec<u8>> {
    let mut dims = vec![];
    let mut level = value.clone();
    loop {
        dims.push(level.len());
        match level.data_type() {
            DataType::List(_) if !level.is_empty() => {
                let lists = level.as_list::<i32>();
                if lists.null_count() > 0 {
                    return Err(not_rectangular());
                }
                level = lists.value(0);
            }
            DataType::List(_) => break,
            _ => break,
        }
    }
    let mut leaves: Vec<ArrayRef> = vec![];
    collect_leaves(value, &dims, &mut leaves)?;
    let leaf_type = leaves
        .first()
        .map(|l| l.data_type().clone())
        .unwrap_or(DataType::Null);
    let (oid, encode): (u32, ElementEncoder) = match leaf_type {
        DataType::Int16 => (Type::INT2.oid(), |a, i, o| {
            o.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Int16Type>()
                    .value(i)
                    .to_be_bytes(),
            )
        }),
        DataType::Int32 => (Type::INT4.oid(), |a, i, o| {
            o.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Int32Type>()
                    .value(i)
                    .to_be_bytes(),
            )
        }),
        // An oid[] (array_agg of an oid column).
        DataType::UInt32 => (Type::OID.oid(), |a, i, o| {
            o.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::UInt32Type>()
                    .value(i)
                    .to_be_bytes(),
            )
        }),
        DataType::Int64 => (Type::INT8.oid(), |a, i, o| {
            o.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Int64Type>()
                    .value(i)
                    .to_be_bytes(),
            )
        }),
        DataType::Float32 => (Type::FLOAT4.oid(), |a, i, o| {
            o.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Float32Type>()
                    .value(i)
                    .to_be_bytes(),
            )
        }),
        DataType::Float64 => (Type::FLOAT8.oid(), |a, i, o| {
            o.extend_from_slice(
                &a.as_primitive::<arrow::datatypes::Float64Type>()
                    .value(i)
                    .to_be_bytes(),
            )
        }),
        DataType::Boolean => (Type::BOOL.oid(), |a, i, o| o.push(a.as_boolean().value(i) as u8)),
        DataType::Utf8 => (Type::TEXT.oid(), |a, i, o| {
            o.extend_from_slice(a.as_string::<i32>().value(i).as_bytes())
        }),
        // An empty array: no elements, any type.
        DataType::Null => (Type::TEXT.oid(), |_, _, _| {}),
        other => {
            return Err(SluiceError::new(
                ErrorKind::NotSupported,
                format!("a multi-dimensional array of {other} has no binary form here; ask for text results"),
            ));
        }
    };
    let has_null = leaves.iter().any(|l| l.null_count() > 0);
    let empty = dims.contains(&0);
    let mut out = vec![];
    let ndim: i32 = if empty { 0 } else { dims.len() as i32 };
    out.extend_from_slice(&ndim.to_be_bytes());
    out.extend_from_slice(&(has_null as i32).to_be_bytes());
    out.extend_from_slice(&oid.to_be_bytes());
    if empty {
        return Ok(out);
    }
    for d in &dims {
        out.extend_from_slice(&(*d as i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
    }
    for leaf in &leaves {
        for i in 0..leaf.len() {
            if leaf.is_null(i) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let mut bytes = vec![];
            encode(leaf, i, &mut bytes);
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
    }
    Ok(out)
}

/// The innermost arrays of `value` in order, checking that every sub-array
/// has the length `dims` says for its level.
fn collect_leaves(value: &ArrayRef, dims: &[usize], out: &mut Vec<ArrayRef>) -> Result<()> {
    if value.len() != dims[0] {
        return Err(not_rectangular());
    }
    if dims.len() == 1 {
        let leaf = match value.data_type() {
            DataType::LargeUtf8 | DataType::Utf8View => arrow::compute::cast(value, &DataType::Utf8)?,
            _ => value.clone(),
        };
        out.push(leaf);
        return Ok(());
    }
    let DataType::List(_) = value.data_type() else {
        return Err(not_rectangular());
    };
    let lists = value.as_list::<i32>();
    for i in 0..lists.len() {
        if lists.is_null(i) {
            return Err(not_rectangular());
        }
        collect_leaves(&lists.value(i), &dims[1..], out)?;
    }
    Ok(())
}

fn not_rectangular() -> SluiceError {
    SluiceError::new(
        ErrorKind::InvalidParameter,
        "multidimensional arrays must have sub-arrays with matching dimensions",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListArray, StringArray};
    use arrow::buffer::OffsetBuffer;

    fn lists(values: ArrayRef, offsets: Vec<i32>) -> ArrayRef {
        let field = Arc::new(Field::new("item", values.data_type().clone(), true));
        Arc::new(ListArray::new(
            field,
            OffsetBuffer::new(offsets.into()),
            values,
            None,
        ))
    }

    #[test]
    fn text_and_binary_forms_as_postgres_writes_them() {
        // [[[1, 2], [3, NULL]]]
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None]));
        let column = lists(lists(ints, vec![0, 2, 4]), vec![0, 2]);
        let text = encode(&column, false).unwrap();
        assert_eq!(text.as_string::<i32>().value(0), "{{1,2},{3,NULL}}");
        let binary = encode(&column, true).unwrap();
        let b = binary.as_binary::<i32>().value(0);
        let word = |k: usize| i32::from_be_bytes(b[k * 4..k * 4 + 4].try_into().unwrap());
        assert_eq!((word(0), word(1), word(2)), (2, 1, Type::INT8.oid() as i32));
        assert_eq!((word(3), word(4), word(5), word(6)), (2, 1, 2, 1));
        assert_eq!(word(7), 8); // the first element's length
        assert_eq!(i32::from_be_bytes(b[b.len() - 4..].try_into().unwrap()), -1); // the NULL

        let words: ArrayRef = Arc::new(StringArray::from(vec!["a b", "", "x", "NULL"]));
        let column = lists(lists(words, vec![0, 2, 4]), vec![0, 2]);
        let text = encode(&column, false).unwrap();
        assert_eq!(text.as_string::<i32>().value(0), r#"{{"a b",""},{x,"NULL"}}"#);
    }

    #[test]
    fn a_ragged_array_has_text_but_no_binary_form() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let column = lists(lists(ints, vec![0, 2, 3]), vec![0, 2]);
        assert_eq!(
            encode(&column, false).unwrap().as_string::<i32>().value(0),
            "{{1,2},{3}}"
        );
        assert!(encode(&column, true).is_err());
    }
}

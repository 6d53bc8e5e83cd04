//! Result batches as pgwire `DataRow`s, a batch at a time.
//!
//! arrow-pg encodes a cell at a time through pgwire's `DataRowEncoder`
//! (a dynamic dispatch, a type clone and often a string allocation per
//! cell, a fresh buffer per row). For the types most results are made of
//! (integers, floats, booleans and strings) this module writes the cells
//! straight from the Arrow arrays into one buffer per batch and splits the
//! rows off it; every other type goes through arrow-pg's `encode_value`
//! into the same buffer, so the two paths give the same bytes.
//!
//! Floats in text are written as Postgres writes them with its default
//! `extra_float_digits = 1`: the shortest digits that read back to the same
//! value, `1e+20` style beyond 15 (float8) or 6 (float4) integer digits or
//! below 1e-4, `Infinity`, `-Infinity`, `NaN`, `-0`. Timestamps in text
//! are written as Postgres writes them: no trailing fractional zeros, the
//! offset as `+00` or `+05:30`.

use std::sync::Arc;

use arrow_pg::encoder::{Encoder, encode_value};
use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use postgres_types::{IsNull, ToSql};
use sluice_engine::datafusion::arrow::array::timezone::Tz;
use sluice_engine::datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericStringArray, PrimitiveArray, RecordBatch, StringViewArray,
};
use sluice_engine::datafusion::arrow::compute::{cast, max, min};
use sluice_engine::datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt8Type, UInt16Type, UInt32Type,
};
use sluice_engine::datafusion::arrow::temporal_conversions::{as_datetime, as_datetime_with_timezone};

/// How one column's cells are written.
enum Column<'a> {
    Bool(&'a BooleanArray),
    I8(&'a PrimitiveArray<Int8Type>, Width),
    I16(&'a PrimitiveArray<Int16Type>, Width),
    I32(&'a PrimitiveArray<Int32Type>, Width),
    I64(&'a PrimitiveArray<Int64Type>, Width),
    U8(&'a PrimitiveArray<UInt8Type>, Width),
    U16(&'a PrimitiveArray<UInt16Type>, Width),
    U32(&'a PrimitiveArray<UInt32Type>, Width),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Str(&'a GenericStringArray<i32>),
    LargeStr(&'a GenericStringArray<i64>),
    View(&'a StringViewArray),
    /// A timestamp in text: microseconds, and the zone for `timestamptz`.
    Ts(PrimitiveArray<TimestampMicrosecondType>, Option<Tz>),
    /// A time of day in text, microseconds since midnight.
    Time(PrimitiveArray<Time64MicrosecondType>),
    /// Through arrow-pg, a cell at a time.
    Other(&'a ArrayRef, &'a Field),
}

/// The wire type of an integer column, for its binary form (text is the
/// same digits whatever the width).
#[derive(Clone, Copy)]
enum Width {
    Text,
    Two,
    Four,
    Eight,
}

impl Width {
    /// None when the wire type is not a plain integer (an oid alias, a
    /// "char"): those take arrow-pg's path.
    fn of(info: &FieldInfo) -> Option<Width> {
        if info.format() == FieldFormat::Text {
            return Some(Width::Text);
        }
        match *info.datatype() {
            Type::INT2 => Some(Width::Two),
            Type::INT4 => Some(Width::Four),
            Type::INT8 => Some(Width::Eight),
            _ => None,
        }
    }
}

/// Encodes `batch` as one `DataRow` per row in the formats of `fields`.
pub fn encode_batch(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let schema = batch.schema();
    if batch.num_columns() != fields.len() {
        return Err(PgWireError::ApiError(
            format!(
                "a result batch has {} columns for {} fields",
                batch.num_columns(),
                fields.len()
            )
            .into(),
        ));
    }
    // Dictionary columns (partition values, for one) are unpacked once per
    // batch so their cells take the plain path.
    let unpacked: Vec<Option<(ArrayRef, Field)>> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(array, field)| match array.data_type() {
            DataType::Dictionary(_, value) => cast(array, value)
                .map(|a| Some((a, Field::new(field.name(), value.as_ref().clone(), true))))
                .map_err(|e| PgWireError::ApiError(Box::new(e))),
            _ => Ok(None),
        })
        .collect::<PgWireResult<_>>()?;
    let columns: Vec<Column> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .zip(&unpacked)
        .zip(fields.iter())
        .map(|(((array, field), unpacked), info)| match unpacked {
            Some((array, field)) => column(array, field, info),
            None => column(array, field, info),
        })
        .collect();

    let rows = batch.num_rows();
    let mut buf = BytesMut::with_capacity(rows * (columns.len() * 12 + 8));
    let mut out = Vec::with_capacity(rows);
    let mut fallback = Fallback { buf: BytesMut::new() };
    for row in 0..rows {
        for (c, info) in columns.iter().zip(fields.iter()) {
            write_cell(&mut buf, &mut fallback, c, info, row)?;
        }
        out.push(DataRow::new(buf.split(), columns.len() as i16));
    }
    Ok(out)
}

fn column<'a>(array: &'a ArrayRef, field: &'a Field, info: &FieldInfo) -> Column<'a> {
    let text = info.format() == FieldFormat::Text;
    let floats_shortest = !text || info.format_options().extra_float_digits >= 1;
    let other = Column::Other(array, field);
    let int = |make: fn(&'a ArrayRef, Width) -> Column<'a>| match Width::of(info) {
        Some(w) => make(array, w),
        None => Column::Other(array, field),
    };
    match array.data_type() {
        DataType::Boolean if !text || *info.datatype() == Type::BOOL => Column::Bool(array.as_boolean()),
        DataType::Int8 => int(|a, w| Column::I8(a.as_primitive(), w)),
        DataType::Int16 => int(|a, w| Column::I16(a.as_primitive(), w)),
        DataType::Int32 => int(|a, w| Column::I32(a.as_primitive(), w)),
        DataType::Int64 => int(|a, w| Column::I64(a.as_primitive(), w)),
        DataType::UInt8 => int(|a, w| Column::U8(a.as_primitive(), w)),
        DataType::UInt16 => int(|a, w| Column::U16(a.as_primitive(), w)),
        DataType::UInt32 => int(|a, w| Column::U32(a.as_primitive(), w)),
        DataType::Float32 if floats_shortest && *info.datatype() == Type::FLOAT4 => {
            Column::F32(array.as_primitive())
        }
        DataType::Float64 if floats_shortest && *info.datatype() == Type::FLOAT8 => {
            Column::F64(array.as_primitive())
        }
        DataType::Utf8 => Column::Str(array.as_string()),
        DataType::LargeUtf8 => Column::LargeStr(array.as_string()),
        DataType::Utf8View => Column::View(array.as_string_view()),
        DataType::Timestamp(_, tz) if text => timestamps(array, tz.as_deref()).unwrap_or(other),
        DataType::Time32(_) | DataType::Time64(_) if text => {
            match cast(array, &DataType::Time64(TimeUnit::Microsecond)) {
                Ok(a) => Column::Time(a.as_primitive::<Time64MicrosecondType>().clone()),
                Err(_) => other,
            }
        }
        _ => other,
    }
}

/// Microseconds of 0001-01-01 and of the end of 9999-12-31 since 1970.
const FIRST_MICROS: i64 = -62_135_596_800_000_000;
const END_MICROS: i64 = 253_402_300_800_000_000;

/// A timestamp column for the text path, None where arrow-pg's path is
/// kept: a zone that does not parse, or a year outside 1-9999 (Postgres
/// writes those as `10000-...` and `... BC`).
fn timestamps<'a>(array: &'a ArrayRef, tz: Option<&str>) -> Option<Column<'a>> {
    let zone = match tz {
        Some(tz) => Some(tz.parse::<Tz>().ok()?),
        None => None,
    };
    let micros = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok()?;
    let micros = micros.as_primitive::<TimestampMicrosecondType>().clone();
    // Shifted to local time, a value may cross a year boundary: a day of
    // margin on both ends.
    let day = 86_400_000_000;
    let within = |v: Option<i64>| v.is_none_or(|v| (FIRST_MICROS + day..END_MICROS - day).contains(&v));
    (within(min(&micros)) && within(max(&micros))).then_some(Column::Ts(micros, zone))
}

/// Drops trailing zeros of a fraction (and its point when nothing is left).
fn trim_fraction(text: &mut String) {
    if text.contains('.') {
        let trimmed = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(trimmed);
    }
}

/// A time of day as Postgres writes it in text: `13:45:07`, `13:45:07.25`.
fn put_time_text(buf: &mut BytesMut, micros: i64) {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let mut text = format!(
        "{:02}:{:02}:{:02}.{frac:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    trim_fraction(&mut text);
    put_value(buf, text.as_bytes());
}

/// A timestamp as Postgres writes it in text: `2026-12-05 20:16:37.691`
/// (fractional digits without trailing zeros, none for a whole second),
/// and for `timestamptz` the offset, `+00` or `+05:30`.
fn put_timestamp_text(buf: &mut BytesMut, micros: i64, zone: Option<&Tz>) {
    let mut text = match zone {
        Some(zone) => match as_datetime_with_timezone::<TimestampMicrosecondType>(micros, *zone) {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string(),
            None => return buf.put_i32(-1),
        },
        None => match as_datetime::<TimestampMicrosecondType>(micros) {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            None => return buf.put_i32(-1),
        },
    };
    // "...SS.ffffff" then, for a zone, "+HH:MM".
    let (mut stamp, offset) = match zone {
        Some(_) => {
            let offset = text.split_off(text.len() - 6);
            let offset = offset.strip_suffix(":00").map(str::to_string).unwrap_or(offset);
            (text, offset)
        }
        None => (text, String::new()),
    };
    trim_fraction(&mut stamp);
    stamp.push_str(&offset);
    put_value(buf, stamp.as_bytes());
}

/// Writes a cell's 4-byte length and its bytes (or -1 for NULL).
#[inline]
fn put_value(buf: &mut BytesMut, value: &[u8]) {
    buf.put_i32(value.len() as i32);
    buf.put_slice(value);
}

/// A value's cell, or NULL.
#[inline]
fn put_opt(buf: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        Some(v) => put_value(buf, v),
        None => buf.put_i32(-1),
    }
}

/// A float's Postgres text; `precision` is FLT_DIG or DBL_DIG.
#[inline]
fn put_float_text<F: ryu::Float + Into<f64>>(buf: &mut BytesMut, v: F, precision: i32) {
    let wide: f64 = v.into();
    let mut digits = ryu::Buffer::new();
    let mut out = [0u8; 40];
    let n = pg_float_text(
        wide.is_finite().then(|| digits.format_finite(v)),
        wide,
        precision,
        &mut out,
    );
    put_value(buf, &out[..n]);
}

#[inline]
fn put_int(buf: &mut BytesMut, v: i64, width: Width) {
    match width {
        Width::Text => put_value(buf, itoa::Buffer::new().format(v).as_bytes()),
        Width::Two => put_value(buf, &(v as i16).to_be_bytes()),
        Width::Four => put_value(buf, &(v as i32).to_be_bytes()),
        Width::Eight => put_value(buf, &v.to_be_bytes()),
    }
}

fn ints<T>(buf: &mut BytesMut, a: &PrimitiveArray<T>, row: usize, width: Width)
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    if a.is_null(row) {
        buf.put_i32(-1);
    } else {
        put_int(buf, a.value(row).into(), width);
    }
}

fn write_cell(
    buf: &mut BytesMut,
    fallback: &mut Fallback,
    column: &Column,
    info: &FieldInfo,
    row: usize,
) -> PgWireResult<()> {
    let text = info.format() == FieldFormat::Text;
    match column {
        Column::Bool(a) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else if text {
                put_value(buf, if a.value(row) { b"t" } else { b"f" });
            } else {
                put_value(buf, &[a.value(row) as u8]);
            }
        }
        Column::I8(a, w) => ints(buf, *a, row, *w),
        Column::I16(a, w) => ints(buf, *a, row, *w),
        Column::I32(a, w) => ints(buf, *a, row, *w),
        Column::I64(a, w) => ints(buf, *a, row, *w),
        Column::U8(a, w) => ints(buf, *a, row, *w),
        Column::U16(a, w) => ints(buf, *a, row, *w),
        Column::U32(a, w) => ints(buf, *a, row, *w),
        Column::F32(a) => match (a.is_valid(row), text) {
            (false, _) => buf.put_i32(-1),
            (true, true) => put_float_text(buf, a.value(row), 6),
            (true, false) => put_value(buf, &a.value(row).to_bits().to_be_bytes()),
        },
        Column::F64(a) => match (a.is_valid(row), text) {
            (false, _) => buf.put_i32(-1),
            (true, true) => put_float_text(buf, a.value(row), 15),
            (true, false) => put_value(buf, &a.value(row).to_bits().to_be_bytes()),
        },
        // Text and varchar are their UTF-8 bytes in both formats.
        Column::Str(a) => put_opt(buf, a.is_valid(row).then(|| a.value(row).as_bytes())),
        Column::LargeStr(a) => put_opt(buf, a.is_valid(row).then(|| a.value(row).as_bytes())),
        Column::View(a) => put_opt(buf, a.is_valid(row).then(|| a.value(row).as_bytes())),
        Column::Time(a) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                put_time_text(buf, a.value(row));
            }
        }
        Column::Ts(a, zone) => {
            if a.is_null(row) {
                buf.put_i32(-1);
            } else {
                put_timestamp_text(buf, a.value(row), zone.as_ref());
            }
        }
        Column::Other(array, field) => {
            encode_value(fallback, array, row, field, info)?;
            buf.put_slice(&fallback.buf.split());
        }
    }
    Ok(())
}

/// Postgres's text for a float from its shortest round-trip digits (ryu's
/// output for finite values, `None` for NaN and infinities); `precision` is
/// DBL_DIG (15) or FLT_DIG (6), beyond which Postgres switches to exponent
/// notation. Returns the number of bytes written to `out`.
fn pg_float_text(shortest: Option<&str>, value: f64, precision: i32, out: &mut [u8; 40]) -> usize {
    let special: &[u8] = match shortest {
        None if value.is_nan() => b"NaN",
        None if value > 0.0 => b"Infinity",
        None => b"-Infinity",
        Some(_) if value == 0.0 => {
            if value.is_sign_negative() {
                b"-0"
            } else {
                b"0"
            }
        }
        Some(_) => b"",
    };
    if !special.is_empty() {
        out[..special.len()].copy_from_slice(special);
        return special.len();
    }
    let s = shortest.unwrap_or_default().as_bytes();
    // ryu writes [-]digits[.digits][e[-]exp]: collect the significant digits
    // and the position of the decimal point relative to them.
    let (negative, s) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match s.iter().position(|&b| b == b'e') {
        Some(i) => (
            &s[..i],
            std::str::from_utf8(&s[i + 1..])
                .ok()
                .and_then(|e| e.parse::<i32>().ok())
                .unwrap_or(0),
        ),
        None => (s, 0),
    };
    let mut digits = [0u8; 24];
    let mut nd = 0;
    let mut int_digits = 0i32;
    let mut seen_point = false;
    for &b in mantissa {
        if b == b'.' {
            seen_point = true;
            continue;
        }
        if nd == 0 && b == b'0' {
            // A leading zero: moves the point left when after it.
            if seen_point {
                int_digits -= 1;
            }
            continue;
        }
        if nd < digits.len() {
            digits[nd] = b;
            nd += 1;
        }
        if !seen_point {
            int_digits += 1;
        }
    }
    while nd > 1 && digits[nd - 1] == b'0' {
        nd -= 1;
    }
    // value = 0.d1d2... x 10^point; in scientific form d1.d2... x 10^(point-1)
    let point = int_digits + exp;
    let sci = point - 1;
    let mut n = 0;
    let mut push = |b: u8, n: &mut usize| {
        out[*n] = b;
        *n += 1;
    };
    if negative {
        push(b'-', &mut n);
    }
    if sci < -4 || sci >= precision {
        push(digits[0], &mut n);
        if nd > 1 {
            push(b'.', &mut n);
            for &d in &digits[1..nd] {
                push(d, &mut n);
            }
        }
        push(b'e', &mut n);
        push(if sci < 0 { b'-' } else { b'+' }, &mut n);
        let e = sci.unsigned_abs();
        if e >= 100 {
            push(b'0' + (e / 100) as u8, &mut n);
        }
        push(b'0' + ((e / 10) % 10) as u8, &mut n);
        push(b'0' + (e % 10) as u8, &mut n);
    } else if point <= 0 {
        push(b'0', &mut n);
        push(b'.', &mut n);
        for _ in 0..-point {
            push(b'0', &mut n);
        }
        for &d in &digits[..nd] {
            push(d, &mut n);
        }
    } else {
        let point = point as usize;
        let padded = digits[..nd].iter().copied().chain(std::iter::repeat(b'0'));
        for (i, d) in padded.take(point.max(nd)).enumerate() {
            if i == point {
                push(b'.', &mut n);
            }
            push(d, &mut n);
        }
    }
    n
}

/// arrow-pg's per-cell encoding into a plain buffer: the length and value
/// exactly as pgwire's `DataRowEncoder` writes them.
struct Fallback {
    buf: BytesMut,
}

impl Encoder for Fallback {
    type Item = ();

    fn encode_field<T>(&mut self, value: &T, pg_field: &FieldInfo) -> PgWireResult<()>
    where
        T: ToSql + ToSqlText + Sized,
    {
        let start = self.buf.len();
        self.buf.put_i32(-1);
        let is_null = if pg_field.format() == FieldFormat::Text {
            value.to_sql_text(pg_field.datatype(), &mut self.buf, pg_field.format_options())
        } else {
            value.to_sql(pg_field.datatype(), &mut self.buf)
        }
        .map_err(PgWireError::ApiError)?;
        if let IsNull::No = is_null {
            let len = (self.buf.len() - start - 4) as i32;
            self.buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    fn take_row(&mut self) -> Self::Item {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cell's text (after its 4-byte length).
    fn cell(f: impl FnOnce(&mut BytesMut)) -> String {
        let mut buf = BytesMut::new();
        f(&mut buf);
        String::from_utf8(buf[4..].to_vec()).unwrap()
    }

    fn text(v: f64) -> String {
        cell(|b| put_float_text(b, v, 15))
    }

    fn text4(v: f32) -> String {
        cell(|b| put_float_text(b, v, 6))
    }

    /// What Postgres 15 prints for these float8 and float4 values.
    #[test]
    fn floats_print_as_postgres_prints_them() {
        let cases = [
            (1.0, "1"),
            (-1.0, "-1"),
            (30.5, "30.5"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (100000000000000.0, "100000000000000"),
            (1e15, "1e+15"),
            (1.2345e20, "1.2345e+20"),
            (1e100, "1e+100"),
            (1e-300, "1e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (123456789012345.6, "123456789012345.6"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (v, want) in cases {
            assert_eq!(text(v), want, "{v:e}");
        }
        assert_eq!(text4(1.5), "1.5");
        assert_eq!(text4(100000.0), "100000");
        assert_eq!(text4(1000000.0), "1e+06");
        assert_eq!(text4(0.1), "0.1");
        assert_eq!(text4(3.4028235e38), "3.4028235e+38");
    }

    /// What Postgres 15 prints for these timestamps and timestamptz
    /// values (TimeZone UTC, and Asia/Kolkata for the half-hour offset).
    #[test]
    fn timestamps_print_as_postgres_prints_them() {
        let ts = |micros: i64, zone: Option<&str>| {
            let zone = zone.map(|z| z.parse::<Tz>().unwrap());
            cell(|b| put_timestamp_text(b, micros, zone.as_ref()))
        };
        // 2026-12-05 20:16:37.691 UTC
        let t = 1_796_501_797_691_000;
        assert_eq!(ts(t, None), "2026-12-05 20:16:37.691");
        assert_eq!(ts(t - 691_000, None), "2026-12-05 20:16:37");
        assert_eq!(ts(t + 1, None), "2026-12-05 20:16:37.691001");
        assert_eq!(ts(t, Some("+00:00")), "2026-12-05 20:16:37.691+00");
        assert_eq!(ts(t, Some("UTC")), "2026-12-05 20:16:37.691+00");
        assert_eq!(ts(t, Some("Asia/Kolkata")), "2026-12-06 01:46:37.691+05:30");
        assert_eq!(ts(-1, None), "1969-12-31 23:59:59.999999");
        let time = |micros| cell(|b| put_time_text(b, micros));
        assert_eq!(time(49_507_000_000), "13:45:07");
        assert_eq!(time(49_507_250_000), "13:45:07.25");
        assert_eq!(time(0), "00:00:00");
    }
}

//! `COPY table FROM STDIN`: the client's rows, in COPY's text or CSV
//! format, read into Arrow batches of the table's columns.
//!
//! The whole input is read before anything is written, so a bad row loses
//! nothing and writes nothing (as in Postgres, where COPY is one
//! transaction): its error names the line and the column.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::compute::CastOptions;
use arrow::datatypes::SchemaRef;

use crate::error::{ErrorKind, Result, SluiceError};
use crate::parser::CopyOptions;

/// Rows per batch handed to the table's writer.
const BATCH_ROWS: usize = 8192;

/// Where a `COPY ... FROM STDIN` writes.
#[derive(Debug, Clone)]
pub struct CopyInTarget {
    /// The table, as DataFusion resolves it.
    pub table: String,
    /// The table's columns.
    pub schema: SchemaRef,
    /// For each field of an input line, the table column it fills; the
    /// others are NULL.
    pub columns: Vec<usize>,
    pub options: CopyOptions,
    /// A stream whose connector takes the rows (a file stream: a new file
    /// in its directory); None for an external table.
    pub stream: Option<std::sync::Arc<crate::stream::StreamTable>>,
}

impl CopyInTarget {
    /// Reads `data` (everything the client sent) into batches of the
    /// table's columns.
    pub fn read(&self, data: &[u8]) -> Result<Vec<RecordBatch>> {
        let mut reader = Fields::new(data, &self.options);
        let width = self.columns.len();
        let mut builders = new_builders(width);
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut first = true;
        let mut first_line = 0;
        while let Some((line, fields)) = reader.next_record()? {
            if first && self.options.csv && self.options.header {
                first = false;
                first_line = line + 1;
                continue;
            }
            first = false;
            if rows == 0 {
                first_line = line;
            }
            if fields.len() != width {
                return Err(bad_data(format!(
                    "COPY {}, line {line}: {} columns where {width} are expected",
                    self.table,
                    fields.len()
                )));
            }
            for (b, f) in builders.iter_mut().zip(fields) {
                match f {
                    Some(v) => b.append_value(v),
                    None => b.append_null(),
                }
            }
            rows += 1;
            if rows == BATCH_ROWS {
                batches.push(self.batch(&mut builders, first_line)?);
                rows = 0;
            }
        }
        if rows > 0 {
            batches.push(self.batch(&mut builders, first_line)?);
        }
        Ok(batches)
    }

    /// The rows in `builders` as a batch of the table's types: each text
    /// column cast to its column's type (a value that does not parse is
    /// 22P02, naming the column).
    fn batch(&self, builders: &mut [StringBuilder], first_line: usize) -> Result<RecordBatch> {
        let texts: Vec<ArrayRef> = builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let rows = texts.first().map_or(0, |a| a.len());
        let mut columns: Vec<ArrayRef> = self
            .schema
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), rows))
            .collect();
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        for (text, &i) in texts.iter().zip(&self.columns) {
            let field = self.schema.field(i);
            columns[i] =
                arrow::compute::cast_with_options(text, field.data_type(), &strict).map_err(|e| {
                    SluiceError::new(
                        ErrorKind::InvalidTextRepresentation,
                        format!(
                            "COPY {}, column {}, in the rows from line {first_line}: {e}",
                            self.table,
                            field.name()
                        ),
                    )
                })?;
            if !field.is_nullable() && columns[i].null_count() > 0 {
                return Err(SluiceError::new(
                    ErrorKind::NotNullViolation,
                    format!(
                        "COPY {}: NULL in column {}, which is NOT NULL",
                        self.table,
                        field.name()
                    ),
                ));
            }
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

fn new_builders(n: usize) -> Vec<StringBuilder> {
    (0..n).map(|_| StringBuilder::new()).collect()
}

fn bad_data(message: String) -> SluiceError {
    SluiceError::new(ErrorKind::BadCopyFileFormat, message)
}

/// Splits COPY data into records of fields (None for NULL).
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
    line: usize,
    options: &'a CopyOptions,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8], options: &'a CopyOptions) -> Self {
        Self {
            data,
            at: 0,
            line: 0,
            options,
        }
    }

    /// The next record and the line it starts on (1-based), or None at the
    /// end of the data or at a `\.` line.
    fn next_record(&mut self) -> Result<Option<(usize, Vec<Option<String>>)>> {
        if self.at >= self.data.len() {
            return Ok(None);
        }
        self.line += 1;
        let line = self.line;
        let rest = &self.data[self.at..];
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let mut text = &rest[..end];
        if text.last() == Some(&b'\r') {
            text = &text[..text.len() - 1];
        }
        if text == b"\\." {
            self.at = self.data.len();
            return Ok(None);
        }
        if self.options.csv {
            return self.csv_record(line).map(|r| Some((line, r)));
        }
        self.at += (end + 1).min(rest.len());
        let text =
            std::str::from_utf8(text).map_err(|_| bad_data(format!("COPY line {line}: not valid UTF-8")))?;
        let delimiter = self.options.delimiter;
        let fields = text
            .split(delimiter)
            .map(|f| {
                if f == self.options.null {
                    Ok(None)
                } else {
                    unescape_text(f)
                        .map(Some)
                        .map_err(|e| bad_data(format!("COPY line {line}: {e}")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((line, fields)))
    }

    /// One CSV record from `self.at`: quoted fields may hold delimiters,
    /// doubled quotes and line breaks. An unquoted field equal to the NULL
    /// string is NULL; a quoted one never is.
    fn csv_record(&mut self, line: usize) -> Result<Vec<Option<String>>> {
        let delimiter = self.options.delimiter as u32 as u8;
        let mut fields = Vec::new();
        let mut field: Vec<u8> = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        let data = self.data;
        let mut i = self.at;
        let finish = |field: &mut Vec<u8>, quoted: bool| -> Result<Option<String>> {
            let text = String::from_utf8(std::mem::take(field))
                .map_err(|_| bad_data(format!("COPY line {line}: not valid UTF-8")))?;
            Ok(if !quoted && text == self.options.null {
                None
            } else {
                Some(text)
            })
        };
        loop {
            if i >= data.len() {
                if in_quotes {
                    return Err(bad_data(format!(
                        "COPY line {line}: unterminated CSV quoted field"
                    )));
                }
                fields.push(finish(&mut field, quoted)?);
                break;
            }
            let c = data[i];
            if in_quotes {
                if c == b'"' {
                    if data.get(i + 1) == Some(&b'"') {
                        field.push(b'"');
                        i += 2;
                        continue;
                    }
                    in_quotes = false;
                } else {
                    if c == b'\n' {
                        self.line += 1;
                    }
                    field.push(c);
                }
                i += 1;
            } else if c == b'"' {
                in_quotes = true;
                quoted = true;
                i += 1;
            } else if c == delimiter {
                fields.push(finish(&mut field, quoted)?);
                quoted = false;
                i += 1;
            } else if c == b'\n' || (c == b'\r' && data.get(i + 1) == Some(&b'\n')) {
                fields.push(finish(&mut field, quoted)?);
                i += if c == b'\r' { 2 } else { 1 };
                break;
            } else {
                field.push(c);
                i += 1;
            }
        }
        self.at = i;
        Ok(fields)
    }
}

/// COPY's text format escapes: `\t`, `\n`, `\\`, octal `\123`, hex `\x41`, ...
fn unescape_text(f: &str) -> std::result::Result<String, String> {
    if !f.contains('\\') {
        return Ok(f.to_string());
    }
    let b = f.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + (b[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < b.len() && b[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < b.len() && b[i].is_ascii_hexdigit() {
                    v = v * 16 + (b[i] as char).to_digit(16).expect("hex digit");
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| "an escape makes invalid UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn target(csv: bool, header: bool) -> CopyInTarget {
        let mut options = CopyOptions::text();
        if csv {
            options.csv = true;
            options.delimiter = ',';
            options.null = String::new();
            options.header = header;
        }
        CopyInTarget {
            table: "t".into(),
            schema: Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
                Field::new("extra", DataType::Utf8, true),
            ])),
            columns: vec![0, 1],
            options,
            stream: None,
        }
    }

    fn names(b: &RecordBatch) -> Vec<Option<String>> {
        b.column(1)
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    #[test]
    fn text_format_with_escapes_nulls_and_the_end_marker() {
        let data = b"1\ta\\tb\n2\t\\N\n3\tx\\\\y\\101\n\\.\n4\tignored\n";
        let batches = target(false, false).read(data).unwrap();
        let b = &batches[0];
        assert_eq!(b.num_rows(), 3);
        assert_eq!(
            b.column(0).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![1, 2, 3])
        );
        assert_eq!(names(b), vec![Some("a\tb".into()), None, Some("x\\yA".into())]);
        assert_eq!(b.column(2).null_count(), 3);
    }

    #[test]
    fn csv_with_header_quotes_line_breaks_and_empty_versus_null() {
        let data = b"id,name\r\n1,\"a,b\"\r\n2,\n3,\"\"\n4,\"two\nlines \"\"q\"\"\"\n";
        let b = &target(true, true).read(data).unwrap()[0];
        assert_eq!(b.num_rows(), 4);
        assert_eq!(
            names(b),
            vec![
                Some("a,b".into()),
                None,
                Some(String::new()),
                Some("two\nlines \"q\"".into())
            ]
        );
    }

    #[test]
    fn a_bad_value_or_width_is_an_error_naming_where() {
        let e = target(false, false).read(b"1\ta\nx\tb\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidTextRepresentation);
        assert!(e.to_string().contains("column id"), "{e}");
        let e = target(false, false).read(b"1\ta\n2\n").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadCopyFileFormat);
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = target(true, false).read(b"1,\"open\n").unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
    }

    #[test]
    fn many_rows_come_in_several_batches() {
        let data: String = (0..20_000).map(|i| format!("{i}\tn{i}\n")).collect();
        let batches = target(false, false).read(data.as_bytes()).unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 20_000);
    }
}

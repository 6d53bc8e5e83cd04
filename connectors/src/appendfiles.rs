//! Rows added to a stream by `COPY stream FROM STDIN`: for a file stream,
//! split by its partition columns into `col=value/` folders and encoded in
//! its format, so that its source reads them back as it reads any file; for
//! a message stream (Kafka), one record per row in its format.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_engine::datafusion::parquet::arrow::ArrowWriter;
use sluice_engine::{Result, SluiceError};

use crate::format::{Format, TimestampFormat};

/// Hive's spelling of a NULL partition value.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The rows of `batch` by partition: each group's folder (`col=value`
/// segments, in `partition_by` order) and its rows without the partition
/// columns, which the folder holds.
pub fn by_partition(batch: &RecordBatch, partition_by: &[String]) -> Result<Vec<(Vec<String>, RecordBatch)>> {
    let schema = batch.schema();
    let keys: Vec<usize> = partition_by
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<std::result::Result<_, _>>()?;
    let kept: Vec<usize> = (0..schema.fields().len()).filter(|i| !keys.contains(i)).collect();
    let payload = batch.project(&kept)?;
    if keys.is_empty() {
        return Ok(vec![(vec![], payload)]);
    }
    let options = FormatOptions::default();
    let formatters = keys
        .iter()
        .map(|&k| ArrayFormatter::try_new(batch.column(k).as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut groups: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let folder = keys
            .iter()
            .zip(&formatters)
            .map(|(&k, f)| {
                let value = if batch.column(k).is_null(row) {
                    NULL_PARTITION.to_string()
                } else {
                    f.value(row).to_string()
                };
                format!("{}={value}", schema.field(k).name())
            })
            .collect();
        groups.entry(folder).or_default().push(row as u32);
    }
    groups
        .into_iter()
        .map(|(folder, rows)| Ok((folder, take_record_batch(&payload, &UInt32Array::from(rows))?)))
        .collect()
}

/// `batch` as one file in `format`: JSON lines (timestamps as the stream
/// reads them: ISO 8601 text, or numbers since the epoch), CSV (the
/// stream's delimiter, quote and header) or Parquet.
pub fn encode(format: &Format, batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Json { timestamps, .. } => {
            let batch = match timestamps {
                TimestampFormat::Iso8601 => batch.clone(),
                TimestampFormat::Epoch(unit) => epoch_timestamps(batch, *unit)?,
            };
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            w.write(&batch)?;
            w.finish()?;
        }
        Format::Csv {
            delimiter,
            quote,
            header,
        } => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(*header)
                .with_delimiter(*delimiter)
                .with_quote(*quote)
                .build(&mut out);
            w.write(batch)?;
        }
        Format::Parquet => {
            let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None)
                .map_err(sluice_engine::datafusion::error::DataFusionError::from)?;
            w.write(batch)
                .map_err(sluice_engine::datafusion::error::DataFusionError::from)?;
            w.close()
                .map_err(sluice_engine::datafusion::error::DataFusionError::from)?;
        }
        other => {
            return Err(SluiceError::not_supported(format!(
                "COPY FROM STDIN writes JSON-lines, CSV and Parquet file streams, not {other:?}"
            )));
        }
    }
    Ok(out)
}

/// Each row of `batch` as one record in `format` (a JSON object, or a CSV
/// line without its line break), for message streams.
pub fn records(format: &Format, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    match format {
        Format::Json { .. } | Format::Csv { .. } => {}
        other => {
            return Err(SluiceError::not_supported(format!(
                "COPY FROM STDIN produces JSON or CSV records, not {other:?}"
            )));
        }
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let row = batch.slice(i, 1);
        let mut bytes = match format {
            // One row with the header off: a CSV line.
            Format::Csv { delimiter, quote, .. } => encode(
                &Format::Csv {
                    delimiter: *delimiter,
                    quote: *quote,
                    header: false,
                },
                &row,
            )?,
            _ => encode(format, &row)?,
        };
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        out.push(bytes);
    }
    Ok(out)
}

/// Timestamp columns as integers since the epoch in `unit`.
fn epoch_timestamps(batch: &RecordBatch, unit: arrow::datatypes::TimeUnit) -> Result<RecordBatch> {
    let mut fields = vec![];
    let mut columns: Vec<ArrayRef> = vec![];
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match f.data_type() {
            DataType::Timestamp(_, tz) => {
                let in_unit = cast(c, &DataType::Timestamp(unit, tz.clone()))?;
                columns.push(cast(&in_unit, &DataType::Int64)?);
                fields.push(arrow::datatypes::Field::new(f.name(), DataType::Int64, true));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn rows_go_to_their_partition_folder_without_the_partition_column() {
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("id", DataType::Int64, true),
            arrow::datatypes::Field::new("dt", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("a")])),
            ],
        )
        .unwrap();
        let groups = by_partition(&batch, &["dt".to_string()]).unwrap();
        let got: Vec<(Vec<String>, usize, usize)> = groups
            .iter()
            .map(|(f, b)| (f.clone(), b.num_rows(), b.num_columns()))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec!["dt=__HIVE_DEFAULT_PARTITION__".to_string()], 1, 1),
                (vec!["dt=a".to_string()], 2, 1)
            ]
        );
        let json = encode(
            &Format::Json {
                ignore_unknown: false,
                timestamps: TimestampFormat::Iso8601,
            },
            &groups[1].1,
        )
        .unwrap();
        assert_eq!(String::from_utf8(json).unwrap(), "{\"id\":1}\n{\"id\":3}\n");
    }
}

//! Record formats and bad-record handling, shared by the decoding sources
//! (Kafka records, lines of JSON-lines / CSV files).
//!
//! A source hands a [`RecordDecoder`] a slice of records (one row each) and
//! gets one Arrow batch back: the whole slice goes through the vectorized
//! arrow-json / arrow-csv decoder in one pass, and only when that fails are
//! the records decoded one at a time to find the malformed ones, which then
//! go to [`BadRecords`] (fail the job, skip and count, or write to a dead
//! letter topic or path).
//!
//! Declared columns a source fills itself (metadata columns such as a Kafka
//! record's partition, Hive partition columns of a file) are split off by
//! [`Layout`] so the decoder only sees the payload's columns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int8Array, RecordBatch, StringArray, StructArray};
use arrow::compute::{cast, concat_batches, interleave};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use base64::Engine as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sluice_engine::stream::metadata_key;
use sluice_engine::stream::with_op_column;
use sluice_engine::{ErrorKind, Result, SluiceError, StoreRegistry};

use crate::avro::{AvroDecoder, AvroFraming};

/// Format options every decoding source accepts.
pub const FORMAT_OPTIONS: &[&str] = &[
    "format",
    "json.ignore-unknown-fields",
    "json.timestamp-format",
    "csv.delimiter",
    "csv.quote",
    "csv.header",
    "debezium-json.schema-include",
    "avro.schema",
    "avro-confluent.url",
    "avro-confluent.schema-registry.url",
    "avro-confluent.subject",
];

/// Bad-record options every decoding source accepts (plus
/// `dead_letter.properties.*` for a dead letter topic's Kafka client).
pub const BAD_RECORD_OPTIONS: &[&str] = &["bad_records", "dead_letter.topic", "dead_letter.path"];

/// A decoding source's options: its own, then the format and bad-record
/// ones.
pub fn decoding_source_options(own: &[&'static str]) -> Vec<&'static str> {
    let mut all = own.to_vec();
    all.extend_from_slice(FORMAT_OPTIONS);
    all.extend_from_slice(BAD_RECORD_OPTIONS);
    all
}

/// Checks that every metadata column names one of the connector's
/// `available` metadata keys.
pub fn check_metadata_columns(schema: &SchemaRef, connector: &str, available: &[&str]) -> Result<()> {
    for f in schema.fields() {
        if let Some(key) = metadata_key(f)
            && !available.contains(&key)
        {
            return Err(SluiceError::invalid_parameter(format!(
                "column {}: {connector} has no metadata '{key}'; available: {}",
                f.name(),
                available.join(", ")
            )));
        }
    }
    Ok(())
}

/// Unique enough to tell runs apart in file names.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// Whether `key` is a bad-record option.
pub fn is_bad_record_option(key: &str) -> bool {
    BAD_RECORD_OPTIONS.contains(&key) || key.starts_with("dead_letter.properties.")
}

/// How JSON timestamps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    /// Strings: `2026-11-22T10:00:00Z`, `2026-11-22 10:00:00.123`.
    Iso8601,
    /// Numbers since the epoch.
    Epoch(TimeUnit),
}

/// A payload format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Json {
        ignore_unknown: bool,
        timestamps: TimestampFormat,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        header: bool,
    },
    /// The whole payload as one TEXT or BYTEA column.
    Raw,
    /// Parquet files (file source only).
    Parquet,
    /// Avro records, plain or in the Confluent wire format.
    Avro(AvroFraming),
    /// Debezium change envelopes (`{"before", "after", "op"}`, inside
    /// `{"schema", "payload"}` when `schema_include`): a changelog.
    DebeziumJson {
        timestamps: TimestampFormat,
        schema_include: bool,
    },
}

fn single_byte(options: &BTreeMap<String, String>, key: &str, default: u8) -> Result<u8> {
    match options.get(key) {
        None => Ok(default),
        Some(v) if v == "\\t" => Ok(b'\t'),
        Some(v) if v.len() == 1 => Ok(v.as_bytes()[0]),
        Some(v) => Err(SluiceError::invalid_parameter(format!(
            "option '{key}' = '{v}': one ASCII character (or '\\t')"
        ))),
    }
}

fn boolean(options: &BTreeMap<String, String>, key: &str, default: bool) -> Result<bool> {
    match options.get(key).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(SluiceError::invalid_parameter(format!(
            "option '{key}' = '{other}': true or false"
        ))),
    }
}

impl Format {
    /// Reads `format` and its options. `allowed` names the formats the
    /// source takes (the first is the default); `csv_header` is the default
    /// of `csv.header` (files usually have one, Kafka records never).
    pub fn parse(options: &BTreeMap<String, String>, allowed: &[&str], csv_header: bool) -> Result<Self> {
        let name = options
            .get("format")
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_else(|| allowed[0].to_string());
        if !allowed.contains(&name.as_str()) {
            return Err(SluiceError::not_supported(format!(
                "format '{name}' is not supported here; use {}",
                allowed.join(", ")
            )));
        }
        let timestamps = || match options
            .get("json.timestamp-format")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("iso-8601") | Some("sql") => Ok(TimestampFormat::Iso8601),
            Some("epoch-seconds") => Ok(TimestampFormat::Epoch(TimeUnit::Second)),
            Some("epoch-millis") => Ok(TimestampFormat::Epoch(TimeUnit::Millisecond)),
            Some("epoch-micros") => Ok(TimestampFormat::Epoch(TimeUnit::Microsecond)),
            Some(other) => Err(SluiceError::invalid_parameter(format!(
                "'json.timestamp-format' = '{other}': use iso-8601, epoch-seconds, epoch-millis or epoch-micros"
            ))),
        };
        Ok(match name.as_str() {
            "json" => Format::Json {
                ignore_unknown: boolean(options, "json.ignore-unknown-fields", true)?,
                timestamps: timestamps()?,
            },
            "debezium-json" => Format::DebeziumJson {
                timestamps: timestamps()?,
                schema_include: boolean(options, "debezium-json.schema-include", false)?,
            },
            "csv" => Format::Csv {
                delimiter: single_byte(options, "csv.delimiter", b',')?,
                quote: single_byte(options, "csv.quote", b'"')?,
                header: boolean(options, "csv.header", csv_header)?,
            },
            "raw" => Format::Raw,
            "parquet" => Format::Parquet,
            "avro" | "avro-confluent" => Format::Avro(AvroFraming::parse(&name, options)?),
            other => {
                return Err(SluiceError::not_supported(format!(
                    "format '{other}' is not supported"
                )));
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Format::Json { .. } => "json",
            Format::Csv { .. } => "csv",
            Format::Raw => "raw",
            Format::Parquet => "parquet",
            Format::Avro(AvroFraming::Plain { .. }) => "avro",
            Format::Avro(AvroFraming::Confluent { .. }) => "avro-confluent",
            Format::DebeziumJson { .. } => "debezium-json",
        }
    }

    /// Whether records are changes (inserts and deletes) rather than rows.
    pub fn is_changelog(&self) -> bool {
        matches!(self, Format::DebeziumJson { .. })
    }

    /// The unit of epoch-number timestamps, for the JSON formats.
    fn epoch_unit(&self) -> Option<TimeUnit> {
        match self {
            Format::Json {
                timestamps: TimestampFormat::Epoch(unit),
                ..
            }
            | Format::DebeziumJson {
                timestamps: TimestampFormat::Epoch(unit),
                ..
            } => Some(*unit),
            _ => None,
        }
    }
}

/// Metadata a Debezium envelope carries beside its images (Flink's keys):
/// `value.source.timestamp` is the change's time in the database
/// (`source.ts_ms`), `value.ingestion-timestamp` when the connector read it
/// (`ts_ms`). Columns declared with them are filled per row from the
/// record's envelope (both rows of an update get the update's times).
pub const ENVELOPE_METADATA: &[&str] = sluice_engine::stream::CHANGE_TIME_METADATA;

/// Whether a column's metadata key is one the record's value (a Debezium
/// envelope) fills, not the transport.
pub fn is_envelope_metadata(key: &str) -> bool {
    ENVELOPE_METADATA.contains(&key)
}

/// Decodes records, one row each, into batches of a schema.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    format: Format,
    schema: SchemaRef,
    /// What the vectorized decoder produces (epoch timestamps as integers).
    decode_schema: SchemaRef,
    /// The avro decoder (its schemas and registry client), shared by clones.
    avro: Option<Arc<AvroDecoder>>,
    /// Columns filled from a Debezium envelope's times: (column, its
    /// metadata key).
    envelope: Vec<(usize, &'static str)>,
}

impl RecordDecoder {
    /// A decoder of `format` producing `schema`.
    pub fn new(format: Format, schema: SchemaRef) -> Result<Self> {
        if format == Format::Raw {
            let ok = schema.fields().len() == 1
                && matches!(
                    schema.field(0).data_type(),
                    DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Binary
                        | DataType::LargeBinary
                );
            if !ok {
                return Err(SluiceError::invalid_parameter(
                    "format 'raw' reads the whole record into one column: declare exactly one TEXT or BYTEA \
                     column (besides metadata columns)",
                ));
            }
        }
        let envelope: Vec<(usize, &'static str)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let key = metadata_key(f)?;
                ENVELOPE_METADATA.iter().find(|k| **k == key).map(|k| (i, *k))
            })
            .collect();
        if let Some((i, key)) = envelope.first()
            && !matches!(format, Format::DebeziumJson { .. })
        {
            return Err(SluiceError::invalid_parameter(format!(
                "column {}: metadata '{key}' comes from a Debezium envelope; it needs format = 'debezium-json'",
                schema.field(*i).name()
            )));
        }
        let decode_schema = match format.epoch_unit() {
            Some(_) => Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| match f.data_type() {
                        DataType::Timestamp(_, _) if !envelope.iter().any(|(c, _)| *c == i) => {
                            Arc::new(f.as_ref().clone().with_data_type(DataType::Int64))
                        }
                        _ => f.clone(),
                    })
                    .collect::<Vec<_>>(),
            )),
            _ => schema.clone(),
        };
        let avro = match &format {
            Format::Avro(framing) => Some(Arc::new(AvroDecoder::new(framing, schema.clone())?)),
            _ => None,
        };
        Ok(Self {
            format,
            schema,
            decode_schema,
            avro,
            envelope,
        })
    }

    /// Fetches what decoding `records` needs from elsewhere first (the
    /// writer schemas of Confluent-framed Avro records).
    pub async fn prepare(&self, records: &[&[u8]]) -> Result<()> {
        match &self.avro {
            Some(avro) => avro.prepare(records).await,
            None => Ok(()),
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Whether decoded batches are changes (the op column last).
    pub fn is_changelog(&self) -> bool {
        self.format.is_changelog()
    }

    /// The schema of decoded batches: the payload's, plus the op column
    /// last for a changelog format.
    pub fn output_schema(&self) -> SchemaRef {
        if self.format.is_changelog() {
            with_op_column(&self.schema)
        } else {
            self.schema.clone()
        }
    }

    /// Every record in one pass; an error unless each gave exactly one row
    /// (a changelog's record: one or two rows, and the op column).
    pub fn decode_all(&self, records: &[&[u8]]) -> Result<RecordBatch> {
        Ok(self.decode_mapped(records)?.0)
    }

    /// Every record in one pass, and, when records don't give one row each,
    /// the record each row came from.
    fn decode_mapped(&self, records: &[&[u8]]) -> Result<(RecordBatch, Option<Vec<usize>>)> {
        if let Format::DebeziumJson { schema_include, .. } = &self.format {
            return self.decode_debezium(records, *schema_include);
        }
        let batch = match &self.format {
            Format::Json { ignore_unknown, .. } => {
                let mut decoder = arrow::json::ReaderBuilder::new(self.decode_schema.clone())
                    .with_batch_size(records.len().max(1))
                    .with_strict_mode(!ignore_unknown)
                    .build_decoder()?;
                for r in records {
                    feed(r, |b| Ok(decoder.decode(b)?))?;
                    // One record, one row: a record that is not one complete
                    // JSON object fails here or in the row count below.
                    decoder.decode(b"\n")?;
                }
                decoder.flush()?
            }
            Format::Csv { delimiter, quote, .. } => {
                let mut decoder = arrow::csv::ReaderBuilder::new(self.decode_schema.clone())
                    .with_header(false)
                    .with_delimiter(*delimiter)
                    .with_quote(*quote)
                    .with_batch_size(records.len() + 1)
                    .build_decoder();
                for r in records {
                    let line = r.strip_suffix(b"\n").unwrap_or(r);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    feed(line, |b| Ok(decoder.decode(b)?))?;
                    decoder.decode(b"\n")?;
                }
                decoder.flush()?
            }
            Format::Raw => {
                let column: ArrayRef = match self.schema.field(0).data_type() {
                    DataType::Binary | DataType::LargeBinary => {
                        Arc::new(BinaryArray::from_iter_values(records.iter().copied()))
                    }
                    _ => {
                        let mut strings = Vec::with_capacity(records.len());
                        for r in records {
                            strings.push(std::str::from_utf8(r).map_err(|e| {
                                SluiceError::invalid_parameter(format!("record is not UTF-8 text: {e}"))
                            })?);
                        }
                        Arc::new(StringArray::from(strings))
                    }
                };
                let column = cast(&column, self.schema.field(0).data_type())?;
                Some(RecordBatch::try_new(self.schema.clone(), vec![column])?)
            }
            Format::Parquet => {
                return Err(SluiceError::internal(
                    "parquet is decoded per file, not per record",
                ));
            }
            Format::Avro(_) => {
                let avro = self.avro.as_ref().expect("avro decoder");
                return Ok((avro.decode_all(records)?, None));
            }
            Format::DebeziumJson { .. } => unreachable!("decoded above"),
        };
        let batch = match batch {
            Some(b) => b,
            None => RecordBatch::new_empty(self.decode_schema.clone()),
        };
        if batch.num_rows() != records.len() {
            return Err(SluiceError::invalid_parameter(format!(
                "{} records gave {} rows",
                records.len(),
                batch.num_rows()
            )));
        }
        Ok((self.finish(batch)?, None))
    }

    /// Debezium envelopes: "c" and "r" insert `after`, "d" deletes
    /// `before`, "u" deletes `before` and inserts `after`.
    fn decode_debezium(
        &self,
        records: &[&[u8]],
        schema_include: bool,
    ) -> Result<(RecordBatch, Option<Vec<usize>>)> {
        // Every image column nullable: a missing image has null children.
        // Columns filled from the envelope's times are not in the images.
        let from_envelope = |c: usize| self.envelope.iter().find(|(e, _)| *e == c).map(|(_, k)| *k);
        let image_columns: Vec<usize> = (0..self.decode_schema.fields().len())
            .filter(|c| from_envelope(*c).is_none())
            .collect();
        let image: Vec<Field> = image_columns
            .iter()
            .map(|c| self.decode_schema.field(*c).clone().with_nullable(true))
            .collect();
        let image = DataType::Struct(image.into());
        let mut envelope = vec![
            Field::new("before", image.clone(), true),
            Field::new("after", image, true),
            Field::new("op", DataType::Utf8, true),
        ];
        if !self.envelope.is_empty() {
            envelope.push(Field::new("ts_ms", DataType::Int64, true));
            envelope.push(Field::new(
                "source",
                DataType::Struct(vec![Field::new("ts_ms", DataType::Int64, true)].into()),
                true,
            ));
        }
        let top = if schema_include {
            Schema::new(vec![Field::new(
                "payload",
                DataType::Struct(envelope.into()),
                true,
            )])
        } else {
            Schema::new(envelope)
        };
        // Envelopes carry more than these fields (source, ts_ms, ...).
        let mut decoder = arrow::json::ReaderBuilder::new(Arc::new(top))
            .with_batch_size(records.len().max(1))
            .with_strict_mode(false)
            .build_decoder()?;
        for r in records {
            feed(r, |b| Ok(decoder.decode(b)?))?;
            decoder.decode(b"\n")?;
        }
        let batch = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::new(Schema::empty())));
        if batch.num_rows() != records.len() {
            return Err(SluiceError::invalid_parameter(format!(
                "{} records gave {} envelopes",
                records.len(),
                batch.num_rows()
            )));
        }
        let envelope: StructArray = if schema_include {
            let payload = batch.column(0).as_struct().clone();
            if payload.null_count() > 0 {
                return Err(SluiceError::invalid_parameter(
                    "debezium record without a 'payload' ('debezium-json.schema-include' is true)",
                ));
            }
            payload
        } else {
            batch.into()
        };
        let (before, after, op) = (
            envelope.column(0).as_struct(),
            envelope.column(1).as_struct(),
            envelope.column(2).as_string::<i32>(),
        );
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(records.len());
        let mut ops: Vec<i8> = Vec::with_capacity(records.len());
        let mut from: Vec<usize> = Vec::with_capacity(records.len());
        for i in 0..records.len() {
            let code = if op.is_valid(i) { op.value(i) } else { "" };
            let (take_before, take_after) = match code {
                "c" | "r" => (false, true),
                "d" => (true, false),
                "u" => (true, true),
                other => {
                    return Err(SluiceError::invalid_parameter(format!(
                        "debezium record with op '{other}': expected c, r, u or d"
                    )));
                }
            };
            if take_before {
                if before.is_null(i) {
                    return Err(SluiceError::invalid_parameter(format!(
                        "debezium '{code}' record without a 'before' image (the source table needs \
                         its full old rows, e.g. REPLICA IDENTITY FULL)"
                    )));
                }
                picks.push((0, i));
                ops.push(-1);
                from.push(i);
            }
            if take_after {
                if after.is_null(i) {
                    return Err(SluiceError::invalid_parameter(format!(
                        "debezium '{code}' record without an 'after' image"
                    )));
                }
                picks.push((1, i));
                ops.push(1);
                from.push(i);
            }
        }
        let mut columns = Vec::with_capacity(self.decode_schema.fields().len());
        for c in 0..self.decode_schema.fields().len() {
            if let Some(key) = from_envelope(c) {
                // The record's time, for each row it gave.
                let times = if key == "value.source.timestamp" {
                    envelope.column(4).as_struct().column(0).clone()
                } else {
                    envelope.column(3).clone()
                };
                let times = cast(&times, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                let idx = arrow::array::UInt32Array::from_iter_values(from.iter().map(|i| *i as u32));
                let times = arrow::compute::take(&times, &idx, None)?;
                columns.push(cast(&times, self.decode_schema.field(c).data_type())?);
                continue;
            }
            let at = image_columns
                .iter()
                .position(|i| *i == c)
                .expect("an image column");
            columns.push(interleave(
                &[before.column(at).as_ref(), after.column(at).as_ref()],
                &picks,
            )?);
        }
        let rows = self.finish(RecordBatch::try_new(self.decode_schema.clone(), columns)?)?;
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(Int8Array::from(ops)));
        let batch = RecordBatch::try_new(self.output_schema(), columns)?;
        Ok((batch, Some(from)))
    }

    /// Converts what the decoder produced into the target schema.
    fn finish(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if Arc::ptr_eq(&self.decode_schema, &self.schema) {
            return Ok(batch);
        }
        let Some(unit) = self.format.epoch_unit() else {
            return Ok(batch);
        };
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            columns.push(match field.data_type() {
                DataType::Timestamp(_, tz) if column.data_type() == &DataType::Int64 => {
                    let raw = cast(column, &DataType::Timestamp(unit, tz.clone()))?;
                    cast(&raw, field.data_type())?
                }
                _ => column.clone(),
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Every record; the malformed ones go to `on_bad` (with their index and
    /// the error) and are left out. Returns the good rows and, when some
    /// were left out or a record gave other than one row (a changelog's
    /// update gives two), the index of the record each row came from.
    pub fn decode(
        &self,
        records: &[&[u8]],
        mut on_bad: impl FnMut(usize, String) -> Result<()>,
    ) -> Result<(RecordBatch, Option<Vec<usize>>)> {
        if let Ok(decoded) = self.decode_mapped(records) {
            return Ok(decoded);
        }
        let mut good = Vec::new();
        let mut kept = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match self.decode_all(std::slice::from_ref(r)) {
                Ok(b) => {
                    kept.extend(std::iter::repeat_n(i, b.num_rows()));
                    good.push(b);
                }
                Err(e) => on_bad(i, e.to_string())?,
            }
        }
        let batch = concat_batches(&self.output_schema(), &good)?;
        Ok((batch, Some(kept)))
    }
}

/// Feeds `bytes` to a push decoder until it has taken them all.
fn feed(mut bytes: &[u8], mut decode: impl FnMut(&[u8]) -> Result<usize>) -> Result<()> {
    while !bytes.is_empty() {
        let used = decode(bytes)?;
        if used == 0 {
            // The decoder is full: it has as many rows as records, so
            // this record holds more than one.
            if bytes.iter().all(u8::is_ascii_whitespace) {
                break;
            }
            return Err(SluiceError::invalid_parameter("more than one row in a record"));
        }
        bytes = &bytes[used..];
    }
    Ok(())
}

/// A declared schema split into the payload's columns (decoded) and the
/// columns the source fills itself (`extra`: metadata or partition
/// columns).
#[derive(Debug, Clone)]
pub struct Layout {
    schema: SchemaRef,
    payload: SchemaRef,
    /// Per declared column: its payload column, or `None` for an extra one.
    slots: Vec<Option<usize>>,
}

impl Layout {
    /// `extra(field)` says whether the source fills a column itself.
    pub fn new(schema: &SchemaRef, extra: impl Fn(&Field) -> bool) -> Self {
        let mut payload = Vec::new();
        let mut slots = Vec::new();
        for f in schema.fields() {
            if extra(f) {
                slots.push(None);
            } else {
                slots.push(Some(payload.len()));
                // Payload fields carry no Sluice metadata, but the key of
                // one the record's value fills (a Debezium envelope's times).
                let field = Field::new(f.name(), f.data_type().clone(), f.is_nullable());
                payload.push(match metadata_key(f) {
                    Some(key) if is_envelope_metadata(key) => field.with_metadata(f.metadata().clone()),
                    _ => field,
                });
            }
        }
        Self {
            schema: schema.clone(),
            payload: Arc::new(Schema::new(payload)),
            slots,
        }
    }

    /// A layout whose extra columns are the declared metadata columns.
    pub fn with_metadata(schema: &SchemaRef) -> Self {
        Self::new(schema, |f| {
            metadata_key(f).is_some_and(|k| !is_envelope_metadata(k))
        })
    }

    pub fn payload(&self) -> &SchemaRef {
        &self.payload
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn has_extras(&self) -> bool {
        self.slots.iter().any(Option::is_none)
    }

    /// The declared batch: payload columns from `payload`, the others from
    /// `extra(field)`, cast to the declared type.
    pub fn assemble(
        &self,
        payload: RecordBatch,
        mut extra: impl FnMut(&Field) -> Result<ArrayRef>,
    ) -> Result<RecordBatch> {
        if !self.has_extras() {
            return Ok(RecordBatch::try_new(
                self.schema.clone(),
                payload.columns().to_vec(),
            )?);
        }
        let rows = payload.num_rows();
        let mut columns = Vec::with_capacity(self.slots.len());
        for (slot, field) in self.slots.iter().zip(self.schema.fields()) {
            columns.push(match slot {
                Some(i) => payload.column(*i).clone(),
                None => {
                    let array = extra(field)?;
                    if array.len() != rows {
                        return Err(SluiceError::internal(format!(
                            "column {}: {} values for {rows} rows",
                            field.name(),
                            array.len()
                        )));
                    }
                    cast(&array, field.data_type()).map_err(|e| {
                        SluiceError::invalid_parameter(format!(
                            "column {} ({}): {e}",
                            field.name(),
                            field.data_type()
                        ))
                    })?
                }
            });
        }
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// What happens to a record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRecordPolicy {
    /// The job fails with the record's position and the error (default).
    Fail,
    /// Counted in SHOW JOBS (bad_rows) and dropped.
    Skip,
    /// Counted, and written with its error and position to a Kafka topic.
    DeadLetterTopic {
        topic: String,
        properties: BTreeMap<String, String>,
    },
    /// Counted, and written as JSON lines under a path (file://, s3://,
    /// hdfs://).
    DeadLetterPath { location: String },
}

impl BadRecordPolicy {
    /// Reads `bad_records` and the dead letter options. `properties` are the
    /// source's own Kafka properties, the default for a dead letter topic.
    pub fn parse(
        options: &BTreeMap<String, String>,
        properties: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        match options
            .get("bad_records")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("fail") => Ok(Self::Fail),
            Some("skip") => Ok(Self::Skip),
            Some("dead_letter") => {
                match (options.get("dead_letter.topic"), options.get("dead_letter.path")) {
                    (Some(topic), None) => {
                        let mut props: BTreeMap<String, String> = options
                            .iter()
                            .filter_map(|(k, v)| {
                                k.strip_prefix("dead_letter.properties.")
                                    .map(|p| (p.to_string(), v.clone()))
                            })
                            .collect();
                        if props.is_empty()
                            && let Some(p) = properties
                        {
                            props = p.clone();
                        }
                        if !props.contains_key("bootstrap.servers") {
                            return Err(SluiceError::invalid_parameter(
                                "'dead_letter.topic' needs 'dead_letter.properties.bootstrap.servers'",
                            ));
                        }
                        Ok(Self::DeadLetterTopic {
                            topic: topic.clone(),
                            properties: props,
                        })
                    }
                    (None, Some(path)) => Ok(Self::DeadLetterPath {
                        location: path.clone(),
                    }),
                    _ => Err(SluiceError::invalid_parameter(
                        "'bad_records' = 'dead_letter' needs one of 'dead_letter.topic' or 'dead_letter.path'",
                    )),
                }
            }
            Some(other) => Err(SluiceError::invalid_parameter(format!(
                "'bad_records' = '{other}': use fail, skip or dead_letter"
            ))),
        }
    }
}

impl BadRecordPolicy {
    /// Checks at CREATE that the dead letter topic exists (a clear error
    /// now rather than a failed job).
    pub fn check(&self) -> Result<()> {
        if let BadRecordPolicy::DeadLetterTopic { topic, properties } = self {
            let mut config = ClientConfig::new();
            for (k, v) in properties {
                config.set(k, v);
            }
            crate::kafka::client::topic_partitions(&config, topic)?;
        }
        Ok(())
    }
}

/// A record that did not decode.
#[derive(Debug, Clone)]
pub struct BadRecord {
    pub raw: Vec<u8>,
    pub error: String,
    /// Where it came from: (`topic`, "clicks"), (`partition`, 1), ...
    pub position: Vec<(&'static str, Value)>,
}

fn describe(position: &[(&'static str, Value)]) -> String {
    position
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k} '{s}'"),
            other => format!("{k} {other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

enum DeadLetterSink {
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
    Files {
        store: Arc<dyn ObjectStore>,
        base: Path,
        prefix: String,
        seq: u64,
    },
}

/// A source task's bad-record handling: the policy, the count for SHOW JOBS
/// and the dead letters not written yet.
pub struct BadRecords {
    policy: BadRecordPolicy,
    sink: Option<DeadLetterSink>,
    pending: std::collections::VecDeque<BadRecord>,
    count: u64,
}

/// How long a dead letter write may take before the job fails.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);

impl BadRecords {
    /// Opens the dead letter sink, if any. `name` tells this task's dead
    /// letter files apart from other tasks' and runs'.
    pub fn open(
        policy: BadRecordPolicy,
        stores: &StoreRegistry,
        store_options: &BTreeMap<String, String>,
        name: String,
    ) -> Result<Self> {
        let sink = match &policy {
            BadRecordPolicy::DeadLetterTopic { topic, properties } => {
                let mut config = ClientConfig::new();
                config.set("message.timeout.ms", "10000");
                for (k, v) in properties {
                    config.set(k, v);
                }
                let producer: FutureProducer = config
                    .create()
                    .map_err(|e| SluiceError::invalid_parameter(format!("dead letter producer: {e}")))?;
                Some(DeadLetterSink::Kafka {
                    producer,
                    topic: topic.clone(),
                })
            }
            BadRecordPolicy::DeadLetterPath { location } => {
                let (store, base) =
                    sluice_engine::storage::resolve_location(stores, location, store_options)?;
                Some(DeadLetterSink::Files {
                    store,
                    base,
                    prefix: name,
                    seq: 0,
                })
            }
            _ => None,
        };
        Ok(Self {
            policy,
            sink,
            pending: Default::default(),
            count: 0,
        })
    }

    /// Handles one bad record: an error under `fail`, else counted (and kept
    /// for the dead letter sink).
    pub fn record(&mut self, bad: BadRecord) -> Result<()> {
        match self.policy {
            BadRecordPolicy::Fail => Err(SluiceError::new(
                ErrorKind::InvalidParameter,
                format!(
                    "malformed record at {}: {} (set 'bad_records' = 'skip' or 'dead_letter' to keep the job \
                     running past such records)",
                    describe(&bad.position),
                    bad.error
                ),
            )),
            BadRecordPolicy::Skip => {
                self.count += 1;
                Ok(())
            }
            _ => {
                self.count += 1;
                self.pending.push_back(bad);
                Ok(())
            }
        }
    }

    /// Bad records since the last call.
    pub fn take_count(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }

    /// Writes the pending dead letters. Cancel-safe: a record leaves the
    /// pending list only once written (at worst it is written twice).
    pub async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.sink.as_mut() {
            None => {
                self.pending.clear();
                Ok(())
            }
            Some(DeadLetterSink::Kafka { producer, topic }) => {
                while let Some(bad) = self.pending.front() {
                    let mut headers = OwnedHeaders::new().insert(Header {
                        key: "sluice.error",
                        value: Some(bad.error.as_bytes()),
                    });
                    let values: Vec<(String, String)> = bad
                        .position
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            (format!("sluice.{k}"), v)
                        })
                        .collect();
                    for (k, v) in &values {
                        headers = headers.insert(Header {
                            key: k.as_str(),
                            value: Some(v.as_bytes()),
                        });
                    }
                    let record: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(topic).payload(&bad.raw[..]).headers(headers);
                    producer
                        .send(record, DEAD_LETTER_TIMEOUT)
                        .await
                        .map_err(|(e, _)| {
                            SluiceError::new(
                                ErrorKind::StorageUnavailable,
                                format!("writing a dead letter to topic '{topic}': {e}"),
                            )
                        })?;
                    self.pending.pop_front();
                }
                Ok(())
            }
            Some(DeadLetterSink::Files {
                store,
                base,
                prefix,
                seq,
            }) => {
                let mut lines = Vec::new();
                for bad in &self.pending {
                    let mut object = serde_json::Map::new();
                    object.insert("error".into(), Value::String(bad.error.clone()));
                    for (k, v) in &bad.position {
                        object.insert((*k).into(), v.clone());
                    }
                    object.insert(
                        "raw_base64".into(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(&bad.raw)),
                    );
                    if let Ok(text) = std::str::from_utf8(&bad.raw) {
                        object.insert("raw_text".into(), Value::String(text.to_string()));
                    }
                    serde_json::to_writer(&mut lines, &Value::Object(object))
                        .map_err(|e| SluiceError::internal(e.to_string()))?;
                    lines.push(b'\n');
                }
                *seq += 1;
                let path = base.clone().join(format!("{prefix}-{:05}.jsonl", *seq).as_str());
                let put = store.put(&path, PutPayload::from(lines));
                tokio::time::timeout(DEAD_LETTER_TIMEOUT, put)
                    .await
                    .map_err(|_| {
                        SluiceError::new(
                            ErrorKind::StorageUnavailable,
                            format!("writing dead letters to {path}: timed out"),
                        )
                    })?
                    .map_err(|e| {
                        SluiceError::new(
                            ErrorKind::StorageUnavailable,
                            format!("writing dead letters to {path}: {e}"),
                        )
                    })?;
                self.pending.clear();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn json_csv_and_raw_decode_one_row_per_record() {
        let json =
            RecordDecoder::new(Format::parse(&opts(&[]), &["json"], false).unwrap(), schema()).unwrap();
        let b = json
            .decode_all(&[
                br#"{"id": 1, "name": "a", "ts": "2026-11-22T10:00:00Z"}"#,
                br#"{"id": 2, "extra": true}"#,
            ])
            .unwrap();
        assert_eq!(b.num_rows(), 2);
        let csv = RecordDecoder::new(
            Format::parse(
                &opts(&[("format", "csv"), ("csv.delimiter", "|")]),
                &["json", "csv"],
                false,
            )
            .unwrap(),
            schema(),
        )
        .unwrap();
        let b = csv
            .decode_all(&[b"1|\"a|b\"|2026-11-22 10:00:00\n", b"2||"])
            .unwrap();
        assert_eq!(b.num_rows(), 2);
        let names = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(names.value(0), "a|b");
        let raw_schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
        let raw = RecordDecoder::new(Format::Raw, raw_schema.clone()).unwrap();
        assert_eq!(raw.decode_all(&[b"x", b"y z"]).unwrap().num_rows(), 2);
        assert!(raw.decode_all(&[b"\xff"]).is_err());
        assert!(RecordDecoder::new(Format::Raw, schema()).is_err());
    }

    #[test]
    fn malformed_records_are_found_one_by_one() {
        let json =
            RecordDecoder::new(Format::parse(&opts(&[]), &["json"], false).unwrap(), schema()).unwrap();
        let records: Vec<&[u8]> = vec![
            br#"{"id": 1}"#,
            br#"{"id": "#,
            br#"{"id": "not a number"}"#,
            b"\xff\xfe",
            br#"{"id": 5}{"id": 6}"#,
            br#"{"id": 7}"#,
        ];
        let mut bad = Vec::new();
        let (batch, kept) = json
            .decode(&records, |i, e| {
                bad.push((i, e));
                Ok(())
            })
            .unwrap();
        assert_eq!(kept, Some(vec![0, 5]), "{bad:?}");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        let strict = RecordDecoder::new(
            Format::parse(
                &opts(&[("json.ignore-unknown-fields", "false")]),
                &["json"],
                false,
            )
            .unwrap(),
            schema(),
        )
        .unwrap();
        assert!(strict.decode_all(&[br#"{"id": 2, "extra": true}"#]).is_err());
    }

    #[test]
    fn debezium_envelope_times_fill_their_columns_for_each_row_of_a_record() {
        let meta = |key: &str| {
            std::collections::HashMap::from([(
                sluice_engine::stream::METADATA_KEY.to_string(),
                key.to_string(),
            )])
        };
        let declared = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("changed", DataType::Timestamp(TimeUnit::Millisecond, None), true)
                .with_metadata(meta("value.source.timestamp")),
            Field::new("read", DataType::Timestamp(TimeUnit::Microsecond, None), true)
                .with_metadata(meta("value.ingestion-timestamp")),
            Field::new("part", DataType::Int32, true).with_metadata(meta("partition")),
        ]));
        let layout = Layout::with_metadata(&declared);
        // The envelope's times are the decoder's to fill, the partition the
        // transport's.
        assert_eq!(layout.payload().fields().len(), 3);
        let format =
            |f: &str| Format::parse(&opts(&[("format", f)]), &["json", "debezium-json"], false).unwrap();
        let decoder = RecordDecoder::new(format("debezium-json"), layout.payload().clone()).unwrap();
        let records: Vec<&[u8]> = vec![
            br#"{"before": null, "after": {"id": 1}, "op": "c", "ts_ms": 110, "source": {"ts_ms": 100}}"#,
            br#"{"before": {"id": 1}, "after": {"id": 2}, "op": "u", "ts_ms": 210, "source": {"ts_ms": 200}}"#,
            br#"{"before": {"id": 2}, "after": null, "op": "d", "ts_ms": 310}"#,
        ];
        let (batch, _) = decoder.decode(&records, |_, e| panic!("{e}")).unwrap();
        let changed = batch
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(
            changed.iter().collect::<Vec<_>>(),
            [Some(100), Some(200), Some(200), None]
        );
        let read = batch
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(read.values(), &[110_000, 210_000, 210_000, 310_000]);
        // Anything but a Debezium envelope has no such times.
        let err = RecordDecoder::new(format("json"), layout.payload().clone()).unwrap_err();
        assert!(err.to_string().contains("debezium-json"), "{err}");
    }

    #[test]
    fn debezium_envelopes_become_inserts_and_deletes() {
        let plain = RecordDecoder::new(
            Format::parse(
                &opts(&[
                    ("format", "debezium-json"),
                    ("json.timestamp-format", "epoch-millis"),
                ]),
                &["debezium-json"],
                false,
            )
            .unwrap(),
            schema(),
        )
        .unwrap();
        let records: Vec<&[u8]> = vec![
            br#"{"before": null, "after": {"id": 1, "name": "a", "ts": 5}, "op": "c", "source": {}}"#,
            br#"{"before": {"id": 1, "name": "a", "ts": 5}, "after": {"id": 1, "name": "b", "ts": 6}, "op": "u"}"#,
            br#"{"before": {"id": 1, "name": "b", "ts": 6}, "after": null, "op": "d"}"#,
            br#"{"before": null, "after": {"id": 2, "name": "c"}, "op": "r"}"#,
            // Bad: an unknown op, an update without its old row, not JSON.
            br#"{"before": null, "after": {"id": 3}, "op": "x"}"#,
            br#"{"before": null, "after": {"id": 3}, "op": "u"}"#,
            br#"{"before": null, "after": {"#,
        ];
        let mut bad = vec![];
        let (batch, from) = plain
            .decode(&records, |i, _| {
                bad.push(i);
                Ok(())
            })
            .unwrap();
        assert_eq!(bad, [4, 5, 6]);
        assert_eq!(from.unwrap(), [0, 1, 1, 2, 3]);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let ops = batch.column(3).as_any().downcast_ref::<Int8Array>().unwrap();
        assert_eq!(ids.values(), &[1, 1, 1, 1, 2]);
        assert_eq!(ops.values(), &[1, -1, 1, -1, 1]);
        let ts = batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.value(2), 6);
        assert!(ts.is_null(4));
        // Debezium with its schema: the envelope is under "payload".
        let wrapped = RecordDecoder::new(
            Format::parse(
                &opts(&[
                    ("format", "debezium-json"),
                    ("debezium-json.schema-include", "true"),
                ]),
                &["debezium-json"],
                false,
            )
            .unwrap(),
            schema(),
        )
        .unwrap();
        let b = wrapped
            .decode_all(&[br#"{"schema": {}, "payload": {"before": null, "after": {"id": 9}, "op": "c"}}"#])
            .unwrap();
        assert_eq!(b.num_rows(), 1);
        assert!(
            wrapped
                .decode_all(&[br#"{"before": null, "after": {"id": 9}, "op": "c"}"#])
                .is_err()
        );
    }

    #[test]
    fn epoch_timestamps() {
        let json = RecordDecoder::new(
            Format::parse(
                &opts(&[("json.timestamp-format", "epoch-millis")]),
                &["json"],
                false,
            )
            .unwrap(),
            schema(),
        )
        .unwrap();
        let b = json.decode_all(&[br#"{"id": 1, "ts": 1763805600123}"#]).unwrap();
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1763805600123);
    }

    #[test]
    fn policies_parse_and_fail_names_the_position() {
        assert_eq!(
            BadRecordPolicy::parse(&opts(&[]), None).unwrap(),
            BadRecordPolicy::Fail
        );
        assert!(BadRecordPolicy::parse(&opts(&[("bad_records", "dead_letter")]), None).is_err());
        assert!(
            BadRecordPolicy::parse(
                &opts(&[("bad_records", "dead_letter"), ("dead_letter.topic", "t")]),
                None
            )
            .is_err()
        );
        let p = BadRecordPolicy::parse(
            &opts(&[("bad_records", "dead_letter"), ("dead_letter.topic", "t")]),
            Some(&opts(&[("bootstrap.servers", "b:1")])),
        )
        .unwrap();
        assert!(matches!(p, BadRecordPolicy::DeadLetterTopic { .. }));
        let mut bad = BadRecords::open(
            BadRecordPolicy::Fail,
            &StoreRegistry::default(),
            &BTreeMap::new(),
            "x".into(),
        )
        .unwrap();
        let e = bad
            .record(BadRecord {
                raw: b"{".to_vec(),
                error: "truncated".into(),
                position: vec![("topic", Value::from("clicks")), ("offset", Value::from(42))],
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("topic 'clicks' offset 42: truncated"),
            "{e}"
        );
    }
}

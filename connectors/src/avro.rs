//! Avro payloads.
//!
//! Two framings, as in Flink:
//!
//! * `format = 'avro'`: each record is a plain Avro binary body written
//!   with one schema, given with `'avro.schema'` (a writer schema in Avro
//!   JSON) or derived from the declared columns.
//! * `format = 'avro-confluent'`: the Confluent wire format, a magic byte
//!   `0`, a 4-byte big-endian schema id, then the body. Writer schemas are
//!   fetched by id from the schema registry at `'avro-confluent.url'`
//!   (cached; a record whose id the registry does not know is a bad
//!   record). The sink registers its schema under
//!   `'avro-confluent.subject'` (default `<topic>-value`).
//!
//! Decoding is arrow-avro's push decoder, which builds Arrow arrays
//! directly from the bytes (no value tree). Decoded columns are matched to
//! the declared ones by name (exactly, then ignoring case) and cast to the
//! declared types, so a writer schema may have more fields, another order
//! or other logical types than the table; a declared column the writer
//! schema lacks reads as NULL. Each record must be exactly one body: a
//! truncated record or one with bytes left over is a bad record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SchemaStore};
use arrow_avro::writer::WriterBuilder;
use arrow_avro::writer::format::{AvroBinaryFormat, AvroSoeFormat};
use sluice_engine::{ErrorKind, Result, SluiceError};

/// How records carry their Avro schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AvroFraming {
    /// Plain bodies, all written with one schema (`None`: derived from the
    /// declared columns).
    Plain { schema: Option<String> },
    /// The Confluent wire format with a schema registry.
    Confluent { url: String, subject: Option<String> },
}

impl AvroFraming {
    /// Reads the options of `format = 'avro'` / `'avro-confluent'`.
    pub fn parse(name: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        if name == "avro" {
            return Ok(AvroFraming::Plain {
                schema: options.get("avro.schema").cloned(),
            });
        }
        let url = options
            .get("avro-confluent.url")
            .or_else(|| options.get("avro-confluent.schema-registry.url"))
            .ok_or_else(|| {
                SluiceError::invalid_parameter(
                    "format 'avro-confluent' needs 'avro-confluent.url' (the schema registry)",
                )
            })?;
        Ok(AvroFraming::Confluent {
            url: url.trim_end_matches('/').to_string(),
            subject: options.get("avro-confluent.subject").cloned(),
        })
    }
}

/// The options the avro formats read.
pub const AVRO_OPTIONS: &[&str] = &[
    "avro.schema",
    "avro-confluent.url",
    "avro-confluent.schema-registry.url",
    "avro-confluent.subject",
];

fn avro_error(e: impl std::fmt::Display) -> SluiceError {
    SluiceError::invalid_parameter(format!("avro: {e}"))
}

fn registry_error(url: &str, e: impl std::fmt::Display) -> SluiceError {
    SluiceError::new(
        ErrorKind::StorageUnavailable,
        format!("schema registry {url}: {e}"),
    )
}

/// A Confluent-compatible schema registry (its REST API).
#[derive(Debug, Clone)]
pub struct Registry {
    url: String,
    client: reqwest::Client,
}

impl Registry {
    pub fn new(url: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| registry_error(url, e))?;
        Ok(Self {
            url: url.to_string(),
            client,
        })
    }

    /// The schema registered under `id`; `None` when the registry has none.
    pub async fn schema(&self, id: u32) -> Result<Option<String>> {
        let response = self
            .client
            .get(format!("{}/schemas/ids/{id}", self.url))
            .send()
            .await
            .map_err(|e| registry_error(&self.url, e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = self.json(response).await?;
        if let Some(t) = body.get("schemaType").and_then(|t| t.as_str())
            && !t.eq_ignore_ascii_case("AVRO")
        {
            return Err(avro_error(format!("schema id {id} is a {t} schema, not Avro")));
        }
        let schema = body
            .get("schema")
            .and_then(|s| s.as_str())
            .ok_or_else(|| registry_error(&self.url, format!("schema id {id}: no 'schema' in the answer")))?;
        Ok(Some(schema.to_string()))
    }

    /// Registers `schema` under `subject` (idempotent) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let response = self
            .client
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body)
            .send()
            .await
            .map_err(|e| registry_error(&self.url, e))?;
        let body = self.json(response).await?;
        body.get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                registry_error(
                    &self.url,
                    format!("registering under '{subject}': no id in {body}"),
                )
            })
    }

    async fn json(&self, response: reqwest::Response) -> Result<serde_json::Value> {
        let status = response.status();
        let text = response.text().await.map_err(|e| registry_error(&self.url, e))?;
        if !status.is_success() {
            return Err(registry_error(&self.url, format!("{status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| registry_error(&self.url, format!("{e}: {text}")))
    }
}

/// The id and body of a Confluent-framed record.
fn confluent_id(record: &[u8]) -> Option<u32> {
    match record {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The Avro schema a batch of `schema` is written with (derived). Nanosecond
/// timestamps become microseconds, which every Avro reader knows.
pub fn avro_compatible(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, tz.clone())),
            _ => f.as_ref().clone(),
        })
        .map(|f| f.with_metadata(Default::default()))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Whether arrow-avro can decode records of `schema`.
fn check(schema: &AvroSchema) -> std::result::Result<(), String> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(0), schema.clone())
        .map_err(|e| e.to_string())?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .build_decoder()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Decodes Avro records into a target schema.
#[derive(Debug)]
pub struct AvroDecoder {
    confluent: bool,
    registry: Option<Registry>,
    /// Writer schemas by id (plain framing: the one schema, id 0).
    schemas: Mutex<BTreeMap<u32, AvroSchema>>,
    /// Ids the registry does not know (records with them are bad).
    unknown: Mutex<BTreeSet<u32>>,
    /// A decoder kept between calls, for the schemas it was built with.
    cached: Mutex<Option<(usize, Decoder)>>,
    target: SchemaRef,
}

/// Rows per arrow-avro batch (a full decoder is flushed and goes on).
const BATCH: usize = 8192;

impl AvroDecoder {
    pub fn new(framing: &AvroFraming, target: SchemaRef) -> Result<Self> {
        let mut schemas = BTreeMap::new();
        let (confluent, registry) = match framing {
            AvroFraming::Plain { schema } => {
                let writer = match schema {
                    Some(json) => AvroSchema::new(json.clone()),
                    None => AvroSchema::try_from(avro_compatible(&target).as_ref()).map_err(avro_error)?,
                };
                // Parse it now: a bad schema is an error at CREATE.
                check(&writer).map_err(|e| SluiceError::invalid_parameter(format!("'avro.schema': {e}")))?;
                schemas.insert(0, writer);
                (false, None)
            }
            AvroFraming::Confluent { url, .. } => (true, Some(Registry::new(url)?)),
        };
        let decoder = Self {
            confluent,
            registry,
            schemas: Mutex::new(schemas),
            unknown: Mutex::new(BTreeSet::new()),
            cached: Mutex::new(None),
            target,
        };
        if !confluent {
            decoder.build()?;
        }
        Ok(decoder)
    }

    fn build(&self) -> Result<(usize, Decoder)> {
        let schemas = self.schemas.lock().expect("avro schemas lock");
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        for (id, schema) in schemas.iter() {
            store
                .set(Fingerprint::Id(*id), schema.clone())
                .map_err(avro_error)?;
        }
        let decoder = ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_batch_size(BATCH)
            .build_decoder()
            .map_err(avro_error)?;
        Ok((schemas.len(), decoder))
    }

    /// Fetches the writer schemas of `records` the decoder does not know
    /// yet (Confluent framing; nothing to do for plain records).
    pub async fn prepare(&self, records: &[&[u8]]) -> Result<()> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let missing: Vec<u32> = {
            let schemas = self.schemas.lock().expect("avro schemas lock");
            let unknown = self.unknown.lock().expect("avro unknown lock");
            let mut ids: Vec<u32> = records
                .iter()
                .filter_map(|r| confluent_id(r))
                .filter(|id| !schemas.contains_key(id) && !unknown.contains(id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        for id in missing {
            match registry.schema(id).await? {
                Some(json) => {
                    let schema = AvroSchema::new(json);
                    match check(&schema) {
                        Ok(_) => {
                            self.schemas.lock().expect("avro schemas lock").insert(id, schema);
                        }
                        Err(e) => {
                            tracing::warn!(id, "schema registry: unreadable schema: {e}");
                            self.unknown.lock().expect("avro unknown lock").insert(id);
                        }
                    }
                }
                None => {
                    self.unknown.lock().expect("avro unknown lock").insert(id);
                }
            }
        }
        Ok(())
    }

    /// Every record, one row each, in one pass; an error names the first
    /// record that is not one body of a known schema.
    pub fn decode_all(&self, records: &[&[u8]]) -> Result<RecordBatch> {
        let known = self.schemas.lock().expect("avro schemas lock").len();
        let cached = self.cached.lock().expect("avro decoder lock").take();
        let mut decoder = match cached {
            Some((n, d)) if n == known => d,
            _ => {
                if known == 0 {
                    return Err(self.no_schema(records));
                }
                self.build()?.1
            }
        };
        let mut batches = Vec::new();
        let mut framed = Vec::new();
        let mut last_id = None;
        // Held for the pass (one lock, not one per record).
        let schemas = self.schemas.lock().expect("avro schemas lock");
        for record in records {
            let id = confluent_id(record);
            let bytes: &[u8] = if self.confluent {
                let Some(id) = id else {
                    return Err(avro_error(
                        "record is not in the Confluent wire format (a 0 byte, a 4-byte schema id, the body)",
                    ));
                };
                if !schemas.contains_key(&id) {
                    return Err(avro_error(format!(
                        "schema id {id} is not in the schema registry"
                    )));
                }
                record
            } else {
                // arrow-avro's streaming decoder reads framed records:
                // give each plain body the frame of schema id 0.
                framed.clear();
                framed.extend_from_slice(&[0, 0, 0, 0, 0]);
                framed.extend_from_slice(record);
                &framed
            };
            // Flush when full and before a schema change, so that every
            // record below starts on a decoder with room and its schema.
            let switch = self.confluent && last_id.is_some() && last_id != id;
            if (decoder.batch_is_full() || (switch && !decoder.batch_is_empty()))
                && let Some(b) = decoder.flush().map_err(avro_error)?
            {
                batches.push(b);
            }
            last_id = id;
            let room = decoder.capacity();
            let used = decoder.decode(bytes).map_err(avro_error)?;
            // Exactly one body, all of the record.
            if used != bytes.len() || decoder.capacity() + 1 != room {
                return Err(avro_error(
                    "record does not match its schema (truncated, or bytes left over)",
                ));
            }
        }
        if let Some(b) = decoder.flush().map_err(avro_error)? {
            batches.push(b);
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows != records.len() {
            return Err(avro_error(format!("{} records gave {rows} rows", records.len())));
        }
        // Clean (everything flushed): keep it for the next call.
        *self.cached.lock().expect("avro decoder lock") = Some((known, decoder));
        let mut out = Vec::with_capacity(batches.len());
        for b in &batches {
            out.push(self.conform(b)?);
        }
        match out.len() {
            0 => Ok(RecordBatch::new_empty(self.target.clone())),
            1 => Ok(out.pop().expect("one batch")),
            _ => Ok(concat_batches(&self.target, &out)?),
        }
    }

    fn no_schema(&self, records: &[&[u8]]) -> SluiceError {
        match records.iter().find_map(|r| confluent_id(r)) {
            Some(id) => avro_error(format!("schema id {id} is not in the schema registry")),
            None => avro_error("record is not in the Confluent wire format"),
        }
    }

    /// The decoded columns matched to the target's by name and cast.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let decoded = batch.schema();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.target.fields().len());
        for field in self.target.fields() {
            let index = decoded.index_of(field.name()).ok().or_else(|| {
                decoded
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(field.name()))
            });
            columns.push(match index {
                Some(i) => {
                    let column = batch.column(i);
                    if column.data_type() == field.data_type() {
                        column.clone()
                    } else {
                        cast(column, field.data_type()).map_err(|e| {
                            avro_error(format!(
                                "field '{}' ({}) does not convert to {}: {e}",
                                field.name(),
                                column.data_type(),
                                field.data_type()
                            ))
                        })?
                    }
                }
                None => new_null_array(field.data_type(), batch.num_rows()),
            });
        }
        Ok(RecordBatch::try_new(self.target.clone(), columns)?)
    }
}

/// Encodes rows as Avro records, one per row.
pub struct AvroEncoder {
    encoder: arrow_avro::writer::Encoder,
    schema: SchemaRef,
}

impl std::fmt::Debug for AvroEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroEncoder")
            .field("schema", &self.schema)
            .finish()
    }
}

impl AvroEncoder {
    /// The Avro schema rows of `schema` are written with (JSON).
    pub fn schema_json(schema: &SchemaRef) -> Result<String> {
        Ok(AvroSchema::try_from(avro_compatible(schema).as_ref())
            .map_err(avro_error)?
            .json_string)
    }

    /// Plain bodies (`registry_id` None) or Confluent-framed records.
    pub fn new(schema: &SchemaRef, registry_id: Option<u32>) -> Result<Self> {
        let schema = avro_compatible(schema);
        let builder = WriterBuilder::new(schema.as_ref().clone());
        let encoder = match registry_id {
            None => builder.build_encoder::<AvroBinaryFormat>(),
            Some(id) => builder
                .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                .build_encoder::<AvroSoeFormat>(),
        }
        .map_err(avro_error)?;
        Ok(Self { encoder, schema })
    }

    /// One encoded record per row of `batch`.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (column, field) in batch.columns().iter().zip(self.schema.fields()) {
            columns.push(if column.data_type() == field.data_type() {
                column.clone()
            } else {
                cast(column, field.data_type())?
            });
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.encoder.encode(&batch).map_err(avro_error)?;
        let rows = self.encoder.flush();
        Ok(rows.iter().map(|b| b.to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn target() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    /// Avro's zig-zag varint (written by hand, independently of arrow-avro).
    fn long(mut out: Vec<u8>, v: i64) -> Vec<u8> {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn string(out: Vec<u8>, s: &str) -> Vec<u8> {
        let mut out = long(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn plain_bodies_with_a_given_writer_schema_and_bad_ones() {
        // The writer has the fields in another order, one more, and no unions.
        let writer = r#"{"type":"record","name":"User","fields":[
            {"name":"name","type":"string"},{"name":"extra","type":"long"},{"name":"id","type":"long"}]}"#;
        let framing = AvroFraming::Plain {
            schema: Some(writer.into()),
        };
        let d = AvroDecoder::new(&framing, target()).unwrap();
        let a = long(long(string(vec![], "ann"), 9), 1);
        let b = long(long(string(vec![], "bob"), 9), -2);
        let batch = d.decode_all(&[&a, &b]).unwrap();
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let names = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.values(), &[1, -2]);
        assert_eq!(names.value(0), "ann");
        assert_eq!(names.value(1), "bob");
        // Truncated, bytes left over, empty: each an error alone.
        let truncated = &a[..a.len() - 1];
        let mut over = b.clone();
        over.push(7);
        for bad in [truncated, &over[..], &[][..]] {
            assert!(d.decode_all(&[&a, bad]).is_err(), "{bad:?}");
        }
        // The decoder still works after errors.
        assert_eq!(d.decode_all(&[&b]).unwrap().num_rows(), 1);
        // A writer schema that does not parse is an error up front.
        let broken = AvroFraming::Plain {
            schema: Some("{\"type\":".into()),
        };
        assert!(AvroDecoder::new(&broken, target()).is_err());
    }

    #[test]
    fn derived_schema_round_trips_through_the_encoder() {
        let schema = target();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(5), None])),
                Arc::new(StringArray::from(vec![None, Some("x")])),
            ],
        )
        .unwrap();
        let mut e = AvroEncoder::new(&schema, None).unwrap();
        let records = e.encode(&batch).unwrap();
        assert_eq!(records.len(), 2);
        // Nullable long: union ["null","long"] -> branch 1, then 5 (zig-zag 10).
        assert_eq!(&records[0][..2], &[2, 10]);
        let d = AvroDecoder::new(&AvroFraming::Plain { schema: None }, schema).unwrap();
        let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
        assert_eq!(d.decode_all(&refs).unwrap(), batch);
        // Confluent framing: magic 0 and the id, big-endian.
        let mut e = AvroEncoder::new(&target(), Some(258)).unwrap();
        let framed = e.encode(&batch).unwrap();
        assert_eq!(&framed[0][..5], &[0, 0, 0, 1, 2]);
        assert_eq!(&framed[0][5..], &records[0][..]);
    }
}

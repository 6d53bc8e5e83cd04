//! The `datagen` source: rows of a declared schema, generated.
//!
//! ```sql
//! CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP,
//!                       WATERMARK FOR ts AS ts - INTERVAL '1 second')
//! WITH (connector = 'datagen', 'rows-per-second' = '1000',
//!       'fields.user_id.kind' = 'random', 'fields.user_id.min' = '1', 'fields.user_id.max' = '100',
//!       'fields.page.length' = '8');
//! ```
//!
//! Options (Flink's names): `rows-per-second` (default 10000, 0 = as fast
//! as possible), `number-of-rows` (a bounded run), `seed`, and per column
//! `fields.<col>.kind` = `random` (default) or `sequence`, with `min` /
//! `max` for random numbers, `start` / `end` for sequences (a sequence
//! that runs out ends the stream), `length` for random strings. Timestamp
//! columns hold the row's event time: `start.time` (default: when the
//! stream opens) plus one row interval per row at the configured rate, so
//! rows are in event-time order and watermarks advance. Values are
//! deterministic for a given seed and partition count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use sluice_engine::stream::{Progress, ProgressUnit};
use sluice_engine::{Result, SluiceError, Source, SourceConnector};

const OPTIONS: &[&str] = &[
    "rows-per-second",
    "number-of-rows",
    "seed",
    "batch.size",
    "start.time",
];
/// The longest random string datagen makes.
const MAX_TEXT_LENGTH: usize = 1 << 16;
const FIELD_OPTIONS: &[&str] = &["kind", "min", "max", "start", "end", "length"];

/// The `datagen` connector.
#[derive(Debug, Default)]
pub struct DatagenConnector;

#[derive(Debug, Clone)]
enum Gen {
    /// A counter from `start` to `end` (inclusive), split across partitions.
    Sequence {
        start: i64,
        end: Option<i64>,
    },
    /// Uniform in `[min, max]`.
    Random {
        min: f64,
        max: f64,
    },
    /// Random lowercase strings.
    Text {
        length: usize,
    },
    /// The row's event time (microseconds).
    Time,
    Bool,
}

#[derive(Debug, Clone)]
struct Options {
    rate: u64,
    rows: Option<u64>,
    seed: u64,
    batch: usize,
    start_us: Option<i64>,
    gens: Vec<Gen>,
}

fn num<T: std::str::FromStr>(options: &BTreeMap<String, String>, key: &str) -> Result<Option<T>> {
    options
        .get(key)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| SluiceError::invalid_parameter(format!("option '{key}': '{v}' is not a number")))
        })
        .transpose()
}

impl Options {
    fn parse(options: &BTreeMap<String, String>, schema: &SchemaRef) -> Result<Self> {
        for key in options.keys() {
            if let Some(rest) = key.strip_prefix("fields.") {
                let (col, opt) = rest.rsplit_once('.').unwrap_or((rest, ""));
                if schema.index_of(col).is_err() {
                    return Err(SluiceError::invalid_parameter(format!(
                        "option '{key}': the stream has no column '{col}'"
                    )));
                }
                if !FIELD_OPTIONS.contains(&opt) {
                    return Err(SluiceError::invalid_parameter(format!(
                        "option '{key}': per-column options are fields.<column>.{{{}}}",
                        FIELD_OPTIONS.join(", ")
                    )));
                }
            }
        }
        let mut gens = Vec::new();
        for f in schema.fields() {
            let key = |o: &str| format!("fields.{}.{o}", f.name());
            let kind = options.get(&key("kind")).map(|s| s.to_ascii_lowercase());
            let numeric = f.data_type().is_numeric();
            let generator = match (kind.as_deref(), f.data_type()) {
                (Some("sequence"), _) if numeric => Gen::Sequence {
                    start: num(options, &key("start"))?.unwrap_or(0),
                    end: num(options, &key("end"))?,
                },
                (Some("sequence"), other) => {
                    return Err(SluiceError::invalid_parameter(format!(
                        "column {}: a sequence needs a numeric column, not {other}",
                        f.name()
                    )));
                }
                (Some("random") | None, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                    let length = num(options, &key("length"))?.unwrap_or(10);
                    if length > MAX_TEXT_LENGTH {
                        return Err(SluiceError::invalid_parameter(format!(
                            "option '{}': at most {MAX_TEXT_LENGTH} characters",
                            key("length")
                        )));
                    }
                    Gen::Text { length }
                }
                (Some("random") | None, DataType::Timestamp(_, _) | DataType::Date32) => Gen::Time,
                (Some("random") | None, DataType::Boolean) => Gen::Bool,
                (Some("random") | None, _) if numeric => {
                    let min: f64 = num(options, &key("min"))?.unwrap_or(0.0);
                    let max: f64 = num(options, &key("max"))?.unwrap_or(1_000_000.0);
                    if max < min {
                        return Err(SluiceError::invalid_parameter(format!(
                            "column {}: min {min} is above max {max}",
                            f.name()
                        )));
                    }
                    Gen::Random { min, max }
                }
                (Some("random"), other) => {
                    return Err(SluiceError::not_supported(format!(
                        "column {}: datagen can't generate random values of type {other}",
                        f.name()
                    )));
                }
                (Some(k), _) => {
                    return Err(SluiceError::invalid_parameter(format!(
                        "column {}: unknown kind '{k}'; kinds are random and sequence",
                        f.name()
                    )));
                }
                (None, other) => {
                    return Err(SluiceError::not_supported(format!(
                        "column {}: datagen can't generate {other}",
                        f.name()
                    )));
                }
            };
            gens.push(generator);
        }
        Ok(Self {
            rate: num(options, "rows-per-second")?.unwrap_or(10_000),
            rows: num(options, "number-of-rows")?,
            seed: num(options, "seed")?.unwrap_or(42),
            batch: sluice_engine::stream::batch_size(options, 4096)?,
            start_us: num::<i64>(options, "start.time")?.map(|ms| ms * 1000),
            gens,
        })
    }
}

impl SourceConnector for DatagenConnector {
    fn name(&self) -> &'static str {
        "datagen"
    }

    fn option_keys(&self) -> &[&'static str] {
        OPTIONS
    }

    fn accepts_option(&self, key: &str) -> bool {
        OPTIONS.contains(&key) || key.starts_with("fields.")
    }

    fn schema(&self, options: &BTreeMap<String, String>, declared: Option<&SchemaRef>) -> Result<SchemaRef> {
        let Some(schema) = declared else {
            return Err(SluiceError::invalid_parameter(
                "datagen generates rows of declared columns: CREATE STREAM name (col TYPE, ...) WITH (connector = 'datagen', ...)",
            ));
        };
        Options::parse(options, schema)?;
        Ok(schema.clone())
    }

    fn is_bounded(&self, options: &BTreeMap<String, String>) -> bool {
        // A row count, or a sequence with an end (`end` applies to
        // sequences only).
        options.contains_key("number-of-rows")
            || options
                .keys()
                .any(|k| k.starts_with("fields.") && k.ends_with(".end"))
    }

    fn default_event_time(&self, _options: &BTreeMap<String, String>) -> Option<String> {
        None
    }

    fn open(
        &self,
        options: &BTreeMap<String, String>,
        schema: &SchemaRef,
        partition: usize,
        partitions: usize,
        resume: Option<&str>,
    ) -> Result<Box<dyn Source>> {
        let o = Options::parse(options, schema)?;
        let start_us = o.start_us.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0)
        });
        let mut source = DatagenSource {
            schema: schema.clone(),
            rng: SplitMix(o.seed ^ (partition as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            options: o,
            partition: partition as u64,
            partitions: partitions.max(1) as u64,
            next: 0,
            paced_from: 0,
            start_us,
            started: None,
        };
        // Rows are a function of the row number and the generator state:
        // those (and the clock's start) are the whole position.
        if let Some(position) = resume {
            let bad = || SluiceError::internal(format!("datagen: bad checkpointed position '{position}'"));
            let parts: Vec<&str> = position.split(',').collect();
            let [next, rng, start] = parts[..] else {
                return Err(bad());
            };
            source.next = next.parse().map_err(|_| bad())?;
            source.rng = SplitMix(rng.parse().map_err(|_| bad())?);
            source.start_us = start.parse().map_err(|_| bad())?;
            source.paced_from = source.next;
        }
        Ok(Box::new(source))
    }
}

/// splitmix64: small, fast, and good enough for test data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct DatagenSource {
    schema: SchemaRef,
    options: Options,
    rng: SplitMix,
    partition: u64,
    partitions: u64,
    /// Rows this partition produced.
    next: u64,
    /// The row the rate's clock starts from (resumed: not 0).
    paced_from: u64,
    start_us: i64,
    started: Option<Instant>,
}

impl DatagenSource {
    /// The rows this partition produces in all, for a bounded generator:
    /// its share of `number-of-rows` and of every sequence with an end.
    fn rows_of_partition(&self) -> Option<u64> {
        let share =
            |total: u64| total / self.partitions + u64::from(self.partition < total % self.partitions);
        let mut mine = self.options.rows.map(share);
        for g in &self.options.gens {
            if let Gen::Sequence {
                start,
                end: Some(end),
            } = g
            {
                let span = share((end - start + 1).max(0) as u64);
                mine = Some(mine.map_or(span, |m| m.min(span)));
            }
        }
        mine
    }
}

#[async_trait]
impl Source for DatagenSource {
    fn progress(&self) -> Option<Progress> {
        self.rows_of_partition().map(|total| Progress {
            done: self.next.min(total),
            total,
            unit: ProgressUnit::Rows,
        })
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let o = &self.options;
        // Global row numbers of this partition: partition, partition + P, ...
        let mut n = o.batch as u64;
        if o.rate > 0 {
            // A paced generator hands out about a tenth of a second of rows
            // at a time, not a whole batch.size at once (4096 rows at 1000
            // rows/s came as one burst every 4 s).
            n = n.min((o.rate / (10 * self.partitions)).max(1));
        }
        if let Some(mine) = self.rows_of_partition() {
            n = n.min(mine.saturating_sub(self.next));
        }
        if n == 0 {
            return Ok(None);
        }
        if o.rate > 0 {
            // Pace by this partition's share of the rate.
            let started = *self.started.get_or_insert_with(Instant::now);
            let due = Duration::from_secs_f64(
                (self.next - self.paced_from + n) as f64 * self.partitions as f64 / o.rate as f64,
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let globals: Vec<u64> = (0..n)
            .map(|i| (self.next + i) * self.partitions + self.partition)
            .collect();
        let interval_us = if o.rate > 0 {
            1_000_000.0 / o.rate as f64
        } else {
            1.0
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(o.gens.len());
        for (g, f) in o.gens.iter().zip(self.schema.fields()) {
            let col: ArrayRef = match g {
                Gen::Sequence { start, .. } => Arc::new(Int64Array::from_iter_values(
                    globals.iter().map(|g| start + *g as i64),
                )),
                Gen::Random { min, max } => {
                    let integral = !matches!(f.data_type(), DataType::Float32 | DataType::Float64);
                    let values: Vec<f64> = (0..n)
                        .map(|_| {
                            let r = self.rng.unit();
                            if integral {
                                (min + (r * (max - min + 1.0)).floor()).min(*max)
                            } else {
                                min + r * (max - min)
                            }
                        })
                        .collect();
                    Arc::new(Float64Array::from(values))
                }
                Gen::Text { length } => {
                    let values: Vec<String> = (0..n)
                        .map(|_| {
                            (0..*length)
                                .map(|_| (b'a' + (self.rng.next() % 26) as u8) as char)
                                .collect()
                        })
                        .collect();
                    Arc::new(StringArray::from(values))
                }
                Gen::Time => {
                    let us: Vec<i64> = globals
                        .iter()
                        .map(|g| self.start_us + (*g as f64 * interval_us) as i64)
                        .collect();
                    match f.data_type() {
                        DataType::Date32 => Arc::new(Date32Array::from_iter_values(
                            us.iter().map(|u| (u.div_euclid(86_400_000_000)) as i32),
                        )),
                        _ => Arc::new(arrow::array::TimestampMicrosecondArray::from(us)),
                    }
                }
                Gen::Bool => Arc::new(BooleanArray::from_iter(
                    (0..n).map(|_| Some(self.rng.next() & 1 == 1)),
                )),
            };
            let col = if col.data_type() == f.data_type() {
                col
            } else {
                cast(&col, f.data_type())?
            };
            columns.push(col);
        }
        self.next += n;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }

    fn position(&self) -> Option<String> {
        Some(format!("{},{},{}", self.next, self.rng.0, self.start_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::datatypes::{Field, Schema, TimeUnit};

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]))
    }

    async fn drain(o: &BTreeMap<String, String>, parts: usize) -> Vec<RecordBatch> {
        let c = DatagenConnector;
        let s = c.schema(o, Some(&schema())).unwrap();
        let mut out = vec![];
        for p in 0..parts {
            let mut src = c.open(o, &s, p, parts, None).unwrap();
            while let Some(b) = src.next_batch().await.unwrap() {
                out.push(b);
            }
        }
        out
    }

    #[tokio::test]
    async fn sequences_ranges_lengths_and_bounds() {
        let o = opts(&[
            ("rows-per-second", "0"),
            ("fields.id.kind", "sequence"),
            ("fields.id.start", "1"),
            ("fields.id.end", "1000"),
            ("fields.score.min", "5"),
            ("fields.score.max", "7"),
            ("fields.name.length", "3"),
            ("start.time", "1700000000000"),
        ]);
        for parts in [1, 3] {
            let batches = drain(&o, parts).await;
            let mut ids: Vec<i64> = vec![];
            for b in &batches {
                let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.extend(id.values());
                let score = b.column(1).as_any().downcast_ref::<Int32Array>().unwrap();
                assert!(score.values().iter().all(|s| (5..=7).contains(s)));
                let name = b.column(2).as_any().downcast_ref::<StringArray>().unwrap();
                assert!(name.iter().all(|n| n.unwrap().len() == 3));
            }
            ids.sort();
            assert_eq!(
                ids,
                (1..=1000).collect::<Vec<_>>(),
                "each id once at {parts} partitions"
            );
        }
    }

    #[test]
    fn bad_options_are_named() {
        let c = DatagenConnector;
        let e = c
            .schema(&opts(&[("fields.nope.kind", "random")]), Some(&schema()))
            .unwrap_err();
        assert!(e.to_string().contains("no column 'nope'"), "{e}");
        let e = c
            .schema(&opts(&[("fields.name.kind", "sequence")]), Some(&schema()))
            .unwrap_err();
        assert!(e.to_string().contains("numeric"), "{e}");
        let e = c.schema(&opts(&[]), None).unwrap_err();
        assert!(e.to_string().contains("declared columns"), "{e}");
        assert!(c.accepts_option("fields.id.kind") && !c.accepts_option("bogus"));
    }
}

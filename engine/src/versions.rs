//! Versioned landed tables: `AS OF VERSION n` / `AS OF TIMESTAMP '...'`
//! on a sink's table, and the `sluice_commits` / `sluice_commit_sources`
//! system tables that trace every commit to the input it covers.
//!
//! A sink with a table log (the `delta` connector) registers it here. The
//! parser turns `name AS OF VERSION 12` into the table function call
//! `sluice_as_of('name', 12)`, which asks the log for that version.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::sink::{CommitRecord, SourceRange, TableLog, TableVersion};

/// The table function the parser rewrites `AS OF` into.
pub const AS_OF_FUNCTION: &str = "sluice_as_of";

/// Sinks with a table log, by name.
#[derive(Debug, Default)]
pub struct VersionedTables(Mutex<BTreeMap<String, Arc<dyn TableLog>>>);

impl VersionedTables {
    pub fn insert(&self, name: &str, log: Arc<dyn TableLog>) {
        self.0
            .lock()
            .expect("versioned tables")
            .insert(name.to_string(), log);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<dyn TableLog>> {
        self.0.lock().expect("versioned tables").remove(name)
    }

    fn get(&self, name: &str) -> Option<Arc<dyn TableLog>> {
        self.0.lock().expect("versioned tables").get(name).cloned()
    }

    fn all(&self) -> Vec<(String, Arc<dyn TableLog>)> {
        self.0
            .lock()
            .expect("versioned tables")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every commit of every versioned sink, by sink name.
    async fn commits(&self) -> datafusion::error::Result<Vec<(String, CommitRecord)>> {
        let mut out = vec![];
        for (name, log) in self.all() {
            let commits = log
                .commits()
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            out.extend(commits.into_iter().map(|c| (name.clone(), c)));
        }
        Ok(out)
    }
}

/// `sluice_as_of('sink', 12)` or `sluice_as_of('sink', '2026-11-22 10:00:00')`.
#[derive(Debug)]
pub struct AsOfFunction {
    tables: Arc<VersionedTables>,
}

impl AsOfFunction {
    pub fn new(tables: Arc<VersionedTables>) -> Self {
        Self { tables }
    }
}

impl TableFunctionImpl for AsOfFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let (Some(Expr::Literal(ScalarValue::Utf8(Some(name)), _)), Some(Expr::Literal(at, _)), 2) =
            (exprs.first(), exprs.get(1), exprs.len())
        else {
            return plan_err!("AS OF: write name AS OF VERSION <n> or name AS OF TIMESTAMP '<time>'");
        };
        let Some(log) = self.tables.get(name) else {
            return Err(datafusion::error::DataFusionError::External(Box::new(
                crate::error::SluiceError::not_supported(format!(
                    "{name} is not a versioned table: AS OF applies to sinks with connector = 'delta'"
                )),
            )));
        };
        let version = match at {
            ScalarValue::Int64(Some(v)) if *v >= 0 => TableVersion::Version(*v as u64),
            ScalarValue::Utf8(Some(s)) => {
                let nanos =
                    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s).map_err(|e| {
                        datafusion::error::DataFusionError::Plan(format!("AS OF TIMESTAMP '{s}': {e}"))
                    })?;
                TableVersion::Timestamp(nanos.div_euclid(1_000_000))
            }
            other => return plan_err!("AS OF VERSION takes a version number >= 0, found {other}"),
        };
        log.table(Some(version))
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

fn commits_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sink", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new(
            "committed_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            false,
        ),
        Field::new("checkpoint", DataType::Int64, true),
        Field::new("operation", DataType::Utf8, false),
        Field::new("files", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new(
            "file_paths",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
        Field::new("sources", DataType::Utf8, false),
        Field::new("query_hash", DataType::Utf8, true),
    ]))
}

fn sources_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sink", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("checkpoint", DataType::Int64, true),
        Field::new("stream", DataType::Utf8, false),
        Field::new("lane", DataType::Utf8, false),
        Field::new("partition", DataType::Int64, true),
        Field::new("from_offset", DataType::Int64, true),
        Field::new("to_offset", DataType::Int64, true),
        Field::new("from_position", DataType::Utf8, true),
        Field::new("to_position", DataType::Utf8, false),
    ]))
}

/// One source lane's position as offsets: Kafka's `partition:next,...`
/// gives one entry per partition, a generator's leading sequence number one
/// entry without a partition; anything else (a file source's read set) none.
fn offsets(position: &str) -> Option<Vec<(Option<i64>, i64)>> {
    if let Some(pairs) = crate::sink::partition_offsets(position) {
        return Some(pairs.into_iter().map(|(p, o)| (Some(p), o)).collect());
    }
    position
        .split(',')
        .next()?
        .trim()
        .parse::<i64>()
        .ok()
        .map(|n| vec![(None, n)])
}

/// `SourceRange`s rendered for the `sources` column.
fn render_sources(sources: &[SourceRange]) -> String {
    sources
        .iter()
        .map(|s| {
            format!(
                "{} [{}]: {} -> {}",
                s.stream,
                s.lane,
                s.from.as_deref().unwrap_or("start"),
                s.to
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `sluice_commits` (one row per commit) or `sluice_commit_sources` (one
/// row per commit, source lane and partition), computed at each scan.
#[derive(Debug)]
pub struct CommitsTable {
    tables: Arc<VersionedTables>,
    by_source: bool,
    schema: SchemaRef,
}

impl CommitsTable {
    pub fn commits(tables: Arc<VersionedTables>) -> Self {
        Self {
            tables,
            by_source: false,
            schema: commits_schema(),
        }
    }

    pub fn sources(tables: Arc<VersionedTables>) -> Self {
        Self {
            tables,
            by_source: true,
            schema: sources_schema(),
        }
    }

    fn commits_batch(&self, commits: &[(String, CommitRecord)]) -> datafusion::error::Result<RecordBatch> {
        let mut sink = StringBuilder::new();
        let mut version = Int64Builder::new();
        let mut at = TimestampMillisecondBuilder::new().with_timezone("+00:00");
        let mut checkpoint = Int64Builder::new();
        let mut operation = StringBuilder::new();
        let mut files = Int64Builder::new();
        let mut rows = Int64Builder::new();
        let mut bytes = Int64Builder::new();
        let mut paths = ListBuilder::new(StringBuilder::new());
        let mut sources = StringBuilder::new();
        let mut hash = StringBuilder::new();
        for (name, c) in commits {
            sink.append_value(name);
            version.append_value(c.version as i64);
            at.append_value(c.committed_at);
            checkpoint.append_option(c.checkpoint.map(|e| e as i64));
            operation.append_value(&c.operation);
            files.append_value(c.files.len() as i64);
            rows.append_value(c.rows as i64);
            bytes.append_value(c.bytes as i64);
            for f in &c.files {
                paths.values().append_value(f);
            }
            paths.append(true);
            sources.append_value(render_sources(&c.sources));
            hash.append_option(c.query_hash.as_deref());
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(sink.finish()),
            Arc::new(version.finish()),
            Arc::new(at.finish()),
            Arc::new(checkpoint.finish()),
            Arc::new(operation.finish()),
            Arc::new(files.finish()),
            Arc::new(rows.finish()),
            Arc::new(bytes.finish()),
            Arc::new(paths.finish()),
            Arc::new(sources.finish()),
            Arc::new(hash.finish()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }

    fn sources_batch(&self, commits: &[(String, CommitRecord)]) -> datafusion::error::Result<RecordBatch> {
        let mut sink = StringBuilder::new();
        let mut version = Int64Builder::new();
        let mut checkpoint = Int64Builder::new();
        let mut stream = StringBuilder::new();
        let mut lane = StringBuilder::new();
        let mut partition = Int64Builder::new();
        let mut from_offset = Int64Builder::new();
        let mut to_offset = Int64Builder::new();
        let mut from_position = StringBuilder::new();
        let mut to_position = StringBuilder::new();
        for (name, c) in commits {
            for s in &c.sources {
                let to = offsets(&s.to).unwrap_or_else(|| vec![(None, -1)]);
                let from: BTreeMap<Option<i64>, i64> = s
                    .from
                    .as_deref()
                    .and_then(offsets)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                for (p, to_off) in to {
                    sink.append_value(name);
                    version.append_value(c.version as i64);
                    checkpoint.append_option(c.checkpoint.map(|e| e as i64));
                    stream.append_value(&s.stream);
                    lane.append_value(&s.lane);
                    partition.append_option(p);
                    from_offset.append_option(if to_off < 0 { None } else { from.get(&p).copied() });
                    to_offset.append_option((to_off >= 0).then_some(to_off));
                    from_position.append_option(s.from.as_deref());
                    to_position.append_value(&s.to);
                }
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(sink.finish()),
            Arc::new(version.finish()),
            Arc::new(checkpoint.finish()),
            Arc::new(stream.finish()),
            Arc::new(lane.finish()),
            Arc::new(partition.finish()),
            Arc::new(from_offset.finish()),
            Arc::new(to_offset.finish()),
            Arc::new(from_position.finish()),
            Arc::new(to_position.finish()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

#[async_trait]
impl TableProvider for CommitsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let commits = self.tables.commits().await?;
        let batch = if self.by_source {
            self.sources_batch(&commits)?
        } else {
            self.commits_batch(&commits)?
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_become_offsets_where_they_are_offsets() {
        assert_eq!(offsets("0:10,1:7"), Some(vec![(Some(0), 10), (Some(1), 7)]));
        assert_eq!(offsets("500"), Some(vec![(None, 500)]));
        assert_eq!(offsets("12,3456,789"), Some(vec![(None, 12)]));
        assert_eq!(offsets(r#"{"done":["a.json"]}"#), None);
    }
}

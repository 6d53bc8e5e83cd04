//! What the connector integration tests share: an engine over given
//! registries, running statements, reading `key -> count` results.

#![allow(dead_code)]

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sluice_engine::datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use sluice_engine::datafusion::arrow::compute::cast;
use sluice_engine::datafusion::arrow::datatypes::DataType;
use sluice_engine::{Engine, EngineConfig, Output, Session, SinkRegistry, SourceRegistry};

/// An engine in `dir` with these connectors (jobs without checkpoints),
/// and a session on it.
pub async fn open_engine(
    dir: &std::path::Path,
    parallelism: usize,
    sources: SourceRegistry,
    sinks: SinkRegistry,
) -> (Engine, Session) {
    open_engine_checkpointing(dir, parallelism, sources, sinks, None).await
}

/// [`open_engine`] with jobs checkpointing at `interval`.
pub async fn open_engine_checkpointing(
    dir: &std::path::Path,
    parallelism: usize,
    sources: SourceRegistry,
    sinks: SinkRegistry,
    interval: Option<std::time::Duration>,
) -> (Engine, Session) {
    let engine = Engine::open(EngineConfig {
        data_dir: dir.to_path_buf(),
        stores: Default::default(),
        target_partitions: Some(parallelism),
        sources,
        sinks,
        checkpoint_interval: interval,
        checkpoint_location: None,
        // Test and bench inputs live in temporary directories.
        file_roots: vec![std::env::temp_dir()],
        memory_limit: None,
        subscriber_backlog: None,
        auth: None,
    })
    .await
    .unwrap();
    let session = engine.new_session();
    (engine, session)
}

/// Runs every statement of `sql`; the rows of those that return some.
pub async fn exec(session: &mut Session, sql: &str) -> sluice_engine::Result<Vec<RecordBatch>> {
    let mut out = vec![];
    for stmt in Session::parse(sql)? {
        let prepared = session.prepare(stmt).await?;
        if let Output::Rows(s) = session.execute(&prepared, None).await? {
            out.extend(s.try_collect::<Vec<_>>().await?);
        }
    }
    Ok(out)
}

/// `key -> count` rows of a two-column result (counts summed per key).
pub fn counts(batches: &[RecordBatch]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for b in batches {
        let k = cast(b.column(0), &DataType::Utf8).unwrap();
        let k = k.as_any().downcast_ref::<StringArray>().unwrap();
        let v = cast(b.column(1), &DataType::Int64).unwrap();
        let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            *out.entry(k.value(i).to_string()).or_default() += v.value(i);
        }
    }
    out
}

/// The `bad_rows` of every operator in a SHOW JOBS result, summed.
pub fn bad_rows(jobs: &[RecordBatch]) -> i64 {
    bad_rows_where(jobs, |_| true)
}

/// The `bad_rows` of one job's operators in a SHOW JOBS result, summed.
/// Each job reads its sources itself and counts what it skips, so a stream
/// read by two jobs has its bad records counted twice in the total.
pub fn bad_rows_of(jobs: &[RecordBatch], job: &str) -> i64 {
    bad_rows_where(jobs, |name| name == job)
}

fn bad_rows_where(jobs: &[RecordBatch], keep: impl Fn(&str) -> bool) -> i64 {
    let mut total = 0;
    for b in jobs {
        let names = b.column(b.schema().index_of("job").unwrap());
        let names = names.as_any().downcast_ref::<StringArray>().unwrap();
        let bad = b.column(b.schema().index_of("bad_rows").unwrap());
        let bad = bad.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            if keep(names.value(i)) {
                total += bad.value(i);
            }
        }
    }
    total
}

//! Streams: unbounded (or bounded) tables backed by a source connector.
//!
//! The engine owns the source traits; the connectors crate implements them
//! (nexmark and datagen generators, Kafka, files) and the server registers
//! them. A declared stream is a DataFusion table whose scan runs the
//! source, one task per partition, so ad-hoc queries such as
//! `SELECT * FROM bid LIMIT 5` work on it directly, and a bounded source
//! (`events.max`) can be read as a batch table — which is how streaming
//! results are checked against DataFusion's batch answers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use crate::error::{Result, SluiceError};

/// What flows between streaming operators.
#[derive(Debug, Clone)]
pub enum Message {
    /// Rows.
    Batch(RecordBatch),
    /// No row with an event time below this (microseconds since the epoch)
    /// will follow.
    Watermark(i64),
    /// A checkpoint barrier for the given epoch.
    Barrier(u64),
    /// The input is exhausted (bounded sources only).
    End,
}

/// One partition of a running source.
#[async_trait]
pub trait Source: Send {
    /// The next batch, or `None` once a bounded source is exhausted.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;
}

/// A kind of source (`connector = '...'` in `CREATE STREAM`).
pub trait SourceConnector: Send + Sync + Debug {
    /// The connector's name, as users write it.
    fn name(&self) -> &'static str;

    /// Every option the connector accepts (besides `connector`).
    fn option_keys(&self) -> &[&'static str];

    /// Checks the options and returns the schema of the stream they declare.
    fn schema(&self, options: &BTreeMap<String, String>) -> Result<SchemaRef>;

    /// Whether the source ends by itself with these options.
    fn is_bounded(&self, options: &BTreeMap<String, String>) -> bool;

    /// Opens partition `partition` of `partitions`.
    fn open(
        &self,
        options: &BTreeMap<String, String>,
        partition: usize,
        partitions: usize,
    ) -> Result<Box<dyn Source>>;
}

/// The source connectors the engine knows, by name.
#[derive(Debug, Default, Clone)]
pub struct SourceRegistry {
    connectors: Vec<Arc<dyn SourceConnector>>,
}

impl SourceRegistry {
    /// Adds a connector; a later one with the same name wins.
    pub fn register(&mut self, connector: Arc<dyn SourceConnector>) {
        self.connectors.insert(0, connector);
    }

    /// The connector with that name, or an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<Arc<dyn SourceConnector>> {
        self.connectors
            .iter()
            .find(|c| c.name() == name)
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<_> = self.connectors.iter().map(|c| c.name()).collect();
                names.sort_unstable();
                SluiceError::invalid_parameter(format!(
                    "unknown connector '{name}'; available: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Checks `options` against the connector's accepted keys; an unknown key is
/// an error that lists the accepted ones.
pub fn check_options(connector: &dyn SourceConnector, options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        if key != "connector" && !connector.option_keys().contains(&key.as_str()) {
            let mut accepted: Vec<_> = connector.option_keys().to_vec();
            accepted.sort_unstable();
            return Err(SluiceError::invalid_parameter(format!(
                "connector '{}' has no option '{key}'; accepted: connector, {}",
                connector.name(),
                accepted.join(", ")
            )));
        }
    }
    Ok(())
}

/// One partition of a stream as a DataFusion partition stream.
#[derive(Debug)]
struct SourcePartition {
    connector: Arc<dyn SourceConnector>,
    options: BTreeMap<String, String>,
    schema: SchemaRef,
    partition: usize,
    partitions: usize,
}

impl PartitionStream for SourcePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let opened = self
            .connector
            .open(&self.options, self.partition, self.partitions);
        let stream = futures::stream::unfold(Some(opened), |state| async move {
            let mut source = match state? {
                Ok(source) => source,
                Err(e) => return Some((Err(e.into_datafusion()), None)),
            };
            match source.next_batch().await {
                Ok(Some(batch)) => Some((Ok(batch), Some(Ok(source)))),
                Ok(None) => None,
                Err(e) => Some((Err(e.into_datafusion()), None)),
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// A DataFusion table over a declared stream, with `partitions` parallel
/// source tasks.
pub(crate) fn stream_table(
    connector: Arc<dyn SourceConnector>,
    options: BTreeMap<String, String>,
    partitions: usize,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let schema = connector.schema(&options)?;
    let bounded = connector.is_bounded(&options);
    let parts: Vec<Arc<dyn PartitionStream>> = (0..partitions.max(1))
        .map(|partition| {
            Arc::new(SourcePartition {
                connector: connector.clone(),
                options: options.clone(),
                schema: schema.clone(),
                partition,
                partitions: partitions.max(1),
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    let table = StreamingTable::try_new(schema, parts)?.with_infinite_table(!bounded);
    Ok(Arc::new(table))
}

//! Asking the brokers about a topic (no decoding: the format module uses
//! this for dead-letter topics).

use super::*;

/// How many partitions `topic` has; a clear error within seconds when the
/// broker is unreachable or the topic does not exist.
pub(crate) fn topic_partitions(config: &ClientConfig, topic: &str) -> Result<i32> {
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_string();
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| SluiceError::invalid_parameter(format!("kafka client for topic '{topic}': {e}")))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| {
            SluiceError::new(
                ErrorKind::StorageUnavailable,
                format!(
                    "kafka brokers {brokers} did not describe topic '{topic}' within {}s: {e}",
                    METADATA_TIMEOUT.as_secs()
                ),
            )
        })?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| {
            SluiceError::new(
                ErrorKind::UndefinedTable,
                format!("kafka topic '{topic}' does not exist on {brokers}"),
            )
        })?;
    Ok(found.partitions().len() as i32)
}

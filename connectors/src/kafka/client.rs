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

/// Creates `topic` with `partitions` partitions and `replication` copies of
/// each (-1: the broker's default), for a sink whose topic is missing.
/// Another client creating it meanwhile is no error.
pub(crate) fn create_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_string();
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(|e| {
        SluiceError::invalid_parameter(format!("kafka admin client for topic '{topic}': {e}"))
    })?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = crate::aside::run_aside(admin.create_topics(&[new], &options), METADATA_TIMEOUT * 2)?
        .ok_or_else(|| {
            SluiceError::new(
                ErrorKind::StorageUnavailable,
                format!("kafka brokers {brokers} did not create topic '{topic}' in time"),
            )
        })?
        .map_err(|e| {
            SluiceError::new(
                ErrorKind::StorageUnavailable,
                format!("creating kafka topic '{topic}' on {brokers}: {e}"),
            )
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(SluiceError::new(
                    ErrorKind::StorageUnavailable,
                    format!("creating kafka topic '{topic}' on {brokers}: {code}"),
                ));
            }
        }
    }
    tracing::info!(topic, partitions, replication, "created the sink's kafka topic");
    Ok(())
}

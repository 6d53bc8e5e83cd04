//! Exactly-once Kafka sinks: transactions parked per lane until their
//! checkpoint completes.

use super::*;

/// Transactions of an exactly-once Kafka sink waiting for their checkpoint
/// to complete, and the producers free for the next ones, per lane.
///
/// A lane writes each epoch's records in a transaction of its own producer
/// (transactional ids `sluice-<job id>-<lane>-<n>`). At a barrier it flushes
/// and parks the open transaction here; when the checkpoint completes the
/// coordinator commits every parked transaction of that epoch or before. A
/// new producer can't commit another's transaction, so after a crash the
/// job restores from the newest checkpoint whose commit finished, and the
/// first use of each transactional id fences (aborts) what an earlier run
/// left open.
#[derive(Default)]
pub struct KafkaTransactions {
    pub(super) pending: std::sync::Mutex<Vec<(u64, usize, TxnProducer)>>,
    pub(super) free: std::sync::Mutex<HashMap<usize, Vec<TxnProducer>>>,
    pub(super) committed: std::sync::atomic::AtomicU64,
}

/// A transactional producer and its transactional id (for the logs).
#[derive(Clone)]
pub(super) struct TxnProducer {
    pub(super) id: Arc<str>,
    pub(super) producer: rdkafka::producer::FutureProducer,
}

impl std::fmt::Debug for KafkaTransactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransactions").finish_non_exhaustive()
    }
}

pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl sluice_engine::sink::Committer for KafkaTransactions {
    async fn commit(
        &self,
        request: sluice_engine::sink::CommitRequest,
    ) -> Result<sluice_engine::sink::Committed> {
        let epoch = request.epoch.unwrap_or(u64::MAX);
        let due: Vec<_> = {
            let mut pending = self.pending.lock().expect("pending transactions");
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(e, _, _)| *e <= epoch);
            *pending = keep;
            due
        };
        let mut failed = None;
        for (e, lane, producer) in due {
            if failed.is_some() {
                self.pending
                    .lock()
                    .expect("pending transactions")
                    .push((e, lane, producer));
                continue;
            }
            let p = producer.producer.clone();
            let committed = tokio::task::spawn_blocking(move || p.commit_transaction(TXN_TIMEOUT))
                .await
                .map_err(|e| SluiceError::internal(format!("committing a kafka transaction: {e}")))?;
            match committed {
                Ok(()) => {
                    tracing::info!(
                        lane,
                        epoch = e,
                        checkpoint = epoch,
                        transactional_id = %producer.id,
                        "committed a kafka transaction"
                    );
                    self.free
                        .lock()
                        .expect("free producers")
                        .entry(lane)
                        .or_default()
                        .push(producer)
                }
                Err(err) => {
                    tracing::warn!(lane, epoch = e, checkpoint = epoch, transactional_id = %producer.id, error = %err, "a kafka transaction did not commit");
                    failed = Some(SluiceError::new(
                        ErrorKind::StorageUnavailable,
                        format!("committing the kafka transaction of lane {lane}, checkpoint {e}: {err}"),
                    ));
                    self.pending
                        .lock()
                        .expect("pending transactions")
                        .push((e, lane, producer));
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if epoch != u64::MAX {
            self.committed
                .fetch_max(epoch, std::sync::atomic::Ordering::SeqCst);
        }
        // Kafka keeps no versions, and the transactions don't count rows.
        Ok(sluice_engine::sink::Committed::default())
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.committed.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            e => Some(e),
        }
    }

    fn recommits(&self) -> bool {
        false
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An exactly-once lane's side: its transactional producers.
pub(super) struct TxnLane {
    pub(super) txns: Arc<dyn sluice_engine::sink::Committer>,
    pub(super) lane: usize,
    pub(super) config: ClientConfig,
    pub(super) prefix: String,
    pub(super) next_id: usize,
    /// The current producer's transactional id.
    pub(super) current: Arc<str>,
    /// The current producer has been initialised for transactions.
    pub(super) ready: bool,
    /// A transaction is open on the current producer.
    pub(super) open: bool,
}

impl TxnLane {
    pub(super) fn shared(&self) -> &KafkaTransactions {
        self.txns
            .as_any()
            .downcast_ref::<KafkaTransactions>()
            .expect("the kafka sink's committer")
    }

    /// A producer for the next transaction: a free one of this lane, or a
    /// new transactional id.
    pub(super) fn next_producer(&mut self) -> Result<(TxnProducer, bool)> {
        if let Some(p) = self
            .shared()
            .free
            .lock()
            .expect("free producers")
            .get_mut(&self.lane)
            .and_then(Vec::pop)
        {
            return Ok((p, true));
        }
        let mut config = self.config.clone();
        let id = format!("{}-{}-{}", self.prefix, self.lane, self.next_id);
        tracing::info!(lane = self.lane, transactional_id = %id, "a new transactional producer");
        config.set("transactional.id", &id);
        self.next_id += 1;
        let producer = config
            .create()
            .map_err(|e| SluiceError::invalid_parameter(format!("kafka producer: {e}")))?;
        Ok((
            TxnProducer {
                id: id.into(),
                producer,
            },
            false,
        ))
    }
}

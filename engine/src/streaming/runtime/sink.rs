//! A sink lane's task: drives the final lane into its writer, makes output
//! durable at each barrier, and hands its last state on at the end.

use futures::StreamExt;

use super::wiring::TaskCheckpoint;
use super::{Lane, SOURCE_TICK};
use crate::error::Result;
use crate::sink::SinkWriter;
use crate::stream::Message;

pub(super) async fn drive_sink(
    mut lane: Lane,
    mut writer: Box<dyn SinkWriter>,
    mut ck: TaskCheckpoint,
) -> Result<()> {
    let mut watermark = i64::MIN;
    // The last checkpoint whose barrier this lane passed.
    let mut passed = ck.restored;
    loop {
        // When the input goes quiet, still give the writer its progress
        // step now and then, so that time-based file rolling happens.
        let msg = match tokio::time::timeout(SOURCE_TICK * 2, lane.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                writer.on_watermark(watermark).await?;
                continue;
            }
        };
        match msg? {
            Message::Batch(b) => writer.write(b).await?,
            Message::Watermark(w) => {
                watermark = watermark.max(w);
                writer.on_watermark(w).await?
            }
            Message::Progress => writer.on_watermark(watermark).await?,
            Message::Barrier(epoch) => {
                passed = epoch;
                // Output before the barrier must be durable before the
                // checkpoint counts; a sink that can't is a failed job.
                ck.save_sink(epoch, writer.as_mut()).await?;
            }
            Message::Idle => {}
            Message::End => break,
        }
    }
    if ck.store.is_none() {
        return writer.finish().await;
    }
    // The output since the last barrier goes to the next checkpoint to
    // complete, which records the sources of this lane at their end (so a
    // two-phase-commit sink commits it with the final source positions, and
    // a restart after that lands nothing twice): the next checkpoint after
    // `passed`, or the job's final one when every lane has ended.
    let state = writer.checkpoint(passed + 1).await?;
    writer.finish().await?;
    ck.finish(passed, state);
    Ok(())
}

//! Running a dataflow: tasks, bounded channels, hash exchanges, watermarks.
//!
//! A plan becomes "lanes": streams of [`Message`]s. A source partition is a
//! lane; stateless operators map a lane in place, so a chain of them runs
//! fused in whichever task drives the lane. A keyed operator ends the lanes
//! below it (`keyed`): one exchange task per input lane hashes rows by
//! its input's keys into `P` bounded channels, and `P` operator tasks each
//! merge their lanes through an aligner (`align`: rows tagged with their
//! input, barriers aligned, watermarks per input and overall) and start a
//! new lane. A sink
//! drives each final lane in its own task. Every channel is bounded, so a
//! slow sink slows the sources and memory stays flat.
//!
//! All tasks of a job live in one `JoinSet`: the first failure marks the job
//! failed and aborts the rest; dropping the job aborts everything.
//!
//! Checkpoints (see [`crate::checkpoint`]): a coordinator task triggers an
//! epoch; each source lane records its position and sends `Barrier(epoch)`
//! down its lane; a keyed task holds back each input once its barrier came
//! until all inputs delivered it (alignment), then snapshots its operator;
//! a sink lane makes its output durable at the barrier. When every one of
//! them acknowledged, the coordinator writes the manifest.

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::stream::Message;

mod align;
mod build;
mod job;
mod keyed;
mod sink;
mod source;
mod wiring;

pub use job::{Job, JobStatus};
pub use wiring::{StartPositions, start_positions};

/// Messages per channel. With batches of a few thousand rows this bounds a
/// channel to some tens of thousands of rows.
const CHANNEL_CAPACITY: usize = 8;

type Lane = BoxStream<'static, Result<Message>>;
type Task = BoxFuture<'static, Result<()>>;

/// How often a keyed task refreshes its state figures for SHOW JOBS when
/// the watermark does not move.
const STATE_METRICS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a waiting source lane wakes up to check for idle splits.
const SOURCE_TICK: std::time::Duration = std::time::Duration::from_millis(500);

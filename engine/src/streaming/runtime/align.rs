//! Barrier alignment and watermarks for a task with many input lanes.
//!
//! A keyed task reads one channel into which every exchange writes; each
//! message is tagged with the lane it came from, and each lane belongs to
//! one of the operator's inputs (a join has two, an aggregate one). The
//! [`Aligner`] turns that interleaving into the events an operator acts on,
//! so the task loop only calls the operator and forwards its output:
//!
//! - rows, tagged with their input;
//! - an input's own watermark when it moves (the least over that input's
//!   active lanes), for operators whose state one side's time bounds;
//! - progress steps, with the watermark that closes windows (the least over
//!   every active lane of every input) and whether it moved;
//! - `Idle` when every lane is idle, `End` when every lane ended;
//! - `Barrier(epoch)` once every lane delivered it. A lane whose barrier
//!   came is blocked: what it sends meanwhile is held back and replayed,
//!   in order, after the barrier, so a snapshot sees exactly the rows
//!   before it on every lane.

use std::collections::VecDeque;

use arrow::array::RecordBatch;

use crate::stream::Message;

/// What a task does next, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    Batch {
        input: usize,
        batch: RecordBatch,
    },
    /// The least watermark over `input`'s active lanes moved.
    InputWatermark {
        input: usize,
        watermark: i64,
    },
    /// A progress step: emit pending changes. `watermark` is the least over
    /// all active lanes (never going back); `advanced` whether it moved.
    Progress {
        watermark: i64,
        advanced: bool,
    },
    /// Every lane is idle (sent once until a lane is active again).
    Idle,
    /// Every lane delivered this barrier.
    Barrier(u64),
    /// Every lane ended.
    End,
}

#[derive(Debug)]
struct LaneState {
    input: usize,
    watermark: i64,
    idle: bool,
    blocked: bool,
    ended: bool,
    held: VecDeque<Message>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Aligner {
    lanes: Vec<LaneState>,
    /// Per input, the watermark last reported for it.
    input_watermarks: Vec<i64>,
    /// The watermark of the last progress step.
    current: i64,
    aligning: Option<u64>,
    sent_idle: bool,
}

impl Aligner {
    /// `lane_inputs[l]`: the input lane `l` belongs to (inputs numbered
    /// from 0, each with at least one lane).
    pub(crate) fn new(lane_inputs: &[usize]) -> Self {
        let inputs = lane_inputs.iter().copied().max().map_or(0, |m| m + 1);
        Self {
            lanes: lane_inputs
                .iter()
                .map(|&input| LaneState {
                    input,
                    watermark: i64::MIN,
                    idle: false,
                    blocked: false,
                    ended: false,
                    held: VecDeque::new(),
                })
                .collect(),
            input_watermarks: vec![i64::MIN; inputs],
            current: i64::MIN,
            aligning: None,
            sent_idle: false,
        }
    }

    /// The watermark of the last progress step.
    pub(crate) fn watermark(&self) -> i64 {
        self.current
    }

    /// A held message of a lane no longer blocked, to process before
    /// reading more (oldest first).
    pub(crate) fn next_held(&mut self) -> Option<(usize, Message)> {
        let lane = self.lanes.iter().position(|l| !l.blocked && !l.held.is_empty())?;
        self.lanes[lane].held.pop_front().map(|m| (lane, m))
    }

    /// Takes one message from `lane`; appends the events it causes.
    pub(crate) fn push(&mut self, lane: usize, msg: Message, events: &mut Vec<Event>) {
        if self.lanes[lane].blocked {
            self.lanes[lane].held.push_back(msg);
            return;
        }
        match msg {
            Message::Batch(batch) => {
                self.lanes[lane].idle = false;
                let input = self.lanes[lane].input;
                events.push(Event::Batch { input, batch });
            }
            Message::Idle => {
                self.lanes[lane].idle = true;
                let active = self.active_min();
                // All lanes idle: the greatest watermark known stands (as
                // for a source's splits), so a lane that never had a row
                // does not keep the others' windows open forever.
                let all_idle = active.is_none();
                let target = active.or_else(|| self.lanes.iter().map(|l| l.watermark).max());
                if let Some(least) = target
                    && least > self.current
                {
                    self.sent_idle = false;
                    self.current = least;
                    events.push(Event::Progress {
                        watermark: least,
                        advanced: true,
                    });
                }
                if all_idle && !self.sent_idle {
                    self.sent_idle = true;
                    events.push(Event::Idle);
                }
            }
            msg @ (Message::Watermark(_) | Message::Progress) => {
                let l = &mut self.lanes[lane];
                l.idle = false;
                self.sent_idle = false;
                if let Message::Watermark(w) = msg {
                    l.watermark = l.watermark.max(w);
                    let input = l.input;
                    if let Some(w) = self.input_min(input)
                        && w > self.input_watermarks[input]
                    {
                        self.input_watermarks[input] = w;
                        events.push(Event::InputWatermark { input, watermark: w });
                    }
                }
                let least = self.active_min().expect("the sender is active");
                // Every watermark message is a progress step: updating
                // operators emit their changes even when the watermark did
                // not move (rows can arrive behind it, e.g. from a partition
                // that was idle); windows close only when it moves.
                let advanced = least > self.current;
                self.current = self.current.max(least);
                events.push(Event::Progress {
                    watermark: self.current,
                    advanced,
                });
            }
            Message::Barrier(epoch) => {
                self.lanes[lane].blocked = true;
                self.aligning = Some(epoch);
            }
            Message::End => {
                self.lanes[lane].ended = true;
                if self.lanes.iter().all(|l| l.ended) {
                    events.push(Event::End);
                    return;
                }
            }
        }
        if let Some(epoch) = self.aligning
            && self.lanes.iter().all(|l| l.blocked || l.ended)
        {
            self.aligning = None;
            for l in &mut self.lanes {
                l.blocked = false;
            }
            events.push(Event::Barrier(epoch));
        }
    }

    /// The least watermark over active lanes (None: all idle).
    fn active_min(&self) -> Option<i64> {
        self.lanes.iter().filter(|l| !l.idle).map(|l| l.watermark).min()
    }

    /// The least watermark over `input`'s active lanes.
    fn input_min(&self, input: usize) -> Option<i64> {
        self.lanes
            .iter()
            .filter(|l| l.input == input && !l.idle)
            .map(|l| l.watermark)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn rows(v: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![v])) as _)]).unwrap()
    }

    /// Feeds messages (lane, message), replaying held ones as a task does.
    fn run(a: &mut Aligner, msgs: Vec<(usize, Message)>) -> Vec<Event> {
        let mut events = vec![];
        let mut queue: VecDeque<_> = msgs.into();
        loop {
            let next = a.next_held().or_else(|| queue.pop_front());
            let Some((lane, msg)) = next else { break };
            a.push(lane, msg, &mut events);
        }
        events
    }

    #[test]
    fn rows_behind_a_barrier_wait_for_every_lane() {
        // Lanes 0 and 1 are input 0, lane 2 is input 1.
        let mut a = Aligner::new(&[0, 0, 1]);
        let events = run(
            &mut a,
            vec![
                (0, Message::Batch(rows(1))),
                (0, Message::Barrier(7)),
                (0, Message::Batch(rows(2))), // after lane 0's barrier: held
                (2, Message::Batch(rows(3))),
                (1, Message::Barrier(7)),
                (2, Message::Barrier(7)),
                (2, Message::Batch(rows(4))),
            ],
        );
        assert_eq!(
            events,
            [
                Event::Batch {
                    input: 0,
                    batch: rows(1)
                },
                Event::Batch {
                    input: 1,
                    batch: rows(3)
                },
                Event::Barrier(7),
                // Held rows come back first, then what followed.
                Event::Batch {
                    input: 0,
                    batch: rows(2)
                },
                Event::Batch {
                    input: 1,
                    batch: rows(4)
                },
            ]
        );
    }

    #[test]
    fn watermarks_per_input_and_overall() {
        let mut a = Aligner::new(&[0, 0, 1]);
        let events = run(
            &mut a,
            vec![
                (0, Message::Watermark(10)),
                (1, Message::Watermark(20)),
                (2, Message::Watermark(5)),
                (2, Message::Watermark(30)),
                (0, Message::Watermark(40)),
            ],
        );
        let p = |w, advanced| Event::Progress {
            watermark: w,
            advanced,
        };
        let iw = |input, w| Event::InputWatermark { input, watermark: w };
        assert_eq!(
            events,
            [
                // Lane 1 and input 1 have sent nothing yet: nothing moves.
                p(i64::MIN, false),
                iw(0, 10),
                p(i64::MIN, false),
                iw(1, 5),
                p(5, true),
                iw(1, 30),
                p(10, true),
                iw(0, 20),
                p(20, true),
            ]
        );
        assert_eq!(a.watermark(), 20);
    }

    #[test]
    fn idle_lanes_leave_the_watermark_and_all_idle_is_passed_on() {
        let mut a = Aligner::new(&[0, 1]);
        let events = run(
            &mut a,
            vec![
                (0, Message::Watermark(10)),
                (1, Message::Idle),
                (0, Message::Idle),
                (0, Message::Idle),
                (1, Message::Watermark(50)),
            ],
        );
        let p = |w, advanced| Event::Progress {
            watermark: w,
            advanced,
        };
        assert_eq!(
            events,
            [
                Event::InputWatermark {
                    input: 0,
                    watermark: 10
                },
                p(i64::MIN, false),
                // Lane 1 idle: lane 0 alone decides.
                p(10, true),
                // Both idle: once.
                Event::Idle,
                Event::InputWatermark {
                    input: 1,
                    watermark: 50
                },
                p(50, true),
            ]
        );
    }

    #[test]
    fn progress_is_a_step_that_moves_no_watermark() {
        let mut a = Aligner::new(&[0, 0]);
        let events = run(
            &mut a,
            vec![
                (0, Message::Progress),
                (0, Message::Watermark(10)),
                (1, Message::Watermark(10)),
                (1, Message::Progress),
            ],
        );
        let p = |w, advanced| Event::Progress {
            watermark: w,
            advanced,
        };
        assert_eq!(
            events,
            [
                p(i64::MIN, false),
                p(i64::MIN, false),
                Event::InputWatermark {
                    input: 0,
                    watermark: 10
                },
                p(10, true),
                p(10, false),
            ]
        );
    }

    #[test]
    fn an_ended_lane_does_not_hold_a_barrier_and_all_ended_is_the_end() {
        let mut a = Aligner::new(&[0, 1]);
        let events = run(
            &mut a,
            vec![(1, Message::End), (0, Message::Barrier(3)), (0, Message::End)],
        );
        assert_eq!(events, [Event::Barrier(3), Event::End]);
    }
}

//! Per-operator counters of a running job, read by `SHOW JOBS`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stream::{Progress, ProgressUnit};

/// Counters of one operator: one set per parallel task, each updated only
/// by its task (no two tasks write the same cache line), summed when read.
#[derive(Debug)]
pub struct NodeMetrics {
    tasks: Box<[TaskCounters]>,
    /// Per parallel task: what the task says about itself (sources: lag,
    /// retries).
    details: Mutex<Vec<Option<String>>>,
    /// Per parallel task: where a source task is in each split it reads.
    splits: Mutex<Vec<Vec<crate::stream::SplitFigures>>>,
    /// Per parallel task: how far a source task is through a bounded input.
    progress: Mutex<Vec<Option<TaskProgress>>>,
}

/// One task's counters, on a cache line of their own.
#[derive(Debug)]
#[repr(align(64))]
struct TaskCounters {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    late_rows: AtomicU64,
    bad_rows: AtomicU64,
    /// Microseconds; `i64::MIN` before the first.
    watermark: AtomicI64,
    state_rows: AtomicU64,
    state_bytes: AtomicU64,
    /// State rows dropped because time made them useless, since the task
    /// started.
    expired_rows: AtomicU64,
    /// Microseconds the task waited to hand output to a full channel
    /// downstream (backpressure).
    blocked_us: AtomicU64,
}

impl TaskCounters {
    fn new() -> Self {
        Self {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late_rows: AtomicU64::new(0),
            bad_rows: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            state_rows: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            expired_rows: AtomicU64::new(0),
            blocked_us: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> NodeSnapshot {
        let wm = self.watermark.load(Ordering::Relaxed);
        NodeSnapshot {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            late_rows: self.late_rows.load(Ordering::Relaxed),
            bad_rows: self.bad_rows.load(Ordering::Relaxed),
            watermark: (wm != i64::MIN).then_some(wm),
            state_rows: self.state_rows.load(Ordering::Relaxed),
            state_bytes: self.state_bytes.load(Ordering::Relaxed),
            expired_rows: self.expired_rows.load(Ordering::Relaxed),
            blocked_us: self.blocked_us.load(Ordering::Relaxed),
        }
    }
}

/// A source task's progress, with its first figure for a rate.
#[derive(Debug, Clone, Copy)]
struct TaskProgress {
    first_at: Instant,
    first_done: u64,
    last: Progress,
}

/// How far an operator's tasks are through their bounded input, summed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressFigures {
    pub done: u64,
    pub total: u64,
    pub unit: ProgressUnit,
    /// Units per second since the tasks first reported (None until a
    /// second has passed).
    pub rate: Option<f64>,
    /// Time left at that rate (zero once done; None without a rate).
    pub remaining: Option<Duration>,
}

impl ProgressFigures {
    /// Done as a share of the total, 0 to 1.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }

    /// `42% of 1.2 GiB, about 15 s left`.
    pub fn describe(&self) -> String {
        let pct = self.ratio() * 100.0;
        let mut s = format!("{pct:.0}% of {}", amount(self.total, self.unit));
        if self.done >= self.total {
            return s;
        }
        match self.remaining {
            Some(left) => s.push_str(&format!(", about {} left", duration_text(left))),
            None => s.push_str(", time left not known yet"),
        }
        s
    }
}

/// `1.2 GiB`, `3.5 M rows`.
fn amount(n: u64, unit: ProgressUnit) -> String {
    let n = n as f64;
    match unit {
        ProgressUnit::Bytes => {
            const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
            let mut v = n;
            let mut i = 0;
            while v >= 1024.0 && i + 1 < UNITS.len() {
                v /= 1024.0;
                i += 1;
            }
            if i == 0 {
                format!("{n} bytes")
            } else {
                format!("{v:.1} {}", UNITS[i])
            }
        }
        _ => {
            let name = unit.name();
            if n >= 1e9 {
                format!("{:.1} G {name}", n / 1e9)
            } else if n >= 1e6 {
                format!("{:.1} M {name}", n / 1e6)
            } else if n >= 1e4 {
                format!("{:.0} k {name}", n / 1e3)
            } else {
                format!("{n} {name}")
            }
        }
    }
}

/// `45 s`, `3 min 20 s`, `2 h 5 min`.
fn duration_text(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    if s < 60 {
        format!("{} s", s.max(1))
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new(1)
    }
}

impl NodeMetrics {
    /// Counters for an operator with `tasks` parallel tasks.
    pub fn new(tasks: usize) -> Self {
        Self {
            tasks: (0..tasks.max(1)).map(|_| TaskCounters::new()).collect(),
            details: Mutex::new(vec![None; tasks.max(1)]),
            splits: Mutex::new(vec![Vec::new(); tasks.max(1)]),
            progress: Mutex::new(vec![None; tasks.max(1)]),
        }
    }

    /// Sets how far source task `task` is through its bounded input.
    pub fn set_progress(&self, task: usize, progress: Option<Progress>) {
        let Some(p) = progress else { return };
        let mut all = self.progress.lock().expect("progress lock");
        if let Some(slot) = all.get_mut(task) {
            match slot {
                Some(t) => t.last = p,
                None => {
                    *slot = Some(TaskProgress {
                        first_at: Instant::now(),
                        first_done: p.done,
                        last: p,
                    })
                }
            }
        }
    }

    /// The tasks' progress summed, once every task has reported one (a
    /// total of only some tasks would overstate the share done).
    pub fn progress(&self) -> Option<ProgressFigures> {
        let all = self.progress.lock().expect("progress lock");
        let tasks: Vec<TaskProgress> = all.iter().copied().collect::<Option<_>>()?;
        let unit = tasks.first()?.last.unit;
        let done: u64 = tasks.iter().map(|t| t.last.done).sum();
        let total: u64 = tasks.iter().map(|t| t.last.total.max(t.last.done)).sum();
        let since = tasks.iter().map(|t| t.first_at).min()?.elapsed();
        let gained: u64 = tasks
            .iter()
            .map(|t| t.last.done.saturating_sub(t.first_done))
            .sum();
        let rate =
            (since >= Duration::from_secs(1) && gained > 0).then(|| gained as f64 / since.as_secs_f64());
        let remaining = if done >= total {
            Some(Duration::ZERO)
        } else {
            rate.map(|r| Duration::from_secs_f64((total - done) as f64 / r))
        };
        Some(ProgressFigures {
            done,
            total,
            unit,
            rate,
            remaining,
        })
    }

    /// Sets what task `task` says about itself.
    pub fn set_detail(&self, task: usize, detail: Option<String>) {
        let mut details = self.details.lock().expect("details lock");
        if let Some(d) = details.get_mut(task)
            && *d != detail
        {
            *d = detail;
        }
    }

    /// Sets where source task `task` is in its splits.
    pub fn set_splits(&self, task: usize, figures: Vec<crate::stream::SplitFigures>) {
        if let Some(s) = self.splits.lock().expect("splits lock").get_mut(task) {
            *s = figures;
        }
    }

    /// Every task's split figures.
    pub fn splits(&self) -> Vec<crate::stream::SplitFigures> {
        self.splits
            .lock()
            .expect("splits lock")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The tasks' details, joined (`None` when no task has any).
    pub fn detail(&self) -> Option<String> {
        let details = self.details.lock().expect("details lock");
        let parts: Vec<String> = details
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                d.as_ref().map(|d| {
                    if details.len() > 1 {
                        format!("task {i}: {d}")
                    } else {
                        d.clone()
                    }
                })
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A point-in-time copy of [`NodeMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub bad_rows: u64,
    pub watermark: Option<i64>,
    pub state_rows: u64,
    pub state_bytes: u64,
    /// State rows dropped because time made them useless.
    pub expired_rows: u64,
    /// Microseconds spent blocked on a full downstream channel, summed
    /// over the operator's tasks.
    pub blocked_us: u64,
}

impl NodeMetrics {
    /// Task `task`'s counters (a task number past the operator's last,
    /// which no plan makes, counts as the last task).
    fn task(&self, task: usize) -> &TaskCounters {
        &self.tasks[task.min(self.tasks.len() - 1)]
    }

    /// Rows task `task` took in.
    pub fn add_in(&self, task: usize, n: usize) {
        self.task(task).rows_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Rows task `task` put out.
    pub fn add_out(&self, task: usize, n: usize) {
        self.task(task).rows_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Rows behind the watermark task `task` dropped.
    pub fn add_late(&self, task: usize, n: u64) {
        if n > 0 {
            tracing::debug!(rows = n, "rows behind the watermark dropped as late");
        }
        self.task(task).late_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Malformed input records source task `task` skipped.
    pub fn add_bad(&self, task: usize, n: u64) {
        self.task(task).bad_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the watermark task `task` reached. The operator's watermark
    /// is the least of its tasks'.
    pub fn set_watermark(&self, task: usize, wm: i64) {
        self.task(task).watermark.store(wm, Ordering::Relaxed);
    }

    /// Adds time task `task` waited on a full downstream channel.
    pub fn add_blocked(&self, task: usize, waited: std::time::Duration) {
        self.task(task)
            .blocked_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sets the rows and bytes task `task` holds in its state.
    pub fn set_state(&self, task: usize, rows: u64, bytes: u64) {
        let t = self.task(task);
        t.state_rows.store(rows, Ordering::Relaxed);
        t.state_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Sets the state rows task `task`'s operator has expired so far.
    pub fn set_expired(&self, task: usize, rows: u64) {
        self.task(task).expired_rows.store(rows, Ordering::Relaxed);
    }

    /// The operator's figures: its tasks' summed, the least watermark
    /// (none until every task has one).
    pub fn snapshot(&self) -> NodeSnapshot {
        let tasks = self.task_snapshots();
        let mut sum = NodeSnapshot {
            watermark: tasks.iter().map(|t| t.watermark).min().flatten(),
            ..NodeSnapshot::default()
        };
        for t in &tasks {
            sum.rows_in += t.rows_in;
            sum.rows_out += t.rows_out;
            sum.late_rows += t.late_rows;
            sum.bad_rows += t.bad_rows;
            sum.state_rows += t.state_rows;
            sum.state_bytes += t.state_bytes;
            sum.expired_rows += t.expired_rows;
            sum.blocked_us += t.blocked_us;
        }
        sum
    }

    /// Each task's figures, by task number.
    pub fn task_snapshots(&self) -> Vec<NodeSnapshot> {
        self.tasks.iter().map(TaskCounters::snapshot).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(done: u64, total: u64) -> Option<Progress> {
        Some(Progress {
            done,
            total,
            unit: ProgressUnit::Bytes,
        })
    }

    #[test]
    fn progress_sums_tasks_once_each_has_reported() {
        let m = NodeMetrics::new(2);
        assert_eq!(m.progress(), None);
        m.set_progress(0, bytes(100, 1000));
        // Task 1 has not said how much it reads: no share yet.
        assert_eq!(m.progress(), None);
        m.set_progress(1, bytes(0, 3000));
        let p = m.progress().unwrap();
        assert_eq!((p.done, p.total), (100, 4000));
        // No time has passed since the first figures: no rate, no estimate.
        assert_eq!(p.rate, None);
        assert_eq!(p.remaining, None);
        assert!((p.ratio() - 0.025).abs() < 1e-9);
        assert_eq!(p.describe(), "2% of 3.9 KiB, time left not known yet");
        // A total smaller than what was read (a file that grew) counts
        // what was read.
        m.set_progress(0, bytes(1500, 1000));
        m.set_progress(1, bytes(3000, 3000));
        let p = m.progress().unwrap();
        assert_eq!((p.done, p.total), (4500, 4500));
        assert_eq!(p.remaining, Some(Duration::ZERO));
        assert_eq!(p.describe(), "100% of 4.4 KiB");
    }

    #[test]
    fn time_left_follows_the_rate_since_the_first_figure() {
        let m = NodeMetrics::new(1);
        m.set_progress(0, bytes(0, 10_000));
        // Pretend the first figure came 2 s ago.
        m.progress.lock().unwrap()[0].as_mut().unwrap().first_at = Instant::now() - Duration::from_secs(2);
        m.set_progress(0, bytes(2_000, 10_000));
        let p = m.progress().unwrap();
        let rate = p.rate.unwrap();
        assert!((900.0..=1000.0).contains(&rate), "{rate}");
        let left = p.remaining.unwrap().as_secs_f64();
        assert!((8.0..=9.0).contains(&left), "{left}");
        assert_eq!(p.describe(), "20% of 9.8 KiB, about 8 s left");
        let rows = ProgressFigures {
            done: 1_500_000,
            total: 4_000_000,
            unit: ProgressUnit::Rows,
            rate: Some(1.0),
            remaining: Some(Duration::from_secs(200)),
        };
        assert_eq!(rows.describe(), "38% of 4.0 M rows, about 3 min 20 s left");
    }
}

//! Per-operator counters of a running job, read by `SHOW JOBS`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters one operator's tasks update (shared by its parallel tasks).
#[derive(Debug)]
pub struct NodeMetrics {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    late_rows: AtomicU64,
    bad_rows: AtomicU64,
    /// Per parallel task, microseconds; `i64::MIN` before the first.
    watermarks: Vec<AtomicI64>,
    state_rows: AtomicU64,
    state_bytes: AtomicU64,
    /// Microseconds the operator's tasks waited, over all tasks, to hand
    /// output to a full channel downstream (backpressure).
    blocked_us: AtomicU64,
    /// Per parallel task: what the task says about itself (sources: lag,
    /// retries).
    details: Mutex<Vec<Option<String>>>,
    /// Per parallel task: where a source task is in each split it reads.
    splits: Mutex<Vec<Vec<crate::stream::SplitFigures>>>,
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
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late_rows: AtomicU64::new(0),
            bad_rows: AtomicU64::new(0),
            watermarks: (0..tasks.max(1)).map(|_| AtomicI64::new(i64::MIN)).collect(),
            state_rows: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            blocked_us: AtomicU64::new(0),
            details: Mutex::new(vec![None; tasks.max(1)]),
            splits: Mutex::new(vec![Vec::new(); tasks.max(1)]),
        }
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
    /// Microseconds spent blocked on a full downstream channel, summed
    /// over the operator's tasks.
    pub blocked_us: u64,
}

impl NodeMetrics {
    pub fn add_in(&self, n: usize) {
        self.rows_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_out(&self, n: usize) {
        self.rows_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_late(&self, n: u64) {
        if n > 0 {
            tracing::debug!(rows = n, "rows behind the watermark dropped as late");
        }
        self.late_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Malformed input records a source skipped.
    pub fn add_bad(&self, n: u64) {
        self.bad_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the watermark task `task` reached. The operator's watermark
    /// is the least of its tasks'.
    pub fn set_watermark(&self, task: usize, wm: i64) {
        if let Some(w) = self.watermarks.get(task) {
            w.store(wm, Ordering::Relaxed);
        }
    }

    /// Adds time a task waited on a full downstream channel.
    pub fn add_blocked(&self, waited: std::time::Duration) {
        self.blocked_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
    }

    /// Adds a task's change in state size.
    pub fn add_state(&self, rows: i64, bytes: i64) {
        if rows >= 0 {
            self.state_rows.fetch_add(rows as u64, Ordering::Relaxed);
        } else {
            self.state_rows.fetch_sub(rows.unsigned_abs(), Ordering::Relaxed);
        }
        if bytes >= 0 {
            self.state_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            self.state_bytes
                .fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> NodeSnapshot {
        let wm = self
            .watermarks
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .min()
            .unwrap_or(i64::MIN);
        NodeSnapshot {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            late_rows: self.late_rows.load(Ordering::Relaxed),
            bad_rows: self.bad_rows.load(Ordering::Relaxed),
            watermark: (wm != i64::MIN).then_some(wm),
            state_rows: self.state_rows.load(Ordering::Relaxed),
            state_bytes: self.state_bytes.load(Ordering::Relaxed),
            blocked_us: self.blocked_us.load(Ordering::Relaxed),
        }
    }
}

//! Keyed state shared by the stateful operators: what every one of them
//! needs once, written once.
//!
//! - [`ChangedGroups`]: which groups (dense ids) changed since the last full
//!   snapshot, and the rule that decides between an incremental snapshot
//!   and a full one ([`IncrementalRule`]).
//! - [`KeyedRows`]: a multiset of rows per key, both held in Arrow's row
//!   format under a declared Arrow schema, with changed-key tracking, full
//!   and incremental snapshots as Arrow columns, and rows and bytes
//!   accounted. A join keeps one per input. Rows can be given a time
//!   after which they are dropped ([`KeyedRows::expire_at`]): an interval
//!   join's rows go once the other input's watermark passes their bound.
//! - [`RowCounts`]: whole rows with a signed count each and their net
//!   changes since the last full snapshot (a materialized view's lane).
//! - [`SnapshotBatch`] / [`SnapshotRows`]: the one layout of a snapshot
//!   batch, written and read here only. Key columns `k0..` first (a
//!   rescale splits snapshots by them), then the operator's named columns,
//!   then each aggregate's state columns `a{k}_{j}` with their widths, and
//!   the watermark and "replaces" flag in the schema metadata. Operators
//!   name what they store; they never place columns or parse metadata.
//! - The format version of checkpoint state files lives with checkpoint
//!   storage ([`crate::checkpoint::STATE_FORMAT_VERSION`]): every file
//!   carries it and a restore refuses one it does not know.

mod counts;
mod rows;
mod snapshot;

pub(crate) use counts::RowCounts;

pub(crate) use rows::{Bucket, KeyedRows, RowsSnapshot, Taken, row_converter};
pub(crate) use snapshot::{SnapshotBatch, SnapshotRows, key_column};

type Result<T> = datafusion::error::Result<T>;

/// When an incremental snapshot (what changed since the last full one) is
/// written instead of a full one. Restoring takes the full snapshot and
/// then the changes, so changes are cumulative: each incremental snapshot
/// repeats the previous one's groups.
///
/// A full snapshot is due once more than half the state changed (cheaper
/// to restore one snapshot than a full one plus most of it again), or once
/// the incremental snapshots since the last full one would have written
/// more rows than the state has (a full snapshot taken early, while a first
/// large input was still coming in, would otherwise be followed by most of
/// the state written again at every checkpoint).
#[derive(Debug, Default, Clone)]
pub(crate) struct IncrementalRule {
    written_since_full: usize,
}

impl IncrementalRule {
    /// A full snapshot was taken.
    pub(crate) fn full_taken(&mut self) {
        self.written_since_full = 0;
    }

    /// Whether `changed` of `total` rows go in an incremental snapshot
    /// (counted as written when they do); false: take a full one.
    pub(crate) fn incremental(&mut self, changed: usize, total: usize) -> bool {
        if changed * 2 > total || self.written_since_full + changed > total {
            return false;
        }
        self.written_since_full += changed;
        true
    }
}

/// Groups, by dense id, changed since the last full snapshot.
#[derive(Debug, Default, Clone)]
pub(crate) struct ChangedGroups {
    changed: Vec<bool>,
    list: Vec<usize>,
    rule: IncrementalRule,
}

impl ChangedGroups {
    /// Group `g` changed (ids need not have been seen before).
    pub(crate) fn mark(&mut self, g: usize) {
        if g >= self.changed.len() {
            self.changed.resize(g + 1, false);
        }
        if !self.changed[g] {
            self.changed[g] = true;
            self.list.push(g);
        }
    }

    /// A full snapshot was taken: nothing has changed since.
    pub(crate) fn full_taken(&mut self) {
        for g in self.list.drain(..) {
            self.changed[g] = false;
        }
        self.rule.full_taken();
    }

    /// For an incremental snapshot of a state of `total` groups: the
    /// changed groups in id order, or None when a full snapshot is due.
    pub(crate) fn incremental(&mut self, total: usize) -> Option<Vec<usize>> {
        if !self.rule.incremental(self.list.len(), total) {
            return None;
        }
        let mut list = self.list.clone();
        list.sort_unstable();
        Some(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_until_half_changed_or_as_much_written_as_there_is() {
        let mut c = ChangedGroups::default();
        c.full_taken();
        for g in [7, 2, 7] {
            c.mark(g);
        }
        assert_eq!(c.incremental(10), Some(vec![2, 7]));
        // Cumulative: the same two again, and one more.
        c.mark(4);
        assert_eq!(c.incremental(10), Some(vec![2, 4, 7]));
        assert_eq!(c.incremental(10), Some(vec![2, 4, 7]));
        // 2 + 3 + 3 written, 3 more would pass 10: a full snapshot is due.
        assert_eq!(c.incremental(10), None);
        c.full_taken();
        assert_eq!(c.incremental(10), Some(vec![]));
        // More than half changed: full.
        for g in 0..6 {
            c.mark(g);
        }
        assert_eq!(c.incremental(10), None);
    }
}

//! Key groups: how keyed state is split over a job's parallel tasks, so
//! that a job restores at another parallelism than it was checkpointed at.
//!
//! A row's key hash picks one of [`KEY_GROUPS`] key groups (Flink's
//! max-parallelism), and key groups are assigned to the `P` tasks of an
//! operator in contiguous ranges: task `t` owns the groups `g` with
//! `g * P / KEY_GROUPS == t`. A task's snapshot therefore holds exactly the
//! keys of its range of groups. Restoring at `P'` tasks, task `t'` reads the
//! snapshots of the old tasks whose ranges overlap its own and keeps the
//! rows whose group is in its range; at the same parallelism it reads its
//! own snapshot as it is.
//!
//! The hash is DataFusion's (the one hash joins and repartitioning use),
//! which is not promised stable across releases. So a manifest records how
//! its state was split ([`routing`]: the number of groups and a fingerprint
//! of the hash function over fixed probe values); a checkpoint split any
//! other way (an older release's hash, or the modulo split used before key
//! groups) is redistributed on restore by reading every old task's
//! snapshot and keeping what routes here now.
//!
//! Snapshots name their key columns `k0`, `k1`, ... (in the order of the
//! operator's key expressions), which is how rows are routed on restore.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::error::{DataFusionError, Result};

/// Key groups per keyed operator: the most tasks its state can be split
/// over.
pub const KEY_GROUPS: usize = 128;

/// The hash every key goes through (exchange and restore alike).
fn random_state() -> RandomState {
    RandomState::with_seed(0)
}

/// Key hashes of `rows` rows: one per row; all 0 without key columns (a
/// global aggregate: one group).
pub fn hash_keys(cols: &[ArrayRef], rows: usize, out: &mut Vec<u64>) -> Result<()> {
    out.clear();
    out.resize(rows, 0);
    if !cols.is_empty() {
        create_hashes(cols, &random_state(), out)?;
    }
    Ok(())
}

/// The key group of a key hash.
pub fn key_group(hash: u64) -> usize {
    (hash % KEY_GROUPS as u64) as usize
}

/// The task (of `tasks`) that owns key group `group`.
pub fn task_of(group: usize, tasks: usize) -> usize {
    group * tasks.max(1) / KEY_GROUPS
}

/// The key groups task `task` of `tasks` owns (empty when there are more
/// tasks than groups and this one has none).
pub fn groups_of(task: usize, tasks: usize) -> Range<usize> {
    let tasks = tasks.max(1);
    // The least g with g * tasks >= task * KEY_GROUPS.
    let first = |t: usize| (t * KEY_GROUPS).div_ceil(tasks).min(KEY_GROUPS);
    first(task)..first(task + 1)
}

/// The task of each key group, for an exchange to `tasks` tasks.
#[derive(Debug, Clone)]
pub struct Assignment {
    tasks: usize,
    task_of_group: Vec<u32>,
}

impl Assignment {
    pub fn new(tasks: usize) -> Self {
        Self {
            tasks: tasks.max(1),
            task_of_group: (0..KEY_GROUPS).map(|g| task_of(g, tasks) as u32).collect(),
        }
    }

    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// The task of a row with key hash `hash`.
    pub fn task(&self, hash: u64) -> usize {
        self.task_of_group[key_group(hash)] as usize
    }

    /// Splits a batch by the tasks its rows' keys (`cols`, evaluated on
    /// the batch) go to; `hashes` is scratch space.
    pub fn split(
        &self,
        batch: &RecordBatch,
        cols: &[ArrayRef],
        hashes: &mut Vec<u64>,
    ) -> Result<Vec<(usize, RecordBatch)>> {
        hash_keys(cols, batch.num_rows(), hashes)?;
        let mut idx: Vec<Vec<u32>> = vec![Vec::new(); self.tasks];
        for (row, h) in hashes.iter().enumerate() {
            idx[self.task(*h)].push(row as u32);
        }
        let mut out = Vec::new();
        for (t, rows) in idx.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows))?
            };
            out.push((t, part));
        }
        Ok(out)
    }
}

/// How this build splits keyed state, as manifests record it:
/// `key-groups/<groups>/<fingerprint of the hash>`.
pub fn routing() -> &'static str {
    static ROUTING: OnceLock<String> = OnceLock::new();
    ROUTING.get_or_init(|| format!("key-groups/{KEY_GROUPS}/{:016x}", fingerprint()))
}

/// The hash of fixed probe values of the key types met most, folded into
/// one number: a different hash function gives a different fingerprint.
fn fingerprint() -> u64 {
    let probes: Vec<Vec<ArrayRef>> = vec![
        vec![Arc::new(Int64Array::from(vec![0, 1, -1, 42, i64::MIN, i64::MAX]))],
        vec![Arc::new(Int32Array::from(vec![0, 7, -7]))],
        vec![Arc::new(StringArray::from(vec!["", "a", "sluice", "ключ"]))],
        vec![Arc::new(Float64Array::from(vec![0.0, 1.5, -2.25]))],
        vec![
            Arc::new(StringArray::from(vec![Some("p1"), None])),
            Arc::new(Int64Array::from(vec![None, Some(3)])),
        ],
    ];
    let mut acc = 0xcbf2_9ce4_8422_2325u64;
    let mut hashes = Vec::new();
    for cols in probes {
        let rows = cols[0].len();
        // Probe values of these types always hash.
        if hash_keys(&cols, rows, &mut hashes).is_err() {
            return 0;
        }
        for h in &hashes {
            acc = (acc ^ h).wrapping_mul(0x0100_0000_01b3);
        }
    }
    acc
}

/// Which old tasks' snapshots one new task restores from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// Old task numbers to read.
    pub from: Vec<usize>,
    /// Keep only rows of these key groups (None: every row, the old task's
    /// state is exactly this task's).
    pub keep: Option<Range<usize>>,
}

/// What task `task` of `tasks` restores from a checkpoint taken with
/// `old_tasks` tasks and split as `recorded` says (None: before key groups).
pub fn restore_plan(recorded: Option<&str>, old_tasks: usize, tasks: usize, task: usize) -> RestorePlan {
    let same_split = recorded == Some(routing());
    if same_split && old_tasks == tasks {
        return RestorePlan {
            from: vec![task],
            keep: None,
        };
    }
    let mine = groups_of(task, tasks);
    let from = if same_split {
        (0..old_tasks)
            .filter(|&o| {
                let theirs = groups_of(o, old_tasks);
                theirs.start < mine.end && mine.start < theirs.end
            })
            .collect()
    } else {
        (0..old_tasks).collect()
    };
    RestorePlan {
        from,
        keep: Some(mine),
    }
}

/// The state task `task` of `tasks` restores: the old tasks' snapshots
/// (`read(old task)`) that [`restore_plan`] names, each kept to this
/// task's key groups. `keys`: how many key columns (`k0`...) snapshots have.
pub fn gather_state(
    recorded: Option<&str>,
    old_tasks: usize,
    tasks: usize,
    task: usize,
    keys: usize,
    mut read: impl FnMut(usize) -> crate::error::Result<Vec<RecordBatch>>,
) -> crate::error::Result<Vec<RecordBatch>> {
    let plan = restore_plan(recorded, old_tasks, tasks, task);
    let mut out = Vec::new();
    for old in plan.from {
        let part = read(old)?;
        match &plan.keep {
            None => out.extend(part),
            Some(groups) => {
                for b in part {
                    out.push(keep_groups(&b, keys, groups.clone())?);
                }
            }
        }
    }
    Ok(out)
}

/// The rows of a snapshot batch whose key (columns `k0`..`k{keys-1}`) falls
/// in `groups`. A batch without rows is kept as it is (its schema metadata,
/// a watermark, still counts).
pub fn keep_groups(batch: &RecordBatch, keys: usize, groups: Range<usize>) -> Result<RecordBatch> {
    if batch.num_rows() == 0 {
        return Ok(batch.clone());
    }
    let schema = batch.schema();
    let cols = (0..keys)
        .map(|i| {
            let name = crate::streaming::state::key_column(i);
            schema
                .index_of(&name)
                .map(|at| batch.column(at).clone())
                .map_err(|_| {
                    DataFusionError::Internal(format!(
                        "a keyed snapshot's rows have no key column {name}: it cannot be split over another number of tasks"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut hashes = Vec::new();
    hash_keys(&cols, batch.num_rows(), &mut hashes)?;
    let mask: BooleanArray = hashes
        .iter()
        .map(|h| Some(groups.contains(&key_group(*h))))
        .collect();
    if mask.true_count() == batch.num_rows() {
        return Ok(batch.clone());
    }
    if batch.num_columns() == 0 {
        // Rows without columns (a count over a global group): keep the count.
        return Ok(RecordBatch::try_new_with_options(
            schema,
            vec![],
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(mask.true_count())),
        )?);
    }
    Ok(filter_record_batch(batch, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn ranges_cover_every_group_once_and_agree_with_task_of() {
        for tasks in 1..=KEY_GROUPS + 3 {
            let mut next = 0;
            for t in 0..tasks {
                let r = groups_of(t, tasks);
                assert_eq!(
                    r.start,
                    next,
                    "{tasks} tasks: task {t} starts where {} ended",
                    t.max(1) - 1
                );
                for g in r.clone() {
                    assert_eq!(task_of(g, tasks), t, "{tasks} tasks: group {g}");
                }
                next = r.end;
            }
            assert_eq!(next, KEY_GROUPS, "{tasks} tasks cover every group");
        }
        // Balanced: sizes differ by at most one.
        let sizes: Vec<usize> = (0..3).map(|t| groups_of(t, 3).len()).collect();
        assert_eq!(sizes, [43, 43, 42]);
    }

    #[test]
    fn the_recorded_routing_names_groups_and_a_stable_fingerprint() {
        assert!(routing().starts_with(&format!("key-groups/{KEY_GROUPS}/")));
        assert_eq!(fingerprint(), fingerprint());
        assert_ne!(fingerprint(), 0);
    }

    #[test]
    fn restore_plans() {
        let r = Some(routing());
        // Same split: the task's own snapshot, as it is.
        assert_eq!(
            restore_plan(r, 2, 2, 1),
            RestorePlan {
                from: vec![1],
                keep: None
            }
        );
        // 2 -> 1: both old tasks.
        assert_eq!(restore_plan(r, 2, 1, 0).from, vec![0, 1]);
        // 2 -> 3: the middle task overlaps both old ranges, the others one.
        assert_eq!(restore_plan(r, 2, 3, 0).from, vec![0]);
        assert_eq!(restore_plan(r, 2, 3, 1).from, vec![0, 1]);
        assert_eq!(restore_plan(r, 2, 3, 2).from, vec![1]);
        assert_eq!(restore_plan(r, 2, 3, 2).keep, Some(groups_of(2, 3)));
        // Another split (before key groups, another hash): everything,
        // filtered, even at the same parallelism.
        for recorded in [None, Some("key-groups/128/0000000000000001")] {
            let p = restore_plan(recorded, 2, 2, 0);
            assert_eq!(p.from, vec![0, 1]);
            assert_eq!(p.keep, Some(groups_of(0, 2)));
        }
    }

    fn snapshot(keys: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k0", DataType::Int64, true),
            Field::new("rows", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(Int64Array::from(vec![1; keys.len()])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn split_and_keep_groups_route_every_key_to_one_task() {
        let keys: Vec<i64> = (0..1000).collect();
        let batch = snapshot(&keys);
        for tasks in [1, 2, 3, 7] {
            let a = Assignment::new(tasks);
            let mut scratch = Vec::new();
            let parts = a.split(&batch, &[batch.column(0).clone()], &mut scratch).unwrap();
            let mut seen = 0;
            for (t, part) in parts {
                // What the exchange sent task t is exactly what a restore
                // at this parallelism keeps for it.
                let kept = keep_groups(&batch, 1, groups_of(t, tasks)).unwrap();
                assert_eq!(kept, part, "{tasks} tasks, task {t}");
                seen += part.num_rows();
            }
            assert_eq!(seen, 1000);
        }
        // Ten keys over 3 tasks: not all in one (the hash spreads them).
        let a = Assignment::new(3);
        let mut scratch = Vec::new();
        let small = snapshot(&(0..10).collect::<Vec<_>>());
        assert!(
            a.split(&small, &[small.column(0).clone()], &mut scratch)
                .unwrap()
                .len()
                > 1
        );
        // The operator tests' keys a..e reach both of two tasks, so their
        // rescale cases do split state.
        let text: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"]));
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let b = RecordBatch::try_new(schema, vec![text.clone()]).unwrap();
        assert_eq!(
            Assignment::new(2).split(&b, &[text], &mut scratch).unwrap().len(),
            2
        );
    }

    #[test]
    fn snapshots_without_key_columns_are_refused_unless_empty() {
        let schema = Arc::new(Schema::new(vec![Field::new("rows", DataType::Int64, true)]));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let e = keep_groups(&b, 1, 0..64).unwrap_err().to_string();
        assert!(e.contains("no key column k0"), "{e}");
        let empty = RecordBatch::new_empty(schema);
        assert_eq!(keep_groups(&empty, 1, 0..64).unwrap().num_rows(), 0);
        // Without keys every row is in group 0.
        assert_eq!(keep_groups(&b, 0, 0..64).unwrap().num_rows(), 1);
        assert_eq!(keep_groups(&b, 0, 64..128).unwrap().num_rows(), 0);
    }
}

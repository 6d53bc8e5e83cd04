use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column};

use super::*;
use crate::streaming::operators::tests::{Rng, Step, net, recovery_matches_inputs};

fn side_schema(prefix: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(format!("{prefix}k"), DataType::Int64, true),
        Field::new(format!("{prefix}s"), DataType::Utf8, true),
        Field::new(format!("{prefix}v"), DataType::Int64, true),
    ]))
}

fn output_schema(kind: JoinKind) -> SchemaRef {
    let sides: &[&str] = match kind {
        JoinKind::LeftSemi | JoinKind::LeftAnti => &["l"],
        JoinKind::RightSemi | JoinKind::RightAnti => &["r"],
        _ => &["l", "r"],
    };
    let mut fields: Vec<Field> = Vec::new();
    for p in sides {
        fields.extend(side_schema(p).fields().iter().map(|f| f.as_ref().clone()));
    }
    Arc::new(Schema::new(fields))
}

fn key(i: usize) -> Vec<Arc<dyn PhysicalExpr>> {
    vec![Arc::new(Column::new(if i == 0 { "lk" } else { "rk" }, 0))]
}

/// `l.v < r.v`, over a left row followed by a right row.
fn less() -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(
        Arc::new(Column::new("lv", 2)),
        Operator::Lt,
        Arc::new(Column::new("rv", 5)),
    ))
}

fn make(kind: JoinKind, updating: [bool; 2], filter: Option<Arc<dyn PhysicalExpr>>) -> StreamingJoin {
    let input = |i: usize| JoinInput {
        schema: side_schema(if i == 0 { "l" } else { "r" }),
        keys: key(i),
        updating: updating[i],
    };
    StreamingJoin::new(kind, input(0), input(1), filter, output_schema(kind)).unwrap()
}

type Row = (Option<i64>, String, i64);

/// Rows of one input as a batch (with the op column when `ops` is given).
fn batch(side: usize, rows: &[Row], ops: Option<&[i8]>) -> RecordBatch {
    let schema = side_schema(if side == 0 { "l" } else { "r" });
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
    ];
    let schema = match ops {
        Some(ops) => {
            cols.push(Arc::new(Int8Array::from(ops.to_vec())));
            with_op_column(&schema)
        }
        None => schema,
    };
    RecordBatch::try_new(schema, cols).unwrap()
}

fn cells(r: Option<&Row>) -> String {
    match r {
        Some((k, s, v)) => format!("{}|{s}|{v}", k.map_or("NULL".to_string(), |k| k.to_string())),
        None => "NULL|NULL|NULL".into(),
    }
}

/// The join of two multisets of rows, row by row as SQL defines it.
fn nested_loop(kind: JoinKind, left: &[Row], right: &[Row], less: bool) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let matches = |l: &Row, r: &Row| l.0.is_some() && l.0 == r.0 && (!less || l.2 < r.2);
    let rows_of = |mine: &[Row], theirs: &[Row], mine_left: bool, want_match: bool| {
        let mut out = BTreeMap::new();
        for m in mine {
            let any = theirs
                .iter()
                .any(|t| if mine_left { matches(m, t) } else { matches(t, m) });
            if any == want_match {
                *out.entry(cells(Some(m))).or_default() += 1;
            }
        }
        out
    };
    match kind {
        JoinKind::LeftSemi => return rows_of(left, right, true, true),
        JoinKind::LeftAnti => return rows_of(left, right, true, false),
        JoinKind::RightSemi => return rows_of(right, left, false, true),
        JoinKind::RightAnti => return rows_of(right, left, false, false),
        _ => {}
    }
    for l in left {
        let mut any = false;
        for r in right.iter().filter(|r| matches(l, r)) {
            any = true;
            *out.entry(format!("{}|{}", cells(Some(l)), cells(Some(r))))
                .or_default() += 1;
        }
        if !any && kind.preserves(0) {
            *out.entry(format!("{}|{}", cells(Some(l)), cells(None)))
                .or_default() += 1;
        }
    }
    if kind.preserves(1) {
        for r in right {
            if !left.iter().any(|l| matches(l, r)) {
                *out.entry(format!("{}|{}", cells(None), cells(Some(r))))
                    .or_default() += 1;
            }
        }
    }
    out
}

/// Random inserts and deletes on both inputs, in batches of one input at a
/// time; after every batch the join's output so far, netted, must equal
/// the join of what both inputs hold.
#[test]
fn every_kind_nets_to_the_join_of_what_the_inputs_hold() {
    let mut rng = Rng(0x5eed_1234_abcd);
    for kind in [
        JoinKind::Inner,
        JoinKind::Left,
        JoinKind::Right,
        JoinKind::Full,
        JoinKind::LeftSemi,
        JoinKind::LeftAnti,
        JoinKind::RightSemi,
        JoinKind::RightAnti,
    ] {
        for with_filter in [false, true] {
            for updating in [[false, false], [true, false], [false, true], [true, true]] {
                let mut op = make(kind, updating, with_filter.then(less));
                let mut held: [Vec<Row>; 2] = [vec![], vec![]];
                let mut got = BTreeMap::new();
                for step in 0..120 {
                    let side = rng.below(2) as usize;
                    let (mut rows, mut ops) = (Vec::new(), Vec::new());
                    for _ in 0..1 + rng.below(6) {
                        if updating[side] && !held[side].is_empty() && rng.below(3) == 0 {
                            let at = rng.below(held[side].len() as u64) as usize;
                            rows.push(held[side].swap_remove(at));
                            ops.push(-1i8);
                        } else {
                            let k = (rng.below(20) > 0).then(|| rng.below(5) as i64);
                            let row = (
                                k,
                                ["x", "y"][rng.below(2) as usize].to_string(),
                                rng.below(6) as i64,
                            );
                            held[side].push(row.clone());
                            rows.push(row);
                            ops.push(1);
                        }
                    }
                    let b = batch(side, &rows, updating[side].then_some(&ops[..]));
                    let mut out = vec![];
                    op.on_batch(side, b, &mut out).unwrap();
                    op.on_watermark(i64::MIN, &mut out).unwrap();
                    for b in &out {
                        assert!(b.num_rows() <= PAIRS_PER_BATCH);
                    }
                    net(&out, op.is_updating(), &mut got);
                    let want = nested_loop(kind, &held[0], &held[1], with_filter);
                    assert_eq!(
                        got, want,
                        "{kind} join, filter {with_filter}, updating {updating:?}, after step {step}"
                    );
                }
                assert_eq!(op.unmatched_deletes(), 0);
                let held_rows = held[0].iter().filter(|r| r.0.is_some()).count()
                    + held[1].iter().filter(|r| r.0.is_some()).count();
                let (distinct, bytes) = op.state_size();
                assert!(distinct <= held_rows && (held_rows == 0 || distinct > 0 && bytes > 0));
            }
        }
    }
}

#[test]
fn an_inner_join_of_append_only_inputs_is_append_only_and_outer_joins_update() {
    assert!(!make(JoinKind::Inner, [false, false], None).is_updating());
    assert!(!make(JoinKind::LeftSemi, [false, false], None).is_updating());
    assert!(make(JoinKind::LeftAnti, [false, false], None).is_updating());
    assert!(make(JoinKind::Inner, [true, false], None).is_updating());
    assert!(make(JoinKind::Left, [false, false], None).is_updating());
}

#[test]
fn a_row_matching_very_many_goes_out_in_bounded_batches() {
    let mut op = make(JoinKind::Inner, [false, false], None);
    let many: Vec<Row> = (0..20_000).map(|i| (Some(7), "x".to_string(), i)).collect();
    let mut out = vec![];
    op.on_batch(0, batch(0, &many, None), &mut out).unwrap();
    assert!(out.is_empty());
    op.on_batch(1, batch(1, &[(Some(7), "y".into(), 1)], None), &mut out)
        .unwrap();
    assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 20_000);
    assert!(out.len() >= 3 && out.iter().all(|b| b.num_rows() <= PAIRS_PER_BATCH));
}

#[test]
fn a_delete_of_a_row_never_held_is_dropped_and_counted() {
    let mut op = make(JoinKind::Full, [true, false], None);
    let mut out = vec![];
    op.on_batch(1, batch(1, &[(Some(1), "r".into(), 1)], None), &mut out)
        .unwrap();
    out.clear();
    op.on_batch(0, batch(0, &[(Some(1), "l".into(), 1)], Some(&[-1])), &mut out)
        .unwrap();
    assert!(out.is_empty(), "nothing to retract");
    assert_eq!(op.unmatched_deletes(), 1);
}

/// Snapshots restore into one task and split over other numbers of tasks,
/// at every cut, and the output is the uninterrupted run's.
#[test]
fn joins_restored_and_rescaled_continue_like_the_uninterrupted_run() {
    let r = |k: i64, s: &str, v: i64| (Some(k), s.to_string(), v);
    let steps: Vec<Step> = vec![
        (
            0,
            batch(0, &[r(1, "a", 1), r(2, "b", 5), r(3, "c", 2)], Some(&[1, 1, 1])),
            0,
        ),
        (1, batch(1, &[r(1, "p", 3), r(2, "q", 1), r(9, "z", 9)], None), 1),
        (0, batch(0, &[r(1, "a", 1), r(4, "d", 0)], Some(&[-1, 1])), 2),
        (1, batch(1, &[r(3, "s", 7), r(4, "t", 2), r(1, "u", 4)], None), 3),
        (
            0,
            batch(
                0,
                &[r(1, "e", 2), r(3, "c", 2), (None, "n".into(), 1)],
                Some(&[1, -1, 1]),
            ),
            4,
        ),
        (1, batch(1, &[r(2, "v", 9), r(5, "w", 1)], None), 5),
        (0, batch(0, &[r(5, "f", 0), r(2, "b", 5)], Some(&[1, -1])), 6),
    ];
    for kind in [
        JoinKind::Inner,
        JoinKind::Left,
        JoinKind::Full,
        JoinKind::LeftSemi,
        JoinKind::RightAnti,
    ] {
        for cut in 1..steps.len() - 1 {
            recovery_matches_inputs(
                || Box::new(make(kind, [true, false], Some(less()))),
                &[key(0), key(1)],
                &steps,
                cut,
            );
        }
    }
}

/// An incremental snapshot holds only the keys changed since the full
/// one (a key emptied since says so), and restoring both gives the state
/// a full snapshot would.
#[test]
fn incremental_snapshots_restore_like_a_full_one() {
    let rows: Vec<Row> = (0..40).map(|i| (Some(i), "x".to_string(), i)).collect();
    let mut op = make(JoinKind::Left, [true, false], None);
    let mut out = vec![];
    op.on_batch(0, batch(0, &rows, Some(&[1; 40])), &mut out).unwrap();
    let full = super::super::tests::through_ipc(op.snapshot().unwrap());
    // Key 3 emptied, key 5 gains a row, key 100 is new, a right row for key 7.
    op.on_batch(
        0,
        batch(
            0,
            &[
                rows[3].clone(),
                (Some(5), "y".into(), 0),
                (Some(100), "z".into(), 1),
            ],
            Some(&[-1, 1, 1]),
        ),
        &mut out,
    )
    .unwrap();
    op.on_batch(1, batch(1, &[(Some(7), "r".into(), 1)], None), &mut out)
        .unwrap();
    let changes = op
        .snapshot_changes()
        .unwrap()
        .expect("few keys changed: incremental");
    // Left: markers for keys 3, 5, 100 and 7 (its match count moved), rows
    // 5, 5, 100, 7; right: key 7's marker and row.
    assert_eq!(changes.iter().map(RecordBatch::num_rows).sum::<usize>(), 8 + 2);
    let changes = super::super::tests::through_ipc(changes);
    let mut restored = make(JoinKind::Left, [true, false], None);
    restored
        .restore(full.into_iter().chain(changes).collect())
        .unwrap();
    assert_eq!(restored.state_size().0, op.state_size().0);
    let probe = |op: &mut StreamingJoin| {
        let mut out = vec![];
        let keys: Vec<Row> = [3, 5, 7, 100].iter().map(|k| (Some(*k), "p".into(), 9)).collect();
        op.on_batch(1, batch(1, &keys, None), &mut out).unwrap();
        let mut got = BTreeMap::new();
        net(&out, true, &mut got);
        got
    };
    assert_eq!(probe(&mut restored), probe(&mut op));
}

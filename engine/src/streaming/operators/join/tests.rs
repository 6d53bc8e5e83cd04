use std::collections::BTreeMap;

use arrow::array::{Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::TimeUnit;
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
    let input = |i: usize| JoinInput::new(side_schema(if i == 0 { "l" } else { "r" }), key(i), updating[i]);
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

/// Batches with their timestamps as numbers (as the expected rows print).
fn as_numbers(out: &[RecordBatch]) -> Vec<RecordBatch> {
    out.iter()
        .map(|b| {
            let cols = b.columns().iter().map(|c| match c.data_type() {
                DataType::Timestamp(..) => cast(c, &DataType::Int64).unwrap(),
                _ => c.clone(),
            });
            RecordBatch::try_from_iter(b.schema().fields().iter().map(|f| f.name().clone()).zip(cols))
                .unwrap()
        })
        .collect()
}

/// Auctions (key, start, expires) and bids (key, time), as in Nexmark.
fn interval_schemas() -> [SchemaRef; 2] {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, None);
    [
        Arc::new(Schema::new(vec![
            Field::new("ak", DataType::Int64, true),
            Field::new("at", ts(), true),
            Field::new("ae", ts(), true),
        ])),
        Arc::new(Schema::new(vec![
            Field::new("bk", DataType::Int64, true),
            Field::new("bt", ts(), true),
        ])),
    ]
}

/// `b.t BETWEEN a.t AND a.expires`: auctions held until the bids'
/// watermark passes their expiry, bids until the auctions' watermark
/// passes their time.
fn interval_join(kind: JoinKind) -> StreamingJoin {
    let [a, b] = interval_schemas();
    let col = |n: &str, i: usize| Arc::new(Column::new(n, i)) as Arc<dyn PhysicalExpr>;
    let and = Arc::new(BinaryExpr::new(
        Arc::new(BinaryExpr::new(col("at", 1), Operator::LtEq, col("bt", 4))),
        Operator::And,
        Arc::new(BinaryExpr::new(col("bt", 4), Operator::LtEq, col("ae", 2))),
    ));
    let mut left = JoinInput::new(a.clone(), vec![col("ak", 0)], false);
    left.time = Some(col("at", 1));
    left.expire = Some(col("ae", 2));
    let mut right = JoinInput::new(b.clone(), vec![col("bk", 0)], false);
    right.time = Some(col("bt", 1));
    right.expire = Some(col("bt", 1));
    let mut fields: Vec<Field> = a.fields().iter().map(|f| f.as_ref().clone()).collect();
    if kind.emits_pairs() {
        fields.extend(b.fields().iter().map(|f| f.as_ref().clone()));
    } else if matches!(kind, JoinKind::RightSemi | JoinKind::RightAnti) {
        fields = b.fields().iter().map(|f| f.as_ref().clone()).collect();
    }
    StreamingJoin::new(kind, left, right, Some(and), Arc::new(Schema::new(fields))).unwrap()
}

/// Auctions and bids in rough time order, some late; each input's
/// watermark trails its largest time. After every batch the join's output,
/// netted, equals the join of the rows that were not late (expiry drops
/// only rows nothing to come can match), late rows are counted, held state
/// stays far below what came in, and a restore halfway (its watermarks
/// sent again, as sources do) changes nothing.
#[test]
fn an_interval_join_drops_what_can_match_nothing_more_and_nets_to_the_join() {
    use arrow::array::TimestampMicrosecondArray;
    type Auction = (i64, i64, i64);
    let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v)) as ArrayRef;
    let cells = |v: &[i64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("|");
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
        let mut rng = Rng(0x1a7e_5eed ^ kind as u64);
        // Outer and anti joins whose preserved inputs both expire emit a
        // row matching nothing when it expires: append-only.
        let deferred = kind.retracts();
        let mut last_want = BTreeMap::new();
        let [sa, sb] = interval_schemas();
        let mut op = interval_join(kind);
        let (mut auctions, mut bids): (Vec<Auction>, Vec<(i64, i64)>) = (vec![], vec![]);
        let (mut late, mut counted, mut max_t, mut wm) = (0u64, 0u64, [0i64; 2], [i64::MIN; 2]);
        let (mut out, mut max_held, mut came) = (vec![], 0usize, 0usize);
        let steps = 400;
        for step in 0..steps {
            if step == steps / 2 {
                let state = super::super::tests::through_ipc(op.snapshot().unwrap());
                counted += op.take_late();
                op = interval_join(kind);
                op.restore(state).unwrap();
                for (side, &w) in wm.iter().enumerate() {
                    if w > i64::MIN {
                        op.on_input_watermark(side, w, &mut out).unwrap();
                    }
                }
            }
            let side = rng.below(2) as usize;
            let clock = step as i64 * 10;
            let n = 1 + rng.below(4) as usize;
            // Times up to 30 behind the clock: late when behind the watermark.
            let t: Vec<i64> = (0..n).map(|_| clock - rng.below(30) as i64).collect();
            let k: Vec<i64> = (0..n).map(|_| rng.below(6) as i64).collect();
            for &t in &t {
                if t < wm[side] {
                    late += 1;
                }
            }
            came += n;
            let b = if side == 0 {
                let e: Vec<i64> = t.iter().map(|t| t + rng.below(80) as i64).collect();
                for i in 0..n {
                    if t[i] >= wm[0] {
                        auctions.push((k[i], t[i], e[i]));
                    }
                }
                RecordBatch::try_new(
                    sa.clone(),
                    vec![Arc::new(Int64Array::from(k)), ts(t.clone()), ts(e)],
                )
            } else {
                for i in 0..n {
                    if t[i] >= wm[1] {
                        bids.push((k[i], t[i]));
                    }
                }
                RecordBatch::try_new(sb.clone(), vec![Arc::new(Int64Array::from(k)), ts(t.clone())])
            }
            .unwrap();
            op.on_batch(side, b, &mut out).unwrap();
            max_t[side] = max_t[side].max(*t.iter().max().unwrap());
            // The watermark trails the largest time by 10.
            if rng.below(2) == 0 && max_t[side] - 10 > wm[side] {
                wm[side] = max_t[side] - 10;
                op.on_input_watermark(side, wm[side], &mut out).unwrap();
                op.on_watermark(wm[0].min(wm[1]), &mut out).unwrap();
            }
            max_held = max_held.max(op.state_size().0);
            // The expected join of the rows that were not late.
            let m = |a: &Auction, b: &(i64, i64)| a.0 == b.0 && a.1 <= b.1 && b.1 <= a.2;
            let mut want: BTreeMap<String, i64> = BTreeMap::new();
            let a_cells = |a: &Auction| cells(&[a.0, a.1, a.2]);
            let b_cells = |b: &(i64, i64)| cells(&[b.0, b.1]);
            let mut add = |s: String| *want.entry(s).or_default() += 1;
            for a in &auctions {
                let hits: Vec<_> = bids.iter().filter(|b| m(a, b)).collect();
                match kind {
                    JoinKind::LeftSemi if !hits.is_empty() => add(a_cells(a)),
                    JoinKind::LeftAnti if hits.is_empty() => add(a_cells(a)),
                    JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full => {
                        for b in &hits {
                            add(format!("{}|{}", a_cells(a), b_cells(b)));
                        }
                        if hits.is_empty() && kind.preserves(0) {
                            add(format!("{}|NULL|NULL", a_cells(a)));
                        }
                    }
                    _ => {}
                }
            }
            for b in &bids {
                let hit = auctions.iter().any(|a| m(a, b));
                match kind {
                    JoinKind::RightSemi if hit => add(b_cells(b)),
                    JoinKind::RightAnti if !hit => add(b_cells(b)),
                    JoinKind::Right | JoinKind::Full if !hit => add(format!("NULL|NULL|NULL|{}", b_cells(b))),
                    _ => {}
                }
            }
            let mut got = BTreeMap::new();
            net(&as_numbers(&out), op.is_updating(), &mut got);
            if deferred {
                // Rows matching nothing wait for their expiry: what went
                // out is part of the join, never more.
                for (row, n) in &got {
                    assert!(
                        *n > 0 && want.get(row).is_some_and(|w| n <= w),
                        "{kind} after step {step}: {row}"
                    );
                }
            } else {
                assert_eq!(got, want, "{kind} after step {step}");
            }
            last_want = want;
        }
        assert_eq!(counted + op.take_late(), late, "{kind}: late rows counted");
        assert!(late > 0, "{kind}: the run has late rows");
        assert!(
            max_held * 5 < came,
            "{kind}: held at most {max_held} rows of {came}: expiry keeps state bounded"
        );
        // Both watermarks at the end of time: nothing can match any more,
        // every deferred row has gone out.
        op.on_input_watermark(0, i64::MAX, &mut out).unwrap();
        op.on_input_watermark(1, i64::MAX, &mut out).unwrap();
        assert_eq!(op.state_size().0, 0, "{kind}: all expired");
        assert!(!op.is_updating(), "{kind}: append-only");
        let mut got = BTreeMap::new();
        net(&as_numbers(&out), false, &mut got);
        assert_eq!(got, last_want, "{kind} at the end");
        let [a, b] = op.expired();
        assert!(a > 0 && b > 0, "{kind}: both inputs expired rows");
    }
}

/// With `streaming.state_ttl`, rows are evicted the TTL after they came
/// (processing time): what they produced stands, later rows no longer meet
/// them, SHOW JOBS counts them, and a restore gives the rows it holds a
/// fresh TTL.
#[test]
fn rows_past_the_state_ttl_are_evicted() {
    let ttl = std::time::Duration::from_micros(10);
    let r = |k: i64, s: &str, v: i64| (Some(k), s.to_string(), v);
    let mut op = make(JoinKind::Inner, [false, false], None).with_ttl(Some(ttl));
    let mut out = vec![];
    op.set_now(0);
    op.on_batch(0, batch(0, &[r(1, "a", 1), r(2, "b", 2)], None), &mut out)
        .unwrap();
    op.set_now(5);
    op.on_batch(1, batch(1, &[r(1, "p", 3)], None), &mut out).unwrap();
    op.on_watermark(i64::MIN, &mut out).unwrap();
    assert_eq!(op.state_size().0, 3, "nothing is 10us old yet");
    // At 12 the left rows (from 0) are past the TTL, the right one (5) not.
    op.set_now(12);
    op.on_watermark(i64::MIN, &mut out).unwrap();
    assert_eq!((op.state_size().0, op.expired()), (1, [2, 0]));
    assert!(
        op.detail().unwrap().contains("left: 0 rows held, 2 expired"),
        "{:?}",
        op.detail()
    );
    // A right row for key 2 meets nothing now; a left row for key 1 meets
    // the right row still held.
    op.on_batch(1, batch(1, &[r(2, "q", 4)], None), &mut out).unwrap();
    op.on_batch(0, batch(0, &[r(1, "c", 5)], None), &mut out).unwrap();
    let mut got = BTreeMap::new();
    net(&out, false, &mut got);
    let want: BTreeMap<String, i64> = [("1|a|1|1|p|3".to_string(), 1), ("1|c|5|1|p|3".to_string(), 1)].into();
    assert_eq!(got, want);
    // Restored at 100: the rows held get until 110.
    let state = super::super::tests::through_ipc(op.snapshot().unwrap());
    let mut back = make(JoinKind::Inner, [false, false], None).with_ttl(Some(ttl));
    back.set_now(100);
    back.restore(state).unwrap();
    assert_eq!(back.state_size().0, 3);
    back.set_now(109);
    back.on_watermark(i64::MIN, &mut out).unwrap();
    assert_eq!(back.state_size().0, 3);
    back.set_now(111);
    back.on_watermark(i64::MIN, &mut out).unwrap();
    assert_eq!(back.state_size().0, 0);
}

#[test]
fn a_join_with_a_watermark_lag_passes_its_watermark_on_behind_by_it() {
    // Without a lag the watermark goes on as it came; with one it trails
    // by it, and the end of input stays the end.
    let plain = interval_join(JoinKind::Inner);
    assert_eq!(plain.output_watermark(5_000_000), 5_000_000);
    let lagging = interval_join(JoinKind::Inner).with_watermark_lag(1_000_000);
    assert_eq!(lagging.output_watermark(5_000_000), 4_000_000);
    assert_eq!(lagging.output_watermark(i64::MIN), i64::MIN);
    assert_eq!(lagging.output_watermark(i64::MAX), i64::MAX);
}

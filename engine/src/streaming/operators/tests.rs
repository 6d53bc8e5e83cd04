//! Tests across operators: restore-equals-uninterrupted for each stateful
//! operator, and the column-wise GROUP BY against the boxed one.

use super::*;
use arrow::array::{Int64Array, StringArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::physical_expr::expressions::col;
use std::collections::BTreeMap;

fn input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn rows(k: &[&str], v: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        input(),
        vec![
            Arc::new(StringArray::from(k.to_vec())),
            Arc::new(Int64Array::from(v.to_vec())),
        ],
    )
    .unwrap()
}

fn sum_agg(schema: &SchemaRef) -> AggExpr {
    use datafusion::functions_aggregate::sum::sum_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    let func = AggregateExprBuilder::new(sum_udaf(), vec![col("v", schema).unwrap()])
        .schema(schema.clone())
        .alias("s")
        .build()
        .unwrap();
    AggExpr {
        func: Arc::new(func),
        filter: None,
    }
}

pub(super) fn pretty(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

/// Snapshot, round trip through an Arrow IPC file as a checkpoint
/// does, restore into a fresh operator.
pub(super) fn through_ipc(state: Vec<RecordBatch>) -> Vec<RecordBatch> {
    if state.is_empty() {
        return state;
    }
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &state[0].schema()).unwrap();
        for b in &state {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }
    arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(buf), None)
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap()
}

/// Runs `steps` (a batch, then a watermark) through one operator, and
/// through a second that is checkpointed after step `cut` and restored
/// into a third: both must emit the same rows.
///
/// Then the same across parallelisms: `from` tasks fed as the exchange
/// feeds them (rows routed by `keys` to key groups), snapshotted after
/// step `cut`, restored as the runtime restores into `to` tasks, must
/// together emit the same rows as the one uninterrupted operator.
fn recovery_matches<F: Fn() -> Box<dyn KeyedOperator>>(
    make: F,
    keys: &[Arc<dyn PhysicalExpr>],
    steps: &[(RecordBatch, i64)],
    cut: usize,
) {
    let steps: Vec<Step> = steps.iter().map(|(b, w)| (0, b.clone(), *w)).collect();
    recovery_matches_inputs(make, &[keys.to_vec()], &steps, cut);
}

/// A small deterministic generator (xorshift) for randomized operator tests.
pub(super) struct Rng(pub u64);

impl Rng {
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Output rows as `a|b|..` lines with their net multiplicity (inserts
/// minus deletes; `updating`: the last column is the op column); rows that
/// net to zero are dropped.
pub(super) fn net(out: &[RecordBatch], updating: bool, into: &mut BTreeMap<String, i64>) {
    let opts = FormatOptions::default().with_null("NULL");
    for b in out {
        let width = if updating {
            b.num_columns() - 1
        } else {
            b.num_columns()
        };
        let fmts: Vec<ArrayFormatter> = b.columns()[..width]
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        let ops = updating.then(|| {
            b.column(width)
                .as_any()
                .downcast_ref::<Int8Array>()
                .unwrap()
                .clone()
        });
        for r in 0..b.num_rows() {
            let line = fmts
                .iter()
                .map(|f| f.value(r).to_string())
                .collect::<Vec<_>>()
                .join("|");
            *into.entry(line).or_default() += ops.as_ref().map_or(1, |o| o.value(r) as i64);
        }
    }
    into.retain(|_, n| *n != 0);
}

/// A step of an operator with several inputs: a batch on an input, then a
/// watermark.
pub(super) type Step = (usize, RecordBatch, i64);

/// [`recovery_matches`] for an operator with several inputs: `keys[i]`
/// are input `i`'s key expressions.
pub(super) fn recovery_matches_inputs<F: Fn() -> Box<dyn KeyedOperator>>(
    make: F,
    keys: &[Vec<Arc<dyn PhysicalExpr>>],
    steps: &[Step],
    cut: usize,
) {
    recovery_in_one_task_matches(&make, steps, cut);
    let routing = crate::streaming::keygroups::routing();
    for (from, to, recorded) in [
        (2, 1, Some(routing)),
        (2, 3, Some(routing)),
        (3, 2, Some(routing)),
        (1, 4, Some(routing)),
        // A checkpoint split another way (before key groups): everything
        // is read and routed again, even at the same parallelism.
        (2, 2, None),
    ] {
        rescale_matches(&make, keys, steps, cut, from, to, recorded);
    }
}

/// Rows of batches as trimmed cells, sorted: what parallel tasks emit
/// together, whatever the order among tasks.
pub(super) fn row_multiset(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        let text = pretty(std::slice::from_ref(b));
        for line in text.lines().skip(3).filter(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

fn rescale_matches<F: Fn() -> Box<dyn KeyedOperator>>(
    make: &F,
    keys: &[Vec<Arc<dyn PhysicalExpr>>],
    steps: &[Step],
    cut: usize,
    from: usize,
    to: usize,
    recorded: Option<&str>,
) {
    use crate::streaming::keygroups::{Assignment, gather_state};
    let mut straight = make();
    let mut expected = vec![];
    for (i, b, w) in steps {
        straight.on_batch(*i, b.clone(), &mut expected).unwrap();
        straight.on_watermark(*w, &mut expected).unwrap();
    }
    let run = |ops: &mut [Box<dyn KeyedOperator>], steps: &[Step], got: &mut Vec<RecordBatch>| {
        let assignment = Assignment::new(ops.len());
        let mut hashes = Vec::new();
        for (i, b, w) in steps {
            let cols: Vec<ArrayRef> = keys[*i].iter().map(|k| eval(k, b).unwrap()).collect();
            for (t, part) in assignment.split(b, &cols, &mut hashes).unwrap() {
                ops[t].on_batch(*i, part, got).unwrap();
            }
            for op in ops.iter_mut() {
                op.on_watermark(*w, got).unwrap();
            }
        }
    };
    let mut got = vec![];
    let mut before: Vec<Box<dyn KeyedOperator>> = (0..from).map(|_| make()).collect();
    run(&mut before, &steps[..cut], &mut got);
    let states: Vec<Vec<RecordBatch>> = before
        .iter_mut()
        .map(|op| through_ipc(op.snapshot().unwrap()))
        .collect();
    let mut after: Vec<Box<dyn KeyedOperator>> = (0..to).map(|_| make()).collect();
    let n_keys = keys.first().map_or(0, Vec::len);
    for (t, op) in after.iter_mut().enumerate() {
        let state = gather_state(recorded, from, to, t, n_keys, |old| Ok(states[old].clone())).unwrap();
        op.restore(state).unwrap();
        op.on_watermark(i64::MIN, &mut got).unwrap();
    }
    run(&mut after, &steps[cut..], &mut got);
    assert_eq!(
        row_multiset(&got),
        row_multiset(&expected),
        "cut after step {cut}, {from} tasks restored as {to} (recorded split {recorded:?})"
    );
}

fn recovery_in_one_task_matches<F: Fn() -> Box<dyn KeyedOperator>>(make: &F, steps: &[Step], cut: usize) {
    let feed = |op: &mut Box<dyn KeyedOperator>, steps: &[Step], out: &mut Vec<RecordBatch>| {
        for (i, b, w) in steps {
            op.on_batch(*i, b.clone(), out).unwrap();
            op.on_watermark(*w, out).unwrap();
        }
    };
    let mut straight = make();
    let mut expected = vec![];
    feed(&mut straight, steps, &mut expected);
    let mut first = make();
    let mut got = vec![];
    feed(&mut first, &steps[..cut], &mut got);
    let state = through_ipc(first.snapshot().unwrap());
    // The snapshot leaves the operator as it was.
    let mut check = got.clone();
    feed(&mut first, &steps[cut..], &mut check);
    assert_eq!(pretty(&check), pretty(&expected), "after a snapshot");
    let prefix = got.clone();
    let mut restored = make();
    restored.restore(state.clone()).unwrap();
    // A restored job's inputs start their watermarks from scratch.
    restored.on_watermark(i64::MIN, &mut got).unwrap();
    feed(&mut restored, &steps[cut..], &mut got);
    assert_eq!(pretty(&got), pretty(&expected), "after a restore");
    // Restored, one more step, a snapshot again (groups touched since
    // the restore beside groups only restored), restored again.
    let mut got = prefix;
    let mut restored = make();
    restored.restore(state).unwrap();
    restored.on_watermark(i64::MIN, &mut got).unwrap();
    feed(&mut restored, &steps[cut..cut + 1], &mut got);
    let again = through_ipc(restored.snapshot().unwrap());
    let mut twice = make();
    twice.restore(again).unwrap();
    twice.on_watermark(i64::MIN, &mut got).unwrap();
    feed(&mut twice, &steps[cut + 1..], &mut got);
    assert_eq!(pretty(&got), pretty(&expected), "after two restores");
}

#[test]
fn aggregates_restored_from_a_snapshot_continue_like_the_uninterrupted_run() {
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    let schema = input();
    let count = || AggExpr {
        func: Arc::new(
            AggregateExprBuilder::new(count_udaf(), vec![col("v", &schema).unwrap()])
                .schema(schema.clone())
                .alias("c")
                .build()
                .unwrap(),
        ),
        filter: None,
    };
    let out = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("s", DataType::Int64, true),
        Field::new("c", DataType::Int64, true),
    ]));
    let steps = vec![
        (rows(&["a", "b", "a"], &[1, 2, 3]), 0),
        (rows(&["c", "a"], &[5, 10]), 1),
        (rows(&["b", "d"], &[7, 1]), 2),
        (rows(&["a"], &[100]), 3),
    ];
    for cut in 1..steps.len() {
        // Append-only input: DataFusion's own accumulators.
        recovery_matches(
            || {
                Box::new(
                    UpdatingAggregate::new(
                        vec![col("k", &schema).unwrap()],
                        &schema,
                        false,
                        vec![sum_agg(&schema), count()],
                        out.clone(),
                    )
                    .unwrap(),
                )
            },
            &[col("k", &schema).unwrap()],
            &steps,
            cut,
        );
    }
    // Updating input: retractable (sliding) accumulators.
    let with_op = with_op_column(&schema);
    let changes = |k: &[&str], v: &[i64], op: &[i8]| {
        RecordBatch::try_new(
            with_op.clone(),
            vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
                Arc::new(Int8Array::from(op.to_vec())),
            ],
        )
        .unwrap()
    };
    let steps = vec![
        (changes(&["a", "b"], &[1, 2], &[1, 1]), 0),
        (changes(&["a", "a"], &[1, 5], &[-1, 1]), 1),
        (changes(&["b"], &[2], &[-1]), 2),
        (changes(&["b", "a"], &[9, 1], &[1, 1]), 3),
    ];
    for cut in 1..steps.len() {
        recovery_matches(
            || {
                Box::new(
                    UpdatingAggregate::new(
                        vec![col("k", &schema).unwrap()],
                        &schema,
                        true,
                        vec![sum_agg(&schema), count()],
                        out.clone(),
                    )
                    .unwrap(),
                )
            },
            &[col("k", &schema).unwrap()],
            &steps,
            cut,
        );
    }
    // Updating input with min, max and count(DISTINCT): multisets.
    use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
    let agg = |udaf: Arc<datafusion::logical_expr::AggregateUDF>, alias: &str, distinct: bool| AggExpr {
        func: Arc::new(
            AggregateExprBuilder::new(udaf, vec![col("v", &schema).unwrap()])
                .schema(schema.clone())
                .alias(alias)
                .with_distinct(distinct)
                .build()
                .unwrap(),
        ),
        filter: None,
    };
    let multiset_out = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("lo", DataType::Int64, true),
        Field::new("hi", DataType::Int64, true),
        Field::new("d", DataType::Int64, true),
    ]));
    for cut in 1..steps.len() {
        recovery_matches(
            || {
                let aggs = vec![
                    agg(min_udaf(), "lo", false),
                    agg(max_udaf(), "hi", false),
                    agg(count_udaf(), "d", true),
                ];
                for a in &aggs {
                    assert!(updating::multiset_kind(a).is_some(), "{}", a.func.name());
                }
                Box::new(
                    UpdatingAggregate::new(
                        vec![col("k", &schema).unwrap()],
                        &schema,
                        true,
                        aggs,
                        multiset_out.clone(),
                    )
                    .unwrap(),
                )
            },
            &[col("k", &schema).unwrap()],
            &steps,
            cut,
        );
    }
    // Windows: open ones survive, closed ones are not emitted again,
    // and rows for windows closed before the snapshot stay late.
    use arrow::array::TimestampMillisecondArray;
    let wschema = Arc::new(Schema::new(vec![
        Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let wb = |ws: &[i64], k: &[&str], v: &[i64]| {
        RecordBatch::try_new(
            wschema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(ws.to_vec())),
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .unwrap()
    };
    let wout = Arc::new(Schema::new(vec![
        Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("k", DataType::Utf8, false),
        Field::new("s", DataType::Int64, true),
    ]));
    let steps = vec![
        (wb(&[0, 0, 10_000], &["a", "b", "a"], &[1, 2, 3]), 5_000_000),
        (wb(&[10_000, 0], &["b", "a"], &[4, 5]), 10_000_000),
        // Window 0 closed at 10 s: this row is late in both runs.
        (wb(&[0, 20_000], &["a", "a"], &[6, 7]), 20_000_000),
        (wb(&[20_000], &["b"], &[8]), i64::MAX),
    ];
    for cut in 1..steps.len() {
        recovery_matches(
            || {
                Box::new(
                    WindowAggregate::new(
                        vec![col("ws", &wschema).unwrap(), col("k", &wschema).unwrap()],
                        &wschema,
                        vec![sum_agg(&wschema)],
                        WindowKey {
                            key: 0,
                            is_end: false,
                            size_us: 10_000_000,
                            unit: TimeUnit::Millisecond,
                        },
                        wout.clone(),
                    )
                    .unwrap(),
                )
            },
            &[col("ws", &wschema).unwrap(), col("k", &wschema).unwrap()],
            &steps,
            cut,
        );
    }
    // Session windows: open sessions survive (and merge with rows that
    // bridge them after the restore); closed ones are not emitted again.
    let steps = vec![
        (wb(&[0, 0, 5_000], &["a", "b", "a"], &[1, 2, 3]), 5_000_000),
        (wb(&[30_000, 12_000], &["b", "a"], &[4, 5]), 10_000_000),
        (
            wb(&[40_000, 1_000, 28_000], &["a", "a", "a"], &[6, 7, 9]),
            20_000_000,
        ),
        (wb(&[35_000, 21_000], &["b", "a"], &[8, 10]), i64::MAX),
    ];
    for cut in 1..steps.len() {
        recovery_matches(
            || {
                Box::new(
                    SessionAggregate::new(
                        vec![col("k", &wschema).unwrap()],
                        &wschema,
                        SessionLayout {
                            key_pos: vec![1],
                            start_pos: Some(0),
                            end_pos: None,
                            time: col("ws", &wschema).unwrap(),
                            time_is_end: false,
                            gap_us: 10_000_000,
                            unit: TimeUnit::Millisecond,
                        },
                        vec![sum_agg(&wschema)],
                        wout.clone(),
                    )
                    .unwrap(),
                )
            },
            &[col("k", &wschema).unwrap()],
            &steps,
            cut,
        );
    }
}

/// count, sum, avg, min, max (one with a FILTER) over nullable ints.
fn columnar_case() -> (SchemaRef, Vec<AggExpr>, SchemaRef) {
    use datafusion::functions_aggregate::average::avg_udaf;
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
    use datafusion::functions_aggregate::sum::sum_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::{BinaryExpr, lit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, true),
    ]));
    let v = col("v", &schema).unwrap();
    let as_float =
        datafusion::physical_expr::expressions::cast(v.clone(), &schema, DataType::Float64).unwrap();
    let agg = |udaf: Arc<datafusion::logical_expr::AggregateUDF>, arg: Arc<dyn PhysicalExpr>, alias: &str| {
        Arc::new(
            AggregateExprBuilder::new(udaf, vec![arg])
                .schema(schema.clone())
                .alias(alias)
                .build()
                .unwrap(),
        )
    };
    let over_2: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        v.clone(),
        datafusion::logical_expr::Operator::Gt,
        lit(2i64),
    ));
    let aggs = vec![
        AggExpr {
            func: agg(count_udaf(), lit(1i64), "n"),
            filter: None,
        },
        AggExpr {
            func: agg(count_udaf(), v.clone(), "c"),
            filter: None,
        },
        AggExpr {
            func: agg(sum_udaf(), v.clone(), "s"),
            filter: None,
        },
        AggExpr {
            func: agg(avg_udaf(), as_float, "a"),
            filter: None,
        },
        AggExpr {
            func: agg(min_udaf(), v.clone(), "lo"),
            filter: None,
        },
        AggExpr {
            func: agg(max_udaf(), v.clone(), "hi"),
            filter: Some(over_2),
        },
    ];
    let out = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
        Field::new("c", DataType::Int64, true),
        Field::new("s", DataType::Int64, true),
        Field::new("a", DataType::Float64, true),
        Field::new("lo", DataType::Int64, true),
        Field::new("hi", DataType::Int64, true),
    ]));
    (schema, aggs, out)
}

fn columnar_steps(schema: &SchemaRef) -> Vec<(RecordBatch, i64)> {
    let b = |k: &[&str], v: &[Option<i64>]| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .unwrap()
    };
    vec![
        (b(&["a", "b", "a"], &[Some(1), None, Some(3)]), 0),
        (b(&["c", "a"], &[Some(5), Some(10)]), 1),
        // b gets its first value; a's max does not change but its count does.
        (b(&["b", "d", "a"], &[Some(7), None, Some(2)]), 2),
        (b(&["a"], &[Some(-100)]), 3),
        // Nothing changes any output value of c... except its count.
        (b(&["c", "e"], &[None, Some(1)]), 4),
    ]
}

fn columnar(schema: &SchemaRef, aggs: Vec<AggExpr>, out: &SchemaRef) -> Box<dyn KeyedOperator> {
    Box::new(
        ColumnarAggregate::try_new(vec![col("k", schema).unwrap()], schema, aggs, out.clone())
            .unwrap()
            .expect("every aggregate here has a column-wise form"),
    )
}

fn boxed(schema: &SchemaRef, aggs: Vec<AggExpr>, out: &SchemaRef) -> Box<dyn KeyedOperator> {
    Box::new(
        UpdatingAggregate::new(vec![col("k", schema).unwrap()], schema, false, aggs, out.clone()).unwrap(),
    )
}

/// The column-wise aggregate emits what the boxed one emits, step by
/// step, and a checkpoint of either restores into either.
#[test]
fn columnar_aggregate_matches_the_boxed_one_and_shares_its_checkpoints() {
    let (schema, aggs, out) = columnar_case();
    let steps = columnar_steps(&schema);
    // Each step's rows in (key, op) order: the two operators list a
    // step's groups in different orders (which means nothing), and a
    // group's delete comes before its insert in both.
    let canon = |batches: &[RecordBatch]| {
        let sorted: Vec<RecordBatch> = batches
            .iter()
            .map(|b| {
                let cols = [0, b.num_columns() - 1].map(|i| arrow::compute::SortColumn {
                    values: b.column(i).clone(),
                    options: None,
                });
                let idx = arrow::compute::lexsort_to_indices(&cols, None).unwrap();
                arrow::compute::take_record_batch(b, &idx).unwrap()
            })
            .collect();
        pretty(&sorted)
    };
    let run = |op: &mut Box<dyn KeyedOperator>, steps: &[(RecordBatch, i64)]| {
        let mut got = vec![];
        for (b, w) in steps {
            op.on_batch(0, b.clone(), &mut got).unwrap();
            op.on_watermark(*w, &mut got).unwrap();
        }
        canon(&got)
    };
    let expected = run(&mut boxed(&schema, aggs.clone(), &out), &steps);
    assert_eq!(run(&mut columnar(&schema, aggs.clone(), &out), &steps), expected);
    // Spot checks of the expected output itself: a's first row (the
    // max's FILTER v > 2 leaves 3), b's NULL-only group, e's filtered
    // max, and a's change at step 3.
    for line in [
        "| a | 2 | 2 | 4   | 2.0               | 1    | 3  | 1           |",
        "| b | 1 | 0 |     |                   |      |    | 1           |",
        "| e | 1 | 1 | 1   | 1.0               | 1    |    | 1           |",
        "| a | 5 | 5 | -84 | -16.8             | -100 | 10 | 1           |",
    ] {
        assert!(expected.contains(line), "{line} in {expected}");
    }
    for cut in 1..steps.len() {
        recovery_matches(
            || columnar(&schema, aggs.clone(), &out),
            &[col("k", &schema).unwrap()],
            &steps,
            cut,
        );
        // Across the two operators, both ways.
        for (from, to) in [(true, false), (false, true)] {
            let make = |c: bool| {
                if c {
                    columnar(&schema, aggs.clone(), &out)
                } else {
                    boxed(&schema, aggs.clone(), &out)
                }
            };
            let mut first = make(from);
            let mut got = vec![];
            for (b, w) in &steps[..cut] {
                first.on_batch(0, b.clone(), &mut got).unwrap();
                first.on_watermark(*w, &mut got).unwrap();
            }
            let mut second = make(to);
            second.restore(through_ipc(first.snapshot().unwrap())).unwrap();
            for (b, w) in &steps[cut..] {
                second.on_batch(0, b.clone(), &mut got).unwrap();
                second.on_watermark(*w, &mut got).unwrap();
            }
            assert_eq!(canon(&got), expected, "cut {cut}, columnar -> boxed: {from}");
        }
    }
}

/// An incremental snapshot (the groups changed since a full one)
/// restored after that full one continues like the uninterrupted run,
/// also when an earlier incremental one was taken in between (changes
/// are cumulative).
#[test]
fn columnar_incremental_snapshots_restore_over_the_full_one() {
    incremental_snapshots_restore_over_the_full_one(columnar);
}

/// The same for the boxed GROUP BY (every aggregate; here the ones the
/// column-wise operator has too).
#[test]
fn boxed_incremental_snapshots_restore_over_the_full_one() {
    incremental_snapshots_restore_over_the_full_one(boxed);
}

fn incremental_snapshots_restore_over_the_full_one(
    make: fn(&SchemaRef, Vec<AggExpr>, &SchemaRef) -> Box<dyn KeyedOperator>,
) {
    let columnar = make;
    let (schema, aggs, out) = columnar_case();
    let steps = columnar_steps(&schema);
    let run_to =
        |op: &mut Box<dyn KeyedOperator>, steps: &[(RecordBatch, i64)], got: &mut Vec<RecordBatch>| {
            for (b, w) in steps {
                op.on_batch(0, b.clone(), got).unwrap();
                op.on_watermark(*w, got).unwrap();
            }
        };
    let mut expected = vec![];
    run_to(&mut columnar(&schema, aggs.clone(), &out), &steps, &mut expected);
    let expected = pretty(&expected);
    for full_at in 1..steps.len() - 1 {
        for changes_at in full_at + 1..steps.len() {
            let mut op = columnar(&schema, aggs.clone(), &out);
            let mut got = vec![];
            run_to(&mut op, &steps[..full_at], &mut got);
            let full = through_ipc(op.snapshot().unwrap());
            run_to(&mut op, &steps[full_at..changes_at - 1], &mut got);
            // An earlier incremental snapshot, as of a checkpoint that
            // may have failed: the later one still covers its groups.
            let _ = op.snapshot_changes().unwrap();
            run_to(&mut op, &steps[changes_at - 1..changes_at], &mut got);
            let changes = op.snapshot_changes().unwrap();
            let Some(changes) = changes else {
                // Most groups changed: a full snapshot is due.
                continue;
            };
            let changes = through_ipc(changes);
            let mut restored = columnar(&schema, aggs.clone(), &out);
            restored
                .restore(full.iter().cloned().chain(changes).collect())
                .unwrap();
            restored.on_watermark(i64::MIN, &mut got).unwrap();
            run_to(&mut restored, &steps[changes_at..], &mut got);
            assert_eq!(
                pretty(&got),
                expected,
                "full at {full_at}, changes at {changes_at}"
            );
        }
    }
    // Some case above took the incremental path.
    let mut op = columnar(&schema, aggs.clone(), &out);
    let mut sink = vec![];
    run_to(&mut op, &steps[..4], &mut sink);
    op.snapshot().unwrap();
    run_to(&mut op, &steps[4..], &mut sink);
    let changes = op.snapshot_changes().unwrap().expect("2 of 5 groups changed");
    assert_eq!(changes.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    // The same changes again (4 of 5 written since the full one), then
    // a third time: more than there are groups, a full snapshot is due.
    assert!(op.snapshot_changes().unwrap().is_some());
    assert!(op.snapshot_changes().unwrap().is_none());
}

/// Aggregates without a column-wise form here keep the boxed operator.
#[test]
fn columnar_aggregate_declines_what_it_cannot_do() {
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::functions_aggregate::min_max::max_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    let schema = input();
    let one = |udaf, distinct| {
        vec![AggExpr {
            func: Arc::new(
                AggregateExprBuilder::new(udaf, vec![col("k", &schema).unwrap()])
                    .schema(schema.clone())
                    .alias("x")
                    .with_distinct(distinct)
                    .build()
                    .unwrap(),
            ),
            filter: None,
        }]
    };
    let out = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("x", DataType::Int64, true),
    ]));
    let try_new = |aggs| {
        ColumnarAggregate::try_new(vec![col("k", &schema).unwrap()], &schema, aggs, out.clone())
            .unwrap()
            .is_some()
    };
    // max of text, count(DISTINCT): no; count of text: yes.
    assert!(!try_new(one(max_udaf(), false)));
    assert!(!try_new(one(count_udaf(), true)));
    assert!(try_new(one(count_udaf(), false)));
}

/// A per-key sum that leaves bigint's range fails the step (22003 at
/// the job) instead of emitting a wrapped value; other keys are not
/// affected before it.
#[test]
fn columnar_sum_overflow_is_an_error() {
    let (schema, aggs, out) = columnar_case();
    let mut op = columnar(&schema, aggs, &out);
    let b = |k: &[&str], v: &[i64]| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .unwrap()
    };
    let mut sink = Vec::new();
    op.on_batch(0, b(&["a", "b"], &[i64::MAX, 1]), &mut sink).unwrap();
    let err = op.on_batch(0, b(&["b", "a"], &[1, 1]), &mut sink).unwrap_err();
    assert!(err.to_string().contains("sum out of range"), "{err}");
    assert!(
        matches!(err.find_root(), DataFusionError::ArrowError(e, _) if matches!(**e, arrow::error::ArrowError::ArithmeticOverflow(_))),
        "{err:?}"
    );
}

#[test]
fn updating_aggregate_retracts_the_previous_value() {
    let schema = input();
    let out = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("s", DataType::Int64, true),
    ]));
    let mut op = UpdatingAggregate::new(
        vec![col("k", &schema).unwrap()],
        &schema,
        false,
        vec![sum_agg(&schema)],
        out,
    )
    .unwrap();
    let mut outb = vec![];
    op.on_batch(0, rows(&["a", "b", "a"], &[1, 2, 3]), &mut outb)
        .unwrap();
    op.on_watermark(0, &mut outb).unwrap();
    op.on_batch(0, rows(&["a"], &[10]), &mut outb).unwrap();
    op.on_watermark(1, &mut outb).unwrap();
    // A watermark with nothing changed emits nothing.
    op.on_watermark(2, &mut outb).unwrap();
    let expected = "\
+---+----+-------------+
| k | s  | __sluice_op |
+---+----+-------------+
| a | 4  | 1           |
| b | 2  | 1           |
| a | 4  | -1          |
| a | 14 | 1           |
+---+----+-------------+";
    assert_eq!(pretty(&outb), expected);
    assert_eq!(op.state_size().0, 2);
}

#[test]
fn window_aggregate_emits_at_the_watermark_and_drops_late_rows() {
    use arrow::array::TimestampMillisecondArray;
    let schema = Arc::new(Schema::new(vec![
        Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("v", DataType::Int64, false),
    ]));
    let b = |ws: Vec<i64>, v: Vec<i64>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(ws)),
                Arc::new(Int64Array::from(v)),
            ],
        )
        .unwrap()
    };
    let out = Arc::new(Schema::new(vec![
        Field::new("ws", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("s", DataType::Int64, true),
    ]));
    let mut op = WindowAggregate::new(
        vec![col("ws", &schema).unwrap()],
        &schema,
        vec![sum_agg(&schema)],
        WindowKey {
            key: 0,
            is_end: false,
            size_us: 10_000_000,
            unit: TimeUnit::Millisecond,
        },
        out,
    )
    .unwrap();
    let mut o = vec![];
    op.on_batch(0, b(vec![0, 10_000, 0], vec![1, 2, 3]), &mut o)
        .unwrap();
    op.on_watermark(9_999_999, &mut o).unwrap();
    assert!(o.is_empty(), "window [0,10s) is still open");
    op.on_watermark(10_000_000, &mut o).unwrap();
    assert_eq!(o.len(), 1);
    op.on_batch(0, b(vec![0, 10_000], vec![100, 5]), &mut o).unwrap();
    assert_eq!(op.take_late(), 1);
    assert_eq!(op.take_late(), 0, "late rows are handed over once");
    op.on_watermark(i64::MAX, &mut o).unwrap();
    let expected = "\
+---------------------+---+
| ws                  | s |
+---------------------+---+
| 1970-01-01T00:00:00 | 4 |
| 1970-01-01T00:00:10 | 7 |
+---------------------+---+";
    assert_eq!(pretty(&o), expected);
    assert_eq!(op.state_size().0, 0);
}

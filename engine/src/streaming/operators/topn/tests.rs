use std::collections::BTreeMap;

use arrow::array::StringArray;
use datafusion::physical_expr::expressions::Column;

use super::*;
use crate::streaming::operators::tests::{Rng, Step, net, recovery_matches_inputs};

fn input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]))
}

fn make(limit: usize, descending: bool, updating: bool) -> TopN {
    let order = vec![OrderTerm {
        expr: Arc::new(Column::new("v", 1)),
        descending,
        nulls_first: descending,
    }];
    let schema = input();
    TopN::new(
        vec![Arc::new(Column::new("g", 0))],
        order,
        limit,
        schema.clone(),
        updating,
        topn_schema(&schema, "rn"),
    )
    .unwrap()
}

type Row = (i64, Option<i64>);

fn batch(rows: &[Row], ops: Option<&[i8]>) -> RecordBatch {
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| Some(r.0)).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
        // The text follows the value: equal values are equal rows.
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| format!("s{}", r.1.unwrap_or(-1)))
                .collect::<Vec<_>>(),
        )),
    ];
    let schema = match ops {
        Some(ops) => {
            cols.push(Arc::new(Int8Array::from(ops.to_vec())));
            with_op_column(&input())
        }
        None => input(),
    };
    RecordBatch::try_new(schema, cols).unwrap()
}

/// The rows ranked `limit` or better by `function` of what is held, as SQL
/// defines it.
fn ranked(held: &[Row], limit: usize, descending: bool, function: RankFunction) -> BTreeMap<String, i64> {
    let mut groups: BTreeMap<i64, Vec<Option<i64>>> = BTreeMap::new();
    for (g, v) in held {
        groups.entry(*g).or_default().push(*v);
    }
    let mut out = BTreeMap::new();
    for (g, mut vs) in groups {
        // NULLs first when descending, last when ascending.
        vs.sort_by_key(|v| match v {
            None => (!descending, 0),
            Some(v) => (descending, if descending { -v } else { *v }),
        });
        for (i, v) in vs.iter().enumerate() {
            let first = vs.iter().position(|w| w == v).unwrap();
            let rank = match function {
                RankFunction::RowNumber => i + 1,
                RankFunction::Rank => first + 1,
                RankFunction::DenseRank => {
                    let mut distinct = vs[..=first].to_vec();
                    distinct.dedup();
                    distinct.len()
                }
            };
            if rank > limit {
                break;
            }
            let v_text = v.map_or("NULL".to_string(), |v| v.to_string());
            let s = format!("s{}", v.unwrap_or(-1));
            *out.entry(format!("{g}|{v_text}|{s}|{rank}")).or_default() += 1;
        }
    }
    out
}

/// Random inserts (and deletes, over an updating input) in random batches;
/// after every progress step the emitted changes, netted, are exactly the
/// ranked first N rows per group of what the input holds.
#[test]
fn emitted_changes_net_to_the_ranked_top_n_of_what_is_held() {
    let mut rng = Rng(0x70b_0a7e);
    for (updating, function) in [false, true].into_iter().flat_map(|u| {
        [
            RankFunction::RowNumber,
            RankFunction::Rank,
            RankFunction::DenseRank,
        ]
        .map(|f| (u, f))
    }) {
        for descending in [false, true] {
            for limit in [1, 3] {
                let mut op = make(limit, descending, updating).with_function(function);
                let mut held: Vec<Row> = vec![];
                let mut got = BTreeMap::new();
                for step in 0..150 {
                    let (mut rows, mut ops) = (vec![], vec![]);
                    for _ in 0..1 + rng.below(5) {
                        if updating && !held.is_empty() && rng.below(3) == 0 {
                            let at = rng.below(held.len() as u64) as usize;
                            rows.push(held.swap_remove(at));
                            ops.push(-1i8);
                        } else {
                            let v = (rng.below(10) > 0).then(|| rng.below(30) as i64);
                            let row = (rng.below(3) as i64, v);
                            held.push(row);
                            rows.push(row);
                            ops.push(1);
                        }
                    }
                    let mut out = vec![];
                    op.on_batch(0, batch(&rows, updating.then_some(&ops[..])), &mut out)
                        .unwrap();
                    op.on_watermark(i64::MIN, &mut out).unwrap();
                    net(&out, true, &mut got);
                    assert_eq!(
                        got,
                        ranked(&held, limit, descending, function),
                        "{function} <= {limit}, descending {descending}, updating {updating}, step {step}"
                    );
                }
                assert_eq!(op.unmatched_deletes(), 0);
                if !updating {
                    // Append-only: only rows ranked N or better are held.
                    assert!(op.state_size().0 <= got.len(), "{function}");
                }
            }
        }
    }
}

#[test]
fn top_n_restored_and_rescaled_continues_like_the_uninterrupted_run() {
    let steps = |updating: bool| -> Vec<Step> {
        let b = |rows: &[Row], ops: &[i8]| batch(rows, updating.then_some(ops));
        let mut steps = vec![
            (0, b(&[(1, Some(5)), (2, Some(7)), (1, Some(3))], &[1, 1, 1]), 0),
            (0, b(&[(1, Some(9)), (3, Some(1)), (2, None)], &[1, 1, 1]), 1),
            (0, b(&[(1, Some(4)), (2, Some(8)), (4, Some(2))], &[1, 1, 1]), 2),
        ];
        if updating {
            steps.push((
                0,
                b(&[(1, Some(9)), (2, Some(8)), (3, Some(1))], &[-1, -1, -1]),
                3,
            ));
        }
        steps.push((0, b(&[(1, Some(6)), (3, Some(0)), (2, Some(7))], &[1, 1, 1]), 4));
        steps
    };
    for updating in [false, true] {
        let steps = steps(updating);
        for cut in 1..steps.len() - 1 {
            recovery_matches_inputs(
                || Box::new(make(2, true, updating)),
                &[vec![Arc::new(Column::new("g", 0))]],
                &steps,
                cut,
            );
        }
    }
}

#[test]
fn incremental_snapshots_replace_the_changed_groups() {
    let mut op = make(2, false, true);
    let rows: Vec<Row> = (0..20).map(|g| (g, Some(g))).collect();
    let mut out = vec![];
    op.on_batch(0, batch(&rows, Some(&[1; 20])), &mut out).unwrap();
    op.on_watermark(0, &mut out).unwrap();
    let full = super::super::tests::through_ipc(op.snapshot().unwrap());
    op.on_batch(
        0,
        batch(&[(3, Some(3)), (3, Some(30)), (4, Some(1))], Some(&[-1, 1, 1])),
        &mut out,
    )
    .unwrap();
    op.on_watermark(1, &mut out).unwrap();
    let changes = op.snapshot_changes().unwrap().expect("2 of 20 groups changed");
    assert_eq!(changes.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    let mut restored = make(2, false, true);
    restored
        .restore(
            full.into_iter()
                .chain(super::super::tests::through_ipc(changes))
                .collect(),
        )
        .unwrap();
    assert_eq!(restored.state_size(), op.state_size());
    // A group emptied since the full snapshot: a full one is due.
    op.on_batch(0, batch(&[(5, Some(5))], Some(&[-1])), &mut out)
        .unwrap();
    assert!(op.snapshot_changes().unwrap().is_none());
}

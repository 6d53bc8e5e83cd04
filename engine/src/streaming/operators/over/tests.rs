use std::collections::BTreeMap;

use arrow::array::TimestampMicrosecondArray;
use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::col;

use super::*;
use crate::streaming::operators::tests::{Rng, through_ipc};

/// (partition, time, value).
type Row = (i64, i64, i64);

fn input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("v", DataType::Int64, true),
    ]))
}

fn make(frame: OverFrame, partitioned: bool) -> OverAggregate {
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::functions_aggregate::min_max::max_udaf;
    use datafusion::functions_aggregate::sum::sum_udaf;
    let schema = input();
    let agg = |f, name: &str| AggExpr {
        func: Arc::new(
            AggregateExprBuilder::new(f, vec![col("v", &schema).unwrap()])
                .schema(schema.clone())
                .alias(name)
                .build()
                .unwrap(),
        ),
        filter: None,
    };
    let aggs = vec![agg(sum_udaf(), "s"), agg(count_udaf(), "c"), agg(max_udaf(), "m")];
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("s", DataType::Int64, true));
    fields.push(Field::new("c", DataType::Int64, true));
    fields.push(Field::new("m", DataType::Int64, true));
    let partition = if partitioned {
        vec![col("k", &schema).unwrap()]
    } else {
        vec![]
    };
    OverAggregate::new(partition, 1, aggs, frame, schema, Arc::new(Schema::new(fields))).unwrap()
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        input(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.1),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

/// What each row's frame holds, computed from scratch: rows in time order
/// per partition, arrival order among equal times.
fn expected(frame: OverFrame, partitioned: bool, rows: &[Row]) -> Vec<[i64; 6]> {
    let mut out = Vec::new();
    let mut parts: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for r in rows {
        parts
            .entry(if partitioned { r.0 } else { 0 })
            .or_default()
            .push(*r);
    }
    for rows in parts.values_mut() {
        rows.sort_by_key(|r| r.1);
        for (i, r) in rows.iter().enumerate() {
            let in_frame: Vec<&Row> = match frame {
                OverFrame::Rows(n) => rows[i.saturating_sub(n as usize)..=i].iter().collect(),
                OverFrame::RowsUnbounded => rows[..=i].iter().collect(),
                OverFrame::Range(d) => rows.iter().filter(|o| o.1 <= r.1 && o.1 >= r.1 - d).collect(),
                OverFrame::RangeUnbounded => rows.iter().filter(|o| o.1 <= r.1).collect(),
            };
            let sum = in_frame.iter().map(|o| o.2).sum();
            let max = in_frame.iter().map(|o| o.2).max().unwrap();
            out.push([r.0, r.1, r.2, sum, in_frame.len() as i64, max]);
        }
    }
    out.sort();
    out
}

fn emitted(out: &[RecordBatch]) -> Vec<[i64; 6]> {
    let mut rows = Vec::new();
    for b in out {
        let col = |i: usize| arrow::compute::cast(b.column(i), &DataType::Int64).unwrap();
        let cols: Vec<ArrayRef> = (0..6).map(col).collect();
        let ints: Vec<&Int64Array> = cols.iter().map(|c| c.as_any().downcast_ref().unwrap()).collect();
        for r in 0..b.num_rows() {
            rows.push(std::array::from_fn(|i| ints[i].value(r)));
        }
    }
    rows.sort();
    rows
}

/// Rows in rough time order with ties and some late ones, the watermark
/// trailing; a restore halfway. What goes out, once every row is passed,
/// is each non-late row once with its frame's sum, count and max, for
/// every frame kind, partitioned or not; rows wait for the watermark.
#[test]
fn every_row_goes_out_once_with_its_frame_in_event_time_order() {
    for frame in [
        OverFrame::Rows(0),
        OverFrame::Rows(3),
        OverFrame::RowsUnbounded,
        OverFrame::Range(0),
        OverFrame::Range(25),
        OverFrame::RangeUnbounded,
    ] {
        for partitioned in [true, false] {
            let mut rng = Rng(0x5eed_0be5 ^ ((frame.to_string().len() as u64) << 8) ^ partitioned as u64);
            let mut op = make(frame, partitioned);
            let (mut out, mut kept, mut late, mut counted) = (vec![], vec![], 0u64, 0u64);
            let (mut wm, mut max_t) = (i64::MIN, 0i64);
            for step in 0..300 {
                if step == 150 {
                    let state = through_ipc(op.snapshot().unwrap());
                    counted += op.take_late();
                    op = make(frame, partitioned);
                    op.restore(state).unwrap();
                    // Sources send their watermark again.
                    if wm > i64::MIN {
                        op.on_watermark(wm, &mut out).unwrap();
                    }
                }
                let n = 1 + rng.below(4) as usize;
                // Times in steps of 5 (ties), up to 40 behind the clock.
                let rows: Vec<Row> = (0..n)
                    .map(|_| {
                        let t = ((step * 10 - rng.below(40) as i64) / 5) * 5;
                        (rng.below(3) as i64, t, rng.below(100) as i64 - 20)
                    })
                    .collect();
                for r in &rows {
                    if r.1 < wm {
                        late += 1;
                    } else {
                        kept.push(*r);
                    }
                    max_t = max_t.max(r.1);
                }
                op.on_batch(0, batch(&rows), &mut out).unwrap();
                if rng.below(3) == 0 && max_t - 10 > wm {
                    wm = max_t - 10;
                    op.on_watermark(wm, &mut out).unwrap();
                    // Nothing at or after the watermark went out.
                    let got = emitted(&out);
                    assert!(got.iter().all(|r| r[1] < wm), "{frame}: a row went out early");
                }
            }
            op.on_watermark(i64::MAX, &mut out).unwrap();
            let (got, want) = (emitted(&out), expected(frame, partitioned, &kept));
            let differ: Vec<_> = got.iter().zip(&want).filter(|(g, w)| g != w).take(3).collect();
            assert!(
                got.len() == want.len() && differ.is_empty(),
                "{frame} partitioned={partitioned}: {} rows out, {} expected; first differences {differ:?}",
                got.len(),
                want.len()
            );
            assert_eq!(counted + op.take_late(), late, "{frame}: late rows counted");
            assert!(late > 0);
            if frame.bounded() {
                // Only the frames are left: a few rows per partition.
                assert!(
                    op.state_size().0 < 100,
                    "{frame}: {} rows held",
                    op.state_size().0
                );
            }
        }
    }
}

/// Incremental snapshots: a full snapshot, then what changed since (an
/// earlier incremental one in between, as of a checkpoint that may have
/// failed), restored together, continue like the uninterrupted run, for a
/// bounded frame (frame rows) and an unbounded one (accumulators); with 40
/// partitions and a few touched per step, most cases take the incremental
/// path, and a partition whose waiting rows all went out is cleared.
#[test]
fn incremental_snapshots_restore_like_the_uninterrupted_run() {
    for frame in [OverFrame::Rows(3), OverFrame::RowsUnbounded, OverFrame::Range(20)] {
        let mut rng = Rng(0xdecaf ^ frame.to_string().len() as u64);
        let steps: Vec<(Vec<Row>, i64)> = (0..30i64)
            .map(|step| {
                let n = 1 + rng.below(3) as usize;
                let rows = (0..n)
                    .map(|_| {
                        (
                            rng.below(40) as i64,
                            step * 10 + rng.below(15) as i64,
                            rng.below(50) as i64,
                        )
                    })
                    .collect();
                (rows, step * 10 - 5)
            })
            .collect();
        let run = |op: &mut OverAggregate, steps: &[(Vec<Row>, i64)], out: &mut Vec<RecordBatch>| {
            for (rows, w) in steps {
                op.on_batch(0, batch(rows), out).unwrap();
                op.on_watermark(*w, out).unwrap();
            }
        };
        let mut straight = vec![];
        let mut op = make(frame, true);
        run(&mut op, &steps, &mut straight);
        op.on_watermark(i64::MAX, &mut straight).unwrap();
        let want = emitted(&straight);
        let mut incremental = 0;
        for full_at in [3, 10, 17] {
            for changes_at in [full_at + 1, full_at + 2, full_at + 6] {
                let mut op = make(frame, true);
                let mut got = vec![];
                run(&mut op, &steps[..full_at], &mut got);
                let full = through_ipc(op.snapshot().unwrap());
                run(&mut op, &steps[full_at..changes_at - 1], &mut got);
                let _ = op.snapshot_changes().unwrap();
                run(&mut op, &steps[changes_at - 1..changes_at], &mut got);
                let Some(changes) = op.snapshot_changes().unwrap() else {
                    continue;
                };
                incremental += 1;
                let mut back = make(frame, true);
                back.restore(full.iter().cloned().chain(through_ipc(changes)).collect())
                    .unwrap();
                assert_eq!(back.state_size().0, op.state_size().0, "{frame}: rows held");
                back.on_watermark(i64::MIN, &mut got).unwrap();
                run(&mut back, &steps[changes_at..], &mut got);
                back.on_watermark(i64::MAX, &mut got).unwrap();
                assert_eq!(
                    emitted(&got),
                    want,
                    "{frame}: full at {full_at}, changes at {changes_at}"
                );
            }
        }
        assert!(incremental >= 4, "{frame}: {incremental} incremental cases");
    }
}

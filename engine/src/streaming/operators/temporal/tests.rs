use std::collections::BTreeMap;

use arrow::array::{Int64Array, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column};

use super::*;
use crate::streaming::operators::tests::{Rng, Step, net, recovery_matches_inputs};

fn side_schema(p: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(format!("{p}k"), DataType::Int64, true),
        Field::new(
            format!("{p}t"),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new(format!("{p}v"), DataType::Int64, true),
    ]))
}

fn output_schema() -> SchemaRef {
    let fields: Vec<Field> = ["p", "v"]
        .iter()
        .flat_map(|p| {
            side_schema(p)
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>()
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn col(name: &str, i: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, i))
}

fn keys() -> [Vec<Arc<dyn PhysicalExpr>>; 2] {
    [vec![col("pk", 0)], vec![col("vk", 0)]]
}

/// `p.v < v.v`: over a probe row followed by a version row.
fn less() -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(col("pv", 2), Operator::Lt, col("vv", 5)))
}

fn spec(kind: JoinKind, filter: Option<Arc<dyn PhysicalExpr>>) -> TemporalJoinSpec {
    TemporalJoinSpec {
        kind,
        keys: keys(),
        filter,
        probe_time: Some(col("pt", 1)),
        version_time: Some(col("vt", 1)),
        load_first: false,
        reread: false,
    }
}

fn make(kind: JoinKind, filter: Option<Arc<dyn PhysicalExpr>>) -> TemporalJoin {
    TemporalJoin::new(
        &spec(kind, filter),
        [side_schema("p"), side_schema("v")],
        output_schema(),
    )
    .unwrap()
}

type Row = (Option<i64>, i64, i64);

fn batch(side: usize, rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        side_schema(if side == 0 { "p" } else { "v" }),
        vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(TimestampMicrosecondArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn lines(out: &[RecordBatch]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    net(out, false, &mut m);
    m
}

/// A time as the output's lines show it.
fn ts(t: i64) -> String {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let a = TimestampMicrosecondArray::from(vec![t]);
    let opts = FormatOptions::default();
    ArrayFormatter::try_new(&a, &opts).unwrap().value(0).to_string()
}

fn line(p: &Row, v: Option<&Row>) -> String {
    let k = |k: Option<i64>| k.map_or("NULL".to_string(), |k| k.to_string());
    let probe = format!("{}|{}|{}", k(p.0), ts(p.1), p.2);
    match v {
        Some(v) => format!("{probe}|{}|{}|{}", k(v.0), ts(v.1), v.2),
        None => format!("{probe}|NULL|NULL|NULL"),
    }
}

#[test]
fn a_probe_row_meets_its_keys_version_at_its_time_once_the_watermark_passes_it() {
    for kind in [JoinKind::Inner, JoinKind::Left] {
        let mut j = make(kind, None);
        let mut out = vec![];
        let versions = [(Some(1), 10, 100), (Some(1), 20, 200), (Some(2), 30, 300)];
        j.on_batch(1, batch(1, &versions), &mut out).unwrap();
        let probes = [
            (Some(1), 5, 1),
            (Some(1), 15, 2),
            (Some(1), 20, 3),
            (Some(1), 25, 4),
            (Some(2), 12, 5),
            (None, 40, 6),
        ];
        j.on_batch(0, batch(0, &probes), &mut out).unwrap();
        // The NULL key can meet nothing: a LEFT join sends it at once.
        assert_eq!(
            out.iter().map(|b| b.num_rows()).sum::<usize>(),
            usize::from(kind == JoinKind::Left)
        );
        // The watermark at 20: rows before it go; the row at 20 waits (a
        // version at 20 could still come).
        j.on_watermark(20, &mut out).unwrap();
        let mut want = BTreeMap::new();
        let v = |i: usize| Some(&versions[i]);
        let expect = |want: &mut BTreeMap<String, i64>, p: usize, v: Option<&Row>| {
            if v.is_some() || kind == JoinKind::Left {
                want.insert(line(&probes[p], v), 1);
            }
        };
        expect(&mut want, 0, None);
        expect(&mut want, 1, v(0));
        expect(&mut want, 4, None);
        expect(&mut want, 5, None);
        assert_eq!(lines(&out), want);
        // Version 10 of key 1 is superseded by 20 before the watermark.
        assert_eq!(
            j.detail().unwrap(),
            "probe: 2 rows waiting, versions: 2 held, 1 superseded"
        );
        j.on_watermark(i64::MAX, &mut out).unwrap();
        expect(&mut want, 2, v(1));
        expect(&mut want, 3, v(1));
        assert_eq!(lines(&out), want);
        // Behind the watermark: late, dropped and counted.
        j.on_batch(0, batch(0, &[(Some(1), 22, 7)]), &mut out).unwrap();
        assert_eq!(j.take_late(), 1);
        assert_eq!(j.state_size().0, 2);
    }
}

#[test]
fn the_rest_of_the_on_condition_is_checked_against_the_version_at_the_time() {
    // p.v < v.v: the version valid at the probe's time decides, not an
    // older one that would pass.
    for kind in [JoinKind::Inner, JoinKind::Left] {
        let mut j = make(kind, Some(less()));
        let mut out = vec![];
        let versions = [(Some(1), 10, 100), (Some(1), 20, 5)];
        j.on_batch(1, batch(1, &versions), &mut out).unwrap();
        let probes = [(Some(1), 15, 50), (Some(1), 25, 50), (Some(1), 26, 1)];
        j.on_batch(0, batch(0, &probes), &mut out).unwrap();
        j.on_watermark(i64::MAX, &mut out).unwrap();
        let mut want = BTreeMap::new();
        want.insert(line(&probes[0], Some(&versions[0])), 1);
        want.insert(line(&probes[2], Some(&versions[1])), 1);
        if kind == JoinKind::Left {
            want.insert(line(&probes[1], None), 1);
        }
        assert_eq!(lines(&out), want, "{kind}");
    }
}

/// Random probes and versions over a few keys, with a watermark moving in
/// steps; versions are never late and have distinct times, probes may be
/// late. Returns the steps and, per kind, what a from-scratch computation
/// gives: each probe row not late with the latest version of its key at
/// or before its time.
fn random_steps(seed: u64) -> (Vec<Step>, Vec<(Row, Option<Row>)>) {
    let mut rng = Rng(seed);
    let mut steps = vec![];
    let mut watermark = i64::MIN;
    let mut now = 100i64;
    let mut versions: Vec<Row> = vec![];
    let mut probes: Vec<Row> = vec![];
    let mut next_version_time = 0i64;
    for _ in 0..60 {
        let side = rng.below(2) as usize;
        let n = 1 + rng.below(6);
        let mut rows = vec![];
        for _ in 0..n {
            let k = (rng.below(5) != 0).then(|| rng.below(4) as i64);
            let v = rng.below(100) as i64;
            if side == 1 {
                // Distinct times, never behind the watermark.
                next_version_time += 1;
                let t = (now + rng.below(30) as i64) * 1000 + next_version_time;
                rows.push((k, t, v));
                if k.is_some() {
                    versions.push((k, t, v));
                }
            } else {
                let t = (now - 10 + rng.below(40) as i64) * 1000;
                rows.push((k, t, v));
                if t >= watermark {
                    probes.push((k, t, v));
                }
            }
        }
        now += rng.below(8) as i64;
        let w = (now - 5) * 1000;
        watermark = watermark.max(w);
        steps.push((side, batch(side, &rows), w));
    }
    steps.push((0, batch(0, &[]), i64::MAX));
    let expected = probes
        .into_iter()
        .map(|p| {
            let v = versions
                .iter()
                .filter(|v| p.0.is_some() && v.0 == p.0 && v.1 <= p.1)
                .max_by_key(|v| v.1)
                .copied();
            (p, v)
        })
        .collect();
    (steps, expected)
}

#[test]
fn random_probes_and_versions_match_a_computation_from_scratch_and_restore_anywhere() {
    for seed in [7u64, 99, 12345, 2026] {
        let (steps, expected) = random_steps(seed);
        for kind in [JoinKind::Inner, JoinKind::Left] {
            for filter in [None, Some(less())] {
                let mut j = make(kind, filter.clone());
                let mut out = vec![];
                for (i, b, w) in &steps {
                    j.on_batch(*i, b.clone(), &mut out).unwrap();
                    j.on_watermark(*w, &mut out).unwrap();
                }
                let mut want = BTreeMap::new();
                for (p, v) in &expected {
                    let v = v.filter(|v| filter.is_none() || p.2 < v.2);
                    if v.is_some() || kind == JoinKind::Left {
                        *want.entry(line(p, v.as_ref())).or_default() += 1;
                    }
                }
                assert_eq!(
                    lines(&out),
                    want,
                    "seed {seed}, {kind}, filter {}",
                    filter.is_some()
                );
                // Only the current version of each key is left at the end.
                assert!(j.tables[1].size().0 <= 4, "seed {seed}");
                assert_eq!(j.tables[0].size().0, 0);
                let make_op = || Box::new(make(kind, filter.clone())) as Box<dyn KeyedOperator>;
                for cut in [1, steps.len() / 3, steps.len() / 2, steps.len() - 2] {
                    recovery_matches_inputs(make_op, &keys(), &steps, cut);
                }
            }
        }
    }
}

#[test]
fn a_restored_join_keeps_its_watermark_so_late_probes_stay_late() {
    let mut j = make(JoinKind::Left, None);
    let mut out = vec![];
    j.on_batch(1, batch(1, &[(Some(1), 10, 1)]), &mut out).unwrap();
    j.on_batch(0, batch(0, &[(Some(1), 40, 1)]), &mut out).unwrap();
    j.on_watermark(30, &mut out).unwrap();
    let state = j.snapshot().unwrap();
    let mut back = make(JoinKind::Left, None);
    back.restore(state).unwrap();
    back.on_batch(0, batch(0, &[(Some(1), 20, 2)]), &mut out).unwrap();
    assert_eq!(back.take_late(), 1);
    back.on_watermark(i64::MAX, &mut out).unwrap();
    assert_eq!(
        lines(&out),
        BTreeMap::from([(line(&(Some(1), 40, 1), Some(&(Some(1), 10, 1))), 1)])
    );
}

#[test]
fn at_processing_time_rows_meet_the_latest_version_once_a_bounded_input_is_read() {
    let proc = TemporalJoinSpec {
        probe_time: None,
        version_time: None,
        load_first: true,
        ..spec(JoinKind::Left, None)
    };
    let make = || TemporalJoin::new(&proc, [side_schema("p"), side_schema("v")], output_schema()).unwrap();
    let mut j = make();
    let mut out = vec![];
    // Probe rows before the versions are read wait, whatever the watermark.
    let early = [(Some(1), 5, 1), (Some(2), 6, 2)];
    j.on_batch(0, batch(0, &early), &mut out).unwrap();
    j.on_watermark(i64::MAX - 1, &mut out).unwrap();
    j.on_batch(1, batch(1, &[(Some(1), 50, 10), (Some(1), 40, 11)]), &mut out)
        .unwrap();
    assert!(out.is_empty());
    // The latest to come replaces the key's version, whatever its time.
    assert_eq!(
        j.detail().unwrap(),
        "probe: 2 rows waiting, versions: 1 held, 1 superseded"
    );
    let state = j.snapshot().unwrap();
    j.on_input_watermark(1, i64::MAX, &mut out).unwrap();
    let v = (Some(1), 40, 11);
    let mut want = BTreeMap::from([(line(&early[0], Some(&v)), 1), (line(&early[1], None), 1)]);
    assert_eq!(lines(&out), want);
    // From then on rows go out as they come.
    let later = (Some(1), 1, 3);
    j.on_batch(0, batch(0, &[later]), &mut out).unwrap();
    want.insert(line(&later, Some(&v)), 1);
    assert_eq!(lines(&out), want);
    // A restore taken before the load waits again; one after does not.
    let mut back = make();
    back.restore(state).unwrap();
    let mut again = vec![];
    back.on_input_watermark(1, i64::MAX, &mut again).unwrap();
    assert_eq!(lines(&again).len(), 2);
    let mut loaded = make();
    loaded.restore(j.snapshot().unwrap()).unwrap();
    loaded.on_batch(0, batch(0, &[later]), &mut again).unwrap();
    assert_eq!(lines(&again).get(&line(&later, Some(&v))), Some(&1));
}

/// A table read anew after a restore: probe rows wait for the new read,
/// and a key the table no longer has loses its version (it was deleted
/// while the job was down).
#[test]
fn a_table_read_anew_after_a_restore_drops_the_keys_it_no_longer_has() {
    let proc = TemporalJoinSpec {
        probe_time: None,
        version_time: None,
        load_first: true,
        reread: true,
        ..spec(JoinKind::Left, None)
    };
    let make = || TemporalJoin::new(&proc, [side_schema("p"), side_schema("v")], output_schema()).unwrap();
    let mut j = make();
    let mut out = vec![];
    j.on_batch(1, batch(1, &[(Some(1), 0, 10), (Some(2), 0, 20)]), &mut out)
        .unwrap();
    j.on_input_watermark(1, i64::MAX, &mut out).unwrap();
    let state = j.snapshot().unwrap();

    let mut back = make();
    back.restore(state).unwrap();
    let (one, two) = ((Some(1), 1, 1), (Some(2), 2, 2));
    back.on_batch(0, batch(0, &[one, two]), &mut out).unwrap();
    assert!(out.is_empty(), "probe rows wait for the new read");
    // The table now holds key 1 with another row, and no key 2.
    let new = (Some(1), 0, 11);
    back.on_batch(1, batch(1, &[new]), &mut out).unwrap();
    assert!(out.is_empty());
    back.on_input_watermark(1, i64::MAX, &mut out).unwrap();
    assert_eq!(
        lines(&out),
        BTreeMap::from([(line(&one, Some(&new)), 1), (line(&two, None), 1)])
    );
    assert_eq!(
        back.detail().unwrap(),
        "probe: 0 rows waiting, versions: 1 held, 2 superseded"
    );
}

/// A changelog batch of versions: rows with their ops (+1 insert, -1
/// retraction), the op column last.
fn changes(rows: &[(Row, i8)]) -> RecordBatch {
    let plain: Vec<Row> = rows.iter().map(|(r, _)| *r).collect();
    let b = batch(1, &plain);
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(arrow::array::Int8Array::from(
        rows.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
    )));
    RecordBatch::try_new(crate::stream::with_op_column(&side_schema("v")), cols).unwrap()
}

fn make_changelog(kind: JoinKind, filter: Option<Arc<dyn PhysicalExpr>>) -> TemporalJoin {
    make(kind, filter).with_changelog(true)
}

#[test]
fn a_changelog_updates_and_deletes_versions_from_their_time_on() {
    for kind in [JoinKind::Inner, JoinKind::Left] {
        let mut j = make_changelog(kind, None);
        let mut out = vec![];
        // Key 1: 100 from 10; an update (its two halves in one batch) to
        // 200 at 20; a delete at 30 (the retraction carries the change's
        // time, as with Debezium's source timestamp); 400 from 40.
        // Key 2: 7 from 10, deleted by its own row (a row's own time: the
        // version is gone from its time on).
        j.on_batch(
            1,
            changes(&[((Some(1), 10, 100), 1), ((Some(2), 10, 7), 1)]),
            &mut out,
        )
        .unwrap();
        j.on_batch(
            1,
            changes(&[((Some(1), 20, 100), -1), ((Some(1), 20, 200), 1)]),
            &mut out,
        )
        .unwrap();
        j.on_batch(
            1,
            changes(&[((Some(1), 30, 200), -1), ((Some(2), 10, 7), -1)]),
            &mut out,
        )
        .unwrap();
        j.on_batch(1, changes(&[((Some(1), 40, 400), 1)]), &mut out)
            .unwrap();
        let probes = [
            (Some(1), 5, 1),
            (Some(1), 15, 2),
            (Some(1), 25, 3),
            (Some(1), 35, 4),
            (Some(1), 45, 5),
            (Some(2), 12, 6),
        ];
        j.on_batch(0, batch(0, &probes), &mut out).unwrap();
        j.on_watermark(i64::MAX, &mut out).unwrap();
        let mut want = BTreeMap::new();
        let mut expect = |p: usize, v: Option<Row>| {
            if v.is_some() || kind == JoinKind::Left {
                want.insert(line(&probes[p], v.as_ref()), 1);
            }
        };
        expect(0, None);
        expect(1, Some((Some(1), 10, 100)));
        expect(2, Some((Some(1), 20, 200)));
        expect(3, None);
        expect(4, Some((Some(1), 40, 400)));
        expect(5, None);
        assert_eq!(lines(&out), want, "{kind}");
        assert_eq!(
            j.detail().unwrap(),
            "probe: 0 rows waiting, versions: 1 held, 2 superseded, 3 retractions",
            "{kind}"
        );
    }
}

#[test]
fn at_processing_time_a_changelog_replaces_and_deletes_the_latest_version() {
    let proc = TemporalJoinSpec {
        probe_time: None,
        version_time: None,
        ..spec(JoinKind::Left, None)
    };
    let mut j = TemporalJoin::new(&proc, [side_schema("p"), side_schema("v")], output_schema())
        .unwrap()
        .with_changelog(true);
    let mut out = vec![];
    let (v1, v2) = ((Some(1), 1, 10), (Some(1), 2, 20));
    j.on_batch(1, changes(&[(v1, 1)]), &mut out).unwrap();
    j.on_batch(0, batch(0, &[(Some(1), 0, 1)]), &mut out).unwrap();
    j.on_batch(1, changes(&[(v1, -1), (v2, 1)]), &mut out).unwrap();
    j.on_batch(0, batch(0, &[(Some(1), 0, 2)]), &mut out).unwrap();
    j.on_batch(1, changes(&[(v2, -1)]), &mut out).unwrap();
    j.on_batch(0, batch(0, &[(Some(1), 0, 3)]), &mut out).unwrap();
    let want = BTreeMap::from([
        (line(&(Some(1), 0, 1), Some(&v1)), 1),
        (line(&(Some(1), 0, 2), Some(&v2)), 1),
        (line(&(Some(1), 0, 3), None), 1),
    ]);
    assert_eq!(lines(&out), want);
    assert_eq!(j.state_size().0, 0);
}

/// Random probes and a changelog of versions over a few keys: inserts,
/// updates (retraction and insert in one batch, both at the change's time)
/// and deletes (a retraction at the change's time). Returns the steps and
/// each probe not late with what a from-scratch computation gives: the
/// latest change of its key at or before its time, if that is no delete.
fn random_changelog(seed: u64) -> (Vec<Step>, Vec<(Row, Option<Row>)>) {
    let mut rng = Rng(seed);
    let mut steps = vec![];
    let mut watermark = i64::MIN;
    let mut now = 100i64;
    let mut current: BTreeMap<i64, i64> = BTreeMap::new();
    let mut history: Vec<(i64, i64, Option<i64>)> = vec![];
    let mut probes: Vec<Row> = vec![];
    let mut next = 0i64;
    for _ in 0..80 {
        let side = rng.below(2) as usize;
        let n = 1 + rng.below(5);
        if side == 1 {
            let mut rows: Vec<(Row, i8)> = vec![];
            let mut touched = std::collections::HashSet::new();
            for _ in 0..n {
                let k = rng.below(4) as i64;
                // One change per key and batch: a batch's changes of one
                // key are one record's.
                if !touched.insert(k) {
                    continue;
                }
                next += 1;
                let t = (now + rng.below(30) as i64) * 1000 + next;
                let v = rng.below(100) as i64;
                match (current.get(&k).copied(), rng.below(3)) {
                    (Some(old), 0) => {
                        rows.push(((Some(k), t, old), -1));
                        current.remove(&k);
                        history.push((k, t, None));
                    }
                    (Some(old), 1) => {
                        rows.push(((Some(k), t, old), -1));
                        rows.push(((Some(k), t, v), 1));
                        current.insert(k, v);
                        history.push((k, t, Some(v)));
                    }
                    _ => {
                        if let Some(old) = current.get(&k) {
                            rows.push(((Some(k), t, *old), -1));
                        }
                        rows.push(((Some(k), t, v), 1));
                        current.insert(k, v);
                        history.push((k, t, Some(v)));
                    }
                }
            }
            steps.push((1, changes(&rows), i64::MIN));
        } else {
            let mut rows = vec![];
            for _ in 0..n {
                let k = (rng.below(5) != 0).then(|| rng.below(4) as i64);
                let t = (now - 10 + rng.below(40) as i64) * 1000;
                let v = rng.below(100) as i64;
                rows.push((k, t, v));
                if t >= watermark {
                    probes.push((k, t, v));
                }
            }
            steps.push((0, batch(0, &rows), i64::MIN));
        }
        now += rng.below(8) as i64;
        // Changes carry times from `now` on: never behind the watermark.
        let w = (now - 5) * 1000;
        watermark = watermark.max(w);
        steps.last_mut().unwrap().2 = w;
    }
    steps.push((0, batch(0, &[]), i64::MAX));
    let expected = probes
        .into_iter()
        .map(|p| {
            let v = history
                .iter()
                .filter(|h| p.0 == Some(h.0) && h.1 <= p.1)
                .max_by_key(|h| h.1)
                .and_then(|h| h.2.map(|v| (Some(h.0), h.1, v)));
            (p, v)
        })
        .collect();
    (steps, expected)
}

#[test]
fn random_probes_over_a_changelog_match_a_computation_from_scratch_and_restore_anywhere() {
    for seed in [3u64, 77, 4242, 2026] {
        let (steps, expected) = random_changelog(seed);
        for kind in [JoinKind::Inner, JoinKind::Left] {
            let mut j = make_changelog(kind, None);
            let mut out = vec![];
            for (i, b, w) in &steps {
                j.on_batch(*i, b.clone(), &mut out).unwrap();
                j.on_watermark(*w, &mut out).unwrap();
            }
            let mut want = BTreeMap::new();
            for (p, v) in &expected {
                if v.is_some() || kind == JoinKind::Left {
                    *want.entry(line(p, v.as_ref())).or_default() += 1;
                }
            }
            assert_eq!(lines(&out), want, "seed {seed}, {kind}");
            // At the end of time each key holds at most its current
            // version: superseded versions and passed tombstones are gone.
            assert!(j.tables[1].size().0 <= 4, "seed {seed}: {:?}", j.detail());
            let make_op = || Box::new(make_changelog(kind, None)) as Box<dyn KeyedOperator>;
            for cut in [1, steps.len() / 3, steps.len() / 2, steps.len() - 2] {
                recovery_matches_inputs(make_op, &keys(), &steps, cut);
            }
        }
    }
}

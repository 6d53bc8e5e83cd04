//! The catalog survives kill -9 and a graceful restart.

mod common;

use common::{SluiceProcess, write_trips};

#[test]
fn tables_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let mut p = SluiceProcess::start(&data);
    write_trips(&p, &lake.join("trips"));
    for name in ["trips", "trips_again"] {
        p.psql(&[
            "-c",
            &format!(
                "CREATE EXTERNAL TABLE {name} STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
                lake.join("trips").display()
            ),
        ]);
    }
    p.psql(&["-c", "DROP TABLE trips_again"]);
    p.kill9();

    let mut p = SluiceProcess::start(&data);
    let out = p.psql(&[
        "-tA",
        "-c",
        "SELECT count(*), sum(fare) FROM trips WHERE dt = '2026-11-01'",
    ]);
    assert_eq!(out.trim(), "2|30.50");
    let out = p.psql(&["-tA", "-c", "SHOW TABLES"]);
    assert_eq!(out.trim(), "trips|table", "a dropped table must stay dropped");

    // And a graceful stop (SIGTERM) works and keeps the catalog too.
    assert!(p.terminate(), "sluice did not exit on SIGTERM");
    let p = SluiceProcess::start(&data);
    let out = p.psql(&["-tA", "-c", "SELECT count(*) FROM trips"]);
    assert_eq!(out.trim(), "3");
}

#[test]
fn a_table_whose_storage_is_gone_at_start_is_kept_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let mut p = SluiceProcess::start(&data);
    write_trips(&p, &lake.join("trips"));
    p.psql(&[
        "-c",
        &format!(
            "CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
            lake.join("trips").display()
        ),
    ]);
    p.kill9();
    // The storage disappears while the server is down.
    std::fs::rename(lake.join("trips"), lake.join("moved")).unwrap();
    let mut p = SluiceProcess::start(&data);
    let out = p.psql_output("sluice", &["-c", "SELECT count(*) FROM trips"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("could not be restored at start"),
        "stderr: {stderr}"
    );
    // Storage back: after a restart the table is queryable again; it was never forgotten.
    std::fs::rename(lake.join("moved"), lake.join("trips")).unwrap();
    p.kill9();
    let p = SluiceProcess::start(&data);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT count(*) FROM trips"]).trim(), "3");
}

/// Views are kept across kill -9, a view over a view included (restored
/// in rounds whatever their names' order), and what a view reads can't be
/// dropped from under it.
#[test]
fn views_survive_kill_9_and_keep_what_they_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let mut p = SluiceProcess::start(&data);
    write_trips(&p, &lake.join("trips"));
    p.psql(&[
        "-c",
        &format!(
            "CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
            lake.join("trips").display()
        ),
    ]);
    // `a_fares` reads `z_fares`: restored by name, it would come first.
    p.psql(&[
        "-c",
        "CREATE VIEW z_fares AS SELECT dt, fare FROM trips WHERE fare > 0",
    ]);
    p.psql(&[
        "-c",
        "CREATE VIEW a_fares AS SELECT dt, sum(fare) AS total FROM z_fares GROUP BY dt",
    ]);
    p.psql(&["-c", "CREATE OR REPLACE VIEW a_fares AS SELECT dt, sum(fare) AS total, count(*) AS n FROM z_fares GROUP BY dt"]);
    let before = p.psql(&["-tA", "-c", "SELECT dt, total, n FROM a_fares ORDER BY dt"]);
    assert!(before.contains('|'), "{before}");
    p.kill9();

    let mut p = SluiceProcess::start(&data);
    let after = p.psql(&["-tA", "-c", "SELECT dt, total, n FROM a_fares ORDER BY dt"]);
    assert_eq!(after, before, "the replaced definition, restored");
    for (sql, says) in [
        (
            "DROP TABLE trips",
            "cannot drop table trips: view z_fares reads it",
        ),
        (
            "DROP VIEW z_fares",
            "cannot drop view z_fares: view a_fares reads it",
        ),
        (
            "CREATE OR REPLACE VIEW z_fares AS SELECT 1 AS one",
            "view a_fares reads it",
        ),
        ("DROP VIEW trips", "trips is a table, not a view"),
        ("CREATE VIEW trips AS SELECT 1 AS one", "already exists"),
    ] {
        let out = p.psql_output("sluice", &["-c", sql]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{sql}: {stderr}");
    }
    // Both at once: the reader goes with what it reads.
    p.psql(&["-c", "DROP VIEW a_fares, z_fares"]);
    p.psql(&["-c", "DROP TABLE trips"]);
    p.kill9();
    let p = SluiceProcess::start(&data);
    let out = p.psql_output("sluice", &["-c", "SELECT * FROM z_fares"]);
    assert!(!out.status.success(), "a dropped view stays dropped");
}

/// A lookup join's refreshing table is read anew when its job restores
/// from a checkpoint: a row deleted from the table while the server was down is
/// gone for the orders read afterwards (they wait for the new read), a
/// changed row is the new one, and what went out before stands.
#[test]
fn a_lookup_join_restored_reads_its_table_anew() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (dim, orders) = (dir.path().join("dim"), dir.path().join("orders"));
    std::fs::create_dir_all(&dim).unwrap();
    std::fs::create_dir_all(&orders).unwrap();
    std::fs::write(dim.join("rates.csv"), "currency,rate\nEUR,10\nUSD,20\n").unwrap();
    let order = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| {
            format!(
                "{{\"id\": {i}, \"currency\": \"{}\"}}\n",
                ["EUR", "USD"][i as usize % 2]
            )
        })
        .collect()
    };
    std::fs::write(orders.join("a.json"), order(0..4)).unwrap();
    let env = [("SLUICE_CHECKPOINT_INTERVAL", "300ms")];
    let mut p = SluiceProcess::start_with(&data, &env);
    p.psql(&[
        "-c",
        &format!(
            "CREATE EXTERNAL TABLE rates STORED AS CSV LOCATION '{}/' OPTIONS ('format.has_header' 'true')",
            dim.display()
        ),
    ]);
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM orders (id BIGINT, currency TEXT) WITH (connector = 'filesystem', path = '{}', \
             format = 'json', 'source.monitor-interval' = '100ms')",
            orders.display()
        ),
    ]);
    // Read again every hour: not while this test runs, but after a restore.
    p.psql(&[
        "-c",
        "SET streaming.lookup_refresh = '1h'",
        "-c",
        "CREATE MATERIALIZED VIEW priced AS SELECT o.id, coalesce(r.rate, 0) AS rate FROM orders o \
         LEFT JOIN rates FOR SYSTEM_TIME AS OF PROCTIME() AS r ON o.currency = r.currency",
    ]);
    let rows = |p: &SluiceProcess| p.psql(&["-tA", "-c", "SELECT id, rate FROM priced ORDER BY id"]);
    let first = "0|10\n1|20\n2|10\n3|20\n";
    wait_for("the first orders", || (rows(&p) == first).then_some(()));
    let done = completed_epoch(&p, "priced");
    wait_for("a checkpoint after them", || {
        (completed_epoch(&p, "priced") > done.map(|e| e + 1).or(Some(1))).then_some(())
    });
    p.kill9();

    // While the server is down USD leaves the table and EUR changes.
    std::fs::write(dim.join("rates.csv"), "currency,rate\nEUR,11\n").unwrap();
    std::fs::write(orders.join("b.json"), order(4..8)).unwrap();
    let p = SluiceProcess::start_with(&data, &env);
    let want = format!("{first}4|11\n5|0\n6|11\n7|0\n");
    wait_for("the orders after the restart", || {
        (rows(&p) == want).then_some(())
    });
    let restored = checkpoints(&p)
        .into_iter()
        .any(|(job, _, status)| job == "priced" && status == "restored");
    assert!(restored, "the job started from its checkpoint");
}

/// Polls `f` every 200 ms for up to 60 s until it returns `Some`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Clicks as JSON lines: `n` rows from row `from`, one every 100 ms of event
/// time, pages p0..p4.
fn clicks(from: i64, n: i64) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"page\": \"p{}\", \"ts\": \"2026-11-22T10:{:02}:{:02}.{}\"}}\n",
                i % 5,
                i / 600,
                (i / 10) % 60,
                i % 10
            )
        })
        .collect()
}

/// The newest completed checkpoint epoch of `job`, if any.
fn completed_epoch(p: &SluiceProcess, job: &str) -> Option<i64> {
    checkpoints(p)
        .into_iter()
        .filter(|(j, _, status)| j == job && status == "completed")
        .map(|(_, epoch, _)| epoch)
        .max()
}

/// (job, epoch, status) of SHOW CHECKPOINTS.
fn checkpoints(p: &SluiceProcess) -> Vec<(String, i64, String)> {
    p.psql(&["-tA", "-c", "SHOW CHECKPOINTS"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn jobs_resume_from_their_checkpoint_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    resume_after_kill_9(dir.path(), &[]);
    assert!(
        dir.path().join("data/checkpoints").is_dir(),
        "checkpoints are kept in the data directory by default"
    );
}

/// The same with the checkpoints on the S3 server (`checkpoint_location`):
/// nothing of them is on local disk, and the jobs still resume.
#[test]
fn jobs_resume_from_checkpoints_on_s3_after_kill_9() {
    let endpoint = std::env::var("SLUICE_TEST_S3_ENDPOINT")
        .expect("needs SLUICE_TEST_S3_ENDPOINT: run ./scripts/test.sh");
    let key = std::env::var("SLUICE_TEST_S3_ACCESS_KEY_ID").unwrap_or("test".into());
    let secret = std::env::var("SLUICE_TEST_S3_SECRET_ACCESS_KEY").unwrap_or("testtesttest".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // The bucket scripts/infra/s3.sh creates; a prefix of this run's own.
    let location = format!("s3://lake/checkpoints-{nanos:x}/");
    let dir = tempfile::tempdir().unwrap();
    // The secret key from a file (not the command line, where `ps` shows it).
    let secret_file = dir.path().join("s3-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    resume_after_kill_9(
        dir.path(),
        &[
            ("SLUICE_CHECKPOINT_LOCATION", &location),
            ("SLUICE_S3_ENDPOINT", &endpoint),
            ("SLUICE_S3_ACCESS_KEY_ID", &key),
            ("SLUICE_S3_SECRET_ACCESS_KEY_FILE", secret_file.to_str().unwrap()),
        ],
    );
    assert!(
        !dir.path().join("data/checkpoints").exists(),
        "no checkpoint is written to the data directory"
    );
}

/// A file stream of clicks in `input`, the view `totals` (clicks per page)
/// and the sink `per_window` (clicks per page and 10-second window, as CSV
/// files in `out`).
fn create_click_jobs(p: &SluiceProcess, input: &std::path::Path, out: &std::path::Path) {
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM clicks (page TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'filesystem', \
             path = '{}', format = 'json', 'source.monitor-interval' = '100ms')",
            input.display()
        ),
        "-c",
        "CREATE MATERIALIZED VIEW totals AS SELECT page, count(*) AS n FROM clicks GROUP BY page",
        "-c",
        &format!(
            "CREATE SINK per_window WITH (connector = 'filesystem', path = '{}', format = 'csv', \
             'sink.rolling-policy.rollover-interval' = '100ms') AS \
             SELECT page, window_start, count(*) AS views FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) \
             GROUP BY page, window_start",
            out.display()
        ),
    ]);
}

/// Views landed by `per_window` so far.
fn landed_views(p: &SluiceProcess) -> i64 {
    p.psql(&["-tA", "-c", "SELECT coalesce(sum(views), 0) FROM per_window"])
        .trim()
        .parse()
        .unwrap()
}

/// `per_window`'s rows (page|window_start|views): asserts that each
/// window landed once and with all its 20 clicks, and returns how many.
fn windows_landed_once(p: &SluiceProcess) -> usize {
    let windows = p.psql(&[
        "-tA",
        "-c",
        "SELECT page, window_start, views FROM per_window ORDER BY 1, 2",
    ]);
    let windows: Vec<&str> = windows.lines().collect();
    let distinct: std::collections::BTreeSet<&str> =
        windows.iter().map(|l| l.rsplit_once('|').unwrap().0).collect();
    assert_eq!(
        windows.len(),
        distinct.len(),
        "no window landed twice: {windows:#?}"
    );
    assert!(windows.iter().all(|l| l.ends_with("|20")), "{windows:#?}");
    windows.len()
}

fn resume_after_kill_9(dir: &std::path::Path, extra_env: &[(&str, &str)]) {
    let data = dir.join("data");
    let input = dir.join("clicks");
    let out = dir.join("out");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.json"), clicks(0, 300)).unwrap();
    let mut env = vec![("SLUICE_CHECKPOINT_INTERVAL", "300ms")];
    env.extend_from_slice(extra_env);
    let mut p = SluiceProcess::start_with(&data, &env);
    create_click_jobs(&p, &input, &out);
    // The first file is in the view and its closed windows (the last one,
    // 10:00:20-30, stays open) have landed ...
    let landed = landed_views;
    wait_for("the first file", || {
        let total = p.psql(&["-tA", "-c", "SELECT coalesce(sum(n), 0) FROM totals"]);
        (total.trim() == "300" && landed(&p) == 200).then_some(())
    });
    // ... and a checkpoint started after that completed for both jobs.
    let (v, s) = (completed_epoch(&p, "totals"), completed_epoch(&p, "per_window"));
    wait_for("checkpoints after the first file", || {
        (completed_epoch(&p, "totals") > v.map(|e| e + 1).or(Some(1))
            && completed_epoch(&p, "per_window") > s.map(|e| e + 1).or(Some(1)))
        .then_some(())
    });
    p.kill9();

    std::fs::write(input.join("b.json"), clicks(300, 300)).unwrap();
    let p = SluiceProcess::start_with(&data, &env);
    let restored: Vec<String> = checkpoints(&p)
        .into_iter()
        .filter(|(_, _, status)| status == "restored")
        .map(|(job, _, _)| job)
        .collect();
    assert_eq!(
        restored,
        ["per_window", "totals"],
        "both jobs start from a checkpoint"
    );
    let want = (0..5).map(|k| format!("p{k}|120")).collect::<Vec<_>>().join("\n");
    wait_for("both files in the view", || {
        let rows = p.psql(&["-tA", "-c", "SELECT page, n FROM totals ORDER BY page"]);
        (rows.trim() == want).then_some(())
    });
    // Windows up to 10:00:50 are closed; each landed exactly once.
    wait_for("the second file's windows", || (landed(&p) >= 500).then_some(()));
    assert_eq!(windows_landed_once(&p), 25, "no window lost");
    // The restored jobs read only the new file: resuming, not replaying.
    // SHOW JOBS: job|kind|status|operator_id|operator|parallelism|rows_in|rows_out|...
    let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
    let mut per_job: std::collections::BTreeMap<String, i64> = Default::default();
    for l in jobs.lines() {
        let f: Vec<&str> = l.split('|').collect();
        if f.len() > 7 && f[4].starts_with("Source") {
            *per_job.entry(f[0].to_string()).or_default() += f[7].parse::<i64>().unwrap();
        }
    }
    assert_eq!(
        per_job,
        [("per_window".to_string(), 300), ("totals".to_string(), 300)].into(),
        "sources resumed after the first file"
    );
}

/// Tasks of each job's keyed operators (Aggregate, WindowAggregate), from
/// SHOW JOBS: job|kind|status|operator_id|operator|parallelism|...
fn keyed_parallelism(p: &SluiceProcess) -> std::collections::BTreeMap<String, i64> {
    p.psql(&["-tA", "-c", "SHOW JOBS"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() > 5 && f[4].contains("Aggregate")).then(|| (f[0].to_string(), f[5].parse().unwrap()))
        })
        .collect()
}

/// A job restores at another parallelism than its checkpoint was taken
/// at (a server restarted with another `--parallelism`): its keyed state
/// (a GROUP BY's groups, a window aggregate's open windows) is split anew
/// by key group, the view's lanes and the file sink's lanes are taken over
/// by the new lanes, and the results are exact: 2 tasks, kill -9, 3 tasks,
/// kill -9, 1 task.
#[test]
fn jobs_restore_at_another_parallelism_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = dir.path().join("clicks");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.json"), clicks(0, 300)).unwrap();
    let env = |p: &'static str| [("SLUICE_CHECKPOINT_INTERVAL", "300ms"), ("SLUICE_PARALLELISM", p)];
    let mut p = SluiceProcess::start_with(&data, &env("2"));
    create_click_jobs(&p, &input, &out);
    let landed = landed_views;
    let totals = |p: &SluiceProcess| p.psql(&["-tA", "-c", "SELECT page, n FROM totals ORDER BY page"]);
    let per_page = |n: i64| (0..5).map(|k| format!("p{k}|{n}")).collect::<Vec<_>>().join("\n");
    // Waits for the view and the landed windows, then for a checkpoint
    // of both jobs started after them.
    let settle = |p: &SluiceProcess, view: i64, windows: i64| {
        let mut seen = (String::new(), 0);
        let last = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !(seen.0 == per_page(view) && seen.1 == windows) {
            assert!(
                std::time::Instant::now() < last,
                "timed out waiting for {view} per page and {windows} landed views; last seen {seen:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
            seen = (totals(p).trim().to_string(), landed(p));
        }
        let (v, s) = (completed_epoch(p, "totals"), completed_epoch(p, "per_window"));
        wait_for("checkpoints after them", || {
            (completed_epoch(p, "totals") > v.map(|e| e + 1).or(Some(1))
                && completed_epoch(p, "per_window") > s.map(|e| e + 1).or(Some(1)))
            .then_some(())
        });
    };
    let both = |n: i64| -> std::collections::BTreeMap<String, i64> {
        [("per_window".to_string(), n), ("totals".to_string(), n)].into()
    };
    assert_eq!(keyed_parallelism(&p), both(2));
    // 300 clicks: 60 per page; windows to 10:00:20 closed (200 views).
    settle(&p, 60, 200);
    p.kill9();

    std::fs::write(input.join("b.json"), clicks(300, 300)).unwrap();
    let mut p = SluiceProcess::start_with(&data, &env("3"));
    assert_eq!(keyed_parallelism(&p), both(3), "restarted with 3 tasks");
    settle(&p, 120, 500);
    p.kill9();

    std::fs::write(input.join("c.json"), clicks(600, 300)).unwrap();
    let p = SluiceProcess::start_with(&data, &env("1"));
    assert_eq!(keyed_parallelism(&p), both(1), "restarted with 1 task");
    let restored = checkpoints(&p)
        .into_iter()
        .filter(|(_, _, status)| status == "restored")
        .count();
    assert_eq!(restored, 2, "both jobs start from a checkpoint");
    wait_for("the third file", || {
        (totals(&p).trim() == per_page(180) && landed(&p) == 800).then_some(())
    });
    // Every window to 10:01:20 landed once, with all its 20 clicks.
    assert_eq!(windows_landed_once(&p), 40, "no window lost");
}

/// A GROUP BY with many groups of which few change between checkpoints
/// takes incremental checkpoints (the changed groups over the last full
/// one); after kill -9 the job restores from one and the view is exact.
#[test]
fn incremental_checkpoints_restore_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = dir.path().join("events");
    std::fs::create_dir_all(&input).unwrap();
    let rows = |keys: std::ops::Range<i64>, v: i64| -> String {
        keys.map(|k| format!("{{\"page\": \"p{k}\", \"v\": {v}}}\n"))
            .collect()
    };
    std::fs::write(input.join("a.json"), rows(0..1000, 1)).unwrap();
    let env = [("SLUICE_CHECKPOINT_INTERVAL", "300ms")];
    let mut p = SluiceProcess::start_with(&data, &env);
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM events (page TEXT, v BIGINT) WITH (connector = 'filesystem', \
             path = '{}', format = 'json', 'source.monitor-interval' = '100ms')",
            input.display()
        ),
        "-c",
        "CREATE MATERIALIZED VIEW totals AS SELECT page, count(*) AS n, sum(v) AS s FROM events GROUP BY page",
        // count(DISTINCT) has no column-wise form: the boxed GROUP BY.
        "-c",
        "CREATE MATERIALIZED VIEW distincts AS SELECT page, count(DISTINCT v) AS d FROM events GROUP BY page",
    ]);
    let distinct = |p: &SluiceProcess| -> String {
        p.psql(&["-tA", "-c", "SELECT count(*), sum(d) FROM distincts"])
            .trim()
            .to_string()
    };
    let total = |p: &SluiceProcess| -> String {
        p.psql(&["-tA", "-c", "SELECT count(*), sum(n), sum(s) FROM totals"])
            .trim()
            .to_string()
    };
    wait_for("the first file", || {
        (total(&p) == "1000|1000|1000" && distinct(&p) == "1000|1000").then_some(())
    });
    let first = (completed_epoch(&p, "totals"), completed_epoch(&p, "distincts"));
    wait_for("a checkpoint after the first file", || {
        (completed_epoch(&p, "totals") > first.0.map(|e| e + 1).or(Some(1))
            && completed_epoch(&p, "distincts") > first.1.map(|e| e + 1).or(Some(1)))
        .then_some(())
    });
    // Ten groups change: the next checkpoints are incremental.
    std::fs::write(input.join("b.json"), rows(0..10, 5)).unwrap();
    wait_for("the second file", || {
        (total(&p) == "1000|1010|1050" && distinct(&p) == "1000|1010").then_some(())
    });
    let manifests = |job: &str| -> Vec<String> {
        let job = data.join("checkpoints").join(job);
        let mut out = vec![];
        for e in std::fs::read_dir(&job).into_iter().flatten().flatten() {
            if let Ok(m) = std::fs::read_to_string(e.path().join("_manifest.json")) {
                out.push(m);
            }
        }
        out
    };
    // Incremental for both the aggregate's task (`op-`) and the view's
    // lanes (`sink-`: the rows changed since their full snapshot).
    let based = |m: &str, key: &str| {
        m.split_once("\"bases\"")
            .is_some_and(|(_, rest)| rest.split('}').next().unwrap_or("").contains(key))
    };
    let second = completed_epoch(&p, "totals");
    wait_for("an incremental checkpoint after the second file", || {
        (completed_epoch(&p, "totals") > second.map(|e| e + 1).or(Some(1))
            && ["totals", "distincts"].iter().all(|job| {
                manifests(job)
                    .iter()
                    .any(|m| based(m, "\"op-") && based(m, "\"sink-"))
            }))
        .then_some(())
    });
    p.kill9();

    std::fs::write(input.join("c.json"), rows(5..15, 100)).unwrap();
    let p = SluiceProcess::start_with(&data, &env);
    for view in ["totals", "distincts"] {
        assert!(
            checkpoints(&p)
                .iter()
                .any(|(job, _, status)| job == view && status == "restored"),
            "{view} starts from a checkpoint"
        );
    }
    // Exact: every group once, the changes of b and c counted once
    // (distinct values: p0-p4 {1, 5}, p5-p9 {1, 5, 100}, p10-p14 {1, 100}).
    wait_for("the third file", || {
        (total(&p) == "1000|1020|2050" && distinct(&p) == "1000|1020").then_some(())
    });
    let changed = p.psql(&[
        "-tA",
        "-c",
        "SELECT page, n, s FROM totals WHERE n > 1 ORDER BY page",
    ]);
    let want: Vec<String> = (0..15)
        .map(|k| {
            let (n, s) = match k {
                0..5 => (2, 6),
                5..10 => (3, 106),
                _ => (2, 101),
            };
            format!("p{k}|{n}|{s}")
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let got: std::collections::BTreeSet<String> = changed.lines().map(str::to_string).collect();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
}

/// A job reading a bounded stream and an unbounded one keeps taking
/// checkpoints after the bounded one ends (as Flink does since FLIP-147):
/// later checkpoints record the ended lanes at their end and take the last
/// state of the sink lanes they fed. After kill -9 the jobs restore from
/// such a checkpoint: the bounded stream is not read again, the view keeps
/// the rows of its finished lanes, the Delta sink lands nothing twice.
#[test]
fn checkpoints_go_on_after_a_bounded_input_ends() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = dir.path().join("clicks");
    let lake = dir.path().join("landed");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.json"), clicks(0, 300)).unwrap();
    let env = [("SLUICE_CHECKPOINT_INTERVAL", "300ms")];
    let mut p = SluiceProcess::start_with(&data, &env);
    // 2000 nexmark events hold 1840 bids.
    let union = "SELECT 'bid' AS src, CAST(auction AS TEXT) AS k FROM bid \
                 UNION ALL SELECT 'click' AS src, page AS k FROM clicks";
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM clicks (page TEXT, ts TIMESTAMP) WITH (connector = 'filesystem', \
             path = '{}', format = 'json', 'source.monitor-interval' = '100ms')",
            input.display()
        ),
        "-c",
        "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', \
         'events.max' = '2000', 'events.per.second' = '0')",
        "-c",
        &format!("CREATE MATERIALIZED VIEW seen AS {union}"),
        // The bid count's task ends with its input; the click count's runs on.
        "-c",
        "CREATE MATERIALIZED VIEW per_src AS SELECT 'bid' AS src, count(*) AS n FROM bid \
         UNION ALL SELECT 'click' AS src, count(*) AS n FROM clicks",
        "-c",
        &format!(
            "CREATE SINK landed WITH (connector = 'delta', path = '{}') AS {union}",
            lake.display()
        ),
    ]);
    let counts = |p: &SluiceProcess, table: &str| -> String {
        p.psql(&[
            "-tA",
            "-c",
            &format!("SELECT src, count(*) FROM {table} GROUP BY src ORDER BY src"),
        ])
        .trim()
        .replace('\n', " ")
    };
    let per_src = |p: &SluiceProcess| -> String {
        p.psql(&["-tA", "-c", "SELECT src, n FROM per_src ORDER BY src"])
            .trim()
            .replace('\n', " ")
    };
    wait_for("the bids and the first file", || {
        (counts(&p, "seen") == "bid|1840 click|300"
            && counts(&p, "landed") == "bid|1840 click|300"
            && per_src(&p) == "bid|1840 click|300")
            .then_some(())
    });
    // The bid stream has ended; checkpoints keep completing for every job.
    let jobs = ["landed", "per_src", "seen"];
    let two_more = |p: &SluiceProcess, what: &str| {
        let before: Vec<Option<i64>> = jobs.iter().map(|j| completed_epoch(p, j)).collect();
        wait_for(what, || {
            jobs.iter()
                .zip(&before)
                .all(|(j, b)| completed_epoch(p, j) > b.map(|e| e + 1).or(Some(1)))
                .then_some(())
        });
        before
    };
    two_more(&p, "checkpoints after the bounded stream ended");
    std::fs::write(input.join("b.json"), clicks(300, 300)).unwrap();
    wait_for("the second file", || {
        (counts(&p, "seen") == "bid|1840 click|600"
            && counts(&p, "landed") == "bid|1840 click|600"
            && per_src(&p) == "bid|1840 click|600")
            .then_some(())
    });
    let before = two_more(&p, "checkpoints after the second file");
    p.kill9();

    std::fs::write(input.join("c.json"), clicks(600, 300)).unwrap();
    let p = SluiceProcess::start_with(&data, &env);
    let restored: Vec<(String, i64)> = checkpoints(&p)
        .into_iter()
        .filter(|(_, _, status)| status == "restored")
        .map(|(job, epoch, _)| (job, epoch))
        .collect();
    assert_eq!(restored.len(), 3, "{restored:?}");
    for (job, epoch) in &restored {
        let before = before[jobs.iter().position(|j| j == job).unwrap()];
        assert!(
            Some(*epoch) > before,
            "{job} restored from checkpoint {epoch}, one taken after the second file ({before:?} or later)"
        );
    }
    wait_for("the third file", || {
        (counts(&p, "seen") == "bid|1840 click|900"
            && counts(&p, "landed") == "bid|1840 click|900"
            && per_src(&p) == "bid|1840 click|900")
            .then_some(())
    });
    // Resuming, not replaying: the bid stream was at its end, the clicks
    // after the second file.
    let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
    let mut read: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for l in jobs.lines() {
        let f: Vec<&str> = l.split('|').collect();
        if f.len() > 7 && f[4].starts_with("Source") {
            *read.entry((f[0].to_string(), f[4].to_string())).or_default() += f[7].parse::<i64>().unwrap();
        }
    }
    let want: std::collections::BTreeMap<(String, String), i64> = [
        (("landed".to_string(), "Source: bid".to_string()), 0),
        (("landed".to_string(), "Source: clicks".to_string()), 300),
        (("per_src".to_string(), "Source: bid".to_string()), 0),
        (("per_src".to_string(), "Source: clicks".to_string()), 300),
        (("seen".to_string(), "Source: bid".to_string()), 0),
        (("seen".to_string(), "Source: clicks".to_string()), 300),
    ]
    .into();
    assert_eq!(read, want, "{jobs}");
}

/// A join's state survives kill -9 and a restart at another parallelism:
/// clicks of users not yet known are held by the join before the kill,
/// and the users arriving after the restart find them.
#[test]
fn a_join_restores_its_state_after_kill_9_at_another_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (users, clicks) = (dir.path().join("users"), dir.path().join("clicks"));
    std::fs::create_dir_all(&users).unwrap();
    std::fs::create_dir_all(&clicks).unwrap();
    let user_rows = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| format!("{{\"id\": {i}, \"name\": \"u{i:02}\"}}\n"))
            .collect()
    };
    // Click i is by user i % 60.
    let click_rows = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| format!("{{\"uid\": {}, \"page\": \"p{}\"}}\n", i % 60, i % 7))
            .collect()
    };
    std::fs::write(users.join("a.json"), user_rows(0..50)).unwrap();
    std::fs::write(clicks.join("a.json"), click_rows(0..300)).unwrap();
    let env = |p: &'static str| [("SLUICE_CHECKPOINT_INTERVAL", "300ms"), ("SLUICE_PARALLELISM", p)];
    let mut p = SluiceProcess::start_with(&data, &env("2"));
    let stream = |name: &str, cols: &str, path: &std::path::Path| {
        format!(
            "CREATE STREAM {name} ({cols}) WITH (connector = 'filesystem', path = '{}', format = 'json', \
             'source.monitor-interval' = '100ms')",
            path.display()
        )
    };
    p.psql(&[
        "-c",
        &stream("users", "id BIGINT, name TEXT", &users),
        "-c",
        &stream("clicks", "uid BIGINT, page TEXT", &clicks),
        "-c",
        "CREATE MATERIALIZED VIEW per_user AS SELECT u.name, count(c.page) AS n \
         FROM users u LEFT JOIN clicks c ON c.uid = u.id GROUP BY u.name",
    ]);
    // (users, clicks counted, users without clicks)
    let summary = |p: &SluiceProcess| {
        p.psql(&[
            "-tA",
            "-c",
            "SELECT count(*), coalesce(sum(n), 0), count(*) FILTER (WHERE n = 0) FROM per_user",
        ])
        .trim()
        .to_string()
    };
    // Users 0..49 with 5 clicks each; the clicks of users 50..59 are held.
    wait_for("the first files", || (summary(&p) == "50|250|0").then_some(()));
    let before = completed_epoch(&p, "per_user");
    wait_for("a checkpoint after them", || {
        (completed_epoch(&p, "per_user") > before.map(|e| e + 1).or(Some(1))).then_some(())
    });
    p.kill9();

    // Users 50..64 (60..64 never click), 300 more clicks.
    std::fs::write(users.join("b.json"), user_rows(50..65)).unwrap();
    std::fs::write(clicks.join("b.json"), click_rows(300..600)).unwrap();
    let p = SluiceProcess::start_with(&data, &env("3"));
    let restored = checkpoints(&p)
        .into_iter()
        .filter(|(job, _, status)| job == "per_user" && status == "restored")
        .count();
    assert_eq!(restored, 1, "the job starts from its checkpoint");
    wait_for("the second files", || (summary(&p) == "65|600|5").then_some(()));
    let rows = p.psql(&[
        "-tA",
        "-c",
        "SELECT name, n FROM per_user WHERE n > 0 ORDER BY name",
    ]);
    let want: Vec<String> = (0..60).map(|i| format!("u{i:02}|10")).collect();
    assert_eq!(rows.trim().lines().collect::<Vec<_>>(), want);
}

/// A top-N and an OVER aggregate survive kill -9 and a restart at another
/// parallelism: the ranked rows per item and the rows waiting for the
/// watermark (and each item's frame) come back, and the results after the
/// restart are what one uninterrupted run gives.
#[test]
fn a_top_n_and_an_over_aggregate_restore_after_kill_9_at_another_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bids = dir.path().join("bids");
    std::fs::create_dir_all(&bids).unwrap();
    // Bid i: item i % 10, a price, one second after bid i - 1.
    let price = |i: i64| (i * 37) % 101;
    let bid_rows = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| {
            format!(
                "{{\"item\": {}, \"price\": {}, \"ts\": \"2026-01-01T00:{:02}:{:02}\"}}\n",
                i % 10,
                price(i),
                i / 60,
                i % 60
            )
        })
        .collect()
    };
    std::fs::write(bids.join("a.json"), bid_rows(0..300)).unwrap();
    let env = |p: &'static str| [("SLUICE_CHECKPOINT_INTERVAL", "300ms"), ("SLUICE_PARALLELISM", p)];
    let mut p = SluiceProcess::start_with(&data, &env("2"));
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM bids (item BIGINT, price BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) \
             WITH (connector = 'filesystem', path = '{}', format = 'json', 'source.monitor-interval' = '100ms')",
            bids.display()
        ),
        "-c",
        "CREATE MATERIALIZED VIEW top2 AS SELECT item, price FROM (SELECT item, price, \
         ROW_NUMBER() OVER (PARTITION BY item ORDER BY price DESC) AS rn FROM bids) WHERE rn <= 2",
        "-c",
        "CREATE MATERIALIZED VIEW recent AS SELECT item, ts, price, sum(price) OVER (PARTITION BY item \
         ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM bids",
    ]);
    let count = |p: &SluiceProcess, view: &str| {
        p.psql(&["-tA", "-c", &format!("SELECT count(*) FROM {view}")])
            .trim()
            .to_string()
    };
    // Every bid but the last (at the watermark) has gone out.
    wait_for("the first file", || {
        (count(&p, "recent") == "299" && count(&p, "top2") == "20").then_some(())
    });
    for job in ["top2", "recent"] {
        let before = completed_epoch(&p, job);
        wait_for("a checkpoint after it", || {
            (completed_epoch(&p, job) > before.map(|e| e + 1).or(Some(1))).then_some(())
        });
    }
    p.kill9();

    std::fs::write(bids.join("b.json"), bid_rows(300..600)).unwrap();
    let p = SluiceProcess::start_with(&data, &env("3"));
    let restored: Vec<String> = checkpoints(&p)
        .into_iter()
        .filter(|(_, _, status)| status == "restored")
        .map(|(job, _, _)| job)
        .collect();
    assert_eq!(
        restored.len(),
        2,
        "both jobs start from their checkpoint: {restored:?}"
    );
    wait_for("the second file", || (count(&p, "recent") == "599").then_some(()));
    // What one run over bids 0..600 gives (bid 599 waits for the watermark).
    let mut want_top: Vec<String> = Vec::new();
    let mut want_recent: Vec<String> = Vec::new();
    for item in 0..10 {
        let ids: Vec<i64> = (0..600).filter(|i| i % 10 == item).collect();
        let mut prices: Vec<i64> = ids.iter().map(|i| price(*i)).collect();
        prices.sort_unstable_by(|a, b| b.cmp(a));
        want_top.extend(prices[..2].iter().map(|p| format!("{item}|{p}")));
        for (k, i) in ids.iter().enumerate().filter(|(_, i)| **i < 599) {
            let s: i64 = ids[k.saturating_sub(2)..=k].iter().map(|i| price(*i)).sum();
            want_recent.push(format!("{item}|{}|{s}", price(*i)));
        }
    }
    let rows = |sql: &str| -> Vec<String> {
        p.psql(&["-tA", "-c", sql])
            .trim()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        rows("SELECT item, price FROM top2 ORDER BY item, price DESC"),
        want_top
    );
    assert_eq!(
        rows("SELECT item, price, s FROM recent ORDER BY item, ts"),
        want_recent
    );
}

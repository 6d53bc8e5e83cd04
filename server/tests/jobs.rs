//! Continuous queries through the real binary: they come back after a
//! restart, SUBSCRIBE streams and ends on cancel, a failing job fails alone,
//! and SHOW JOBS tells what happened.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::SluiceProcess;
use futures::{StreamExt, pin_mut};
use tokio_postgres::{NoTls, SimpleQueryMessage};

const BID: &str = "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', \
                   'events.max' = '20000', 'events.per.second' = '0', 'nexmark.base.time' = '1700000000000')";

/// Polls `sql` (one value) until it equals `want` or 20 s pass.
fn wait_for(p: &SluiceProcess, sql: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = p.psql(&["-tA", "-c", sql]).trim().to_string();
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn views_and_sinks_run_again_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = SluiceProcess::start(&data);
    p.psql(&["-c", BID]);
    p.psql(&[
        "-c",
        "CREATE MATERIALIZED VIEW per_auction AS SELECT auction, count(*) AS n FROM bid GROUP BY auction",
    ]);
    p.psql(&[
        "-c",
        "CREATE SINK landed WITH (connector = 'filesystem', path = 'lake/bids', partition_by = 'dt') \
         AS SELECT auction, price, to_char(date_time, '%Y-%m-%d') AS dt FROM bid",
    ]);
    assert_eq!(wait_for(&p, "SELECT sum(n) FROM per_auction", "18400"), "18400");
    assert_eq!(wait_for(&p, "SELECT count(*) FROM landed", "18400"), "18400");
    p.kill9();

    // Back with every object. Both jobs took their final checkpoint when
    // the bounded input ended, so they resume at its end: the view gets its
    // rows back, and the sink lands nothing a second time.
    let p = SluiceProcess::start(&data);
    let views = p.psql(&["-tA", "-c", "SHOW MATERIALIZED VIEWS"]);
    assert!(views.starts_with("per_auction|"), "{views}");
    let sinks = p.psql(&["-tA", "-c", "SHOW SINKS"]);
    assert!(sinks.starts_with("landed|filesystem|"), "{sinks}");
    let lines = wait_for_job_lines(&p, "landed", |l| {
        l.first().is_some_and(|l| l.contains("|finished|"))
    });
    assert!(
        lines.first().is_some_and(|l| l.contains("|finished|")),
        "{lines:?}"
    );
    assert!(lines[0].contains("restored from checkpoint"), "{lines:?}");
    assert_eq!(wait_for(&p, "SELECT sum(n) FROM per_auction", "18400"), "18400");
    assert_eq!(
        p.psql(&["-tA", "-c", "SELECT count(*) FROM landed"]).trim(),
        "18400"
    );
}

#[test]
fn a_failing_job_fails_alone_and_show_jobs_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start_with(dir.path(), &[("SLUICE_DEBUG_FUNCTIONS", "1")]);
    p.psql(&["-c", BID]);
    p.psql(&[
        "-c",
        "CREATE MATERIALIZED VIEW ok AS SELECT auction FROM bid WHERE price > 0",
    ]);
    // A job that checkpoints is restarted after a failure (here once), then
    // stays failed.
    p.psql(&[
        "-c",
        "SET streaming.restart_attempts = 1",
        "-c",
        "CREATE MATERIALIZED VIEW doomed AS SELECT sluice_debug_panic(url) AS x FROM bid",
    ]);
    // Waits for the final state: failed after its one restart. (Between a
    // failure and its supervisor scheduling the restart, SHOW JOBS may say
    // `failed` for a moment without a restart yet.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
        let settled = jobs.lines().any(|l| {
            l.starts_with("doomed|materialized view|failed") && l.contains("restart 1 after a failure")
        });
        if settled || Instant::now() > deadline {
            break jobs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let doomed: Vec<&str> = jobs.lines().filter(|l| l.starts_with("doomed|")).collect();
    assert!(!doomed.is_empty(), "{jobs}");
    for line in &doomed {
        assert!(line.contains("|failed|"), "{line}");
        assert!(line.contains("sluice_debug_panic"), "the error is shown: {line}");
    }
    assert!(doomed[0].contains("restart 1 after a failure"), "{}", doomed[0]);
    // The other job and the server carry on.
    assert_eq!(wait_for(&p, "SELECT count(*) > 18000 FROM ok", "t"), "t");
    let ok: Vec<&str> = jobs.lines().filter(|l| l.starts_with("ok|")).collect();
    assert!(ok.iter().all(|l| !l.contains("|failed|")), "{jobs}");
    // SHOW JOBS counts what flowed: the source of `ok` produced every bid.
    let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
    let source = jobs
        .lines()
        .find(|l| l.starts_with("ok|") && l.contains("|Source: bid|"))
        .unwrap_or_else(|| panic!("{jobs}"));
    let cols: Vec<&str> = source.split('|').collect();
    assert_eq!(cols[7], "18400", "rows_out of the source: {source}");
    assert_eq!(p.psql(&["-tA", "-c", "SELECT 1"]).trim(), "1");
}

#[test]
fn subscribe_streams_changes_and_ends_on_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    p.psql(&[
        "-c",
        "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.per.second' = '2000')",
    ]);
    p.psql(&[
        "-c",
        "CREATE MATERIALIZED VIEW per_second AS SELECT window_start, count(*) AS n \
         FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY window_start",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&p.conn_string(), NoTls).await.unwrap();
        tokio::spawn(conn);
        let stream = client.simple_query_raw("SUBSCRIBE TO per_second").await.unwrap();
        pin_mut!(stream);
        // Rows arrive while the statement is still running: one per
        // closed one-second window.
        let mut rows = 0;
        while rows < 3 {
            match stream.next().await.expect("subscription ended early").unwrap() {
                SimpleQueryMessage::Row(r) => {
                    assert_eq!(r.get(0), Some("insert"));
                    assert!(r.get(3).unwrap().parse::<i64>().unwrap() > 0);
                    rows += 1;
                }
                SimpleQueryMessage::RowDescription(cols) => {
                    let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                    assert_eq!(names, vec!["op", "progress", "window_start", "n"]);
                }
                SimpleQueryMessage::CommandComplete(_) => {
                    panic!("a subscription does not complete by itself")
                }
                _ => {}
            }
        }
        // Cancel (Ctrl-C in psql) ends it with 57014 ...
        client.cancel_token().cancel_query(NoTls).await.unwrap();
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("ended without the cancel error"),
            }
        };
        assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("57014"), "{err}");
        // ... and the session goes on.
        let n = client
            .simple_query("SELECT count(*) FROM per_second")
            .await
            .unwrap();
        assert!(matches!(n.get(1), Some(SimpleQueryMessage::Row(_))));

        // The extended protocol streams too.
        let stream = client
            .query_raw(
                "SUBSCRIBE TO (SELECT auction, price FROM bid WHERE price > 1000)",
                Vec::<i64>::new(),
            )
            .await
            .unwrap();
        pin_mut!(stream);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.get::<_, &str>(0), "insert");
        assert!(first.get::<_, i64>(3) > 1000);
    });

    // psql prints COPY (SUBSCRIBE ...) TO STDOUT as rows arrive (stdbuf:
    // psql's stdout is a pipe here, which stdio would buffer).
    let mut child = Command::new("stdbuf")
        .args([
            "-o0",
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            &p.port.to_string(),
            "-U",
            "sluice",
            "-d",
            "sluice",
        ])
        .args(["-c", "COPY (SUBSCRIBE TO per_second) TO STDOUT"])
        .env("PGPASSWORD", "sluice")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let cols: Vec<&str> = first.split('\t').collect();
    assert_eq!(cols.len(), 4, "{first}");
    assert_eq!(cols[0], "insert");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_off_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    // A backlog of 1 MiB (32 by default) fills in the seconds the test waits.
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "subscriber_backlog_mb = 1\n[users]\nsluice = \"sluice\"\n",
    )
    .unwrap();
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[("SLUICE_CONFIG", config.to_str().unwrap())],
    );
    p.psql(&[
        "-c",
        "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.per.second' = '200000')",
    ]);
    // Many groups change at every step: a heavy change feed.
    p.psql(&[
        "-c",
        "CREATE MATERIALIZED VIEW per_bidder AS SELECT bidder, count(*) AS n FROM bid GROUP BY bidder",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&p.conn_string(), NoTls).await.unwrap();
        tokio::spawn(conn);
        let stream = client.simple_query_raw("SUBSCRIBE TO per_bidder").await.unwrap();
        pin_mut!(stream);
        // Read a little, then stop reading while the view keeps changing.
        stream.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let err = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break e,
                    None => panic!("ended without an error"),
                }
            }
        })
        .await
        .expect("the subscription was not cut off");
        let msg = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("fell more than 1 MiB of changes behind"), "{err}");
        // The view itself is unharmed.
        let rows = client
            .simple_query("SELECT count(*) FROM per_bidder")
            .await
            .unwrap();
        assert!(matches!(rows.get(1), Some(SimpleQueryMessage::Row(_))));
    });
}

/// Polls SHOW JOBS until `pred` holds for the lines of job `name` (or 30 s
/// pass); those lines.
fn wait_for_job_lines(p: &SluiceProcess, name: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
        let lines: Vec<String> = jobs
            .lines()
            .filter(|l| l.starts_with(&format!("{name}|")))
            .map(str::to_string)
            .collect();
        if pred(&lines) || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_failed_job_restarts_from_its_checkpoint_and_lands_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail-now");
    let p = SluiceProcess::start_with(dir.path(), &[("SLUICE_DEBUG_FUNCTIONS", "1")]);
    p.psql(&[
        "-c",
        "CREATE STREAM nums (id BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '2000', \
         'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '16000')",
    ]);
    // The session's settings go with the job into its restarts.
    p.psql(&[
        "-c",
        "SET streaming.checkpoint_interval = '300ms'",
        "-c",
        "SET streaming.restart_attempts = 4",
        "-c",
        &format!(
            "CREATE SINK landed WITH (connector = 'delta', path = 'landed') AS \
             SELECT id FROM nums WHERE sluice_debug_fail_if_exists('{}')",
            flag.display()
        ),
    ]);
    // Some output committed, then the job fails.
    assert_eq!(
        wait_for(&p, "SELECT count(*) > 0 FROM landed", "t"),
        "t",
        "{}",
        p.psql(&["-c", "SHOW CHECKPOINTS"])
    );
    std::fs::write(&flag, b"").unwrap();
    let lines = wait_for_job_lines(&p, "landed", |l| {
        l.first().is_some_and(|l| l.contains("|restarting|"))
    });
    let first = lines.first().cloned().unwrap_or_default();
    assert!(first.contains("|restarting|"), "{lines:?}");
    assert!(
        first.contains("sluice_debug_fail_if_exists"),
        "the error is shown: {first}"
    );
    assert!(first.contains("restart 1 of 4"), "the schedule is shown: {first}");
    // The cause goes away; the restart resumes from the checkpoint and the
    // bounded input runs to its end.
    std::fs::remove_file(&flag).unwrap();
    let lines = wait_for_job_lines(&p, "landed", |l| {
        l.first().is_some_and(|l| l.contains("|finished|"))
    });
    let first = lines.first().cloned().unwrap_or_default();
    assert!(first.contains("|finished|"), "{lines:?}");
    assert!(first.contains("restored from checkpoint"), "{first}");
    assert!(first.contains("after a failure: "), "{first}");
    assert!(first.contains("sluice_debug_fail_if_exists"), "{first}");
    // Exactly once through the failure: every id, none twice.
    assert_eq!(
        p.psql(&[
            "-tA",
            "-c",
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM landed"
        ])
        .trim(),
        "16000|16000|1|16000"
    );
    // The restarted run kept the session's interval (not the server's 10 s).
    let checkpoints = p.psql(&["-tA", "-c", "SHOW CHECKPOINTS"]);
    assert!(
        checkpoints.lines().filter(|l| l.contains("|completed|")).count() >= 2,
        "{checkpoints}"
    );
}

#[test]
fn a_checkpoint_that_takes_too_long_fails_and_the_next_one_completes() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("stall");
    let p = SluiceProcess::start_with(dir.path(), &[("SLUICE_DEBUG_FUNCTIONS", "1")]);
    p.psql(&[
        "-c",
        "CREATE STREAM ticks (n BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '5000')",
    ]);
    p.psql(&[
        "-c",
        "SET streaming.checkpoint_interval = '300ms'",
        "-c",
        "SET streaming.checkpoint_timeout = '1s'",
        "-c",
        &format!(
            "CREATE MATERIALIZED VIEW seen AS SELECT count(*) AS n FROM ticks \
             WHERE sluice_debug_sleep_if_exists('{}', 2500)",
            flag.display()
        ),
    ]);
    let completed = |p: &SluiceProcess| {
        p.psql(&["-tA", "-c", "SHOW CHECKPOINTS"])
            .lines()
            .filter(|l| l.starts_with("seen|") && l.contains("|completed|"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed(&p) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint completed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The source task stalls (2.5 s per batch): its checkpoints time out.
    std::fs::write(&flag, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let timed_out = loop {
        let cps = p.psql(&["-tA", "-c", "SHOW CHECKPOINTS"]);
        if let Some(l) = cps
            .lines()
            .find(|l| l.contains("|failed|") && l.contains("timed out after 1000 ms"))
        {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no checkpoint timed out: {cps}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(timed_out.contains("participants"), "{timed_out}");
    // The stall ends: checkpoints complete again and the job runs on.
    std::fs::remove_file(&flag).unwrap();
    let before = completed(&p);
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed(&p) <= before {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed after the stall"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = wait_for_job_lines(&p, "seen", |l| !l.is_empty());
    assert!(lines.iter().all(|l| l.contains("|running|")), "{lines:?}");
}

/// The last column of SHOW JOBS (progress) of job `name`'s operator whose
/// label starts with `operator`.
fn progress_of(p: &SluiceProcess, name: &str, operator: &str) -> Option<String> {
    let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
    let line = jobs
        .lines()
        .find(|l| {
            l.starts_with(&format!("{name}|")) && l.split('|').nth(4).is_some_and(|o| o.starts_with(operator))
        })?
        .to_string();
    let last = line.rsplit('|').next().unwrap_or_default().to_string();
    (!last.is_empty()).then_some(last)
}

#[test]
fn bounded_sources_show_their_progress_and_the_time_left() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    // A generator paced to 3 s: progress in rows, the time left once a
    // second has passed.
    p.psql(&[
        "-c",
        "CREATE STREAM nums (id BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '2000', \
         'number-of-rows' = '6000', 'fields.id.kind' = 'sequence', 'fields.id.start' = '1')",
        "-c",
        "CREATE MATERIALIZED VIEW counted AS SELECT count(*) AS n FROM nums",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = vec![];
    let midway = loop {
        let got = progress_of(&p, "counted", "Source: nums");
        if let Some(g) = &got {
            seen.push(g.clone());
            if g.contains("about") {
                break got;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no estimate of the time left: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let midway = midway.unwrap();
    let pct: u32 = midway
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{midway}"));
    assert!(pct < 100, "{midway}");
    assert!(midway.contains("% of 6000 rows, about "), "{midway}");
    let secs: u32 = midway
        .split("about ")
        .nth(1)
        .and_then(|s| s.strip_suffix(" s left"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{midway}"));
    // 3 s at 2000 rows/s in all; the figure itself is unit-tested, here
    // it only has to be plausible on a busy machine.
    assert!((1..=20).contains(&secs), "{midway}");
    wait_for_job_lines(&p, "counted", |l| {
        l.first().is_some_and(|l| l.contains("|finished|"))
    });
    assert_eq!(
        progress_of(&p, "counted", "Source: nums").as_deref(),
        Some("100% of 6000 rows")
    );
    // An unbounded generator has none.
    p.psql(&[
        "-c",
        "CREATE STREAM ticks (n BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '100')",
        "-c",
        "CREATE MATERIALIZED VIEW ticking AS SELECT count(*) AS n FROM ticks",
    ]);
    assert_eq!(wait_for(&p, "SELECT n > 0 FROM ticking", "t"), "t");
    assert_eq!(progress_of(&p, "ticking", "Source: ticks"), None);

    // Files in bounded mode: bytes of the files read, of all listed.
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut bytes = 0;
    for f in 0..3 {
        let lines: String = (0..200)
            .map(|i| format!("{{\"v\": {}}}\n", f * 1000 + i))
            .collect();
        bytes += lines.len();
        std::fs::write(input.join(format!("part-{f}.json")), lines).unwrap();
    }
    p.psql(&[
        "-c",
        "CREATE STREAM vals (v BIGINT) WITH (connector = 'filesystem', path = 'in', format = 'json', \
         'scan.mode' = 'bounded')",
        "-c",
        "CREATE MATERIALIZED VIEW summed AS SELECT count(*) AS n, sum(v) AS s FROM vals",
    ]);
    wait_for_job_lines(&p, "summed", |l| {
        l.first().is_some_and(|l| l.contains("|finished|"))
    });
    assert_eq!(p.psql(&["-tA", "-c", "SELECT n FROM summed"]).trim(), "600");
    let kib = format!("100% of {:.1} KiB", bytes as f64 / 1024.0);
    assert_eq!(progress_of(&p, "summed", "Source: vals"), Some(kib));
}

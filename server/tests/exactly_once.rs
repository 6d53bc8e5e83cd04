//! Exactly-once through crashes: a Kafka source (the real broker started by
//! scripts/test.sh) -> a windowed aggregate and an updating aggregate ->
//! `delta` sinks, plain `filesystem` sinks on local disk and on the S3
//! server (scripts/infra/s3.sh), and an exactly-once Kafka sink, while the
//! server is killed with SIGKILL at random moments
//! and restarted, each time at a parallelism of 1, 2 or 3 tasks drawn at
//! random (the jobs restore at another parallelism). What landed must equal the answer computed here from the
//! records produced: no row missing, no row twice. Then time travel and
//! provenance are checked on the landed versions.
//!
//! `SLUICE_CRASH_KILLS` sets the kills per run (default 3) and
//! `SLUICE_CRASH_RUNS` the runs (default 1); `scripts/stress.sh` runs 20.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{SluiceProcess, brokers};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 3;
/// 2026-11-22T10:00:00Z.
const BASE_MS: i64 = 1_795_341_600_000;
/// Event time of the last record of each partition: its window stays open,
/// every earlier one closes.
const END_MS: i64 = BASE_MS + 3_600_000;

/// Record `i`: user, page, event time (ms), partition.
fn record(i: i64) -> (i64, String, i64, i32) {
    (
        i % 13,
        format!("p{}", i % 5),
        BASE_MS + i * 100,
        (i % PARTITIONS as i64) as i32,
    )
}

fn create_topic(name: &str) {
    common::create_topic(name, PARTITIONS);
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces records `from..to` (and, with `end`, the closing record of each
/// partition), waiting until the broker has them.
fn produce(producer: &BaseProducer, topic: &str, from: i64, to: i64, end: bool) {
    let mut payloads: Vec<(i32, String)> = (from..to)
        .map(|i| {
            let (user, page, ts, p) = record(i);
            (
                p,
                format!(r#"{{"user_id": {user}, "page": "{page}", "ts": {ts}}}"#),
            )
        })
        .collect();
    if end {
        for p in 0..PARTITIONS {
            payloads.push((p, format!(r#"{{"user_id": 0, "page": "end", "ts": {END_MS}}}"#)));
        }
    }
    for (p, payload) in &payloads {
        loop {
            match producer.send(BaseRecord::<(), _>::to(topic).partition(*p).payload(payload)) {
                Ok(()) => break,
                Err((e, _)) => {
                    producer.poll(Duration::from_millis(50));
                    assert!(
                        matches!(e, rdkafka::error::KafkaError::MessageProduction(_)),
                        "producing: {e}"
                    );
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flushing the producer");
}

/// Every value in `topic` (all partitions), read_uncommitted from offset 0.
///
/// Not from "earliest": the test broker (tansu 0.6.0, in memory) answers a
/// ListOffsets for the earliest offset with the record batch *written*
/// first, and batches of concurrent transactional producers can be written
/// out of offset order, so "earliest" can skip a partition's first batch.
/// That is what made this test miss the first windows of a run now and
/// then (3-5 of 3000, 1 run in 20-40): they were in the topic at offsets
/// below the one the broker called earliest.
fn read_all(topic: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Offset(0)).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = vec![];
    let mut quiet = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (out.is_empty() || quiet.elapsed() < Duration::from_secs(3)) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(p) = m.payload() {
                    out.push(String::from_utf8_lossy(p).trim().to_string());
                }
                quiet = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// A small deterministic generator (the seed is printed, so a failing run
/// can be repeated with SLUICE_CRASH_SEED).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn wait_for<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    wait_or_explain(None, what, secs, f)
}

/// Like [`wait_for`]; on a timeout it prints the server's SHOW JOBS and
/// SHOW CHECKPOINTS, so a failure says where the jobs were.
fn wait_or_explain<T>(
    p: Option<&SluiceProcess>,
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            if let Some(p) = p {
                eprintln!("SHOW JOBS:\n{}", p.psql(&["-tA", "-c", "SHOW JOBS"]));
                eprintln!(
                    "SHOW CHECKPOINTS:\n{}",
                    p.psql(&["-tA", "-c", "SHOW CHECKPOINTS"])
                );
            }
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn delta_sinks_land_exactly_once_through_random_kills() {
    let runs = env_number("SLUICE_CRASH_RUNS", 1);
    let kills = env_number("SLUICE_CRASH_KILLS", 3);
    let seed = env_number(
        "SLUICE_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    for run in 0..runs {
        let seed = seed.wrapping_add(run * 7919) | 1;
        eprintln!("crash run {run}: seed {seed}, {kills} kills");
        crash_run(seed, kills);
    }
}

fn crash_run(seed: u64, kills: u64) {
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let topic = format!("clicks_eo_{seed:x}");
    create_topic(&topic);
    create_topic(&format!("{topic}_out"));
    let total: i64 = 6000;
    // Files roll at 1 KB, so between checkpoints output is written all the
    // time: at a kill, files of the running epoch exist and must not show.
    // SLUICE_CRASH_LOG (say `warn,sluice_connectors::kafka=info`) sets the
    // servers' log filter, to see each Kafka transaction's commit.
    let log = std::env::var("SLUICE_CRASH_LOG").unwrap_or_else(|_| "warn".into());
    let s3 = std::env::var("SLUICE_TEST_S3_ENDPOINT")
        .expect("needs SLUICE_TEST_S3_ENDPOINT: run ./scripts/test.sh");
    let s3_key = std::env::var("SLUICE_TEST_S3_ACCESS_KEY_ID").unwrap_or("test".into());
    let s3_secret = std::env::var("SLUICE_TEST_S3_SECRET_ACCESS_KEY").unwrap_or("testtesttest".into());
    // Each restart takes another parallelism at random: jobs restore their
    // keyed state, sink lanes and Kafka offsets split anew.
    let env = |parallelism: &'static str| {
        [
            ("SLUICE_CHECKPOINT_INTERVAL", "700ms"),
            ("SLUICE_LOG", log.as_str()),
            ("SLUICE_S3_ENDPOINT", s3.as_str()),
            ("SLUICE_S3_ACCESS_KEY_ID", s3_key.as_str()),
            ("SLUICE_S3_SECRET_ACCESS_KEY", s3_secret.as_str()),
            ("SLUICE_PARALLELISM", parallelism),
        ]
    };
    let mut p = SluiceProcess::start_with(&data, &env("2"));
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3), \
             WATERMARK FOR ts AS ts - INTERVAL '1 second') WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{}', 'scan.startup.mode' = 'earliest', format = 'json')",
            brokers()
        ),
        "-c",
        &format!(
            "CREATE SINK per_second WITH (connector = 'delta', path = '{}', \
             'sink.rolling-policy.file-size' = '1KB') AS \
             SELECT page, window_start, count(*) AS n, sum(user_id) AS users \
             FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY page, window_start",
            lake.join("per_second").display()
        ),
        "-c",
        &format!(
            "CREATE SINK totals WITH (connector = 'delta', path = '{}', changelog = 'true', \
             'sink.rolling-policy.file-size' = '1KB') AS \
             SELECT page, count(*) AS n FROM clicks GROUP BY page",
            lake.join("totals").display()
        ),
        "-c",
        // Plain files, partitioned by minute, a _SUCCESS file in each
        // minute once the watermark passed its end.
        &format!(
            "CREATE SINK per_second_fs WITH (connector = 'filesystem', path = '{}', \
             partition_by = 'dt,hr,mi', 'sink.rolling-policy.file-size' = '1KB', \
             'sink.partition-commit.policy.kind' = 'success-file', \
             'sink.partition-commit.trigger' = 'partition-time', \
             'partition.time-extractor.timestamp-pattern' = '$dt $hr:$mi:00', \
             'sink.partition-commit.delay' = '1 min') AS \
             SELECT page, window_start, count(*) AS n, sum(user_id) AS users, \
             to_char(window_start, 'YYYY-MM-DD') AS dt, to_char(window_start, 'HH24') AS hr, \
             to_char(window_start, 'MI') AS mi \
             FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY page, window_start",
            lake.join("per_second_fs").display()
        ),
        "-c",
        &format!(
            "CREATE SINK per_second_s3 WITH (connector = 'filesystem', path = 's3://lake/eo-{seed:x}/per_second', \
             format = 'csv', 'sink.rolling-policy.file-size' = '1KB') AS \
             SELECT page, window_start, count(*) AS n, sum(user_id) AS users \
             FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY page, window_start"
        ),
        "-c",
        &format!(
            "CREATE SINK per_second_kafka WITH (connector = 'kafka', topic = '{topic}_out', \
             'properties.bootstrap.servers' = '{}', format = 'csv', \
             'sink.delivery-guarantee' = 'exactly-once') AS \
             SELECT page, to_char(window_start, 'YYYY-MM-DD HH24:MI:SS') AS w, count(*) AS n, sum(user_id) AS users \
             FROM TUMBLE(clicks, ts, INTERVAL '1' SECOND) GROUP BY page, window_start",
            brokers()
        ),
        "-c",
        // A join and a top-N through the kills: an interval self-join of
        // each click with the clicks on its page in the next second, and
        // the two latest clicks of each page (an updating result).
        &format!(
            "CREATE SINK pairs WITH (connector = 'delta', path = '{}') AS \
             SELECT a.user_id AS a_user, a.ts AS a_ts, b.ts AS b_ts FROM clicks a JOIN clicks b \
             ON a.page = b.page AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1' SECOND WHERE a.page <> 'end'",
            lake.join("pairs").display()
        ),
        "-c",
        &format!(
            "CREATE SINK latest2 WITH (connector = 'delta', path = '{}', changelog = 'true') AS \
             SELECT page, ts FROM (SELECT page, ts, ROW_NUMBER() OVER (PARTITION BY page ORDER BY ts DESC) AS rn \
             FROM clicks WHERE page <> 'end') WHERE rn <= 2",
            lake.join("latest2").display()
        ),
    ]);

    // Records keep arriving (50 every 100 ms, so windows keep closing and
    // output keeps landing) while the server is killed and restarted.
    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            let producer = producer();
            let chunk = 50;
            for from in (0..total).step_by(chunk as usize) {
                let to = (from + chunk).min(total);
                produce(&producer, &topic, from, to, to == total);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for k in 0..kills {
        // Kill a running job, not one still starting: wait for a checkpoint
        // of both jobs after the (re)start, then a random moment more.
        let after = [completed_epoch(&p, "per_second"), completed_epoch(&p, "totals")];
        wait_or_explain(Some(&p), "both jobs to checkpoint after a start", 120, || {
            let now = [completed_epoch(&p, "per_second"), completed_epoch(&p, "totals")];
            (now[0] > after[0] && now[1] > after[1]).then_some(())
        });
        std::thread::sleep(rng.millis(100, 1500));
        let parallelism = ["1", "2", "3"][(rng.next() % 3) as usize];
        eprintln!("kill {}, restart with parallelism {parallelism}", k + 1);
        p.kill9();
        p = SluiceProcess::start_with(&data, &env(parallelism));
    }
    let last_start = std::time::SystemTime::now();
    // Changing an option restarts the job from its newest checkpoint, with
    // the same guarantee.
    p.psql(&[
        "-c",
        "ALTER SINK per_second SET ('sink.rolling-policy.file-size' = '2KB')",
    ]);
    let sinks = p.psql(&["-tA", "-c", "SHOW SINKS"]);
    assert!(sinks.contains("sink.rolling-policy.file-size=2KB"), "{sinks}");
    producer.join().expect("the producer");

    // The answer, from the records themselves: every window before END.
    let mut windows: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..total {
        let (user, page, ts, _) = record(i);
        let w = windows
            .entry((page.clone(), ts - ts.rem_euclid(1000)))
            .or_default();
        w.0 += 1;
        w.1 += user;
        *totals.entry(page).or_default() += 1;
    }
    *totals.entry("end".into()).or_default() += PARTITIONS as i64;
    let want_windows: Vec<String> = windows
        .iter()
        .map(|((page, start), (n, users))| {
            let t = chrono_like(*start);
            format!("{page}|{t}|{n}|{users}")
        })
        .collect();

    let landed_windows = |p: &SluiceProcess, sink: &str| {
        p.psql(&[
            "-tA",
            "-c",
            &format!(
                "SELECT page, to_char(window_start, 'YYYY-MM-DD HH24:MI:SS'), n, users FROM {sink} \
                 ORDER BY page, window_start, n, users"
            ),
        ])
        .lines()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    for sink in ["per_second", "per_second_fs", "per_second_s3"] {
        wait_or_explain(
            Some(&p),
            &format!("every closed window to land in {sink}"),
            180,
            || (landed_windows(&p, sink).len() >= want_windows.len()).then_some(()),
        );
    }
    // Give a late duplicate time to show up before comparing.
    std::thread::sleep(Duration::from_secs(1));
    for sink in ["per_second", "per_second_fs", "per_second_s3"] {
        let got = landed_windows(&p, sink);
        if got != want_windows {
            let extra: Vec<_> = got.iter().filter(|r| !want_windows.contains(r)).collect();
            let missing: Vec<_> = want_windows.iter().filter(|r| !got.contains(r)).collect();
            panic!(
                "seed {seed}: {sink}: {} windows landed, {} expected; not expected: {extra:?}; missing: {missing:?}",
                got.len(),
                want_windows.len()
            );
        }
    }
    check_plain_files(&p, &lake.join("per_second_fs"), &windows, last_start, seed);

    // The updating aggregate's changelog nets out to the true counts: an
    // insert or delete landed twice (or lost) would leave a row behind.
    let want_totals: Vec<String> = totals.iter().map(|(p, n)| format!("{p}|{n}")).collect();
    let net = |p: &SluiceProcess| {
        p.psql(&[
            "-tA",
            "-c",
            "SELECT page, n FROM (SELECT page, n, sum(CASE op WHEN 'insert' THEN 1 ELSE -1 END) AS c \
             FROM totals GROUP BY page, n) WHERE c <> 0 ORDER BY page, n",
        ])
        .lines()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    wait_or_explain(
        Some(&p),
        "the totals' changelog to net out to the counts",
        120,
        || (net(&p) == want_totals).then_some(()),
    );
    // The Kafka sink: every window is there. The test broker can't show
    // more: it returns records of aborted transactions, and here a
    // read_committed consumer stopped at the first kill's transaction (240
    // of 3000 windows seen: the broker did not resolve the transaction the
    // crash left open when the restarted job fenced its id), so this reads
    // read_uncommitted and checks only that nothing is missing; see the
    // README and `exactly_once_kafka_sink_commits_with_checkpoints`.
    let out = read_all(&format!("{topic}_out"));
    let got: std::collections::BTreeSet<String> = out.into_iter().collect();
    let want: std::collections::BTreeSet<String> = want_windows.iter().map(|w| w.replace('|', ",")).collect();
    let missing: Vec<_> = want.difference(&got).collect();
    // What the topic has for the missing windows' (page, window) instead
    // (a smaller count would mean rows dropped as late, not lost output).
    let instead: Vec<_> = missing
        .iter()
        .flat_map(|m| {
            let prefix = m.rsplitn(3, ',').last().unwrap_or_default().to_string() + ",";
            got.iter().filter(move |g| g.starts_with(&prefix))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {} windows missing from kafka ({} read, e.g. {:?}): {missing:?}; \
         the topic has instead: {instead:?}",
        missing.len(),
        want.len(),
        got.len(),
        got.iter().take(3).collect::<Vec<_>>()
    );

    // The join: each pair once, none missing.
    let ms_text = |ms: i64| format!("{}.{:03}", chrono_like(ms), ms.rem_euclid(1000));
    let mut want_pairs = Vec::new();
    for i in 0..total {
        let (_, _, a_ts, _) = record(i);
        for j in [i, i + 5, i + 10].into_iter().filter(|j| *j < total) {
            let (_, _, b_ts, _) = record(j);
            want_pairs.push(format!("{}|{}", ms_text(a_ts), ms_text(b_ts)));
        }
    }
    want_pairs.sort();
    let landed_pairs = |p: &SluiceProcess| {
        p.psql(&[
            "-tA",
            "-c",
            "SELECT to_char(a_ts, 'YYYY-MM-DD HH24:MI:SS.MS'), to_char(b_ts, 'YYYY-MM-DD HH24:MI:SS.MS') \
             FROM pairs ORDER BY 1, 2",
        ])
        .lines()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    wait_or_explain(Some(&p), "every pair of the join to land", 120, || {
        (landed_pairs(&p).len() >= want_pairs.len()).then_some(())
    });
    let got = landed_pairs(&p);
    if got != want_pairs {
        let extra: Vec<_> = got.iter().filter(|r| !want_pairs.contains(r)).take(10).collect();
        let missing: Vec<_> = want_pairs.iter().filter(|r| !got.contains(r)).take(10).collect();
        panic!(
            "seed {seed}: join: {} pairs landed, {} expected; not expected (first 10): {extra:?}; \
             missing (first 10): {missing:?}",
            got.len(),
            want_pairs.len()
        );
    }
    // The top-N's changelog nets out to the two latest clicks of each page.
    let mut latest: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for i in 0..total {
        let (_, page, ts, _) = record(i);
        latest.entry(page).or_default().push(ts);
    }
    let want_latest: Vec<String> = latest
        .iter()
        .flat_map(|(page, ts)| {
            let mut ts = ts.clone();
            ts.sort_unstable();
            ts.iter()
                .rev()
                .take(2)
                .map(|t| format!("{page}|{}", ms_text(*t)))
                .collect::<Vec<_>>()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let net_latest = |p: &SluiceProcess| {
        p.psql(&[
            "-tA",
            "-c",
            "SELECT page, to_char(ts, 'YYYY-MM-DD HH24:MI:SS.MS') FROM (SELECT page, ts, \
             sum(CASE op WHEN 'insert' THEN 1 ELSE -1 END) AS c FROM latest2 GROUP BY page, ts) \
             WHERE c <> 0 ORDER BY 1, 2",
        ])
        .lines()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    wait_or_explain(
        Some(&p),
        "the top-N's changelog to net out to the two latest clicks per page",
        120,
        || (net_latest(&p) == want_latest).then_some(()),
    );
    let twice = p.psql(&[
        "-tA",
        "-c",
        "SELECT count(*) FROM (SELECT page, ts, sum(CASE op WHEN 'insert' THEN 1 ELSE -1 END) AS c \
         FROM latest2 GROUP BY page, ts) WHERE c NOT IN (0, 1)",
    ]);
    assert_eq!(twice.trim(), "0", "seed {seed}: a top-N change landed twice");

    let bad = p.psql(&[
        "-tA",
        "-c",
        "SELECT count(*) FROM (SELECT page, n, sum(CASE op WHEN 'insert' THEN 1 ELSE -1 END) AS c \
         FROM totals GROUP BY page, n) WHERE c NOT IN (0, 1)",
    ]);
    assert_eq!(bad.trim(), "0", "seed {seed}: a change landed twice");

    // Time travel: each version holds exactly the rows of the commits up to it.
    let commits = p.psql(&[
        "-tA",
        "-c",
        "SELECT version, rows FROM sluice_commits WHERE sink = 'per_second' ORDER BY version",
    ]);
    let mut running = 0i64;
    let mut versions = 0;
    for line in commits.lines() {
        let (v, rows) = line.split_once('|').unwrap();
        running += rows.parse::<i64>().unwrap();
        versions += 1;
        let at = p.psql(&[
            "-tA",
            "-c",
            &format!("SELECT count(*) FROM per_second AS OF VERSION {v}"),
        ]);
        assert_eq!(at.trim(), running.to_string(), "version {v}");
    }
    assert!(versions >= 2, "several versions: {commits}");
    assert_eq!(running as usize, want_windows.len());

    // Provenance: per partition, commit ranges are contiguous from the
    // start and never overlap.
    let ranges = p.psql(&[
        "-tA",
        "-c",
        "SELECT partition, coalesce(from_offset, -1), to_offset, version, lane, checkpoint \
         FROM sluice_commit_sources WHERE sink = 'per_second' ORDER BY partition, version",
    ]);
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    for line in ranges.lines() {
        let f: Vec<i64> = line.split('|').take(3).map(|x| x.parse().unwrap()).collect();
        let (partition, from, to) = (f[0], f[1], f[2]);
        let expected_from = next.get(&partition).copied().unwrap_or(-1);
        assert_eq!(
            from, expected_from,
            "partition {partition}: ranges must be contiguous\n{ranges}"
        );
        assert!(to >= from.max(0), "{ranges}");
        next.insert(partition, to);
    }
    assert_eq!(next.len(), PARTITIONS as usize, "{ranges}");
}

/// The local filesystem sink after the kills: its commits in
/// `sluice_commits` add up to what landed, no in-progress file of a killed
/// run is left, and exactly the minutes the watermark passed have a
/// `_SUCCESS` file.
fn check_plain_files(
    p: &SluiceProcess,
    dir: &std::path::Path,
    windows: &BTreeMap<(String, i64), (i64, i64)>,
    last_start: std::time::SystemTime,
    seed: u64,
) {
    let committed = p.psql(&[
        "-tA",
        "-c",
        "SELECT coalesce(sum(rows), 0), count(*) FROM sluice_commits WHERE sink = 'per_second_fs'",
    ]);
    let (rows, commits) = committed.trim().split_once('|').unwrap();
    assert_eq!(
        rows,
        windows.len().to_string(),
        "seed {seed}: rows in sluice_commits"
    );
    assert!(commits.parse::<u64>().unwrap() >= 2, "seed {seed}: {committed}");

    let mut files = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    let stale: Vec<_> = files
        .iter()
        .filter(|f| f.to_string_lossy().ends_with(".inprogress"))
        .filter(|f| f.metadata().unwrap().modified().unwrap() < last_start)
        .collect();
    assert!(
        stale.is_empty(),
        "seed {seed}: in-progress files of killed runs: {stale:?}"
    );

    // The watermark ends at END - 1 s: a minute is complete when its end
    // is at or before that.
    let minutes: std::collections::BTreeSet<i64> =
        windows.keys().map(|(_, s)| s - s.rem_euclid(60_000)).collect();
    let marker = |m: i64| {
        let t = chrono_like(m);
        let (day, time) = t.split_once(' ').unwrap();
        dir.join(format!("dt={day}/hr={}/mi={}/_SUCCESS", &time[..2], &time[3..5]))
    };
    let want: Vec<i64> = minutes
        .iter()
        .copied()
        .filter(|m| m + 60_000 <= END_MS - 1000)
        .collect();
    assert!(
        want.len() >= 5 && want.len() + 2 >= minutes.len(),
        "{} of {} minutes complete",
        want.len(),
        minutes.len()
    );
    wait_or_explain(Some(p), "a _SUCCESS file in every completed minute", 60, || {
        want.iter().all(|m| marker(*m).exists()).then_some(())
    });
    let early: Vec<_> = minutes
        .iter()
        .filter(|m| *m + 60_000 > END_MS - 1000)
        .map(|m| marker(*m))
        .filter(|f| f.exists())
        .collect();
    assert!(
        early.is_empty(),
        "seed {seed}: _SUCCESS before the minute was complete: {early:?}"
    );
}

/// The newest completed (or restored) checkpoint of `job`.
fn completed_epoch(p: &SluiceProcess, job: &str) -> Option<i64> {
    p.psql(&["-tA", "-c", "SHOW CHECKPOINTS"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.first() == Some(&job) && matches!(f.get(2), Some(&"completed") | Some(&"restored")))
                .then(|| f.get(1)?.parse().ok())
                .flatten()
        })
        .max()
}

/// `YYYY-MM-DD HH:MM:SS` of a UTC time in ms (the test's dates only).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A topic of its own for a test: `<prefix>_<nanos>`, created.
fn new_topic(prefix: &str) -> String {
    let topic = format!(
        "{prefix}_{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    create_topic(&topic);
    topic
}

/// `CREATE STREAM name` of the test's JSON click records in `topic`, with
/// these startup / bound options.
fn clicks_stream(name: &str, topic: &str, options: &str) -> String {
    format!(
        "CREATE STREAM {name} (user_id BIGINT, page TEXT, ts TIMESTAMP(3)) WITH (connector = 'kafka', \
         topic = '{topic}', 'properties.bootstrap.servers' = '{}', format = 'json', {options})",
        brokers()
    )
}

/// A sink dropped and created again with another query, `start_from` the
/// old one: the new sink reads exactly the records after the old one's last
/// checkpoint, so the two together hold each record once.
#[test]
fn a_new_sink_starts_where_a_dropped_one_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let topic = new_topic("clicks_from");
    let producer = producer();
    let (first, total) = (900, 1500);
    produce(&producer, &topic, 0, first, false);
    let env = [("SLUICE_CHECKPOINT_INTERVAL", "300ms")];
    let p = SluiceProcess::start_with(&data, &env);
    p.psql(&[
        "-c",
        &clicks_stream("clicks", &topic, "'scan.startup.mode' = 'earliest'"),
        "-c",
        &format!(
            "CREATE SINK raw WITH (connector = 'delta', path = '{}') AS SELECT page, ts FROM clicks",
            lake.join("raw").display()
        ),
    ]);
    wait_for("the first records committed", 60, || {
        let n = p.psql(&[
            "-tA",
            "-c",
            "SELECT coalesce(sum(rows), 0) FROM sluice_commits WHERE sink = 'raw'",
        ]);
        (n.trim() == first.to_string()).then_some(())
    });
    p.psql(&["-c", "DROP SINK raw"]);
    produce(&producer, &topic, first, total, false);
    p.psql(&[
        "-c",
        &format!(
            "CREATE SINK raw WITH (connector = 'delta', path = '{}', start_from = 'sink:raw') AS \
             SELECT page, ts, user_id * 2 AS doubled FROM clicks",
            lake.join("raw_v2").display()
        ),
    ]);
    let want = format!(
        "{}|{}|{}",
        total - first,
        total - first,
        chrono_like(record(first).2)
    );
    let got = wait_for("the new sink to read the rest", 60, || {
        let got = p.psql(&[
            "-tA",
            "-c",
            "SELECT count(*), count(DISTINCT ts), to_char(min(ts), 'YYYY-MM-DD HH24:MI:SS') FROM raw",
        ]);
        (got.trim().split('|').next() == Some(&(total - first).to_string())).then_some(got)
    });
    std::thread::sleep(Duration::from_secs(1));
    let again = p.psql(&[
        "-tA",
        "-c",
        "SELECT count(*), count(DISTINCT ts), to_char(min(ts), 'YYYY-MM-DD HH24:MI:SS') FROM raw",
    ]);
    assert_eq!(got.trim(), want);
    assert_eq!(again.trim(), want, "nothing more arrived");
    let bad = p.psql_output(
        "sluice",
        &[
            "-c",
            "CREATE SINK x WITH (connector = 'blackhole', start_from = 'sink:nope') AS SELECT * FROM clicks",
        ],
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("sink nope has no completed checkpoint"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Provenance put to use: the offsets a commit of one sink covers (from
/// sluice_commit_sources) are read again through a bounded stream by a
/// changed query into a new sink, whose output SQL compares with what the
/// commit added.
#[test]
fn a_commits_offset_range_is_read_again_by_a_changed_query() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let topic = new_topic("clicks_again");
    let producer = producer();
    let env = [("SLUICE_CHECKPOINT_INTERVAL", "300ms")];
    let p = SluiceProcess::start_with(&data, &env);
    p.psql(&[
        "-c",
        &clicks_stream("clicks", &topic, "'scan.startup.mode' = 'earliest'"),
        "-c",
        &format!(
            "CREATE SINK v1 WITH (connector = 'delta', path = '{}') AS SELECT user_id, page, ts FROM clicks",
            lake.join("v1").display()
        ),
    ]);
    // Three bursts, each committed before the next: at least three versions.
    for burst in 0..3 {
        produce(&producer, &topic, burst * 400, (burst + 1) * 400, false);
        let want = ((burst + 1) * 400).to_string();
        wait_for("a burst to be committed", 60, || {
            let n = p.psql(&[
                "-tA",
                "-c",
                "SELECT coalesce(sum(rows), 0) FROM sluice_commits WHERE sink = 'v1'",
            ]);
            (n.trim() == want).then_some(())
        });
    }
    // The second version that added rows, and the offsets it covers.
    let version: i64 = p
        .psql(&[
            "-tA",
            "-c",
            "SELECT version FROM sluice_commits WHERE sink = 'v1' AND rows > 0 ORDER BY version LIMIT 1 OFFSET 1",
        ])
        .trim()
        .parse()
        .unwrap();
    let ranges = p.psql(&[
        "-tA",
        "-c",
        &format!(
            "SELECT partition, coalesce(from_offset, 0), to_offset FROM sluice_commit_sources \
             WHERE sink = 'v1' AND version = {version} ORDER BY partition"
        ),
    ]);
    let (mut from, mut to) = (vec![], vec![]);
    for line in ranges.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        from.push(format!("partition:{},offset:{}", f[0], f[1]));
        to.push(format!("partition:{},offset:{}", f[0], f[2]));
    }
    assert_eq!(from.len(), PARTITIONS as usize, "{ranges}");
    // The range again, through a changed query, into a new sink.
    p.psql(&[
        "-c",
        &clicks_stream(
            "again",
            &topic,
            &format!(
                "'scan.startup.mode' = 'specific-offsets', 'scan.startup.specific-offsets' = '{}', \
                 'scan.bounded.mode' = 'specific-offsets', 'scan.bounded.specific-offsets' = '{}'",
                from.join(";"),
                to.join(";")
            ),
        ),
        "-c",
        &format!(
            "CREATE SINK v2 WITH (connector = 'delta', path = '{}') AS \
             SELECT user_id * 2 AS doubled, upper(page) AS page, ts FROM again",
            lake.join("v2").display()
        ),
    ]);
    wait_for("the range to be read again", 60, || {
        let jobs = p.psql(&["-tA", "-c", "SHOW JOBS"]);
        jobs.lines()
            .any(|l| l.starts_with("v2|") && l.contains("|finished|"))
            .then_some(())
    });
    // What the version added, through the changed query, equals v2.
    let added = format!(
        "(SELECT user_id * 2 AS doubled, upper(page) AS page, ts FROM v1 AS OF VERSION {version} \
         EXCEPT SELECT user_id * 2, upper(page), ts FROM v1 AS OF VERSION {})",
        version - 1
    );
    let rows = p.psql(&[
        "-tA",
        "-c",
        &format!("SELECT rows FROM sluice_commits WHERE sink = 'v1' AND version = {version}"),
    ]);
    let counts = p.psql(&[
        "-tA",
        "-c",
        &format!(
            "SELECT (SELECT count(*) FROM {added} a) AS added, (SELECT count(*) FROM v2) AS v2, \
             (SELECT count(*) FROM (SELECT * FROM {added} a EXCEPT SELECT * FROM v2) d) AS only_added, \
             (SELECT count(*) FROM (SELECT * FROM v2 EXCEPT SELECT * FROM {added} a) d) AS only_v2"
        ),
    ]);
    let n = rows.trim();
    assert!(n.parse::<i64>().unwrap() > 0, "version {version} added rows");
    assert_eq!(
        counts.trim(),
        format!("{n}|{n}|0|0"),
        "added | v2 | only in added | only in v2"
    );
}

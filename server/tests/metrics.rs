//! `/metrics` scraped by a real Prometheus (Debian's, installed by
//! `scripts/infra/prometheus.sh`): a job's series exist and move, the
//! checkpoint counter counts, errors are counted by SQLSTATE, and
//! `promtool check metrics` accepts the exposition.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SluiceProcess, free_port, http_request};

/// GET `path` from `127.0.0.1:port`: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let (code, body) = http_request(port, "GET", path, &[], "");
    (format!("HTTP/1.1 {code}"), body)
}

/// A Prometheus server of the test's own, scraping one target every second.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let binary = std::env::var("SLUICE_TEST_PROMETHEUS")
            .expect("needs Prometheus: run ./scripts/test.sh, or eval \"$(scripts/infra/prometheus.sh)\"");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// An instant query's samples: (labels, value).
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) =
            match std::panic::catch_unwind(|| http_get(self.port, &format!("/api/v1/query?query={encoded}")))
            {
                Ok(r) => r,
                Err(_) => return vec![], // not up yet
            };
        assert!(!status.contains("400"), "Prometheus refused {promql}: {body}");
        if !status.contains("200") {
            return vec![];
        }
        // Chunked or not, the JSON object is the body's outermost braces.
        let (Some(a), Some(b)) = (body.find('{'), body.rfind('}')) else {
            return vec![];
        };
        let v: serde_json::Value = serde_json::from_str(&body[a..=b]).expect("Prometheus answers JSON");
        v["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        let value = s["value"][1]
                            .as_str()
                            .unwrap_or("nan")
                            .parse()
                            .unwrap_or(f64::NAN);
                        (s["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to 60 s) for `promql` to return a sample `pred` accepts.
    fn wait_for(&self, promql: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let samples = self.query(promql);
            if let Some((_, v)) = samples.iter().find(|(_, v)| pred(*v)) {
                return *v;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never had {promql} as expected: {samples:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_job_checkpoint_and_error_series() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let mut p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[
            ("SLUICE_HTTP_LISTEN", &http_addr),
            ("SLUICE_CHECKPOINT_INTERVAL", "1s"),
        ],
    );
    p.psql(&[
        "-c",
        "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.per.second' = '2000')",
        "-c",
        "CREATE MATERIALIZED VIEW per_second AS SELECT window_start, count(*) AS bids \
         FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY window_start",
        // An interval join: its state expires as time passes.
        "-c",
        "CREATE MATERIALIZED VIEW pairs AS SELECT a.auction, count(*) AS n FROM bid a JOIN bid b \
         ON a.auction = b.auction AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' SECOND \
         GROUP BY a.auction",
        // A sink landing versions: its commits.
        "-c",
        "CREATE SINK landed WITH (connector = 'delta', path = 'lake/landed') AS \
         SELECT window_start, count(*) AS bids FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY window_start",
    ]);
    // A bounded input read at a pace: its share read and the time left.
    p.psql(&[
        "-c",
        "CREATE STREAM backlog (id BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '1000', \
         'number-of-rows' = '200000')",
        "-c",
        "CREATE MATERIALIZED VIEW backfill AS SELECT count(*) AS n FROM backlog",
    ]);
    // One error of a kind Postgres names 42P01, one of 42601.
    let out = p.psql_output("sluice", &["-c", "SELECT * FROM no_such_table"]);
    assert!(!out.status.success());
    let out = p.psql_output("sluice", &["-c", "SELEC 1"]);
    assert!(!out.status.success());

    // The exposition itself, as promtool (Prometheus's own linter) reads it.
    let (status, text) = http_get(http, "/metrics");
    assert!(status.contains("200"), "{status}\n{text}");
    assert!(text.contains("sluice_operator_rows_in_total{"), "{text}");
    let promtool = std::env::var("SLUICE_TEST_PROMTOOL")
        .expect("needs promtool: run ./scripts/test.sh, or eval \"$(scripts/infra/prometheus.sh)\"");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let (status, _) = http_get(http, "/nowhere");
    assert!(status.contains("404"), "{status}");

    // Through a real Prometheus scraping every second.
    let prom = Prometheus::start(http);
    // A source's rows out are the rows it read.
    let source_rows = "sum(sluice_operator_rows_out_total{job_name=\"per_second\",operator=\"Source\"})";
    let first = prom.wait_for(source_rows, |v| v > 0.0);
    let later = prom.wait_for(source_rows, |v| v > first);
    assert!(later > first);
    // The window aggregate takes them in.
    prom.wait_for(
        "sum(sluice_operator_rows_in_total{job_name=\"per_second\",operator!=\"Source\"})",
        |v| v > 0.0,
    );
    // Figures each task keeps come per task: as many series per operator
    // as it has tasks.
    prom.wait_for(
        "count by (operator_id) (sluice_operator_rows_in_total{job_name=\"per_second\"})",
        |v| v >= 1.0,
    );
    let mismatched = "count(count by (operator_id) (sluice_operator_rows_out_total{job_name=\"per_second\"}) \
         != on (operator_id) sum by (operator_id) (sluice_operator_parallelism{job_name=\"per_second\"})) or vector(0)";
    let m = prom.wait_for(mismatched, |v| v.is_finite());
    assert_eq!(
        m, 0.0,
        "operators whose task series don't match their parallelism"
    );
    let tasks = prom.query("sluice_operator_rows_out_total{job_name=\"per_second\",operator=\"Source\"}");
    assert!(
        !tasks.is_empty() && tasks.iter().all(|(labels, _)| labels["task"].as_str().is_some()),
        "{tasks:?}"
    );
    // The join drops what its bound passed, and says so.
    prom.wait_for(
        "sum(sluice_operator_rows_expired_total{job_name=\"pairs\",operator=~\".*Join\"})",
        |v| v > 0.0,
    );
    // The sink's commits: counted, rows and bytes added, and the table
    // version they made, which sluice_commits lists.
    let commits = prom.wait_for("sluice_sink_commits_total{job_name=\"landed\"}", |v| v >= 1.0);
    prom.wait_for("sluice_sink_commits_total{job_name=\"landed\"}", |v| v > commits);
    prom.wait_for("sluice_sink_committed_rows_total{job_name=\"landed\"}", |v| {
        v >= 1.0
    });
    prom.wait_for("sluice_sink_committed_bytes_total{job_name=\"landed\"}", |v| {
        v > 0.0
    });
    prom.wait_for(
        "sluice_sink_last_commit_timestamp_seconds{job_name=\"landed\"}",
        |v| v > 1.6e9,
    );
    let version = prom.wait_for("sluice_sink_table_version{job_name=\"landed\"}", |v| v >= 1.0);
    let landed = p.psql_output(
        "sluice",
        &[
            "-At",
            "-c",
            "SELECT max(version) FROM sluice_commits WHERE sink = 'landed'",
        ],
    );
    let landed: f64 = String::from_utf8_lossy(&landed.stdout).trim().parse().unwrap();
    assert!(
        version <= landed,
        "metric version {version}, sluice_commits {landed}"
    );
    let ck = prom.wait_for(
        "sluice_checkpoints_completed_total{job_name=\"per_second\"}",
        |v| v >= 1.0,
    );
    prom.wait_for(
        "sluice_checkpoints_completed_total{job_name=\"per_second\"}",
        |v| v > ck,
    );
    prom.wait_for(
        "sluice_checkpoint_last_completed_epoch{job_name=\"per_second\"}",
        |v| v >= 1.0,
    );
    // The generator's events are stamped now: the watermark trails the
    // clock by seconds, not hours.
    let lag = prom.wait_for(
        "max(sluice_operator_watermark_lag_seconds{job_name=\"per_second\"})",
        |v| v.is_finite(),
    );
    assert!((0.0..600.0).contains(&lag), "watermark lag {lag} s");
    prom.wait_for("sluice_operator_state_rows{job_name=\"per_second\"}", |v| {
        v >= 0.0
    });
    prom.wait_for(
        "sluice_job_status{job_name=\"per_second\",status=\"running\"}",
        |v| v == 1.0,
    );
    let share = prom.wait_for("sluice_source_progress_ratio{job_name=\"backfill\"}", |v| v > 0.0);
    assert!(share < 1.0, "200 s of input read already: {share}");
    let left = prom.wait_for("sluice_source_remaining_seconds{job_name=\"backfill\"}", |v| {
        v > 0.0
    });
    assert!(left < 1000.0, "{left} s left of a 200 s input");
    prom.wait_for("sluice_errors_total{sqlstate=\"42P01\"}", |v| v >= 1.0);
    prom.wait_for("sluice_errors_total{sqlstate=\"42601\"}", |v| v >= 1.0);
    prom.wait_for("sluice_connections_total", |v| v >= 3.0);
    prom.wait_for("process_resident_memory_bytes{job=\"sluice\"}", |v| v > 1e6);
    prom.wait_for("up{job=\"sluice\"}", |v| v == 1.0);

    // Every query of the Grafana dashboard in the repository is one
    // Prometheus takes, and each has data (but the one that lists jobs not
    // running, as all are, and Kafka's, as this job reads the generator;
    // the Kafka series are checked in the next test).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/grafana/sluice-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$job_name", "per_second")
                .replace("$__rate_interval", "1m")
                .replace("$scrape_job", "sluice");
            exprs += 1;
            if expr.contains("status!=") || expr.contains("sluice_source_") {
                prom.query(&expr); // valid (a refusal panics)
            } else {
                prom.wait_for(&expr, |v| v.is_finite());
            }
        }
    }
    assert!(exprs >= 10, "{exprs} dashboard queries");

    // Restarted, the job starts from its checkpoint and says how long
    // that took.
    assert!(
        !text.contains("sluice_job_restore_seconds{"),
        "a job that did not restore: {text}"
    );
    assert!(p.terminate(), "the server did not stop on SIGTERM");
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[
            ("SLUICE_HTTP_LISTEN", &http_addr),
            ("SLUICE_CHECKPOINT_INTERVAL", "1s"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(http, "/metrics");
        if text.contains("sluice_job_restore_seconds{job_name=\"per_second\"}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no restore time after a restart:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A dropped job's series go with it.
    p.psql(&["-c", "DROP MATERIALIZED VIEW per_second"]);
    let (_, text) = http_get(http, "/metrics");
    assert!(!text.contains("job_name=\"per_second\""), "{text}");
}

/// Kafka sources: offset and lag per partition, read where the Kafka
/// client keeps them (the real broker of `scripts/infra/kafka.sh`).
#[test]
fn kafka_partitions_show_their_offsets_and_lag() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let topic = format!("metrics_{}", std::process::id());
    common::create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .unwrap();
    for (partition, n) in [(0, 30), (1, 20)] {
        for i in 0..n {
            let payload = format!(r#"{{"id": {i}}}"#);
            producer
                .send(
                    BaseRecord::<(), _>::to(&topic)
                        .partition(partition)
                        .payload(&payload),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let http_addr = format!("127.0.0.1:{http}");
    let p = SluiceProcess::start_with(&dir.path().join("data"), &[("SLUICE_HTTP_LISTEN", &http_addr)]);
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM k (id BIGINT) WITH (connector = 'kafka', topic = '{topic}', \
             'properties.bootstrap.servers' = '{}', format = 'json', 'scan.startup.mode' = 'earliest-offset')",
            common::brokers()
        ),
        "-c",
        "CREATE MATERIALIZED VIEW counted AS SELECT count(*) AS n FROM k",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = |text: &str, name: &str, partition: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("job_name=\"counted\"")
                    && l.contains(&format!("split=\"{partition}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    loop {
        let (_, text) = http_get(http, "/metrics");
        let figures = [
            line(&text, "sluice_source_offset{", "0"),
            line(&text, "sluice_source_offset{", "1"),
            line(&text, "sluice_source_lag_records{", "0"),
            line(&text, "sluice_source_lag_records{", "1"),
        ];
        if figures == [Some(30.0), Some(20.0), Some(0.0), Some(0.0)] {
            assert!(text.contains(&format!("source=\"{topic}\"")), "{text}");
            assert!(text.contains("sluice_source_client_errors_total{"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offsets 30 and 20 with no lag never showed: {figures:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

//! `/metrics` in the Prometheus text format.
//!
//! Two kinds of series:
//! - the server's own counters (sessions, statements, errors by SQLSTATE),
//!   kept in a registry for the life of the process and bumped where the
//!   events happen;
//! - the jobs' figures, which the jobs already keep in atomics: read at
//!   scrape time into a registry made for that scrape, so a dropped job's
//!   series go away with it.
//!
//! Names follow Prometheus conventions: `sluice_` prefix, `_total` for
//! counters, base units (`_seconds`, `_bytes`); labels are `job_name`
//! (the sink or view; `job` is the label Prometheus gives the scrape
//! target, and a series' own `job` would be renamed `exported_job`),
//! `operator` (the operator's kind), `operator_id` (its number in the
//! job's plan, as in SHOW JOBS) and `task` (the parallel task, 0 to the
//! operator's parallelism; figures each task keeps are shown per task),
//! never row values.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sluice_engine::Engine;

/// The server's own counters.
pub struct ServerMetrics {
    registry: Registry,
    /// Connections accepted.
    pub connections: IntCounter,
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Statements executed (each statement of a simple query, each Execute).
    pub statements: IntCounter,
    /// Errors sent to clients, by SQLSTATE.
    pub errors: IntCounterVec,
}

/// The process's one set of server counters.
pub static METRICS: LazyLock<ServerMetrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let connections =
        IntCounter::new("sluice_connections_total", "Client connections accepted.").expect("metric");
    let connections_open =
        IntGauge::new("sluice_connections_open", "Client connections open now.").expect("metric");
    let statements =
        IntCounter::new("sluice_statements_total", "Statements executed for clients.").expect("metric");
    let errors = IntCounterVec::new(
        Opts::new("sluice_errors_total", "Errors sent to clients, by SQLSTATE."),
        &["sqlstate"],
    )
    .expect("metric");
    for m in [
        Box::new(connections.clone()) as Box<dyn Collector>,
        Box::new(connections_open.clone()),
        Box::new(statements.clone()),
        Box::new(errors.clone()),
    ] {
        registry.register(m).expect("registering a server metric");
    }
    ServerMetrics {
        registry,
        connections,
        connections_open,
        statements,
        errors,
    }
});

/// The operator's kind, from its label (`Filter: a > 1` -> `Filter`).
fn operator_kind(label: &str) -> &str {
    label.split(':').next().unwrap_or(label).trim()
}

/// Everything `/metrics` shows, in the Prometheus text format.
pub fn render(engine: &Engine) -> Result<String, prometheus::Error> {
    let scrape = Registry::new();
    register_jobs(&scrape, engine)?;
    register_process(&scrape)?;
    let mut families = METRICS.registry.gather();
    families.extend(scrape.gather());
    let durations = checkpoint_durations(engine);
    // The text encoder refuses a family without series (no checkpointing job).
    if !durations.get_metric().is_empty() {
        families.push(durations);
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// The jobs' figures now.
fn register_jobs(registry: &Registry, engine: &Engine) -> Result<(), prometheus::Error> {
    let op_labels = &["job_name", "operator", "operator_id"];
    // The figures each parallel task keeps are shown per task (sum over
    // `task` for the operator's).
    let task_labels = &["job_name", "operator", "operator_id", "task"];
    let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), task_labels);
    let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), task_labels);
    let rows_in = counter("sluice_operator_rows_in_total", "Rows an operator took in.")?;
    let rows_out = counter("sluice_operator_rows_out_total", "Rows an operator put out.")?;
    let late = counter(
        "sluice_operator_late_rows_total",
        "Rows behind the watermark an operator dropped.",
    )?;
    let bad = counter(
        "sluice_operator_bad_rows_total",
        "Records a source could not decode.",
    )?;
    let expired = counter(
        "sluice_operator_rows_expired_total",
        "State rows an operator dropped because time made them useless (an interval join's rows past their bound, rows past the state TTL).",
    )?;
    let state_rows = gauge(
        "sluice_operator_state_rows",
        "Rows an operator holds in its state.",
    )?;
    let state_bytes = gauge(
        "sluice_operator_state_bytes",
        "Bytes an operator holds in its state (estimated).",
    )?;
    let parallelism = IntGaugeVec::new(
        Opts::new("sluice_operator_parallelism", "Tasks an operator runs in."),
        op_labels,
    )?;
    let blocked = GaugeVec::new(
        Opts::new(
            "sluice_operator_backpressure_seconds_total",
            "Time an operator's tasks waited to hand output to a full channel downstream, summed over its tasks.",
        ),
        task_labels,
    )?;
    let watermark = GaugeVec::new(
        Opts::new(
            "sluice_operator_watermark_seconds",
            "An operator's event-time watermark (lowest over its tasks), as Unix time.",
        ),
        task_labels,
    )?;
    let lag = GaugeVec::new(
        Opts::new(
            "sluice_operator_watermark_lag_seconds",
            "Now minus an operator's watermark.",
        ),
        task_labels,
    )?;
    let progress = GaugeVec::new(
        Opts::new(
            "sluice_source_progress_ratio",
            "The share of its bounded input a source has read, 0 to 1 (file bytes, generator rows).",
        ),
        op_labels,
    )?;
    let remaining = GaugeVec::new(
        Opts::new(
            "sluice_source_remaining_seconds",
            "Time a bounded source needs to read the rest of its input at its rate so far.",
        ),
        op_labels,
    )?;
    let status = IntGaugeVec::new(
        Opts::new(
            "sluice_job_status",
            "1 for the status each job is in (running, finished, failed, restarting).",
        ),
        &["job_name", "kind", "status"],
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut seen_jobs = std::collections::BTreeSet::new();
    let ops = engine.job_operators();
    for op in &ops {
        if seen_jobs.insert(op.job.clone()) {
            status
                .with_label_values(&[op.job.as_str(), op.kind, op.status.as_str()])
                .set(1);
        }
        let id = op.operator_id.to_string();
        let labels = [op.job.as_str(), operator_kind(&op.operator), id.as_str()];
        parallelism.with_label_values(&labels).set(op.parallelism as i64);
        for (t, m) in op.tasks.iter().enumerate() {
            let task = t.to_string();
            let labels = [labels[0], labels[1], labels[2], task.as_str()];
            rows_in.with_label_values(&labels).inc_by(m.rows_in);
            rows_out.with_label_values(&labels).inc_by(m.rows_out);
            late.with_label_values(&labels).inc_by(m.late_rows);
            bad.with_label_values(&labels).inc_by(m.bad_rows);
            state_rows.with_label_values(&labels).set(m.state_rows as i64);
            expired.with_label_values(&labels).inc_by(m.expired_rows);
            state_bytes.with_label_values(&labels).set(m.state_bytes as i64);
            blocked.with_label_values(&labels).set(m.blocked_us as f64 / 1e6);
            // A task with no watermark yet, or past the end of its input
            // (a bounded source finished), has none to show.
            if let Some(w) = m.watermark.filter(|w| *w > i64::MIN && *w < i64::MAX) {
                let seconds = w as f64 / 1e6;
                watermark.with_label_values(&labels).set(seconds);
                lag.with_label_values(&labels).set((now - seconds).max(0.0));
            }
        }
        if let Some(p) = &op.progress {
            progress.with_label_values(&labels).set(p.ratio());
            if let Some(left) = p.remaining {
                remaining.with_label_values(&labels).set(left.as_secs_f64());
            }
        }
    }
    let split_labels = &["job_name", "operator_id", "source", "split"];
    let split_offset = IntGaugeVec::new(
        Opts::new(
            "sluice_source_offset",
            "The next offset a source reads in a split (a Kafka partition).",
        ),
        split_labels,
    )?;
    let split_lag = IntGaugeVec::new(
        Opts::new(
            "sluice_source_lag_records",
            "Records between a source's position and the end of a split (Kafka: the high watermark).",
        ),
        split_labels,
    )?;
    let split_errors = IntCounterVec::new(
        Opts::new(
            "sluice_source_client_errors_total",
            "Errors a source's client (the Kafka consumer) reported, per split it reads.",
        ),
        split_labels,
    )?;
    for op in &ops {
        let id = op.operator_id.to_string();
        for s in &op.splits {
            let labels = [op.job.as_str(), id.as_str(), s.name.as_str(), s.split.as_str()];
            if let Some(o) = s.offset {
                split_offset.with_label_values(&labels).set(o);
            }
            if let Some(l) = s.lag {
                split_lag.with_label_values(&labels).set(l);
            }
            split_errors.with_label_values(&labels).inc_by(s.errors);
        }
    }
    let job_labels = &["job_name"];
    let ck_completed = IntCounterVec::new(
        Opts::new(
            "sluice_checkpoints_completed_total",
            "Checkpoints a job completed.",
        ),
        job_labels,
    )?;
    let ck_failed = IntCounterVec::new(
        Opts::new("sluice_checkpoints_failed_total", "Checkpoints that failed."),
        job_labels,
    )?;
    let ck_epoch = IntGaugeVec::new(
        Opts::new(
            "sluice_checkpoint_last_completed_epoch",
            "The epoch of a job's newest completed checkpoint.",
        ),
        job_labels,
    )?;
    let ck_duration = GaugeVec::new(
        Opts::new(
            "sluice_checkpoint_last_duration_seconds",
            "How long a job's newest completed checkpoint took.",
        ),
        job_labels,
    )?;
    let ck_bytes = IntGaugeVec::new(
        Opts::new(
            "sluice_checkpoint_last_size_bytes",
            "Bytes a job's newest completed checkpoint wrote.",
        ),
        job_labels,
    )?;
    let restarts = IntGaugeVec::new(
        Opts::new(
            "sluice_job_restarts",
            "Restarts after failures in a row that led to a job's current run.",
        ),
        job_labels,
    )?;
    let restore = GaugeVec::new(
        Opts::new(
            "sluice_job_restore_seconds",
            "How long a job took to start from its checkpoint (reading its state), for jobs that did.",
        ),
        job_labels,
    )?;
    let commits = IntCounterVec::new(
        Opts::new(
            "sluice_sink_commits_total",
            "Commits of a sink's output (one per completed checkpoint that landed or was already landed).",
        ),
        job_labels,
    )?;
    let commit_failures = IntCounterVec::new(
        Opts::new(
            "sluice_sink_commit_failures_total",
            "Attempts to commit a sink's output that failed (each is retried).",
        ),
        job_labels,
    )?;
    let committed_rows = IntCounterVec::new(
        Opts::new(
            "sluice_sink_committed_rows_total",
            "Rows a sink's commits made visible (table sinks; Kafka transactions are not counted).",
        ),
        job_labels,
    )?;
    let committed_bytes = IntCounterVec::new(
        Opts::new(
            "sluice_sink_committed_bytes_total",
            "Bytes of the files a sink's commits added.",
        ),
        job_labels,
    )?;
    let version = IntGaugeVec::new(
        Opts::new(
            "sluice_sink_table_version",
            "The newest version a sink's commits made of its landed table (Delta's version; sluice_commits).",
        ),
        job_labels,
    )?;
    let last_commit = GaugeVec::new(
        Opts::new(
            "sluice_sink_last_commit_timestamp_seconds",
            "When a sink's newest commit finished, as Unix time.",
        ),
        job_labels,
    )?;
    for c in engine.job_checkpoints() {
        let labels = [c.job.as_str()];
        if let Some(s) = &c.sink {
            commits.with_label_values(&labels).inc_by(s.commits);
            commit_failures.with_label_values(&labels).inc_by(s.failures);
            committed_rows.with_label_values(&labels).inc_by(s.rows);
            committed_bytes.with_label_values(&labels).inc_by(s.bytes);
            if let Some(v) = s.version {
                version.with_label_values(&labels).set(v as i64);
            }
            if let Some(ms) = s.last_commit_ms {
                last_commit.with_label_values(&labels).set(ms as f64 / 1e3);
            }
        }
        if let Some(t) = c.restore_time {
            restore.with_label_values(&labels).set(t.as_secs_f64());
        }
        ck_completed.with_label_values(&labels).inc_by(c.completed);
        ck_failed.with_label_values(&labels).inc_by(c.failed);
        if let Some(e) = c.last_completed_epoch {
            ck_epoch.with_label_values(&labels).set(e as i64);
        }
        if let Some(d) = c.last_duration_ms {
            ck_duration.with_label_values(&labels).set(d as f64 / 1e3);
        }
        if let Some(b) = c.last_bytes {
            ck_bytes.with_label_values(&labels).set(b as i64);
        }
        restarts.with_label_values(&labels).set(c.restarts as i64);
    }
    for m in [
        Box::new(rows_in) as Box<dyn Collector>,
        Box::new(rows_out),
        Box::new(late),
        Box::new(bad),
        Box::new(expired),
        Box::new(state_rows),
        Box::new(state_bytes),
        Box::new(parallelism),
        Box::new(CounterFromGauge(blocked)),
        Box::new(watermark),
        Box::new(lag),
        Box::new(progress),
        Box::new(remaining),
        Box::new(status),
        Box::new(ck_completed),
        Box::new(ck_failed),
        Box::new(ck_epoch),
        Box::new(ck_duration),
        Box::new(ck_bytes),
        Box::new(restarts),
        Box::new(restore),
        Box::new(commits),
        Box::new(commit_failures),
        Box::new(committed_rows),
        Box::new(committed_bytes),
        Box::new(version),
        Box::new(last_commit),
        Box::new(split_offset),
        Box::new(split_lag),
        Box::new(split_errors),
    ] {
        registry.register(m)?;
    }
    Ok(())
}

/// Completed checkpoints by duration, per job, as a Prometheus histogram
/// (the counts live in the job's checkpoint history; the family is built
/// here from them at each scrape).
fn checkpoint_durations(engine: &Engine) -> prometheus::proto::MetricFamily {
    use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
    let mut family = MetricFamily::default();
    family.set_name("sluice_checkpoint_duration_seconds".into());
    family.set_help("How long completed checkpoints took.".into());
    family.set_field_type(MetricType::HISTOGRAM);
    let mut metrics = vec![];
    for c in engine.job_checkpoints() {
        let mut h = Histogram::default();
        h.set_sample_count(c.durations.count);
        h.set_sample_sum(c.durations.sum_ms as f64 / 1e3);
        let buckets = sluice_engine::checkpoint::DURATION_BUCKETS_MS
            .iter()
            .zip(&c.durations.cumulative)
            .map(|(bound, count)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound as f64 / 1e3);
                b.set_cumulative_count(*count);
                b
            })
            .collect();
        h.set_bucket(buckets);
        let mut label = LabelPair::default();
        label.set_name("job_name".into());
        label.set_value(c.job.clone());
        let mut m = Metric::default();
        m.set_label(vec![label]);
        m.set_histogram(h);
        metrics.push(m);
    }
    family.set_metric(metrics);
    family
}

/// The process's CPU time, memory and open files, under the names every
/// Prometheus client library uses (`process_*`), read from /proc.
fn register_process(registry: &Registry) -> Result<(), prometheus::Error> {
    let Some(p) = ProcessFigures::read() else {
        return Ok(());
    };
    let cpu = Gauge::new(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
    )?;
    cpu.set(p.cpu_seconds);
    let rss = IntGauge::new("process_resident_memory_bytes", "Resident memory size in bytes.")?;
    rss.set(p.resident_bytes);
    let vsize = IntGauge::new("process_virtual_memory_bytes", "Virtual memory size in bytes.")?;
    vsize.set(p.virtual_bytes);
    let fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
    fds.set(p.open_fds);
    let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")?;
    threads.set(p.threads);
    let start = Gauge::new(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
    )?;
    start.set(p.start_time_seconds);
    // process_cpu_seconds_total is a counter by name; the text format's
    // TYPE line says so.
    let cpu = CounterFromGauge(cpu);
    for m in [
        Box::new(cpu) as Box<dyn Collector>,
        Box::new(rss),
        Box::new(vsize),
        Box::new(fds),
        Box::new(threads),
        Box::new(start),
    ] {
        registry.register(m)?;
    }
    Ok(())
}

/// A gauge reported with the counter type (a value read from elsewhere
/// that only grows, such as CPU time: the counter types take increments,
/// this one a fractional total).
struct CounterFromGauge<G: Collector>(G);

impl<G: Collector> Collector for CounterFromGauge<G> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        for f in &mut families {
            f.set_field_type(prometheus::proto::MetricType::COUNTER);
            for m in f.mut_metric() {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(m.get_gauge().get_value());
                m.set_counter(c);
            }
        }
        families
    }
}

/// What /proc says of this process.
struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    threads: i64,
    start_time_seconds: f64,
}

impl ProcessFigures {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name, which is in parentheses and
        // may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Numbered as in proc(5) from field 3 (state) on.
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let ticks = clock_ticks_per_second();
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as i64)
            .ok()?;
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            threads: field(20)? as i64,
            start_time_seconds: boot + field(22)? / ticks,
            virtual_bytes: field(23)? as i64,
            resident_bytes: rss_kib * 1024,
            open_fds,
        })
    }
}

/// USER_HZ: 100 on every Linux this runs on (the kernel's ABI fixes it
/// for /proc, whatever the internal tick rate).
fn clock_ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_kinds_drop_the_detail() {
        assert_eq!(operator_kind("Filter: a > 1"), "Filter");
        assert_eq!(operator_kind("Union"), "Union");
        assert_eq!(operator_kind("Source: bids"), "Source");
    }

    #[test]
    fn process_figures_are_read_from_proc() {
        let p = ProcessFigures::read().expect("reading /proc/self");
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.threads >= 1);
        assert!(p.start_time_seconds > 1.7e9, "{}", p.start_time_seconds);
    }
}

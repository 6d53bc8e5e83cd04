//! Starts the real `sluice` binary for process-level tests.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `sluice` process on a free port of 127.0.0.1.
pub struct SluiceProcess {
    pub child: Child,
    pub port: u16,
}

impl SluiceProcess {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::start_inner(data_dir, extra_env, Stdio::inherit())
    }

    /// Starts with the server's log (stderr) written to `log`.
    pub fn start_logging(data_dir: &Path, log: &Path, extra_env: &[(&str, &str)]) -> Self {
        let file = std::fs::File::create(log).expect("creating the log file");
        Self::start_inner(data_dir, extra_env, Stdio::from(file))
    }

    fn start_inner(data_dir: &Path, extra_env: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("SLUICE_LOG", "warn")
            // Servers of parallel tests would all want the default HTTP
            // port; the metrics test asks for one of its own.
            .env("SLUICE_HTTP_LISTEN", "off")
            // Tests keep their inputs in temporary directories beside the
            // data directory.
            .env("SLUICE_FILE_ROOTS", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra_env {
            // An empty value unsets the variable (a default above included).
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn().expect("starting sluice");
        let p = SluiceProcess { child, port };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sluice did not start listening on {}", self.port);
    }

    pub fn conn_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=sluice password=sluice dbname=sluice",
            self.port
        )
    }

    /// A psql command for this server (user and database sluice, no psqlrc).
    fn psql_command(&self, password: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "sluice",
            "-d",
            "sluice",
            "-X",
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PG_COLOR", "never");
        cmd
    }

    /// Runs psql with `args` against this server and returns its stdout.
    /// Panics with psql's stderr if psql fails.
    pub fn psql(&self, args: &[&str]) -> String {
        let out = self
            .psql_command("sluice")
            .args(["-v", "ON_ERROR_STOP=1"])
            .args(args)
            .output()
            .expect("running psql (install postgresql-client)");
        assert!(
            out.status.success(),
            "psql {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs psql `-tA` with `args` and the given password, without stopping
    /// on errors, and returns whatever happened.
    pub fn psql_output(&self, password: &str, args: &[&str]) -> std::process::Output {
        self.psql_command(password)
            .arg("-tA")
            .args(args)
            .output()
            .expect("running psql")
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait; returns whether it exited on its own in time.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a small Hive-partitioned Parquet dataset under `dir` through a
/// running server (DataFusion's COPY ... PARTITIONED BY).
pub fn write_trips(p: &SluiceProcess, dir: &Path) {
    p.psql(&[
        "-c",
        &format!(
            "COPY (SELECT * FROM (VALUES (1, 10.5, '2026-11-01'), (2, 20.0, '2026-11-01'), (3, 7.25, '2026-11-02')) AS t(id, fare, dt)) \
             TO '{}/' STORED AS PARQUET PARTITIONED BY (dt)",
            dir.display()
        ),
    ]);
}

/// The test broker (`SLUICE_TEST_KAFKA_BROKERS`, set by the test script).
pub fn brokers() -> String {
    std::env::var("SLUICE_TEST_KAFKA_BROKERS")
        .expect("needs a Kafka broker: run ./scripts/test.sh, or set SLUICE_TEST_KAFKA_BROKERS")
}

/// Creates a topic on the test broker.
pub fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for r in admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap() {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    });
}

/// A self-signed certificate for 127.0.0.1 and its key, made with openssl
/// in `dir`: (certificate, key).
pub fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}

/// A port of 127.0.0.1 free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request to `127.0.0.1:port`: (status code, body).
pub fn http_request(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting for HTTP");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

//! The web console: its HTTP API's access rules, and the page itself in a
//! real Chromium (`tests/console/console.js`, playwright-core; both installed
//! by `scripts/infra/browser.sh`, which the test script runs).

mod common;

use std::io::{Read, Write};

use common::{SluiceProcess, certificate, free_port, http_request as request};

// sluice:sluice and sluice:wrong, base64.
const GOOD: &str = "Authorization: Basic c2x1aWNlOnNsdWljZQ==";
const BAD: &str = "Authorization: Basic c2x1aWNlOndyb25n";

#[test]
fn the_console_api_asks_for_the_wire_protocols_users() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let addr = format!("127.0.0.1:{http}");
    let _p = SluiceProcess::start_with(&dir.path().join("data"), &[("SLUICE_HTTP_LISTEN", &addr)]);
    // The page is public (it holds no data); the API is not.
    let (code, page) = request(http, "GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(page.contains("Sluice console"));
    assert_eq!(request(http, "GET", "/api/jobs", &[], "").0, 401);
    assert_eq!(request(http, "GET", "/api/jobs", &[BAD], "").0, 401);
    let (code, jobs) = request(http, "GET", "/api/jobs", &[GOOD], "");
    assert_eq!(code, 200, "{jobs}");
    assert!(jobs.contains("\"columns\""), "{jobs}");
    // SQL needs the console's header (a cross-site form can't send it).
    assert_eq!(request(http, "POST", "/api/sql", &[GOOD], "SELECT 1").0, 403);
    let (code, out) = request(
        http,
        "POST",
        "/api/sql",
        &[GOOD, "X-Sluice-Console: 1"],
        "SELECT 6 * 7 AS n",
    );
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"][0][0], "42", "{out}");
    let (_, out) = request(
        http,
        "POST",
        "/api/sql",
        &[GOOD, "X-Sluice-Console: 1"],
        "SELEC 1",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["sqlstate"], "42601", "{out}");
    // A form login: a cookie that then opens the API.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    let form = "user=sluice&password=sluice";
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let cookie = raw
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie: {raw}"))
        .to_string();
    let (code, who) = request(http, "GET", "/api/whoami", &[&format!("Cookie: {cookie}")], "");
    assert_eq!(code, 200);
    assert!(who.contains("\"user\":\"sluice\""), "{who}");
    assert_eq!(
        request(http, "GET", "/api/whoami", &["Cookie: sluice_console=forged"], "").0,
        401
    );
    // A wrong password goes back to the form.
    let (code, _) = request(http, "POST", "/login", &[], "user=sluice&password=nope");
    assert_eq!(code, 303);
    // The live feed and a statement's progress are the API's too.
    assert_eq!(request(http, "GET", "/api/live", &[], "").0, 401);
    assert_eq!(request(http, "GET", "/api/query?id=x", &[BAD], "").0, 401);
    let (code, out) = request(http, "GET", "/api/query?id=nothing-running", &[GOOD], "");
    assert_eq!((code, out.as_str()), (200, r#"{"running":false}"#));
    // /metrics is open unless the server is told otherwise (below).
    let (code, text) = request(http, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    assert!(text.contains("sluice_connections_total"), "{text}");
    // A secret given as an option shows masked in the catalog, and nowhere
    // else the console or /metrics reads.
    std::fs::create_dir_all(dir.path().join("data/in")).unwrap();
    let (_, out) = request(
        http,
        "POST",
        "/api/sql",
        &[GOOD, "X-Sluice-Console: 1"],
        "CREATE STREAM guarded (id BIGINT) WITH (connector = 'filesystem', path = 'in/', format = 'json', \
         's3.secret_access_key' = 'hunter2-never-shown')",
    );
    assert!(!out.contains("\"error\""), "{out}");
    let (_, catalog) = request(http, "GET", "/api/catalog", &[GOOD], "");
    assert!(
        catalog.contains("guarded") && catalog.contains("s3.secret_access_key=********"),
        "{catalog}"
    );
    // The statement that made it, secret masked.
    assert!(
        catalog.contains("CREATE STREAM guarded") && catalog.contains("'s3.secret_access_key' = '********'"),
        "{catalog}"
    );
    for path in [
        "/api/catalog",
        "/api/operators",
        "/api/jobs",
        "/api/checkpoints",
        "/metrics",
    ] {
        let (_, body) = request(http, "GET", path, &[GOOD], "");
        assert!(!body.contains("hunter2"), "{path} shows the secret: {body}");
    }
}

#[test]
fn metrics_can_ask_for_the_same_users() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let addr = format!("127.0.0.1:{http}");
    let _p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[("SLUICE_HTTP_LISTEN", &addr), ("SLUICE_METRICS_AUTH", "true")],
    );
    let (code, text) = request(http, "GET", "/metrics", &[], "");
    assert_eq!(code, 401, "{text}");
    assert!(!text.contains("sluice_"), "{text}");
    assert_eq!(request(http, "GET", "/metrics", &[BAD], "").0, 401);
    let (code, text) = request(http, "GET", "/metrics", &[GOOD], "");
    assert_eq!(code, 200);
    assert!(text.contains("sluice_connections_total"), "{text}");
}

#[test]
fn the_console_in_chromium_and_firefox_logs_in_watches_jobs_and_runs_sql() {
    let drivers = std::env::var("SLUICE_TEST_PLAYWRIGHT_PATH").expect(
        "needs playwright-core, puppeteer-core, Chromium and Firefox: run ./scripts/test.sh, or eval \"$(scripts/infra/browser.sh)\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let addr = format!("127.0.0.1:{http}");
    let p = SluiceProcess::start_with(&dir.path().join("data"), &[("SLUICE_HTTP_LISTEN", &addr)]);
    p.psql(&[
        "-c",
        "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.per.second' = '2000')",
        "-c",
        "CREATE MATERIALIZED VIEW per_auction AS SELECT auction, count(*) AS bids FROM bid GROUP BY auction",
        "-c",
        "SET streaming.checkpoint_interval = '1s'",
        "-c",
        "CREATE SINK landed WITH (connector = 'delta', path = 'lake/landed') AS \
         SELECT window_start, count(*) AS bids FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY window_start",
        // A bounded input read for minutes: its job shows progress.
        "-c",
        "CREATE STREAM nums (id BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '500', 'number-of-rows' = '100000')",
        "-c",
        "CREATE MATERIALIZED VIEW nums_seen AS SELECT count(*) AS n FROM nums",
        // A slow stream, for a statement whose rows come over seconds.
        "-c",
        "CREATE STREAM slow (id BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '100')",
    ]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.js");
    // Screenshots stay after the run, in the build's scratch directory.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // One browser after the other (two at once would share the 2 cores
    // with the server they measure).
    for browser in ["chromium", "firefox"] {
        let out = std::process::Command::new("node")
            .arg(&script)
            .arg(http.to_string())
            .arg(&shots)
            .arg(browser)
            .env("NODE_PATH", &drivers)
            .output()
            .expect("running node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{browser}: console checks failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains(" 0 failed"), "{stdout}");
        let shot = shots.join(format!("{browser}-jobs.png"));
        assert!(shot.exists(), "no screenshot at {}", shot.display());
        eprintln!("{browser}: screenshots in {}", shots.display());
    }
}

#[test]
fn with_a_certificate_the_console_and_metrics_are_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let http = free_port();
    let addr = format!("127.0.0.1:{http}");
    let _p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[
            ("SLUICE_HTTP_LISTEN", &addr),
            ("SLUICE_TLS_CERT", cert.to_str().unwrap()),
            ("SLUICE_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "20", "--cacert"])
            .arg(&cert)
            .args(args)
            .output()
            .expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, who) = curl(&[
        "-u",
        "sluice:sluice",
        &format!("https://127.0.0.1:{http}/api/whoami"),
    ]);
    assert!(ok && who.contains("\"user\":\"sluice\""), "{who}");
    let (ok, metrics) = curl(&[&format!("https://127.0.0.1:{http}/metrics")]);
    assert!(ok && metrics.contains("sluice_connections_total"), "{metrics}");
    // The login cookie is marked Secure.
    let (ok, headers) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--data",
        "user=sluice&password=sluice",
        &format!("https://127.0.0.1:{http}/login"),
    ]);
    assert!(
        ok && headers.to_ascii_lowercase().contains("; secure"),
        "{headers}"
    );
    // Plain HTTP gets no answer.
    let (ok, _) = curl(&[&format!("http://127.0.0.1:{http}/metrics")]);
    assert!(!ok, "plain HTTP was served beside HTTPS");
}

/// Bad input to the HTTP port gets an error or a closed connection, and
/// both ports keep serving: a request line that isn't one, a header past
/// hyper's limit, a body past the console's, and clients that start a
/// request and never finish it.
#[test]
fn bad_http_input_gets_an_error_and_both_ports_keep_serving() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let addr = format!("127.0.0.1:{http}");
    let p = SluiceProcess::start_with(&dir.path().join("data"), &[("SLUICE_HTTP_LISTEN", &addr)]);
    // What the server answers to raw bytes: its status code, or 0 for a
    // connection closed without an answer.
    let raw = |bytes: &[u8]| -> u16 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // The server may close while a large request is still being sent.
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    let code = raw(b"THIS IS NOT HTTP\r\n\r\n");
    assert!(code == 400 || code == 0, "garbage: {code}");
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend(b"\r\n\r\n");
    let code = raw(&huge);
    assert!(code == 431 || code == 400 || code == 0, "a 1 MiB header: {code}");
    let big_body = "x".repeat(2 << 20);
    let (code, _) = request(
        http,
        "POST",
        "/api/sql",
        &[GOOD, "X-Sluice-Console: 1"],
        &big_body,
    );
    assert_eq!(code, 413, "a 2 MiB statement");
    // Slow clients: a request begun and never finished, 50 times over.
    let slow: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // Meanwhile both ports serve.
    let (code, text) = request(http, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    assert!(text.contains("sluice_connections_total"));
    let out = p.psql_output("sluice", &["-c", "SELECT 6 * 7"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // And the server lets the slow ones go (after its 10 s header
    // timeout): each read ends, where a held connection would run into
    // this side's 60 s read timeout.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut out = Vec::new();
        let ended = s.read_to_end(&mut out);
        assert!(ended.is_ok(), "a slow client was held: {ended:?}");
    }
    let (code, _) = request(http, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
}

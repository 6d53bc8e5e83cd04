//! Security: a failed login never runs a query (every failure path, plain
//! and TLS), logins fail alike for unknown users and wrong passwords, frames
//! are checked before they are buffered, connection and login limits,
//! secrets never shown, deep statements refused with 54001.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{SluiceProcess, certificate};

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for kv in ["user", user, "database", "sluice"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

/// A SASLInitialResponse for `mechanism` with `data`.
fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    msg(b'p', &body)
}

/// Backend messages read until the server closes the connection (`true`)
/// or stays silent for `quiet` (`false`).
fn read_messages(s: &mut TcpStream, quiet: Duration) -> (Vec<(u8, Vec<u8>)>, bool) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (parse_messages(&bytes), closed)
}

fn parse_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = i32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        if bytes.len() < 1 + len {
            break;
        }
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        if let Some((&t, v)) = field.split_first() {
            match t {
                b'C' => code = String::from_utf8_lossy(v).into(),
                b'M' => message = String::from_utf8_lossy(v).into(),
                _ => {}
            }
        }
    }
    (code, message)
}

/// Reads until the next message of type `tag`; panics if the server closes.
fn until(s: &mut TcpStream, tag: u8) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let msgs = parse_messages(&bytes);
        if let Some((_, body)) = msgs.iter().find(|(t, _)| *t == tag) {
            return body.clone();
        }
        let n = s.read(&mut buf).expect("reading");
        assert!(n > 0, "server closed before sending {:?}: {msgs:?}", tag as char);
        bytes.extend_from_slice(&buf[..n]);
    }
}

fn streams(p: &SluiceProcess) -> String {
    p.psql(&["-tA", "-c", "SHOW STREAMS"])
}

/// After the failure the client sends, pipelined, a statement that would
/// drop the stream: it must not run, and the server must close.
fn assert_refused_and_closed(p: &SluiceProcess, mut s: TcpStream, what: &str) {
    let _ = s.write_all(&query("DROP STREAM keep"));
    let (msgs, closed) = read_messages(&mut s, Duration::from_secs(5));
    assert!(
        closed,
        "{what}: the connection stayed open after a failed login: {msgs:?}"
    );
    let types: Vec<char> = msgs.iter().map(|(t, _)| *t as char).collect();
    assert!(
        !types.contains(&'C') && !types.contains(&'Z'),
        "{what}: {types:?}"
    );
    let (code, message) = msgs
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, b)| error_fields(b))
        .unwrap_or_else(|| panic!("{what}: no error: {types:?}"));
    assert!(
        code.starts_with("28") || code == "08P01",
        "{what}: {code} {message}"
    );
    assert!(streams(p).contains("keep"), "{what}: the stream was dropped");
}

/// Logs in with SCRAM as `user` but sends a wrong proof; returns the
/// socket after the final message.
fn scram_wrong_proof(port: u16, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&startup(user)).unwrap();
    let r = until(&mut s, b'R');
    assert_eq!(&r[..4], &10i32.to_be_bytes(), "expected AuthenticationSASL");
    s.write_all(&sasl_initial("SCRAM-SHA-256", b"n,,n=,r=clientnonce0123456789"))
        .unwrap();
    let cont = until(&mut s, b'R');
    assert_eq!(&cont[..4], &11i32.to_be_bytes(), "expected SASLContinue");
    let server_first = String::from_utf8(cont[4..].to_vec()).unwrap();
    let nonce = server_first
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .expect("server nonce");
    let last = format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    s.write_all(&msg(b'p', last.as_bytes())).unwrap();
    s
}

#[test]
fn a_failed_login_runs_nothing_and_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    p.psql(&["-c", "CREATE STREAM keep (x BIGINT) WITH (connector = 'datagen')"]);
    assert!(streams(&p).contains("keep"));

    // A made-up SASL mechanism (the reported sequence).
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.write_all(&startup("sluice")).unwrap();
    s.write_all(&msg(b'p', b"FOO\0\0\0\0\0")).unwrap();
    assert_refused_and_closed(&p, s, "unknown mechanism");

    // A SASL message that is not SCRAM.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.write_all(&startup("sluice")).unwrap();
    s.write_all(&sasl_initial("SCRAM-SHA-256", b"garbage")).unwrap();
    assert_refused_and_closed(&p, s, "garbage SCRAM");

    // A query instead of a password.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.write_all(&startup("sluice")).unwrap();
    until(&mut s, b'R');
    assert_refused_and_closed(&p, s, "query instead of password");

    // A wrong password, and an unknown user: the same code, the same
    // wording, at the same step.
    let mut seen = Vec::new();
    for user in ["sluice", "nobody"] {
        let mut s = scram_wrong_proof(p.port, user);
        let _ = s.write_all(&query("DROP STREAM keep"));
        let (msgs, closed) = read_messages(&mut s, Duration::from_secs(5));
        assert!(closed, "{user}: still open: {msgs:?}");
        let (code, message) = msgs
            .iter()
            .find(|(t, _)| *t == b'E')
            .map(|(_, b)| error_fields(b))
            .expect("an error");
        assert!(
            !msgs.iter().any(|(t, _)| *t == b'C' || *t == b'Z'),
            "{user}: {msgs:?}"
        );
        seen.push((code, message.replace(user, "<user>")));
    }
    assert_eq!(
        seen[0], seen[1],
        "unknown user and wrong password must look alike"
    );
    assert_eq!(seen[0].0, "28P01");
    assert_eq!(seen[0].1, "password authentication failed for user \"<user>\"");
    assert!(streams(&p).contains("keep"));

    // psql with a wrong password is refused; the right one works.
    let out = p.psql_output("wrong", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.psql(&["-tA", "-c", "SELECT 1"]).trim(), "1");
}

/// psql with a connection string of its own; (success, stdout, stderr).
fn psql_with(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-tA", "-c", sql])
        .env("PGPASSWORD", "sluice")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_can_be_required_and_logins_bound_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[
            ("SLUICE_TLS_CERT", cert.to_str().unwrap()),
            ("SLUICE_TLS_KEY", key.to_str().unwrap()),
            ("SLUICE_REQUIRE_TLS", "true"),
        ],
    );
    let base = format!("host=127.0.0.1 port={} user=sluice dbname=sluice", p.port);
    let (ok, _, err) = psql_with(&format!("{base} sslmode=disable"), "SELECT 1");
    assert!(!ok && err.contains("requires TLS"), "{err}");
    let (ok, out, err) = psql_with(&format!("{base} sslmode=require"), "SELECT 1");
    assert!(ok && out.trim() == "1", "{err}");
    // SCRAM-SHA-256-PLUS: the login is bound to this TLS session.
    let (ok, out, err) = psql_with(
        &format!("{base} sslmode=require channel_binding=require"),
        "SELECT 2",
    );
    assert!(ok && out.trim() == "2", "{err}");
    // Without TLS configured, requiring it is a start-up error.
    let bad = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--listen", "127.0.0.1:0", "--require-tls", "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs TLS"));
}

#[test]
fn a_failed_login_over_tls_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[
            ("SLUICE_TLS_CERT", cert.to_str().unwrap()),
            ("SLUICE_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    p.psql(&["-c", "CREATE STREAM keep (x BIGINT) WITH (connector = 'datagen')"]);
    // openssl s_client speaks Postgres' SSLRequest, then relays our bytes.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{}", p.port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut attack = startup("sluice");
    attack.extend(msg(b'p', b"FOO\0\0\0\0\0"));
    attack.extend(query("DROP STREAM keep"));
    client.stdin.as_mut().unwrap().write_all(&attack).unwrap();
    // s_client exits when the server closes the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if client.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = Vec::new();
    client.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let msgs = parse_messages(&out);
    assert!(exited, "the server kept the TLS connection open: {msgs:?}");
    assert!(msgs.iter().any(|(t, _)| *t == b'E'), "{msgs:?}");
    assert!(!msgs.iter().any(|(t, _)| *t == b'C' || *t == b'Z'), "{msgs:?}");
    assert!(streams(&p).contains("keep"), "the stream was dropped over TLS");
}

#[test]
fn frames_are_checked_before_they_are_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("scram"));
    // Before login: a password message declaring ~1 GB is refused at its
    // header with 08P01, and the connection closes at once.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    let mut big = startup("sluice");
    big.extend_from_slice(&[b'p', 0x3f, 0xff, 0xff, 0xfe]);
    big.extend_from_slice(&[b'x'; 4096]);
    s.write_all(&big).unwrap();
    let (msgs, closed) = read_messages(&mut s, Duration::from_secs(5));
    assert!(closed, "{msgs:?}");
    let err = msgs
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, b)| error_fields(b))
        .expect("error");
    assert_eq!(err.0, "08P01", "{err:?}");
    assert!(err.1.contains("limit of 10000 bytes"), "{err:?}");
    // A frame shorter than its own length field (pgwire's decoders used
    // to panic on it) is a protocol error too.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    let mut short = startup("sluice");
    short.extend_from_slice(&[b'p', 0, 0, 0, 0]);
    s.write_all(&short).unwrap();
    let (msgs, closed) = read_messages(&mut s, Duration::from_secs(5));
    assert!(closed, "{msgs:?}");
    assert!(
        msgs.iter()
            .any(|(t, b)| *t == b'E' && error_fields(b).0 == "08P01"),
        "{msgs:?}"
    );
    assert_eq!(p.psql(&["-tA", "-c", "SELECT 1"]).trim(), "1");

    let t = SluiceProcess::start_with(&dir.path().join("trust"), &[("SLUICE_AUTH", "trust")]);
    // After login the limit is max_message_bytes (64 MB by default).
    let mut s = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    let mut big = startup("sluice");
    big.extend_from_slice(&[b'Q', 0x3f, 0xff, 0xff, 0xfe]);
    s.write_all(&big).unwrap();
    let (msgs, closed) = read_messages(&mut s, Duration::from_secs(5));
    assert!(closed, "{msgs:?}");
    let err = msgs
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, b)| error_fields(b))
        .expect("error");
    assert_eq!(err.0, "08P01", "{err:?}");
    assert!(err.1.contains("larger than the limit"), "{err:?}");

    // Each connection has its own backend pid.
    let pid = |port| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&startup("sluice")).unwrap();
        let k = until(&mut s, b'K');
        i32::from_be_bytes(k[..4].try_into().unwrap())
    };
    let (a, b) = (pid(t.port), pid(t.port));
    assert_ne!(a, b, "two sessions share backend pid {a}");
    assert_eq!(t.psql(&["-tA", "-c", "SELECT 1"]).trim(), "1");
}

#[test]
fn connection_login_and_failure_limits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "max_connections = 3\nlogin_timeout_secs = 1\nlogin_failures_per_minute = 3\n[users]\nsluice = \"sluice\"\n",
    )
    .unwrap();
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[("SLUICE_CONFIG", config.to_str().unwrap())],
    );

    // A connection that never logs in is closed after the login timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    let started = Instant::now();
    let (_, closed) = read_messages(&mut idle, Duration::from_secs(10));
    assert!(closed && started.elapsed() < Duration::from_secs(10));

    // Three held connections fill the server; a fourth is refused with 53300.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (c, conn) = rt
            .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
            .unwrap();
        rt.spawn(conn);
        held.push(c);
    }
    let err = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .err()
        .expect("a fourth connection should be refused");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(db.code().code(), "53300", "{}", db.message());
    held.pop();
    // Room again (the closed one is noticed shortly).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rt.block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls)) {
            Ok((c, conn)) => {
                rt.spawn(conn);
                assert_eq!(
                    rt.block_on(c.query_one("SELECT 1", &[]))
                        .unwrap()
                        .get::<_, i64>(0),
                    1
                );
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no room after a connection closed: {e}"),
        }
    }
    drop(held);

    // Three failed logins from this address: the next login is refused even
    // with the right password, and says why.
    for _ in 0..3 {
        assert!(!p.psql_output("wrong", &["-c", "SELECT 1"]).status.success());
    }
    let out = p.psql_output("sluice", &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too many failed logins"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn secrets_are_never_shown_and_the_data_directory_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let p = SluiceProcess::start_logging(&data, &log, &[("SLUICE_LOG", "debug")]);
    const PLANTED: &str = "planted-s3cr3t-7Qz";
    let brokers = common::brokers();
    // Names of their own: the broker is shared by the whole test run.
    let (input, output) = (
        format!("secret_in_{}", std::process::id()),
        format!("secret_out_{}", std::process::id()),
    );
    common::create_topic(&input, 1);
    common::create_topic(&output, 1);
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM s (x BIGINT) WITH (connector = 'kafka', topic = '{input}', format = 'json', \
             'properties.bootstrap.servers' = '{brokers}', 'properties.sasl.password' = '{PLANTED}')"
        ),
        "-c",
        &format!(
            "CREATE SINK k WITH (connector = 'kafka', topic = '{output}', format = 'json', \
             'properties.bootstrap.servers' = '{brokers}', 'properties.sasl.password' = '{PLANTED}') \
             AS SELECT x FROM s"
        ),
    ]);
    for show in [
        "SHOW STREAMS",
        "SHOW SINKS",
        "SHOW JOBS",
        "SELECT * FROM information_schema.tables",
    ] {
        let out = p.psql(&["-tA", "-c", show]);
        assert!(!out.contains(PLANTED), "{show} shows the secret: {out}");
    }
    let streams = p.psql(&["-tA", "-c", "SHOW STREAMS"]);
    assert!(streams.contains("properties.sasl.password=********"), "{streams}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.join("catalog.json")), 0o600);
        assert_eq!(mode(&data), 0o700);
    }
    drop(p);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.is_empty());
    assert!(!logged.contains(PLANTED), "the log shows the secret");
}

#[test]
fn deep_statements_and_data_errors_get_their_sqlstate() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let chain = |n: usize, op: &str| format!("SELECT 1{}", format!(" {op} 1").repeat(n));
    let corpus = [
        (chain(2_000, "+"), "54001"),
        (chain(100_000, "+"), "54001"),
        (format!("SELECT 'a'{}", " || 'a'".repeat(50_000)), "54001"),
        (format!("SELECT true{}", " AND true".repeat(50_000)), "54001"),
        (vec!["SELECT 1"; 5_000].join(" UNION ALL "), "54001"),
        (format!("SELECT '{}'", "x".repeat(5 << 20)), "54000"),
        ("SELECT length(lpad('x', 2147483647))".to_string(), "54000"),
        ("SELECT length(repeat('abc', 1000000000))".to_string(), "54000"),
        (
            "SELECT length(rpad(CAST(x AS TEXT), 200000000)) FROM generate_series(1, 10) t(x)".to_string(),
            "54000",
        ),
        ("SELECT 1/0".to_string(), "22012"),
        ("SELECT 'abc'::int".to_string(), "22P02"),
        // Integer overflow is an error, as in Postgres, not a wrapped value.
        ("SELECT 9223372036854775807 + 1".to_string(), "22003"),
        ("SELECT (-9223372036854775807 - 1) - 1".to_string(), "22003"),
        (
            "SELECT a * 4611686018427387904 FROM (VALUES (1), (2)) t(a)".to_string(),
            "22003",
        ),
        (
            "SELECT sum(a) FROM (VALUES (9223372036854775807), (1)) t(a)".to_string(),
            "22003",
        ),
        (
            "SELECT g, sum(a) FROM (VALUES (1, 9223372036854775807), (1, 1), (2, 1)) t(g, a) GROUP BY g"
                .to_string(),
            "22003",
        ),
        (
            "SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             FROM (VALUES (9223372036854775807), (1)) t(x)"
                .to_string(),
            "22003",
        ),
    ];
    for (sql, code) in &corpus {
        for simple in [true, false] {
            let err = if simple {
                rt.block_on(client.simple_query(sql)).err()
            } else {
                rt.block_on(client.query(sql.as_str(), &[])).err()
            };
            let shown: String = sql.chars().take(40).collect();
            let err = err.unwrap_or_else(|| panic!("{shown}... should fail"));
            let db = err.as_db_error().unwrap_or_else(|| panic!("{shown}: {err}"));
            assert_eq!(db.code().code(), *code, "{shown}: {}", db.message());
            // The session (and the server) go on.
            assert_eq!(
                rt.block_on(client.query_one("SELECT 2", &[]))
                    .unwrap()
                    .get::<_, i64>(0),
                2
            );
        }
    }
    // Nesting under the limit still runs.
    let row = rt
        .block_on(client.query_one(chain(500, "+").as_str(), &[]))
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 501);
    // Sums up to the edge of the type are exact, grouped or not.
    let rows = rt
        .block_on(client.query(
            "SELECT g, sum(a) FROM (VALUES (1, 9223372036854775806), (1, 1), (2, -5), (2, -9223372036854775803)) \
             t(g, a) GROUP BY g ORDER BY g",
            &[],
        ))
        .unwrap();
    let sums: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(sums, [(1, i64::MAX), (2, i64::MIN)]);
}

#[test]
fn a_heavy_query_leaves_the_server_responsive() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    const CROSS: &str = "SELECT count(*) FROM generate_series(1,1000000) a, generate_series(1,1000000) b";
    rt.block_on(async {
        let connect = || async {
            let (c, conn) = tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        };
        // A runs a cross join of 10^12 rows, which no test waits out.
        let a = connect().await;
        let cancel = a.cancel_token();
        let heavy = tokio::spawn(async move { a.simple_query(CROSS).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Meanwhile new sessions connect and answer.
        for _ in 0..3 {
            let started = Instant::now();
            let b = connect().await;
            let one = b.query_one("SELECT 1", &[]).await.unwrap().get::<_, i64>(0);
            assert_eq!(one, 1);
            eprintln!(
                "connect + SELECT 1 beside the cross join: {:?}",
                started.elapsed()
            );
            assert!(!heavy.is_finished(), "the cross join ended early");
        }
        // A cancel request reaches it.
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let err = heavy.await.unwrap().unwrap_err();
        assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57014"), "{err}");
        // statement_timeout ends it, in both protocols, and the session goes on.
        let c = connect().await;
        c.simple_query("SET statement_timeout = '300ms'").await.unwrap();
        for simple in [true, false] {
            let err = if simple {
                c.simple_query(CROSS).await.map(|_| ()).unwrap_err()
            } else {
                c.query(CROSS, &[]).await.map(|_| ()).unwrap_err()
            };
            let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
            assert_eq!(db.code().code(), "57014");
            assert!(db.message().contains("statement timeout"), "{}", db.message());
        }
        // The server goes on. (The aborted joins stop at their next yield,
        // which can take a moment in a debug build: no timeout here.)
        let d = connect().await;
        assert_eq!(d.query_one("SELECT 3", &[]).await.unwrap().get::<_, i64>(0), 3);
    });
}

#[test]
fn bind_execute_and_empty_queries_are_answered_as_postgres_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start_with(dir.path(), &[("SLUICE_AUTH", "trust")]);
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.write_all(&startup("sluice")).unwrap();
    until(&mut s, b'Z');
    let exchange = |s: &mut TcpStream, bytes: Vec<u8>| {
        s.write_all(&bytes).unwrap();
        let (msgs, closed) = read_messages(s, Duration::from_millis(700));
        assert!(!closed, "the connection closed: {msgs:?}");
        msgs
    };
    let code = |msgs: &[(u8, Vec<u8>)]| {
        msgs.iter()
            .find(|(t, _)| *t == b'E')
            .map(|(_, b)| error_fields(b).0)
            .unwrap_or_default()
    };
    // A comment-only query: EmptyQueryResponse, then ReadyForQuery.
    let msgs = exchange(&mut s, query("-- only a comment"));
    let types: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
    assert_eq!(types, b"IZ", "{msgs:?}");

    let mut parse = b"s1\0SELECT $1::bigint + 1\0".to_vec();
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&20i32.to_be_bytes());
    let bind = |formats: &[i16], values: &[&[u8]]| {
        let mut b = b"\0s1\0".to_vec();
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v);
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'B', &b)
    };
    let execute = |max_rows: i32| {
        let mut e = b"\0".to_vec();
        e.extend_from_slice(&max_rows.to_be_bytes());
        msg(b'E', &e)
    };
    let sync = msg(b'S', b"");
    let run = |s: &mut TcpStream, b: Vec<u8>, max_rows: i32| {
        let mut bytes = b;
        bytes.extend(execute(max_rows));
        bytes.extend(sync.clone());
        exchange(s, bytes)
    };
    assert!(
        exchange(&mut s, [msg(b'P', &parse), sync.clone()].concat())
            .iter()
            .any(|(t, _)| *t == b'1')
    );
    // Too few and too many values, an unknown format code, formats that
    // match neither one nor every value.
    assert_eq!(code(&run(&mut s, bind(&[], &[]), 0)), "08P01");
    assert_eq!(code(&run(&mut s, bind(&[], &[b"5", b"6"]), 0)), "08P01");
    assert_eq!(code(&run(&mut s, bind(&[7], &[b"5"]), 0)), "22023");
    assert_eq!(code(&run(&mut s, bind(&[0, 0], &[b"5"]), 0)), "08P01");
    // A negative row limit means no limit, as in Postgres.
    let msgs = run(&mut s, bind(&[0], &[b"5"]), -1);
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(row.1.ends_with(b"6"), "{msgs:?}");
    // The session goes on.
    assert!(
        exchange(&mut s, query("SELECT 1"))
            .iter()
            .any(|(t, _)| *t == b'C')
    );
}

#[test]
fn local_paths_stay_inside_the_allowed_directories() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Only the data directory: no extra roots.
    let p = SluiceProcess::start_with(&data, &[("SLUICE_FILE_ROOTS", "")]);
    let outside = format!("/var/tmp/sluice-outside-{}", std::process::id());
    let refused = [
        "CREATE EXTERNAL TABLE shadow (line TEXT) STORED AS CSV LOCATION '/etc/shadow'".to_string(),
        format!("COPY (SELECT 1 AS x) TO '{outside}.csv' STORED AS CSV"),
        format!("COPY (SELECT 1 AS x) TO '{}' STORED AS JSON", data.join("catalog.json").display()),
        "COPY (SELECT 1 AS x) TO '../escape.csv' STORED AS CSV".to_string(),
        "CREATE STREAM procs (line TEXT) WITH (connector = 'filesystem', path = '/proc/self', format = 'csv')"
            .to_string(),
        "CREATE STREAM s (x BIGINT) WITH (connector = 'datagen')".to_string(),
        "CREATE SINK root WITH (connector = 'filesystem', path = '', format = 'json') AS SELECT x FROM s".to_string(),
        "CREATE SINK ck WITH (connector = 'filesystem', path = 'checkpoints/x', format = 'json') AS SELECT x FROM s"
            .to_string(),
    ];
    for sql in &refused {
        let out = p.psql_output("sluice", &["-v", "VERBOSITY=verbose", "-c", sql]);
        let err = String::from_utf8_lossy(&out.stderr);
        if sql.starts_with("CREATE STREAM s ") {
            assert!(out.status.success(), "{sql}: {err}");
            continue;
        }
        assert!(!out.status.success(), "{sql} should be refused");
        assert!(err.contains("42501"), "{sql}: {err}");
    }
    assert!(!std::path::Path::new(&format!("{outside}.csv")).exists());
    // Inside the data directory all of it works.
    p.psql(&[
        "-c",
        "COPY (SELECT 1 AS x) TO 'out/one.csv' STORED AS CSV",
        "-c",
        "CREATE EXTERNAL TABLE one STORED AS CSV LOCATION 'out/one.csv' OPTIONS ('format.has_header' 'true')",
    ]);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT x FROM one"]).trim(), "1");
    // The catalog is intact: the server starts again with it.
    drop(p);
    let p = SluiceProcess::start_with(&data, &[("SLUICE_FILE_ROOTS", "")]);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT x FROM one"]).trim(), "1");
}

#[test]
fn queries_over_the_memory_limit_spill_or_fail_with_53200() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "memory_limit_mb = 64\n[users]\nsluice = \"sluice\"\n").unwrap();
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[("SLUICE_CONFIG", config.to_str().unwrap())],
    );
    // 20 million groups do not fit in 64 MB: the aggregate spills and
    // finishes.
    let groups = p.psql(&[
        "-tA",
        "-c",
        "SELECT count(*) FROM (SELECT x, count(*) FROM generate_series(1, 20000000) t(x) GROUP BY x) s",
    ]);
    assert_eq!(groups.trim(), "20000000");
    // One array of 30 million values can't spill: 53200, and the session
    // and server go on.
    let out = p.psql_output(
        "sluice",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "SELECT cardinality(array_agg(x)) FROM generate_series(1, 30000000) t(x)",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("53200"), "{err}");
    assert_eq!(p.psql(&["-tA", "-c", "SELECT 1"]).trim(), "1");
}

/// psql as `user` with `password`; (success, stdout, stderr).
fn psql_as(p: &SluiceProcess, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=sluice",
            p.port
        ))
        .args(["-X", "-tA", "-v", "VERBOSITY=verbose", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn roles_log_in_and_a_read_only_role_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = SluiceProcess::start(&data);
    p.psql(&[
        "-c",
        "CREATE STREAM s (x BIGINT) WITH (connector = 'datagen', 'number-of-rows' = '5')",
        "-c",
        "COPY (SELECT 1 AS x) TO 'out/one.csv' STORED AS CSV",
        "-c",
        "CREATE EXTERNAL TABLE one STORED AS CSV LOCATION 'out/one.csv' OPTIONS ('format.has_header' 'true')",
        "-c",
        "CREATE ROLE reader WITH LOGIN PASSWORD 'r3ader'",
        "-c",
        "CREATE ROLE admin WITH LOGIN SUPERUSER PASSWORD 'adm1n'",
        "-c",
        "CREATE ROLE nologin PASSWORD 'x'",
    ]);
    // The reader logs in and reads.
    let (ok, out, err) = psql_as(&p, "reader", "r3ader", "SELECT x FROM one");
    assert!(ok && out.trim() == "1", "{err}");
    let (ok, out, err) = psql_as(&p, "reader", "r3ader", "SHOW STREAMS");
    assert!(ok && out.contains("datagen"), "{err}");
    // ... and changes nothing.
    for sql in [
        "CREATE STREAM t (x BIGINT) WITH (connector = 'datagen')",
        "DROP STREAM s",
        "DROP TABLE one",
        "CREATE EXTERNAL TABLE two STORED AS CSV LOCATION 'out/one.csv'",
        "COPY (SELECT 1 AS x) TO 'out/two.csv' STORED AS CSV",
        "CREATE SINK k WITH (connector = 'blackhole') AS SELECT x FROM s",
        "CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM s",
        "INSERT INTO one VALUES (2)",
        "CREATE ROLE sneaky WITH LOGIN SUPERUSER PASSWORD 'x'",
        "ALTER ROLE reader WITH SUPERUSER",
        "CREATE SECRET s AS 'x'",
    ] {
        let (ok, _, err) = psql_as(&p, "reader", "r3ader", sql);
        assert!(!ok && err.contains("42501"), "{sql}: {err}");
    }
    // Wrong password, a role without LOGIN, a dropped role: refused alike.
    for (user, pw) in [("reader", "wrong"), ("nologin", "x"), ("nobody", "x")] {
        let (ok, _, err) = psql_as(&p, user, pw, "SELECT 1");
        assert!(
            !ok && err.contains("password authentication failed"),
            "{user}: {err}"
        );
    }
    // A superuser role may change things, roles included.
    let (ok, _, err) = psql_as(&p, "admin", "adm1n", "ALTER ROLE reader WITH PASSWORD 'n3w'");
    assert!(ok, "{err}");
    // What a role creates, it owns (psql's \\dt "Owner"); the rest is the
    // config file's first user's, shown with Postgres's bootstrap oid.
    let (ok, _, err) = psql_as(
        &p,
        "admin",
        "adm1n",
        "CREATE STREAM admins (x BIGINT) WITH (connector = 'datagen')",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = psql_as(
        &p,
        "admin",
        "adm1n",
        "SELECT c.relname, pg_get_userbyid(c.relowner), c.relowner = 10 FROM pg_catalog.pg_class c \
         WHERE c.relname IN ('admins', 'one') ORDER BY 1",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "admins|admin|f\none|sluice|t\n");
    // Object-level privileges are refused as not supported, saying what is.
    for sql in [
        "GRANT SELECT ON one TO reader",
        "REVOKE SELECT ON one FROM reader",
    ] {
        let (ok, _, err) = psql_as(&p, "admin", "adm1n", sql);
        assert!(
            !ok && err.contains("0A000") && err.contains("NOSUPERUSER"),
            "{sql}: {err}"
        );
    }
    assert!(!psql_as(&p, "reader", "r3ader", "SELECT 1").0);
    assert!(psql_as(&p, "reader", "n3w", "SELECT 1").0);
    // Roles survive a restart; the config's users can't be made or dropped.
    drop(p);
    let p = SluiceProcess::start(&data);
    let (ok, out, err) = psql_as(&p, "reader", "n3w", "SELECT x FROM one");
    assert!(ok && out.trim() == "1", "{err}");
    let (ok, _, err) = psql_as(
        &p,
        "sluice",
        "sluice",
        "CREATE ROLE sluice WITH LOGIN PASSWORD 'x'",
    );
    assert!(!ok && err.contains("42P07"), "{err}");
    let (ok, _, err) = psql_as(&p, "sluice", "sluice", "DROP ROLE reader");
    assert!(ok, "{err}");
    assert!(!psql_as(&p, "reader", "n3w", "SELECT 1").0);
    // The catalog keeps no password, only the salted SCRAM key.
    let catalog = std::fs::read_to_string(data.join("catalog.json")).unwrap();
    assert!(
        !catalog.contains("adm1n") && catalog.contains("\"admin\""),
        "{catalog}"
    );
}

#[test]
fn secrets_are_referenced_by_name_and_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = SluiceProcess::start(&data);
    const PLANTED: &str = "planted-k3y-Zq9";
    p.psql(&[
        "-c",
        &format!("CREATE SECRET token AS '{PLANTED}'"),
        "-c",
        "CREATE SECRET rows AS '3'",
        // A secret resolves wherever an option value goes: here the number
        // of rows a datagen stream makes, which a query can count.
        "-c",
        "CREATE STREAM g (x BIGINT) WITH (connector = 'datagen', 'number-of-rows' = SECRET rows)",
        "-c",
        "CREATE SINK k WITH (connector = 'filesystem', path = 'out/k', format = 'json', \
         's3.secret_access_key' = SECRET token) AS SELECT x FROM g",
    ]);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT count(*) FROM g"]).trim(), "3");
    // And in CREATE EXTERNAL TABLE's OPTIONS: a CSV delimiter from a secret.
    std::fs::write(data.join("semi.csv"), "a;b\n1;2\n").unwrap();
    p.psql(&[
        "-c",
        "CREATE SECRET \"Delim\" AS ';'",
        "-c",
        "CREATE EXTERNAL TABLE semi STORED AS CSV LOCATION 'semi.csv' \
         OPTIONS ('format.has_header' 'true', 'format.delimiter' SECRET \"Delim\")",
    ]);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT b FROM semi"]).trim(), "2");
    let streams = p.psql(&["-tA", "-c", "SHOW STREAMS"]);
    assert!(streams.contains("number-of-rows=SECRET rows"), "{streams}");
    assert_eq!(
        p.psql(&["-tA", "-c", "SHOW SECRETS"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["Delim", "rows", "token"]
    );
    // In use: not dropped (2BP01); unknown: 42704; ALTER replaces.
    let out = p.psql_output("sluice", &["-v", "VERBOSITY=verbose", "-c", "DROP SECRET rows"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2BP01"));
    let out = p.psql_output(
        "sluice",
        &["-v", "VERBOSITY=verbose", "-c", "DROP SECRET \"Delim\""],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2BP01"));
    let out = p.psql_output(
        "sluice",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "CREATE STREAM h (x BIGINT) WITH (connector = 'datagen', 'number-of-rows' = SECRET nope)",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("42704"));
    p.psql(&[
        "-c",
        "ALTER SECRET rows AS '4'",
        "-c",
        "DROP SINK k",
        "-c",
        "DROP STREAM g",
    ]);
    // The value is in the catalog once, in its secrets; objects name it.
    let catalog = std::fs::read_to_string(data.join("catalog.json")).unwrap();
    assert_eq!(catalog.matches(PLANTED).count(), 1, "{catalog}");
    assert!(catalog.contains(r#"SECRET \"Delim\""#), "{catalog}");
    // Survives a restart, and resolves to the new value.
    drop(p);
    let p = SluiceProcess::start(&data);
    p.psql(&[
        "-c",
        "CREATE STREAM g2 (x BIGINT) WITH (connector = 'datagen', 'number-of-rows' = SECRET rows)",
    ]);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT count(*) FROM g2"]).trim(), "4");
    // The table is restored with the secret's value.
    assert_eq!(p.psql(&["-tA", "-c", "SELECT b FROM semi"]).trim(), "2");
    for show in ["SHOW STREAMS", "SHOW SINKS", "SHOW SECRETS"] {
        assert!(!p.psql(&["-tA", "-c", show]).contains(PLANTED), "{show}");
    }
}

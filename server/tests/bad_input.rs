//! Malformed statements and malformed protocol messages: errors come back or
//! the connection closes cleanly; the server stays up and other sessions are
//! unaffected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::SluiceProcess;

fn startup_message() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes()); // protocol 3.0
    for kv in ["user", "sluice", "database", "sluice"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

/// Sends `bytes`, then reads until the server closes or goes quiet. Returns
/// what the server sent.
fn send_raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn malformed_frames_do_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A healthy session held open across the whole corpus.
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);

    let mut startup = startup_message();
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("three bytes", vec![0, 0, 0]),
        ("length below minimum", vec![0, 0, 0, 2]),
        ("negative length", (-5i32).to_be_bytes().to_vec()),
        ("huge length", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
        ("unknown protocol version", vec![0, 0, 0, 8, 0, 9, 0, 0]),
        ("truncated startup", startup[..startup.len() - 5].to_vec()),
        (
            "random bytes",
            (0..512u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("startup then unknown message type", {
            let mut v = startup.clone();
            v.extend_from_slice(&[b'!', 0, 0, 0, 4]);
            v
        }),
        ("startup then query before auth", {
            let mut v = startup.clone();
            v.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
            v
        }),
        ("startup then password message with wrong length", {
            let mut v = startup.clone();
            v.extend_from_slice(&[b'p', 0, 0, 0, 200, b'x']);
            v
        }),
        (
            "ssl request then garbage",
            vec![0, 0, 0, 8, 4, 210, 22, 47, 1, 2, 3],
        ),
        (
            "cancel request for nobody",
            vec![0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2],
        ),
    ];
    startup.truncate(0);
    for (name, bytes) in &corpus {
        let _reply = send_raw(p.port, bytes);
        // The healthy session still answers after every malformed one.
        let row = rt
            .block_on(client.query_one("SELECT 7 + 1", &[]))
            .unwrap_or_else(|e| panic!("after {name:?}: healthy session failed: {e}"));
        assert_eq!(row.get::<_, i64>(0), 8, "after {name:?}");
    }
    // And new sessions can still connect.
    let (c2, conn2) = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn2);
    assert_eq!(
        rt.block_on(c2.query_one("SELECT 1", &[]))
            .unwrap()
            .get::<_, i64>(0),
        1
    );
}

#[test]
fn malformed_statements_return_errors_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let corpus = [
        ("SELEC 1", "42601"),
        ("SELECT (1", "42601"),
        ("SELECT 'unterminated", "42601"),
        ("CREATE EXTERNAL TABLE", "42601"),
        ("CREATE EXTERNAL TABLE t STORED AS PARQUET", "42601"),
        ("SELECT * FROM does_not_exist", "42P01"),
        ("SELECT nope FROM (VALUES (1)) t(a)", "42703"),
        ("DROP TABLE does_not_exist", "42P01"),
        ("CREATE TABLE x (a int)", "0A000"),
        ("SELECT 1; SELEC 2", "42601"),
        ("SELECT 1 +", "42601"),
    ];
    for (sql, code) in corpus {
        for simple in [true, false] {
            let err = if simple {
                rt.block_on(client.simple_query(sql)).err()
            } else {
                rt.block_on(client.query(sql, &[])).err()
            };
            let err = err.unwrap_or_else(|| panic!("{sql:?} (simple={simple}) should fail"));
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql:?}: not a server error: {err}"));
            assert_eq!(
                db.code().code(),
                code,
                "{sql:?} (simple={simple}): {}",
                db.message()
            );
            let row = rt.block_on(client.query_one("SELECT 2", &[])).unwrap();
            assert_eq!(row.get::<_, i64>(0), 2);
        }
    }
}

/// Logs in (trust auth) and reads up to the first ReadyForQuery.
fn logged_in(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&startup_message()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = s.read(&mut buf).expect("reading startup reply");
        assert!(n > 0, "server closed during startup");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn malformed_messages_after_login() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start_with(dir.path(), &[("SLUICE_AUTH", "trust")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("unknown message type", msg(b'!', b"")),
        ("query without terminator", msg(b'Q', b"SELECT 1")),
        ("query length too small", vec![b'Q', 0, 0, 0, 2]),
        (
            "query length larger than sent",
            vec![b'Q', 0, 0, 1, 0, b'S', b'E'],
        ),
        ("huge length", vec![b'Q', 0x7f, 0xff, 0xff, 0xff]),
        ("truncated parse", msg(b'P', b"\0SELE")),
        ("bind to a missing statement", {
            let mut v = msg(b'B', b"\0nope\0\0\0\0\0\0\0");
            v.extend(msg(b'S', b""));
            v
        }),
        ("execute a missing portal", {
            let mut v = msg(b'E', b"nope\0\0\0\0\0");
            v.extend(msg(b'S', b""));
            v
        }),
        ("describe with a bad target", {
            let mut v = msg(b'D', b"Xname\0");
            v.extend(msg(b'S', b""));
            v
        }),
        ("bind with more parameters than sent", {
            let mut v = msg(b'P', b"s1\0SELECT $1::BIGINT\0\0\0");
            v.extend(msg(b'B', b"\0s1\0\0\0\0\x05\0\0\0\x08"));
            v.extend(msg(b'S', b""));
            v
        }),
        (
            "random bytes",
            (0..300u32)
                .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
                .collect(),
        ),
    ];
    for (name, bytes) in &corpus {
        let mut s = logged_in(p.port);
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = s.write_all(bytes);
        let mut buf = [0u8; 4096];
        let mut reply = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
        }
        // Either an ErrorResponse came back or the server closed or waited;
        // what matters is that nothing else broke.
        let _ = reply;
        let row = rt
            .block_on(client.query_one("SELECT 7 + 1", &[]))
            .unwrap_or_else(|e| panic!("after {name:?}: healthy session failed: {e}"));
        assert_eq!(row.get::<_, i64>(0), 8, "after {name:?}");
    }
    // A malformed Bind gets an error response, and the session that sent it
    // can go on with a well-formed query.
    let mut s = logged_in(p.port);
    s.write_all(&msg(b'B', b"\0nope\0\0\0\0\0\0\0")).unwrap();
    s.write_all(&msg(b'S', b"")).unwrap();
    s.write_all(&msg(b'Q', b"SELECT 41 + 1\0")).unwrap();
    // Read whole backend messages until the second ReadyForQuery.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let mut messages: Vec<(u8, Vec<u8>)> = Vec::new();
    while messages.iter().filter(|(t, _)| *t == b'Z').count() < 2 {
        let n = s.read(&mut buf).expect("reading reply");
        assert!(n > 0, "server closed the session after a bad Bind");
        reply.extend_from_slice(&buf[..n]);
        while reply.len() >= 5 {
            let len = i32::from_be_bytes(reply[1..5].try_into().unwrap()) as usize;
            if reply.len() < 1 + len {
                break;
            }
            let body = reply[5..1 + len].to_vec();
            messages.push((reply[0], body));
            reply.drain(..1 + len);
        }
    }
    let types: Vec<u8> = messages.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        types, b"EZTDCZ",
        "ErrorResponse for the bad Bind, then the query's rows"
    );
    let row = &messages[3].1;
    assert!(row.ends_with(b"42"), "the query's DataRow carries 42: {row:?}");
}

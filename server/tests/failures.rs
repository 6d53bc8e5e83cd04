//! A panic inside one query fails that query alone; TLS connections work when
//! configured.

mod common;

use std::process::Command;

use common::SluiceProcess;

#[test]
fn a_panicking_query_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start_with(dir.path(), &[("SLUICE_DEBUG_FUNCTIONS", "1")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (a, conn) = tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let (b, conn) = tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for simple in [true, false] {
            for sql in [
                "SELECT sluice_debug_panic('boom')",
                "SELECT sluice_debug_panic(CAST(x AS TEXT)) FROM generate_series(1, 100000) AS t(x)",
            ] {
                let err = if simple {
                    a.simple_query(sql).await.map(|_| ()).unwrap_err()
                } else {
                    a.query(sql, &[]).await.map(|_| ()).unwrap_err()
                };
                let db = err
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{sql}: not a server error: {err}"));
                assert_eq!(db.code().code(), "XX000", "{sql}: {}", db.message());
                assert!(db.message().contains("sluice_debug_panic"), "{}", db.message());
                // the same session and another one both still work
                assert_eq!(a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i64>(0), 1);
                assert_eq!(b.query_one("SELECT 2", &[]).await.unwrap().get::<_, i64>(0), 2);
            }
        }
    });
}

#[test]
fn tls_connections_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::certificate(dir.path());
    let p = SluiceProcess::start_with(
        &dir.path().join("data"),
        &[
            ("SLUICE_TLS_CERT", cert.to_str().unwrap()),
            ("SLUICE_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=sluice dbname=sluice sslmode=require",
            p.port
        ))
        .args(["-X", "-tA", "-c", "SELECT 40 + 2", "-c", "\\conninfo"])
        .env("PGPASSWORD", "sluice")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("42\n"), "{stdout}");
    assert!(
        stdout.contains("SSL connection"),
        "psql should report TLS: {stdout}"
    );
}

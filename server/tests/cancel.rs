//! A cancel request (what Ctrl-C in psql sends) stops a running query with
//! SQLSTATE 57014, and the session is usable afterwards.

mod common;

use std::time::Duration;

use common::SluiceProcess;

#[test]
fn cancel_stops_a_long_query() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for simple in [true, false] {
            let token = client.cancel_token();
            let canceller = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            });
            // Hours of work if nothing stops it.
            let sql = "SELECT count(*) FROM generate_series(1, 100000000000) AS t(x) WHERE x % 7 = 3";
            let result = tokio::time::timeout(Duration::from_secs(60), async {
                if simple {
                    client.simple_query(sql).await.map(|_| ())
                } else {
                    client.query(sql, &[]).await.map(|_| ())
                }
            })
            .await
            .expect("cancel did not stop the query");
            canceller.await.unwrap();
            let err = result.expect_err("query should have been cancelled");
            assert_eq!(
                err.code().map(|c| c.code()),
                Some("57014"),
                "simple={simple}: {err}"
            );
            let row = client.query_one("SELECT 5", &[]).await.unwrap();
            assert_eq!(row.get::<_, i64>(0), 5);
        }
    });
}

/// `pg_sleep` waits on a timer: a cancel request and `statement_timeout`
/// end it at once. Settings sent at connect (`options=-c ...`,
/// `application_name`) apply, and are what RESET goes back to.
#[test]
fn pg_sleep_ends_on_cancel_and_on_a_startup_statement_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn_string = format!(
            "{} application_name=sleeper options='-c statement_timeout=300ms'",
            p.conn_string()
        );
        let (client, conn) = tokio_postgres::connect(&conn_string, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let setting = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
            rows.into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .unwrap_or_default()
        };
        assert_eq!(
            setting(client.simple_query("SHOW statement_timeout").await.unwrap()),
            "300ms"
        );
        assert_eq!(
            setting(
                client
                    .simple_query("SELECT current_setting('application_name')")
                    .await
                    .unwrap()
            ),
            "sleeper"
        );
        for simple in [true, false] {
            let sql = "SELECT pg_sleep(3600)";
            let result = tokio::time::timeout(Duration::from_secs(60), async {
                if simple {
                    client.simple_query(sql).await.map(|_| ())
                } else {
                    client.query(sql, &[]).await.map(|_| ())
                }
            })
            .await
            .expect("statement_timeout did not end pg_sleep");
            let err = result.expect_err("pg_sleep(3600) should have timed out");
            assert_eq!(
                err.code().map(|c| c.code()),
                Some("57014"),
                "simple={simple}: {err}"
            );
        }
        // RESET goes back to what the client asked for at connect.
        client.simple_query("SET statement_timeout = 0").await.unwrap();
        client
            .simple_query("SET application_name = 'other'")
            .await
            .unwrap();
        client.simple_query("RESET ALL").await.unwrap();
        assert_eq!(
            setting(client.simple_query("SHOW statement_timeout").await.unwrap()),
            "300ms"
        );
        assert_eq!(
            setting(
                client
                    .simple_query("SELECT current_setting('application_name')")
                    .await
                    .unwrap()
            ),
            "sleeper"
        );
        // A cancel request ends it too.
        client.simple_query("SET statement_timeout = 0").await.unwrap();
        let token = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        });
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            client.simple_query("SELECT pg_sleep(3600)"),
        )
        .await
        .expect("cancel did not end pg_sleep");
        canceller.await.unwrap();
        let err = result.expect_err("pg_sleep(3600) should have been cancelled");
        assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
        let row = client.query_one("SELECT 5", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 5);
    });
}

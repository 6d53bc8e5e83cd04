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

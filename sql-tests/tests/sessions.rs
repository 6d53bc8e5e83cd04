//! Many concurrent sessions, each with its own settings, over one catalog.

use sluice_sql_tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_at_once() {
    let server = TestServer::start().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..24i64 {
        // Any database name is accepted.
        let conn = server
            .conn_string()
            .replace("dbname=sluice", &format!("dbname=db{i}"));
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(&format!("SET application_name = 'client{i}'"))
                .await
                .unwrap();
            for _ in 0..5 {
                let row = client
                    .query_one(
                        "SELECT sum(x) FROM generate_series(1, 5000) AS t(x) WHERE x <= $1",
                        &[&(1000 + i)],
                    )
                    .await
                    .unwrap();
                let n = 1000 + i;
                assert_eq!(row.get::<_, i64>(0), n * (n + 1) / 2);
            }
            // Settings are per session.
            let msgs = client.simple_query("SHOW application_name").await.unwrap();
            let value = msgs.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
            assert_eq!(value.as_deref(), Some(format!("client{i}").as_str()));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop().await;
}

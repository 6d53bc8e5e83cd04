//! WHERE on a partition column prunes partitions, and EXPLAIN shows it.

use sluice_sql_tests::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_partition_pruning() {
    let server = TestServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("trips");
    client
        .batch_execute(&format!(
            "COPY (SELECT * FROM (VALUES (1, '2026-11-01'), (2, '2026-11-02'), (3, '2026-11-03')) AS t(id, dt)) \
             TO '{}/' STORED AS PARQUET PARTITIONED BY (dt)",
            lake.display()
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
            lake.display()
        ))
        .await
        .unwrap();
    let plan: String = client
        .query("EXPLAIN SELECT sum(id) FROM trips WHERE dt = '2026-11-02'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(1))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        plan.contains("dt=2026-11-02"),
        "plan scans the matching partition:\n{plan}"
    );
    assert!(
        !plan.contains("dt=2026-11-01"),
        "plan must not scan other partitions:\n{plan}"
    );
    assert!(
        !plan.contains("dt=2026-11-03"),
        "plan must not scan other partitions:\n{plan}"
    );
    let n: i64 = client
        .query_one("SELECT sum(id) FROM trips WHERE dt = '2026-11-02'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    server.stop().await;
}

//! The catalog survives kill -9 and a graceful restart.

mod common;

use common::{SluiceProcess, write_trips};

#[test]
fn tables_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let mut p = SluiceProcess::start(&data);
    write_trips(&p, &lake.join("trips"));
    for name in ["trips", "trips_again"] {
        p.psql(&[
            "-c",
            &format!(
                "CREATE EXTERNAL TABLE {name} STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
                lake.join("trips").display()
            ),
        ]);
    }
    p.psql(&["-c", "DROP TABLE trips_again"]);
    p.kill9();

    let mut p = SluiceProcess::start(&data);
    let out = p.psql(&[
        "-tA",
        "-c",
        "SELECT count(*), sum(fare) FROM trips WHERE dt = '2026-11-01'",
    ]);
    assert_eq!(out.trim(), "2|30.5");
    let out = p.psql(&["-tA", "-c", "SHOW TABLES"]);
    assert_eq!(out.trim(), "trips|table", "a dropped table must stay dropped");

    // And a graceful stop (SIGTERM) works and keeps the catalog too.
    assert!(p.terminate(), "sluice did not exit on SIGTERM");
    let p = SluiceProcess::start(&data);
    let out = p.psql(&["-tA", "-c", "SELECT count(*) FROM trips"]);
    assert_eq!(out.trim(), "3");
}

#[test]
fn a_table_whose_storage_is_gone_at_start_is_kept_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let mut p = SluiceProcess::start(&data);
    write_trips(&p, &lake.join("trips"));
    p.psql(&[
        "-c",
        &format!(
            "CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
            lake.join("trips").display()
        ),
    ]);
    p.kill9();
    // The storage disappears while the server is down.
    std::fs::rename(lake.join("trips"), lake.join("moved")).unwrap();
    let mut p = SluiceProcess::start(&data);
    let out = p.psql_output("sluice", &["-c", "SELECT count(*) FROM trips"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("could not be restored at start"),
        "stderr: {stderr}"
    );
    // Storage back: after a restart the table is queryable again; it was never forgotten.
    std::fs::rename(lake.join("moved"), lake.join("trips")).unwrap();
    p.kill9();
    let p = SluiceProcess::start(&data);
    assert_eq!(p.psql(&["-tA", "-c", "SELECT count(*) FROM trips"]).trim(), "3");
}

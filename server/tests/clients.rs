//! Postgres client libraries (psycopg 3, psycopg2, SQLAlchemy 2, pandas,
//! asyncpg) against the real binary, through a Python script that uses
//! them as their users do. The libraries come from
//! `scripts/infra/clients.sh`, which the test script runs.

mod common;

use common::{SluiceProcess, write_trips};

fn clients_python() -> String {
    std::env::var("SLUICE_TEST_CLIENTS_PYTHON").expect(
        "needs the Postgres client libraries: run ./scripts/test.sh, or eval \"$(scripts/infra/clients.sh)\"",
    )
}

#[test]
fn python_clients_connect_query_and_see_postgres_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("data"));
    let lake = dir.path().join("lake/trips");
    write_trips(&p, &lake);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_clients.py");
    let out = std::process::Command::new(clients_python())
        .arg(&script)
        .arg(p.port.to_string())
        .arg(&lake)
        .output()
        .expect("running the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("0 failed"), "{stdout}");
}

//! Postgres client libraries (psycopg 3, psycopg2, SQLAlchemy 2, pandas,
//! asyncpg; node-postgres, postgres.js; pgjdbc; Go's pgx and lib/pq) against the real binary, through scripts that use
//! them as their users do. The libraries come from
//! `scripts/infra/clients.sh`, which the test script runs.

mod common;

use common::{SluiceProcess, write_trips};

fn clients_python() -> String {
    std::env::var("SLUICE_TEST_CLIENTS_PYTHON").expect(
        "needs the Postgres client libraries: run ./scripts/test.sh, or eval \"$(scripts/infra/clients.sh)\"",
    )
}

/// Runs a client program (which prints a line per check and `0 failed`
/// when all passed) and fails the test with its output when any check did.
fn run_checks(what: &str, command: &mut std::process::Command) {
    let out = command.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("0 failed"), "{stdout}");
}

#[test]
fn python_clients_connect_query_and_see_postgres_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("data"));
    let lake = dir.path().join("lake/trips");
    write_trips(&p, &lake);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_clients.py");
    run_checks(
        "the Python clients",
        std::process::Command::new(clients_python())
            .arg(&script)
            .arg(p.port.to_string())
            .arg(&lake),
    );
}

#[test]
fn node_postgres_and_postgres_js_query_with_parameters_and_arrays() {
    let node_path = std::env::var("SLUICE_TEST_NODE_PATH").expect(
        "needs node-postgres and postgres.js: run ./scripts/test.sh, or eval \"$(scripts/infra/clients.sh)\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("data"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node_clients.js");
    run_checks(
        "node-postgres and postgres.js (node)",
        std::process::Command::new("node")
            .arg(&script)
            .arg(p.port.to_string())
            .env("NODE_PATH", node_path),
    );
}

#[test]
fn pgjdbc_connects_queries_and_reads_metadata() {
    let jar = std::env::var("SLUICE_TEST_PGJDBC_JAR")
        .expect("needs pgjdbc: run ./scripts/test.sh, or eval \"$(scripts/infra/clients.sh)\"");
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("data"));
    let table = dir.path().join("lake/jdbc");
    std::fs::create_dir_all(&table).unwrap();
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/JdbcClient.java");
    run_checks(
        "pgjdbc (java, from a JDK)",
        std::process::Command::new("java")
            .arg("-cp")
            .arg(&jar)
            .arg(&program)
            .arg(p.port.to_string())
            .arg(&table),
    );
}

#[test]
fn go_pgx_and_lib_pq_query_with_parameters_and_column_types() {
    let gopath = std::env::var("SLUICE_TEST_GOPATH").expect(
        "needs Go with pgx and lib/pq: run ./scripts/test.sh, or eval \"$(scripts/infra/clients.sh)\"",
    );
    let gocache = std::env::var("SLUICE_TEST_GOCACHE").expect("set by scripts/infra/clients.sh");
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("data"));
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/go_clients.go");
    let built = dir.path().join("go_clients");
    // GOPATH mode against Debian's packaged sources: nothing is downloaded.
    let build = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&built)
        .arg(&program)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", gocache)
        .output()
        .expect("running go (install golang-go)");
    assert!(
        build.status.success(),
        "building the Go client failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    run_checks(
        "the Go client",
        std::process::Command::new(&built).arg(p.port.to_string()),
    );
}

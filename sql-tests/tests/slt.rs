//! Runs every `.slt` file under `sql-tests/slt/` against a real Sluice server
//! through tokio-postgres, once in the simple and once in the extended query
//! protocol. Each (file, protocol) pair is one test, with its own server and
//! data directory, so nextest runs them in parallel.
//!
//! ```text
//! cargo nextest run -p sluice-sql-tests                      # all files
//! cargo nextest run -p sluice-sql-tests -- basic             # names containing "basic"
//! SLT_COMPLETE=1 cargo test -p sluice-sql-tests --test slt -- simple   # rewrite expected output
//! ```
//!
//! Files under `slt/s3/` need an S3-compatible server: `SLUICE_TEST_S3_ENDPOINT`
//! (the test script starts one and sets it). Without it they fail with a
//! message saying so; they are never silently skipped. Files under `slt/hdfs/`
//! likewise need `SLUICE_TEST_HDFS_URL` (hdfs://127.0.0.1:8020).

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Failed, Trial};
use sluice_sql_tests::{DbError, PgDb, Protocol, TestServer};

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "slt") {
            out.push(p);
        }
    }
}

fn run_one(file: &Path, rel: &str, protocol: Protocol) -> Result<(), Failed> {
    if rel.starts_with("s3/") && std::env::var("SLUICE_TEST_S3_ENDPOINT").is_err() {
        return Err("needs an S3 server: run ./scripts/test.sh, or set SLUICE_TEST_S3_ENDPOINT".into());
    }
    if rel.starts_with("hdfs/") && std::env::var("SLUICE_TEST_HDFS_URL").is_err() {
        return Err("needs HDFS: run ./scripts/test.sh, or set SLUICE_TEST_HDFS_URL".into());
    }
    let complete = std::env::var("SLT_COMPLETE").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    rt.block_on(async {
        let server = TestServer::start()
            .await
            .map_err(|e| Failed::from(format!("starting server: {e}")))?;
        let result = {
            let server = &server;
            let mut runner = sqllogictest::Runner::new(move || async move {
                PgDb::connect(server, protocol)
                    .await
                    .map_err(|e| DbError::from_message(e.to_string()))
            });
            runner.add_label(&protocol.to_string());
            if complete {
                runner
                    .update_test_file(
                        file,
                        " ",
                        sqllogictest::default_validator,
                        sqllogictest::default_normalizer,
                        sqllogictest::default_column_validator,
                    )
                    .await
                    .map_err(|e| Failed::from(e.to_string()))
            } else {
                runner
                    .run_file_async(file)
                    .await
                    .map_err(|e| Failed::from(e.display(true).to_string()))
            }
        };
        server.stop().await;
        result
    })
}

fn main() {
    let args = Arguments::from_args();
    // The runtime value (cargo and nextest set it) names the checkout being
    // tested; the compile-time one may name another checkout that shared the
    // build cache.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let root = Path::new(&manifest_dir).join("slt");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.sort();
    // Finding no files must fail loudly, never pass as zero tests.
    assert!(!files.is_empty(), "no .slt files under {}", root.display());
    let mut trials = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
        for protocol in [Protocol::Simple, Protocol::Extended] {
            let (file, rel) = (file.clone(), rel.clone());
            trials.push(Trial::test(format!("{rel}::{protocol}"), move || {
                run_one(&file, &rel, protocol)
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

//! psql as people use it, against the real binary.

mod common;

use common::{SluiceProcess, write_trips};

fn setup() -> (tempfile::TempDir, SluiceProcess) {
    let dir = tempfile::tempdir().unwrap();
    let p = SluiceProcess::start(&dir.path().join("data"));
    write_trips(&p, &dir.path().join("lake/trips"));
    p.psql(&[
        "-c",
        &format!(
            "CREATE EXTERNAL TABLE trips STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
            dir.path().join("lake/trips").display()
        ),
    ]);
    (dir, p)
}

#[test]
fn query_with_aligned_output() {
    let (_dir, p) = setup();
    let out = p.psql(&["-c", "SELECT dt, count(*) AS n, avg(fare) AS avg_fare FROM trips WHERE dt >= '2026-11-01' GROUP BY dt ORDER BY dt"]);
    let expected = concat!(
        "     dt     | n | avg_fare  \n",
        "------------+---+-----------\n",
        " 2026-11-01 | 2 | 15.250000\n",
        " 2026-11-02 | 1 |  7.250000\n",
        "(2 rows)\n",
        "\n",
    );
    assert_eq!(out, expected);
}

#[test]
fn dt_lists_tables() {
    let (_dir, p) = setup();
    let out = p.psql(&["-c", "\\dt"]);
    assert!(out.contains("trips"), "\\dt output:\n{out}");
    assert!(out.contains("public"), "\\dt output:\n{out}");
}

#[test]
fn d_lists_relations() {
    let (_dir, p) = setup();
    let out = p.psql(&["-c", "\\d"]);
    assert!(out.contains("List of relations"), "\\d output:\n{out}");
    assert!(out.contains("trips"), "\\d output:\n{out}");
}

#[test]
fn d_name_describes_columns() {
    let (_dir, p) = setup();
    let out = p.psql(&["-c", "\\d trips"]);
    for col in ["id", "fare", "dt"] {
        assert!(out.contains(col), "\\d trips lacks {col}:\n{out}");
    }
    assert!(out.contains("bigint"), "\\d trips lacks bigint:\n{out}");
}

/// The `+` forms, `\\df` and `\\db`: each lists what it lists, with the
/// columns psql prints (sizes Sluice does not know are empty).
#[test]
fn plus_forms_functions_and_tablespaces() {
    let (_dir, p) = setup();
    for (cmd, want) in [
        ("\\d+", "trips"),
        ("\\dt+", "trips"),
        ("\\l+", "sluice"),
        ("\\db", "pg_default"),
        ("\\df", "List of functions"),
        ("\\du", "List of roles"),
        // Access privileges: pg_namespace.nspacl is an array, as \dn+ reads it.
        ("\\dn+", "Access privileges"),
        // \dp nests one correlated ARRAY subquery in another.
        ("\\dp", "Column privileges"),
        // \sf: 'name'::regproc::oid looked up, pg_get_functiondef built from pg_catalog.
        (
            "\\sf format_type",
            "CREATE OR REPLACE FUNCTION pg_catalog.format_type(oid, integer)",
        ),
        ("\\sf format_type", " RETURNS text"),
    ] {
        let out = p.psql(&["-c", cmd]);
        assert!(out.contains(want), "{cmd} lacks {want}:\n{out}");
    }
    // A function there is none of: psql says so, as with Postgres, and
    // the lookup it runs fails with 42883.
    let out = p.psql_output("sluice", &["-c", "\\sf no_such_fn"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("function \"no_such_fn\" does not exist"), "{err}");
    let out = p.psql_output(
        "sluice",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "SELECT 'no_such_fn'::pg_catalog.regproc::pg_catalog.oid",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("42883"), "{err}");
    let out = p.psql(&["-c", "\\dt+"]);
    assert!(out.contains("Size") && out.contains("permanent"), "{out}");
    // \du lists the config file's user (a superuser) and a role made
    // with SQL.
    p.psql(&["-c", "CREATE ROLE reader LOGIN PASSWORD 'r'"]);
    let out = p.psql(&["-c", "\\du"]);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(str::to_string)
    };
    assert!(line("sluice").is_some_and(|l| l.contains("Superuser")), "{out}");
    assert!(line("reader").is_some_and(|l| !l.contains("Superuser")), "{out}");
    assert_eq!(
        p.psql(&[
            "-tA",
            "-c",
            "SELECT pg_size_pretty(10485759), pg_size_pretty(8192)"
        ])
        .trim(),
        "10 MB|8192 bytes"
    );
}

/// `\\dm` lists materialized views (and `\\dv` not them); `\\dT` runs
/// (its correlated subqueries run per row).
#[test]
fn dm_lists_materialized_views_and_dt_upper_runs() {
    let (_dir, p) = setup();
    p.psql(&[
        "-c",
        "CREATE STREAM nums (n BIGINT) WITH (connector = 'datagen', 'rows-per-second' = '10')",
        "-c",
        "CREATE MATERIALIZED VIEW totals AS SELECT n % 3 AS k, count(*) AS c FROM nums GROUP BY 1",
    ]);
    let out = p.psql(&["-c", "\\dm"]);
    assert!(
        out.lines()
            .any(|l| l.contains("totals") && l.contains("materialized view")),
        "\\dm output:\n{out}"
    );
    let out = p.psql(&["-c", "\\dv"]);
    assert!(!out.contains("totals"), "\\dv output:\n{out}");
    let out = p.psql(&["-c", "\\dT"]);
    assert!(out.contains("List of data types"), "\\dT output:\n{out}");
    // \d+ of a view: its columns with storage, and its query (read with
    // pg_get_viewdef); \d+ reads toast options through a lateral unnest
    // of an outer column, run per row.
    let out = p.psql(&["-c", "\\d+ totals"]);
    assert!(
        out.contains("Materialized view \"public.totals\""),
        "\\d+ totals:\n{out}"
    );
    assert!(out.contains("Storage"), "\\d+ totals:\n{out}");
    assert!(
        out.contains("View definition:") && out.contains("count(*) AS c FROM nums GROUP BY"),
        "\\d+ totals:\n{out}"
    );
    let out = p.psql(&["-c", "\\d+ nums"]);
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with('n') && l.contains("bigint")),
        "\\d+ nums:\n{out}"
    );
}

#[test]
fn l_dn_conninfo_and_settings() {
    let (_dir, p) = setup();
    let out = p.psql(&["-c", "\\l"]);
    assert!(out.contains("sluice"), "\\l output:\n{out}");
    let out = p.psql(&["-c", "\\dn"]);
    assert!(out.contains("public"), "\\dn output:\n{out}");
    let out = p.psql(&["-c", "\\conninfo"]);
    assert!(
        out.contains("database \"sluice\" as user \"sluice\""),
        "\\conninfo output:\n{out}"
    );
    let out = p.psql(&["-tA", "-c", "SHOW server_version"]);
    assert_eq!(out.trim(), "15.0");
    let out = p.psql(&["-tA", "-c", "SET search_path = public", "-c", "SHOW search_path"]);
    assert_eq!(out.trim(), "SET\npublic");
}

#[test]
fn an_error_does_not_end_the_session() {
    let (_dir, p) = setup();
    // Without ON_ERROR_STOP psql goes on after an error in the same session.
    let out = p.psql_output(
        "sluice",
        &["-c", "SELECT * FROM nope", "-c", "SELECT count(*) FROM trips"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope"), "stderr: {stderr}");
    assert_eq!(stdout.trim(), "3", "stdout: {stdout}\nstderr: {stderr}");
}

#[test]
fn wrong_password_is_refused() {
    let (_dir, p) = setup();
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p.port.to_string(),
            "-U",
            "sluice",
            "-X",
            "-c",
            "SELECT 1",
        ])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .to_ascii_lowercase()
            .contains("password authentication failed"),
        "stderr: {stderr}"
    );
}

/// psql's `\\copy ... from` a file in text and CSV, into a table over
/// Parquet files: the rows land (as new files) and read back; a bad row
/// writes nothing; a generator's stream is refused.
#[test]
fn backslash_copy_from_a_file_in_text_and_csv() {
    let (dir, p) = setup();
    let text = dir.path().join("more.tsv");
    std::fs::write(&text, "10\t3.50\t2026-12-01\n11\t4.25\t2026-12-01\n").unwrap();
    let out = p.psql(&["-c", &format!("\\copy trips from '{}'", text.display())]);
    assert_eq!(out.trim(), "COPY 2");
    let csv = dir.path().join("more.csv");
    std::fs::write(&csv, "id,dt,fare\n12,2026-12-02,\"5.00\"\n").unwrap();
    let out = p.psql(&[
        "-c",
        &format!(
            "\\copy trips (id, dt, fare) from '{}' with (format csv, header)",
            csv.display()
        ),
    ]);
    assert_eq!(out.trim(), "COPY 1");
    let out = p.psql(&[
        "-tA",
        "-c",
        "SELECT id, fare, dt FROM trips WHERE id >= 10 ORDER BY id",
    ]);
    assert_eq!(
        out,
        "10|3.50|2026-12-01\n11|4.25|2026-12-01\n12|5.00|2026-12-02\n"
    );
    // One bad value: 22P02, naming the column, and no row of it lands.
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "13\t1.00\t2026-12-03\n14\tabc\t2026-12-03\n").unwrap();
    let err = p.psql_output(
        "sluice",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            &format!("\\copy trips from '{}'", bad.display()),
        ],
    );
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("22P02") && stderr.contains("column fare"),
        "{stderr}"
    );
    let out = p.psql(&["-tA", "-c", "SELECT count(*) FROM trips WHERE id >= 13"]);
    assert_eq!(out.trim(), "0");
    // A generator's stream is written by its source.
    p.psql(&["-c", "CREATE STREAM nums (n BIGINT) WITH (connector = 'datagen')"]);
    let err = p.psql_output(
        "sluice",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            &format!("\\copy nums from '{}'", text.display()),
        ],
    );
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("0A000"), "{stderr}");
}

/// psql's `\\copy stream from` a file: a file stream takes the rows as new
/// files in its directory (its partition column choosing the folder), in
/// its format, and the jobs reading the stream see them.
#[test]
fn backslash_copy_into_a_file_stream_feeds_its_jobs() {
    let (dir, p) = setup();
    let input = dir.path().join("clicks");
    std::fs::create_dir_all(&input).unwrap();
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP, dt TEXT) WITH (connector = \
             'filesystem', path = '{}', format = 'json', partition_by = 'dt')",
            input.display()
        ),
        "-c",
        "CREATE MATERIALIZED VIEW per_page AS SELECT dt, page, count(*) AS n, max(ts) AS last FROM clicks GROUP BY dt, page",
    ]);
    let rows = dir.path().join("clicks.csv");
    std::fs::write(
        &rows,
        "user_id,page,ts,dt\n1,home,2026-12-01 10:00:00,2026-12-01\n2,home,2026-12-01 10:00:05,2026-12-01\n\
         3,cart,2026-12-02 09:00:00,2026-12-02\n",
    )
    .unwrap();
    let out = p.psql(&[
        "-c",
        &format!(
            "\\copy clicks from '{}' with (format csv, header)",
            rows.display()
        ),
    ]);
    assert_eq!(out.trim(), "COPY 3");
    let mut folders: Vec<String> = std::fs::read_dir(&input)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(folders, ["dt=2026-12-01", "dt=2026-12-02"]);
    let want = "2026-12-01|home|2|2026-12-01 10:00:05\n2026-12-02|cart|1|2026-12-02 09:00:00\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = p.psql(&[
            "-tA",
            "-c",
            "SELECT dt, page, n, last FROM per_page ORDER BY dt, page",
        ]);
        if out == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per_page never showed the copied rows: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A bad row: nothing of the COPY lands.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "user_id,page,ts,dt\n4,home,2026-12-01 11:00:00,2026-12-01\nfive,home,x,2026-12-01\n",
    )
    .unwrap();
    let err = p.psql_output(
        "sluice",
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            &format!("\\copy clicks from '{}' with (format csv, header)", bad.display()),
        ],
    );
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("22P02"), "{stderr}");
    let files: usize = std::fs::read_dir(input.join("dt=2026-12-01")).unwrap().count();
    assert_eq!(files, 1);
}

/// psql's `\\copy stream from` a file into a Kafka stream: one record per
/// row, produced in one transaction, which the stream's jobs read; a COPY
/// with a bad row produces nothing.
#[test]
fn backslash_copy_into_a_kafka_stream_produces_its_records() {
    let (dir, p) = setup();
    let topic = format!("copy_in_{}", std::process::id());
    common::create_topic(&topic, 2);
    p.psql(&[
        "-c",
        &format!(
            "CREATE STREAM visits (user_id BIGINT, page TEXT, ts TIMESTAMP) WITH (connector = 'kafka', \
             topic = '{topic}', format = 'json', 'properties.bootstrap.servers' = '{}', \
             'scan.startup.mode' = 'earliest-offset')",
            common::brokers()
        ),
        "-c",
        "CREATE MATERIALIZED VIEW per_visit_page AS SELECT page, count(*) AS n, max(ts) AS last FROM visits GROUP BY page",
    ]);
    let good = dir.path().join("visits.csv");
    std::fs::write(
        &good,
        "user_id,page,ts\n1,home,2026-12-01 10:00:00\n2,cart,2026-12-01 10:00:05\n3,home,2026-12-01 10:00:09\n",
    )
    .unwrap();
    let copy = |file: &std::path::Path| {
        format!(
            "\\copy visits from '{}' with (format csv, header)",
            file.display()
        )
    };
    assert_eq!(p.psql(&["-c", &copy(&good)]).trim(), "COPY 3");
    // A bad row: the good row before it is not produced either.
    let bad = dir.path().join("bad_visits.csv");
    std::fs::write(&bad, "user_id,page,ts\n4,home,2026-12-01 11:00:00\nfive,home,x\n").unwrap();
    let err = p.psql_output("sluice", &["-v", "VERBOSITY=verbose", "-c", &copy(&bad)]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("22P02"));
    let more = dir.path().join("more_visits.csv");
    std::fs::write(&more, "user_id,page,ts\n5,cart,2026-12-01 12:00:00\n").unwrap();
    assert_eq!(p.psql(&["-c", &copy(&more)]).trim(), "COPY 1");
    let want = "cart|2|2026-12-01 12:00:00\nhome|2|2026-12-01 10:00:09\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = p.psql(&[
            "-tA",
            "-c",
            "SELECT page, n, last FROM per_visit_page ORDER BY page",
        ]);
        if out == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per_visit_page never showed the copied records: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn copy_to_stdout_in_text_and_csv_and_backslash_copy_to_a_file() {
    let (dir, p) = setup();
    // Text format: tabs, \N for NULL, backslash escapes.
    let out = p.psql(&[
        "-c",
        "COPY (SELECT id, dt, NULL AS nothing, 'a\tb' AS tab FROM trips ORDER BY id) TO STDOUT",
    ]);
    assert_eq!(
        out,
        "1\t2026-11-01\t\\N\ta\\tb\n2\t2026-11-01\t\\N\ta\\tb\n3\t2026-11-02\t\\N\ta\\tb\n"
    );
    // A table, as CSV with a header; quoting where a value needs it.
    let out = p.psql(&[
        "-c",
        "COPY (SELECT id, count(*), 'x,\"y\"' AS q, '' AS empty FROM trips WHERE id < 3 GROUP BY id ORDER BY id) \
         TO STDOUT WITH (FORMAT csv, HEADER)",
    ]);
    assert_eq!(
        out,
        "id,count,q,empty\n1,1,\"x,\"\"y\"\"\",\"\"\n2,1,\"x,\"\"y\"\"\",\"\"\n"
    );
    let out = p.psql(&["-c", "COPY trips TO STDOUT WITH CSV"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    // psql's \copy writes the rows to a file on the client side.
    let file = dir.path().join("fares.csv");
    let out = p.psql(&[
        "-c",
        &format!(
            "\\copy (SELECT id, fare FROM trips ORDER BY id) to '{}' with (format csv, header)",
            file.display()
        ),
    ]);
    assert_eq!(out.trim(), "COPY 3");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "id,fare\n1,10.50\n2,20.00\n3,7.25\n"
    );
    // Bad options are refused and the session goes on.
    let err = p.psql_output("sluice", &["-c", "COPY trips TO STDOUT WITH (FORMAT binary)"]);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("COPY format binary"), "{stderr}");
}

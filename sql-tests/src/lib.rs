//! Test support for Sluice's end-to-end SQL tests.
//!
//! [`TestServer`] starts the real server in-process on `127.0.0.1:0` with a
//! fresh data directory, or points at an external server when
//! `SLUICE_TEST_ADDR` (host:port) is set. [`PgDb`] runs SQL through
//! tokio-postgres in either the simple or the extended query protocol and
//! renders every value as Postgres's text format would, so one expected
//! output checks both protocols (and both of the server's encoders).

use std::sync::Arc;

use sluice_server::{Config, Server};
use tokio::sync::oneshot;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A running server for tests.
pub struct TestServer {
    /// `host:port` to connect to.
    pub addr: String,
    _data_dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts an in-process server, or uses `SLUICE_TEST_ADDR` if set.
    pub async fn start() -> anyhow::Result<Self> {
        if let Ok(addr) = std::env::var("SLUICE_TEST_ADDR") {
            return Ok(Self {
                addr,
                _data_dir: None,
                stop: None,
                task: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            // The test files' own directories ($__TEST_DIR__) are temporary.
            file_roots: vec![std::env::temp_dir()],
            ..Config::default()
        };
        if let Ok(endpoint) = std::env::var("SLUICE_TEST_S3_ENDPOINT") {
            config.s3.endpoint = Some(endpoint);
            config.s3.access_key_id =
                Some(std::env::var("SLUICE_TEST_S3_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()));
            config.s3.secret_access_key = Some(
                std::env::var("SLUICE_TEST_S3_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testtesttest".into()),
            );
        }
        let server: Arc<Server> = Server::open(&config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = sluice_server::run(listener, server, async {
                let _ = rx.await;
            })
            .await
            {
                eprintln!("test server stopped with an error: {e}");
            }
        });
        Ok(Self {
            addr,
            _data_dir: Some(dir),
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// A libpq-style connection string for this server.
    pub fn conn_string(&self) -> String {
        let (host, port) = self.addr.rsplit_once(':').unwrap_or((&self.addr, "6866"));
        format!("host={host} port={port} user=sluice password=sluice dbname=sluice")
    }

    /// Connects a tokio-postgres client.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.conn_string(), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Stops an in-process server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Which query protocol a [`PgDb`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Extended,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        })
    }
}

/// A client connection that runs sqllogictest records.
pub struct PgDb {
    client: Client,
    protocol: Protocol,
}

/// An error from the server, with its SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    message: String,
    sqlstate: Option<String>,
}

impl DbError {
    /// An error with no SQLSTATE (connection failures and the like).
    pub fn from_message(message: String) -> Self {
        Self {
            message,
            sqlstate: None,
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => DbError {
                message: db.message().to_string(),
                sqlstate: Some(db.code().code().to_string()),
            },
            None => DbError {
                message: e.to_string(),
                sqlstate: None,
            },
        }
    }
}

impl PgDb {
    pub async fn connect(server: &TestServer, protocol: Protocol) -> anyhow::Result<Self> {
        Ok(Self {
            client: server.connect().await?,
            protocol,
        })
    }

    async fn run_simple(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<sqllogictest::DefaultColumnType>, DbError> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut saw_rows = false;
        let mut count = 0;
        let mut width = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    saw_rows = true;
                    width = cols.len();
                }
                SimpleQueryMessage::Row(row) => {
                    saw_rows = true;
                    width = row.len();
                    rows.push((0..row.len()).map(|i| render_text(row.get(i))).collect());
                }
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        if saw_rows {
            Ok(sqllogictest::DBOutput::Rows {
                types: vec![sqllogictest::DefaultColumnType::Any; width],
                rows,
            })
        } else {
            Ok(sqllogictest::DBOutput::StatementComplete(count))
        }
    }

    async fn run_extended(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<sqllogictest::DefaultColumnType>, DbError> {
        let stmt = self.client.prepare(sql).await?;
        if stmt.columns().is_empty() {
            let n = self.client.execute(&stmt, &[]).await?;
            return Ok(sqllogictest::DBOutput::StatementComplete(n));
        }
        let rows = self.client.query(&stmt, &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut r = Vec::with_capacity(row.len());
            for (i, col) in row.columns().iter().enumerate() {
                r.push(render_binary(row, i, col.type_()).map_err(|e| DbError {
                    message: format!("decoding column {}: {e}", col.name()),
                    sqlstate: None,
                })?);
            }
            out.push(r);
        }
        Ok(sqllogictest::DBOutput::Rows {
            types: vec![sqllogictest::DefaultColumnType::Any; stmt.columns().len()],
            rows: out,
        })
    }
}

fn render_text(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(s) => s.to_string(),
    }
}

/// Renders a binary-format value as Postgres's text output would show it.
fn render_binary(row: &tokio_postgres::Row, i: usize, ty: &Type) -> Result<String, tokio_postgres::Error> {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into())
    }
    Ok(match *ty {
        Type::BOOL => match row.try_get::<_, Option<bool>>(i)? {
            None => "NULL".into(),
            Some(true) => "t".into(),
            Some(false) => "f".into(),
        },
        Type::INT2 => opt(row.try_get::<_, Option<i16>>(i)?),
        Type::INT4 => opt(row.try_get::<_, Option<i32>>(i)?),
        Type::INT8 => opt(row.try_get::<_, Option<i64>>(i)?),
        Type::CHAR => opt(row.try_get::<_, Option<i8>>(i)?),
        Type::OID => opt(row.try_get::<_, Option<u32>>(i)?),
        Type::FLOAT4 => opt(row.try_get::<_, Option<f32>>(i)?.map(pg_float)),
        Type::FLOAT8 => opt(row.try_get::<_, Option<f64>>(i)?.map(pg_float)),
        Type::NUMERIC => opt(row.try_get::<_, Option<rust_decimal::Decimal>>(i)?),
        Type::DATE => opt(row.try_get::<_, Option<chrono::NaiveDate>>(i)?),
        Type::TIME => opt(row.try_get::<_, Option<chrono::NaiveTime>>(i)?),
        Type::TIMESTAMP => opt(row
            .try_get::<_, Option<chrono::NaiveDateTime>>(i)?
            .map(pg_timestamp)),
        Type::TIMESTAMPTZ => opt(row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
            .map(|t| format!("{}+00", pg_timestamp(t.naive_utc())))),
        Type::INTERVAL => opt(row.try_get::<_, Option<PgInterval>>(i)?),
        Type::JSON | Type::JSONB => opt(row.try_get::<_, Option<serde_json::Value>>(i)?),
        Type::UUID => opt(row.try_get::<_, Option<uuid::Uuid>>(i)?),
        Type::BYTEA => opt(row.try_get::<_, Option<Vec<u8>>>(i)?.map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("\\x{hex}")
        })),
        Type::INT8_ARRAY | Type::INT4_ARRAY | Type::OID_ARRAY | Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => {
            opt(row.try_get::<_, Option<PgArray>>(i)?.map(|a| a.0))
        }
        _ => match row.try_get::<_, Option<String>>(i)? {
            None => "NULL".into(),
            Some(s) if s.is_empty() => "(empty)".into(),
            Some(s) => s,
        },
    })
}

/// Postgres prints fractional seconds with trailing zeros trimmed.
fn pg_timestamp(t: chrono::NaiveDateTime) -> String {
    let base = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = t.and_utc().timestamp_subsec_micros();
    if micros == 0 {
        base
    } else {
        format!("{base}.{}", format!("{micros:06}").trim_end_matches('0'))
    }
}

/// A binary-format INTERVAL (microseconds, days, months), printed in
/// Postgres's default `postgres` IntervalStyle.
struct PgInterval {
    micros: i64,
    days: i32,
    months: i32,
}

impl<'a> tokio_postgres::types::FromSql<'a> for PgInterval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if raw.len() != 16 {
            return Err("interval: expected 16 bytes".into());
        }
        Ok(PgInterval {
            micros: i64::from_be_bytes(raw[0..8].try_into()?),
            days: i32::from_be_bytes(raw[8..12].try_into()?),
            months: i32::from_be_bytes(raw[12..16].try_into()?),
        })
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

impl std::fmt::Display for PgInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n.abs() == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        let (years, months) = (self.months / 12, self.months % 12);
        if years != 0 {
            parts.push(plural(years.into(), "year"));
        }
        if months != 0 {
            parts.push(plural(months.into(), "mon"));
        }
        if self.days != 0 {
            parts.push(plural(self.days.into(), "day"));
        }
        if self.micros != 0 || parts.is_empty() {
            let sign = if self.micros < 0 { "-" } else { "" };
            let m = self.micros.unsigned_abs();
            let (h, rem) = (m / 3_600_000_000, m % 3_600_000_000);
            let (min, rem) = (rem / 60_000_000, rem % 60_000_000);
            let (sec, frac) = (rem / 1_000_000, rem % 1_000_000);
            let mut t = format!("{sign}{h:02}:{min:02}:{sec:02}");
            if frac != 0 {
                t.push_str(&format!(".{}", format!("{frac:06}").trim_end_matches('0')));
            }
            parts.push(t);
        }
        f.write_str(&parts.join(" "))
    }
}

/// A float printed at its own width (a float4 widened to f64 would print
/// its binary expansion), with Postgres's spelling of the special values.
fn pg_float<F: Into<f64> + ToString + Copy>(f: F) -> String {
    let wide: f64 = f.into();
    if wide.is_nan() {
        "NaN".into()
    } else if wide.is_infinite() {
        if wide > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        f.to_string()
    }
}

/// A binary-format array of int4, int8, oid or text, of any number of
/// dimensions, read from Postgres's binary array format and printed in its
/// text form (`{{1,2},{3,NULL}}`; text elements quoted as Postgres quotes
/// them).
struct PgArray(String);

impl<'a> tokio_postgres::types::FromSql<'a> for PgArray {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        type Error = Box<dyn std::error::Error + Sync + Send>;
        fn take<'b>(rest: &mut &'b [u8], n: usize) -> Result<&'b [u8], Error> {
            if rest.len() < n {
                return Err("array: too short".into());
            }
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            Ok(head)
        }
        fn word(rest: &mut &[u8]) -> Result<i32, Error> {
            Ok(i32::from_be_bytes(take(rest, 4)?.try_into()?))
        }
        let mut rest = raw;
        let ndim = word(&mut rest)?;
        let _has_null = word(&mut rest)?;
        let element = word(&mut rest)? as u32;
        let mut dims = vec![];
        for _ in 0..ndim {
            dims.push(word(&mut rest)? as usize);
            let _lower = word(&mut rest)?;
        }
        let mut items = vec![];
        for _ in 0..dims.iter().product::<usize>() * usize::from(ndim > 0) {
            let len = word(&mut rest)?;
            if len < 0 {
                items.push("NULL".to_string());
                continue;
            }
            let bytes = take(&mut rest, len as usize)?;
            items.push(match element {
                20 => i64::from_be_bytes(bytes.try_into()?).to_string(),
                23 => i32::from_be_bytes(bytes.try_into()?).to_string(),
                26 => u32::from_be_bytes(bytes.try_into()?).to_string(),
                _ => {
                    let t = std::str::from_utf8(bytes)?;
                    let plain = !t.is_empty()
                        && !t.eq_ignore_ascii_case("null")
                        && !t.chars().any(|c| "{},\"\\".contains(c) || c.is_whitespace());
                    if plain {
                        t.to_string()
                    } else {
                        format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""))
                    }
                }
            });
        }
        fn nest(dims: &[usize], items: &mut std::vec::IntoIter<String>) -> String {
            let inner: Vec<String> = (0..dims.first().copied().unwrap_or(0))
                .map(|_| match dims.len() {
                    1 => items.next().unwrap_or_default(),
                    _ => nest(&dims[1..], items),
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Ok(PgArray(nest(&dims, &mut items.into_iter())))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8_ARRAY | Type::INT4_ARRAY | Type::OID_ARRAY | Type::TEXT_ARRAY | Type::VARCHAR_ARRAY
        )
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for PgDb {
    type Error = DbError;
    type ColumnType = sqllogictest::DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<sqllogictest::DBOutput<Self::ColumnType>, Self::Error> {
        match self.protocol {
            Protocol::Simple => self.run_simple(sql).await,
            Protocol::Extended => self.run_extended(sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        match self.protocol {
            Protocol::Simple => "sluice-simple",
            Protocol::Extended => "sluice-extended",
        }
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }

    fn error_sql_state(err: &Self::Error) -> Option<String> {
        err.sqlstate.clone()
    }
}

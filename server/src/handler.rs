//! One client connection: pgwire's simple and extended query protocols over
//! an engine [`Session`].

use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use arrow_pg::datatypes::into_pg_type;
use sluice_engine::datafusion::common::ScalarValue;

use crate::pgtypes::{pg_fields, wire_batch};
use crate::rows::encode_batch;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::SinkExt;
use futures::{FutureExt, Sink, Stream, StreamExt};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_describe_response, send_execution_response,
    send_query_response, send_ready_for_query,
};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::data::DataRow;
use pgwire::messages::data::RowDescription;
use pgwire::messages::extendedquery::{Bind, BindComplete, Describe, Execute, TARGET_TYPE_BYTE_PORTAL};
use pgwire::messages::simplequery::Query;
use sluice_engine::datafusion::arrow::datatypes::DataType;
use sluice_engine::datafusion::sql::parser::Statement as DFStatement;
use sluice_engine::datafusion::sql::sqlparser::ast;
use sluice_engine::parser::CopyOptions;
use sluice_engine::{ErrorKind, Output, Prepared, Session, SluiceError, Statement};
use tokio::sync::Mutex;

use crate::errors::{panic_error, pg_error, to_pg};

/// Parses client SQL: DataFusion's parser for Sluice's and DataFusion's own
/// statements (`CREATE EXTERNAL TABLE`, ...), and datafusion-pg-catalog's
/// compatibility parser, which rewrites what Postgres clients such as psql
/// send (`::regclass`, `OPERATOR(pg_catalog.~)`, ...) into SQL DataFusion
/// plans.
#[derive(Debug, Default)]
pub struct SqlParser {
    compat: PostgresCompatibilityParser,
}

/// Client queries datafusion-pg-catalog answers with a fixed stand-in
/// that Sluice plans for real, found by a fragment of their text
/// (whitespace and case ignored). Grafana's search-path check became `''`
/// there: every table was listed schema-qualified, and its column picker
/// found no column of an unqualified table.
const PLANNED_FOR_REAL: &[&str] =
    &["generate_series(array_lower(string_to_array(current_setting('search_path'),','),1)"];

fn planned_for_real(sql: &str) -> bool {
    let squeezed: String = sql
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    PLANNED_FOR_REAL.iter().any(|f| squeezed.contains(f))
}

impl SqlParser {
    /// The compatibility parser's rewrite rules, except that subqueries in
    /// select lists are left alone (it would replace correlated ones with
    /// NULL and add `LIMIT 1` to the rest) and array literals are read
    /// first (it would keep their quotes).
    fn compat_rewrite(&self, mut s: ast::Statement) -> ast::Statement {
        sluice_engine::parser::function_lookups(&mut s);
        sluice_engine::parser::hide_select_list_subqueries(&mut s);
        sluice_engine::parser::read_array_literals(&mut s);
        sluice_engine::parser::keep_regproc_names(&mut s);
        sluice_engine::parser::hide_current_user(&mut s, true);
        let mut s = self.compat.rewrite(s);
        sluice_engine::parser::hide_current_user(&mut s, false);
        sluice_engine::parser::restore_select_list_subqueries(&mut s);
        sluice_engine::pgrelations::postgres_relations(&mut s);
        s
    }

    /// Whether the compatibility parser's `parsed` differs from its rewrite
    /// of Sluice's `own` parse of the same text: it then replaced a known
    /// client query by its token-level table.
    fn replaced_whole(&self, parsed: &[ast::Statement], own: &[Statement]) -> bool {
        parsed.len() != own.len()
            || parsed.iter().zip(own).any(|(p, o)| match o {
                Statement::DataFusion(DFStatement::Statement(o)) => {
                    *p != self.compat.rewrite(o.as_ref().clone())
                }
                _ => true,
            })
    }

    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>, SluiceError> {
        // Both parsers may build (and throw away) trees as deep as the
        // text allows: see `on_deep_stack`.
        sluice_engine::parser::on_deep_stack(sql.len(), || self.parse_on_this_stack(sql))
    }

    fn parse_on_this_stack(&self, sql: &str) -> Result<Vec<Statement>, SluiceError> {
        let mut statements = self.parse_statements(sql)?;
        for s in &statements {
            sluice_engine::parser::check_nesting(s)?;
        }
        // `::json`, `::jsonb`, `::uuid` (also in what the compatibility
        // parser returned).
        for s in statements.iter_mut() {
            sluice_engine::parser::rewrite_pg_types(s)?;
        }
        Ok(statements)
    }

    fn parse_statements(&self, sql: &str) -> Result<Vec<Statement>, SluiceError> {
        let plain = |s: ast::Statement| Statement::DataFusion(DFStatement::Statement(Box::new(s)));
        let rewrite = |s: Statement| match s {
            Statement::DataFusion(DFStatement::Statement(inner)) => plain(self.compat_rewrite(*inner)),
            other => other,
        };
        let is_plain = |s: &Statement| matches!(s, Statement::DataFusion(DFStatement::Statement(_)));
        match Session::parse(sql) {
            Ok(statements) if statements.iter().all(is_plain) => {
                // Plain SQL: the compatibility parser also replaces known
                // client queries whole. Where it did not, its rewrite of
                // Sluice's own parse is used, keeping select-list
                // subqueries (see `compat_rewrite`).
                match self.compat.parse(sql) {
                    Ok(v) if !self.replaced_whole(&v, &statements) || planned_for_real(sql) => {
                        Ok(statements.into_iter().map(rewrite).collect())
                    }
                    // Its table (or a difference Sluice's own rewrites
                    // made, such as `ARRAY(subquery)`): FROM still reads as
                    // Postgres reads it.
                    Ok(v) => Ok(v
                        .into_iter()
                        .map(|mut s| {
                            sluice_engine::pgrelations::postgres_relations(&mut s);
                            plain(s)
                        })
                        .collect()),
                    Err(_) => Ok(statements.into_iter().map(rewrite).collect()),
                }
            }
            Ok(statements) => Ok(statements.into_iter().map(rewrite).collect()),
            // Too long or too deep: no second parser gets to walk it.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ProgramLimitExceeded | ErrorKind::StatementTooComplex
                ) =>
            {
                Err(e)
            }
            // Sluice's parser refused it; the compatibility parser's token
            // rewrites may still make a client's query parse. Never for
            // CREATE: a malformed CREATE EXTERNAL TABLE would otherwise come
            // back as a Hive-style CREATE TABLE with a misleading error; nor
            // for COPY, which Sluice's parser reads whole (its refusal names
            // the option at fault).
            Err(e) => match self.compat.parse(sql) {
                Ok(v)
                    if !v.iter().any(|s| {
                        matches!(s, ast::Statement::CreateTable(_) | ast::Statement::Copy { .. })
                    }) =>
                {
                    Ok(v.into_iter().map(plain).collect())
                }
                _ => Err(e),
            },
        }
    }
}

/// A statement parsed for the extended protocol.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    prepared: Prepared,
    /// Parameters cast to `oid` / `oid[]` (`$1::oid[]`): described as those
    /// types, not as the integers they are in the plan (see
    /// [`oid_parameters`]).
    oid_params: Vec<(usize, Type)>,
}

/// The parameters `sql` casts to `oid` or `oid[]` (`$n::oid`,
/// `$n::pg_catalog.oid[]`), 0-based, with that type. asyncpg has codecs of
/// its own for `oid[]` and `text[]` only and learns every other array type
/// with a query taking `$1::oid[]`: described as `int4[]`, that parameter
/// would need the same query to learn its type, without end.
fn oid_parameters(sql: &str) -> Vec<(usize, Type)> {
    use sluice_engine::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use sluice_engine::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return vec![];
    };
    let tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let word =
        |t: Option<&Token>, w: &str| matches!(t, Some(Token::Word(x)) if x.value.eq_ignore_ascii_case(w));
    let mut out = vec![];
    for (i, t) in tokens.iter().enumerate() {
        let Token::Placeholder(p) = t else { continue };
        let Some(n) = p
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
        else {
            continue;
        };
        if tokens.get(i + 1) != Some(&Token::DoubleColon) {
            continue;
        }
        let mut k = i + 2;
        if word(tokens.get(k), "pg_catalog") && tokens.get(k + 1) == Some(&Token::Period) {
            k += 2;
        }
        if !word(tokens.get(k), "oid") {
            continue;
        }
        let array =
            tokens.get(k + 1) == Some(&Token::LBracket) && tokens.get(k + 2) == Some(&Token::RBracket);
        out.push((n - 1, if array { Type::OID_ARRAY } else { Type::OID }));
    }
    out
}

/// Dates and timestamps: array parameters of these are read by Sluice.
fn is_temporal(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Timestamp(..))
}

/// A `date[]` or `timestamp[]` / `timestamptz[]` parameter's value, from its
/// text (`{2026-01-02,NULL}`) or binary array form (days or microseconds
/// since 2000-01-01), as a list of `item`.
fn temporal_array_parameter(raw: Option<&[u8]>, binary: bool, item: &DataType) -> PgWireResult<ScalarValue> {
    let bad = || {
        pg_error(
            ErrorKind::InvalidTextRepresentation,
            format!(
                "an array parameter that is not an array of {}",
                sluice_engine::functions::postgres_type_name(item)
            ),
        )
    };
    let Some(raw) = raw else {
        return Ok(ScalarValue::new_null_list(item.clone(), true, 1));
    };
    // 2000-01-01, Postgres's epoch, in days and microseconds since 1970.
    const DAYS: i64 = 10_957;
    const MICROS: i64 = DAYS * 86_400_000_000;
    let mut items: Vec<ScalarValue> = vec![];
    if binary {
        for element in binary_array_elements(raw).ok_or_else(bad)? {
            let Some(bytes) = element else {
                items.push(
                    ScalarValue::try_from(item).map_err(|e| pg_error(ErrorKind::Internal, e.to_string()))?,
                );
                continue;
            };
            let value = match (item, bytes.len()) {
                (DataType::Date32, 4) => {
                    let days = i32::from_be_bytes(bytes.try_into().expect("4 bytes")) as i64 + DAYS;
                    ScalarValue::Date32(Some(i32::try_from(days).map_err(|_| bad())?))
                }
                (DataType::Timestamp(_, tz), 8) => {
                    let micros = i64::from_be_bytes(bytes.try_into().expect("8 bytes"));
                    let micros = micros.checked_add(MICROS).ok_or_else(bad)?;
                    ScalarValue::TimestampMicrosecond(Some(micros), tz.clone())
                }
                _ => return Err(bad()),
            };
            items.push(value);
        }
    } else {
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        for element in crate::pgtypes::parse_text_array(text).ok_or_else(bad)? {
            items.push(ScalarValue::Utf8(element.map(|e| e.trim().to_string())));
        }
    }
    let items = items
        .into_iter()
        .map(|v| v.cast_to(item).map_err(|_| bad()))
        .collect::<PgWireResult<Vec<_>>>()?;
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(&items, item)))
}

/// The elements of a one-dimensional array in Postgres's binary format
/// (dimensions, flags, element type, each dimension's length and lower
/// bound, then each element's length and bytes; None for NULL), or None
/// when it is not one.
fn binary_array_elements(raw: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let word = |at: usize| -> Option<i32> { Some(i32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?)) };
    let ndim = word(0)?;
    if !(0..=1).contains(&ndim) {
        return None;
    }
    let count = if ndim == 1 { word(12)?.max(0) as usize } else { 0 };
    let mut at = 12 + 8 * ndim as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = word(at)?;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        out.push(Some(raw.get(at..at + len as usize)?));
        at += len as usize;
    }
    Some(out)
}

/// An `oid[]` parameter's value, from its text (`{1,2}`) or binary array
/// form, as the list of Int32 the plan reads.
fn oid_array_parameter(raw: Option<&[u8]>, binary: bool) -> PgWireResult<ScalarValue> {
    let bad = || {
        pg_error(
            ErrorKind::InvalidParameter,
            "an oid[] parameter that is not an array of oids",
        )
    };
    let Some(raw) = raw else {
        return Ok(ScalarValue::new_null_list(DataType::Int32, true, 1));
    };
    let mut items: Vec<ScalarValue> = vec![];
    if binary {
        for element in binary_array_elements(raw).ok_or_else(bad)? {
            // oid elements are 4 bytes; a client that sent an int2[] or
            // int8[] for it has 2 or 8.
            let bytes = match element {
                None => {
                    items.push(ScalarValue::Int32(None));
                    continue;
                }
                Some(b) if matches!(b.len(), 2 | 4 | 8) => b,
                Some(_) => return Err(bad()),
            };
            let value = bytes
                .iter()
                .fold(if bytes[0] & 0x80 != 0 { -1i64 } else { 0 }, |v, b| {
                    (v << 8) | *b as i64
                });
            items.push(ScalarValue::Int32(Some(
                u32::try_from(value).map_err(|_| bad())? as i32
            )));
        }
    } else {
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        for item in crate::pgtypes::parse_text_array(text).ok_or_else(bad)? {
            items.push(ScalarValue::Int32(match item {
                Some(v) => Some(v.trim().parse::<u32>().map_err(|_| bad())? as i32),
                None => None,
            }));
        }
    }
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &items,
        &DataType::Int32,
    )))
}

/// The per-connection query handler.
pub struct ConnectionHandler {
    session: Arc<Mutex<Session>>,
    parser: Arc<StatementParser>,
    /// The `COPY ... FROM STDIN` whose data the client is sending.
    copy_in: std::sync::Mutex<Option<PendingCopy>>,
}

/// A `COPY ... FROM STDIN` in progress: where it writes and what came so
/// far. Nothing is written before the client's CopyDone.
struct PendingCopy {
    target: sluice_engine::copy::CopyInTarget,
    data: BytesMut,
    /// Set when the data passed [`COPY_IN_LIMIT`]; the rest is dropped.
    too_large: bool,
}

/// The most a `COPY ... FROM STDIN` may send: it is held in memory until
/// the end, so that a bad row writes nothing.
const COPY_IN_LIMIT: usize = 1 << 30;

impl ConnectionHandler {
    pub fn new(session: Session, sql_parser: Arc<SqlParser>) -> Self {
        let engine = session.engine().clone();
        let session = Arc::new(Mutex::new(session));
        Self {
            parser: Arc::new(StatementParser {
                session: session.clone(),
                sql_parser,
                engine,
            }),
            session,
            copy_in: Default::default(),
        }
    }

    /// Runs one prepared statement on the engine's runtime (see
    /// `sluice_engine::compute`), within `deadline`; a panic becomes XX000.
    async fn run(
        &self,
        prepared: &Prepared,
        params: Option<sluice_engine::datafusion::common::ParamValues>,
        format: &Format,
        cancel: Option<Arc<ConnectionHandle>>,
        deadline: Option<tokio::time::Instant>,
    ) -> PgWireResult<Response> {
        crate::metrics::METRICS.statements.inc();
        let session = self.session.clone();
        let prepared = prepared.clone();
        let work = self.parser.engine.spawn(async move {
            let mut session = session.lock().await;
            let output = session.execute(&prepared, params).await?;
            // Rows are computed here too, not where they are sent.
            Ok::<_, SluiceError>(match output {
                Output::Rows(stream) => Output::Rows(sluice_engine::compute::forward(stream)),
                other => other,
            })
        });
        let output = joined(within(deadline, work).await?)?.map_err(to_pg)?;
        if let Output::CopyIn(target) = output {
            let columns = target.columns.len();
            *self.copy_in.lock().expect("copy state") = Some(PendingCopy {
                target,
                data: BytesMut::new(),
                too_large: false,
            });
            // Text (0) for both COPY formats, as Postgres answers.
            return Ok(Response::CopyIn(CopyResponse::new(
                0,
                columns,
                futures::stream::empty(),
            )));
        }
        output_to_response(output, format, cancel, deadline)
    }

    /// Reads and writes what a `COPY ... FROM STDIN` received, on the
    /// engine's runtime; the row count.
    async fn finish_copy(&self, pending: PendingCopy) -> PgWireResult<usize> {
        if pending.too_large {
            return Err(pg_error(
                ErrorKind::ProgramLimitExceeded,
                format!(
                    "COPY FROM STDIN sent more than {} MiB; split the data into several COPYs",
                    COPY_IN_LIMIT >> 20
                ),
            ));
        }
        let session = self.session.clone();
        let work = self.parser.engine.spawn(async move {
            let batches = pending.target.read(&pending.data)?;
            let session = session.lock().await;
            session.copy_in(&pending.target, batches).await
        });
        joined(work.await)?.map_err(to_pg)
    }

    /// Plans one statement (on the engine's runtime, within `deadline`).
    async fn prepare(
        &self,
        statement: Statement,
        deadline: Option<tokio::time::Instant>,
    ) -> PgWireResult<Prepared> {
        self.parser.prepare(statement, deadline).await
    }

    /// Tells the session who logged in.
    pub async fn set_user(&self, user: &str, superuser: bool, params: &[(String, String)]) {
        let mut session = self.session.lock().await;
        session.set_user(user, superuser);
        session.apply_startup_parameters(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }

    /// When a statement starting now must be done by (`statement_timeout`).
    async fn deadline(&self) -> Option<tokio::time::Instant> {
        let timeout = self.session.lock().await.statement_timeout()?;
        Some(tokio::time::Instant::now() + timeout)
    }
}

/// Awaits `work` until `deadline`; past it, the work is dropped (aborted)
/// and the statement fails with 57014.
async fn within<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    work: F,
) -> PgWireResult<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, work)
            .await
            .map_err(|_| statement_timeout_error()),
        None => Ok(work.await),
    }
}

/// The result of work on the engine's runtime; its panic becomes XX000.
fn joined<T>(r: Result<T, tokio::task::JoinError>) -> PgWireResult<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => Err(panic_error(e.into_panic())),
        Err(_) => Err(pg_error(
            ErrorKind::Cancelled,
            "canceling statement due to user request",
        )),
    }
}

/// A result's batches as pgwire rows in the given field formats, a batch
/// at a time (see [`crate::rows`]), with cancel and panic handling (see
/// [`guarded`]) per batch rather than per row.
fn encode_rows(
    stream: sluice_engine::datafusion::execution::SendableRecordBatchStream,
    fields: Arc<Vec<FieldInfo>>,
    cancel: Option<Arc<ConnectionHandle>>,
    deadline: Option<tokio::time::Instant>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    let batches = stream.map(move |batch| {
        batch
            .map_err(SluiceError::from)
            .and_then(|b| wire_batch(b, &fields))
            .map_err(to_pg)
            .and_then(|b| encode_batch(&b, &fields))
    });
    guarded(batches, cancel, deadline).flat_map(|rows| {
        let (rows, error) = match rows {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        futures::stream::iter(rows.into_iter().map(Ok).chain(error.map(Err)))
    })
}

fn output_to_response(
    output: Output,
    format: &Format,
    cancel: Option<Arc<ConnectionHandle>>,
    deadline: Option<tokio::time::Instant>,
) -> PgWireResult<Response> {
    Ok(match output {
        Output::Rows(stream) => {
            let schema = stream.schema();
            let fields = Arc::new(pg_fields(&schema, format)?);
            let encode_fields = fields.clone();
            let rows = encode_rows(stream, encode_fields, cancel, deadline);
            Response::Query(QueryResponse::new(fields, rows))
        }
        Output::Subscribe { rows: stream, copy } => {
            let schema = stream.schema();
            let fields = Arc::new(pg_fields(&schema, format)?);
            let text_fields = Arc::new(pg_fields(&schema, &Format::UnifiedText)?);
            let encode_fields = if copy { text_fields } else { fields.clone() };
            // A subscription runs until cancelled: statement_timeout does
            // not end it.
            let rows = encode_rows(stream, encode_fields, cancel, None);
            if copy {
                let columns = schema.fields().len();
                let text = CopyOptions::text();
                let data = rows.map(move |row| row.map(|r| CopyData::new(copy_line(&r, &text))));
                Response::CopyOut(CopyResponse::new(0, columns, data))
            } else {
                let mut q = QueryResponse::new(fields, rows);
                q.set_command_tag("SUBSCRIBE");
                Response::Query(q)
            }
        }
        Output::CopyIn(_) => {
            return Err(pg_error(
                ErrorKind::NotSupported,
                "COPY FROM STDIN is a statement of its own (not in a cursor)",
            ));
        }
        Output::CopyOut {
            rows: stream,
            options,
        } => {
            let schema = stream.schema();
            let text_fields = Arc::new(pg_fields(&schema, &Format::UnifiedText)?);
            let columns = schema.fields().len();
            let rows = encode_rows(stream, text_fields, cancel, deadline);
            // CSV's header line rides with the first row: pgwire counts
            // CopyData messages for the `COPY n` tag.
            let mut header = options.header.then(|| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                csv_header(&names, &options)
            });
            let lines = rows.map(move |row| {
                row.map(|r| {
                    let line = copy_line(&r, &options);
                    match header.take() {
                        Some(mut h) => {
                            h.extend_from_slice(&line);
                            CopyData::new(h.freeze())
                        }
                        None => CopyData::new(line),
                    }
                })
            });
            Response::CopyOut(CopyResponse::new(0, columns, lines))
        }
        Output::Command { tag, rows } => {
            let mut t = if tag == "INSERT" {
                Tag::new("INSERT").with_oid(0)
            } else {
                Tag::new(&tag)
            };
            if let Some(n) = rows {
                t = t.with_rows(n);
            }
            Response::Execution(t)
        }
        Output::TransactionStart => Response::TransactionStart(Tag::new("BEGIN")),
        Output::TransactionEnd { rollback } => {
            Response::TransactionEnd(Tag::new(if rollback { "ROLLBACK" } else { "COMMIT" }))
        }
    })
}

/// Wraps a result row stream so that (1) a cancel request (Ctrl-C in psql)
/// stops it with SQLSTATE 57014 and (2) a panic while producing rows becomes
/// an XX000 error instead of killing the connection.
///
/// The work of a query happens while its rows are pulled, after pgwire's own
/// cancel window (which covers only planning) has closed; so the stream
/// installs a fresh cancel receiver when it is first polled.
fn guarded<S, T>(
    rows: S,
    cancel: Option<Arc<ConnectionHandle>>,
    deadline: Option<tokio::time::Instant>,
) -> impl Stream<Item = PgWireResult<T>> + Send + 'static
where
    S: Stream<Item = PgWireResult<T>> + Send + 'static,
    T: Send + 'static,
{
    struct State<S> {
        rows: std::pin::Pin<Box<S>>,
        handle: Option<Arc<ConnectionHandle>>,
        rx: Option<futures::channel::oneshot::Receiver<()>>,
        deadline: Option<tokio::time::Instant>,
        done: bool,
    }
    let state = State {
        rows: Box::pin(rows),
        handle: cancel,
        rx: None,
        deadline,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.rx.is_none()
            && let Some(h) = st.handle.take()
        {
            st.rx = Some(h.start_query().await);
        }
        let deadline = st.deadline;
        let item = loop {
            let next = pull(&mut st.rows, deadline);
            match st.rx.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        biased;
                        cancelled = rx => match cancelled {
                            Ok(()) => {
                                st.done = true;
                                return Some((Err(pg_error(ErrorKind::Cancelled, "canceling statement due to user request")), st));
                            }
                            // The sender went away (connection closing):
                            // stop watching for cancels, keep streaming.
                            Err(_) => {
                                st.rx = None;
                                continue;
                            }
                        },
                        item = next => break item,
                    }
                }
                None => break next.await,
            }
        };
        let Some(item) = item else {
            st.done = true;
            return Some((Err(statement_timeout_error()), st));
        };
        match item {
            Ok(Some(Ok(row))) => Some((Ok(row), st)),
            Ok(Some(Err(e))) => {
                st.done = true;
                Some((Err(e), st))
            }
            Ok(None) => None,
            Err(payload) => {
                st.done = true;
                Some((Err(panic_error(payload)), st))
            }
        }
    })
}

/// The next item of `rows`, a panic caught; `None` once `deadline` passed.
async fn pull<S: Stream + ?Sized>(
    rows: &mut std::pin::Pin<Box<S>>,
    deadline: Option<tokio::time::Instant>,
) -> Option<std::thread::Result<Option<S::Item>>> {
    let next = AssertUnwindSafe(rows.next()).catch_unwind();
    match deadline {
        Some(d) => tokio::time::timeout_at(d, next).await.ok(),
        None => Some(next.await),
    }
}

fn statement_timeout_error() -> PgWireError {
    pg_error(
        ErrorKind::Cancelled,
        "canceling statement due to statement timeout",
    )
}

/// A text-format DataRow as one line of `COPY ... TO STDOUT`: in text
/// format delimiter-separated, the NULL string for NULL, backslash escapes;
/// in CSV quoted where needed (a delimiter, quote, newline, or a value that
/// reads as the NULL string), quotes doubled.
fn copy_line(row: &DataRow, options: &CopyOptions) -> Bytes {
    let mut out = BytesMut::with_capacity(row.data.len() + 8);
    let mut data = &row.data[..];
    let mut delimiter = [0u8; 4];
    let delimiter = options.delimiter.encode_utf8(&mut delimiter).as_bytes();
    for i in 0..row.field_count {
        if i > 0 {
            out.put_slice(delimiter);
        }
        let len = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        data = &data[4..];
        if len < 0 {
            out.put_slice(options.null.as_bytes());
            continue;
        }
        let (value, rest) = data.split_at(len as usize);
        data = rest;
        if options.csv {
            put_csv_value(&mut out, value, delimiter, options);
            continue;
        }
        for &b in value {
            match b {
                b'\\' => out.put_slice(b"\\\\"),
                b'\n' => out.put_slice(b"\\n"),
                b'\r' => out.put_slice(b"\\r"),
                b'\t' => out.put_slice(b"\\t"),
                b if delimiter == [b] => {
                    out.put_u8(b'\\');
                    out.put_u8(b);
                }
                other => out.put_u8(other),
            }
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

fn put_csv_value(out: &mut BytesMut, value: &[u8], delimiter: &[u8], options: &CopyOptions) {
    let quote = value == options.null.as_bytes()
        || value.windows(delimiter.len()).any(|w| w == delimiter)
        || value.iter().any(|b| matches!(b, b'"' | b'\n' | b'\r'));
    if !quote {
        out.put_slice(value);
        return;
    }
    out.put_u8(b'"');
    for &b in value {
        if b == b'"' {
            out.put_u8(b'"');
        }
        out.put_u8(b);
    }
    out.put_u8(b'"');
}

/// CSV's header line: the column names.
fn csv_header(names: &[&str], options: &CopyOptions) -> BytesMut {
    let mut out = BytesMut::new();
    let mut delimiter = [0u8; 4];
    let delimiter = options.delimiter.encode_utf8(&mut delimiter).as_bytes();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.put_slice(delimiter);
        }
        put_csv_value(&mut out, n.as_bytes(), delimiter, options);
    }
    out.put_u8(b'\n');
    out
}

/// Sends a subscription's rows, flushing whenever the producer has nothing
/// more ready: a change reaches the client when it happens, not when a
/// buffer fills.
async fn send_flushing<C>(client: &mut C, response: Response, describe: bool) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match response {
        Response::Query(mut q) => {
            if describe {
                let desc = RowDescription::new(q.row_schema().iter().map(Into::into).collect());
                client.feed(PgWireBackendMessage::RowDescription(desc)).await?;
            }
            client.flush().await?;
            let mut rows = 0usize;
            let mut chunks = q.data_rows().ready_chunks(1024);
            while let Some(chunk) = chunks.next().await {
                for row in chunk {
                    client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                    rows += 1;
                }
                client.flush().await?;
            }
            let tag = Tag::new(q.command_tag()).with_rows(rows);
            client
                .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                .await?;
            Ok(())
        }
        Response::CopyOut(c) => {
            let formats = c.column_formats();
            let CopyResponse {
                format,
                columns,
                data_stream,
                ..
            } = c;
            client
                .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
                    format,
                    columns as i16,
                    formats,
                )))
                .await?;
            let mut rows = 0usize;
            let mut chunks = data_stream.ready_chunks(1024);
            while let Some(chunk) = chunks.next().await {
                for data in chunk {
                    client.feed(PgWireBackendMessage::CopyData(data?)).await?;
                    rows += 1;
                }
                client.flush().await?;
            }
            client
                .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
                .await?;
            let tag = Tag::new("COPY").with_rows(rows);
            client
                .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                .await?;
            Ok(())
        }
        Response::Error(info) => Err(PgWireError::UserError(info)),
        _ => Err(pg_error(ErrorKind::Internal, "unexpected response to SUBSCRIBE")),
    }
}

fn cancel_handle<C: ClientInfo>(client: &C) -> Option<Arc<ConnectionHandle>> {
    client
        .session_extensions()
        .get::<Arc<ConnectionHandle>>()
        .map(|h| (*h).clone())
}

#[async_trait]
impl SimpleQueryHandler for ConnectionHandler {
    /// SUBSCRIBE streams until cancelled, so it can't wait for pgwire's
    /// end-of-response flush: it is sent here, flushing as rows come.
    /// Everything else takes pgwire's path.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = match self.parser.sql_parser.parse(&query.query) {
            Ok(mut s) if s.len() == 1 && matches!(s[0], Statement::Subscribe { .. }) => s.remove(0),
            _ => return self._on_query(client, query).await,
        };
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let cancel = cancel_handle(client);
        let result = async {
            let prepared = self.prepare(statement, None).await?;
            self.run(&prepared, None, &Format::UnifiedText, cancel, None)
                .await
        }
        .await;
        let sent = match result {
            Ok(response) => send_flushing(client, response, true).await,
            Err(e) => Err(e),
        };
        let mut status = client.transaction_status();
        match sent {
            Ok(()) => {}
            Err(PgWireError::UserError(info)) => {
                client
                    .feed(PgWireBackendMessage::ErrorResponse((*info).into()))
                    .await?;
                status = status.to_error_state();
            }
            Err(e) => return Err(e),
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.sql_parser.parse(query).map_err(to_pg)?;
        if statements.is_empty() {
            // Only comments or semicolons: Postgres answers EmptyQueryResponse.
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            let result = async {
                let deadline = self.deadline().await;
                let prepared = self.prepare(statement, deadline).await?;
                self.run(
                    &prepared,
                    None,
                    &Format::UnifiedText,
                    cancel_handle(client),
                    deadline,
                )
                .await
            }
            .await;
            match result {
                Ok(r) => responses.push(r),
                Err(PgWireError::UserError(info)) => {
                    // Postgres stops at the first failing statement of a
                    // multi-statement query; earlier results stand.
                    responses.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(responses)
    }
}

/// Parses and plans statements for the extended protocol.
pub struct StatementParser {
    session: Arc<Mutex<Session>>,
    sql_parser: Arc<SqlParser>,
    engine: sluice_engine::Engine,
}

impl StatementParser {
    /// Plans one statement on the engine's runtime, within `deadline`.
    async fn prepare(
        &self,
        statement: Statement,
        deadline: Option<tokio::time::Instant>,
    ) -> PgWireResult<Prepared> {
        let session = self.session.clone();
        let work = self.engine.spawn(async move {
            let mut session = session.lock().await;
            // What set_config set in the statement before.
            session.apply_pending_settings()?;
            session.prepare(statement).await
        });
        joined(within(deadline, work).await?)?.map_err(to_pg)
    }
}

fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// Casts decoded parameters to the NUMERIC types the plan inferred for
/// them (see `do_query`).
fn cast_parameters(
    params: sluice_engine::datafusion::common::ParamValues,
    types: &[Option<DataType>],
) -> PgWireResult<sluice_engine::datafusion::common::ParamValues> {
    use sluice_engine::datafusion::common::ParamValues;
    let ParamValues::List(values) = params else {
        return Ok(params);
    };
    let values = values
        .into_iter()
        .zip(types.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(mut v, t)| {
            if let Some(Some(t)) = t
                && is_decimal(t)
                && v.value.data_type() != *t
            {
                // A decoded NUMERIC's precision counts its significant
                // digits only (0.001 comes as precision 1, scale 3, which
                // Arrow can't cast): widen it first.
                if let ScalarValue::Decimal128(d, _, s) = v.value {
                    v.value = ScalarValue::Decimal128(d, 38, s);
                }
                v.value = v.value.cast_to(t).map_err(|e| {
                    pg_error(
                        ErrorKind::InvalidParameter,
                        format!("parameter {} cannot be read as {t}: {e}", v.value),
                    )
                })?;
            }
            Ok(v)
        })
        .collect::<PgWireResult<Vec<_>>>()?;
    Ok(ParamValues::List(values))
}

/// Text-format parameters the plan reads as a list of strings, parsed from
/// Postgres's array text (`{"north","east"}`, `{a,NULL,"b \\"c\\""}`): arrow-pg
/// keeps an element's quotes. node-postgres sends arrays this way. Arrays
/// of more than one dimension keep arrow-pg's reading.
fn text_array_parameters<S>(
    params: sluice_engine::datafusion::common::ParamValues,
    portal: &Portal<S>,
    types: &[Option<DataType>],
) -> sluice_engine::datafusion::common::ParamValues {
    use sluice_engine::datafusion::common::{ParamValues, ScalarValue};
    let ParamValues::List(mut values) = params else {
        return params;
    };
    for (i, v) in values.iter_mut().enumerate() {
        let Some(Some(target @ (DataType::List(_) | DataType::LargeList(_)))) = types.get(i) else {
            continue;
        };
        let (DataType::List(element) | DataType::LargeList(element)) = target else {
            continue;
        };
        if !matches!(
            element.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) || portal.parameter_format.is_binary(i)
        {
            continue;
        }
        let Some(Some(raw)) = portal.parameters.get(i) else {
            continue;
        };
        let Some(items) = std::str::from_utf8(raw)
            .ok()
            .and_then(crate::pgtypes::parse_text_array)
        else {
            continue;
        };
        let items: Vec<ScalarValue> = items.into_iter().map(ScalarValue::Utf8).collect();
        let list = ScalarValue::List(ScalarValue::new_list_nullable(&items, &DataType::Utf8));
        if let Ok(list) = list.cast_to(target) {
            v.value = list;
        }
    }
    ParamValues::List(values)
}

fn pg_type_of(dt: Option<&DataType>) -> Type {
    dt.and_then(|t| into_pg_type(t).ok()).unwrap_or(Type::UNKNOWN)
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = ParsedStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.sql_parser.parse(sql).map_err(to_pg)?;
        if statements.len() > 1 {
            return Err(pg_error(
                ErrorKind::Syntax,
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let timeout = self.session.lock().await.statement_timeout();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let prepared = self.prepare(statement, deadline).await?;
        let oid_params = oid_parameters(sql);
        Ok(Some(ParsedStatement { prepared, oid_params }))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        let types = stmt.prepared.parameter_types().map_err(to_pg)?;
        let mut types: Vec<Type> = types.iter().map(|t| pg_type_of(t.as_ref())).collect();
        for (i, t) in &stmt.oid_params {
            if let Some(slot) = types.get_mut(*i) {
                *slot = t.clone();
            }
        }
        Ok(types)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt.prepared.result_schema() {
            Some(schema) => pg_fields(&schema, column_format.unwrap_or(&Format::UnifiedText)),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for ConnectionHandler {
    type Statement = ParsedStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    /// A cursor opened by `DECLARE` is also a portal of the protocol, as in
    /// Postgres: psycopg describes its named cursors that way.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_PORTAL
            && let Some(name) = message.name.as_deref()
            && client.portal_store().get_portal(name).is_none()
            && let Some(schema) = self.session.lock().await.cursor_schema(name)
        {
            let mut response = DescribePortalResponse::no_data();
            response.fields = pg_fields(&schema, &Format::UnifiedText)?;
            return send_describe_response(client, &response).await;
        }
        self._on_describe(client, message).await
    }

    /// pgwire's default Execute collects every row of an unlimited
    /// (`max_rows = 0`) Execute into memory before sending the first one.
    /// Sluice streams those instead: rows go out as the query produces them,
    /// and a slow client slows the query. Limited Executes (cursors, portal
    /// suspension) keep pgwire's handling.
    async fn on_execute<C>(&self, client: &mut C, mut message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // As Postgres: zero or a negative row limit means no limit.
        message.max_rows = message.max_rows.max(0);
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let streamable = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal))
                if message.max_rows == 0
                    && matches!(client.state(), PgWireConnectionState::ReadyForQuery)
                    && portal.statement.statement.prepared.result_schema().is_some()
                    && matches!(*portal.state().lock().await, PortalExecutionState::Initial) =>
            {
                Some(portal)
            }
            _ => None,
        };
        let Some(portal) = streamable else {
            return self._on_execute(client, message).await;
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        let subscribe = portal.statement.statement.prepared.is_subscribe();
        let outcome = match ExtendedQueryHandler::do_query(self, client, portal.as_ref(), 0).await {
            Ok(r @ (Response::Query(_) | Response::CopyOut(_))) if subscribe => {
                send_flushing(client, r, false).await
            }
            Ok(Response::Query(rows)) => send_query_response(client, rows, false).await,
            Ok(Response::Execution(tag)) => send_execution_response(client, tag).await,
            Ok(Response::Error(info)) => Err(PgWireError::UserError(info)),
            Ok(_) => Err(pg_error(
                ErrorKind::Internal,
                "unexpected response to a row-returning statement",
            )),
            Err(e) => Err(e),
        };
        // Like a portal run to completion: executing it again returns nothing.
        *portal.state().lock().await = PortalExecutionState::Finished;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        outcome
    }

    /// Checks a Bind as Postgres does before making the portal: format
    /// codes 0 or 1, one format code or one per value, and as many values
    /// as the statement has parameters.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let protocol = |m: String| {
            PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
                "ERROR".into(),
                "08P01".into(),
                m,
            )))
        };
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
        let codes = message
            .parameter_format_codes
            .iter()
            .chain(&message.result_column_format_codes);
        if let Some(bad) = codes.copied().find(|c| *c != 0 && *c != 1) {
            return Err(pg_error(
                ErrorKind::InvalidParameter,
                format!("unsupported format code: {bad}"),
            ));
        }
        let values = message.parameters.len();
        let formats = message.parameter_format_codes.len();
        if formats > 1 && formats != values {
            return Err(protocol(format!(
                "bind message has {formats} parameter formats but {values} parameters"
            )));
        }
        let required = match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let required = statement
                    .statement
                    .prepared
                    .parameter_types()
                    .map_err(to_pg)?
                    .len();
                if values == required {
                    client
                        .portal_store()
                        .put_portal(Arc::new(Portal::try_new(&message, statement)?));
                }
                required
            }
            Some(Entry::Empty) => {
                if values == 0 {
                    client.portal_store().put_empty_portal(portal_name);
                }
                0
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        };
        if values != required {
            return Err(protocol(format!(
                "bind message supplies {values} parameters, but prepared statement \"{statement_name}\" requires {required}"
            )));
        }
        client
            .send(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement.prepared;
        let types = prepared.parameter_types().map_err(to_pg)?;
        let params = if portal.parameters.is_empty() {
            None
        } else {
            // arrow-pg decodes by the client's type and coerces integers to
            // the inferred type, but not to NUMERIC: decode those as sent
            // (as NUMERIC when the client named no type: asyncpg sends
            // them binary) and cast here (an int or float parameter
            // against a NUMERIC).
            let refs: Vec<Option<&DataType>> = types
                .iter()
                .map(|t| t.as_ref().filter(|t| !is_decimal(t)))
                .collect();
            let numeric = Type::NUMERIC;
            let mut sent_as: Vec<Option<&Type>> = types
                .iter()
                .map(|t| t.as_ref().filter(|t| is_decimal(t)).map(|_| &numeric))
                .collect();
            // oid and oid[] parameters as they were described (see
            // `oid_parameters`); an oid[] is read here, arrow-pg taking its
            // bytes as they are.
            let oid_params = &portal.statement.statement.oid_params;
            let (oid, raw_bytes, raw_text) = (Type::OID, Type::BYTEA, Type::TEXT);
            let mut refs = refs;
            for (i, t) in oid_params {
                let binary = portal.parameter_format.is_binary(*i);
                if let Some(slot) = sent_as.get_mut(*i) {
                    *slot = Some(match *t {
                        Type::OID => &oid,
                        _ if binary => &raw_bytes,
                        _ => &raw_text,
                    });
                }
                if *t == Type::OID_ARRAY
                    && let Some(r) = refs.get_mut(*i)
                {
                    *r = None;
                }
            }
            // date[] and timestamp[] parameters, which arrow-pg does not
            // decode (asyncpg sends them in binary): read here.
            let temporal: Vec<(usize, DataType)> = types
                .iter()
                .enumerate()
                .filter_map(|(i, t)| match t {
                    Some(DataType::List(item)) if is_temporal(item.data_type()) => {
                        Some((i, item.data_type().clone()))
                    }
                    _ => None,
                })
                .collect();
            for (i, _) in &temporal {
                let binary = portal.parameter_format.is_binary(*i);
                if let Some(slot) = sent_as.get_mut(*i) {
                    *slot = Some(if binary { &raw_bytes } else { &raw_text });
                }
                if let Some(r) = refs.get_mut(*i) {
                    *r = None;
                }
            }
            let mut decoded = deserialize_parameters_with_server_types(portal, &refs, &sent_as)?;
            if let sluice_engine::datafusion::common::ParamValues::List(values) = &mut decoded {
                for (i, item) in &temporal {
                    if let Some(v) = values.get_mut(*i) {
                        let raw = portal.parameters.get(*i).and_then(|p| p.as_deref());
                        v.value = temporal_array_parameter(raw, portal.parameter_format.is_binary(*i), item)?;
                    }
                }
            }
            if let sluice_engine::datafusion::common::ParamValues::List(values) = &mut decoded {
                for (i, t) in oid_params {
                    if *t == Type::OID_ARRAY
                        && let Some(v) = values.get_mut(*i)
                    {
                        let raw = portal.parameters.get(*i).and_then(|p| p.as_deref());
                        v.value = oid_array_parameter(raw, portal.parameter_format.is_binary(*i))?;
                    }
                }
            }
            let params = cast_parameters(decoded, &types)?;
            Some(text_array_parameters(params, portal, &types))
        };
        let deadline = if prepared.is_subscribe() {
            None
        } else {
            self.deadline().await
        };
        self.run(
            prepared,
            params,
            &portal.result_column_format,
            cancel_handle(client),
            deadline,
        )
        .await
    }
}

#[async_trait]
impl pgwire::api::copy::CopyHandler for ConnectionHandler {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut pending = self.copy_in.lock().expect("copy state");
        if let Some(p) = pending.as_mut() {
            if p.data.len() + copy_data.data.len() > COPY_IN_LIMIT {
                p.too_large = true;
                p.data = BytesMut::new();
            } else if !p.too_large {
                p.data.extend_from_slice(&copy_data.data);
            }
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pending = self.copy_in.lock().expect("copy state").take();
        let Some(pending) = pending else {
            return Err(pg_error(
                ErrorKind::Internal,
                "COPY data without a COPY FROM STDIN",
            ));
        };
        let rows = self.finish_copy(pending).await?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(rows).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: pgwire::messages::copy::CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy_in.lock().expect("copy state").take();
        pg_error(
            ErrorKind::Cancelled,
            format!("COPY from stdin failed: {}", fail.message),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_cast_to_oid_are_described_as_oid() {
        let sql = "SELECT t.oid FROM pg_type t WHERE t.oid = any($1::oid[]) AND $2 :: pg_catalog.oid > 0 \
                   AND $3::int4 > 0 AND $4::oidvector IS NULL";
        assert_eq!(oid_parameters(sql), vec![(0, Type::OID_ARRAY), (1, Type::OID)]);
    }

    #[test]
    fn date_and_timestamp_array_parameters_in_text_and_binary() {
        let dates = |v: Vec<Option<i32>>| {
            let items: Vec<ScalarValue> = v.into_iter().map(ScalarValue::Date32).collect();
            ScalarValue::List(ScalarValue::new_list_nullable(&items, &DataType::Date32))
        };
        // 2026-11-01 is day 20758 since 1970, 9801 since 2000.
        assert_eq!(
            temporal_array_parameter(Some(b"{2026-11-01,NULL}"), false, &DataType::Date32).unwrap(),
            dates(vec![Some(20758), None])
        );
        let mut binary = vec![];
        for w in [1i32, 1, 1082, 2, 1, 4, 9801, -1] {
            binary.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(
            temporal_array_parameter(Some(&binary), true, &DataType::Date32).unwrap(),
            dates(vec![Some(20758), None])
        );
        // A timestamp: 8 bytes of microseconds since 2000-01-01.
        let ts = DataType::Timestamp(
            sluice_engine::datafusion::arrow::datatypes::TimeUnit::Microsecond,
            None,
        );
        let mut binary = vec![];
        for w in [1i32, 0, 1114, 1, 1, 8] {
            binary.extend_from_slice(&w.to_be_bytes());
        }
        binary.extend_from_slice(&1_000_000i64.to_be_bytes());
        let item = ScalarValue::TimestampMicrosecond(Some(946_684_801_000_000), None);
        assert_eq!(
            temporal_array_parameter(Some(&binary), true, &ts).unwrap(),
            ScalarValue::List(ScalarValue::new_list_nullable(&[item], &ts))
        );
        assert!(temporal_array_parameter(Some(b"{not a date}"), false, &DataType::Date32).is_err());
    }

    #[test]
    fn oid_array_parameters_in_text_and_binary() {
        let list = |v: Vec<Option<i32>>| {
            let items: Vec<ScalarValue> = v.into_iter().map(ScalarValue::Int32).collect();
            ScalarValue::List(ScalarValue::new_list_nullable(&items, &DataType::Int32))
        };
        assert_eq!(
            oid_array_parameter(Some(b"{20,1016,NULL}"), false).unwrap(),
            list(vec![Some(20), Some(1016), None])
        );
        // One dimension of two: 20 and NULL.
        let mut binary = vec![];
        for w in [1i32, 1, 26, 2, 1, 4, 20, -1] {
            binary.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(
            oid_array_parameter(Some(&binary), true).unwrap(),
            list(vec![Some(20), None])
        );
        assert!(oid_array_parameter(Some(b"{x}"), false).is_err());
    }
}

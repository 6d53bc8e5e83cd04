//! The web console's server side: login, and a small JSON API the page
//! (`console.html`, embedded in the binary) polls.
//!
//! Access is the wire protocol's: the same users and passwords. A login
//! (`POST /login`, a form) gives an HTTP-only, same-site cookie that names
//! an in-memory console session; API calls may instead carry HTTP basic
//! credentials (scripts, curl). With `--auth trust` no login is asked.
//! Statements run through the engine's own sessions, as the logged-in
//! user, with that user's rights.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sluice_engine::datafusion::arrow::array::RecordBatch;
use sluice_engine::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_engine::{Engine, Output, Session, SluiceError};

use crate::auth::AuthMethod;

/// The page itself.
pub const PAGE: &str = include_str!("console.html");

/// A console session lasts this long after its login.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// At most this many rows of a query go back to the page.
const MAX_ROWS: usize = 1000;

/// The cookie naming a console session.
pub const COOKIE: &str = "sluice_console";

/// Console sessions: token -> (user, expiry).
#[derive(Default)]
pub struct ConsoleSessions(Mutex<HashMap<String, (String, Instant)>>);

impl ConsoleSessions {
    /// A new session for `user`; its token.
    pub fn open(&self, user: &str) -> String {
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut all = self.0.lock().expect("console sessions lock");
        let now = Instant::now();
        all.retain(|_, (_, until)| *until > now);
        all.insert(token.clone(), (user.to_string(), now + SESSION_LIFETIME));
        token
    }

    /// The user of a live session.
    pub fn user(&self, token: &str) -> Option<String> {
        let all = self.0.lock().expect("console sessions lock");
        all.get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(u, _)| u.clone())
    }

    pub fn close(&self, token: &str) {
        self.0.lock().expect("console sessions lock").remove(token);
    }
}

/// Statements the console runs now, by the id the page gave them.
#[derive(Default)]
pub struct RunningQueries(Mutex<HashMap<String, RunningQuery>>);

/// One statement the console runs: who runs it, how to stop it, and how
/// far it has got.
struct RunningQuery {
    user: String,
    abort: tokio::task::AbortHandle,
    started: Instant,
    /// Result rows the statement has produced so far.
    rows: Arc<AtomicU64>,
}

impl RunningQueries {
    /// Stops `user`'s statement `id`; false when there is none such.
    pub fn cancel(&self, user: &str, id: &str) -> bool {
        let running = self.0.lock().expect("running queries lock");
        match running.get(id) {
            Some(q) if q.user == user => {
                q.abort.abort();
                true
            }
            _ => false,
        }
    }

    /// How far `user`'s statement `id` is: `{running, rows, elapsed_ms}`
    /// (`running: false` once it has ended, or for another user's).
    pub fn progress(&self, user: &str, id: &str) -> Value {
        let running = self.0.lock().expect("running queries lock");
        match running.get(id) {
            Some(q) if q.user == user => json!({
                "running": true,
                "rows": q.rows.load(Ordering::Relaxed),
                "elapsed_ms": q.started.elapsed().as_millis() as u64,
            }),
            _ => json!({"running": false}),
        }
    }
}

/// Who is asking, from the request's cookie or basic credentials; `None`:
/// nobody who may. Failed basic credentials count against the address as
/// failed logins do, and past the limit none are tried.
pub async fn who(
    server: &crate::Server,
    headers: &hyper::HeaderMap,
    peer: std::net::IpAddr,
) -> Option<String> {
    if server.auth == AuthMethod::Trust {
        return Some(
            cookie(headers)
                .and_then(|t| server.console.user(&t))
                .unwrap_or_else(|| "sluice".into()),
        );
    }
    if let Some(user) = cookie(headers).and_then(|t| server.console.user(&t)) {
        return Some(user);
    }
    let (user, password) = basic(headers)?;
    server.throttle.check(peer).ok()?;
    if server.users.verify(&user, &password).await {
        return Some(user);
    }
    server.throttle.failed(peer);
    None
}

/// The console session token in the request's cookies.
pub fn cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE)?
                .strip_prefix('=')
                .map(str::to_string)
        })
}

/// HTTP basic credentials.
fn basic(headers: &hyper::HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// A form body's field (`application/x-www-form-urlencoded`).
pub fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k)? == name).then(|| percent_decode(v)).flatten()
    })
}

/// A query-string parameter.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_field(query, name)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Runs `sql` (one or more statements) as `user`; the last statement's
/// result as `{columns, rows, tag}` or `{error: {sqlstate, message}}`.
/// With an `id`, `POST /api/cancel` can stop it meanwhile (57014).
pub async fn run_sql(server: &crate::Server, user: &str, sql: String, id: Option<String>) -> Value {
    let superuser = server.users.is_superuser(user).await;
    let rows = Arc::new(AtomicU64::new(0));
    let work = spawn_statements(
        server.engine.clone(),
        user.to_string(),
        superuser,
        sql,
        rows.clone(),
    );
    /// Forgets a running statement however its request ends.
    struct Registered<'a>(&'a RunningQueries, Option<String>);
    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            if let Some(id) = &self.1 {
                self.0.0.lock().expect("running queries lock").remove(id);
            }
        }
    }
    if let Some(id) = &id {
        server.queries.0.lock().expect("running queries lock").insert(
            id.clone(),
            RunningQuery {
                user: user.to_string(),
                abort: work.abort_handle(),
                started: Instant::now(),
                rows,
            },
        );
    }
    let _registered = Registered(&server.queries, id);
    finish(work).await
}

/// Runs `sql` as `user` on the engine's statement runtime, counting the
/// last statement's result rows into `rows` as they come.
fn spawn_statements(
    engine: Engine,
    user: String,
    superuser: bool,
    sql: String,
    rows: Arc<AtomicU64>,
) -> sluice_engine::compute::Offloaded<Result<Value, SluiceError>> {
    engine.clone().spawn(async move {
        let mut session: Session = engine.new_session();
        session.set_user(&user, superuser);
        let statements = Session::parse(&sql)?;
        if statements.is_empty() {
            return Ok(json!({"columns": [], "rows": [], "tag": "EMPTY"}));
        }
        let mut last = Value::Null;
        for statement in statements {
            let prepared = session.prepare(statement).await?;
            if prepared.is_subscribe() {
                return Err(SluiceError::invalid_parameter(
                    "SUBSCRIBE streams through /api/subscribe (the SQL page does this by itself)",
                ));
            }
            let output = session.execute(&prepared, None).await?;
            rows.store(0, Ordering::Relaxed);
            last = to_json(output, &rows).await?;
        }
        Ok::<_, SluiceError>(last)
    })
}

/// A spawned statement's result as JSON, an error as `{error: ...}`; the
/// console stops a statement after 60 s.
async fn finish(work: sluice_engine::compute::Offloaded<Result<Value, SluiceError>>) -> Value {
    let result = tokio::time::timeout(Duration::from_secs(60), work).await;
    let result = match result {
        Err(_) => Err(SluiceError::new(
            sluice_engine::ErrorKind::Cancelled,
            "the console stops a statement after 60 s; run long ones through psql",
        )),
        Ok(Err(join)) if join.is_cancelled() => Err(SluiceError::new(
            sluice_engine::ErrorKind::Cancelled,
            "canceling statement due to user request",
        )),
        Ok(Err(join)) => Err(SluiceError::internal(format!("statement failed: {join}"))),
        Ok(Ok(r)) => r,
    };
    match result {
        Ok(v) => v,
        Err(e) => {
            let code = crate::errors::sqlstate(e.kind());
            crate::metrics::METRICS.errors.with_label_values(&[code]).inc();
            json!({"error": {"sqlstate": code, "message": e.to_string()}})
        }
    }
}

/// Starts `SUBSCRIBE ...` as `user` (nothing else: it is reached by GET);
/// its column names and its change batches as rows of text.
pub async fn subscribe(
    server: &crate::Server,
    user: &str,
    sql: String,
) -> Result<
    (
        Vec<String>,
        futures::stream::BoxStream<'static, Result<Vec<Value>, SluiceError>>,
    ),
    SluiceError,
> {
    let superuser = server.users.is_superuser(user).await;
    let engine: Engine = server.engine.clone();
    let user = user.to_string();
    let started = engine
        .clone()
        .spawn(async move {
            let mut session: Session = engine.new_session();
            session.set_user(&user, superuser);
            let mut statements = Session::parse(&sql)?;
            if statements.len() != 1 {
                return Err(SluiceError::invalid_parameter("one SUBSCRIBE statement, please"));
            }
            let prepared = session.prepare(statements.remove(0)).await?;
            if !prepared.is_subscribe() {
                return Err(SluiceError::invalid_parameter(
                    "only SUBSCRIBE streams here; other statements go to /api/sql",
                ));
            }
            match session.execute(&prepared, None).await? {
                Output::Subscribe { rows, .. } => Ok(sluice_engine::compute::forward(rows)),
                _ => Err(SluiceError::internal("SUBSCRIBE gave no rows")),
            }
        })
        .await
        .map_err(|e| SluiceError::internal(format!("SUBSCRIBE failed: {e}")))??;
    let columns = started
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let rows = started
        .map(|batch| {
            let batch = batch.map_err(SluiceError::from)?;
            let mut rows = vec![];
            text_rows(&batch, batch.num_rows(), &mut rows)?;
            Ok(rows)
        })
        .boxed();
    Ok((columns, rows))
}

/// Every running operator with its inputs and figures, for the job graph.
pub fn operators_json(engine: &Engine) -> Value {
    let ops: Vec<Value> = engine
        .job_operators()
        .into_iter()
        .map(|o| {
            json!({
                "job": o.job,
                "id": o.operator_id,
                "operator": o.operator,
                "parallelism": o.parallelism,
                "inputs": o.inputs,
                "rows_in": o.metrics.rows_in,
                "rows_out": o.metrics.rows_out,
                "state_rows": o.metrics.state_rows,
                "state_bytes": o.metrics.state_bytes,
                "blocked_us": o.metrics.blocked_us,
                "tasks": o.tasks.iter().map(|t| json!({
                    "rows_in": t.rows_in,
                    "rows_out": t.rows_out,
                    "state_rows": t.state_rows,
                    "state_bytes": t.state_bytes,
                    "blocked_us": t.blocked_us,
                    "late_rows": t.late_rows,
                    "expired_rows": t.expired_rows,
                    "watermark_us": t.watermark.filter(|w| *w > i64::MIN && *w < i64::MAX),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "operators": ops })
}

/// The jobs, their operators and checkpoints now, for the console's live
/// view: `{jobs, operators, checkpoints}` (SHOW JOBS and SHOW CHECKPOINTS
/// as `user` sees them).
pub async fn live_update(engine: &Engine, user: &str, superuser: bool) -> Value {
    let run = |sql: &str| {
        finish(spawn_statements(
            engine.clone(),
            user.to_string(),
            superuser,
            sql.to_string(),
            Arc::new(AtomicU64::new(0)),
        ))
    };
    let jobs = run("SHOW JOBS").await;
    let checkpoints = run("SHOW CHECKPOINTS").await;
    json!({
        "jobs": jobs,
        "operators": operators_json(engine)["operators"],
        "checkpoints": checkpoints,
    })
}

async fn to_json(output: Output, produced: &AtomicU64) -> Result<Value, SluiceError> {
    match output {
        Output::Rows(mut stream) | Output::CopyOut { rows: mut stream, .. } => {
            let schema = stream.schema();
            let columns: Vec<Value> = schema
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect();
            let mut rows = vec![];
            let mut truncated = false;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(SluiceError::from)?;
                produced.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if rows.len() >= MAX_ROWS {
                    truncated = true;
                    break;
                }
                text_rows(&batch, MAX_ROWS - rows.len(), &mut rows)?;
                if rows.len() >= MAX_ROWS {
                    truncated = true;
                }
            }
            Ok(json!({"columns": columns, "rows": rows, "truncated": truncated}))
        }
        Output::Subscribe { .. } => Err(SluiceError::invalid_parameter(
            "SUBSCRIBE streams through /api/subscribe (the SQL page does this by itself)",
        )),
        Output::CopyIn(_) => Err(SluiceError::invalid_parameter(
            "COPY FROM STDIN needs a Postgres client to send the rows (psql's \\copy)",
        )),
        Output::Command { tag, rows } => Ok(json!({"columns": [], "rows": [], "tag": match rows {
            Some(n) => format!("{tag} {n}"),
            None => tag,
        }})),
        Output::TransactionStart => Ok(json!({"columns": [], "rows": [], "tag": "BEGIN"})),
        Output::TransactionEnd { rollback } => Ok(json!({"columns": [], "rows": [],
            "tag": if rollback { "ROLLBACK" } else { "COMMIT" }})),
    }
}

/// Up to `limit` rows of `batch` as text (NULL as JSON null).
fn text_rows(batch: &RecordBatch, limit: usize, out: &mut Vec<Value>) -> Result<(), SluiceError> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows().min(limit) {
        let values: Vec<Value> = batch
            .columns()
            .iter()
            .zip(&formatters)
            .map(|(c, f)| {
                if c.is_null(row) {
                    Value::Null
                } else {
                    Value::String(f.value(row).to_string())
                }
            })
            .collect();
        out.push(Value::Array(values));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let body = "user=sluice&password=a%2Bb+c%26d";
        assert_eq!(form_field(body, "user").as_deref(), Some("sluice"));
        assert_eq!(form_field(body, "password").as_deref(), Some("a+b c&d"));
        assert_eq!(form_field(body, "other"), None);
        assert_eq!(form_field("password=%zz", "password"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::COOKIE,
            "a=1; sluice_console=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        let sessions = ConsoleSessions::default();
        let t = sessions.open("ann");
        assert_eq!(sessions.user(&t).as_deref(), Some("ann"));
        sessions.close(&t);
        assert_eq!(sessions.user(&t), None);
    }
}

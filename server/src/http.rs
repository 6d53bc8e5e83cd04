//! The HTTP listener: `/metrics` for Prometheus, and the web console
//! (`/`, its login and its JSON API under `/api/`; see [`crate::console`]).
//!
//! It runs on the server's runtime beside the Postgres listener and shuts
//! down with it. A bad request gets an HTTP error and touches nothing of
//! the wire-protocol side.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::{Server, console};

/// Every response's body: whole, or a stream of server-sent events.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, server: Arc<Server>, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "http accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let server = server.clone();
                connections.spawn(async move {
                    // With a certificate configured, HTTP is HTTPS only, as
                    // the wire protocol offers TLS with the same one.
                    match server.tls.clone() {
                        Some(tls) => match tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(socket)).await {
                            Ok(Ok(stream)) => serve_connection(stream, server, peer).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "https handshake failed"),
                            Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                        },
                        None => serve_connection(socket, server, peer).await,
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Serves one HTTP/1.1 connection, plain or TLS.
async fn serve_connection<I>(io: I, server: Arc<Server>, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(route(&server, req, peer).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

async fn route(server: &Server, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => {
            if server.metrics_auth && console::who(server, req.headers(), peer.ip()).await.is_none() {
                let mut r = plain(
                    StatusCode::UNAUTHORIZED,
                    "/metrics needs a user and password\n".into(),
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"sluice\""),
                );
                return r;
            }
            // Reading every job's figures takes locks briefly; done off the
            // I/O threads all the same.
            let engine = server.engine.clone();
            let rendered = tokio::task::spawn_blocking(move || crate::metrics::render(&engine)).await;
            match rendered {
                Ok(Ok(text)) => respond(StatusCode::OK, TEXT_FORMAT, text),
                Ok(Err(e)) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")),
                Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")),
            }
        }
        (_, "/metrics") => plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into()),
        (Method::GET, "/") => {
            let mut r = respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                console::PAGE.to_string(),
            );
            r.headers_mut().insert(
                "content-security-policy",
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
                ),
            );
            r
        }
        (Method::POST, "/login") => login(server, req, peer).await,
        (Method::POST, "/logout") => {
            if let Some(token) = console::cookie(req.headers()) {
                server.console.close(&token);
            }
            let mut r = redirect("/");
            r.headers_mut().insert(
                SET_COOKIE,
                HeaderValue::from_str(&format!(
                    "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                    console::COOKIE
                ))
                .expect("cookie header"),
            );
            r
        }
        (method, p) if p.starts_with("/api/") => {
            let Some(user) = console::who(server, req.headers(), peer.ip()).await else {
                return json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": {"message": "log in first"}}),
                );
            };
            api(server, &user, method, p, req).await
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// The console's JSON API.
async fn api(
    server: &Server,
    user: &str,
    method: Method,
    path: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let run = |sql: &str| console::run_sql(server, user, sql.to_string(), None);
    match (method, path) {
        (Method::GET, "/api/whoami") => json(StatusCode::OK, serde_json::json!({"user": user})),
        (Method::GET, "/api/jobs") => json(StatusCode::OK, run("SHOW JOBS").await),
        (Method::GET, "/api/operators") => json(StatusCode::OK, console::operators_json(&server.engine)),
        (Method::GET, "/api/checkpoints") => json(StatusCode::OK, run("SHOW CHECKPOINTS").await),
        (Method::GET, "/api/catalog") => {
            let mut all = serde_json::Map::new();
            for (name, sql) in [
                ("Streams", "SHOW STREAMS"),
                ("Sinks", "SHOW SINKS"),
                ("Materialized views", "SHOW MATERIALIZED VIEWS"),
                ("Tables", "SHOW TABLES"),
            ] {
                all.insert(name.into(), run(sql).await);
            }
            // The statements that made them, as the catalog keeps them,
            // secrets masked.
            let rows: Vec<serde_json::Value> = server
                .engine
                .objects()
                .await
                .into_iter()
                .map(|o| {
                    serde_json::json!([o.name, o.kind.noun(), sluice_engine::secrets::masked_sql(&o.sql)])
                })
                .collect();
            all.insert(
                "Statements".into(),
                serde_json::json!({
                    "columns": [{"name": "name", "type": "Utf8"}, {"name": "kind", "type": "Utf8"},
                                {"name": "statement", "type": "Utf8"}],
                    "rows": rows,
                }),
            );
            json(StatusCode::OK, serde_json::Value::Object(all))
        }
        (Method::GET, "/api/live") => live(server, user).await,
        (Method::GET, "/api/query") => {
            let id = req
                .uri()
                .query()
                .and_then(|q| console::query_param(q, "id"))
                .unwrap_or_default();
            json(StatusCode::OK, server.queries.progress(user, &id))
        }
        (Method::GET, "/api/subscribe") => {
            let sql = req
                .uri()
                .query()
                .and_then(|q| console::query_param(q, "sql"))
                .unwrap_or_default();
            subscribe(server, user, sql).await
        }
        (Method::POST, "/api/sql") => {
            // A cross-site form can't set this header, and a cross-site
            // fetch that sets it needs a CORS permission never given.
            if req.headers().get("x-sluice-console").is_none() {
                return plain(
                    StatusCode::FORBIDDEN,
                    "POST /api/sql needs the X-Sluice-Console header\n".into(),
                );
            }
            let id = req
                .headers()
                .get("x-sluice-query")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(body) = read_body(req).await else {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "a statement is at most 1 MiB\n".into(),
                );
            };
            json(StatusCode::OK, console::run_sql(server, user, body, id).await)
        }
        (Method::POST, "/api/cancel") => {
            if req.headers().get("x-sluice-console").is_none() {
                return plain(
                    StatusCode::FORBIDDEN,
                    "POST /api/cancel needs the X-Sluice-Console header\n".into(),
                );
            }
            let id = read_body(req).await.unwrap_or_default();
            let cancelled = server.queries.cancel(user, id.trim());
            json(StatusCode::OK, serde_json::json!({ "cancelled": cancelled }))
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// `SUBSCRIBE` as server-sent events: `columns` once, then `rows` for each
/// batch of changes (`op`, `progress`, the row's columns), or one `failed`.
/// The subscription (and a query's private job) ends when the page goes.
async fn subscribe(server: &Server, user: &str, sql: String) -> Response<Body> {
    use futures::StreamExt;
    let event = |name: &str, data: serde_json::Value| {
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!(
            "event: {name}\ndata: {data}\n\n"
        ))))
    };
    let events = match console::subscribe(server, user, sql).await {
        Ok((columns, rows)) => {
            let head = futures::stream::once(async move { serde_json::json!({"columns": columns}) })
                .map(move |c| event("columns", c));
            let rows = rows.map(move |r| match r {
                Ok(rows) => event("rows", serde_json::json!({"rows": rows})),
                Err(e) => event("failed", error_json(&e)),
            });
            head.chain(rows).boxed()
        }
        Err(e) => futures::stream::once(async move { event("failed", error_json(&e)) }).boxed(),
    };
    event_stream(events)
}

/// The console's live view as server-sent events: an `update` (jobs,
/// operators, checkpoints; see [`console::live_update`]) at once and then
/// every second, until the page goes.
async fn live(server: &Server, user: &str) -> Response<Body> {
    use futures::StreamExt;
    let superuser = server.users.is_superuser(user).await;
    let engine = server.engine.clone();
    let user = user.to_string();
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures::stream::unfold(
        (engine, user, ticks),
        move |(engine, user, mut ticks)| async move {
            ticks.tick().await;
            let update = console::live_update(&engine, &user, superuser).await;
            let frame = hyper::body::Frame::data(Bytes::from(format!("event: update\ndata: {update}\n\n")));
            Some((Ok::<_, Infallible>(frame), (engine, user, ticks)))
        },
    )
    .boxed();
    event_stream(events)
}

/// A response of server-sent events, never cached.
fn event_stream(
    events: futures::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, Infallible>>,
) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed_unsync(http_body_util::StreamBody::new(events)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

fn error_json(e: &sluice_engine::SluiceError) -> serde_json::Value {
    let code = crate::errors::sqlstate(e.kind());
    crate::metrics::METRICS.errors.with_label_values(&[code]).inc();
    serde_json::json!({"sqlstate": code, "message": e.to_string()})
}

/// `POST /login` with the form's user and password: a cookie and back to
/// the console, or back with `?failed`.
async fn login(server: &Server, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
    if let Err(wait) = server.throttle.check(peer.ip()) {
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed logins from {}; try again in {} s\n",
                peer.ip(),
                wait.as_secs().max(1)
            ),
        );
    }
    let Some(body) = read_body(req).await else {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "too large\n".into());
    };
    let user = console::form_field(&body, "user").unwrap_or_default();
    let password = console::form_field(&body, "password").unwrap_or_default();
    let ok = server.auth == crate::auth::AuthMethod::Trust || server.users.verify(&user, &password).await;
    if !ok {
        server.throttle.failed(peer.ip());
        tracing::warn!(%peer, user = %user, "console login failed");
        return redirect("/?failed");
    }
    let token = server.console.open(&user);
    let mut r = redirect("/");
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Strict{}",
            console::COOKIE,
            // Over HTTPS the cookie never travels in the clear.
            if server.tls.is_some() { "; Secure" } else { "" }
        ))
        .expect("cookie header"),
    );
    r
}

/// A request body of at most 1 MiB, as text.
async fn read_body(req: Request<Incoming>) -> Option<String> {
    let limited = http_body_util::Limited::new(req.into_body(), 1 << 20);
    let bytes = limited.collect().await.ok()?.to_bytes();
    String::from_utf8(bytes.to_vec()).ok()
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = plain(StatusCode::SEE_OTHER, String::new());
    r.headers_mut().insert(LOCATION, HeaderValue::from_static(to));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

fn plain(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

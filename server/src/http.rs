//! The HTTP listener: `/metrics` for Prometheus.
//!
//! It runs on the server's runtime beside the Postgres listener and shuts
//! down with it. A bad request gets an HTTP error and touches nothing of
//! the wire-protocol side.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::Server;

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
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(route(&server, req).await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "http connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn route(server: &Server, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
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
        (_, "/") => plain(StatusCode::OK, "Sluice. Prometheus metrics: /metrics\n".into()),
        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

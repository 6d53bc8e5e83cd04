//! One client connection, from the first byte to the close: TLS
//! negotiation, login, then queries.
//!
//! pgwire's own `process_socket` loop answers an error during login with an
//! ErrorResponse, marks the connection ready for queries, shuts only the
//! write half and keeps reading: a client that failed to log in could still
//! send queries and have them run. This loop is Sluice's own. It hands each
//! message to pgwire's `process_message` (the same handlers) but:
//!
//! - any error before the login finished, and any FATAL error after, closes
//!   the connection (both halves) after the ErrorResponse;
//! - before the login finished, only startup and password messages are
//!   accepted, whatever state pgwire's codec is in;
//! - every frame's header is checked by [`FrameGuard`] before pgwire's
//!   decoder sees it (known message types only, a declared length of at
//!   least 4, at most a few KB before login and `max_message_size` after);
//! - a panic in pgwire's decoders (a frame whose body is shorter than its
//!   fields) is a protocol error: 08P01, connection closed, one log line;
//! - the login has a deadline (`login_timeout`).

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{PgWireMessageServerCodec, negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use crate::auth::LoginThrottle;

/// The most a frame may declare before the login finished: a startup
/// message (Postgres allows 10,000 bytes) or a password / SASL message.
pub const PRE_LOGIN_MAX_FRAME: usize = 10_000;

/// Limits on one connection.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Time from accept to a finished login.
    pub login_timeout: Duration,
    /// The largest message a logged-in client may send.
    pub max_message_size: usize,
    /// Refuse logins over connections without TLS.
    pub require_tls: bool,
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve<H>(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    handlers: impl FnOnce(bool) -> H,
    limits: ConnectionLimits,
    throttle: Arc<LoginThrottle>,
    admitted: bool,
) -> io::Result<()>
where
    H: PgWireServerHandlers + OnLogin,
{
    let deadline = tokio::time::sleep(limits.login_timeout);
    tokio::pin!(deadline);
    let negotiated = tokio::select! {
        _ = &mut deadline => {
            tracing::debug!(%peer, "login timed out during TLS negotiation");
            return Ok(());
        }
        s = negotiate_tls(tcp, tls) => s?,
    };
    // None: a direct TLS handshake without TLS configured.
    let Some(negotiated) = negotiated else {
        return Ok(());
    };
    // Whatever the negotiation read ahead goes through the guard too.
    let old = negotiated.into_parts();
    let guard = FrameGuard::new(old.io, old.read_buf, limits.max_message_size);
    let mut parts = FramedParts::new(guard, old.codec);
    parts.write_buf = old.write_buf;
    let mut socket = Framed::from_parts(parts);
    // The handlers know whether the connection is encrypted (SCRAM offers
    // channel binding only then).
    let secure = socket.is_secure();
    let handlers = handlers(secure);

    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();

    let mut logged_in = false;
    loop {
        let next = AssertUnwindSafe(next_frame(&mut socket)).catch_unwind();
        let msg = if logged_in {
            next.await
        } else {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::info!(%peer, "login timed out");
                    let _ = send_fatal(&mut socket, "08P01", "login timed out").await;
                    break;
                }
                m = next => m,
            }
        };
        let msg = match msg {
            Ok(Some(Ok(m))) => m,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(%peer, error = %e, "protocol violation");
                let _ = send_fatal(&mut socket, "08P01", &protocol_message(&e)).await;
                break;
            }
            Err(panic) => {
                // pgwire's decoders index into a frame's body without
                // checking it is long enough; the frame was malformed.
                let what = crate::errors::panic_text(&*panic);
                tracing::info!(%peer, error = %what, "malformed frame");
                let _ = send_fatal(&mut socket, "08P01", "invalid message format").await;
                break;
            }
        };
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let is_cancel = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
        if !logged_in && !is_cancel && !is_login_message(&msg) {
            tracing::info!(%peer, "query before login");
            let _ = send_fatal(&mut socket, "08P01", "expected a startup or password message").await;
            break;
        }
        if !admitted && !is_cancel {
            tracing::warn!(%peer, "login refused: too many connections");
            let _ = send_fatal(&mut socket, "53300", "sorry, too many clients already").await;
            break;
        }
        if !logged_in && matches!(msg, PgWireFrontendMessage::Startup(_)) {
            let user = match &msg {
                PgWireFrontendMessage::Startup(s) => s.parameters.get("user").cloned(),
                _ => None,
            };
            if limits.require_tls && !secure {
                tracing::warn!(%peer, user = user.as_deref().unwrap_or(""), "login refused: no TLS");
                let text =
                    "this server requires TLS: connect with sslmode=require (or verify-ca, verify-full)";
                let _ = send_fatal(&mut socket, "28000", text).await;
                break;
            }
            if let Err(wait) = throttle.check(peer.ip()) {
                tracing::warn!(%peer, user = user.as_deref().unwrap_or(""), "login refused: too many failed logins from this address");
                let text = format!(
                    "too many failed logins from {}; try again in {} s",
                    peer.ip(),
                    wait.as_secs().max(1)
                );
                let _ = send_fatal(&mut socket, "28000", &text).await;
                break;
            }
        }
        let extended_message = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => msg.is_extended_query(),
        };
        let processed = process_message(
            msg,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        );
        // pgwire decodes message bodies further while handling them (a SASL
        // response's fields, a Bind's values) and panics on short ones: a
        // malformed message, answered like one. Statements themselves run
        // on the engine's runtime, where their panics are reported as
        // XX000 errors of their own.
        let result = match AssertUnwindSafe(Quiet(Box::pin(processed))).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let what = crate::errors::panic_text(&*panic);
                tracing::info!(%peer, error = %what, "malformed message");
                let _ = send_fatal(&mut socket, "08P01", "invalid message format").await;
                break;
            }
        };
        if is_cancel {
            // A cancel request comes on a connection of its own.
            break;
        }
        if let Err(e) = result {
            let info: ErrorInfo = e.into();
            if !logged_in {
                let user = socket.metadata().get("user").cloned().unwrap_or_default();
                throttle.failed(peer.ip());
                let mut info = info;
                if info.code == "28P01" {
                    // One wording whatever failed (pgwire names the SCRAM
                    // user, which clients leave empty).
                    info.message = format!("password authentication failed for user \"{user}\"");
                }
                tracing::warn!(%peer, %user, code = %info.code, reason = %info.message, "login failed");
                let _ = send_error(&mut socket, fatal(info)).await;
                break;
            }
            if info.is_fatal() {
                let _ = send_error(&mut socket, info).await;
                break;
            }
            process_error(
                &mut socket,
                PgWireError::UserError(Box::new(info)),
                extended_message,
            )
            .await?;
        }
        if !logged_in
            && !matches!(
                socket.state(),
                PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
            )
        {
            logged_in = true;
            socket.get_mut().logged_in();
            let user = socket.metadata().get("user").cloned().unwrap_or_default();
            let params: Vec<(String, String)> = socket
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            handlers.logged_in(&user, &params).await;
            tracing::debug!(%peer, user = socket.metadata().get("user").map(String::as_str).unwrap_or(""), "logged in");
        }
    }
    // Dropping the socket closes both halves.
    Ok(())
}

/// Told once a connection's login finished, with the user's name and
/// the parameters of the client's startup message.
pub trait OnLogin {
    fn logged_in(
        &self,
        user: &str,
        params: &[(String, String)],
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// The next frame from the client, decoded quietly (see [`Quiet`]).
async fn next_frame<S, T>(
    socket: &mut Framed<S, PgWireMessageServerCodec<T>>,
) -> Option<Result<PgWireFrontendMessage, PgWireError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Quiet(socket.next()).await
}

/// A future whose panics are not printed by the panic hook (nor a
/// backtrace captured) while it is polled: the caller catches them and
/// reports a malformed message in one log line.
struct Quiet<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for Quiet<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _quiet = crate::errors::QuietPanics::enter();
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Messages a client may send before its login finished.
fn is_login_message(msg: &PgWireFrontendMessage) -> bool {
    matches!(
        msg,
        PgWireFrontendMessage::Startup(_)
            | PgWireFrontendMessage::PasswordMessageFamily(_)
            | PgWireFrontendMessage::SslNegotiation(_)
    )
}

fn fatal(mut info: ErrorInfo) -> ErrorInfo {
    info.severity = "FATAL".into();
    info
}

/// What a protocol error tells the client: the guard's own words, else
/// pgwire's.
fn protocol_message(e: &PgWireError) -> String {
    match e {
        PgWireError::IoError(io) => io.to_string(),
        other => other.to_string(),
    }
}

async fn send_fatal<S, T>(
    socket: &mut Framed<S, PgWireMessageServerCodec<T>>,
    code: &str,
    message: &str,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_error(
        socket,
        ErrorInfo::new("FATAL".into(), code.into(), message.into()),
    )
    .await
}

async fn send_error<S, T>(
    socket: &mut Framed<S, PgWireMessageServerCodec<T>>,
    info: ErrorInfo,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A client that does not read must not hold the connection open.
    let send = socket.send(PgWireBackendMessage::ErrorResponse(info.into()));
    match tokio::time::timeout(Duration::from_secs(5), send).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// Frontend message type bytes (protocol 3.0 and 3.2).
const FRONTEND_TYPES: &[u8] = b"BCdcfDEHFPpQSX";
/// Request codes of the untyped first frames.
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// An [`AsyncRead`] between the socket and pgwire's codec that hands up at
/// most one frame at a time and checks each frame's header first: the
/// untyped startup-phase frames (SSL, GSS and cancel requests, the startup
/// message: 8 to 10,000 bytes, known codes), then typed frames (a known
/// type byte, a length of at least 4, at most [`PRE_LOGIN_MAX_FRAME`] before
/// the login finished and `max_message_size` after). A bad header is an
/// `InvalidData` error, so the connection ends before anything is buffered
/// for it.
pub struct FrameGuard<S> {
    inner: S,
    buf: BytesMut,
    /// Bytes of the current frame not yet handed up.
    frame_left: usize,
    /// After the startup message frames carry a type byte.
    typed: bool,
    logged_in: bool,
    max_message_size: usize,
    eof: bool,
}

impl<S> FrameGuard<S> {
    pub fn new(inner: S, read_ahead: BytesMut, max_message_size: usize) -> Self {
        Self {
            inner,
            buf: read_ahead,
            frame_left: 0,
            typed: false,
            logged_in: false,
            max_message_size,
            eof: false,
        }
    }

    /// The login finished: frames up to `max_message_size` are accepted.
    pub fn logged_in(&mut self) {
        self.logged_in = true;
    }

    /// Checks the header at the front of `buf`: Ok(Some(frame length)),
    /// Ok(None) when more bytes are needed.
    fn check_header(&mut self) -> io::Result<Option<usize>> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if !self.typed {
            if self.buf.len() < 8 {
                return Ok(None);
            }
            let len = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
            let code = u32::from_be_bytes(self.buf[4..8].try_into().expect("4 bytes"));
            if !(8..=PRE_LOGIN_MAX_FRAME).contains(&len) {
                return Err(invalid(format!("invalid length of startup packet: {len}")));
            }
            match code {
                SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {}
                c if c >> 16 == 3 => self.typed = true,
                c => {
                    return Err(invalid(format!(
                        "unsupported frontend protocol {}.{}",
                        c >> 16,
                        c & 0xffff
                    )));
                }
            }
            return Ok(Some(len));
        }
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let kind = self.buf[0];
        if !FRONTEND_TYPES.contains(&kind) {
            return Err(invalid(format!("invalid frontend message type {kind}")));
        }
        let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
        if len < 4 {
            return Err(invalid(format!("invalid message length {len}")));
        }
        let len = len as usize;
        let max = if self.logged_in {
            self.max_message_size
        } else {
            PRE_LOGIN_MAX_FRAME
        };
        if len - 4 > max {
            return Err(invalid(format!(
                "message of {} bytes is larger than the limit of {max} bytes",
                len - 4
            )));
        }
        Ok(Some(1 + len))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.frame_left == 0 && !this.eof {
                match this.check_header() {
                    Ok(Some(len)) => this.frame_left = len,
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if this.frame_left > 0 && !this.buf.is_empty() {
                let n = this.frame_left.min(this.buf.len()).min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.frame_left -= n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is a partial frame: the codec reports it.
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Read ahead at most what the current frame still needs, or a
            // modest chunk when waiting for a header.
            let want = if this.frame_left > 0 {
                this.frame_left.clamp(1, 64 * 1024)
            } else {
                8 * 1024
            };
            this.buf.reserve(want);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(bytes: &[u8], logged_in: bool) -> io::Result<Vec<u8>> {
        let mut g = FrameGuard::new(bytes, BytesMut::new(), 1024);
        g.typed = true;
        g.logged_in = logged_in;
        let mut out = Vec::new();
        g.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[tokio::test]
    async fn frames_pass_one_at_a_time_and_bad_headers_fail() {
        let mut two = frame(b'Q', b"select 1\0");
        two.extend(frame(b'S', b""));
        assert_eq!(read_all(&two, true).await.unwrap(), two);
        // Length below 4, unknown type, negative length, too large.
        assert!(read_all(&[b'p', 0, 0, 0, 0], false).await.is_err());
        assert!(read_all(&frame(b'z', b""), true).await.is_err());
        assert!(read_all(&[b'Q', 0xff, 0xff, 0xff, 0xff], true).await.is_err());
        let big = frame(b'Q', &vec![b'a'; 2000]);
        assert!(read_all(&big, true).await.is_err());
        // Before login the limit is the small one even if the configured one is larger.
        let mut g = FrameGuard::new(&[b'p', 0x3f, 0xff, 0xff, 0xfe][..], BytesMut::new(), usize::MAX);
        g.typed = true;
        let mut out = Vec::new();
        assert!(g.read_to_end(&mut out).await.is_err());
    }

    #[tokio::test]
    async fn startup_frames_are_checked_then_typed_frames_follow() {
        let mut startup = Vec::new();
        let body = b"user\0u\0\0";
        startup.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        startup.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        startup.extend_from_slice(body);
        let mut all = startup.clone();
        all.extend(frame(b'p', b"secret\0"));
        let mut g = FrameGuard::new(&all[..], BytesMut::new(), 1024);
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, all);
        // An unknown protocol and a huge startup length are refused.
        let mut bad = 9u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&0x0009_0000u32.to_be_bytes());
        bad.push(0);
        let mut g = FrameGuard::new(&bad[..], BytesMut::new(), 1024);
        assert!(g.read_to_end(&mut Vec::new()).await.is_err());
        let mut huge = 0x7fff_0000u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        let mut g = FrameGuard::new(&huge[..], BytesMut::new(), 1024);
        assert!(g.read_to_end(&mut Vec::new()).await.is_err());
    }
}

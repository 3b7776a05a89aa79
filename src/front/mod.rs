//! The public edge: accepting TCP connections, the TLS handshake (with a deadline), choosing
//! by ALPN between HTTP (HTTP/1.1 and HTTP/2, or h2c prior knowledge on plain listeners) and
//! XEP-0368 Direct TLS passthrough, the header-read deadline (slowloris), and graceful
//! shutdown of connections. Each request carries a [`ClientInfo`] extension (client IP after
//! the trusted-proxy rules, and whether it came over TLS).

pub mod client_ip;
mod h1;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

pub use client_ip::{ClientInfo, Trusted};

use crate::state::AppState;

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct Edge {
    pub router: Router,
    pub state: Arc<AppState>,
    pub tls: Option<TlsAcceptor>,
}

/// Accept on `listener` until `stop`; then ask every open connection to finish (HTTP/1.1
/// closes after the current response, HTTP/2 sends GOAWAY).
pub async fn run(listener: TcpListener, edge: Edge, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let edge = edge.clone();
        let stop = stop.clone();
        tokio::spawn(async move { connection(tcp, peer, edge, stop).await });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, edge: Edge, stop: CancellationToken) {
    match &edge.tls {
        None => serve_http(tcp, peer, false, &edge, stop).await,
        // Boxed: every plain connection's task would otherwise be sized for TLS state too.
        Some(acceptor) => Box::pin(tls_connection(tcp, acceptor.clone(), peer, &edge, stop)).await,
    }
}

async fn tls_connection(tcp: TcpStream, acceptor: TlsAcceptor, peer: SocketAddr, edge: &Edge, stop: CancellationToken) {
    let config = edge.state.config();
    let cfg = &config.http;
    let deadline = Duration::from_secs(cfg.tls.handshake_timeout);
    // Pinned here so that a timed-out handshake's socket is closed (dropped) only after the
    // limit hit is counted: whoever sees the close can already see the metric.
    let mut accept = std::pin::pin!(acceptor.accept(tcp));
    let tls = match tokio::time::timeout(deadline, accept.as_mut()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::TlsHandshake);
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(tls::ALPN_XMPP_CLIENT) && cfg.tls.xmpp_passthrough {
        crate::passthrough::serve(tls, peer, edge.state.clone()).await;
        return;
    }
    serve_http(tls, peer, true, edge, stop).await
}

async fn serve_http<S>(mut io: S, peer: SocketAddr, secure: bool, edge: &Edge, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + h1::WaitReadable + Unpin + Send + 'static,
{
    let header_timeout = Duration::from_secs(edge.state.config().http.header_read_timeout);
    let started = tokio::time::Instant::now();
    // hyper-util's auto builder first reads up to 24 bytes to tell h2c prior knowledge from
    // HTTP/1.x, with no timer: a client that connects and sends nothing (or a few bytes) would
    // hold the connection forever. hyper's own header_read_timeout only starts after that.
    let prefix = tokio::select! {
        p = sniff(&mut io, header_timeout) => p,
        _ = stop.cancelled() => return,
    };
    let Some(prefix) = prefix else {
        debug!(%peer, "connection closed or silent before a request (http.header_read_timeout)");
        return;
    };
    // HTTP/1.1 requests of the usual kind are served by the lean loop (h1.rs); HTTP/2 and
    // whatever that loop hands back go to hyper.
    let prefix = if prefix.as_slice() == H2_PREFACE {
        prefix
    } else {
        match h1::serve(&mut io, prefix, started, peer, secure, edge, &stop).await {
            h1::Outcome::Done => return,
            h1::Outcome::Handoff(bytes) => bytes,
        }
    };
    // Boxed: hyper's connection state is large, and a task only needs it once it gets here.
    Box::pin(serve_hyper(Rewind { prefix, pos: 0, inner: io }, peer, secure, edge, stop)).await
}

/// Serve the rest of a connection with hyper (HTTP/2, upgrades, and what [`h1`] hands over).
async fn serve_hyper<S>(io: Rewind<S>, peer: SocketAddr, secure: bool, edge: &Edge, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = Duration::from_secs(edge.state.config().http.header_read_timeout);
    let router = edge.router.clone();
    let state = edge.state.clone();
    let activity = Arc::new(Activity::new());
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // The trusted proxies in force now (a reload may change them under a live connection).
        tag_client(&state.trusted(), peer, secure, &mut req);
        if req.method() == hyper::Method::CONNECT || req.headers().contains_key(hyper::header::UPGRADE) {
            // A WebSocket (RFC 8441 stream or HTTP/1.1 upgrade) lives past its response: the
            // session's own pings watch it, not the idle rule below.
            act.tunnel.store(true, Ordering::Relaxed);
        }
        let busy = act.begin();
        let fut = router.clone().oneshot(req);
        async move {
            let r = fut.await;
            drop(busy);
            r
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(64);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // HTTP/1.1 connections waiting for a request are cut by hyper's header_read_timeout; HTTP/2
    // has no such timer, so a connection with no request in flight for as long is closed here
    // (GOAWAY), or an h2 slowloris could hold connections with nothing but a preface.
    let mut check = tokio::time::Instant::now() + header_timeout;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(check) => {
                match activity.idle_for() {
                    Some(idle) if idle >= header_timeout => {
                        debug!(%peer, "idle HTTP connection closed after http.header_read_timeout");
                        break;
                    }
                    Some(idle) => check += header_timeout - idle,
                    None => check += header_timeout,
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

/// What every request carries for the handlers: the TCP peer and the client after the
/// trusted-proxy rules ([`ClientInfo`]).
fn tag_client<B>(trusted: &Trusted, peer: SocketAddr, secure: bool, req: &mut hyper::Request<B>) {
    let info = trusted.client(peer, secure, req.headers());
    req.extensions_mut().insert(ConnectInfo(peer));
    req.extensions_mut().insert(info);
}

/// Requests in flight on one connection, for the idle rule in [`serve_http`].
struct Activity {
    busy: AtomicUsize,
    tunnel: AtomicBool,
    /// When the connection last became idle.
    since: Mutex<Instant>,
}

struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity { busy: AtomicUsize::new(0), tunnel: AtomicBool::new(false), since: Mutex::new(Instant::now()) }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long the connection has had nothing in flight (None: busy, or carrying a tunnel).
    fn idle_for(&self) -> Option<Duration> {
        if self.tunnel.load(Ordering::Relaxed) || self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.since.lock().map(|s| s.elapsed()).unwrap_or_default())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.since.lock() {
            *s = Instant::now();
        }
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read the first bytes of a connection, as many as tell HTTP/2 prior knowledge from HTTP/1.x
/// (at most the preface's 24), within `deadline`. None on timeout, EOF or error.
async fn sniff<S: AsyncRead + Unpin>(io: &mut S, deadline: Duration) -> Option<Vec<u8>> {
    let read = async {
        let mut buf = Vec::with_capacity(H2_PREFACE.len());
        let mut b = [0u8; 24];
        while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
            let n = io.read(&mut b[..H2_PREFACE.len() - buf.len()]).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&b[..n]);
        }
        Some(buf)
    };
    tokio::time::timeout(deadline, read).await.ok().flatten()
}

/// A read smaller than this goes through the worker thread's [`SMALL_READS`] buffer.
const SMALL_READ: usize = 4096;
/// Size of the per-thread buffer small reads are served from.
const SMALL_READS_BYTES: usize = 16 * 1024;

thread_local! {
    /// Shared by every connection this worker thread serves, used only inside one `poll_read`.
    static SMALL_READS: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; SMALL_READS_BYTES].into_boxed_slice());
}

/// A stream whose first bytes, already read by [`sniff`] or the [`h1`] loop, are handed out
/// again (to hyper), and which reads on behalf of readers that keep small buffers of their own.
///
/// An upgraded connection (WebSocket) keeps this wrapper for its whole life, and tungstenite
/// reads at most its `read_buffer_size` per call (kept small, `crate::websocket`, so that an
/// idle session holds no 4 KiB buffer). Such a small read is served from one socket read into
/// the per-thread buffer instead of one system call per few hundred bytes; what did not fit is
/// kept in `prefix` until it is read, and freed then, so an idle connection holds nothing.
struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Hand out what `prefix` still holds; freed once all of it went out.
    fn replay(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.prefix.len() - self.pos).min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.prefix[start..start + n]);
        self.pos += n;
        if self.pos == self.prefix.len() {
            self.prefix = Vec::new();
            self.pos = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            self.replay(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 || buf.remaining() >= SMALL_READ {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let this = &mut *self;
        SMALL_READS.with(|b| {
            // Never borrowed across a poll; if it ever were, read directly instead.
            let Ok(mut b) = b.try_borrow_mut() else { return Pin::new(&mut this.inner).poll_read(cx, buf) };
            let mut rb = ReadBuf::new(&mut b[..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    let n = got.len().min(buf.remaining());
                    buf.put_slice(&got[..n]);
                    if n < got.len() {
                        this.prefix = got[n..].to_vec();
                        this.pos = 0;
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open HTTP connection is one task; a BOSH client keeps two per session, mostly
    /// waiting. The task must not be sized for hyper's or TLS's state (boxed on their paths).
    #[tokio::test]
    async fn connection_task_stays_small() {
        let state = AppState::new(Arc::new(crate::Config::default())).unwrap();
        let edge = Edge {
            router: crate::server::public_router(state.clone()),
            state,
            tls: None,
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_client, (tcp, peer)) = tokio::join!(TcpStream::connect(addr), async { l.accept().await.unwrap() });
        let fut = connection(tcp, peer, edge, CancellationToken::new());
        let size = std::mem::size_of_val(&fut);
        eprintln!("connection future: {size} bytes");
        // 1,728 bytes until issue 17; 1,008 with h1's `Request` built outside the loop's
        // future and its rare and short states (431, a body still arriving, the write) boxed
        // (release; 1,032 in the test profile, which is what this checks).
        assert!(size <= 1032, "connection future is {size} bytes");
    }

    /// Small reads (tungstenite's) get every byte in order, big ones too, and the bytes one
    /// socket read brought beyond a small read are kept only until they are read.
    #[tokio::test]
    async fn rewind_serves_small_reads_and_frees_what_it_kept() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = Rewind { prefix: b"head".to_vec(), pos: 0, inner: &data[..] };
        let mut got = Vec::new();
        let mut small = [0u8; 300];
        let mut big = vec![0u8; SMALL_READ];
        for i in 0.. {
            let n = if i % 5 == 4 { r.read(&mut big).await.unwrap() } else { r.read(&mut small).await.unwrap() };
            if n == 0 {
                break;
            }
            got.extend_from_slice(if i % 5 == 4 { &big[..n] } else { &small[..n] });
            if r.prefix.is_empty() {
                assert_eq!(r.prefix.capacity(), 0, "nothing kept once read");
            }
        }
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &data[..]);
        assert_eq!(r.prefix.capacity(), 0);
    }
}

//! The public edge: accepting TCP connections, the TLS handshake (with a deadline), choosing
//! by ALPN between HTTP (HTTP/1.1 and HTTP/2, or h2c prior knowledge on plain listeners) and
//! XEP-0368 Direct TLS passthrough, the header-read deadline (slowloris), and graceful
//! shutdown of connections. Each request carries a [`ClientInfo`] extension (client IP after
//! the trusted-proxy rules, and whether it came over TLS).

pub mod client_ip;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

pub use client_ip::{ClientInfo, Trusted};

use crate::server::AppState;

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct Edge {
    pub router: Router,
    pub state: Arc<AppState>,
    pub tls: Option<TlsAcceptor>,
    pub trusted: Arc<Trusted>,
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
    let cfg = &edge.state.config.http;
    match &edge.tls {
        None => serve_http(tcp, peer, false, &edge, stop).await,
        Some(acceptor) => {
            let deadline = Duration::from_secs(cfg.tls.handshake_timeout);
            let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
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
            serve_http(tls, peer, true, &edge, stop).await
        }
    }
}

async fn serve_http<S>(io: S, peer: SocketAddr, secure: bool, edge: &Edge, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = edge.router.clone();
    let trusted = edge.trusted.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let info = trusted.client(peer, secure, req.headers());
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(info);
        router.clone().oneshot(req)
    });
    let header_timeout = Duration::from_secs(edge.state.config.http.header_read_timeout);
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
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

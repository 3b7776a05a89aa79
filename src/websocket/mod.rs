//! XMPP over WebSocket (RFC 7395), and the legacy `<stream:stream>` framing that tsung and old
//! clients speak, chosen per connection by its first message.
//!
//! This module owns the HTTP upgrade ([`handler`]: `xmpp` subprotocol, Origin allow-list,
//! buffer and message sizes); [`message`] classifies client messages and writes the few
//! messages xmpp-cm originates (pure, no IO); [`session`] is the one task per connection that
//! owns the socket and the upstream halves. Upstream connecting and framing are left to
//! [`crate::upstream`], rewrites of what crosses the proxy to [`crate::relay`], the mapping of
//! every ending to a stream condition to [`crate::Error`].

pub mod message;
mod session;

pub use session::FromClient;

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::WebSocket as WsConfig;
use crate::metrics::Transport;
use crate::state::AppState;

/// The RFC 7395 subprotocol name.
pub const SUBPROTOCOL: &str = "xmpp";

/// tungstenite's default buffers are 128 KiB each, allocated per connection and kept for its
/// life. Larger messages still work (the read buffer grows as a frame needs). The read buffer
/// is also the most tungstenite reads per call; below 4 KiB those reads are served from one
/// socket read into a per-thread buffer (`front`'s `Rewind`), so a small one costs copies, not
/// system calls, and an idle session keeps only this much (or its largest frame so far)
/// instead of 4 KiB (bench/findings.md, issue 17).
const READ_BUFFER: usize = 256;
const WRITE_BUFFER: usize = 4096;

/// The WebSocket endpoint: checks the handshake, then spawns the session on `state.tracker`.
pub async fn handler(State(state): State<Arc<AppState>>, ext: axum::http::Extensions, ws: WebSocketUpgrade, headers: HeaderMap) -> Response {
    if state.shutdown.is_cancelled() {
        crate::metrics::metrics().pre_session(Transport::WebSocket, &crate::Error::Shutdown);
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if let Err((status, reason)) = check_handshake(&headers, &state.config().websocket) {
        return (status, reason).into_response();
    }
    let client = crate::front::client_ip::client_addr(&ext);
    let ip = client.map(|c| c.ip());
    let permit = match state.admission.admit(ip) {
        Ok(p) => p,
        Err(e) => {
            crate::metrics::metrics().pre_session(Transport::WebSocket, &e);
            let status = match e {
                crate::Error::TooMany { status, .. } => StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                _ => StatusCode::TOO_MANY_REQUESTS,
            };
            return (status, "too many sessions\n").into_response();
        }
    };
    let max = state.config().websocket.max_message_bytes;
    let tracker = state.tracker.clone();
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            // The session is made here, not in an async block: a block would keep the socket
            // it captured for the task's life beside the session's own (~700 bytes).
            let socket = futures_util::StreamExt::map(socket, |m| m.map(FromClient::Message));
            let mut s = session::Session::new(socket, state, Transport::WebSocket);
            s.client = client;
            s._permit = Some(permit);
            tracker.track_future(s.run())
        })
}

/// Run a Direct TLS passthrough session (see [`crate::passthrough`]) over its socket adapter,
/// which yields the client's stream as [`FromClient::Parsed`] items. `client` is the TCP peer
/// (sent upstream in the PROXY header when configured).
pub async fn run_passthrough<S>(socket: S, state: Arc<AppState>, client: Option<std::net::SocketAddr>)
where
    S: futures_util::Stream<Item = Result<FromClient, axum::Error>>
        + futures_util::Sink<axum::extract::ws::Message, Error = axum::Error>
        + Unpin
        + Send,
{
    let mut s = session::Session::new(socket, state, Transport::DirectTls);
    s.client = client;
    s.run().await
}

/// WS-01/WS-02 and the Origin allow-list: `Err((status, reason))` refuses the upgrade with a
/// plain-text reason.
pub fn check_handshake(headers: &HeaderMap, config: &WsConfig) -> Result<(), (StatusCode, &'static str)> {
    if !offers_xmpp(headers) {
        return Err((
            StatusCode::BAD_REQUEST,
            "this endpoint speaks XMPP over WebSocket (RFC 7395): offer the 'xmpp' subprotocol in Sec-WebSocket-Protocol\n",
        ));
    }
    if !config.allowed_origins.is_empty() {
        let allowed = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| config.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/'))));
        if !allowed {
            return Err((StatusCode::FORBIDDEN, "origin not allowed\n"));
        }
    }
    Ok(())
}

/// Whether `xmpp` is among the offered subprotocols (one or more headers, comma-separated).
fn offers_xmpp(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

#[cfg(test)]
mod tests;

//! A raw XMPP-over-WebSocket (RFC 7395) client on tokio-tungstenite: exact frames, login with
//! SASL PLAIN, reading to the close frame. Every wait is bounded by [`T`].

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Bound of every single receive.
pub const T: Duration = Duration::from_secs(20);

/// WebSocket handshake with `Sec-WebSocket-Protocol: xmpp`; `Err` if it fails.
pub async fn ws_try_connect(url: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("xmpp"));
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// [`ws_try_connect`], panicking on failure.
pub async fn ws_connect(url: &str) -> Ws {
    ws_try_connect(url).await.expect("websocket handshake")
}

/// Send one text frame; `Err` when the socket is gone or after [`T`].
pub async fn ws_try_send(ws: &mut Ws, text: &str) -> Result<(), String> {
    match tokio::time::timeout(T, ws.send(Message::Text(text.into()))).await {
        Ok(r) => r.map_err(|e| format!("send: {e}")),
        Err(_) => Err(format!("send blocked for {T:?}")),
    }
}

/// The next text frame (pings and pongs skipped); `Err` on a close frame, a broken socket or
/// after [`T`].
pub async fn ws_try_recv(ws: &mut Ws) -> Result<String, String> {
    loop {
        match tokio::time::timeout(T, ws.next()).await.map_err(|_| format!("no WS message within {T:?}"))? {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(format!("expected text, got {other:?}")),
        }
    }
}

/// The next text frame; panics on anything else or after [`T`].
pub async fn ws_recv(ws: &mut Ws) -> String {
    ws_try_recv(ws).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Text frames until one contains `needle` (returned); `Err` at a stream error or close.
pub async fn ws_try_recv_until(ws: &mut Ws, needle: &str) -> Result<String, String> {
    loop {
        let t = ws_try_recv(ws).await.map_err(|e| format!("waiting for {needle:?}: {e}"))?;
        if t.contains(needle) {
            return Ok(t);
        }
        if t.contains("stream:error") {
            return Err(format!("stream error waiting for {needle:?}: {t}"));
        }
    }
}

/// Text frames until one contains `needle`; returns that one.
pub async fn ws_recv_until(ws: &mut Ws, needle: &str) -> String {
    ws_try_recv_until(ws, needle).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Connect, open, SASL PLAIN, restart; the stream after the restart's features (bind and, when
/// the server has it, XEP-0198 offered). `Err` when any step fails (e.g. a draining server).
pub async fn ws_try_authenticate(url: &str, domain: &str, user: &str, pass: &str) -> Result<Ws, String> {
    let mut ws = ws_try_connect(url).await.map_err(|e| format!("websocket handshake: {e}"))?;
    let open = format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{domain}' version='1.0'/>");
    ws_try_send(&mut ws, &open).await?;
    ws_try_recv_until(&mut ws, "mechanisms").await?;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    ws_try_send(&mut ws, &format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await?;
    ws_try_recv_until(&mut ws, "success").await?;
    ws_try_send(&mut ws, &open).await?;
    ws_try_recv_until(&mut ws, "xmpp-bind").await?;
    Ok(ws)
}

/// [`ws_try_authenticate`], panicking on failure.
pub async fn ws_authenticate(url: &str, domain: &str, user: &str, pass: &str) -> Ws {
    ws_try_authenticate(url, domain, user, pass).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Full login: [`ws_authenticate`], bind (server-chosen resource), initial presence.
pub async fn ws_login(url: &str, domain: &str, user: &str, pass: &str) -> Ws {
    let mut ws = ws_authenticate(url, domain, user, pass).await;
    ws.send(Message::Text("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>".into())).await.unwrap();
    ws_recv_until(&mut ws, "<jid>").await;
    ws.send(Message::Text("<presence/>".into())).await.unwrap();
    ws
}

/// Everything until the close frame: (texts, close code).
pub async fn ws_to_close(mut ws: Ws) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(T, ws.next()).await {
            Err(_) => return (texts, None),
            Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
            Ok(Some(Ok(Message::Close(f)))) => return (texts, f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => return (texts, None),
        }
    }
}

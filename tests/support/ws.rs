//! The one XMPP-over-WebSocket (RFC 7395) test client, on tokio-tungstenite: a handshake
//! offering the `xmpp` subprotocol (plain `ws://` here; TLS or an RFC 8441 HTTP/2 stream are
//! wrapped with [`WsClient::from`]), exact text frames, `<open/>` + SASL PLAIN + bind, reading
//! to the close frame. Every wait is bounded by [`T`]: a silent peer is a failure, not a hang.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound of every single send, receive and handshake.
pub const T: Duration = Duration::from_secs(20);

/// An RFC 7395 client over `S` (a plain TCP connection unless said otherwise).
pub struct WsClient<S = MaybeTlsStream<tokio::net::TcpStream>> {
    /// The socket itself, for raw frames (binary, fragments, pings) and splitting.
    pub ws: WebSocketStream<S>,
    /// The full JID after [`WsClient::login`].
    pub jid: String,
}

/// The plain `ws://` client.
pub type Ws = WsClient;

/// `<open/>` to `domain`.
pub fn open(domain: &str) -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{domain}' version='1.0'/>")
}

/// A handshake request for `url` offering `protocol` (`None`: no subprotocol header).
pub fn request(url: &str, protocol: Option<&str>) -> Request {
    let mut req = url.into_client_request().expect("websocket request");
    if let Some(p) = protocol {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(p).expect("subprotocol header"));
    }
    req
}

impl WsClient {
    /// Handshake with `req` (within [`T`]); the server's response too, for its headers.
    pub async fn try_connect_request(req: Request) -> Result<(WsClient, Response), tokio_tungstenite::tungstenite::Error> {
        let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req)).await.expect("websocket handshake timed out")?;
        Ok((WsClient::from(ws), resp))
    }

    /// Handshake offering `xmpp`; `Err` if it is refused.
    pub async fn try_connect(url: &str) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        Ok(Self::try_connect_request(request(url, Some("xmpp"))).await?.0)
    }

    /// [`Self::try_connect`], panicking on failure.
    pub async fn connect(url: &str) -> WsClient {
        Self::try_connect(url).await.expect("websocket handshake")
    }

    /// Connect, `<open/>`, SASL PLAIN, restart: the stream after the restart's features (bind
    /// offered). `Err` when any step fails (e.g. a draining server).
    pub async fn try_authenticate(url: &str, domain: &str, user: &str, pass: &str) -> Result<WsClient, String> {
        let mut ws = Self::try_connect(url).await.map_err(|e| format!("websocket handshake: {e}"))?;
        ws.try_authenticate_here(domain, user, pass).await?;
        Ok(ws)
    }

    /// [`Self::try_authenticate`], panicking on failure.
    pub async fn authenticate(url: &str, domain: &str, user: &str, pass: &str) -> WsClient {
        Self::try_authenticate(url, domain, user, pass).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connect and [`Self::login`]: a bound session with initial presence.
    pub async fn logged_in(url: &str, domain: &str, user: &str, pass: &str) -> WsClient {
        let mut ws = Self::connect(url).await;
        ws.login(domain, user, pass).await;
        ws
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    pub fn from(ws: WebSocketStream<S>) -> Self {
        WsClient { ws, jid: String::new() }
    }

    /// Send one frame; `Err` when the socket is gone or after [`T`].
    pub async fn try_send_message(&mut self, m: Message) -> Result<(), String> {
        match tokio::time::timeout(T, self.ws.send(m)).await {
            Ok(r) => r.map_err(|e| format!("send: {e}")),
            Err(_) => Err(format!("send blocked for {T:?}")),
        }
    }

    /// Send one text frame; `Err` when the socket is gone or after [`T`].
    pub async fn try_send(&mut self, text: &str) -> Result<(), String> {
        self.try_send_message(Message::Text(text.into())).await
    }

    /// Send one text frame; panics on failure.
    pub async fn send(&mut self, text: &str) {
        self.try_send(text).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next frame that is not a ping or pong (`None` when the socket ended); panics after [`T`].
    async fn next_frame(&mut self) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        loop {
            match tokio::time::timeout(T, self.ws.next()).await.unwrap_or_else(|_| panic!("no WebSocket message within {T:?}")) {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    }

    /// The next text frame; `Err` on a close frame, a broken socket or after [`T`].
    pub async fn try_recv(&mut self) -> Result<String, String> {
        loop {
            match tokio::time::timeout(T, self.ws.next()).await.map_err(|_| format!("no WebSocket message within {T:?}"))? {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return Err(format!("expected text, got {other:?}")),
            }
        }
    }

    /// The next text frame; panics on anything else or after [`T`].
    pub async fn recv(&mut self) -> String {
        self.try_recv().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Text frames until one contains `needle` (returned); `Err` at a stream error or close.
    pub async fn try_recv_until(&mut self, needle: &str) -> Result<String, String> {
        let mut skipped = Vec::new();
        loop {
            let t = self.try_recv().await.map_err(|e| format!("waiting for {needle:?}: {e}; skipped {skipped:?}"))?;
            if t.contains(needle) {
                return Ok(t);
            }
            if t.contains("stream:error") {
                return Err(format!("stream error waiting for {needle:?}: {t}"));
            }
            skipped.push(t);
        }
    }

    /// Text frames until one contains `needle`; returns that one.
    pub async fn recv_until(&mut self, needle: &str) -> String {
        self.try_recv_until(needle).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything until the close frame: (texts, close code; `None` when the socket ended
    /// without one). The socket is dropped then, so the server's session ends at once.
    /// Panics when nothing comes for [`T`].
    pub async fn read_to_close(mut self) -> (Vec<String>, Option<u16>) {
        let mut texts = Vec::new();
        loop {
            match self.next_frame().await {
                Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
                Some(Ok(Message::Close(f))) => return (texts, f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return (texts, None),
            }
        }
    }

    /// The texts until the socket closes.
    pub async fn recv_all(self) -> Vec<String> {
        self.read_to_close().await.0
    }

    /// On an open socket: `<open/>`, SASL PLAIN, restart, up to the bind feature.
    pub async fn try_authenticate_here(&mut self, domain: &str, user: &str, pass: &str) -> Result<(), String> {
        self.try_send(&open(domain)).await?;
        self.try_recv_until("mechanisms").await?;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.try_send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>")).await?;
        self.try_recv_until("<success").await?;
        self.try_send(&open(domain)).await?;
        self.try_recv_until("urn:ietf:params:xml:ns:xmpp-bind").await?;
        Ok(())
    }

    /// Authenticate, bind (server-chosen resource), initial presence (and its echo). Sets and
    /// returns the full JID.
    pub async fn login(&mut self, domain: &str, user: &str, pass: &str) -> String {
        self.try_authenticate_here(domain, user, pass).await.unwrap_or_else(|e| panic!("{e}"));
        self.send("<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>").await;
        let r = self.recv_until("<jid>").await;
        self.jid = r.split("<jid>").nth(1).and_then(|s| s.split("</jid>").next()).unwrap_or_default().to_string();
        self.send("<presence xmlns='jabber:client'/>").await;
        self.recv_until("<presence").await;
        self.jid.clone()
    }

    /// An XMPP ping to the server is answered (the session works end to end).
    pub async fn ping(&mut self, domain: &str, id: &str) {
        self.send(&format!("<iq xmlns='jabber:client' type='get' to='{domain}' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
        let r = self.recv_until(id).await;
        assert!(r.contains("type='result'") || r.contains("type=\"result\""), "{r}");
    }
}

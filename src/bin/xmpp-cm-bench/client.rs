//! One XMPP client session over any of the three transports, and the login every session does:
//! SASL PLAIN, stream restart, resource bind, initial presence (waiting for the server to echo
//! it back, which proves the session is fully routable).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::bosh::BoshConn;
use crate::net::Sources;
use crate::xml::{self, Ev, Splitter};

/// Why a session failed, with a small closed set of kinds for the error table.
#[derive(Debug, Clone)]
pub struct BenchError {
    pub kind: &'static str,
    pub detail: String,
}

impl BenchError {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> BenchError {
        BenchError { kind, detail: detail.into() }
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError::new("io", e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Bosh,
    Ws,
}

/// How a client spreads its stanzas over the wire (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// What this generator has always done: a BOSH request carries every stanza queued while
    /// both requests were busy; the flood keeps 8 messages per session in flight.
    Batch,
    /// What a page in a browser does as issue 17 measured it: one stanza per BOSH request
    /// (WebSocket, RFC 7395, is one stanza per frame in both modes) and a small window (4).
    Browser,
}

impl ClientMode {
    /// The flood's messages in flight per session when `--window` is not given.
    pub fn default_window(self) -> usize {
        match self {
            ClientMode::Batch => 8,
            ClientMode::Browser => 4,
        }
    }

    /// At most this many stanzas in one BOSH request body.
    pub fn stanzas_per_request(self) -> usize {
        match self {
            ClientMode::Batch => usize::MAX,
            ClientMode::Browser => 1,
        }
    }
}

/// Where and how sessions connect; shared by all sessions of a run.
pub struct Target {
    pub transport: Transport,
    /// TCP: host:port; BOSH/WS: the address from the URL.
    pub addr: SocketAddr,
    /// BOSH: `/http-bind`; WS: the full URL.
    pub path: String,
    /// `Host:` header value for HTTP.
    pub host_header: String,
    pub url: String,
    pub bosh_route: Option<String>,
    pub bosh_wait: u32,
    pub mode: ClientMode,
    pub sources: Sources,
}

/// A connected session (stream open, features received).
pub enum Conn {
    Tcp { s: TcpStream, buf: BytesMut, sp: Splitter },
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Bosh(BoshConn),
}

/// `xmlns='jabber:client'` where the transport does not inherit it from a stream header.
pub fn client_ns(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "",
        _ => " xmlns='jabber:client'",
    }
}

fn tcp_header(domain: &str) -> String {
    format!("<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", xml::escape(domain))
}

fn ws_open(domain: &str) -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{}' version='1.0'/>", xml::escape(domain))
}

impl Conn {
    /// Connect and open the stream; returns the connection and the first `<stream:features/>`.
    pub async fn open(t: &Arc<Target>, domain: &str) -> Result<(Conn, Bytes)> {
        match t.transport {
            Transport::Tcp => {
                let mut s = t.sources.connect(t.addr).await.map_err(|e| BenchError::new("connect", e.to_string()))?;
                s.write_all(tcp_header(domain).as_bytes()).await?;
                let mut c = Conn::Tcp { s, buf: BytesMut::with_capacity(4096), sp: Splitter::default() };
                let f = c.features().await?;
                Ok((c, f))
            }
            Transport::Ws => {
                let s = t.sources.connect(t.addr).await.map_err(|e| BenchError::new("connect", e.to_string()))?;
                let mut req = tungstenite::client::IntoClientRequest::into_client_request(t.url.as_str())
                    .map_err(|e| BenchError::new("config", e.to_string()))?;
                req.headers_mut().insert("Sec-WebSocket-Protocol", tungstenite::http::HeaderValue::from_static("xmpp"));
                let cfg = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
                let (ws, resp) = tokio_tungstenite::client_async_with_config(req, s, Some(cfg))
                    .await
                    .map_err(|e| BenchError::new("ws_handshake", e.to_string()))?;
                if resp.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()) != Some(b"xmpp") {
                    return Err(BenchError::new("ws_handshake", "no xmpp subprotocol in the answer"));
                }
                let mut c = Conn::Ws(Box::new(ws));
                c.send(ws_open(domain).as_bytes()).await?;
                let f = c.features().await?;
                Ok((c, f))
            }
            Transport::Bosh => {
                let mut c = Conn::Bosh(BoshConn::start(t.clone(), domain.to_string()));
                let f = c.features().await?;
                Ok((c, f))
            }
        }
    }

    /// Restart the stream after SASL success; returns the new features.
    pub async fn restart(&mut self, domain: &str) -> Result<Bytes> {
        match self {
            Conn::Tcp { s, sp, .. } => {
                sp.reset();
                s.write_all(tcp_header(domain).as_bytes()).await?;
            }
            Conn::Ws(_) => self.send(ws_open(domain).as_bytes()).await?,
            Conn::Bosh(b) => b.restart()?,
        }
        self.features().await
    }

    /// Wait for `<stream:features/>` (skipping the stream header or `<open/>`).
    async fn features(&mut self) -> Result<Bytes> {
        loop {
            let f = self.recv().await?;
            match xml::name(&f) {
                "stream:features" | "features" => return Ok(f),
                "open" | "stream:stream" => continue,
                other => return Err(BenchError::new("protocol", format!("expected features, got <{other}>"))),
            }
        }
    }

    /// Write stanzas (already serialized).
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Conn::Tcp { s, .. } => s.write_all(data).await.map_err(Into::into),
            Conn::Ws(ws) => {
                let text = std::str::from_utf8(data).map_err(|_| BenchError::new("internal", "non UTF-8"))?;
                ws.send(Message::text(text)).await.map_err(ws_err)
            }
            Conn::Bosh(b) => b.send(data),
        }
    }

    /// The next top-level element from the server. Cancel-safe: it may be dropped inside a
    /// `select!` without losing input. The TCP stream header comes back as `<stream:stream>`;
    /// stream errors and stream ends are errors.
    pub async fn recv(&mut self) -> Result<Bytes> {
        let f = match self {
            Conn::Tcp { s, buf, sp } => loop {
                match sp.next(buf).map_err(|e| BenchError::new("protocol", e))? {
                    Some(Ev::Frame(f)) => break f,
                    Some(Ev::Header(h, _)) => break h,
                    Some(Ev::End) => return Err(BenchError::new("closed", "server closed the stream")),
                    None => {
                        if buf.capacity() - buf.len() < 1024 {
                            buf.reserve(4096);
                        }
                        if s.read_buf(buf).await? == 0 {
                            return Err(BenchError::new("closed", "connection closed"));
                        }
                    }
                }
            },
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break Bytes::from(t),
                    Some(Ok(Message::Close(_))) | None => return Err(BenchError::new("closed", "websocket closed")),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(ws_err(e)),
                }
            },
            Conn::Bosh(b) => b.recv().await?,
        };
        match xml::name(&f) {
            "stream:error" => Err(BenchError::new("stream_error", String::from_utf8_lossy(&f).into_owned())),
            "close" if matches!(self, Conn::Ws(_)) => Err(BenchError::new("closed", "server sent <close/>")),
            _ => Ok(f),
        }
    }

    /// End the session politely (best effort, bounded by the caller).
    pub async fn close(&mut self) {
        match self {
            Conn::Tcp { s, .. } => {
                let _ = s.write_all(b"</stream:stream>").await;
                let _ = s.shutdown().await;
            }
            Conn::Ws(ws) => {
                let _ = ws.send(Message::text("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")).await;
                let _ = ws.close().await;
            }
            Conn::Bosh(b) => b.close().await,
        }
    }
}

fn ws_err(e: tungstenite::Error) -> BenchError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => BenchError::new("closed", e.to_string()),
        tungstenite::Error::Io(io) => io.into(),
        e => BenchError::new("ws", e.to_string()),
    }
}

/// A logged-in session.
pub struct Session {
    pub conn: Conn,
    pub jid: String,
}

/// Open, SASL PLAIN, restart, bind, presence; wait for the presence echo.
pub async fn login(t: &Arc<Target>, domain: &str, user: &str, pass: &str, resource: &str) -> Result<Session> {
    let ns = client_ns(t.transport);
    let (mut conn, features) = Conn::open(t, domain).await?;
    if !xml::contains(&features, ">PLAIN<") {
        return Err(BenchError::new("no_plain", String::from_utf8_lossy(&features).into_owned()));
    }
    let cred = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    conn.send(format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{cred}</auth>").as_bytes()).await?;
    loop {
        let f = conn.recv().await?;
        match xml::name(&f) {
            "success" => break,
            "failure" => return Err(BenchError::new("auth_failed", String::from_utf8_lossy(&f).into_owned())),
            _ => continue,
        }
    }
    let features = conn.restart(domain).await?;
    if !xml::contains(&features, "urn:ietf:params:xml:ns:xmpp-bind") {
        return Err(BenchError::new("protocol", "no bind feature after SASL"));
    }
    conn.send(
        format!("<iq type='set' id='bind1'{ns}><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{}</resource></bind></iq>", xml::escape(resource))
            .as_bytes(),
    )
    .await?;
    let jid = loop {
        let f = conn.recv().await?;
        if xml::name(&f) == "iq" && xml::attr(&f, "id") == Some("bind1") {
            if xml::attr(&f, "type") != Some("result") {
                return Err(BenchError::new("bind_failed", String::from_utf8_lossy(&f).into_owned()));
            }
            break xml::child_text(&f, "jid").map(str::to_owned).ok_or_else(|| BenchError::new("bind_failed", "no <jid/>"))?;
        }
    };
    conn.send(format!("<presence{ns}/>").as_bytes()).await?;
    loop {
        let f = conn.recv().await?;
        if xml::name(&f) == "presence" {
            break;
        }
    }
    Ok(Session { conn, jid })
}

/// How long a session may take to log in before it counts as `login_timeout`.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

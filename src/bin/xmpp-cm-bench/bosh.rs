//! A BOSH (XEP-0124/0206) client session as a browser library runs one: `hold=1`, so at most
//! two requests in flight on at most two keep-alive HTTP/1.1 connections, one request always
//! held open for the server to answer with stanzas, stanzas queued while both are busy and sent
//! together in the next body (`--mode batch`) or one per body (`--mode browser`).
//!
//! Like a page's event loop, the session runs in the caller's task: `send` only queues, and
//! `recv` hands out the stanzas of a response one by one and sends the next request (queued
//! stanzas, else an empty poll when nothing is held) only once the caller has taken them all, so
//! what it sent in reaction leaves in the same body — as the stanzas a page's handlers send
//! while one response is being processed do (strophe.js queues them until the turn ends). No
//! driver task and no channel hop sits between the workload and its connections. `recv` is
//! cancel-safe like the other transports'. Requests progress only while `recv` is polled, and a
//! session dropped without `close` sends no terminate (the server ends it on inactivity).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{BenchError, Result, Target};
use crate::xml;

const NS: &str = "http://jabber.org/protocol/httpbind";

type Inflight = std::pin::Pin<Box<dyn std::future::Future<Output = (Option<HttpConn>, Result<Bytes>)> + Send>>;

pub struct BoshConn {
    t: Arc<Target>,
    domain: String,
    sid: Option<String>,
    rid: u64,
    /// Idle keep-alive connections (at most two exist).
    idle: Vec<HttpConn>,
    inflight: FuturesUnordered<Inflight>,
    /// Stanzas not sent yet, one entry per `send`.
    pending: VecDeque<Vec<u8>>,
    restart: bool,
    created: bool,
    /// Stanzas of responses not yet taken by the caller.
    events: VecDeque<Bytes>,
    /// The session failed; reported once the stanzas before the failure were taken.
    failed: Option<BenchError>,
    dead: bool,
}

impl BoshConn {
    /// A new session; the creation request leaves on the first `recv`.
    pub fn start(t: Arc<Target>, domain: String) -> BoshConn {
        let rid = 1_000_000 + (rand_u32() as u64 % 1_000_000_000);
        BoshConn {
            t,
            domain,
            sid: None,
            rid,
            idle: Vec::new(),
            inflight: FuturesUnordered::new(),
            pending: VecDeque::new(),
            restart: false,
            created: false,
            events: VecDeque::new(),
            failed: None,
            dead: false,
        }
    }

    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        if self.dead {
            return Err(BenchError::new("closed", "BOSH session ended"));
        }
        self.pending.push_back(data.to_vec());
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        if self.dead {
            return Err(BenchError::new("closed", "BOSH session ended"));
        }
        self.restart = true;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Bytes> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            if self.dead {
                return Err(BenchError::new("closed", "BOSH session ended"));
            }
            self.fill();
            let Some((conn, res)) = self.inflight.next().await else {
                self.dead = true;
                return Err(BenchError::new("protocol", "no request in flight"));
            };
            if let Some(c) = conn {
                self.idle.push(c);
            }
            if let Err(e) = res.and_then(|b| self.on_body(&b)) {
                self.failed = Some(e);
                self.dead = true;
            }
        }
    }

    pub async fn close(&mut self) {
        if !self.dead {
            self.dead = true;
            self.terminate().await;
        }
    }

    /// Send what can be sent: the creation request; queued stanzas or a restart when a slot is
    /// free; an empty poll when nothing is held.
    fn fill(&mut self) {
        if !self.created {
            self.created = true;
            let route = self.t.bosh_route.as_deref().map(|r| format!(" route='{}'", xml::escape(r))).unwrap_or_default();
            let body = format!(
                "<body content='text/xml; charset=utf-8' hold='1' rid='{}' to='{}' ver='1.6' wait='{}' xml:lang='en' xmpp:version='1.0' xmlns='{NS}' xmlns:xmpp='urn:xmpp:xbosh'{route}/>",
                self.rid,
                xml::escape(&self.domain),
                self.t.bosh_wait
            );
            self.rid += 1;
            self.post(body.into_bytes());
            return;
        }
        let Some(sid) = self.sid.clone() else { return };
        while self.inflight.len() < 2 && (!self.pending.is_empty() || self.restart || self.inflight.is_empty()) {
            let restart = if std::mem::take(&mut self.restart) {
                format!(" to='{}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'", xml::escape(&self.domain))
            } else {
                String::new()
            };
            let mut body = format!("<body rid='{}' sid='{}' xmlns='{NS}'{restart}>", self.rid, sid).into_bytes();
            let n = self.pending.len().min(self.t.mode.stanzas_per_request());
            for stanza in self.pending.drain(..n) {
                body.extend_from_slice(&stanza);
            }
            body.extend_from_slice(b"</body>");
            self.rid += 1;
            self.post(body);
        }
    }

    fn post(&mut self, body: Vec<u8>) {
        let conn = self.idle.pop();
        let t = self.t.clone();
        let limit = Duration::from_secs(self.t.bosh_wait as u64 + 15);
        self.inflight.push(Box::pin(async move {
            match tokio::time::timeout(limit, request(&t, conn, &body)).await {
                Ok(r) => r,
                Err(_) => (None, Err(BenchError::new("http_timeout", "no BOSH response within wait + 15 s"))),
            }
        }));
    }

    fn on_body(&mut self, body: &[u8]) -> Result<()> {
        let (root, children) = xml::split_document(body).map_err(|e| BenchError::new("protocol", format!("bad body: {e}")))?;
        if xml::name(&root) != "body" {
            return Err(BenchError::new("protocol", "response is not a <body/>"));
        }
        if self.sid.is_none() {
            match xml::attr(&root, "sid") {
                Some(s) => self.sid = Some(s.to_string()),
                None => return Err(BenchError::new("bosh_terminate", format!("no sid: {}", String::from_utf8_lossy(&root)))),
            }
        }
        self.events.extend(children);
        if xml::attr(&root, "type") == Some("terminate") {
            let cond = xml::attr(&root, "condition").unwrap_or("none");
            return Err(BenchError::new("bosh_terminate", format!("condition {cond}")));
        }
        Ok(())
    }

    async fn terminate(&mut self) {
        let Some(sid) = self.sid.clone() else { return };
        let body = format!(
            "<body rid='{}' sid='{}' type='terminate' xmlns='{NS}'><presence type='unavailable' xmlns='jabber:client'/></body>",
            self.rid, sid
        );
        self.rid += 1;
        let conn = self.idle.pop();
        let _ = tokio::time::timeout(Duration::from_secs(3), request(&self.t, conn, body.as_bytes())).await;
    }
}

/// POST `body`; on a reused connection that turns out closed, retry once on a new one.
async fn request(t: &Target, conn: Option<HttpConn>, body: &[u8]) -> (Option<HttpConn>, Result<Bytes>) {
    let reused = conn.is_some();
    let mut c = match conn {
        Some(c) => c,
        None => match t.sources.connect(t.addr).await {
            Ok(s) => HttpConn::new(s),
            Err(e) => return (None, Err(BenchError::new("connect", e.to_string()))),
        },
    };
    match c.post(t, body).await {
        Ok((b, keep)) => (keep.then_some(c), Ok(b)),
        Err(PostError::Stale) if reused => match t.sources.connect(t.addr).await {
            Ok(s) => {
                let mut c = HttpConn::new(s);
                match c.post(t, body).await {
                    Ok((b, keep)) => (keep.then_some(c), Ok(b)),
                    Err(e) => (None, Err(e.into())),
                }
            }
            Err(e) => (None, Err(BenchError::new("connect", e.to_string()))),
        },
        Err(e) => (None, Err(e.into())),
    }
}

enum PostError {
    /// Closed before any response byte: a keep-alive connection the server had dropped.
    Stale,
    Other(BenchError),
}

impl From<PostError> for BenchError {
    fn from(e: PostError) -> Self {
        match e {
            PostError::Stale => BenchError::new("closed", "HTTP connection closed before a response"),
            PostError::Other(b) => b,
        }
    }
}

/// A minimal HTTP/1.1 client connection: one request at a time, Content-Length or chunked
/// responses, keep-alive unless the server says `Connection: close`.
struct HttpConn {
    s: TcpStream,
    buf: BytesMut,
}

impl HttpConn {
    fn new(s: TcpStream) -> HttpConn {
        HttpConn { s, buf: BytesMut::with_capacity(2048) }
    }

    async fn post(&mut self, t: &Target, body: &[u8]) -> std::result::Result<(Bytes, bool), PostError> {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            t.path,
            t.host_header,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let io = |e: std::io::Error| PostError::Other(e.into());
        if let Err(e) = self.s.write_all(&req).await {
            return Err(if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) { PostError::Stale } else { io(e) });
        }
        self.buf.clear();
        // Headers.
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(PostError::Other(BenchError::new("http", "headers too long")));
            }
            self.buf.reserve(2048);
            match self.s.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Err(PostError::Stale),
                Ok(0) => return Err(PostError::Other(BenchError::new("closed", "HTTP connection closed mid-response"))),
                Ok(_) => {}
                Err(e) if self.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => return Err(PostError::Stale),
                Err(e) => return Err(io(e)),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len: Option<usize> = None;
        let mut chunked = false;
        let mut keep = true;
        for l in lines {
            let Some((k, v)) = l.split_once(':') else { continue };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                keep = false;
            }
        }
        let _ = self.buf.split_to(head_end);
        let body = if chunked {
            self.read_chunked().await?
        } else if let Some(n) = len {
            while self.buf.len() < n {
                self.buf.reserve(n - self.buf.len());
                if self.s.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                    return Err(PostError::Other(BenchError::new("closed", "HTTP body cut short")));
                }
            }
            self.buf.split_to(n).freeze()
        } else {
            keep = false;
            while self.s.read_buf(&mut self.buf).await.map_err(io)? != 0 {}
            self.buf.split().freeze()
        };
        if status != 200 {
            let kind = match status {
                404 => "http_404",
                400..=499 => "http_4xx",
                500..=599 => "http_5xx",
                _ => "http_other",
            };
            return Err(PostError::Other(BenchError::new(kind, format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))));
        }
        Ok((body, keep))
    }

    async fn read_chunked(&mut self) -> std::result::Result<Bytes, PostError> {
        let io = |e: std::io::Error| PostError::Other(e.into());
        let mut out = BytesMut::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.buf.reserve(1024);
                if self.s.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                    return Err(PostError::Other(BenchError::new("closed", "chunked body cut short")));
                }
            };
            let size_s = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| PostError::Other(BenchError::new("http", "bad chunk size")))?;
            let _ = self.buf.split_to(line_end + 2);
            while self.buf.len() < size + 2 {
                self.buf.reserve(size + 2);
                if self.s.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                    return Err(PostError::Other(BenchError::new("closed", "chunked body cut short")));
                }
            }
            if size == 0 {
                let _ = self.buf.split_to(2);
                return Ok(out.freeze());
            }
            out.extend_from_slice(&self.buf[..size]);
            let _ = self.buf.split_to(size + 2);
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    u32::from_le_bytes(b)
}

//! The task that runs one WebSocket session: it owns the socket and, once the client has opened
//! its stream, both halves of the upstream connection, and moves elements between them with one
//! `tokio::select!` loop (shutdown, client message, upstream frame, and one timer for the pings
//! and every deadline).
//! Every way the loop can end is an [`Ending`] carrying a [`crate::Error`]; [`Session::finish`]
//! turns it into what the client sees (stream error from `Error::stream_condition`, `<close/>`,
//! WebSocket close code) and hands it to [`Link::end`] for what the upstream sees.
//!
//! The same task runs XEP-0368 Direct TLS sessions (`crate::passthrough`): their socket yields
//! [`FromClient::Parsed`] items, frames of the client's XML stream already classified, instead of
//! WebSocket messages.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::message::{self, Framing, Inbound, OpenRequest, Reply};
use crate::error::Error;
use crate::link::{Event, Link};
use crate::metrics::{metrics, SessionGuard, Transport};
use crate::relay;
use crate::state::AppState;
use crate::upstream::OpenParams;
use crate::xml::{ns, Element, Limits, XmlError};

/// How long after a client `<close/>` we wait for the upstream's `</stream:stream>` (WS-16;
/// xmpp.js gives up on our `<close/>` after 2 s).
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a client may keep an upgraded socket without opening a stream.
const OPEN_WAIT: Duration = Duration::from_secs(30);
/// Bound on the goodbye (stream error, `<close/>`, close frame) to a client that may be gone.
const BYE_WAIT: Duration = Duration::from_secs(2);
/// Bound on one message to the client when pings are off (otherwise `ping_timeout`).
const DEFAULT_SEND_WAIT: Duration = Duration::from_secs(30);

/// RFC 6455 §7.4.1 close codes we use.
mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// Why and how a session ends.
#[derive(Debug)]
pub(super) struct Ending {
    pub error: Error,
    /// WebSocket close code; the XMPP meaning is in the stream error, this only names the
    /// frame-level faults (1003 binary, 1007 UTF-8, 1009 size) that RFC 6455 has codes for.
    pub code: u16,
    /// Whether the client can still be told anything (false once the socket is known dead).
    pub tell_client: bool,
}

impl Ending {
    fn new(error: Error) -> Self {
        Ending { error, code: code::NORMAL, tell_client: true }
    }
    fn with_code(error: Error, code: u16) -> Self {
        Ending { error, code, tell_client: true }
    }
    /// The socket is gone: nothing more can reach the client.
    fn gone(detail: &str) -> Self {
        tracing::debug!(detail, "websocket client gone");
        Ending { error: Error::ClientGone, code: code::NORMAL, tell_client: false }
    }
}

/// What a WebSocket read error means for us. tungstenite's error type is not nameable from this
/// crate (axum wraps it and it is not a direct dependency), so its stable `Display` prefixes are
/// matched; a unit test pins them against the tungstenite version axum uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadFault {
    /// Text message not UTF-8 (RFC 6455 §8.1) → 1007.
    Utf8,
    /// Message or frame over `max_message_bytes` → 1009.
    TooBig,
    /// RFC 6455 violation (unmasked frame, bad opcode, reserved bits …) → 1002.
    Protocol,
    /// Reset, EOF, IO error: the client is gone.
    Lost,
}

pub(super) fn read_fault(e: &axum::Error) -> ReadFault {
    let s = e.to_string();
    if s.starts_with("UTF-8 encoding error") {
        ReadFault::Utf8
    } else if s.starts_with("Space limit exceeded") {
        ReadFault::TooBig
    } else if s.starts_with("WebSocket protocol error: Connection reset without closing handshake") {
        ReadFault::Lost
    } else if s.starts_with("WebSocket protocol error") {
        ReadFault::Protocol
    } else {
        ReadFault::Lost
    }
}

/// One item from the client's socket.
pub enum FromClient {
    /// A WebSocket message (its text is classified by [`message::classify`]).
    Message(Message),
    /// The next item of a Direct TLS client's XML stream, framed and classified by
    /// `crate::passthrough` (no text round trip), with the bytes it took on the wire.
    Parsed { inbound: Box<Result<Inbound, Error>>, bytes: usize },
}

/// Liveness of the client: pings at `interval`, session over if nothing arrives `timeout`
/// after a ping.
struct Keepalive {
    interval: Option<Duration>,
    timeout: Duration,
    next_ping: Instant,
    /// Set when a ping went out and no frame has arrived since.
    deadline: Option<Instant>,
}

impl Keepalive {
    fn new(interval: u64, timeout: u64) -> Self {
        let interval = (interval > 0).then(|| Duration::from_secs(interval));
        let now = Instant::now();
        Keepalive {
            interval,
            timeout: Duration::from_secs(timeout.max(1)),
            next_ping: now + interval.unwrap_or(Duration::ZERO),
            deadline: None,
        }
    }
    fn alive(&mut self) {
        self.deadline = None;
    }
    fn pinged(&mut self) {
        let now = Instant::now();
        if self.deadline.is_none() {
            self.deadline = Some(now + self.timeout);
        }
        self.next_ping = now + self.interval.unwrap_or(Duration::ZERO);
    }
}

pub(super) struct Session<S> {
    socket: S,
    state: Arc<AppState>,
    /// Chosen by the first message; `None` until then.
    framing: Option<Framing>,
    /// Whether our header (`<open/>` or legacy) has gone out; errors need one first.
    opened: bool,
    /// The domain the client asked for, for a fallback `from` on our `<open/>`.
    asked_domain: Option<String>,
    /// The upstream stream, once the client has opened its own.
    up: Option<Link>,
    limits: Limits,
    keepalive: Keepalive,
    /// Bound on one send to the client: a peer that stops reading must not hold the task.
    send_wait: Duration,
    /// Records the session in the metrics (active gauge, duration, how it ended) when dropped.
    guard: SessionGuard,
    /// The client's address, for the upstream PROXY header (`upstream.proxy_protocol`).
    pub(super) client: Option<std::net::SocketAddr>,
    /// `limits.client_bytes_per_sec`: while it is paused, the client is not read.
    throttle: Option<Box<crate::limits::Throttle>>,
    /// Cluster mode, draining: when this session is closed ([`AppState::drain_at`]).
    drain_at: Option<Instant>,
    /// The admission slot (WebSocket; Direct TLS holds its own), released with the session.
    pub(super) _permit: Option<crate::limits::Permit>,
}

enum Flow {
    Continue,
    End(Ending),
}

impl<S> Session<S>
where
    S: Stream<Item = Result<FromClient, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send,
{
    pub(super) fn new(socket: S, state: Arc<AppState>, transport: Transport) -> Self {
        let c = state.config();
        let limits = crate::limits::client_xml(&c.limits, c.upstream.max_stanza_bytes);
        let keepalive = Keepalive::new(c.websocket.ping_interval, c.websocket.ping_timeout);
        let send_wait = if c.websocket.ping_interval > 0 {
            Duration::from_secs(c.websocket.ping_timeout.max(1))
        } else {
            DEFAULT_SEND_WAIT
        };
        let guard = metrics().session_started(transport);
        let throttle = crate::limits::Throttle::new(c.limits.client_bytes_per_sec, c.upstream.max_stanza_bytes, std::time::Instant::now());
        Session {
            socket,
            state,
            framing: None,
            opened: false,
            asked_domain: None,
            up: None,
            limits,
            keepalive,
            send_wait,
            guard,
            client: None,
            throttle,
            drain_at: None,
            _permit: None,
        }
    }

    /// Run to the end, then say goodbye to both sides.
    ///
    /// Not an `async fn`: its future would keep `self` twice (the argument and the body's own
    /// binding of it, ~900 bytes each) for the session's whole life. The block keeps the one
    /// it captured.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let ending = self.drive().await;
            self.guard.end(&ending.error);
            let kind = ending.error.kind();
            match ending.error.side() {
                crate::Side::Client => tracing::debug!(kind, error = %ending.error, "websocket session ended"),
                _ => tracing::info!(kind, error = %ending.error, "websocket session ended"),
            }
            Box::pin(self.finish(ending)).await;
        }
    }

    async fn drive(&mut self) -> Ending {
        // The drain's token, then, once the stream is open, its domain's (also cancelled by a
        // reload that stops serving the domain).
        let mut shutdown = self.state.shutdown.clone();
        let mut domain_watched = false;
        let open_deadline = Instant::now() + OPEN_WAIT;
        loop {
            if !domain_watched {
                if let Some(up) = &self.up {
                    shutdown = self.state.domain_token(up.domain());
                    domain_watched = true;
                }
            }
            // Client stanzas are queued for the upstream while more client messages are ready,
            // then written in one go: the server handles one read per batch, not per stanza.
            let paused_until = self.throttle.as_ref().and_then(|t| t.paused_until());
            let paused = paused_until.is_some();
            if self.up.as_ref().is_some_and(Link::has_queued) {
                let ready = if paused { None } else { futures_util::FutureExt::now_or_never(self.socket.next()) };
                if let Some(msg) = ready {
                    self.keepalive.alive();
                    if let Flow::End(e) = self.on_client(msg).await {
                        return e;
                    }
                    continue;
                }
                if let Some(up) = self.up.as_mut() {
                    if let Err(e) = Box::pin(up.flush()).await {
                        return Ending::new(e);
                    }
                }
            }
            let ping_enabled = self.keepalive.interval.is_some();
            let next_ping = self.keepalive.next_ping;
            // One timer for every deadline (a timer in the future costs every idle session its
            // 112 bytes): the next ping; the end of a throttle pause, else the pong deadline (a
            // throttled client is alive, it is sending too fast, so its pong deadline does not
            // run while we are not reading it); a draining replica's point for this session;
            // and, until the stream is open, the wait for `<open/>`.
            let deadline = paused_until.map(Instant::from_std).or(self.keepalive.deadline);
            let deadline = match (deadline, self.drain_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let waiting_open = self.up.is_none();
            let wake = [ping_enabled.then_some(next_ping), deadline, waiting_open.then_some(open_deadline)].into_iter().flatten().min();
            let link = self.up.as_mut();
            tokio::select! {
                _ = shutdown.cancelled(), if self.drain_at.is_none() => {
                    if !self.state.shutdown.is_cancelled() {
                        // Not the drain: a reload stopped serving this session's domain.
                        return Ending::new(Error::HostGone);
                    }
                    let mut jitter = [0u8; 4];
                    let _ = getrandom::getrandom(&mut jitter);
                    match self.state.drain_at(u32::from_ne_bytes(jitter)) {
                        Some(at) => self.drain_at = Some(at),
                        None => return Ending::with_code(self.state.drain_error(self.guard.transport()), code::GOING_AWAY),
                    }
                }
                msg = self.socket.next(), if !paused => {
                    self.keepalive.alive();
                    if let Flow::End(e) = self.on_client(msg).await {
                        return e;
                    }
                }
                event = next_event(link) => {
                    if let Flow::End(e) = self.on_upstream(event).await {
                        return e;
                    }
                }
                _ = sleep_until(wake.unwrap_or(next_ping)), if wake.is_some() => {
                    let now = Instant::now();
                    if waiting_open && open_deadline <= now {
                        return Ending::new(Error::ClientGone);
                    }
                    if deadline.is_some_and(|d| d <= now) {
                        if self.drain_at.is_some_and(|d| d <= now) {
                            return Ending::with_code(self.state.drain_error(self.guard.transport()), code::GOING_AWAY);
                        } else if let Some(t) = self.throttle.as_mut().filter(|_| paused) {
                            t.resume(std::time::Instant::now());
                            self.keepalive.alive();
                        } else {
                            metrics().ws_ping_missed();
                            return Ending::new(Error::ClientGone);
                        }
                    } else if ping_enabled && next_ping <= now {
                        self.keepalive.pinged();
                        if let Err(e) = self.send(Message::Ping(Default::default())).await {
                            return e;
                        }
                    }
                }
            }
        }
    }

    async fn on_client(&mut self, msg: Option<Result<FromClient, axum::Error>>) -> Flow {
        // Matched here rather than in a function of its own: an async fn keeps its arguments
        // for its whole life, so a nested one would keep the `Inbound` in every idle session.
        match self.client_inbound(msg) {
            Ok(Inbound::Nothing) => Flow::Continue,
            // Rare states are boxed so that their futures do not size every idle session.
            Ok(Inbound::Open(req, framing)) => Box::pin(self.on_open(req, framing)).await,
            Ok(Inbound::Close) => Flow::End(Box::pin(self.client_close()).await),
            // Checked and queued without an await, so that the element is not kept (three
            // times, as an async fn's argument and locals) in the future while it flushes.
            Ok(Inbound::Element(el)) => match self.on_element(el) {
                Ok(true) => self.flush_upstream().await,
                Ok(false) => Flow::Continue,
                Err(ending) => Flow::End(ending),
            },
            Err(flow) => flow,
        }
    }

    /// What a client item means: the next [`Inbound`], or how the session goes on without one
    /// (a ping, or the end).
    fn client_inbound(&mut self, msg: Option<Result<FromClient, axum::Error>>) -> Result<Inbound, Flow> {
        let msg = match msg {
            Some(Ok(FromClient::Parsed { inbound, bytes })) => {
                if let Some(th) = self.throttle.as_mut() {
                    th.take(bytes, std::time::Instant::now());
                }
                return (*inbound).map_err(|e| Flow::End(Ending::new(e)));
            }
            Some(Ok(FromClient::Message(m))) => Some(Ok(m)),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        let text = match msg {
            None => return Err(Flow::End(Ending::gone("socket closed"))),
            Some(Err(e)) => {
                return Err(Flow::End(match read_fault(&e) {
                    ReadFault::Utf8 => Ending::with_code(XmlError::InvalidUtf8.into(), code::INVALID_DATA),
                    ReadFault::TooBig => Ending::with_code(
                        XmlError::TooLarge(self.state.config().websocket.max_message_bytes).into(),
                        code::TOO_BIG,
                    ),
                    ReadFault::Protocol => Ending {
                        error: Error::ClientStream { condition: "not-well-formed", detail: e.to_string() },
                        code: code::PROTOCOL,
                        // The frame stream is out of step: only a close frame makes sense now.
                        tell_client: false,
                    },
                    ReadFault::Lost => Ending::gone("read error"),
                }))
            }
            Some(Ok(Message::Text(t))) => {
                if let Some(th) = self.throttle.as_mut() {
                    th.take(t.len(), std::time::Instant::now());
                }
                t
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(Flow::End(Ending::with_code(
                    Error::ClientStream { condition: "unsupported-encoding", detail: "binary message".into() },
                    code::UNSUPPORTED,
                )))
            }
            // tungstenite queues the pong itself; any frame counts as a sign of life.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Err(Flow::Continue),
            // Closing the socket without `<close/>` is a lost client (WS-24), not a close.
            Some(Ok(Message::Close(_))) => return Err(Flow::End(Ending::gone("close frame without <close/>"))),
        };
        let legacy = self.state.config().websocket.legacy_framing;
        let inbound = match message::classify(text.as_str(), self.framing, legacy, &self.limits) {
            Ok(i) => i,
            Err(e) => {
                let code = match &e {
                    Error::ClientXml(XmlError::TooLarge(_)) => code::TOO_BIG,
                    _ => code::NORMAL,
                };
                return Err(Flow::End(Ending::with_code(e, code)));
            }
        };
        Ok(inbound)
    }

    async fn on_open(&mut self, req: OpenRequest, framing: Framing) -> Flow {
        if self.framing.is_none() {
            self.framing = Some(framing);
        }
        if self.asked_domain.is_none() {
            self.asked_domain = req.to.clone();
        }
        let Some(to) = req.to.clone() else {
            return Flow::End(Ending::new(Error::ImproperAddressing));
        };
        let params = OpenParams {
            domain: to,
            lang: req.lang.clone().unwrap_or_else(|| "en".into()),
            version: req.version.clone().unwrap_or_else(|| "1.0".into()),
            from: req.from.clone(),
            client: self.client,
        };
        if let Some(up) = self.up.as_mut() {
            // Stream restart (WS-15): same TCP connection, same domain; our `<open/>` follows
            // when the upstream's new header arrives.
            return match up.restart(&params).await {
                Ok(()) => Flow::Continue,
                Err(e) => Flow::End(Ending::new(e)),
            };
        }
        if !self.state.config().serves(&params.domain) {
            return Flow::End(Ending::new(Error::HostUnknown));
        }
        let shutdown = self.state.shutdown.clone();
        let up_ctx = self.state.upstream();
        let opened = tokio::select! {
            c = Link::open(&up_ctx, &params, None) => c,
            _ = shutdown.cancelled() => {
                return Flow::End(Ending::with_code(self.state.drain_error(self.guard.transport()), code::GOING_AWAY));
            }
        };
        let (link, opened) = match opened {
            Ok(o) => o,
            Err(e) => return Flow::End(Ending::new(e)),
        };
        let reply = Reply::from_upstream(&opened.header, &params.domain, &message::local_id());
        self.up = Some(link);
        if let Err(e) = self.send_open(&reply).await {
            return Flow::End(e);
        }
        self.relay_to_client(opened.features).await
    }

    /// A client element, refused or queued for the upstream: `Ok(true)` when the queue is full
    /// and must be flushed now.
    fn on_element(&mut self, el: Element) -> Result<bool, Ending> {
        let Some(up) = self.up.as_mut() else {
            // WS-10: the first message must open the stream.
            return Err(Ending::new(Error::ClientStream {
                condition: "bad-format",
                detail: "first message is not <open/>".into(),
            }));
        };
        // WS-14: TLS cannot be negotiated through this binding.
        if el.is("starttls", ns::TLS) {
            return Err(Ending::new(Error::ClientStream {
                condition: "policy-violation",
                detail: "starttls over websocket".into(),
            }));
        }
        let el = client_to_upstream(el).map_err(Ending::new)?;
        Ok(up.queue(&el))
    }

    /// Write what is queued for the upstream.
    async fn flush_upstream(&mut self) -> Flow {
        if let Some(up) = self.up.as_mut() {
            if let Err(e) = Box::pin(up.flush()).await {
                return Flow::End(Ending::new(e));
            }
        }
        Flow::Continue
    }

    async fn on_upstream(&mut self, event: Result<Event, Error>) -> Flow {
        match event {
            // Once per stream restart: boxed, so that its state does not size every session.
            Ok(Event::Header(h)) => Box::pin(self.on_upstream_header(h)).await,
            Ok(Event::Element(el)) => Box::pin(self.on_upstream_elements(el)).await,
            Err(e) => Flow::End(Ending::new(e)),
        }
    }

    /// The upstream's new stream header after a restart: our `<open/>` answers it.
    async fn on_upstream_header(&mut self, h: crate::xml::StreamHeader) -> Flow {
        let domain = self.up.as_ref().map(|u| u.domain().to_owned()).unwrap_or_default();
        let reply = Reply::from_upstream(&h, &domain, &message::local_id());
        match self.send_open(&reply).await {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::End(e),
        }
    }

    /// Relay `el` and whatever else arrived in the same read: one flush for the batch (one
    /// message per element), then the first frame that is not a plain element.
    async fn on_upstream_elements(&mut self, el: Element) -> Flow {
        // What arrived in the same read goes out with one flush (one message each).
        let mut batch: Vec<Element> = vec![el];
        let mut tail = None;
        while let Some(next) = self.up.as_mut().and_then(Link::try_next_buffered) {
            match next {
                Ok(Event::Element(el)) if batch.len() < 64 => batch.push(el),
                other => {
                    tail = Some(other);
                    break;
                }
            }
        }
        if let Flow::End(e) = Box::pin(self.relay_batch(batch)).await {
            return Flow::End(e);
        }
        match tail {
            Some(other) => Box::pin(self.on_upstream(other)).await,
            None => Flow::Continue,
        }
    }

    async fn relay_batch(&mut self, els: Vec<Element>) -> Flow {
        if els.len() == 1 {
            let el = els.into_iter().next().expect("one element");
            return self.relay_to_client(el).await;
        }
        let texts: Vec<String> = els.iter().map(to_client).collect();
        let socket = &mut self.socket;
        let work = async move {
            for t in texts {
                socket.feed(Message::Text(t.into())).await?;
            }
            socket.flush().await
        };
        match sent(timeout(self.send_wait, work).await) {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::End(e),
        }
    }

    async fn relay_to_client(&mut self, el: Element) -> Flow {
        match self.send(Message::Text(to_client(&el).into())).await {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::End(e),
        }
    }

    /// Client `<close/>` (WS-16): `</stream:stream>` upstream, wait a bounded time for the
    /// upstream's close while still relaying what it sends, then our `<close/>` (in `finish`).
    async fn client_close(&mut self) -> Ending {
        if let Some(mut up) = self.up.take() {
            if timeout(CLOSE_WAIT, up.close()).await.is_ok_and(|r| r.is_ok()) {
                let wait = sleep(CLOSE_WAIT);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        f = up.next() => match f {
                            // strophe.js drops the socket right after its `<close/>`; a failed
                            // send only means nobody is listening any more.
                            Ok(Event::Element(el)) => {
                                let _ = self.send(Message::Text(to_client(&el).into())).await;
                            }
                            Ok(Event::Header(_)) => {}
                            Err(_) => break,
                        },
                    }
                }
            }
        }
        Ending::new(Error::ClientTerminate)
    }

    async fn send_open(&mut self, reply: &Reply) -> Result<(), Ending> {
        let framing = self.framing.unwrap_or(Framing::Rfc7395);
        self.opened = true;
        self.send(Message::Text(message::open_for(framing, reply).into())).await
    }

    /// Send one message, bounded in time so a client that stops reading cannot pin the task.
    async fn send(&mut self, msg: Message) -> Result<(), Ending> {
        sent(timeout(self.send_wait, self.socket.send(msg)).await)
    }

    /// Tell the upstream and the client how the session ended.
    async fn finish(&mut self, ending: Ending) {
        let Ending { error, code, tell_client } = ending;
        if let Some(up) = self.up.take() {
            // Nothing the server sent is still held here: every element went to the client as
            // it arrived, so there is nothing to bounce.
            up.end(&error, Vec::new, &self.state.tracker).await;
        }
        let bye = async {
            if tell_client {
                let framing = self.framing.unwrap_or(Framing::Rfc7395);
                if !self.opened {
                    let reply = Reply {
                        from: self.asked_domain.clone().unwrap_or_else(|| self.default_domain()),
                        id: message::local_id(),
                        lang: "en".into(),
                    };
                    self.socket.feed(Message::Text(message::open_for(framing, &reply).into())).await?;
                }
                let err = match &error {
                    Error::UpstreamStreamError(el) => Some(stream_error_from_upstream(el)),
                    // Legacy framing has no see-other-uri (RFC 7395 §3.6.1): the RFC 6120 way.
                    Error::Redirect(uri) if framing == Framing::Legacy => Some(message::see_other_host(uri)),
                    e => e.stream_condition().map(message::stream_error),
                };
                if let Some(err) = err {
                    self.socket.feed(Message::Text(err.into())).await?;
                }
                let close = match (&error, framing) {
                    (Error::Redirect(uri), Framing::Rfc7395) => message::close_redirect(uri),
                    _ => message::close_for(framing).to_string(),
                };
                self.socket.feed(Message::Text(close.into())).await?;
            }
            let reason = error.kind();
            self.socket.feed(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await?;
            self.socket.flush().await?;
            // Let the client's close frame (or remaining data) arrive so the TCP close is
            // orderly and our last messages are not lost to a reset.
            while let Some(Ok(_)) = self.socket.next().await {}
            Ok::<(), axum::Error>(())
        };
        let _ = timeout(BYE_WAIT, bye).await;
    }

    fn default_domain(&self) -> String {
        self.state.config().upstream.domains.first().cloned().unwrap_or_default()
    }
}

/// The upstream's next event, or never when there is no upstream yet.
async fn next_event(link: Option<&mut Link>) -> Result<Event, Error> {
    match link {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// A client element on its way upstream: namespace fixing (WS-23) and refusals live in relay.
fn client_to_upstream(el: Element) -> Result<Element, Error> {
    relay::from_client(el)
}

/// An upstream element (already rewritten by relay: feature filtering, SM `location`) as the
/// standalone document a message carries (WS-06): the serializer declares every namespace.
fn to_client(el: &Element) -> String {
    el.to_xml("")
}

/// The upstream's `<stream:error/>` as a standalone document: `xmlns:stream` declared and the
/// condition child carrying its own `xmlns` (strophe.js checks it literally, WS-18).
fn stream_error_from_upstream(el: &Element) -> String {
    el.to_xml("")
}

/// The outcome of a bounded write to the client: a failed or timed-out write means the client
/// is gone.
fn sent(r: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>) -> Result<(), Ending> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::gone("write error")),
        Err(_) => Err(Ending::gone("write timed out")),
    }
}

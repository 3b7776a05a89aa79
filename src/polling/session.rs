//! One task per polling session. It owns the client's stream framer (each request's payload
//! is the next slice of one XML stream), the upstream connection, the text queued for the
//! client, the key chain and the inactivity clock; the HTTP handler talks to it only through
//! its channel, and every request is answered at once with what is queued (polling holds
//! nothing).
//!
//! Invariants (cite by name):
//! - *key-first*: a request is checked against the key chain before anything of it is used;
//!   one that fails is answered `-3:0` and changes nothing, not even the inactivity clock
//!   (§4 step 5), so whoever merely knows the identifier cannot end or extend the session.
//! - *nothing-lost*: what the server sent stays queued until an answer carries it; when the
//!   server's stream ends, its last words (and `</stream:stream>`) wait for the next request.
//! - *owed-bounces*: messages and iq requests still queued when the client is gone are
//!   bounced to their senders (§3, "MUST bounce pending IQ requests").

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::OptionFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};

use super::wire::{self, Fault};
use super::Hub;
use crate::error::Error;
use crate::link::{Event, Link, Opened};
use crate::metrics::{metrics, Transport};
use crate::relay;
use crate::upstream::OpenParams;
use crate::websocket::message;
use crate::xml::{ns, stream_header, Element, Frame, Framer};


/// One request for the session, from the HTTP handler.
pub(super) struct Poll {
    pub key: Option<String>,
    pub new_key: Option<String>,
    pub payload: Bytes,
    pub reply: oneshot::Sender<Answer>,
}

/// What a request is answered with: the text queued for the client, or a §3.1 error.
#[derive(Debug)]
pub(super) enum Answer {
    Data(String),
    Fault(Fault),
}

/// A session the handler has admitted: its id, the client's stream header already read out of
/// `framer`, the initial key, and the creation request's reply.
pub(super) struct Start {
    pub id: String,
    pub open: OpenParams,
    pub framer: Framer,
    pub key: Option<String>,
    pub reply: oneshot::Sender<Answer>,
}

struct Session {
    hub: Arc<Hub>,
    id: String,
    /// What the stream was opened with; restarts keep its domain.
    open: OpenParams,
    /// The configuration the session started with (a reload applies to new sessions).
    config: Arc<crate::Config>,
    /// The key the last good request carried: the next one must hash to it. `None`: keyless.
    key: Option<String>,
    /// The client's stream, across requests.
    framer: Framer,
    /// The upstream stream; `None` once it ended.
    link: Option<Link>,
    /// Serialized text for the next answer (already rewritten by relay).
    out: String,
    /// What `out` holds that is owed an error reply should it never be fetched (messages and
    /// iq requests: `relay::bounce`).
    owed: Vec<Element>,
    /// When the last good request arrived (inactivity clock).
    last_request: Instant,
    inactivity: Duration,
    /// The server's stream is over and `out` ends with `</stream:stream>`: the next good
    /// request takes it and the session ends.
    finished: bool,
    /// `limits.client_bytes_per_sec`: while paused, no request is taken from the channel.
    throttle: Option<Box<crate::limits::Throttle>>,
    /// Counts the session in the metrics; records why it ended when dropped.
    metrics: crate::metrics::SessionGuard,
    done: bool,
}

/// Connect, answer the creation request with the server's header and features, then serve
/// the session's requests until it ends. `_permit` holds the admission slot meanwhile.
pub(super) async fn run(hub: Arc<Hub>, start: Start, mut rx: mpsc::Receiver<Box<Poll>>, _permit: crate::limits::Permit) {
    let Start { id, open, framer, key, reply } = start;
    let live = hub.state.live();
    // Cancelled by the drain, or by a reload that stops serving this domain.
    let shutdown = hub.state.domain_token(&open.domain);
    let config = live.config.clone();
    let mut s = Session {
        id,
        framer,
        key,
        link: None,
        out: String::new(),
        owed: Vec::new(),
        last_request: Instant::now(),
        inactivity: Duration::from_secs(config.polling.inactivity),
        finished: false,
        throttle: crate::limits::Throttle::new(config.limits.client_bytes_per_sec, config.upstream.max_stanza_bytes, std::time::Instant::now()),
        metrics: metrics().session_started(Transport::Polling),
        done: false,
        config,
        open,
        hub,
    };
    let conn = tokio::select! {
        c = Link::open(&live.upstream, &s.open, None) => c,
        _ = shutdown.cancelled() => Err(if s.hub.state.shutdown.is_cancelled() { Error::Shutdown } else { Error::HostGone }),
    };
    drop(live);
    match conn {
        Ok((link, opened)) => s.opened(link, opened, reply).await,
        Err(e) => {
            tracing::warn!(domain = %s.open.domain, kind = e.kind(), error = %e, "upstream connect failed");
            // Whatever stopped it, the server side failed this client: §3.1.2.
            let _ = reply.send(Answer::Fault(Fault::Server));
            s.metrics.end(&e);
            s.done = true;
        }
    }
    s.main_loop(&mut rx, shutdown).await;
    s.hub.sessions.remove(&s.id);
    // Requests that reached the channel while the session was ending: the id is dead now.
    rx.close();
    while let Ok(p) = rx.try_recv() {
        let _ = p.reply.send(Answer::Fault(Fault::Unknown));
    }
}

impl Session {
    /// The upstream stream is open: the creation answer carries its header and features,
    /// after whatever else the creation payload held went upstream.
    async fn opened(&mut self, link: Link, opened: Opened, reply: oneshot::Sender<Answer>) {
        // The inactivity clock starts with the answer, not before the connect.
        self.last_request = Instant::now();
        self.out.push_str(&stream_header(&opened.header, &self.open.domain));
        self.link = Some(link);
        self.queue(opened.features);
        match self.relay_client(&[]).await {
            Ok(false) => self.answer(reply),
            Ok(true) => {
                self.answer(reply);
                self.end(Error::ClientTerminate).await;
            }
            Err(e) => {
                let _ = reply.send(Answer::Fault(Fault::of(&e)));
                self.end(e).await;
            }
        }
    }

    async fn main_loop(&mut self, rx: &mut mpsc::Receiver<Box<Poll>>, shutdown: tokio_util::sync::CancellationToken) {
        while !self.done {
            let idle_at = self.last_request + self.inactivity;
            // Backpressure: a client that does not come for its stanzas stops us reading.
            let room = self.out.len() < self.config.limits.max_queued_bytes;
            let reading = OptionFuture::from(self.link.as_mut().filter(|_| room).map(|l| l.next()));
            let paused_until = self.throttle.as_ref().and_then(|t| t.paused_until());
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let why = if self.hub.state.shutdown.is_cancelled() { Error::Shutdown } else { Error::HostGone };
                    // What the client already handed over still reaches the server.
                    while !self.done {
                        let Ok(p) = rx.try_recv() else { break };
                        self.on_poll(*p).await;
                    }
                    if !self.done {
                        self.end(why).await;
                    }
                }
                p = rx.recv(), if paused_until.is_none() => match p {
                    Some(p) => self.on_poll(*p).await,
                    None => self.done = true,
                },
                _ = sleep_until(paused_until.map_or(idle_at, Instant::from_std)), if paused_until.is_some() => {
                    if let Some(t) = self.throttle.as_mut() {
                        t.resume(std::time::Instant::now());
                    }
                }
                Some(event) = reading => self.on_event(event).await,
                _ = sleep_until(idle_at) => {
                    debug!("inactivity timeout");
                    self.end(Error::ClientGone).await;
                }
            }
        }
    }

    // ------------------------------------------------------------------ client requests

    async fn on_poll(&mut self, p: Poll) {
        let Poll { key, new_key, payload, reply } = p;
        match wire::next_key(self.key.as_deref(), key.as_deref(), new_key.as_deref()) {
            Ok(next) => self.key = next,
            Err(f) => {
                // *key-first*: ignored, logged, answered; the session is untouched.
                debug!("polling request with a key that does not continue the chain: ignored");
                let _ = reply.send(Answer::Fault(f));
                return;
            }
        }
        self.last_request = Instant::now();
        if let Some(t) = self.throttle.as_mut() {
            t.take(payload.len(), std::time::Instant::now());
        }
        if self.finished {
            // The server's stream ended meanwhile: this request takes its last words.
            self.answer(reply);
            self.done = true;
            return;
        }
        match self.relay_client(&payload).await {
            Ok(closed) => {
                self.take_buffered().await;
                if closed {
                    self.out.push_str(stream_header::CLOSE);
                }
                self.answer(reply);
                if closed {
                    self.end(Error::ClientTerminate).await;
                }
            }
            Err(e) => {
                let _ = reply.send(Answer::Fault(Fault::of(&e)));
                self.end(e).await;
            }
        }
    }

    /// Feed `payload` to the client's stream and write what it completes upstream: elements
    /// (through [`relay::from_client`]) and stream restarts. True when the client closed its
    /// stream (bytes after `</stream:stream>` are ignored).
    async fn relay_client(&mut self, payload: &[u8]) -> Result<bool, Error> {
        let Some(link) = self.link.as_mut() else {
            return Err(Error::UpstreamLost("upstream already closed".into()));
        };
        self.framer.feed(payload);
        let mut closed = false;
        while let Some(frame) = self.framer.next_frame()? {
            match frame {
                Frame::StreamOpen(h) => {
                    // A restart (after SASL): same connection, same domain; the server's new
                    // header and features come back through `on_frame`.
                    let params = OpenParams {
                        lang: h.lang.unwrap_or_else(|| self.open.lang.clone()),
                        version: h.version.unwrap_or_else(|| "1.0".into()),
                        from: h.from,
                        ..self.open.clone()
                    };
                    link.restart(&params).await?;
                }
                Frame::Element(el) => {
                    let el = relay::from_client(el)?;
                    if link.queue(&el) {
                        link.flush().await?;
                    }
                }
                Frame::StreamClose => {
                    closed = true;
                    break;
                }
            }
        }
        link.flush().await?;
        Ok(closed)
    }

    /// Answer with everything queued; what it carries is no longer owed a bounce.
    fn answer(&mut self, reply: oneshot::Sender<Answer>) {
        self.owed.clear();
        let _ = reply.send(Answer::Data(std::mem::take(&mut self.out)));
    }

    // ------------------------------------------------------------------ upstream

    /// Events the link already holds, without IO, so an answer carries all that arrived.
    async fn take_buffered(&mut self) {
        while let Some(e) = self.link.as_mut().and_then(Link::try_next_buffered) {
            self.on_event(e).await;
        }
    }

    async fn on_event(&mut self, event: Result<Event, Error>) {
        match event {
            Ok(Event::Header(h)) => self.out.push_str(&stream_header(&h, &self.open.domain)),
            Ok(Event::Element(el)) => self.queue(el),
            Err(e) => self.upstream_ended(e).await,
        }
    }

    /// Take an element from upstream (already rewritten by relay) for the client, noting
    /// whether it is owed a bounce.
    fn queue(&mut self, el: Element) {
        if relay::bounce(&el).is_some() {
            self.owed.push(el.clone());
        }
        let max = self.config.limits.max_queued_bytes;
        let before = self.out.len();
        // Written into the stream the header opened, where `jabber:client` is the default.
        el.write_xml(&mut self.out, ns::CLIENT);
        if before < max && self.out.len() >= max {
            metrics().limit_hit(crate::metrics::Limit::QueuedBytes);
        }
    }

    /// The server's stream is over (closed, stream error, lost): the client's stream ends
    /// the same way in `out` (the server's `<stream:error/>`, or ours for a lost connection),
    /// kept for its next request.
    async fn upstream_ended(&mut self, why: Error) {
        info!(kind = why.kind(), error = %why, "upstream stream ended");
        match &why {
            Error::UpstreamStreamError(el) => el.write_xml(&mut self.out, ns::CLIENT),
            e => self.out.push_str(&e.stream_condition().map(message::stream_error).unwrap_or_default()),
        }
        self.out.push_str(stream_header::CLOSE);
        self.finished = true;
        // Nothing can be bounced through a stream that is gone.
        self.owed.clear();
        if let Some(link) = self.link.take() {
            link.end(&why, Vec::new, &self.hub.state.tracker).await;
        }
        self.metrics.end(&why);
    }

    // ------------------------------------------------------------------ the end

    /// End the session for `why`: the upstream ends by the one teardown rule, the bounces the
    /// client still owes first (*owed-bounces*).
    async fn end(&mut self, why: Error) {
        self.metrics.end(&why);
        match why.side() {
            crate::Side::Client => debug!(kind = why.kind(), error = %why, "polling session ends"),
            _ => info!(kind = why.kind(), error = %why, "polling session ends"),
        }
        self.done = true;
        if let Some(link) = self.link.take() {
            link.end(&why, || std::mem::take(&mut self.owed), &self.hub.state.tracker).await;
        }
    }
}

/// The server's stream header as the client reads it (with the XML declaration, as a server
/// starts every stream on TCP): the upstream's attributes, fallbacks for what it omitted.
fn stream_header(h: &crate::xml::StreamHeader, domain: &str) -> String {
    let reply = message::Reply::from_upstream(h, domain, &message::local_id());
    format!("{}{}", stream_header::DECLARATION, message::legacy_open(&reply))
}

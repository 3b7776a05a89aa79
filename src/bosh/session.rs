//! One task per BOSH session. It owns everything about the session: the rid [`Window`], the
//! held and parked HTTP requests, the queue of stanzas for the client, the timers (wait,
//! inactivity, pause) and the upstream connection. HTTP handlers talk to it only through a
//! channel of [`Incoming`] requests; no lock is held across an `.await`.
//!
//! Invariants (cite by name):
//! - *in-order*: payloads are written upstream strictly in rid order; early rids are parked.
//! - *answer-in-order*: held requests are answered oldest first.
//! - *no-duplicate*: a repeated rid is answered from the cache or swapped for the held copy; its
//!   payload is never written upstream twice.
//! - *nothing-lost*: every stanza from upstream is queued until a response carries it; the
//!   session's terminal response is kept until the client comes to fetch it (or goes idle).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;
use futures_util::future::OptionFuture;
use futures_util::Future;
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use super::body::{Request, ResponseBody, VERSION};
use super::window::{Class, Window};
use crate::error::{Error, Policy};
use crate::relay;
use crate::state::AppState;
use crate::upstream::{self, Connection, OpenParams, UpstreamReader, UpstreamWriter};
use crate::xml::{ns, Element, Frame};

pub use super::exchange::{Incoming, Reply};

/// Check the creation policy and start the session task; the task answers `inc.reply`. On a
/// refusal `inc` is dropped and the caller answers with the error.
/// `client` is the client's address (IP after the trusted-proxy rules); its IP is what the
/// admission limits count, and it goes to the upstream in the PROXY header when configured.
pub fn start(state: &Arc<AppState>, inc: Incoming, client: Option<std::net::SocketAddr>) -> Result<(), Error> {
    let ip = client.map(|c| c.ip());
    if state.shutdown.is_cancelled() {
        return Err(state.drain_error(crate::metrics::Transport::Bosh));
    }
    let cfg = state.config();
    let domain = match inc.req.to.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => d.to_ascii_lowercase(),
        None if !cfg.bosh.default_domain.is_empty() => cfg.bosh.default_domain.to_ascii_lowercase(),
        None => return Err(Error::ImproperAddressing),
    };
    // Not an open relay: anything not served is refused before any DNS or TCP work.
    if !cfg.serves(&domain) {
        return Err(Error::HostUnknown);
    }
    // `route` is honoured only when allow-listed verbatim; any other value is host-unknown
    // (BOSH-S-14, issue 5), before any DNS or TCP work.
    let route = match inc.req.route.as_deref() {
        None => None,
        Some(r) => match allowed_route(&cfg.upstream.allow_route, r) {
            Some(t) => Some(t),
            None => {
                tracing::info!(route = r, "BOSH route not in upstream.allow_route: host-unknown");
                return Err(Error::HostUnknown);
            }
        },
    };
    let permit = state.admission.admit(ip)?;
    let (tx, rx) = mpsc::channel(super::registry::SESSION_QUEUE);
    // In a cluster the sid names this replica (crate::cluster::sid).
    let sid = state.bosh.insert_new(|| state.cluster.as_ref().map_or_else(super::registry::new_sid, |cl| cl.mint()), tx);
    let mut params = Params::negotiate(sid, &inc.req, &cfg.bosh, domain);
    params.route = route;
    params.open.client = client;
    let st = state.clone();
    // One span per session; the caller's span (client IP) is its parent.
    let span = tracing::info_span!("session", transport = "bosh", sid = %short(&params.sid));
    let session = async move {
        // The admission slot is held for the session's whole life.
        let _permit = permit;
        Session::run(st, params, inc, rx).await
    };
    state.tracker.spawn(tracing::Instrument::instrument(session, span));
    Ok(())
}

/// `xmpp:host:port` when it is on the allow-list, as a STARTTLS target. Never parsed as a URI.
pub fn allowed_route(allow: &[String], route: &str) -> Option<crate::upstream::Target> {
    if !allow.iter().any(|a| a == route) {
        return None;
    }
    let rest = route.strip_prefix("xmpp:")?;
    let (host, port) = crate::config::split_host_port(rest)?;
    Some(crate::upstream::Target { host, port, direct_tls: false, trusted: true })
}

/// After the client acknowledged less than we answered, how old the oldest unacknowledged
/// response must be before we tell the client with `report`/`time` (XEP-0124 §9.2). Below this
/// the response is probably still on its way.
const REPORT_AFTER: Duration = Duration::from_secs(2);
/// How long a closing upstream stream is given to answer `</stream:stream>`.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Values fixed when the session is created (XEP-0124 §7.2).
#[derive(Debug, Clone)]
pub struct Params {
    pub sid: String,
    pub wait: Duration,
    pub hold: usize,
    pub requests: u64,
    pub inactivity: Duration,
    pub polling: Duration,
    /// `maxpause` in seconds; `None` when pause is off.
    pub maxpause: Option<u64>,
    /// The client's `content` (validated once, here), else the default.
    pub content_type: HeaderValue,
    /// Created without `ver`: binding errors use HTTP status codes (XEP-0124 §17.1).
    pub legacy: bool,
    /// Client asked for acks (`ack='1'` at creation).
    pub ack_mode: bool,
    pub ver: (u32, u32),
    pub open: OpenParams,
    /// An allow-listed BOSH `route` to connect to instead of resolving the domain.
    pub route: Option<upstream::Target>,
}

impl Params {
    /// Derive the session values from the creation request and the config (CHECKLIST §0.5).
    pub fn negotiate(sid: String, req: &Request, cfg: &crate::config::Bosh, domain: String) -> Params {
        let wait = req.wait.unwrap_or(cfg.max_wait).min(cfg.max_wait);
        let hold = req.hold.unwrap_or(1).min(cfg.max_hold) as usize;
        let polling_session = wait == 0 || hold == 0;
        let mut inactivity = cfg.max_inactivity;
        if polling_session {
            inactivity = inactivity.max(2 * cfg.polling + 1);
        }
        let ver = match req.ver {
            Some(v) if v < VERSION => v,
            _ => VERSION,
        };
        Params {
            sid,
            wait: Duration::from_secs(wait),
            hold,
            requests: hold as u64 + 1,
            inactivity: Duration::from_secs(inactivity),
            polling: Duration::from_secs(cfg.polling),
            maxpause: (cfg.max_pause > 0).then_some(cfg.max_pause),
            content_type: req
                .content
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or_else(|| HeaderValue::from_static(super::DEFAULT_CONTENT_TYPE)),
            legacy: req.ver.is_none(),
            ack_mode: req.ack.is_some(),
            ver,
            open: OpenParams {
                domain,
                lang: req.lang.clone().unwrap_or_else(|| "en".into()),
                version: req.xmpp_version.clone().unwrap_or_else(|| "1.0".into()),
                from: req.from.clone(),
                // Set by `start`, which knows the HTTP request's client.
                client: None,
            },
            route: None,
        }
    }

    fn polling_session(&self) -> bool {
        self.wait.is_zero() || self.hold == 0
    }
}

struct Held {
    rid: u64,
    reply: oneshot::Sender<Reply>,
    deadline: Instant,
    /// The request carried no payload (for the polling-frequency rule).
    empty: bool,
}

enum Up {
    /// Connecting; client payloads that arrive meanwhile wait here, in rid order.
    Connecting(Vec<Element>),
    Open(UpstreamWriter),
    Closed,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>;

pub struct Session {
    p: Params,
    state: Arc<AppState>,
    /// The configuration the session started with (a reload applies to new sessions).
    config: Arc<crate::Config>,
    window: Window,
    held: VecDeque<Held>,
    parked: BTreeMap<u64, Incoming>,
    /// Stanzas waiting for a response to carry them (already rewritten by relay).
    out: String,
    /// Attributes for the next response (creation attributes, or `from`/`authid` that were not
    /// known yet when the creation response left).
    next_attrs: Vec<(&'static str, String)>,
    up: Up,
    reader: Option<UpstreamReader>,
    connecting: Option<ConnectFuture>,
    /// When the last request was answered and none was pending (inactivity clock).
    idle_since: Instant,
    /// The inactivity limit in force (a `pause` replaces it until the next request).
    inactivity: Duration,
    /// Expected SHA-1 of the next `key` (hex, lowercase), once key sequencing started.
    key: Option<String>,
    /// Repeats of one rid, for the repeat cap (BOSH-R-13).
    repeats: (u64, u32),
    /// Arrival of the previous new request and whether it was empty (BOSH-R-16 b).
    prev_new: Option<(Instant, bool)>,
    /// When an empty request of a polling session was last answered empty (BOSH-R-16 a).
    last_empty_poll: Option<Instant>,
    /// The upstream said `<success/>`: a restart is now expected (XBOSH-13).
    sasl_success: bool,
    /// The server enabled resumable XEP-0198 stream management (`<enabled resume/>` or
    /// `<resumed/>`): a session that ends without the client's terminate drops the upstream
    /// without `</stream:stream>` and bounces nothing, so the client can resume elsewhere.
    resumable: bool,
    /// Cluster mode, draining: when this session is ended ([`AppState::drain_at`]).
    drain_at: Option<Instant>,
    /// Set when the session is over but the client has not fetched the final body yet.
    terminal: Option<String>,
    done: bool,
    /// Counts the session in the metrics; records why it ended when the task drops it.
    metrics: crate::metrics::SessionGuard,
    /// The one timer of the session: the oldest held request's `wait` deadline, or the
    /// inactivity deadline when nothing is held (never both). Kept across loop iterations so
    /// that an unchanged deadline costs no timer-wheel registration per event.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The deadline `timer` is armed for; `None` once it fired (so it is re-armed even for an
    /// equal deadline).
    timer_at: Option<Instant>,
    /// `limits.client_bytes_per_sec`: while it is paused, no further request is taken from
    /// the channel (the client's HTTP requests wait; held ones are still answered).
    throttle: Option<Box<crate::limits::Throttle>>,
}

impl Session {
    /// Run a new session: `creation` is the session request, already validated by [`start`].
    pub async fn run(state: Arc<AppState>, p: Params, creation: Incoming, rx: mpsc::Receiver<Box<Incoming>>) {
        let now = Instant::now();
        let mut next_attrs: Vec<(&'static str, String)> = vec![
            ("sid", p.sid.clone()),
            ("wait", p.wait.as_secs().to_string()),
            ("requests", p.requests.to_string()),
            ("hold", p.hold.to_string()),
            ("inactivity", p.inactivity.as_secs().to_string()),
            ("polling", p.polling.as_secs().to_string()),
            ("ver", format!("{}.{}", p.ver.0, p.ver.1)),
            ("xmpp:restartlogic", "true".into()),
        ];
        if let Some(mp) = p.maxpause {
            next_attrs.push(("maxpause", mp.to_string()));
        }
        if p.ack_mode {
            next_attrs.push(("ack", creation.req.rid.to_string()));
        }
        let live = state.live();
        let (up_ctx, config) = (live.upstream.clone(), live.config.clone());
        let open = p.open.clone();
        let route = p.route.clone();
        let connecting: ConnectFuture = Box::pin(async move { upstream::connect_via(&up_ctx, &open, route).await });
        let cache_cap = if p.ack_mode { 16 } else { p.requests as usize };
        let mut s = Session {
            window: Window::new(creation.req.rid, p.requests, cache_cap),
            held: VecDeque::new(),
            parked: BTreeMap::new(),
            out: String::new(),
            next_attrs,
            up: Up::Connecting(Vec::new()),
            reader: None,
            connecting: Some(connecting),
            idle_since: now,
            inactivity: p.inactivity,
            key: creation.req.newkey.as_deref().map(str::to_ascii_lowercase),
            repeats: (0, 0),
            prev_new: None,
            last_empty_poll: None,
            sasl_success: false,
            resumable: false,
            drain_at: None,
            terminal: None,
            done: false,
            metrics: crate::metrics::metrics().session_started(crate::metrics::Transport::Bosh),
            timer: Box::pin(sleep_until(far_future())),
            timer_at: None,
            throttle: crate::limits::Throttle::new(
                config.limits.client_bytes_per_sec,
                config.upstream.max_stanza_bytes,
                std::time::Instant::now(),
            ),
            state,
            config,
            p,
        };
        // The creation request waits for the upstream features, at most `wait` (BOSH-S-31).
        let empty = creation.req.is_empty();
        s.held.push_back(Held { rid: creation.req.rid, reply: creation.reply, deadline: now + s.p.wait, empty });
        s.main_loop(rx).await;
    }

    async fn main_loop(&mut self, mut rx: mpsc::Receiver<Box<Incoming>>) {
        // Cancelled by the drain, or by a reload that stops serving this session's domain.
        let shutdown = self.state.domain_token(&self.p.open.domain);
        while !self.done {
            let wait_deadline = self.held.front().map(|h| h.deadline);
            let idle_deadline = (self.held.is_empty() && self.parked.is_empty()).then(|| self.idle_since + self.inactivity);
            // At most one applies: the wait deadline while a request is held, else inactivity;
            // while draining in a cluster, this session's end may come first.
            let deadline = earliest(wait_deadline.or(idle_deadline), self.drain_at);
            if let Some(d) = deadline {
                if self.timer_at != Some(d) {
                    self.timer.as_mut().reset(d);
                    self.timer_at = Some(d);
                }
            }
            let connecting = OptionFuture::from(self.connecting.as_mut());
            // Backpressure: a client that does not fetch its stanzas stops us reading upstream,
            // so the server (not xmpp-cm) buffers or applies its own policy.
            let room = self.out.len() < self.config.limits.max_queued_bytes;
            let reading = OptionFuture::from(self.reader.as_mut().filter(|_| room).map(|r| r.next()));
            let paused_until = self.throttle.as_ref().and_then(|t| t.paused_until());
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.drain_at.is_none() => {
                    if !self.state.shutdown.is_cancelled() {
                        // Not the drain: a reload stopped serving this session's domain.
                        self.end(Error::HostGone, None).await;
                    } else {
                        let mut jitter = [0u8; 4];
                        let _ = getrandom::getrandom(&mut jitter);
                        match self.state.drain_at(u32::from_ne_bytes(jitter)) {
                            // Cluster mode: served as usual (forwarded requests too) until then.
                            Some(at) => self.drain_at = Some(at),
                            None => self.drain_end(&mut rx).await,
                        }
                    }
                }
                inc = rx.recv(), if paused_until.is_none() => match inc {
                    Some(inc) => {
                        if let Some(th) = self.throttle.as_mut() {
                            th.take(inc.bytes, std::time::Instant::now());
                        }
                        self.on_request(*inc).await
                    }
                    None => self.done = true,
                },
                _ = sleep_until(paused_until.map_or_else(far_future, Instant::from_std)), if paused_until.is_some() => {
                    if let Some(th) = self.throttle.as_mut() {
                        th.resume(std::time::Instant::now());
                    }
                }
                Some(res) = connecting => {
                    self.connecting = None;
                    self.on_connected(res).await;
                }
                Some(frame) = reading => self.on_frame(frame).await,
                _ = self.timer.as_mut(), if deadline.is_some() => {
                    self.timer_at = None;
                    if self.drain_at.is_some_and(|d| d <= Instant::now()) {
                        self.drain_end(&mut rx).await;
                    } else if wait_deadline.is_some() {
                        self.answer_oldest();
                    } else {
                        debug!(sid = %short(&self.p.sid), "inactivity timeout");
                        self.end(Error::ClientGone, None).await;
                    }
                }
            }
        }
        self.state.bosh.remove(&self.p.sid);
        // Requests that reached the channel while the session was ending: the sid is dead now
        // (BOSH-T-03), so they get item-not-found rather than a dropped answer.
        rx.close();
        while let Ok(inc) = rx.try_recv() {
            let body = ResponseBody::terminate(Some("item-not-found")).to_xml();
            let status = if self.p.legacy { 404 } else { 200 };
            self.reply(inc.reply, status, body);
        }
    }

    /// Drain: requests the client already handed over are processed first, so their stanzas
    /// reach the upstream; then every held request is answered (`system-shutdown`, or
    /// `see-other-uri`). Boxed: a rare path must not size the future every idle session keeps.
    async fn drain_end(&mut self, rx: &mut mpsc::Receiver<Box<Incoming>>) {
        Box::pin(async move {
            while !self.done {
                let Ok(inc) = rx.try_recv() else { break };
                self.on_request(*inc).await;
            }
            if !self.done {
                let err = self.state.drain_error(crate::metrics::Transport::Bosh);
                self.end(err, None).await;
            }
        })
        .await
    }

    // ------------------------------------------------------------------ upstream events

    /// Boxed: a rare path must not size the future every idle session keeps.
    async fn on_connected(&mut self, res: Result<Connection, Error>) {
        Box::pin(self.on_connected_inner(res)).await
    }

    async fn on_connected_inner(&mut self, res: Result<Connection, Error>) {
        match res {
            Ok(conn) => {
                let backlog = match std::mem::replace(&mut self.up, Up::Closed) {
                    Up::Connecting(b) => b,
                    _ => Vec::new(),
                };
                let Connection { header, features, writer, reader, .. } = conn;
                if let Some(from) = header.from.clone() {
                    self.next_attrs.push(("from", from));
                }
                if let Some(id) = header.id.clone() {
                    self.next_attrs.push(("authid", id));
                }
                self.next_attrs.push(("xmpp:version", header.version.clone().unwrap_or_else(|| "1.0".into())));
                self.up = Up::Open(writer);
                self.reader = Some(reader);
                self.queue(features);
                if let Err(e) = self.write_up_all(&backlog).await {
                    return self.end(e, None).await;
                }
                self.flush();
            }
            Err(e) => {
                warn!(sid = %short(&self.p.sid), domain = %self.p.open.domain, kind = e.kind(), error = %e, "upstream connect failed");
                self.up = Up::Closed;
                self.end(e, None).await;
            }
        }
    }

    /// Boxed, so that this state does not size the future every idle session keeps.
    async fn on_frame(&mut self, frame: Result<Frame, Error>) {
        Box::pin(self.on_frame_inner(frame)).await
    }

    async fn on_frame_inner(&mut self, frame: Result<Frame, Error>) {
        match frame {
            Ok(Frame::Element(el)) if el.is("error", ns::STREAM) => {
                self.end(Error::UpstreamStreamError(Box::new(el)), None).await;
            }
            Ok(Frame::Element(el)) => {
                self.queue(el);
                // Everything that arrived in the same read leaves in the same response.
                while let Some(next) = self.reader.as_mut().and_then(|r| r.try_next_buffered()) {
                    match next {
                        Ok(Frame::Element(el)) if !el.is("error", ns::STREAM) => self.queue(el),
                        other => {
                            self.flush();
                            return Box::pin(self.on_frame_inner(other)).await;
                        }
                    }
                }
                self.flush();
            }
            Ok(Frame::StreamOpen(_)) => {} // the new header after a restart; features follow
            Ok(Frame::StreamClose) => self.end(Error::UpstreamClosed, None).await,
            Err(e) => self.end(e, None).await,
        }
    }

    /// Take an element from upstream for the client (and note SASL success: a restart is due).
    fn queue(&mut self, el: Element) {
        if el.is("success", ns::SASL) {
            self.sasl_success = true;
        } else if el.is("enabled", ns::SM3) {
            self.resumable = matches!(el.attr("resume"), Some("true" | "1"));
        } else if el.is("resumed", ns::SM3) {
            self.resumable = true;
        }
        crate::metrics::metrics().stanza(crate::metrics::Direction::ToClient);
        // Serialized now (self-contained), so its size counts against `max_queued_bytes`.
        let max = self.config.limits.max_queued_bytes;
        let before = self.out.len();
        // `out` starts empty after every response: one allocation of a typical batch's size
        // rather than a string doubling from 8 bytes.
        if self.out.capacity() == 0 {
            self.out.reserve(1024);
        }
        relay::from_upstream(el).write_xml(&mut self.out, "");
        if before < max && self.out.len() >= max {
            // Upstream reads pause from here until the client fetches (main_loop's `room`).
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::QueuedBytes);
        }
    }

    /// Write a request's payloads upstream in one write (or keep them while connecting).
    async fn write_up_all(&mut self, els: &[Element]) -> Result<(), Error> {
        match &mut self.up {
            Up::Open(w) => {
                w.send_all(els).await?;
                for _ in els {
                    crate::metrics::metrics().stanza(crate::metrics::Direction::ToUpstream);
                }
                Ok(())
            }
            Up::Connecting(backlog) => {
                backlog.extend_from_slice(els);
                Ok(())
            }
            Up::Closed if els.is_empty() => Ok(()),
            Up::Closed => Err(Error::UpstreamLost("upstream already closed".into())),
        }
    }

    // ------------------------------------------------------------------ client requests

    /// Boxed, so that this state does not size the future every idle session keeps.
    async fn on_request(&mut self, inc: Incoming) {
        Box::pin(self.on_request_inner(inc)).await
    }

    async fn on_request_inner(&mut self, inc: Incoming) {
        if let Some(body) = self.terminal.take() {
            // The session already ended; this is the client coming to learn why.
            self.reply(inc.reply, 200, body);
            self.done = true;
            return;
        }
        let rid = inc.req.rid;
        match self.window.classify(rid) {
            Class::TooHigh => self.end(Error::ItemNotFound("rid outside the window"), Some(inc.reply)).await,
            Class::Repeat => self.on_repeat(inc).await,
            Class::Early => {
                if let Some(old) = self.parked.insert(rid, inc) {
                    // A retransmission of a parked rid: the newest copy wins (BOSH-R-11).
                    self.reply(old.reply, 200, ResponseBody::new().attr("type", "error").to_xml());
                    return self.count_repeat(rid).await;
                }
                if let Err(e) = self.check_overactivity(self.parked.get(&rid).map(|i| &i.req)) {
                    let inc = self.parked.remove(&rid);
                    return self.end(e, inc.map(|i| i.reply)).await;
                }
            }
            Class::Next => {
                if let Err(e) = self.check_overactivity(Some(&inc.req)) {
                    return self.end(e, Some(inc.reply)).await;
                }
                self.process(inc).await;
                while !self.done {
                    let Some(next) = self.parked.remove(&self.window.next_rid()) else { break };
                    self.process(next).await;
                }
            }
        }
    }

    /// Boxed: a rare path must not size the future every idle session keeps.
    async fn on_repeat(&mut self, inc: Incoming) {
        Box::pin(self.on_repeat_inner(inc)).await
    }

    async fn on_repeat_inner(&mut self, inc: Incoming) {
        let rid = inc.req.rid;
        if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
            // Still held: answer the older copy with a recoverable error, keep the newest.
            let old = std::mem::replace(&mut h.reply, inc.reply);
            let _ = old.send(Reply { status: 200, body: ResponseBody::new().attr("type", "error").to_xml().into(), content_type: self.p.content_type.clone() });
            return self.count_repeat(rid).await;
        }
        if let Some(c) = self.window.cached(rid) {
            let body = c.body.clone();
            self.reply(inc.reply, 200, body);
            return self.count_repeat(rid).await;
        }
        self.end(Error::ItemNotFound("response no longer cached"), Some(inc.reply)).await;
    }

    async fn count_repeat(&mut self, rid: u64) {
        if self.repeats.0 == rid {
            self.repeats.1 += 1;
        } else {
            self.repeats = (rid, 1);
        }
        if self.repeats.1 > self.config.bosh.max_rid_repeats {
            self.end(Error::PolicyViolation(Policy::RidRepeatedTooOften), None).await;
        }
    }

    /// XEP-0124 §11: more unanswered new requests than `requests` (one more allowed when the
    /// newest is a pause or terminate); and §11/§12 too-frequent empty polls.
    fn check_overactivity(&self, newest: Option<&Request>) -> Result<(), Error> {
        let Some(req) = newest else { return Ok(()) };
        let pending = self.held.len() + self.parked.len() + usize::from(!self.parked.contains_key(&req.rid));
        let extra = u64::from(req.terminate || req.pause.is_some());
        if pending as u64 > self.p.requests + extra {
            return Err(Error::PolicyViolation(Policy::TooManyRequests));
        }
        if req.is_empty() && !req.terminate && req.pause.is_none() && !req.restart {
            let now = Instant::now();
            if self.p.polling_session() {
                if self.last_empty_poll.is_some_and(|t| now.duration_since(t) < self.p.polling) {
                    return Err(Error::PolicyViolation(Policy::PollingTooFrequently));
                }
            } else if pending as u64 == self.p.requests
                // In rid order the newest request is a parked one when any is parked: then the
                // last two are not both this empty one and its predecessor (XEP-0124 §11).
                && self.parked.range(req.rid + 1..).next().is_none()
                && self.prev_new.is_some_and(|(t, empty)| empty && now.duration_since(t) < self.p.polling)
            {
                return Err(Error::PolicyViolation(Policy::EmptyRequestsTooFrequently));
            }
        }
        Ok(())
    }

    /// Process the next in-order request.
    async fn process(&mut self, inc: Incoming) {
        let Incoming { req, reply, .. } = inc;
        let now = Instant::now();
        self.window.advance();
        self.prev_new = Some((now, req.is_empty()));
        self.inactivity = self.p.inactivity;

        // Key sequencing (XEP-0124 §15): verify before anything of this request is used.
        if let Some(expected) = self.key.clone() {
            let ok = req.key.as_deref().is_some_and(|k| hex::encode(Sha1::digest(k.as_bytes())) == expected);
            if !ok {
                return self.end(Error::ItemNotFound("key sequence mismatch"), Some(reply)).await;
            }
            // The next key must hash to this one, unless this request starts a new sequence.
            self.key = req.newkey.as_deref().or(req.key.as_deref()).map(str::to_ascii_lowercase);
        } else if let Some(nk) = &req.newkey {
            self.key = Some(nk.to_ascii_lowercase());
        }

        if self.p.ack_mode {
            if let Some(ack) = req.ack {
                if let Some(report) = self.report_for(ack, now) {
                    // The client missed a response: tell it at once which one (§9.2).
                    self.window.ack(ack);
                    self.reply(reply, 200, report);
                    return;
                }
                self.window.ack(ack);
            }
        }

        if req.terminate {
            return self.client_terminate(req, reply).await;
        }

        if let (Some(pause), Some(max)) = (req.pause, self.p.maxpause) {
            // Pause (§10): answer everything now, without payloads; the pause request is not
            // cached. The inactivity limit becomes the pause until the next request.
            while let Some(h) = self.held.pop_front() {
                let body = Bytes::from(self.decorate(ResponseBody::new(), h.rid).to_xml());
                self.window.store(h.rid, body.clone(), std::time::Instant::now());
                self.reply(h.reply, 200, body);
            }
            self.reply(reply, 200, ResponseBody::new().to_xml());
            self.inactivity = Duration::from_secs(pause.min(max));
            self.idle_since = now;
            return;
        }

        if req.restart {
            if !self.sasl_success {
                return self.end(Error::BadRequest("restart before SASL success".into()), Some(reply)).await;
            }
            self.sasl_success = false;
            let mut open = self.p.open.clone();
            if let Some(to) = &req.to {
                open.domain.clone_from(to);
            }
            if let Some(lang) = &req.lang {
                open.lang.clone_from(lang);
            }
            if req.from.is_some() {
                open.from.clone_from(&req.from);
            }
            let res = match &mut self.up {
                Up::Open(w) => w.restart(&open).await,
                _ => Err(Error::BadRequest("restart before the upstream stream is open".into())),
            };
            if let Err(e) = res {
                return self.end(e, Some(reply)).await;
            }
            // Stanzas inside a restart body are ignored (XBOSH-10).
        } else {
            if let Err(e) = self.write_up_all(&req.payloads).await {
                return self.end(e, Some(reply)).await;
            }
        }

        self.held.push_back(Held { rid: req.rid, reply, deadline: now + self.p.wait, empty: req.is_empty() });
        self.flush();
        while self.held.len() > self.p.hold {
            self.answer_oldest();
        }
    }

    /// `report`/`time` body when the client's `ack` shows a response it did not get.
    fn report_for(&self, ack: u64, now: Instant) -> Option<String> {
        let last = self.window.last_answered()?;
        if ack >= last {
            return None;
        }
        let missing = self.window.cached(ack + 1)?;
        let age = now.into_std().saturating_duration_since(missing.sent_at);
        (age >= REPORT_AFTER).then(|| {
            ResponseBody::new().attr("report", (ack + 1).to_string()).attr("time", age.as_millis().to_string()).to_xml()
        })
    }

    /// Boxed: a rare path must not size the future every idle session keeps.
    async fn client_terminate(&mut self, req: Request, reply: oneshot::Sender<Reply>) {
        Box::pin(self.client_terminate_inner(req, reply)).await
    }

    async fn client_terminate_inner(&mut self, req: Request, reply: oneshot::Sender<Reply>) {
        // Forward the payloads (typically an unavailable presence) first (BOSH-T-01).
        let _ = self.write_up_all(&req.payloads).await;
        // The oldest open request gets type='terminate', the others empty bodies (BOSH-T-02);
        // when the terminate request is the only one open it gets type='terminate'.
        let mut first = true;
        while let Some(h) = self.held.pop_front() {
            let body = if first { self.terminal_body(None) } else { ResponseBody::new().to_xml() };
            first = false;
            self.reply(h.reply, 200, body);
        }
        let body = if first { self.terminal_body(None) } else { ResponseBody::new().to_xml() };
        self.reply(reply, 200, body);
        self.metrics.end(&Error::ClientTerminate);
        self.close_upstream(Error::ClientTerminate).await;
        self.done = true;
    }

    // ------------------------------------------------------------------ answering

    /// Answer the oldest held request with everything queued (or empty).
    fn answer_oldest(&mut self) {
        let Some(h) = self.held.pop_front() else { return };
        let mut b = ResponseBody::new();
        let carried = !self.out.is_empty();
        if carried {
            b.push_payload(std::mem::take(&mut self.out));
        }
        let body = Bytes::from(self.decorate(b, h.rid).to_xml());
        self.window.store(h.rid, body.clone(), std::time::Instant::now());
        if self.p.polling_session() {
            self.last_empty_poll = (h.empty && !carried).then(Instant::now);
        }
        self.reply(h.reply, 200, body);
        if self.held.is_empty() {
            self.idle_since = Instant::now();
        }
    }

    /// Add the one-time attributes (creation / late `from`) and, in ack mode, `ack`.
    fn decorate(&mut self, mut b: ResponseBody, rid: u64) -> ResponseBody {
        for (n, v) in self.next_attrs.drain(..) {
            b.push_attr(n, v);
        }
        if self.p.ack_mode {
            let ack = self.window.last_in_order();
            if ack != rid {
                b.push_attr("ack", ack.to_string());
            }
        }
        b
    }

    /// If anything is queued and a request is held, send it now (BOSH-R-07).
    fn flush(&mut self) {
        if !self.out.is_empty() && !self.held.is_empty() {
            self.answer_oldest();
        }
    }

    fn reply(&self, reply: oneshot::Sender<Reply>, status: u16, body: impl Into<Bytes>) {
        // The client may have gone away meanwhile; the cache covers a retransmission.
        let _ = reply.send(Reply { status, body: body.into(), content_type: self.p.content_type.clone() });
    }

    /// The terminate body for `condition`, carrying what is still queued (BOSH-T-20).
    fn terminal_body(&mut self, err: Option<&Error>) -> String {
        let mut b = ResponseBody::terminate(err.and_then(Error::bosh_condition));
        for (n, v) in self.next_attrs.drain(..) {
            b.push_attr(n, v);
        }
        b.push_payload(std::mem::take(&mut self.out));
        if let Some(Error::UpstreamStreamError(el)) = err {
            b.push_elements(std::iter::once(el.as_ref()));
        }
        if let Some(Error::Redirect(uri)) = err {
            // XEP-0124 §17.2 see-other-uri: where to go on.
            b.push_elements(std::iter::once(&Element::new("uri", ns::HTTPBIND).with_text(uri.as_str())));
        }
        b.to_xml()
    }

    /// End the session because of `err`. `trigger` is the request that caused it (it gets the
    /// condition; other held requests get `other-request`). Without a trigger the oldest held
    /// request gets the condition; with none held, the body waits for the next request.
    /// Boxed: a rare path must not size the future every idle session keeps.
    async fn end(&mut self, err: Error, trigger: Option<oneshot::Sender<Reply>>) {
        Box::pin(self.end_inner(err, trigger)).await
    }

    async fn end_inner(&mut self, err: Error, trigger: Option<oneshot::Sender<Reply>>) {
        self.metrics.end(&err);
        let sid = short(&self.p.sid);
        match err.side() {
            crate::Side::Client => debug!(sid = %sid, kind = err.kind(), error = %err, "session ends"),
            _ => info!(sid = %sid, kind = err.kind(), error = %err, "session ends"),
        }
        if matches!(err, Error::ClientGone) && self.held.is_empty() && self.parked.is_empty() {
            // Nobody is listening: what the client never received is bounced upstream.
            self.done = true;
            return self.close_upstream(err).await;
        }
        let body = self.terminal_body(Some(&err));
        let status = if self.p.legacy { err.legacy_http_status().unwrap_or(200) } else { 200 };
        let others = ResponseBody::terminate(Some("other-request")).to_xml();
        match trigger {
            Some(t) => {
                while let Some(h) = self.held.pop_front() {
                    self.reply(h.reply, 200, others.clone());
                }
                for (_, p) in std::mem::take(&mut self.parked) {
                    self.reply(p.reply, 200, others.clone());
                }
                self.reply(t, status, body);
                self.done = true;
            }
            None => {
                let mut first = true;
                while let Some(h) = self.held.pop_front() {
                    let b = if first { body.clone() } else { ResponseBody::terminate(err.bosh_condition()).to_xml() };
                    first = false;
                    self.reply(h.reply, status, b);
                }
                for (_, p) in std::mem::take(&mut self.parked) {
                    self.reply(p.reply, 200, others.clone());
                }
                if first && !matches!(err, Error::ClientGone | Error::Shutdown | Error::Redirect(_) | Error::HostGone) {
                    // Nobody to tell right now: keep the verdict for the next request, under the
                    // inactivity clock.
                    self.terminal = Some(body);
                    self.idle_since = Instant::now();
                } else {
                    self.done = true;
                }
            }
        }
        self.close_upstream(err).await;
    }

    /// Tear the upstream down in bounded time. For a client that is gone, the stanzas it never
    /// received are bounced before the stream is closed (XEP-0206 §7, BOSH-T-21). The rest runs
    /// in its own task so the session ends now.
    /// Boxed: a rare path must not size the future every idle session keeps.
    async fn close_upstream(&mut self, why: Error) {
        Box::pin(self.close_upstream_inner(why)).await
    }

    async fn close_upstream_inner(&mut self, why: Error) {
        self.connecting = None;
        let up = std::mem::replace(&mut self.up, Up::Closed);
        let reader = self.reader.take();
        let Up::Open(mut writer) = up else { return };
        if matches!(why, Error::UpstreamClosed | Error::UpstreamLost(_) | Error::UpstreamStreamError(_)) {
            let _ = writer.close().await;
            return;
        }
        if self.resumable && matches!(why, Error::ClientGone | Error::Shutdown | Error::Redirect(_)) {
            // XEP-0198: the server keeps the session (and what the client has not acked) for
            // a resumption, through this replica or another, only if the stream is not closed.
            writer.abort().await;
            return;
        }
        let bounces: Vec<Element> = undelivered(&std::mem::take(&mut self.out)).iter().filter_map(relay::bounce).collect();
        self.state.tracker.spawn(async move {
            for b in &bounces {
                if writer.send(b).await.is_err() {
                    return;
                }
            }
            let _ = writer.close().await;
            // Give the server a moment to close its side, so the last presence is processed.
            let Some(mut reader) = reader else { return };
            let deadline = Instant::now() + CLOSE_GRACE;
            while let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, reader.next()).await {
                if frame == Frame::StreamClose {
                    break;
                }
            }
        });
    }
}

/// The stanzas of a queue that was never delivered (serialized, self-contained elements).
fn undelivered(out: &str) -> Vec<Element> {
    if out.is_empty() {
        return Vec::new();
    }
    let wrapped = format!("<q>{out}</q>");
    let limits = crate::xml::Limits { max_stanza_bytes: wrapped.len() + 1, ..crate::xml::Limits::default() };
    match crate::xml::parse_document(wrapped.as_bytes(), &limits, &[]) {
        Ok(q) => q.elements().cloned().collect(),
        Err(_) => Vec::new(),
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The first characters of a sid, enough to correlate log lines without revealing the bearer
/// secret (SEC-08).
pub fn short(sid: &str) -> &str {
    sid.get(..6).unwrap_or(sid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bosh::body::parse;

    fn negotiate(attrs: &str) -> Params {
        let req = parse(format!("<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='x' {attrs}/>").as_bytes(), &Default::default()).unwrap();
        Params::negotiate("sid".into(), &req, &crate::config::Bosh::default(), "x".into())
    }

    /// Idle sessions stay small: the task's future lives as long as the session.
    #[test]
    fn routes_only_when_allow_listed() {
        let allow = vec!["xmpp:127.0.0.1:5222".to_string()];
        let t = allowed_route(&allow, "xmpp:127.0.0.1:5222").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 5222));
        for r in ["xmpp:127.0.0.1:22", "xmpp:169.254.169.254:80", "http://127.0.0.1:5222", "127.0.0.1:5222"] {
            assert!(allowed_route(&allow, r).is_none(), "{r}");
        }
        assert!(allowed_route(&["bogus".into()], "bogus").is_none());
    }

    #[test]
    fn session_future_size() {
        let state = crate::state::AppState::new(std::sync::Arc::new(crate::Config::default())).unwrap();
        let req = parse(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='x'/>", &Default::default()).unwrap();
        let p = Params::negotiate("sid".into(), &req, &crate::config::Bosh::default(), "x".into());
        let (tx, _rx) = oneshot::channel();
        let (_stx, srx) = mpsc::channel(1);
        let fut = Session::run(state, p, Incoming { req, reply: tx, bytes: 0 }, srx);
        let size = std::mem::size_of_val(&fut);
        eprintln!("bosh session future: {size} bytes; Session {} Params {} Window {} reader {} writer {} framer {}", std::mem::size_of::<Session>(), std::mem::size_of::<Params>(), std::mem::size_of::<Window>(), std::mem::size_of::<UpstreamReader>(), std::mem::size_of::<UpstreamWriter>(), std::mem::size_of::<crate::xml::Framer>());
        assert!(size <= 4096, "bosh session future is {size} bytes");
    }

    /// BOSH-S-07, S-08, S-09, S-10, S-11, S-12, S-13 (§0.5 defaults).
    #[test]
    fn negotiation_table() {
        let p = negotiate("wait='3600' hold='4' ver='1.6'");
        assert_eq!((p.wait.as_secs(), p.hold, p.requests), (60, 1, 2));
        assert_eq!(p.ver, (1, 6));
        assert!(!p.legacy);
        let p = negotiate("wait='5' hold='1' ver='1.10'");
        assert_eq!((p.wait.as_secs(), p.ver), (5, (1, 10)));
        let p = negotiate("wait='5' hold='1' ver='2.0'");
        assert_eq!(p.ver, VERSION);
        let p = negotiate("wait='5' hold='0'");
        assert!(p.legacy && p.polling_session());
        assert_eq!(p.requests, 1);
        assert!(p.inactivity > p.polling * 2);
        let p = negotiate("wait='0' hold='1' content='text/plain; charset=utf-8'");
        assert!(p.polling_session());
        assert_eq!(p.content_type, "text/plain; charset=utf-8");
        assert_eq!(negotiate("").content_type, "text/xml; charset=utf-8");
        assert_eq!(negotiate("xml:lang='de'").open.lang, "de");
        assert!(negotiate("ack='1'").ack_mode);
    }
}

//! One task per BOSH session: the async shell around the session's rules ([`Core`],
//! `bosh/core.rs`). It owns what needs a runtime: the channel of [`Incoming`] requests and their
//! oneshot replies, the client throttle, the drain and domain token, the one timer, and the
//! upstream connection. Every event goes to the core with the time it happened; the core's
//! [`Action`]s (replies, upstream writes, a restart, the end) are carried out here in order.
//! HTTP handlers talk to the task only through the channel; no lock is held across an `.await`.
//!
//! The upstream IO is confined to `on_connected`, `on_frame`, `write_up_all`, `restart` and
//! `close_upstream`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;
use futures_util::future::OptionFuture;
use futures_util::Future;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use super::body::{Request, ResponseBody, VERSION};
use super::core::{Action, Core, Rules};
use crate::error::Error;
use crate::link::{Event, Link, Opened};
use crate::state::AppState;
use crate::upstream::{self, OpenParams};
use crate::xml::Element;

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
    let mut params = Params::negotiate(sid, &inc.req, &cfg, domain);
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

/// Values fixed when the session is created (XEP-0124 §7.2).
#[derive(Debug, Clone)]
pub struct Params {
    pub sid: String,
    /// What the session's rules read ([`Core`]): `wait`, `hold`, `requests`, … and the two
    /// configured limits they apply.
    pub rules: Rules,
    /// The client's `content` (validated once, here), else the default.
    pub content_type: HeaderValue,
    pub ver: (u32, u32),
    pub open: OpenParams,
    /// An allow-listed BOSH `route` to connect to instead of resolving the domain.
    pub route: Option<upstream::Target>,
}

impl Params {
    /// Derive the session values from the creation request and the config (CHECKLIST §0.5).
    pub fn negotiate(sid: String, req: &Request, config: &crate::Config, domain: String) -> Params {
        let cfg = &config.bosh;
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
            rules: Rules {
                wait: Duration::from_secs(wait),
                hold,
                requests: hold as u64 + 1,
                inactivity: Duration::from_secs(inactivity),
                polling: Duration::from_secs(cfg.polling),
                maxpause: (cfg.max_pause > 0).then_some(cfg.max_pause),
                legacy: req.ver.is_none(),
                ack_mode: req.ack.is_some(),
                max_rid_repeats: cfg.max_rid_repeats,
                max_queued_bytes: config.limits.max_queued_bytes,
            },
            content_type: req
                .content
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or_else(|| HeaderValue::from_static(super::DEFAULT_CONTENT_TYPE)),
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
}

enum Up {
    /// Connecting; client payloads that arrive meanwhile wait here, in rid order.
    Connecting(Vec<Element>),
    Open(Link),
    Closed,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<(Link, Opened), Error>> + Send>>;
type Acts = Vec<Action<oneshot::Sender<Reply>>>;

pub struct Session {
    sid: String,
    /// The Content-Type of every answer (BOSH-S-13).
    content_type: HeaderValue,
    /// How the upstream stream was opened (a restart opens it again alike).
    open: OpenParams,
    state: Arc<AppState>,
    /// The rules of the session ([`Core`]); this task carries out what it asks for.
    core: Core<oneshot::Sender<Reply>>,
    /// The core's actions, carried out in order; one buffer for the session's life.
    acts: Acts,
    up: Up,
    connecting: Option<ConnectFuture>,
    /// Cluster mode, draining: when this session is ended ([`AppState::drain_at`]).
    drain_at: Option<Instant>,
    /// Counts the session in the metrics; records why it ended when the task drops it.
    metrics: crate::metrics::SessionGuard,
    /// The one timer of the session: [`Core::deadline`], or this session's drain point. Kept
    /// across loop iterations so that an unchanged deadline costs no timer-wheel registration
    /// per event.
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
        Session::new(state, p, creation).main_loop(rx).await;
    }

    /// Synchronous, so that what only building the session needs is not kept in its future.
    fn new(state: Arc<AppState>, p: Params, creation: Incoming) -> Session {
        let live = state.live();
        let (up_ctx, config) = (live.upstream.clone(), live.config.clone());
        let Params { sid, rules, content_type, open, route, ver } = p;
        let connect_open = open.clone();
        let connecting: ConnectFuture =
            Box::pin(async move { Link::open(&up_ctx, &connect_open, route).await });
        // The creation request waits for the upstream features, at most `wait` (BOSH-S-31).
        let core = Core::new(rules, &sid, ver, &creation.req, creation.reply, now());
        Session {
            core,
            acts: Vec::new(),
            up: Up::Connecting(Vec::new()),
            connecting: Some(connecting),
            drain_at: None,
            metrics: crate::metrics::metrics().session_started(crate::metrics::Transport::Bosh),
            timer: Box::pin(sleep_until(far_future())),
            timer_at: None,
            throttle: crate::limits::Throttle::new(
                config.limits.client_bytes_per_sec,
                config.upstream.max_stanza_bytes,
                std::time::Instant::now(),
            ),
            state,
            sid,
            content_type,
            open,
        }
    }

    async fn main_loop(&mut self, mut rx: mpsc::Receiver<Box<Incoming>>) {
        // Cancelled by the drain, or by a reload that stops serving this session's domain.
        let shutdown = self.state.domain_token(&self.open.domain);
        while !self.core.done() {
            // While draining in a cluster, this session's end may come before the core's.
            let deadline = earliest(self.core.deadline().map(Instant::from_std), self.drain_at);
            if let Some(d) = deadline {
                if self.timer_at != Some(d) {
                    self.timer.as_mut().reset(d);
                    self.timer_at = Some(d);
                }
            }
            let connecting = OptionFuture::from(self.connecting.as_mut());
            // Backpressure: a client that does not fetch its stanzas stops us reading upstream.
            let room = self.core.has_room();
            let link = match &mut self.up {
                Up::Open(link) if room => Some(link),
                _ => None,
            };
            let reading = OptionFuture::from(link.map(Link::next));
            let paused_until = self.throttle.as_ref().and_then(|t| t.paused_until());
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.drain_at.is_none() => {
                    if !self.state.shutdown.is_cancelled() {
                        // Not the drain: a reload stopped serving this session's domain.
                        self.end(Error::HostGone).await;
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
                        self.on_request(*inc);
                        self.execute().await;
                    }
                    None => break,
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
                Some(event) = reading => {
                    self.on_event(event);
                    self.execute().await;
                }
                _ = self.timer.as_mut(), if deadline.is_some() => {
                    let armed = self.timer_at.take();
                    if self.drain_at.is_some_and(|d| d <= Instant::now()) {
                        self.drain_end(&mut rx).await;
                    } else {
                        // The core decides against the deadline it asked for, never earlier.
                        let now = now().max(armed.map_or_else(now, Instant::into_std));
                        self.core.tick(now, &mut self.acts);
                        self.execute().await;
                    }
                }
            }
        }
        self.state.bosh.remove(&self.sid);
        // Requests that reached the channel while the session was ending: the sid is dead now
        // (BOSH-T-03), so they get item-not-found rather than a dropped answer.
        rx.close();
        while let Ok(inc) = rx.try_recv() {
            let body = ResponseBody::terminate(Some("item-not-found")).to_xml();
            let status = if self.core.rules().legacy { 404 } else { 200 };
            send(inc.reply, status, body.into(), &self.content_type);
        }
    }

    /// Drain: requests the client already handed over are processed first, so their stanzas
    /// reach the upstream; then every held request is answered (`system-shutdown`, or
    /// `see-other-uri`). Boxed: a rare path must not size the future every idle session keeps.
    async fn drain_end(&mut self, rx: &mut mpsc::Receiver<Box<Incoming>>) {
        Box::pin(async move {
            while !self.core.done() {
                let Ok(inc) = rx.try_recv() else { break };
                self.on_request(*inc);
                self.execute().await;
            }
            if !self.core.done() {
                let err = self.state.drain_error(crate::metrics::Transport::Bosh);
                self.end(err).await;
            }
        })
        .await
    }

    /// End the session for a reason found here (drain, reload, the upstream).
    async fn end(&mut self, err: Error) {
        self.core.end(err, None, now(), &mut self.acts);
        self.execute().await;
    }

    /// A client request for the core (synchronous: its actions are carried out by the caller,
    /// so that the request is not kept in the session's future).
    fn on_request(&mut self, inc: Incoming) {
        self.core.request(inc.req, inc.reply, now(), &mut self.acts);
    }

    // ------------------------------------------------------------------ carrying out actions

    /// Carry out the core's actions. Replies alone (most events) need no IO: no future state,
    /// no allocation; anything else runs boxed, so it does not size the session's future.
    async fn execute(&mut self) {
        if self.acts.iter().all(|a| matches!(a, Action::Reply(..))) {
            for act in self.acts.drain(..) {
                if let Action::Reply(tx, status, body) = act {
                    send(tx, status, body, &self.content_type);
                }
            }
            return;
        }
        Box::pin(self.execute_io()).await
    }

    async fn execute_io(&mut self) {
        loop {
            let mut acts = std::mem::take(&mut self.acts);
            let (mut written, mut ending) = (None, None);
            for act in acts.drain(..) {
                match act {
                    Action::Reply(tx, status, body) => send(tx, status, body, &self.content_type),
                    Action::Write(els) => written = Some(self.write_up_all(&els).await),
                    Action::Restart(req) => written = Some(self.restart(&req).await),
                    Action::End(err) => {
                        self.record_end(&err);
                        ending = Some(err);
                    }
                }
            }
            // The buffer (and its capacity) goes back for the next event.
            self.acts = acts;
            if let Some(err) = ending {
                self.close_upstream(err).await;
            }
            let Some(res) = written else { return };
            self.core.written(res, now(), &mut self.acts);
        }
    }

    fn record_end(&mut self, err: &Error) {
        self.metrics.end(err);
        let sid = short(&self.sid);
        match err.side() {
            crate::Side::Client => debug!(sid = %sid, kind = err.kind(), error = %err, "session ends"),
            _ => info!(sid = %sid, kind = err.kind(), error = %err, "session ends"),
        }
    }

    // ------------------------------------------------------------------ upstream IO

    /// Boxed: a rare path must not size the future every idle session keeps.
    async fn on_connected(&mut self, res: Result<(Link, Opened), Error>) {
        Box::pin(self.on_connected_inner(res)).await
    }

    async fn on_connected_inner(&mut self, res: Result<(Link, Opened), Error>) {
        let (link, opened) = match res {
            Ok(o) => o,
            Err(e) => {
                warn!(sid = %short(&self.sid), domain = %self.open.domain, kind = e.kind(), error = %e, "upstream connect failed");
                self.up = Up::Closed;
                return self.end(e).await;
            }
        };
        let backlog = match std::mem::replace(&mut self.up, Up::Closed) {
            Up::Connecting(b) => b,
            _ => Vec::new(),
        };
        self.up = Up::Open(link);
        let had_room = self.core.has_room();
        self.core.connected(opened.header, opened.features);
        self.note_room(had_room);
        // What the client sent while we connected goes first; then the features are answered.
        let res = self.write_up_all(&backlog).await;
        self.core.written(res, now(), &mut self.acts);
        self.execute().await;
    }

    /// An event from the upstream, and everything already buffered with it, for the core
    /// (synchronous, like `on_request`). A new stream header (after a restart) needs nothing:
    /// its features follow.
    fn on_event(&mut self, event: Result<Event, Error>) {
        let had_room = self.core.has_room();
        let Session { core, acts, up, .. } = self;
        let buffered = std::iter::from_fn(|| match up {
            Up::Open(link) => link.try_next_buffered(),
            _ => None,
        });
        let elements = std::iter::once(event).chain(buffered).filter_map(|e| match e {
            Ok(Event::Element(el)) => Some(Ok(el)),
            Ok(Event::Header(_)) => None,
            Err(e) => Some(Err(e)),
        });
        core.upstream(elements, now(), acts);
        self.note_room(had_room);
    }

    /// Count the queue for the client reaching its limit (upstream reads pause from there until
    /// the client fetches: main_loop's `room`).
    fn note_room(&self, had_room: bool) {
        if had_room && !self.core.has_room() {
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::QueuedBytes);
        }
    }

    /// Write a request's payloads upstream in one write (or keep them while connecting).
    async fn write_up_all(&mut self, els: &[Element]) -> Result<(), Error> {
        match &mut self.up {
            Up::Open(link) => link.send_all(els).await,
            Up::Connecting(backlog) => {
                backlog.extend_from_slice(els);
                Ok(())
            }
            Up::Closed if els.is_empty() => Ok(()),
            Up::Closed => Err(Error::UpstreamLost("upstream already closed".into())),
        }
    }

    /// XBOSH restart: a new stream header (for the domain the stream was opened for), with the
    /// `xml:lang` and `from` the restart request carries.
    async fn restart(&mut self, req: &Request) -> Result<(), Error> {
        let mut open = self.open.clone();
        if let Some(lang) = &req.lang {
            open.lang.clone_from(lang);
        }
        if req.from.is_some() {
            open.from.clone_from(&req.from);
        }
        match &mut self.up {
            Up::Open(link) => link.restart(&open).await,
            _ => Err(Error::BadRequest("restart before the upstream stream is open".into())),
        }
    }

    /// End the upstream by the one teardown rule (`Link::end`): what no response carried is
    /// bounced when the client will not come for it (XEP-0206 §7, BOSH-T-21).
    async fn close_upstream(&mut self, why: Error) {
        self.connecting = None;
        let Up::Open(link) = std::mem::replace(&mut self.up, Up::Closed) else { return };
        link.end(&why, &undelivered(&self.core.take_undelivered()), &self.state.tracker).await;
    }
}

/// Send one answer; the client may have gone away meanwhile (the cache covers a retransmission).
fn send(tx: oneshot::Sender<Reply>, status: u16, body: Bytes, content_type: &HeaderValue) {
    let _ = tx.send(Reply { status, body, content_type: content_type.clone() });
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

/// The core's `now`: tokio's clock (as a std `Instant`), so that the core's deadlines and the
/// shell's timer are on one clock, also when a test pauses it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
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
        Params::negotiate("sid".into(), &req, &crate::Config::default(), "x".into())
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
        let p = Params::negotiate("sid".into(), &req, &crate::Config::default(), "x".into());
        let (tx, _rx) = oneshot::channel();
        let (_stx, srx) = mpsc::channel(1);
        let fut = Session::run(state, p, Incoming { req, reply: tx, bytes: 0 }, srx);
        let size = std::mem::size_of_val(&fut);
        eprintln!("bosh session future: {size} bytes; Session {} Core {} Action {} Params {} link {} framer {}", std::mem::size_of::<Session>(), std::mem::size_of::<Core<oneshot::Sender<Reply>>>(), std::mem::size_of::<Action<oneshot::Sender<Reply>>>(), std::mem::size_of::<Params>(), std::mem::size_of::<Link>(), std::mem::size_of::<crate::xml::Framer>());
        assert!(size <= 4096, "bosh session future is {size} bytes");
    }

    /// BOSH-S-07, S-08, S-09, S-10, S-11, S-12, S-13 (§0.5 defaults).
    #[test]
    fn negotiation_table() {
        let p = negotiate("wait='3600' hold='4' ver='1.6'");
        assert_eq!((p.rules.wait.as_secs(), p.rules.hold, p.rules.requests), (60, 1, 2));
        assert_eq!(p.ver, (1, 6));
        assert!(!p.rules.legacy);
        let p = negotiate("wait='5' hold='1' ver='1.10'");
        assert_eq!((p.rules.wait.as_secs(), p.ver), (5, (1, 10)));
        let p = negotiate("wait='5' hold='1' ver='2.0'");
        assert_eq!(p.ver, VERSION);
        let p = negotiate("wait='5' hold='0'");
        assert!(p.rules.legacy && p.rules.polling_session());
        assert_eq!(p.rules.requests, 1);
        assert!(p.rules.inactivity > p.rules.polling * 2);
        let p = negotiate("wait='0' hold='1' content='text/plain; charset=utf-8'");
        assert!(p.rules.polling_session());
        assert_eq!(p.content_type, "text/plain; charset=utf-8");
        assert_eq!(negotiate("").content_type, "text/xml; charset=utf-8");
        assert_eq!(negotiate("xml:lang='de'").open.lang, "de");
        assert!(negotiate("ack='1'").rules.ack_mode);
    }
}

//! One task per BOSH session: the async shell around the session's rules ([`Core`],
//! `bosh/core.rs`). It owns what needs a runtime: the channel of [`Incoming`] requests and their
//! oneshot replies, the client throttle, the drain and domain token, the one timer, and the
//! upstream connection. Every event goes to the core with the time it happened; the core's
//! [`Action`]s (replies, upstream writes, a restart, the end) are carried out here in order.
//! HTTP handlers talk to the task only through the channel; no lock is held across an `.await`.
//!
//! The upstream IO is confined to `on_connected`, `on_event`, `write_up_all`, `restart` and
//! `close_upstream`, and for the added streams of a multi-stream session (XEP-0124 §16,
//! `[bosh] max_streams_per_session`) to `add_stream`, `on_added`, `write_streams`,
//! `restart_stream` and `close_stream`. The first stream is always `up`; added ones live in
//! `extra` (boxed, absent until a stream is added), each with its own admission permit and
//! session count, so every limit and gauge that counts sessions counts streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::http::HeaderValue;
use bytes::Bytes;
use futures_util::future::OptionFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{Future, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

use super::body::{Request, ResponseBody, VERSION};
use super::core::{Action, Core, Rules, StreamId, FIRST};
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
    // One span per session; the caller's span (client IP) is its parent.
    let span = tracing::info_span!("session", transport = "bosh", sid = %short(&params.sid));
    let session = Session::run(state.clone(), params, inc, rx, permit);
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
                // At most 64 (`Config::validate`).
                max_streams: u16::try_from(cfg.max_streams_per_session).unwrap_or(u16::MAX),
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

// The open link is the common case (one per session, inline in `Session`): boxing it would cost
// every session an allocation to make the rare `Connecting` state smaller.
#[allow(clippy::large_enum_variant)]
enum Up {
    /// Connecting; client payloads that arrive meanwhile wait here, in rid order.
    Connecting(Vec<Element>),
    Open(Link),
    Closed,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<(Link, Opened), Error>> + Send>>;
type Acts = Vec<Action<oneshot::Sender<Reply>>>;
type AddedConnect = Pin<Box<dyn Future<Output = (StreamId, Box<Result<(Link, Opened), Error>>)> + Send>>;

/// The streams added to a multi-stream session (the first one is `Session::up`).
#[derive(Default)]
struct Extra {
    streams: Vec<Added>,
    connecting: FuturesUnordered<AddedConnect>,
    /// Which stream is read first next time, so a busy one does not starve the others.
    turn: usize,
}

/// One added stream: its link, how it was opened (restarts open it alike), and what counts it.
struct Added {
    id: StreamId,
    up: Up,
    open: OpenParams,
    /// Cancelled when a reload stops serving this stream's domain (`AppState::domain_token`;
    /// the drain is the session's, not the stream's); `None` once it fired.
    gone: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    metrics: crate::metrics::SessionGuard,
    _permit: crate::limits::Permit,
}

enum AddedEvent {
    /// Boxed: it is the rare event, the upstream one the common.
    Connected(StreamId, Box<Result<(Link, Opened), Error>>),
    Upstream(StreamId, Result<Event, Error>),
}

impl Extra {
    fn get(&mut self, id: StreamId) -> Option<&mut Added> {
        self.streams.iter_mut().find(|a| a.id == id)
    }

    /// The next connect result, or (with `room` for the client's queue) the next event of an
    /// open stream. Cancel-safe: `Link::next` is.
    fn next_event<'a>(&'a mut self, room: bool, draining: &'a tokio_util::sync::CancellationToken) -> impl Future<Output = AddedEvent> + 'a {
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(Some((id, res))) = self.connecting.poll_next_unpin(cx) {
                return Poll::Ready(AddedEvent::Connected(id, res));
            }
            let n = self.streams.len();
            if !room || n == 0 {
                return Poll::Pending;
            }
            for a in &mut self.streams {
                let Some(gone) = a.gone.as_mut() else { continue };
                if gone.as_mut().poll(cx).is_ready() {
                    a.gone = None;
                    if !draining.is_cancelled() {
                        // A reload stopped serving this stream's domain: it ends alone.
                        return Poll::Ready(AddedEvent::Upstream(a.id, Err(Error::HostGone)));
                    }
                }
            }
            for k in 0..n {
                let i = (self.turn + k) % n;
                let a = &mut self.streams[i];
                let id = a.id;
                let Up::Open(link) = &mut a.up else { continue };
                if let Poll::Ready(ev) = std::pin::pin!(link.next()).poll(cx) {
                    self.turn = i + 1;
                    return Poll::Ready(AddedEvent::Upstream(id, ev));
                }
            }
            Poll::Pending
        })
    }
}

/// How a write or restart went: one stream's result, or the streams a multi-stream write
/// failed on.
enum Written {
    One(Result<(), Error>),
    Streams(Vec<(StreamId, Error)>),
}

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
    /// Multiple streams: the added ones (`None` until one is).
    extra: Option<Box<Extra>>,
}

impl Session {
    /// Run a new session: `creation` is the session request, already validated by [`start`];
    /// `permit` is its admission slot, held for the session's whole life. Not an `async fn`:
    /// that would keep `p` and `creation` in the future for the session's life, beside the
    /// session built from them (about 1.3 KiB per idle session).
    pub fn run(
        state: Arc<AppState>,
        p: Params,
        creation: Incoming,
        rx: mpsc::Receiver<Box<Incoming>>,
        permit: crate::limits::Permit,
    ) -> impl Future<Output = ()> + Send {
        let mut session = Session::new(state, p, creation);
        async move {
            let _permit = permit;
            session.main_loop(rx).await;
        }
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
            extra: None,
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
            let added = OptionFuture::from(self.extra.as_deref_mut().map(|x| x.next_event(room, &self.state.shutdown)));
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
                Some(event) = added => self.on_added(event).await,
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
            let multi = self.core.multi_stream();
            for act in acts.drain(..) {
                match act {
                    Action::Reply(tx, status, body) => send(tx, status, body, &self.content_type),
                    Action::Write(els) if multi => written = Some(Written::Streams(self.write_streams(None, &els).await)),
                    Action::Write(els) => written = Some(Written::One(self.write_up_all(&els).await)),
                    Action::Restart(req) => written = Some(Written::One(self.restart(&req).await)),
                    Action::WriteTo(id, els) => written = Some(Written::Streams(self.write_streams(Some(id), &els).await)),
                    Action::RestartOn(id, req) => written = Some(Written::Streams(self.restart_stream(id, &req).await)),
                    Action::AddStream(id, req) => written = Some(Written::One(self.add_stream(id, &req))),
                    Action::CloseStream(id, err) => self.close_stream(id, err).await,
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
            match written {
                None => return,
                Some(Written::One(res)) => self.core.written(res, now(), &mut self.acts),
                Some(Written::Streams(failed)) => self.core.written_streams(failed, now(), &mut self.acts),
            }
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
        core.upstream(elements(std::iter::once(event).chain(buffered)), now(), acts);
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
        restart_up(&mut self.up, &self.open, req).await
    }

    /// End the upstream by the one teardown rule (`Link::end`): what no response carried is
    /// bounced when the client will not come for it (XEP-0206 §7, BOSH-T-21). Every added
    /// stream ends alike, with what its own queue still holds.
    async fn close_upstream(&mut self, why: Error) {
        self.connecting = None;
        if let Some(extra) = self.extra.take() {
            for mut a in extra.streams {
                a.metrics.end(&why);
                if let Up::Open(link) = a.up {
                    link.end(&why, || undelivered(&self.core.take_undelivered_of(a.id)), &self.state.tracker).await;
                }
            }
        }
        let Up::Open(link) = std::mem::replace(&mut self.up, Up::Closed) else { return };
        link.end(&why, || undelivered(&self.core.take_undelivered()), &self.state.tracker).await;
    }

    // ------------------------------------------------------------------ multiple streams

    /// An add-stream request (XEP-0124 §16.3), in rid order: the same checks as a creation,
    /// before any DNS or TCP work (the domain served, `route` allow-listed, else host-unknown;
    /// then an admission permit of its own), then the connect starts in the background. A
    /// refusal refuses this stream only.
    fn add_stream(&mut self, id: StreamId, req: &Request) -> Result<(), Error> {
        let refused = |e: Error| {
            crate::metrics::metrics().pre_session(crate::metrics::Transport::Bosh, &e);
            debug!(sid = %short(&self.sid), kind = e.kind(), error = %e, "stream refused");
            Err(e)
        };
        if self.state.shutdown.is_cancelled() {
            return refused(Error::Shutdown);
        }
        let cfg = self.state.config();
        let Some(domain) = req.to.as_deref().map(str::trim).filter(|d| !d.is_empty()).map(str::to_ascii_lowercase) else {
            return refused(Error::ImproperAddressing);
        };
        if !cfg.serves(&domain) {
            return refused(Error::HostUnknown);
        }
        let route = match req.route.as_deref() {
            None => None,
            Some(r) => match allowed_route(&cfg.upstream.allow_route, r) {
                Some(t) => Some(t),
                None => return refused(Error::HostUnknown),
            },
        };
        let permit = match self.state.admission.admit(self.open.client.map(|c| c.ip())) {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
        let open = OpenParams {
            domain,
            lang: req.lang.clone().unwrap_or_else(|| self.open.lang.clone()),
            version: req.xmpp_version.clone().unwrap_or_else(|| self.open.version.clone()),
            from: req.from.clone(),
            client: self.open.client,
        };
        let (up_ctx, connect_open) = (self.state.live().upstream.clone(), open.clone());
        let gone = Some(Box::pin(self.state.domain_token(&open.domain).cancelled_owned()));
        let extra = self.extra.get_or_insert_with(Default::default);
        extra.connecting.push(Box::pin(async move { (id, Box::new(Link::open(&up_ctx, &connect_open, route).await)) }));
        extra.streams.push(Added {
            id,
            up: Up::Connecting(Vec::new()),
            open,
            gone,
            metrics: crate::metrics::metrics().session_started(crate::metrics::Transport::Bosh),
            _permit: permit,
        });
        Ok(())
    }

    /// A connect result or upstream event of an added stream, for the core. Boxed: a rare
    /// path must not size the future every idle session keeps.
    async fn on_added(&mut self, event: AddedEvent) {
        Box::pin(self.on_added_inner(event)).await
    }

    async fn on_added_inner(&mut self, event: AddedEvent) {
        match event {
            AddedEvent::Connected(id, res) => self.added_connected(id, *res).await,
            AddedEvent::Upstream(id, event) => {
                let had_room = self.core.has_room();
                let Session { core, acts, extra, .. } = self;
                let mut link = extra.as_deref_mut().and_then(|x| x.get(id)).and_then(|a| match &mut a.up {
                    Up::Open(link) => Some(link),
                    _ => None,
                });
                let buffered = std::iter::from_fn(|| link.as_mut().and_then(|l| l.try_next_buffered()));
                core.upstream_on(id, elements(std::iter::once(event).chain(buffered)), now(), acts);
                self.note_room(had_room);
            }
        }
        self.execute().await;
    }

    /// An added stream's connect finished: what the client sent meanwhile goes first, then
    /// its features go to the client (tagged with its name).
    async fn added_connected(&mut self, id: StreamId, res: Result<(Link, Opened), Error>) {
        let (mut link, opened) = match res {
            Ok(o) => o,
            Err(e) => {
                warn!(sid = %short(&self.sid), kind = e.kind(), error = %e, "upstream connect of an added stream failed");
                return self.core.stream_failed(id, e, now(), &mut self.acts);
            }
        };
        // A stream closed while it connected: nothing is owed on it.
        let Some(a) = self.extra.as_deref_mut().and_then(|x| x.get(id)) else { return };
        let backlog = match std::mem::replace(&mut a.up, Up::Closed) {
            Up::Connecting(b) => b,
            _ => Vec::new(),
        };
        let res = link.send_all(&backlog).await;
        a.up = Up::Open(link);
        let had_room = self.core.has_room();
        match res {
            Ok(()) => self.core.stream_connected(id, opened.features, now(), &mut self.acts),
            Err(e) => self.core.stream_failed(id, e, now(), &mut self.acts),
        }
        self.note_room(had_room);
    }

    /// Write payloads to one stream (`Some`) or to every open one; the streams it failed on.
    async fn write_streams(&mut self, to: Option<StreamId>, els: &[Element]) -> Vec<(StreamId, Error)> {
        let mut failed = Vec::new();
        if to.is_none_or(|id| id == FIRST) && !matches!(self.up, Up::Closed) {
            if let Err(e) = self.write_up_all(els).await {
                failed.push((FIRST, e));
            }
        }
        for a in self.extra.as_deref_mut().map(|x| x.streams.as_mut_slice()).unwrap_or_default() {
            if to.is_some_and(|id| id != a.id) {
                continue;
            }
            let res = match &mut a.up {
                Up::Open(link) => link.send_all(els).await,
                Up::Connecting(backlog) => {
                    backlog.extend_from_slice(els);
                    Ok(())
                }
                Up::Closed => Ok(()),
            };
            if let Err(e) = res {
                failed.push((a.id, e));
            }
        }
        failed
    }

    /// XBOSH restart of one stream of a multi-stream session.
    async fn restart_stream(&mut self, id: StreamId, req: &Request) -> Vec<(StreamId, Error)> {
        let res = if id == FIRST {
            self.restart(req).await
        } else {
            match self.extra.as_deref_mut().and_then(|x| x.get(id)) {
                Some(a) => restart_up(&mut a.up, &a.open, req).await,
                None => Err(Error::BadRequest("restart of a closed stream".into())),
            }
        };
        res.err().map(|e| vec![(id, e)]).unwrap_or_default()
    }

    /// One stream of several is over (the session is not): its link ends by the teardown rule.
    async fn close_stream(&mut self, id: StreamId, why: Error) {
        debug!(sid = %short(&self.sid), stream = id, kind = why.kind(), error = %why, "stream ends");
        let up = if id == FIRST {
            self.connecting = None;
            std::mem::replace(&mut self.up, Up::Closed)
        } else {
            let Some(x) = self.extra.as_deref_mut() else { return };
            let Some(i) = x.streams.iter().position(|a| a.id == id) else { return };
            let mut a = x.streams.remove(i);
            a.metrics.end(&why);
            a.up
        };
        if let Up::Open(link) = up {
            link.end(&why, Vec::new, &self.state.tracker).await;
        }
    }
}

/// XBOSH restart of a stream: a new stream header (for the domain it was opened for), with
/// the `xml:lang` and `from` the restart request carries.
async fn restart_up(up: &mut Up, base: &OpenParams, req: &Request) -> Result<(), Error> {
    let mut open = base.clone();
    if let Some(lang) = &req.lang {
        open.lang.clone_from(lang);
    }
    if req.from.is_some() {
        open.from.clone_from(&req.from);
    }
    match up {
        Up::Open(link) => link.restart(&open).await,
        _ => Err(Error::BadRequest("restart before the upstream stream is open".into())),
    }
}

/// Upstream events as the core takes them: elements and the end; a new stream header (after a
/// restart) needs nothing, its features follow.
fn elements(events: impl Iterator<Item = Result<Event, Error>>) -> impl Iterator<Item = Result<Element, Error>> {
    events.filter_map(|e| match e {
        Ok(Event::Element(el)) => Some(Ok(el)),
        Ok(Event::Header(_)) => None,
        Err(e) => Some(Err(e)),
    })
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

    // A runtime: building the session arms its timer.
    #[tokio::test]
    async fn session_future_size() {
        let state = crate::state::AppState::new(std::sync::Arc::new(crate::Config::default())).unwrap();
        let req = parse(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1' to='x'/>", &Default::default()).unwrap();
        let p = Params::negotiate("sid".into(), &req, &crate::Config::default(), "x".into());
        let (tx, _rx) = oneshot::channel();
        let (_stx, srx) = mpsc::channel(1);
        let permit = state.admission.admit(None).unwrap();
        let fut = Session::run(state, p, Incoming { req, reply: tx, bytes: 0 }, srx, permit);
        let size = std::mem::size_of_val(&fut);
        eprintln!("bosh session future: {size} bytes; Session {} Core {} Action {} Params {} link {} framer {}", std::mem::size_of::<Session>(), std::mem::size_of::<Core<oneshot::Sender<Reply>>>(), std::mem::size_of::<Action<oneshot::Sender<Reply>>>(), std::mem::size_of::<Params>(), std::mem::size_of::<Link>(), std::mem::size_of::<crate::xml::Framer>());
        // 3,528 bytes before the core (issue 15), 2,968 with multiple streams, 2,328 once `run`
        // stopped keeping its arguments beside the session (issue 17).
        assert!(size <= 2400, "bosh session future is {size} bytes");
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

//! The rules of one BOSH session as a synchronous state machine: the rid window, held and
//! parked requests, repeats, keys, acks and reports, pause, polling and overactivity,
//! inactivity, the terminal body and the terminate fan-out. It takes requests, elements from
//! the upstream and timer ticks, each with an explicit `now`, and pushes [`Action`]s that the
//! session task (`bosh/session.rs`, the async shell) carries out. No IO, no clock, no channel:
//! a request's reply handle is the type parameter `R`, so the table tests need no runtime.
//!
//! Invariants (cite by name):
//! - *in-order*: payloads are written upstream strictly in rid order; early rids are parked.
//! - *answer-in-order*: held requests are answered oldest first.
//! - *no-duplicate*: a repeated rid is answered from the cache or swapped for the held copy; its
//!   payload is never written upstream twice.
//! - *nothing-lost*: every stanza from upstream is queued until a response carries it; the
//!   session's terminal response is kept until the client comes to fetch it (or goes idle).
//! - *one-write*: a [`Action::Write`], [`Action::WriteTo`], [`Action::Restart`],
//!   [`Action::RestartOn`] or [`Action::AddStream`] is always the last action pushed; nothing
//!   more happens until the shell reports its result with [`Core::written`] (or
//!   [`Core::written_streams`]).
//! - *one-stream-per-body*: with multiple streams (XEP-0124 §16, `core/streams.rs`) a
//!   response carries the payloads of one stream and names it; a terminate that names a
//!   stream ends only that stream.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::body::{Request, ResponseBody};
use super::window::{Class, Window};
use crate::error::{Error, Policy};
use crate::xml::{ns, Element, StreamHeader};

mod streams;

use streams::{Ending, Streams};
pub use streams::{StreamId, FIRST};

/// After the client acknowledged less than we answered, how old the oldest unacknowledged
/// response must be before we tell the client with `report`/`time` (XEP-0124 §9.2). Below this
/// the response is probably still on its way.
pub const REPORT_AFTER: Duration = Duration::from_secs(2);

/// The too-soon empty request (XEP-0124 §11, BOSH-R-16 b) that ends a long-polling session:
/// the third in a row. One comes from a client that gave a held request up (a page reload that
/// restores the session), two from a second reload within `polling`; a loop produces one per
/// round trip ([`Core::check_overactivity`]).
const EMPTY_STREAK_LIMIT: u32 = 3;

/// The session values the rules read (negotiated at creation, plus two configured limits).
#[derive(Debug, Clone)]
pub struct Rules {
    pub wait: Duration,
    pub hold: usize,
    pub requests: u64,
    pub inactivity: Duration,
    pub polling: Duration,
    /// `maxpause` in seconds; `None` when pause is off.
    pub maxpause: Option<u64>,
    /// Created without `ver`: binding errors use HTTP status codes (XEP-0124 §17.1).
    pub legacy: bool,
    /// Client asked for acks (`ack='1'` at creation).
    pub ack_mode: bool,
    /// `bosh.max_rid_repeats` (BOSH-R-13).
    pub max_rid_repeats: u32,
    /// `limits.max_queued_bytes`: above it the upstream is no longer read (backpressure).
    pub max_queued_bytes: usize,
    /// `bosh.max_streams_per_session`; 1: multiple streams are off (nothing advertised). A
    /// `u16` (at most 64): it fits where the fields above leave padding.
    pub max_streams: u16,
}

impl Rules {
    /// `wait` 0 or `hold` 0: the client polls (XEP-0124 §12).
    pub fn polling_session(&self) -> bool {
        self.wait.is_zero() || self.hold == 0
    }
}

/// What the shell does for the core, in the order pushed.
#[derive(Debug)]
pub enum Action<R> {
    /// Answer the request behind the handle with this status and body.
    Reply(R, u16, Bytes),
    /// Write these payloads upstream in one write, then report with [`Core::written`].
    Write(Vec<Element>),
    /// XBOSH restart: restart the upstream stream with this request's `xml:lang` and `from`,
    /// then report with [`Core::written`] (the link refuses a restart before SASL success:
    /// that report ends the session, this request the trigger). Boxed: rare, and it keeps
    /// `Action` small.
    Restart(Box<Request>),
    /// The session ends for this reason: record it first, end the upstream after the replies
    /// pushed with it are out, bouncing [`Core::take_undelivered`] (`crate::link::Link::end`).
    End(Error),
    /// Multiple streams: write these payloads to this stream only, then report with
    /// [`Core::written_streams`]. ([`Action::Write`] goes to every open stream.)
    WriteTo(StreamId, Vec<Element>),
    /// Multiple streams: restart this stream, then report with [`Core::written_streams`].
    RestartOn(StreamId, Box<Request>),
    /// Multiple streams: check this add-stream request (`to`, `route`, admission) and start
    /// connecting the stream; report the check with [`Core::written`] (an `Err` refuses the
    /// stream, the session goes on), the connect later with [`Core::stream_connected`] or
    /// [`Core::stream_failed`].
    AddStream(StreamId, Box<Request>),
    /// Multiple streams: this stream is over (the session is not): end its upstream by the
    /// teardown rule for this reason. Nothing is owed on it: what it queued goes to the client.
    CloseStream(StreamId, Error),
}

struct Held<R> {
    rid: u64,
    reply: R,
    deadline: Instant,
    /// The request carried no payload (for the polling-frequency rule).
    empty: bool,
}

/// The request whose upstream write the shell is doing (*one-write*).
enum Pending<R> {
    /// Held once the write succeeded; ends the session (as the trigger) when it failed.
    Hold(Held<R>),
    /// A client terminate: the fan-out follows the write, whatever its result (BOSH-T-01).
    Terminate(R),
    /// An add-stream request being checked by the shell (the stream is `Streams::pending`):
    /// answered at once either way.
    Add(Held<R>),
    /// A client terminate of one stream of several (§16.5, the stream is `Streams::pending`):
    /// answered once its payloads went to that stream, whatever the result.
    CloseOne(Held<R>),
}

/// Which of a multi-stream session's streams a request is for (§16.3, §16.4).
enum Target {
    /// An empty request with `to`: add a stream.
    Add,
    /// The open stream it names.
    One(StreamId),
    /// It names no open stream (and carries something for one).
    Unknown(String),
    /// No `stream` (or one on an empty request, ignored): every open stream.
    All,
}

pub struct Core<R> {
    rules: Rules,
    window: Window,
    held: VecDeque<Held<R>>,
    parked: BTreeMap<u64, (Request, R)>,
    pending: Option<Pending<R>>,
    /// Stanzas waiting for a response to carry them (already rewritten by relay).
    out: String,
    /// Attributes for the next response (creation attributes, or `from`/`authid` that were not
    /// known yet when the creation response left).
    next_attrs: Vec<(&'static str, String)>,
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
    /// Too-soon empty requests in a row (BOSH-R-16 b, [`EMPTY_STREAK_LIMIT`]).
    empty_streak: u32,
    /// When an empty request of a polling session was last answered empty (BOSH-R-16 a).
    last_empty_poll: Option<Instant>,
    /// Set when the session is over but the client has not fetched the final body yet.
    terminal: Option<Bytes>,
    done: bool,
    /// Multiple streams (XEP-0124 §16), when the session advertised them. `None`: one stream,
    /// whose queue is `out`.
    multi: Option<Box<Streams>>,
}

impl<R> Core<R> {
    /// A new session: `creation` (its rid, `newkey`) is held until the upstream features
    /// arrive, at most `wait` (BOSH-S-31); its response carries the creation attributes.
    pub fn new(rules: Rules, sid: &str, ver: (u32, u32), creation: &Request, reply: R, now: Instant) -> Self {
        let mut next_attrs: Vec<(&'static str, String)> = vec![
            ("sid", sid.to_owned()),
            ("wait", rules.wait.as_secs().to_string()),
            ("requests", rules.requests.to_string()),
            ("hold", rules.hold.to_string()),
            ("inactivity", rules.inactivity.as_secs().to_string()),
            ("polling", rules.polling.as_secs().to_string()),
            ("ver", format!("{}.{}", ver.0, ver.1)),
            ("xmpp:restartlogic", "true".into()),
        ];
        if let Some(mp) = rules.maxpause {
            next_attrs.push(("maxpause", mp.to_string()));
        }
        if rules.ack_mode {
            next_attrs.push(("ack", creation.rid.to_string()));
        }
        let cache_cap = if rules.ack_mode { 16 } else { rules.requests as usize };
        let held = Held { rid: creation.rid, reply, deadline: now + rules.wait, empty: creation.is_empty() };
        Core {
            window: Window::new(creation.rid, rules.requests, cache_cap),
            held: VecDeque::from([held]),
            parked: BTreeMap::new(),
            pending: None,
            out: String::new(),
            next_attrs,
            idle_since: now,
            inactivity: rules.inactivity,
            key: creation.newkey.as_deref().map(str::to_ascii_lowercase),
            repeats: (0, 0),
            prev_new: None,
            empty_streak: 0,
            last_empty_poll: None,
            terminal: None,
            done: false,
            multi: (rules.max_streams > 1).then(|| Box::new(Streams::new(sid, rules.max_streams.into()))),
            rules,
        }
    }

    /// The session advertised multiple streams: the shell keeps a link per [`StreamId`].
    pub fn multi_stream(&self) -> bool {
        self.multi.is_some()
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The session is over: the shell stops.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether the upstream may be read: a client that does not fetch its stanzas stops us
    /// reading, so the server (not xmpp-cm) buffers or applies its own policy.
    pub fn has_room(&self) -> bool {
        self.out.len() + self.multi.as_ref().map_or(0, |m| m.queued_bytes()) < self.rules.max_queued_bytes
    }

    /// What no response carried (serialized stanzas), for bounces when the client is gone: the
    /// first stream's.
    pub fn take_undelivered(&mut self) -> String {
        self.take_undelivered_of(FIRST)
    }

    /// What no response carried of one stream (multiple streams; the first stream's otherwise).
    pub fn take_undelivered_of(&mut self, id: StreamId) -> String {
        match self.multi.as_deref_mut() {
            Some(m) => m.take_out(id),
            None => std::mem::take(&mut self.out),
        }
    }

    /// Anything queued for a response (stanzas, or a stream's terminate).
    fn has_output(&self) -> bool {
        !self.out.is_empty() || self.multi.as_ref().is_some_and(|m| m.has_output())
    }

    /// When [`Core::tick`] is due: the oldest held request's `wait` deadline, or the inactivity
    /// deadline when nothing is held or parked (never both).
    pub fn deadline(&self) -> Option<Instant> {
        match self.held.front() {
            Some(h) => Some(h.deadline),
            None => self.parked.is_empty().then(|| self.idle_since + self.inactivity),
        }
    }

    /// The timer fired: answer the oldest held request empty, or end an idle session.
    pub fn tick(&mut self, now: Instant, acts: &mut Vec<Action<R>>) {
        match self.held.front() {
            Some(h) if h.deadline <= now => self.answer_oldest(now, acts),
            Some(_) => {}
            None if self.parked.is_empty() && self.idle_since + self.inactivity <= now => {
                self.end(Error::ClientGone, None, now, acts);
            }
            None => {}
        }
    }

    // ------------------------------------------------------------------ upstream events

    /// The upstream stream is open: its header's values go into the next response and its
    /// features are queued. The shell then writes what waited for the connection and reports
    /// with [`Core::written`], which answers.
    pub fn connected(&mut self, header: StreamHeader, features: Element) {
        if let Some(from) = header.from {
            self.next_attrs.push(("from", from));
        }
        if let Some(id) = header.id {
            self.next_attrs.push(("authid", id));
        }
        self.next_attrs.push(("xmpp:version", header.version.unwrap_or_else(|| "1.0".into())));
        self.queue(features);
    }

    /// Elements from the upstream (already rewritten by relay), the first one read and whatever
    /// was already buffered with it; the end of the server's stream (`<stream:error/>`,
    /// `</stream:stream>`, a read error) is an `Err`. Everything that arrived together leaves in
    /// the same response; an end ends the session after answering what came before.
    pub fn upstream(&mut self, items: impl Iterator<Item = Result<Element, Error>>, now: Instant, acts: &mut Vec<Action<R>>) {
        self.upstream_on(FIRST, items, now, acts)
    }

    /// [`Core::upstream`] for one stream of a multi-stream session: the end of a stream that
    /// is not the last open one ends only that stream (§16.6).
    pub fn upstream_on(&mut self, id: StreamId, items: impl Iterator<Item = Result<Element, Error>>, now: Instant, acts: &mut Vec<Action<R>>) {
        let mut queued = false;
        for item in items {
            match item {
                Ok(el) => {
                    self.queue_on(id, el);
                    queued = true;
                }
                Err(e) => {
                    if queued {
                        self.flush(now, acts);
                    }
                    return self.stream_failed(id, e, now, acts);
                }
            }
        }
        if queued {
            self.flush(now, acts);
        }
    }

    /// Take an element from upstream (already rewritten by relay) for the client.
    fn queue(&mut self, el: Element) {
        self.queue_on(FIRST, el)
    }

    fn queue_on(&mut self, id: StreamId, el: Element) {
        if let Some(m) = self.multi.as_deref_mut() {
            return m.queue(id, &el);
        }
        // `out` starts empty after every response: one allocation of a typical batch's size
        // rather than a string doubling from 8 bytes.
        if self.out.capacity() == 0 {
            self.out.reserve(1024);
        }
        // Serialized now (self-contained), so its size counts against `max_queued_bytes`.
        el.write_xml(&mut self.out, "");
    }

    /// An added stream is open: its features go to the client in a response naming it.
    pub fn stream_connected(&mut self, id: StreamId, features: Element, now: Instant, acts: &mut Vec<Action<R>>) {
        self.queue_on(id, features);
        self.flush(now, acts);
    }

    /// A stream ended for a reason the shell found (its connect, a write, a restart, the
    /// server). With other streams open only this one ends: its link is closed now, its
    /// terminate (`stream` named, with what it queued) goes in the next response. The last
    /// open stream, or a single-stream session, ends the session.
    pub fn stream_failed(&mut self, id: StreamId, e: Error, now: Instant, acts: &mut Vec<Action<R>>) {
        match self.multi.as_deref_mut() {
            Some(m) if m.is_open(id) && m.open_count() > 1 => {
                m.end(id, Ending::of(&e));
                acts.push(Action::CloseStream(id, e));
                self.flush(now, acts);
            }
            // Already over (its terminate is queued or out): nothing more to end.
            Some(m) if !m.is_open(id) => {}
            _ => self.end(e, None, now, acts),
        }
    }

    /// The result of an [`Action::WriteTo`], [`Action::RestartOn`] or a broadcast
    /// [`Action::Write`] of a multi-stream session: the streams it failed on end (as in
    /// [`Core::stream_failed`]); the request goes on unless no stream is left.
    pub fn written_streams(&mut self, failed: Vec<(StreamId, Error)>, now: Instant, acts: &mut Vec<Action<R>>) {
        for (id, e) in failed {
            let (open, others) = self.multi.as_ref().map_or((true, false), |m| (m.is_open(id), m.open_count() > 1));
            if !open {
                continue;
            }
            if !others {
                return self.written(Err(e), now, acts);
            }
            self.stream_failed(id, e, now, acts);
        }
        self.written(Ok(()), now, acts)
    }

    /// The write (or restart) asked for by the last [`Action::Write`]/[`Action::Restart`] is
    /// done, or, with none asked for, the backlog written after [`Core::connected`].
    pub fn written(&mut self, res: Result<(), Error>, now: Instant, acts: &mut Vec<Action<R>>) {
        match (self.pending.take(), res) {
            (Some(Pending::Terminate(reply)), _) => self.terminate_fan_out(reply, acts),
            (Some(Pending::Hold(h)), Ok(())) => {
                self.hold(h, now, acts);
                self.take_parked(now, acts);
            }
            (Some(Pending::Hold(h)), Err(e)) => self.end(e, Some(h.reply), now, acts),
            (Some(Pending::Add(held)), res) => {
                self.stream_added(held, res, now, acts);
                self.take_parked(now, acts);
            }
            (Some(Pending::CloseOne(held)), _) => {
                self.close_one(held, now, acts);
                self.take_parked(now, acts);
            }
            (None, Ok(())) => self.flush(now, acts),
            (None, Err(e)) => self.end(e, None, now, acts),
        }
    }

    // ------------------------------------------------------------------ client requests

    /// A request for this session (already through the throttle).
    pub fn request(&mut self, req: Request, reply: R, now: Instant, acts: &mut Vec<Action<R>>) {
        if let Some(body) = self.terminal.take() {
            // The session already ended; this is the client coming to learn why.
            acts.push(Action::Reply(reply, 200, body));
            self.done = true;
            return;
        }
        let rid = req.rid;
        match self.window.classify(rid) {
            Class::TooHigh => self.end(Error::ItemNotFound("rid outside the window"), Some(reply), now, acts),
            Class::Repeat => self.on_repeat(rid, reply, now, acts),
            Class::Early if self.parked.contains_key(&rid) => {
                // A retransmission of a parked rid: the newest copy wins (BOSH-R-11).
                if let Some((_, old)) = self.parked.insert(rid, (req, reply)) {
                    acts.push(Action::Reply(old, 200, recoverable()));
                }
                self.count_repeat(rid, now, acts);
            }
            Class::Early => {
                if let Err(e) = self.check_overactivity(&req, now) {
                    return self.end(e, Some(reply), now, acts);
                }
                self.parked.insert(rid, (req, reply));
            }
            Class::Next => {
                if let Err(e) = self.check_overactivity(&req, now) {
                    return self.end(e, Some(reply), now, acts);
                }
                self.process(req, reply, now, acts);
                self.take_parked(now, acts);
            }
        }
    }

    /// Process parked requests that are now in order, until one waits for its write.
    fn take_parked(&mut self, now: Instant, acts: &mut Vec<Action<R>>) {
        while !self.done && self.pending.is_none() {
            let Some((req, reply)) = self.parked.remove(&self.window.next_rid()) else { break };
            self.process(req, reply, now, acts);
        }
    }

    fn on_repeat(&mut self, rid: u64, reply: R, now: Instant, acts: &mut Vec<Action<R>>) {
        if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
            // Still held: answer the older copy with a recoverable error, keep the newest.
            let old = std::mem::replace(&mut h.reply, reply);
            acts.push(Action::Reply(old, 200, recoverable()));
            return self.count_repeat(rid, now, acts);
        }
        if let Some(c) = self.window.cached(rid) {
            acts.push(Action::Reply(reply, 200, c.body.clone()));
            return self.count_repeat(rid, now, acts);
        }
        self.end(Error::ItemNotFound("response no longer cached"), Some(reply), now, acts);
    }

    fn count_repeat(&mut self, rid: u64, now: Instant, acts: &mut Vec<Action<R>>) {
        if self.repeats.0 == rid {
            self.repeats.1 += 1;
        } else {
            self.repeats = (rid, 1);
        }
        if self.repeats.1 > self.rules.max_rid_repeats {
            self.end(Error::PolicyViolation(Policy::RidRepeatedTooOften), None, now, acts);
        }
    }

    /// XEP-0124 §11 overactivity, for a new (not repeated) request before it is processed:
    /// - more unanswered new requests than `requests` is `TooManyRequests` (one more allowed
    ///   when the newest is a pause or terminate), BOSH-R-14;
    /// - a polling session's empty request sooner than `polling` after an empty answer is
    ///   `PollingTooFrequently` (§12, BOSH-R-16 a);
    /// - an empty request that finds `requests` open, the previous new request empty and less
    ///   than `polling` ago, is *too soon* (§11, BOSH-R-16 b); only the
    ///   [`EMPTY_STREAK_LIMIT`]th too-soon request in a row is `EmptyRequestsTooFrequently`.
    ///
    /// Why a streak and not the first too-soon request, as §11 reads (measurements and commands:
    /// bench/findings.md, "Issue 18: BOSH overactivity"). A long-polling client sends a new empty
    /// request only when it has none outstanding, so one that finds an empty request still held
    /// here has given that request up on its side: a page reload that restores the session
    /// (strophe.js `restore`/`attach`, converse.js `keepalive`) continues with the next rid while
    /// the old page's poll is still held, and a reload within `polling` of that poll was ended by
    /// the first-request rule (Prosody and ejabberd keep such sessions: neither enforces §11 in
    /// a long-poll session). Such a client sends one too-soon request and then waits on it for
    /// up to `wait`, so the streak ends there. Retries after a failed HTTP exchange (a held
    /// request cut by a proxy with 502/504, a reset, a lost response) repeat the rid (strophe.js
    /// `_processRequest`, same rid with backoff) and never reach this check; they have their own
    /// cap (BOSH-R-13). A client looping empty requests with two in flight, by contrast, is too
    /// soon on every request, and is ended after [`EMPTY_STREAK_LIMIT`] of them; firing more
    /// than `requests` at once is `TooManyRequests` at once. Any request that is not too soon
    /// (a payload, a gap of `polling`, nothing else held) resets the streak.
    fn check_overactivity(&mut self, req: &Request, now: Instant) -> Result<(), Error> {
        // `req` is neither held nor parked yet.
        let pending = self.held.len() + self.parked.len() + 1;
        let extra = u64::from(req.terminate || req.pause.is_some());
        if pending as u64 > self.rules.requests + extra {
            return Err(Error::PolicyViolation(Policy::TooManyRequests));
        }
        // Adding a stream (a multi-stream session's empty request with `to`, §16.2) asks for
        // something: it is not an idle poll.
        let adds = self.multi.is_some() && req.to.is_some();
        let idle = req.is_empty() && !req.terminate && req.pause.is_none() && !req.restart && !adds;
        if self.rules.polling_session() {
            if idle && self.last_empty_poll.is_some_and(|t| now.duration_since(t) < self.rules.polling) {
                return Err(Error::PolicyViolation(Policy::PollingTooFrequently));
            }
            return Ok(());
        }
        let too_soon = idle
            && pending as u64 == self.rules.requests
            // In rid order the newest request is a parked one when any is parked: then the
            // last two are not both this empty one and its predecessor (XEP-0124 §11).
            && self.parked.range(req.rid + 1..).next().is_none()
            && self.prev_new.is_some_and(|(t, empty)| empty && now.duration_since(t) < self.rules.polling);
        self.empty_streak = if too_soon { self.empty_streak + 1 } else { 0 };
        if self.empty_streak >= EMPTY_STREAK_LIMIT {
            return Err(Error::PolicyViolation(Policy::EmptyRequestsTooFrequently));
        }
        Ok(())
    }

    /// Process the next in-order request.
    fn process(&mut self, mut req: Request, reply: R, now: Instant, acts: &mut Vec<Action<R>>) {
        self.window.advance();
        self.prev_new = Some((now, req.is_empty()));
        self.inactivity = self.rules.inactivity;

        // Key sequencing (XEP-0124 §15): verify before anything of this request is used.
        if let Some(expected) = &self.key {
            let ok = req.key.as_deref().is_some_and(|k| hex::encode(Sha1::digest(k.as_bytes())) == *expected);
            if !ok {
                return self.end(Error::ItemNotFound("key sequence mismatch"), Some(reply), now, acts);
            }
            // The next key must hash to this one, unless this request starts a new sequence.
            self.key = req.newkey.as_deref().or(req.key.as_deref()).map(str::to_ascii_lowercase);
        } else if let Some(nk) = &req.newkey {
            self.key = Some(nk.to_ascii_lowercase());
        }

        if let Some(ack) = req.ack.filter(|_| self.rules.ack_mode) {
            let report = self.report_for(ack, now);
            self.window.ack(ack);
            if let Some(report) = report {
                // The client missed a response: tell it at once which one (§9.2).
                acts.push(Action::Reply(reply, 200, report));
                return;
            }
        }

        if self.multi.is_some() {
            return self.process_multi(req, reply, now, acts);
        }

        if req.terminate {
            let payloads = std::mem::take(&mut req.payloads);
            return self.write_then(Pending::Terminate(reply), None, payloads, now, acts);
        }

        if let (Some(pause), Some(max)) = (req.pause, self.rules.maxpause) {
            return self.pause(Duration::from_secs(pause.min(max)), reply, now, acts);
        }

        let held = Held { rid: req.rid, reply, deadline: now + self.rules.wait, empty: req.is_empty() };
        if req.restart {
            // Stanzas inside a restart body are ignored (XBOSH-10).
            req.payloads.clear();
            self.pending = Some(Pending::Hold(held));
            acts.push(Action::Restart(Box::new(req)));
        } else {
            let payloads = std::mem::take(&mut req.payloads);
            self.write_then(Pending::Hold(held), None, payloads, now, acts);
        }
    }

    /// [`Core::process`] of a multi-stream session, after the key and ack rules: which stream
    /// the request is for decides where its payloads, terminate or restart go (§16.3–§16.5).
    fn process_multi(&mut self, mut req: Request, reply: R, now: Instant, acts: &mut Vec<Action<R>>) {
        let Some(m) = self.multi.as_deref() else { return };
        let carries = !req.is_empty() || req.terminate || req.restart;
        let target = match &req.stream {
            _ if req.to.is_some() && !carries && req.pause.is_none() => Target::Add,
            // An empty body's `stream` means nothing (§16.4): it is an ordinary poll.
            Some(name) if carries => m.find(name).map_or_else(|| Target::Unknown(name.clone()), Target::One),
            _ => Target::All,
        };
        let (open, first_open) = (m.open_count(), m.first_open());
        let held = Held { rid: req.rid, reply, deadline: now + self.rules.wait, empty: req.is_empty() };
        match target {
            Target::Add => match self.multi.as_deref_mut().map(|m| m.add(req.to.as_deref().unwrap_or_default())) {
                Some(Ok(id)) => {
                    self.pending = Some(Pending::Add(held));
                    acts.push(Action::AddStream(id, Box::new(req)));
                }
                // At the cap: this stream is refused, the session goes on (§16.6).
                Some(Err(name)) => {
                    let b = ResponseBody::terminate(Some("policy-violation")).attr("stream", name);
                    self.answer_now(held, b, now, acts);
                }
                None => {}
            },
            // §16.4: an unknown stream is item-not-found for that stream; the session goes on.
            Target::Unknown(name) => {
                let b = ResponseBody::terminate(Some("item-not-found")).attr("stream", name);
                self.answer_now(held, b, now, acts);
            }
            // Closing one stream of several (§16.5); the last one's terminate is the session's.
            Target::One(id) if req.terminate && open > 1 => {
                let payloads = std::mem::take(&mut req.payloads);
                if let Some(m) = self.multi.as_deref_mut() {
                    m.pending = Some(id);
                }
                self.write_then(Pending::CloseOne(held), Some(id), payloads, now, acts);
            }
            _ if req.terminate => {
                let payloads = std::mem::take(&mut req.payloads);
                self.write_then(Pending::Terminate(held.reply), None, payloads, now, acts);
            }
            _ if req.pause.is_some() && self.rules.maxpause.is_some() => {
                let pause = req.pause.unwrap_or_default().min(self.rules.maxpause.unwrap_or_default());
                self.pause(Duration::from_secs(pause), held.reply, now, acts);
            }
            // A restart without `stream` goes to the oldest open stream: restarting all of them
            // would mean nothing (each has its own SASL).
            target if req.restart => {
                let id = match target {
                    Target::One(id) => Some(id),
                    _ => first_open,
                };
                req.payloads.clear();
                self.pending = Some(Pending::Hold(held));
                match id {
                    Some(id) => acts.push(Action::RestartOn(id, Box::new(req))),
                    None => self.written(Err(Error::BadRequest("restart without an open stream".into())), now, acts),
                }
            }
            Target::One(id) => {
                let payloads = std::mem::take(&mut req.payloads);
                self.write_then(Pending::Hold(held), Some(id), payloads, now, acts);
            }
            // No `stream`: the payloads go to every open stream (§16.4).
            _ => {
                let payloads = std::mem::take(&mut req.payloads);
                self.write_then(Pending::Hold(held), None, payloads, now, acts);
            }
        }
    }

    /// The shell checked an add-stream request: the answer names the new stream (with the
    /// domain as `from`; its features follow in a response naming it) or, refused, is that
    /// stream's terminate (§16.3, §16.6). Either way the session goes on.
    fn stream_added(&mut self, held: Held<R>, res: Result<(), Error>, now: Instant, acts: &mut Vec<Action<R>>) {
        let Some((m, id)) = self.multi.as_deref_mut().and_then(|m| m.pending.take().map(|id| (m, id))) else { return };
        let name = m.name_of(id).unwrap_or_default().to_owned();
        let b = match res {
            Ok(()) => ResponseBody::new().attr("stream", name).attr("from", m.take_from(id)),
            Err(e) => {
                m.remove(id);
                ResponseBody::terminate(e.bosh_condition()).attr("stream", name)
            }
        };
        self.answer_now(held, b, now, acts);
    }

    /// The client closed one stream of several (§16.5), its payloads already written to it:
    /// the answer is that stream's terminate with what it still queued; its link closes.
    fn close_one(&mut self, held: Held<R>, now: Instant, acts: &mut Vec<Action<R>>) {
        let Some((m, id)) = self.multi.as_deref_mut().and_then(|m| m.pending.take().map(|id| (m, id))) else { return };
        let name = m.name_of(id).unwrap_or_default().to_owned();
        let mut b = ResponseBody::terminate(None).attr("stream", name);
        b.push_payload(m.take_out(id));
        m.remove(id);
        // The link (and its admission slot) goes first: once answered, the client may count on it.
        acts.push(Action::CloseStream(id, Error::ClientTerminate));
        self.answer_now(held, b, now, acts);
    }

    /// Answer an in-order request at once (not held), cached for a retransmission like any
    /// response.
    fn answer_now(&mut self, h: Held<R>, mut b: ResponseBody, now: Instant, acts: &mut Vec<Action<R>>) {
        self.push_ack(&mut b, h.rid);
        let body = Bytes::from(b.to_xml());
        self.window.store(h.rid, body.clone(), now);
        acts.push(Action::Reply(h.reply, 200, body));
        if self.held.is_empty() {
            self.idle_since = now;
        }
    }

    /// Ask the shell to write `payloads` (to stream `to`, else to every stream), continuing
    /// with `then` once it did (*one-write*). Nothing to write continues at once: an empty
    /// write does no IO and cannot fail.
    fn write_then(&mut self, then: Pending<R>, to: Option<StreamId>, payloads: Vec<Element>, now: Instant, acts: &mut Vec<Action<R>>) {
        self.pending = Some(then);
        if payloads.is_empty() {
            return self.written(Ok(()), now, acts);
        }
        acts.push(match to {
            Some(id) => Action::WriteTo(id, payloads),
            None => Action::Write(payloads),
        });
    }

    /// Hold an in-order request (its payloads are upstream), answer at once if stanzas are
    /// queued, and answer oldest first beyond `hold`.
    fn hold(&mut self, h: Held<R>, now: Instant, acts: &mut Vec<Action<R>>) {
        self.held.push_back(h);
        self.flush(now, acts);
        while self.held.len() > self.rules.hold {
            self.answer_oldest(now, acts);
        }
    }

    /// Pause (§10): answer everything now, without payloads; the pause request is not cached.
    /// The inactivity limit becomes the pause until the next request.
    fn pause(&mut self, pause: Duration, reply: R, now: Instant, acts: &mut Vec<Action<R>>) {
        while let Some(h) = self.held.pop_front() {
            let body = Bytes::from(self.decorate(ResponseBody::new(), h.rid).to_xml());
            self.window.store(h.rid, body.clone(), now);
            acts.push(Action::Reply(h.reply, 200, body));
        }
        acts.push(Action::Reply(reply, 200, ResponseBody::new().to_xml().into()));
        self.inactivity = pause;
        self.idle_since = now;
    }

    /// `report`/`time` body when the client's `ack` shows a response it did not get.
    fn report_for(&self, ack: u64, now: Instant) -> Option<Bytes> {
        let last = self.window.last_answered()?;
        if ack >= last {
            return None;
        }
        let missing = self.window.cached(ack + 1)?;
        let age = now.saturating_duration_since(missing.sent_at);
        (age >= REPORT_AFTER).then(|| {
            let b = ResponseBody::new().attr("report", (ack + 1).to_string()).attr("time", age.as_millis().to_string());
            b.to_xml().into()
        })
    }

    /// The client's terminate, after its payloads (typically an unavailable presence) went
    /// upstream (BOSH-T-01): the oldest open request gets type='terminate', the others empty
    /// bodies (BOSH-T-02); when the terminate request is the only one open it gets
    /// type='terminate'.
    fn terminate_fan_out(&mut self, reply: R, acts: &mut Vec<Action<R>>) {
        let mut first = true;
        while let Some(h) = self.held.pop_front() {
            let body = if first { self.terminal_body(None) } else { empty() };
            first = false;
            acts.push(Action::Reply(h.reply, 200, body));
        }
        let body = if first { self.terminal_body(None) } else { empty() };
        acts.push(Action::Reply(reply, 200, body));
        acts.push(Action::End(Error::ClientTerminate));
        self.done = true;
    }

    // ------------------------------------------------------------------ answering

    /// Answer the oldest held request with everything queued (or empty).
    fn answer_oldest(&mut self, now: Instant, acts: &mut Vec<Action<R>>) {
        let Some(h) = self.held.pop_front() else { return };
        let mut b = ResponseBody::new();
        let mut carried = !self.out.is_empty();
        if carried {
            b.push_payload(std::mem::take(&mut self.out));
        }
        if let Some(m) = self.multi.as_deref_mut() {
            carried = m.next_body(&mut b);
        }
        let body = Bytes::from(self.decorate(b, h.rid).to_xml());
        self.window.store(h.rid, body.clone(), now);
        if self.rules.polling_session() {
            self.last_empty_poll = (h.empty && !carried).then_some(now);
        }
        acts.push(Action::Reply(h.reply, 200, body));
        if self.held.is_empty() {
            self.idle_since = now;
        }
    }

    /// Add the one-time attributes (creation / late `from`) and, in ack mode, `ack`.
    fn decorate(&mut self, mut b: ResponseBody, rid: u64) -> ResponseBody {
        for (n, v) in self.next_attrs.drain(..) {
            b.push_attr(n, v);
        }
        self.push_ack(&mut b, rid);
        b
    }

    /// In ack mode, `ack` when it is not the request's own rid (§9.1).
    fn push_ack(&self, b: &mut ResponseBody, rid: u64) {
        if self.rules.ack_mode {
            let ack = self.window.last_in_order();
            if ack != rid {
                b.push_attr("ack", ack.to_string());
            }
        }
    }

    /// If anything is queued and a request is held, send it now (BOSH-R-07).
    fn flush(&mut self, now: Instant, acts: &mut Vec<Action<R>>) {
        if self.has_output() && !self.held.is_empty() {
            self.answer_oldest(now, acts);
        }
    }

    /// The terminate body for `err`, carrying what is still queued (BOSH-T-20).
    fn terminal_body(&mut self, err: Option<&Error>) -> Bytes {
        let mut b = ResponseBody::terminate(err.and_then(Error::bosh_condition));
        for (n, v) in self.next_attrs.drain(..) {
            b.push_attr(n, v);
        }
        // With several streams this is the first stream's queue: a body naming no stream is
        // the first stream's (§16.4); the other streams' links bounce theirs.
        b.push_payload(self.take_undelivered());
        if let Some(Error::UpstreamStreamError(el)) = err {
            b.push_elements(std::iter::once(el.as_ref()));
        }
        if let Some(Error::Redirect(uri)) = err {
            // XEP-0124 §17.2 see-other-uri: where to go on.
            b.push_elements(std::iter::once(&Element::new("uri", ns::HTTPBIND).with_text(uri.as_str())));
        }
        b.to_xml().into()
    }

    /// End the session because of `err`. `trigger` is the request that caused it (it gets the
    /// condition; other held requests get `other-request`). Without a trigger the oldest held
    /// request gets the condition; with none held, the body waits for the next request.
    pub fn end(&mut self, err: Error, trigger: Option<R>, now: Instant, acts: &mut Vec<Action<R>>) {
        if matches!(err, Error::ClientGone) && self.held.is_empty() && self.parked.is_empty() {
            // Nobody is listening: what the client never received is bounced upstream.
            self.done = true;
            acts.push(Action::End(err));
            return;
        }
        let body = self.terminal_body(Some(&err));
        let status = if self.rules.legacy { err.legacy_http_status().unwrap_or(200) } else { 200 };
        let others: Bytes = ResponseBody::terminate(Some("other-request")).to_xml().into();
        let rest: Bytes = ResponseBody::terminate(err.bosh_condition()).to_xml().into();
        let keep = !matches!(err, Error::ClientGone | Error::Shutdown | Error::Redirect(_) | Error::HostGone);
        acts.push(Action::End(err));
        if let Some(t) = trigger {
            while let Some(h) = self.held.pop_front() {
                acts.push(Action::Reply(h.reply, 200, others.clone()));
            }
            self.answer_parked(&others, acts);
            acts.push(Action::Reply(t, status, body));
            self.done = true;
            return;
        }
        let mut first = Some(body);
        while let Some(h) = self.held.pop_front() {
            acts.push(Action::Reply(h.reply, status, first.take().unwrap_or_else(|| rest.clone())));
        }
        self.answer_parked(&others, acts);
        match first {
            // Nobody to tell right now: keep the verdict for the next request, under the
            // inactivity clock.
            Some(body) if keep => {
                self.terminal = Some(body);
                self.idle_since = now;
            }
            _ => self.done = true,
        }
    }

    fn answer_parked(&mut self, body: &Bytes, acts: &mut Vec<Action<R>>) {
        for (_, (_, reply)) in std::mem::take(&mut self.parked) {
            acts.push(Action::Reply(reply, 200, body.clone()));
        }
    }
}

/// The answer to a request that a newer copy of the same rid replaced (BOSH-R-11).
fn recoverable() -> Bytes {
    ResponseBody::new().attr("type", "error").to_xml().into()
}

fn empty() -> Bytes {
    ResponseBody::new().to_xml().into()
}

#[cfg(test)]
mod tests;

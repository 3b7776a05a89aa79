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
//! - *one-write*: a [`Action::Write`] or [`Action::Restart`] is always the last action pushed;
//!   nothing more happens until the shell reports its result with [`Core::written`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::body::{Request, ResponseBody};
use super::window::{Class, Window};
use crate::error::{Error, Policy};
use crate::xml::{ns, Element, StreamHeader};

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
            rules,
        }
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
        self.out.len() < self.rules.max_queued_bytes
    }

    /// What no response carried (serialized stanzas), for bounces when the client is gone.
    pub fn take_undelivered(&mut self) -> String {
        std::mem::take(&mut self.out)
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
        let mut queued = false;
        for item in items {
            match item {
                Ok(el) => {
                    self.queue(el);
                    queued = true;
                }
                Err(e) => {
                    if queued {
                        self.flush(now, acts);
                    }
                    return self.end(e, None, now, acts);
                }
            }
        }
        if queued {
            self.flush(now, acts);
        }
    }

    /// Take an element from upstream (already rewritten by relay) for the client.
    fn queue(&mut self, el: Element) {
        // `out` starts empty after every response: one allocation of a typical batch's size
        // rather than a string doubling from 8 bytes.
        if self.out.capacity() == 0 {
            self.out.reserve(1024);
        }
        // Serialized now (self-contained), so its size counts against `max_queued_bytes`.
        el.write_xml(&mut self.out, "");
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
        let idle = req.is_empty() && !req.terminate && req.pause.is_none() && !req.restart;
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

        if req.terminate {
            let payloads = std::mem::take(&mut req.payloads);
            return self.write_then(Pending::Terminate(reply), payloads, now, acts);
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
            self.write_then(Pending::Hold(held), payloads, now, acts);
        }
    }

    /// Ask the shell to write `payloads`, continuing with `then` once it did (*one-write*).
    /// Nothing to write continues at once: an empty write does no IO and cannot fail.
    fn write_then(&mut self, then: Pending<R>, payloads: Vec<Element>, now: Instant, acts: &mut Vec<Action<R>>) {
        self.pending = Some(then);
        if payloads.is_empty() {
            return self.written(Ok(()), now, acts);
        }
        acts.push(Action::Write(payloads));
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
        let carried = !self.out.is_empty();
        if carried {
            b.push_payload(std::mem::take(&mut self.out));
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
        if self.rules.ack_mode {
            let ack = self.window.last_in_order();
            if ack != rid {
                b.push_attr("ack", ack.to_string());
            }
        }
        b
    }

    /// If anything is queued and a request is held, send it now (BOSH-R-07).
    fn flush(&mut self, now: Instant, acts: &mut Vec<Action<R>>) {
        if !self.out.is_empty() && !self.held.is_empty() {
            self.answer_oldest(now, acts);
        }
    }

    /// The terminate body for `err`, carrying what is still queued (BOSH-T-20).
    fn terminal_body(&mut self, err: Option<&Error>) -> Bytes {
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

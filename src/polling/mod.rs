//! Legacy HTTP polling (XEP-0025, obsolete: the XSF recommends BOSH instead), behind
//! `[polling] enabled` on its own path. Each POST body is `identifier[;key[;new_key]],payload`
//! ([`wire`]); the payloads of one session, concatenated, are the client's raw XML stream, and
//! each answer carries what the server sent since the previous one. Identifier `0` opens a
//! session: the `to` of the client's `<stream:stream>` names the domain, and the session's
//! upstream is the same RFC 6120 stream every transport gets ([`crate::upstream`]).
//!
//! This file is the HTTP edge (body cap and read timeout, creation policy: drain, domain
//! allow-list, admission) and the registry (id → the channel of the task that owns the
//! session, a map of its own); `session.rs` is the task. Every answer is HTTP 200 with the
//! `ID` cookie: the session id, or an error identifier of §3.1 ([`wire::Fault`]).
//!
//! Not served in cluster mode (`Config::validate` refuses the combination): an identifier
//! cannot name its replica, and an old client cannot be asked to stick to one.

mod session;
pub mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Policy};
use crate::metrics::{metrics, Transport};
use crate::state::AppState;
use crate::upstream::OpenParams;
use crate::xml::{Frame, Framer};
use session::{Answer, Poll};
use wire::Fault;

/// How many requests may wait for one session's task. A client sends one at a time.
const SESSION_QUEUE: usize = 4;

/// What the handler shares with the session tasks: the process state and the live sessions.
pub struct Hub {
    state: Arc<AppState>,
    /// Session id → its task's channel. Boxed requests keep the channel's blocks small.
    sessions: DashMap<String, mpsc::Sender<Box<Poll>>>,
}

/// The POST handler for `[polling] path`, with a registry of its own.
pub fn route(state: &Arc<AppState>) -> axum::routing::MethodRouter<Arc<AppState>> {
    let hub = Arc::new(Hub { state: state.clone(), sessions: DashMap::new() });
    axum::routing::post(move |req: axum::extract::Request| post(hub.clone(), req))
}

async fn post(hub: Arc<Hub>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let config = hub.state.config();
    let path = config.polling.path.clone();
    let max = config.polling.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return refused(&path, &Error::PolicyViolation(Policy::BodyTooLarge));
    }
    if parts.headers.get(header::CONTENT_ENCODING).is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity")) {
        return refused(&path, &Error::BadRequest("unsupported Content-Encoding".into()));
    }
    // The body is UTF-8 "even if an HTTP header to the contrary exists" (§3): Content-Type
    // (form-urlencoded, by the XEP) is not looked at, and the body is not URL-decoded.
    let wait = Duration::from_secs(config.http.body_read_timeout);
    let bytes = match tokio::time::timeout(wait, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return refused(&path, &Error::PolicyViolation(Policy::BodyTooLarge)),
        Err(_) => return refused(&path, &Error::PolicyViolation(Policy::BodyTooSlow)),
    };
    let req = match wire::parse(&bytes) {
        Ok(r) => r,
        Err(f) => return respond(&path, f.id(), String::new()),
    };
    let payload = bytes.slice_ref(req.payload);
    let client = crate::front::client_ip::client_addr(&parts.extensions);
    let (id, answer) = if req.creates() {
        let span = tracing::info_span!("client", ip = client.map(|c| tracing::field::display(c.ip())));
        let (id, rx) = match span.in_scope(|| create(&hub, req.key, &payload, client)) {
            Ok(started) => started,
            Err(e) => return refused(&path, &e),
        };
        drop((parts, bytes, payload));
        (id, rx.await)
    } else {
        let id = req.id.to_string();
        let Some(tx) = hub.sessions.get(&id).map(|s| s.clone()) else {
            return respond(&path, Fault::Unknown.id(), unknown_text());
        };
        let (reply, rx) = oneshot::channel();
        let poll = Poll { key: req.key.map(Into::into), new_key: req.new_key.map(Into::into), payload, reply };
        drop((parts, bytes));
        if tx.send(Box::new(poll)).await.is_err() {
            // The task is gone without removing itself (it panicked): forget the id.
            hub.sessions.remove(&id);
            return respond(&path, Fault::Unknown.id(), unknown_text());
        }
        (id, rx.await)
    };
    match answer {
        Ok(Answer::Data(body)) => respond(&path, &id, body),
        Ok(Answer::Fault(Fault::Unknown)) => respond(&path, Fault::Unknown.id(), unknown_text()),
        Ok(Answer::Fault(f)) => respond(&path, f.id(), String::new()),
        // A session answers every request it took; a dropped reply means its task died.
        Err(_) => respond(&path, Fault::Server.id(), String::new()),
    }
}

/// Identifier `0`: check the creation policy on the client's stream header (nothing is
/// resolved or dialled for a refusal) and start the session task, which answers on the
/// returned channel once the upstream stream is open.
fn create(hub: &Arc<Hub>, key: Option<&str>, payload: &[u8], client: Option<std::net::SocketAddr>) -> Result<(String, oneshot::Receiver<Answer>), Error> {
    let state = &hub.state;
    if state.shutdown.is_cancelled() {
        return Err(Error::Shutdown);
    }
    let config = state.config();
    let mut framer = Framer::new(crate::limits::client_xml(&config.limits, config.upstream.max_stanza_bytes));
    framer.feed(payload);
    // The whole opening tag must be in the first request: its `to` decides everything else.
    let header = match framer.next_frame() {
        Ok(Some(Frame::StreamOpen(h))) => h,
        Ok(_) => return Err(Error::BadRequest("the first request does not carry a complete <stream:stream> header".into())),
        Err(e) => return Err(e.into()),
    };
    let domain = match header.to.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => d.to_ascii_lowercase(),
        None => return Err(Error::ImproperAddressing),
    };
    // Not an open relay: a domain that is not served is refused before any DNS or TCP work.
    if !config.serves(&domain) {
        return Err(Error::HostUnknown);
    }
    let permit = state.admission.admit(client.map(|c| c.ip()))?;
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let id = loop {
        let id = wire::new_id();
        if let dashmap::Entry::Vacant(v) = hub.sessions.entry(id.clone()) {
            v.insert(tx);
            break id;
        }
    };
    let open = OpenParams {
        domain,
        lang: header.lang.unwrap_or_else(|| "en".into()),
        version: header.version.unwrap_or_else(|| "1.0".into()),
        from: header.from,
        client,
    };
    let (reply, answer) = oneshot::channel();
    let start = session::Start { id: id.clone(), open, framer, key: key.map(Into::into), reply };
    let span = tracing::info_span!("session", transport = "polling", sid = %crate::bosh::session::short(&id));
    let task = session::run(hub.clone(), start, rx, permit);
    state.tracker.spawn(tracing::Instrument::instrument(task, span));
    Ok((id, answer))
}

/// A request refused before any session spoke for it (counted like other transports').
fn refused(path: &str, err: &Error) -> Response {
    metrics().pre_session(Transport::Polling, err);
    tracing::debug!(kind = err.kind(), error = %err, "polling request refused");
    respond(path, Fault::of(err).id(), String::new())
}

/// §3.1.1: the answer for an identifier that names no live session may say so in text.
fn unknown_text() -> String {
    "unknown or ended session".into()
}

/// Every answer: HTTP 200 (§3, "the server must always return a 200 response code"), the
/// `ID` cookie, `text/xml`, never cached.
fn respond(path: &str, id: &str, body: String) -> Response {
    let mut r = (StatusCode::OK, Bytes::from(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::bosh::DEFAULT_CONTENT_TYPE));
    // Both parts are from closed alphabets: hex ids or `-N:0`, and a validated path.
    if let Ok(v) = HeaderValue::from_str(&format!("ID={id}; path={path}")) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

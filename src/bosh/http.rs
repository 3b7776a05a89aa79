//! The HTTP edge of BOSH (XEP-0124 §5, CHECKLIST §5): POST bodies with a size cap enforced while
//! reading, CORS preflight, a harmless GET page, `Cache-Control`, and the status-code discipline
//! (binding errors are HTTP 200 bodies; HTTP 4xx only for legacy clients created without `ver`).
//! Session responses are gzipped when `[bosh] compression` and the request allow it
//! (`compression`): here rather than in a layer, so the lean HTTP/1.1 loop and hyper send the
//! same bytes.

mod compression;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::body::{self, ResponseBody};
use super::exchange::{Incoming, Reply};
use super::DEFAULT_CONTENT_TYPE;
use crate::cluster::{Cluster, Owner};
use crate::error::{Error, Policy};
use crate::state::AppState;

/// POST on the BOSH path. Everything up to the hand-over to the session (the body, its parse,
/// the checks) runs in a boxed step that is freed before the wait: a held request waits up to
/// `wait` seconds, one per idle session, and keeps only its [`Held`] meanwhile.
pub fn post(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> impl Future<Output = Response> + Send {
    let received = Box::pin(receive(state, req));
    async move {
        match received.await {
            Received::Done(r) => r,
            Received::Held(h) => h.await,
        }
    }
}

/// What [`receive`] leaves for [`post`]: the response, or the request its session holds.
enum Received {
    Done(Response),
    Held(Held),
}

/// A POST read, checked, parsed and handed to its session (or refused).
async fn receive(state: Arc<AppState>, req: axum::extract::Request) -> Received {
    // Taken apart rather than extracted: the `HeaderMap` and `Extensions` extractors clone.
    let (parts, body) = req.into_parts();
    let axum::http::request::Parts { headers, extensions: ext, .. } = parts;
    let cors = cors_origin(&state, &headers);
    let config = state.config();
    let max = config.bosh.max_body_bytes;
    // Refuse early on the declared length; the limit below also stops chunked bodies (HTTP-15).
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Received::Done(pre_session(413, &Error::PolicyViolation(Policy::BodyTooLarge), cors));
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            // No `accept` is advertised, so no encoding is acceptable (HTTP-09).
            return Received::Done(pre_session(415, &Error::BadRequest("unsupported Content-Encoding".into()), cors));
        }
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        if !charset_is_utf8(ct) {
            return Received::Done(pre_session(200, &Error::BadRequest("only UTF-8 is accepted".into()), cors));
        }
    }
    let body_wait = std::time::Duration::from_secs(config.http.body_read_timeout);
    let bytes = match tokio::time::timeout(body_wait, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return Received::Done(pre_session(413, &Error::PolicyViolation(Policy::BodyTooLarge), cors)),
        // Slowloris on the body: give up on this request; the session (if any) is untouched.
        Err(_) => return Received::Done(pre_session(408, &Error::PolicyViolation(Policy::BodyTooSlow), cors)),
    };
    let l = &config.limits;
    let limits = crate::limits::client_xml(l, max);
    let req = match body::parse(&bytes, &limits) {
        Ok(r) => r,
        Err(e) => return Received::Done(pre_session(200, &e, cors)),
    };
    let client = crate::front::client_ip::client_addr(&ext);
    let encoding = compression::Encoding::negotiate(&config.bosh, &headers);
    drop((headers, ext, config));
    match answer(&state, bytes, req, client, false).await {
        Answer::Now(reply) => Received::Done(reply_response(reply, cors, encoding)),
        Answer::Wait(rx, since) => Received::Held(Held { rx, since, cors, encoding }),
    }
}

/// A request its session holds: the reply channel and what the response needs, nothing more.
struct Held {
    rx: oneshot::Receiver<Reply>,
    /// When the request was handed to its session.
    since: std::time::Instant,
    cors: Option<HeaderValue>,
    encoding: compression::Encoding,
}

impl Future for Held {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let got = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        let reply = settle(got, self.since, false);
        Poll::Ready(reply_response(reply, self.cors.take(), self.encoding))
    }
}

/// A reply as the client gets it: gzipped when the request allows it, with the headers.
fn reply_response(mut reply: Reply, cors: Option<HeaderValue>, encoding: compression::Encoding) -> Response {
    let encoded = encoding.encode(&mut reply.body);
    let mut r = respond(reply, cors);
    encoding.mark(r.headers_mut(), encoded);
    r
}

/// How [`answer`] left a request: answered already, or held by its session until it answers
/// on `rx` (handed over at the `Instant`).
enum Answer {
    Now(Reply),
    Wait(oneshot::Receiver<Reply>, std::time::Instant),
}

/// A parsed BOSH request, from a client or (`forwarded`) over the cluster hop: create a
/// session, hand the request to its session here, or forward it to the replica that owns it.
/// The caller waits on the session's reply, so that nothing of this step stays alive meanwhile.
async fn answer(state: &Arc<AppState>, bytes: bytes::Bytes, req: body::Request, client: Option<std::net::SocketAddr>, forwarded: bool) -> Answer {
    let legacy_creation = req.sid.is_none() && req.ver.is_none();
    let (tx, rx) = oneshot::channel();
    let inc = Incoming { req, reply: tx, bytes: bytes.len() };
    let held_since = std::time::Instant::now();
    match inc.req.sid.clone() {
        None if forwarded => {
            // A replica creates the sessions it is asked for itself; this is not one of ours.
            return Answer::Now(refusal(200, &Error::BadRequest("session creation over the cluster hop".into())));
        }
        None => {
            // The session task's span (transport, short sid) nests under this one.
            // The client IP after the trusted-proxy rules (front::client_ip), else the peer.
            let ip = client.map(|c| c.ip());
            let span = tracing::info_span!("client", ip = ip.map(tracing::field::display));
            if let Err(e) = span.in_scope(|| super::session::start(state, inc, client)) {
                let status = match &e {
                    // Admission limits: 429 for this client, 503 for the whole process.
                    Error::TooMany { status, .. } => *status,
                    _ if legacy_creation => e.legacy_http_status().unwrap_or(200),
                    _ => 200,
                };
                return Answer::Now(refusal(status, &e));
            }
        }
        Some(sid) => {
            if let Some(c) = &state.cluster {
                // The sid is checked before anything else: a refusal dials nothing.
                match c.owner(&sid, forwarded) {
                    Owner::Local => {}
                    Owner::Refused(why) => {
                        crate::metrics::metrics().cluster_refused(why.as_str());
                        tracing::debug!(reason = why.as_str(), forwarded, "BOSH sid refused by the cluster rules");
                        return Answer::Now(refusal(200, &Error::ItemNotFound("unknown sid")));
                    }
                    Owner::Peer(owner) => return Answer::Now(forward(c, owner, &bytes, client).await),
                }
            }
            let Some(session) = state.bosh.get(&sid) else {
                // no session to ask whether the caller is legacy: 200 + item-not-found.
                return Answer::Now(refusal(200, &Error::ItemNotFound("unknown sid")));
            };
            if session.send(Box::new(inc)).await.is_err() {
                // The task is gone without removing itself (it panicked): forget the sid.
                state.bosh.remove(&sid);
                return Answer::Now(refusal(200, &Error::ItemNotFound("session ended")));
            }
        }
    }
    Answer::Wait(rx, held_since)
}

/// The session's reply to a held request, counted.
fn settle(got: Result<Reply, oneshot::error::RecvError>, since: std::time::Instant, forwarded: bool) -> Reply {
    match got {
        Ok(reply) => {
            crate::metrics::metrics().bosh_held(since.elapsed());
            if forwarded {
                crate::metrics::metrics().cluster_served();
            }
            reply
        }
        // A session answers every request it accepted; a dropped reply means its task died
        // (a bug): BOSH-T-09. Other sessions are unaffected.
        Err(_) => refusal(200, &Error::Internal("session task ended without answering".into())),
    }
}

/// Send a request to the replica that owns its session and relay the answer. An owner that
/// cannot be reached (gone, refusing, silent) is `item-not-found` for the client: its sessions
/// died with it.
async fn forward(c: &Cluster, owner: std::net::SocketAddr, bytes: &[u8], client: Option<std::net::SocketAddr>) -> Reply {
    let t0 = std::time::Instant::now();
    match c.hop.forward(owner, bytes, client).await {
        Ok(a) => {
            crate::metrics::metrics().cluster_forward("ok", t0.elapsed());
            let content_type = HeaderValue::from_str(&a.content_type).unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
            Reply { status: a.status, body: a.body, content_type }
        }
        Err(e) => {
            crate::metrics::metrics().cluster_forward(e.result(), t0.elapsed());
            tracing::info!(%owner, error = %e, "BOSH request for another replica's session: its owner did not answer");
            refusal(200, &Error::ItemNotFound("session owner unreachable"))
        }
    }
}

/// A BOSH request a peer forwarded over the internal hop (already authenticated by
/// [`crate::cluster::hop::serve`]): answered here, as if the client had sent it to us.
pub async fn from_peer(state: Arc<AppState>, f: crate::cluster::hop::Forwarded) -> crate::cluster::hop::Answer {
    let config = state.config();
    let l = &config.limits;
    let limits = crate::limits::client_xml(l, config.bosh.max_body_bytes);
    // The owner's log lines for this request name the client and the replica it came through.
    let span = tracing::info_span!(
        "client",
        ip = f.client.map(|c| tracing::field::display(c.ip())),
        via = f.peer.map(tracing::field::display)
    );
    span.in_scope(|| tracing::debug!("BOSH request forwarded by a peer"));
    let reply = match body::parse(&f.body, &limits) {
        Ok(r) => match tracing::Instrument::instrument(answer(&state, f.body.clone(), r, f.client, true), span).await {
            Answer::Now(reply) => reply,
            Answer::Wait(rx, since) => settle(rx.await, since, true),
        },
        Err(e) => refusal(200, &e),
    };
    let content_type = reply.content_type.to_str().unwrap_or(DEFAULT_CONTENT_TYPE).to_string();
    crate::cluster::hop::Answer { status: reply.status, content_type, body: reply.body }
}

/// A peer failed the hop's authentication (counted; logged at most once per 10 s, so that
/// whoever can reach the internal port cannot fill the log).
pub fn hop_refused() {
    crate::metrics::metrics().cluster_refused(crate::cluster::Refusal::HopAuth.as_str());
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if now >= LAST.load(std::sync::atomic::Ordering::Relaxed) + 10 {
        LAST.store(now, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!("cluster hop connection without valid authentication refused (another cluster key, or not a replica); counted in xmpp_cm_cluster_refused_total{{reason=\"hop_auth\"}}");
    }
}

/// CORS preflight (HTTP-11/12).
pub async fn options(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    if let Some(origin) = cors_origin(&state, &headers) {
        set_cors(h, &origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
        let allow = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("Content-Type"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    }
    h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, OPTIONS"));
    r
}

/// GET on the BOSH path: a short page, never a session (HTTP-14).
pub async fn get(State(state): State<Arc<AppState>>) -> Response {
    let page = format!(
        "<!DOCTYPE html><html><head><title>xmpp-cm BOSH</title></head><body><p>This is an XMPP \
         BOSH endpoint (XEP-0124/XEP-0206). Clients POST &lt;body/&gt; elements to {}.</p></body></html>\n",
        state.config().http.bosh_path
    );
    let mut r = (StatusCode::OK, page).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    no_cache(r.headers_mut());
    r
}

/// An answer for a request that has no session to speak for it.
fn pre_session(status: u16, err: &Error, cors: Option<HeaderValue>) -> Response {
    respond(refusal(status, err), cors)
}

/// The terminate body for a request that has no session to speak for it (counted).
fn refusal(status: u16, err: &Error) -> Reply {
    crate::metrics::metrics().pre_session(crate::metrics::Transport::Bosh, err);
    let mut body = ResponseBody::terminate(err.bosh_condition());
    if let Error::Redirect(uri) = err {
        // XEP-0124 §17.2 see-other-uri: where to go on.
        body.push_elements(std::iter::once(&crate::xml::Element::new("uri", crate::xml::ns::HTTPBIND).with_text(uri.as_str())));
    }
    let body = body.to_xml();
    Reply { status, body: body.into(), content_type: HeaderValue::from_static(DEFAULT_CONTENT_TYPE) }
}

fn respond(reply: Reply, cors: Option<HeaderValue>) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut r = (status, reply.body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, reply.content_type);
    no_cache(h);
    if let Some(origin) = cors {
        set_cors(h, &origin);
    }
    r
}

fn no_cache(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn set_cors(h: &mut HeaderMap, origin: &HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if origin.as_bytes() != b"*" {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The `Access-Control-Allow-Origin` value for this request: `*` when the list is `["*"]`, the
/// exact origin when it is on the list, nothing otherwise (and a log line saying why, once per
/// origin, so an operator can see a misconfigured origin without a browser console).
fn cors_origin(state: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let config = state.config();
    let list = &config.http.cors_allowed_origins;
    if list.iter().any(|x| x == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    if list.iter().any(|x| x.eq_ignore_ascii_case(o)) {
        return Some(origin.clone());
    }
    static LOGGED: std::sync::OnceLock<dashmap::DashSet<String>> = std::sync::OnceLock::new();
    let logged = LOGGED.get_or_init(dashmap::DashSet::new);
    if logged.len() < 1000 && logged.insert(o.to_string()) {
        tracing::info!(origin = %o, allowed = ?list, "CORS: origin not in http.cors_allowed_origins; the browser will block this page's BOSH requests");
    }
    None
}

/// A Content-Type without charset, or with charset UTF-8, is fine (BOSH-S-24).
fn charset_is_utf8(ct: &str) -> bool {
    ct.split(';').skip(1).all(|p| {
        let p = p.trim();
        match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                let v = v.trim().trim_matches('"');
                v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held request waits up to `wait` seconds, one per idle session: what `post` keeps
    /// meanwhile is its future, which must not be sized by the body, the parse or the checks
    /// it is done with (3,328 bytes as one async fn; 224 with the work before the wait boxed and
    /// freed; issue 17).
    #[tokio::test]
    async fn held_request_is_small() {
        let state = crate::state::AppState::new(Arc::new(crate::Config::default())).unwrap();
        let fut = post(State(state), axum::extract::Request::new(axum::body::Body::empty()));
        let size = std::mem::size_of_val(&fut);
        eprintln!("post future: {size} bytes, Held {} bytes", std::mem::size_of::<Held>());
        assert!(size <= 224, "post future is {size} bytes");
    }

    #[test]
    fn charsets() {
        for (ct, ok) in [
            ("text/xml; charset=utf-8", true),
            ("text/xml; charset=UTF-8", true),
            ("text/xml", true),
            ("text/plain;charset=\"utf-8\"", true),
            ("application/x-www-form-urlencoded", true),
            ("text/xml; charset=iso-8859-1", false),
        ] {
            assert_eq!(charset_is_utf8(ct), ok, "{ct}");
        }
    }
}

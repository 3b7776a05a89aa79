//! The internal hop between replicas: a forwarded BOSH request goes to its owner as
//! `POST /xmpp-cm/cluster/v1/bosh` over pooled HTTP/2 (cleartext, prior knowledge; one
//! connection per owner, multiplexing every held request), and the owner's answer comes back
//! as the response (status, `Content-Type`, body).
//!
//! Authentication: every hop request carries `x-xmpp-cm-time` (unix seconds),
//! `x-xmpp-cm-peer` (the sender's advertised address), `x-xmpp-cm-client` (the original
//! client's address, for the owner's logs) and `x-xmpp-cm-auth`, the hex HMAC-SHA256 of all
//! of these and the body under a key derived from the cluster secret. The owner refuses
//! (HTTP 403) anything that does not verify or is more than [`MAX_SKEW`] old; a refused hop
//! request touches no session and dials nothing. A request that came over the hop is never
//! forwarded again (`Cluster::owner`).
//!
//! Liveness: a new connection counts as up only once the owner answered an authenticated
//! ping, all within `cluster.connect_timeout_ms`, so a dead or black-holed owner is
//! `item-not-found` in that time. Established connections send HTTP/2 PINGs while requests
//! are in flight and drop after [`PING_TIMEOUT`] without an answer (an owner whose host
//! vanished without a reset).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ring::hmac;
use tokio::net::TcpStream;

/// The path forwarded BOSH requests are posted to on the internal listener.
pub const PATH: &str = "/xmpp-cm/cluster/v1/bosh";
/// The liveness check of a new hop connection (authenticated, empty body, answered 204).
pub const PING_PATH: &str = "/xmpp-cm/cluster/v1/ping";
/// How old (or how far ahead) a hop request's timestamp may be.
pub const MAX_SKEW: u64 = 120;
/// HTTP/2 PING interval on connections with requests in flight, and how long an answer may take.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

const H_TIME: &str = "x-xmpp-cm-time";
const H_PEER: &str = "x-xmpp-cm-peer";
const H_CLIENT: &str = "x-xmpp-cm-client";
const H_AUTH: &str = "x-xmpp-cm-auth";

/// The owner's answer to a forwarded request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Why a forward failed (the `result` label of `xmpp_cm_cluster_forwards_total`).
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// No connection within the connect timeout (refused, unreachable, silent).
    #[error("owner unreachable: {0}")]
    Connect(String),
    /// The connection broke, or no answer came in time, after the request left.
    #[error("owner lost: {0}")]
    Lost(String),
    /// The owner refused the hop (403: another cluster key; 404: not an xmpp-cm hop).
    #[error("owner refused the hop with HTTP {0}")]
    Refused(u16),
}

impl HopError {
    pub fn result(&self) -> &'static str {
        match self {
            HopError::Connect(_) => "connect_failed",
            HopError::Lost(_) => "lost",
            HopError::Refused(_) => "refused",
        }
    }
}

/// What a verified hop request says about where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The replica that forwarded it.
    pub peer: Option<SocketAddr>,
    /// The original client.
    pub client: Option<SocketAddr>,
}

/// Authentication of hop requests and the pooled connections to owners.
pub struct Hop {
    key: hmac::Key,
    me: SocketAddr,
    connect_timeout: Duration,
    answer_within: Duration,
    pool: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// One owner's connection. Dialling holds the slot's lock, so the requests that arrive
/// meanwhile wait for that one dial instead of each opening their own; after a failed dial
/// they fail at once for a connect timeout (an owner that is gone costs each client request
/// nothing more than the first one's wait).
#[derive(Default)]
struct Slot {
    sender: Option<SendRequest<Full<Bytes>>>,
    failed: Option<(tokio::time::Instant, String)>,
}

impl Hop {
    pub fn new(secret: &[u8], me: SocketAddr, connect_timeout: Duration, answer_within: Duration) -> Hop {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &super::derive(secret, b"xmpp-cm hop v1"));
        Hop { key, me, connect_timeout, answer_within, pool: Mutex::new(HashMap::new()) }
    }

    /// The authentication headers for a hop request from this replica.
    pub fn sign(&self, headers: &mut HeaderMap, client: Option<SocketAddr>, body: &[u8], now: u64) {
        let client = client.map_or_else(|| "-".to_string(), |c| c.to_string());
        let me = self.me.to_string();
        let tag = hmac::sign(&self.key, &message(now, &me, &client, body));
        let mut hex = String::with_capacity(64);
        for b in tag.as_ref() {
            let _ = write!(hex, "{b:02x}");
        }
        for (name, value) in [(H_TIME, now.to_string()), (H_PEER, me), (H_CLIENT, client), (H_AUTH, hex)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// Check a hop request's authentication; `None` when it must be refused.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Option<Verified> {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let (time, peer, client, auth) = (get(H_TIME)?, get(H_PEER)?, get(H_CLIENT)?, get(H_AUTH)?);
        let t: u64 = time.parse().ok()?;
        if t.abs_diff(now) > MAX_SKEW || auth.len() != 64 {
            return None;
        }
        let tag = hex::decode(auth).ok()?;
        hmac::verify(&self.key, &message(t, peer, client, body), &tag).ok()?;
        Some(Verified { peer: peer.parse().ok(), client: client.parse().ok() })
    }

    /// Send a client's BOSH body to its owner and wait for the answer.
    pub async fn forward(&self, owner: SocketAddr, body: Bytes, client: Option<SocketAddr>) -> Result<Answer, HopError> {
        let (mut sender, fresh) = self.sender(owner).await?;
        match self.exchange(&mut sender, owner, PATH, body.clone(), client).await {
            // A pooled connection that died meanwhile (the owner restarted, an idle reset):
            // dial once more. Repeating the request is safe: BOSH answers a repeated rid from
            // its cache and never writes its payload twice.
            Err(HopError::Lost(_)) if !fresh && sender.is_closed() => {
                self.forget(owner);
                let (mut sender, _) = self.sender(owner).await?;
                self.exchange(&mut sender, owner, PATH, body, client).await
            }
            r => r,
        }
    }

    async fn exchange(&self, sender: &mut SendRequest<Full<Bytes>>, owner: SocketAddr, path: &str, body: Bytes, client: Option<SocketAddr>) -> Result<Answer, HopError> {
        let mut req = hyper::Request::post(format!("http://{owner}{path}"))
            .body(Full::new(body.clone()))
            .map_err(|e| HopError::Lost(e.to_string()))?;
        self.sign(req.headers_mut(), client, &body, unix_now());
        let exchange = async {
            sender.ready().await.map_err(|e| HopError::Lost(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| HopError::Lost(e.to_string()))?;
            let status = resp.status().as_u16();
            let content_type = resp.headers().get(CONTENT_TYPE).cloned();
            let body = resp.into_body().collect().await.map_err(|e| HopError::Lost(e.to_string()))?.to_bytes();
            Ok::<_, HopError>(Answer { status, content_type, body })
        };
        let answer = tokio::time::timeout(self.answer_within, exchange)
            .await
            .map_err(|_| HopError::Lost(format!("no answer within {:?}", self.answer_within)))??;
        if matches!(answer.status, 403 | 404) && answer.content_type.is_none() {
            return Err(HopError::Refused(answer.status));
        }
        Ok(answer)
    }

    /// A live connection to `owner` (pooled, or dialled now: `true`).
    async fn sender(&self, owner: SocketAddr) -> Result<(SendRequest<Full<Bytes>>, bool), HopError> {
        let slot = match self.pool.lock() {
            Ok(mut p) => p.entry(owner).or_default().clone(),
            Err(_) => return Err(HopError::Connect("connection pool poisoned".into())),
        };
        let mut slot = slot.lock().await;
        if let Some(s) = slot.sender.as_ref().filter(|s| !s.is_closed()) {
            return Ok((s.clone(), false));
        }
        slot.sender = None;
        if let Some((at, why)) = &slot.failed {
            if at.elapsed() < self.connect_timeout {
                return Err(HopError::Connect(format!("{why} (dialled {:?} ago)", at.elapsed())));
            }
        }
        match tokio::time::timeout(self.connect_timeout, self.dial(owner)).await {
            Ok(Ok(sender)) => {
                slot.failed = None;
                slot.sender = Some(sender.clone());
                Ok((sender, true))
            }
            Ok(Err(e)) => {
                slot.failed = Some((tokio::time::Instant::now(), e.to_string()));
                Err(e)
            }
            Err(_) => {
                let why = format!("no connection within {:?}", self.connect_timeout);
                slot.failed = Some((tokio::time::Instant::now(), why.clone()));
                Err(HopError::Connect(why))
            }
        }
    }

    /// TCP, the HTTP/2 handshake, and an authenticated ping the owner must answer.
    async fn dial(&self, owner: SocketAddr) -> Result<SendRequest<Full<Bytes>>, HopError> {
        let tcp = TcpStream::connect(owner).await.map_err(|e| HopError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(false)
            .adaptive_window(true)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| HopError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%owner, error = %e, "cluster hop connection ended");
            }
        });
        // Up only once the owner answered: a listener that accepts and never speaks (a wedged
        // process, a black hole) is caught here, within the connect timeout.
        match self.exchange(&mut sender, owner, PING_PATH, Bytes::new(), None).await {
            Ok(a) if a.status == 204 => Ok(sender),
            Ok(a) => Err(HopError::Refused(a.status)),
            Err(HopError::Lost(e)) => Err(HopError::Connect(e)),
            Err(e) => Err(e),
        }
    }

    fn forget(&self, owner: SocketAddr) {
        if let Ok(mut p) = self.pool.lock() {
            p.remove(&owner);
        }
    }
}

/// What the MAC covers: a version, the time, the sender, the client and the body.
fn message(time: u64, peer: &str, client: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(48 + body.len());
    m.extend_from_slice(format!("xmpp-cm-hop-v1\n{time}\n{peer}\n{client}\n").as_bytes());
    m.extend_from_slice(body);
    m
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(key: &[u8]) -> Hop {
        Hop::new(key, "10.0.0.1:5281".parse().unwrap(), Duration::from_millis(300), Duration::from_secs(5))
    }

    #[test]
    fn signed_requests_verify_and_tampering_does_not() {
        let key = b"0123456789abcdef0123456789abcdef";
        let h = hop(key);
        let client: SocketAddr = "203.0.113.7:4444".parse().unwrap();
        let mut hm = HeaderMap::new();
        h.sign(&mut hm, Some(client), b"<body/>", 1000);
        let v = h.verify(&hm, b"<body/>", 1000).unwrap();
        assert_eq!(v, Verified { peer: Some("10.0.0.1:5281".parse().unwrap()), client: Some(client) });
        assert!(h.verify(&hm, b"<body/>", 1000 + MAX_SKEW).is_some());
        assert!(h.verify(&hm, b"<body/>", 1000 + MAX_SKEW + 1).is_none(), "too old");
        assert!(h.verify(&hm, b"<body rid='2'/>", 1000).is_none(), "other body");
        assert!(hop(b"another key, also thirty-two bytes!!").verify(&hm, b"<body/>", 1000).is_none(), "other key");
        for (name, value) in [(H_CLIENT, "198.51.100.1:1"), (H_PEER, "10.0.0.9:5281"), (H_TIME, "1001"), (H_AUTH, "00")] {
            let mut t = hm.clone();
            t.insert(name, HeaderValue::from_static(value));
            assert!(h.verify(&t, b"<body/>", 1000).is_none(), "{name} altered");
        }
        let mut missing = hm.clone();
        missing.remove(H_AUTH);
        assert!(h.verify(&missing, b"<body/>", 1000).is_none());
        assert!(h.verify(&HeaderMap::new(), b"", 1000).is_none());
    }
}

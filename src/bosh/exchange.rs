//! What passes between the BOSH HTTP edge and a session task: one request ([`Incoming`]) and
//! its answer ([`Reply`]). Plain data, so that the registry, the handler and the session can
//! all name them without naming each other.

use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::body::Request;

/// What the HTTP handler sends to a session: one request and where to put its answer.
#[derive(Debug)]
pub struct Incoming {
    pub req: Request,
    pub reply: oneshot::Sender<Reply>,
    /// Length of the HTTP body, for `limits.client_bytes_per_sec`.
    pub bytes: usize,
}

/// An HTTP answer for one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Shared with the rid window's cache when the response is cached.
    pub body: Bytes,
    pub content_type: HeaderValue,
}


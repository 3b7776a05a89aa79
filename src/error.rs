//! The one error type every session end is expressed in, with the side that caused it and a
//! closed `kind`. [`Error::bosh_condition`], [`Error::stream_condition`], [`Error::kind`] and
//! [`Error::limit`] are the *only* places where a failure is mapped to a BOSH terminate
//! condition, a WebSocket stream error, a metric label and the configured limit it hit;
//! [`Error::teardown`] is the one rule for what the upstream stream gets when a session ends,
//! whatever the transport.

use crate::xml::{Element, XmlError};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// How an upstream connection attempt failed. Distinct kinds for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectKind {
    Dns,
    Tcp,
    Tls,
    StartTls,
    Stream,
    Timeout,
}

impl ConnectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectKind::Dns => "dns",
            ConnectKind::Tcp => "tcp",
            ConnectKind::Tls => "tls",
            ConnectKind::StartTls => "starttls",
            ConnectKind::Stream => "stream",
            ConnectKind::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    // ---- client side
    /// Malformed request or payload (bad XML, bad attribute, missing rid …).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// XML the client sent that XMPP forbids, or limits exceeded.
    #[error("bad XML from client: {0}")]
    ClientXml(XmlError),
    /// Unknown or expired sid, rid outside the window, response no longer cached, key mismatch.
    #[error("item not found: {0}")]
    ItemNotFound(&'static str),
    /// Overactivity, too-frequent polling, oversize or slow body: which rule ([`Policy`]).
    #[error("policy violation: {0}")]
    PolicyViolation(Policy),
    /// An admission limit refused a new session: `what` names the limit, `status` is the HTTP
    /// status for a request that has no session yet (429 per client, 503 for the whole process).
    #[error("limit reached: {}", what.as_str())]
    TooMany { what: AdmissionLimit, status: u16 },
    /// `to` missing.
    #[error("improper addressing")]
    ImproperAddressing,
    /// A domain (or route) that is not served.
    #[error("host unknown")]
    HostUnknown,
    /// The client asked to end the session.
    #[error("terminated by client")]
    ClientTerminate,
    /// The client went away (inactivity, socket lost).
    #[error("client inactive or gone")]
    ClientGone,
    /// WebSocket-level framing violation (binary frame, invalid namespace …): a stream condition.
    #[error("stream error {condition}: {detail}")]
    ClientStream { condition: &'static str, detail: String },

    // ---- upstream side
    /// Could not connect (DNS, TCP, TLS, STARTTLS, bad stream header, timeout).
    #[error("upstream connect failed ({}): {detail}", kind.as_str())]
    Connect { kind: ConnectKind, detail: String },
    /// The upstream sent `<stream:error/>` (the element, as received).
    #[error("upstream stream error")]
    UpstreamStreamError(Box<Element>),
    /// The upstream closed the stream with `</stream:stream>`.
    #[error("upstream closed the stream")]
    UpstreamClosed,
    /// The upstream connection broke (EOF without close, reset, bad XML).
    #[error("upstream connection lost: {0}")]
    UpstreamLost(String),
    /// The server sent an element larger than `upstream.max_stanza_bytes`: a configured limit
    /// (the client hears `policy-violation`), caused by the server.
    #[error("a stanza from the server is larger than upstream.max_stanza_bytes")]
    UpstreamTooLarge,

    // ---- ours
    #[error("shutting down")]
    Shutdown,
    /// A configuration reload stopped serving the session's domain (`host-gone`).
    #[error("domain no longer served (configuration reloaded)")]
    HostGone,
    /// Draining with `[drain] redirect_url` set: the client should go on at this URL (the
    /// transport's own: BOSH `see-other-uri` + `<uri/>`, WebSocket `<close see-other-uri/>`).
    #[error("shutting down, client sent to {0}")]
    Redirect(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn side(&self) -> Side {
        use Error::*;
        match self {
            BadRequest(_) | ClientXml(_) | ItemNotFound(_) | PolicyViolation(_) | TooMany { .. }
            | ImproperAddressing | HostUnknown | ClientTerminate | ClientGone
            | ClientStream { .. } => Side::Client,
            Connect { .. } | UpstreamStreamError(_) | UpstreamClosed | UpstreamLost(_) | UpstreamTooLarge => {
                Side::Upstream
            }
            Shutdown | Redirect(_) | HostGone | Internal(_) => Side::Internal,
        }
    }

    /// A closed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        use Error::*;
        match self {
            BadRequest(_) => "bad_request",
            ClientXml(_) => "bad_xml",
            ItemNotFound(_) => "item_not_found",
            PolicyViolation(_) => "policy_violation",
            TooMany { .. } => "limit",
            ImproperAddressing => "improper_addressing",
            HostUnknown => "host_unknown",
            ClientTerminate => "client_terminate",
            ClientGone => "client_gone",
            ClientStream { .. } => "client_stream_error",
            Connect { kind, .. } => match kind {
                ConnectKind::Dns => "connect_dns",
                ConnectKind::Tcp => "connect_tcp",
                ConnectKind::Tls => "connect_tls",
                ConnectKind::StartTls => "connect_starttls",
                ConnectKind::Stream => "connect_stream",
                ConnectKind::Timeout => "connect_timeout",
            },
            UpstreamStreamError(_) => "upstream_stream_error",
            UpstreamClosed => "upstream_closed",
            UpstreamLost(_) => "upstream_lost",
            UpstreamTooLarge => "upstream_too_large",
            Shutdown => "shutdown",
            Redirect(_) => "shutdown_redirect",
            HostGone => "host_gone",
            Internal(_) => "internal",
        }
    }

    /// The XEP-0124 §17.2 terminate condition; `None` means a plain `type='terminate'`.
    pub fn bosh_condition(&self) -> Option<&'static str> {
        use Error::*;
        match self {
            BadRequest(_) | ClientXml(_) => Some("bad-request"),
            ItemNotFound(_) => Some("item-not-found"),
            PolicyViolation(_) | TooMany { .. } | UpstreamTooLarge => Some("policy-violation"),
            ImproperAddressing => Some("improper-addressing"),
            HostUnknown => Some("host-unknown"),
            ClientTerminate | ClientGone | UpstreamClosed => None,
            ClientStream { .. } => Some("bad-request"),
            Connect { .. } | UpstreamLost(_) => Some("remote-connection-failed"),
            UpstreamStreamError(_) => Some("remote-stream-error"),
            Shutdown => Some("system-shutdown"),
            Redirect(_) => Some("see-other-uri"),
            HostGone => Some("host-gone"),
            Internal(_) => Some("internal-server-error"),
        }
    }

    /// The RFC 6120 §4.9.3 stream error condition a WebSocket client gets; `None` means a
    /// plain `<close/>` (or, for an upstream stream error, relaying the upstream's element).
    pub fn stream_condition(&self) -> Option<&'static str> {
        use Error::*;
        match self {
            BadRequest(_) => Some("bad-format"),
            ClientXml(XmlError::Restricted(_)) => Some("restricted-xml"),
            // Configured limits (size, depth, attributes, name length): RFC 6120 §4.9.3.14.
            ClientXml(XmlError::TooLarge(_) | XmlError::TooDeep(_) | XmlError::TooManyAttrs(_) | XmlError::NameTooLong(_)) => {
                Some("policy-violation")
            }
            ClientXml(_) => Some("not-well-formed"),
            ItemNotFound(_) => Some("undefined-condition"),
            PolicyViolation(_) | TooMany { .. } | UpstreamTooLarge => Some("policy-violation"),
            ImproperAddressing => Some("improper-addressing"),
            HostUnknown => Some("host-unknown"),
            ClientTerminate | UpstreamClosed => None,
            ClientGone => Some("connection-timeout"),
            ClientStream { condition, .. } => Some(condition),
            Connect { .. } | UpstreamLost(_) => Some("remote-connection-failed"),
            UpstreamStreamError(_) => None,
            Shutdown => Some("system-shutdown"),
            // RFC 7395 §3.6.1: a `<close see-other-uri/>`, no stream error.
            Redirect(_) => None,
            HostGone => Some("host-gone"),
            Internal(_) => Some("internal-server-error"),
        }
    }

    /// The configured limit behind this error, if it is a limit hit at all: the one place
    /// that knows which errors are (for `xmpp_cm_limit_hits_total{limit}`).
    pub fn limit(&self) -> Option<Limit> {
        use Error::*;
        match self {
            ClientXml(XmlError::TooLarge(_)) | UpstreamTooLarge => Some(Limit::StanzaSize),
            ClientXml(XmlError::TooDeep(_) | XmlError::TooManyAttrs(_) | XmlError::NameTooLong(_)) => Some(Limit::XmlComplexity),
            TooMany { what, .. } => Some(match what {
                AdmissionLimit::Sessions => Limit::Sessions,
                AdmissionLimit::SessionsPerIp => Limit::SessionsPerIp,
                AdmissionLimit::SessionRate => Limit::SessionRate,
            }),
            PolicyViolation(p) => Some(match p {
                Policy::BodyTooLarge => Limit::BodySize,
                Policy::BodyTooSlow => Limit::BodyTimeout,
                Policy::TooManyRequests => Limit::Requests,
                Policy::PollingTooFrequently | Policy::EmptyRequestsTooFrequently => Limit::Polling,
                Policy::RidRepeatedTooOften => Limit::RidRepeats,
            }),
            _ => None,
        }
    }

    /// What the upstream stream gets when a session ends for this reason, on every transport
    /// (`crate::link::Link::end` carries it out). `resumable`: the server enabled resumable
    /// XEP-0198 stream management (`<enabled resume/>` or `<resumed/>`).
    pub fn teardown(&self, resumable: bool) -> Teardown {
        use Error::*;
        match self {
            // Nothing to write to.
            Connect { .. } | UpstreamLost(_) => Teardown::Drop,
            // The server ended the stream: answer its close with ours, nothing more.
            UpstreamClosed | UpstreamStreamError(_) | UpstreamTooLarge => Teardown::Close,
            // The client is absent, not finished, and the server would keep its session for a
            // resumption, here or through another replica: no `</stream:stream>`, nothing
            // bounced (XEP-0198 §5; WS-24's reason for an abortive close). Without resumption
            // there is nothing to keep, and every other end is graceful (BOSH-T-22), after the
            // bounces owed (BOSH-T-21).
            ClientGone | Shutdown | Redirect(_) if resumable => Teardown::Abort,
            _ => Teardown::BounceThenClose,
        }
    }

    /// HTTP status for sessions created without `ver` (XEP-0124 §17.1), when one applies.
    pub fn legacy_http_status(&self) -> Option<u16> {
        match self.bosh_condition() {
            Some("bad-request") => Some(400),
            Some("policy-violation") => Some(403),
            Some("item-not-found") => Some(404),
            _ => None,
        }
    }
}

impl From<XmlError> for Error {
    fn from(e: XmlError) -> Self {
        Error::ClientXml(e)
    }
}

/// How a session's upstream stream ends ([`Error::teardown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// The connection is already broken: release it.
    Drop,
    /// Write `</stream:stream>` (the server already closed or errored its side).
    Close,
    /// Shut the socket down *without* `</stream:stream>`, after what the client already
    /// handed over, so the server keeps the XEP-0198 session resumable.
    Abort,
    /// Bounce what the client was never given (messages and iq requests, XEP-0206 §7), write
    /// `</stream:stream>`, and give the server a moment to close its side.
    BounceThenClose,
}

/// The rule a `PolicyViolation` broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `bosh.max_body_bytes`.
    BodyTooLarge,
    /// `http.body_read_timeout`.
    BodyTooSlow,
    /// More simultaneous BOSH requests than `requests` (XEP-0124 §11).
    TooManyRequests,
    /// Empty polls of a polling session more often than `polling` (§12).
    PollingTooFrequently,
    /// Two empty requests sooner than `polling` while one is held (§11).
    EmptyRequestsTooFrequently,
    /// The same rid more often than `bosh.max_rid_repeats`.
    RidRepeatedTooOften,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::BodyTooLarge => "body too large",
            Policy::BodyTooSlow => "request body too slow",
            Policy::TooManyRequests => "too many simultaneous requests",
            Policy::PollingTooFrequently => "polling too frequently",
            Policy::EmptyRequestsTooFrequently => "empty requests too frequently",
            Policy::RidRepeatedTooOften => "rid repeated too often",
        })
    }
}

/// Which admission limit refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionLimit {
    /// `limits.max_sessions`.
    Sessions,
    /// `limits.max_sessions_per_ip`.
    SessionsPerIp,
    /// `limits.new_sessions_per_ip_per_sec`.
    SessionRate,
}

impl AdmissionLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionLimit::Sessions => "sessions",
            AdmissionLimit::SessionsPerIp => "sessions_per_ip",
            AdmissionLimit::SessionRate => "session_rate",
        }
    }
}

/// A configured limit that refused or ended something (the `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `bosh.max_body_bytes`.
    BodySize,
    /// `upstream.max_stanza_bytes` / `websocket.max_message_bytes`.
    StanzaSize,
    /// XML depth, attribute count or name length caps of the parser.
    XmlComplexity,
    /// More simultaneous BOSH requests than `requests`.
    Requests,
    /// Empty BOSH polls more often than `polling`.
    Polling,
    /// The same rid repeated more than `bosh.max_rid_repeats`.
    RidRepeats,
    /// `limits.max_sessions`.
    Sessions,
    /// `limits.max_sessions_per_ip`.
    SessionsPerIp,
    /// `limits.new_sessions_per_ip_per_sec`.
    SessionRate,
    /// `http.tls.handshake_timeout`.
    TlsHandshake,
    /// `http.body_read_timeout`.
    BodyTimeout,
    /// `limits.max_queued_bytes` (upstream reads paused for a slow client).
    QueuedBytes,
    /// `limits.client_bytes_per_sec` (client reads paused for a fast one).
    ClientRate,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::BodySize => "body_size",
            Limit::StanzaSize => "stanza_size",
            Limit::XmlComplexity => "xml_complexity",
            Limit::Requests => "requests",
            Limit::Polling => "polling",
            Limit::RidRepeats => "rid_repeats",
            Limit::Sessions => "sessions",
            Limit::SessionsPerIp => "sessions_per_ip",
            Limit::SessionRate => "session_rate",
            Limit::TlsHandshake => "tls_handshake",
            Limit::BodyTimeout => "body_timeout",
            Limit::QueuedBytes => "queued_bytes",
            Limit::ClientRate => "client_rate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One teardown rule for every transport (issue 15 §2; BOSH-T-21, WS-24, XEP-0198).
    #[test]
    fn teardown_table() {
        use Teardown::*;
        let lost = Error::UpstreamLost("reset".into());
        let connect = Error::Connect { kind: ConnectKind::Tcp, detail: String::new() };
        let stream_error = Error::UpstreamStreamError(Box::new(Element::new("error", crate::xml::ns::STREAM)));
        let redirect = Error::Redirect("https://b.example/".into());
        let cases: [(&Error, bool, Teardown); 16] = [
            (&lost, false, Drop),
            (&lost, true, Drop),
            (&connect, true, Drop),
            (&Error::UpstreamClosed, true, Close),
            (&stream_error, false, Close),
            (&Error::UpstreamTooLarge, true, Close),
            (&Error::ClientGone, true, Abort),
            (&Error::Shutdown, true, Abort),
            (&redirect, true, Abort),
            (&Error::ClientGone, false, BounceThenClose),
            (&Error::Shutdown, false, BounceThenClose),
            (&redirect, false, BounceThenClose),
            // A client that said goodbye, or broke a rule, ends the XMPP session for good.
            (&Error::ClientTerminate, true, BounceThenClose),
            (&Error::PolicyViolation(Policy::TooManyRequests), true, BounceThenClose),
            (&Error::HostGone, true, BounceThenClose),
            (&Error::ClientXml(XmlError::InvalidUtf8), false, BounceThenClose),
        ];
        for (err, resumable, want) in cases {
            assert_eq!(err.teardown(resumable), want, "{err} (resumable {resumable})");
        }
    }
}

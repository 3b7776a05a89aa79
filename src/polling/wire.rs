//! The XEP-0025 wire format, with no IO: the request prefix `identifier[;key[;new_key]],`
//! (§3), the key chain check (§4) and the error identifiers (§3.1). What follows the comma is
//! a slice of the client's XML stream; splitting it into elements is [`crate::xml::Framer`]'s
//! job, in the session.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Longest prefix looked at for the comma: an identifier and two keys (a Base64 SHA-1 is 28
/// characters) fit many times over; anything longer is not a polling request.
const MAX_PREFIX: usize = 512;

/// The §3.1 error answers: the `ID` cookie value of a response that ends the client's use of
/// its identifier (every error identifier ends in `:0`, which no session id does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// §3.1.1 `0:0`: also what a dead or unknown identifier gets (§3, "must return an error
    /// of '0:0'"). The body may carry a textual message.
    Unknown,
    /// §3.1.2 `-1:0`: our side or the XMPP server's failed (connect, admission, drain).
    Server,
    /// §3.1.3 `-2:0`: the request cannot be used (format, size, XML, addressing).
    BadRequest,
    /// §3.1.4 `-3:0`: the key does not continue the session's key chain.
    KeySequence,
}

impl Fault {
    /// The `ID` cookie value.
    pub fn id(self) -> &'static str {
        match self {
            Fault::Unknown => "0:0",
            Fault::Server => "-1:0",
            Fault::BadRequest => "-2:0",
            Fault::KeySequence => "-3:0",
        }
    }

    /// What `err` (a reason a session cannot start or go on) tells the client. The key-chain
    /// failure has no [`crate::Error`]: it ends nothing, so it is answered where it is found.
    pub fn of(err: &crate::Error) -> Fault {
        use crate::Error::*;
        match err {
            BadRequest(_) | ClientXml(_) | ClientStream { .. } | PolicyViolation(_) | ImproperAddressing | HostUnknown => {
                Fault::BadRequest
            }
            ItemNotFound(_) | ClientGone | ClientTerminate | HostGone => Fault::Unknown,
            TooMany { .. } | Connect { .. } | UpstreamStreamError(_) | UpstreamClosed | UpstreamLost(_) | UpstreamTooLarge
            | Shutdown | Redirect(_) | Internal(_) => Fault::Server,
        }
    }
}

/// One request body, taken apart (borrowed from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// `0` asks for a new session; anything else names one.
    pub id: &'a str,
    /// K(n): the next key of the chain (for `0`, the initial key).
    pub key: Option<&'a str>,
    /// K(m, seed') of a new chain, sent with the last key of the old one (§4 step 6). Always
    /// `None` for `0`, where it "must be ignored".
    pub new_key: Option<&'a str>,
    /// Everything after the first comma: a piece of the client's stream (maybe empty).
    pub payload: &'a [u8],
}

impl Request<'_> {
    pub fn creates(&self) -> bool {
        self.id == "0"
    }
}

/// Split `identifier ; key [ ; new_key] , [xml_body]` (§3). The comma is mandatory ("the body
/// contains only the identifier followed by a comma" when there is nothing to send); the
/// identifier is `[A-Za-z0-9:-]+`, keys are Base64.
pub fn parse(body: &[u8]) -> Result<Request<'_>, Fault> {
    let head = &body[..body.len().min(MAX_PREFIX)];
    let comma = head.iter().position(|&b| b == b',').ok_or(Fault::BadRequest)?;
    // Only ASCII passes the checks below, so the prefix is valid UTF-8 when they pass.
    let prefix = std::str::from_utf8(&body[..comma]).map_err(|_| Fault::BadRequest)?;
    let mut parts = prefix.split(';');
    let id = parts.next().unwrap_or_default();
    let key = parts.next();
    let new_key = parts.next();
    if parts.next().is_some() || !is_identifier(id) || !key.is_none_or(is_key) || !new_key.is_none_or(is_key) {
        return Err(Fault::BadRequest);
    }
    let new_key = if id == "0" { None } else { new_key };
    Ok(Request { id, key, new_key, payload: &body[comma + 1..] })
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-')
}

fn is_key(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// K(1, `key`) = Base64(SHA1(`key`)): what the previous key of the chain must be (§4).
pub fn hash_key(key: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(key.as_bytes()))
}

/// The session's key state after a request with `key` and `new_key`, given `last`, the key the
/// previous request carried (`None`: the session was created without keys). The request is
/// good when K(1, key) equals `last`; the next request must then continue from `key`, or from
/// `new_key` when one was sent. A keyless session stays keyless (a key in it continues no
/// chain), and a keyed one never accepts a request without a key.
pub fn next_key(last: Option<&str>, key: Option<&str>, new_key: Option<&str>) -> Result<Option<String>, Fault> {
    match (last, key) {
        (None, None) => Ok(None),
        (Some(last), Some(key)) if hash_key(key) == last => Ok(Some(new_key.unwrap_or(key).to_string())),
        _ => Err(Fault::KeySequence),
    }
}

/// A fresh session identifier: 128 bits from the OS CSPRNG, hex. Not BOSH's sids: their
/// URL-safe Base64 has `_`, outside the identifier alphabet `[A-Za-z0-9:-]`; and hex never
/// ends in `:0`, the mark of an error identifier.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source is unavailable");
    hex::encode(b)
}

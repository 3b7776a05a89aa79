//! The BOSH `<body/>` wrapper (XEP-0124 §6, XEP-0206 §2): parsing a request into a typed
//! [`Request`], and writing response bodies. Pure: no IO, no async.

use crate::error::Error;
use crate::relay;
use crate::xml::{ns, parse_document, Element, Limits, Node};

/// Largest rid allowed: 2^53 - 1 (XEP-0124 §14.1; JavaScript's safe integer range).
pub const MAX_RID: u64 = 9_007_199_254_740_991;

/// The highest protocol version this CM implements (XEP-0124 1.11).
pub const VERSION: (u32, u32) = (1, 11);

/// One parsed request body. Attribute values are kept raw except where a type is implied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub rid: u64,
    pub sid: Option<String>,
    pub to: Option<String>,
    pub lang: Option<String>,
    pub wait: Option<u64>,
    pub hold: Option<u64>,
    /// `ver` as (major, minor); `None` marks a legacy client on a creation request.
    pub ver: Option<(u32, u32)>,
    pub content: Option<String>,
    pub route: Option<String>,
    pub from: Option<String>,
    pub ack: Option<u64>,
    pub key: Option<String>,
    pub newkey: Option<String>,
    pub pause: Option<u64>,
    /// `type='terminate'`.
    pub terminate: bool,
    /// `xmpp:restart='true'` (matched by the namespace `urn:xmpp:xbosh`, not the prefix).
    pub restart: bool,
    /// `xmpp:version`.
    pub xmpp_version: Option<String>,
    /// `stream` (XEP-0124 §16): which of the session's streams the request is for; empty is
    /// absent. Meaningful only in a session that advertised multiple streams.
    pub stream: Option<String>,
    /// Children, already normalised by [`relay::from_client`] (unqualified → `jabber:client`).
    pub payloads: Vec<Element>,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

/// Parse one request body. Errors are `bad-request` (or the XML error that caused it).
pub fn parse(input: &[u8], limits: &Limits) -> Result<Request, Error> {
    let mut root = parse_document(input, limits, &[])?;
    if root.name != "body" || root.ns != ns::HTTPBIND {
        return Err(Error::BadRequest("root is not {http://jabber.org/protocol/httpbind}body".into()));
    }
    let mut r = Request::default();
    let rid = root.attr("rid").ok_or_else(|| Error::BadRequest("missing rid".into()))?;
    r.rid = parse_rid(rid).ok_or_else(|| Error::BadRequest("rid is not an integer in 1..2^53".into()))?;
    r.sid = take_attr(&mut root, "sid");
    r.to = take_attr(&mut root, "to").filter(|s| !s.is_empty());
    r.lang = root.attr_ns(ns::XML, "lang").map(str::to_owned);
    r.wait = opt_num(&root, "wait")?;
    r.hold = opt_num(&root, "hold")?;
    r.ver = match root.attr("ver") {
        None => None,
        Some(v) => Some(parse_ver(v).ok_or_else(|| Error::BadRequest("ver is not major.minor".into()))?),
    };
    r.content = take_attr(&mut root, "content");
    r.route = take_attr(&mut root, "route");
    r.from = take_attr(&mut root, "from");
    r.ack = opt_num(&root, "ack")?;
    r.key = take_attr(&mut root, "key");
    r.newkey = take_attr(&mut root, "newkey");
    r.pause = opt_num(&root, "pause")?;
    r.terminate = match root.attr("type") {
        None => false,
        Some("terminate") => true,
        Some(_) => return Err(Error::BadRequest("unknown type".into())),
    };
    r.restart = match root.attr_ns(ns::XBOSH, "restart") {
        None => false,
        Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(_) => return Err(Error::BadRequest("xmpp:restart is not a boolean".into())),
    };
    r.xmpp_version = root.attr_ns(ns::XBOSH, "version").map(str::to_owned);
    r.stream = take_attr(&mut root, "stream").filter(|s| !s.is_empty());
    for child in root.children {
        match child {
            Node::Text(t) if t.trim().is_empty() => {}
            Node::Text(_) => return Err(Error::BadRequest("character data directly inside <body/>".into())),
            Node::Element(e) => r.payloads.push(relay::from_client(e)?),
        }
    }
    Ok(r)
}

/// Move the value of the unprefixed attribute `name` out of `e` (each is read once).
fn take_attr(e: &mut Element, name: &str) -> Option<String> {
    e.attrs.iter_mut().find(|a| a.ns.is_none() && a.name == name).map(|a| std::mem::take(&mut a.value))
}

/// A positive integer without sign, spaces or leading '+', at most 2^53 - 1.
pub fn parse_rid(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (1..=MAX_RID).contains(&v).then_some(v)
}

/// `major.minor`, each compared as an integer (1.10 > 1.9).
pub fn parse_ver(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    let ok = |x: &str| !x.is_empty() && x.len() <= 6 && x.bytes().all(|c| c.is_ascii_digit());
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn opt_num(e: &Element, name: &'static str) -> Result<Option<u64>, Error> {
    match e.attr(name) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse().map(Some).map_err(|_| Error::BadRequest(format!("{name} is not a number")))
        }
        Some(_) => Err(Error::BadRequest(format!("{name} is not a non-negative integer"))),
    }
}

/// A response body under construction: attributes in order, then the payload (already
/// serialized, self-contained elements).
#[derive(Debug, Clone, Default)]
pub struct ResponseBody {
    attrs: Vec<(&'static str, String)>,
    payload: String,
}

impl ResponseBody {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn attr(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.attrs.push((name, value.into()));
        self
    }

    pub fn push_attr(&mut self, name: &'static str, value: impl Into<String>) {
        self.attrs.push((name, value.into()));
    }

    /// Append already-serialized elements.
    pub fn payload(mut self, xml: &str) -> Self {
        self.payload.push_str(xml);
        self
    }

    /// Append already-serialized elements, taking the string (no copy when nothing was pushed
    /// yet).
    pub fn push_payload(&mut self, xml: String) {
        if self.payload.is_empty() {
            self.payload = xml;
        } else {
            self.payload.push_str(&xml);
        }
    }

    /// Append elements, each serialized self-contained (`xmlns='jabber:client'` on stanzas,
    /// `xmlns:stream` on stream elements).
    pub fn push_elements<'a>(&mut self, els: impl Iterator<Item = &'a Element>) {
        for el in els {
            el.write_xml(&mut self.payload, "");
        }
    }

    /// `<body type='terminate' condition='…'/>` with the stanzas queued before it.
    pub fn terminate(condition: Option<&str>) -> Self {
        let mut b = ResponseBody::new().attr("type", "terminate");
        if let Some(c) = condition {
            b.push_attr("condition", c);
        }
        b
    }

    pub fn to_xml(&self) -> String {
        let mut s = String::with_capacity(128 + self.payload.len());
        s.push_str("<body xmlns='http://jabber.org/protocol/httpbind'");
        if !self.payload.is_empty() {
            // Features and stream errors use the stream prefix (XEP-0206 §2, BOSH-S-26).
            s.push_str(" xmlns:stream='http://etherx.jabber.org/streams'");
        }
        if self.attrs.iter().any(|(n, _)| n.starts_with("xmpp:")) {
            s.push_str(" xmlns:xmpp='urn:xmpp:xbosh'");
        }
        for (n, v) in &self.attrs {
            s.push(' ');
            s.push_str(n);
            s.push_str("='");
            crate::xml::element::escape_attr(v, &mut s);
            s.push('\'');
        }
        if self.payload.is_empty() {
            s.push_str("/>");
        } else {
            s.push('>');
            s.push_str(&self.payload);
            s.push_str("</body>");
        }
        s
    }
}

#[cfg(test)]
mod tests;

//! The RFC 6120 stream header: reading the upstream's `<stream:stream>` attributes, and the one
//! writer of every `<stream:stream …>` header xmpp-cm sends ([`write_open`]: upstream, legacy
//! WebSocket framing, Direct TLS, polling) with its footer ([`CLOSE`]) and the XML declaration
//! ([`DECLARATION`]). Recognising a header in the byte stream is [`super::framing`]'s job;
//! mapping header values into BOSH/WebSocket replies is the transports'.

use super::element::{write_attr, Quote};
use super::{ns, Element};

/// The XML declaration before a header that starts a byte stream (upstream, Direct TLS,
/// polling); WebSocket messages carry none.
pub const DECLARATION: &str = "<?xml version='1.0'?>";

/// The stream footer (RFC 6120 §4.4).
pub const CLOSE: &str = "</stream:stream>";

/// Attributes of a stream header (either direction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

impl StreamHeader {
    /// Read `from`, `to`, `id`, `version` and `xml:lang` from a parsed header element.
    pub fn from_element(el: &Element) -> StreamHeader {
        let get = |n: &str| el.attr(n).map(str::to_owned);
        StreamHeader {
            from: get("from"),
            to: get("to"),
            id: get("id"),
            version: get("version"),
            lang: el.attr_ns(ns::XML, "lang").map(str::to_owned),
        }
    }

    /// Check a header received from the upstream server (RFC 6120 §4.7): XMPP 1.0, with a
    /// stream id. The error text is for logs; it does not echo peer values.
    pub fn validate_server(&self) -> Result<(), String> {
        match self.version.as_deref() {
            Some("1.0") => {}
            Some(_) => return Err("stream version is not 1.0".into()),
            None => return Err("stream header without version (pre-XMPP 1.0 server)".into()),
        }
        match self.id.as_deref() {
            Some(id) if !id.is_empty() => Ok(()),
            _ => Err("stream header without id".into()),
        }
    }
}

/// The attributes of a header xmpp-cm writes: each only when present, always in this order,
/// after the `jabber:client` and `stream` namespace declarations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Open<'a> {
    pub to: Option<&'a str>,
    pub from: Option<&'a str>,
    pub id: Option<&'a str>,
    pub version: Option<&'a str>,
    pub lang: Option<&'a str>,
}

impl<'a> From<&'a StreamHeader> for Open<'a> {
    fn from(h: &'a StreamHeader) -> Open<'a> {
        Open {
            to: h.to.as_deref(),
            from: h.from.as_deref(),
            id: h.id.as_deref(),
            version: h.version.as_deref(),
            lang: h.lang.as_deref(),
        }
    }
}

/// Append an opening stream tag (never self-closed): `<stream:stream xmlns='jabber:client'
/// xmlns:stream='http://etherx.jabber.org/streams' [to] [from] [id] [version] [xml:lang]>`,
/// values escaped, quoted with `q`.
pub fn write_open(out: &mut String, h: &Open<'_>, q: Quote) {
    out.push_str("<stream:stream");
    write_attr(out, "xmlns", ns::CLIENT, q);
    write_attr(out, "xmlns:stream", ns::STREAM, q);
    let attrs = [("to", h.to), ("from", h.from), ("id", h.id), ("version", h.version), ("xml:lang", h.lang)];
    for (name, value) in attrs {
        if let Some(v) = value {
            write_attr(out, name, v, q);
        }
    }
    out.push('>');
}

/// The header xmpp-cm writes upstream (RFC 6120 §4.7, UP-12), with the XML declaration:
/// `<?xml version='1.0'?><stream:stream xmlns='jabber:client'
/// xmlns:stream='http://etherx.jabber.org/streams' to='…' [from='…'] version='…' xml:lang='…'>`.
pub fn client_header(to: &str, lang: &str, version: &str, from: Option<&str>) -> String {
    let mut s = String::with_capacity(200);
    s.push_str(DECLARATION);
    let open = Open { to: Some(to), from, id: None, version: Some(version), lang: Some(lang) };
    write_open(&mut s, &open, Quote::Single);
    s
}

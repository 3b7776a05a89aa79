//! One WebSocket text message ↔ XMPP, with no IO: classifying what a client sent (RFC 7395
//! `<open/>`/`<close/>`, the legacy `<stream:stream>` header and footer, a stanza, or nothing)
//! and writing the few messages xmpp-cm itself originates (`<open/>`, `<close/>`, the legacy
//! header, stream errors). Parsing and serializing stanzas is left to [`crate::xml`]; every
//! rewrite of what crosses the proxy is left to [`crate::relay`].

use crate::error::Error;
use crate::xml::element::{write_attr, Quote};
use crate::xml::stream_error::{write_error, Scope};
use crate::xml::stream_header::{self, write_open};
use crate::xml::{ns, parse_document, Element, Limits, StreamHeader, XmlError};

/// How a connection frames its stream; chosen by the first client message (WS-09).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 7395: `<open/>`, `<close/>` in the framing namespace, one element per message.
    Rfc7395,
    /// What tsung and pre-RFC clients send: a `<stream:stream …>` start tag, stanzas, and
    /// `</stream:stream>`, each in its own message.
    Legacy,
}

/// What the client asked for in `<open/>` (or a legacy header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenRequest {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

/// One classified client message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Whitespace only: keepalives are forbidden on this binding (RFC 7395 §3.8), so they are
    /// dropped rather than forwarded (WS-21).
    Nothing,
    /// `<open/>` or a legacy `<stream:stream>` header, with the framing it implies.
    Open(OpenRequest, Framing),
    /// `<close/>` or `</stream:stream>`.
    Close,
    /// Any other top-level element: a stanza, SASL, SM, bind … Namespaces resolved; an
    /// unqualified element still has `ns == ""` (relay fixes that, WS-23).
    Element(Element),
}

/// The byte-exact close strophe.js compares against (WS-27).
pub const CLOSE: &str = r#"<close xmlns="urn:ietf:params:xml:ns:xmpp-framing" />"#;
/// The footer of the legacy framing.
pub const LEGACY_CLOSE: &str = stream_header::CLOSE;

/// Classify one text message. `framing` is `None` until the connection has opened; `legacy`
/// says whether the legacy framing may be selected (`[websocket] legacy_framing`).
pub fn classify(text: &str, framing: Option<Framing>, legacy: bool, limits: &Limits) -> Result<Inbound, Error> {
    let body = strip_decl(text).trim_matches(is_xml_space);
    if body.is_empty() {
        // A bare XML declaration is as empty as whitespace.
        return Ok(Inbound::Nothing);
    }
    if text.len() > limits.max_stanza_bytes {
        return Err(Error::ClientXml(XmlError::TooLarge(limits.max_stanza_bytes)));
    }
    if body == LEGACY_CLOSE {
        return match framing {
            Some(Framing::Legacy) => Ok(Inbound::Close),
            _ => Err(invalid_namespace("legacy stream close on an RFC 7395 connection")),
        };
    }
    if is_legacy_header(body) {
        if !legacy || framing == Some(Framing::Rfc7395) {
            return Err(invalid_namespace("<stream:stream> header where <open/> was expected"));
        }
        // The start tag alone is not a document; close it to reuse the one XML parser.
        let doc = format!("{body}{LEGACY_CLOSE}");
        let el = parse_document(doc.as_bytes(), limits, &[])?;
        if el.name != "stream" || el.ns != ns::STREAM {
            return Err(invalid_namespace("stream header not in the streams namespace"));
        }
        return Ok(Inbound::Open(open_request(&el), Framing::Legacy));
    }
    let inherited: &[(&str, &str)] = match framing {
        // Stanzas inside a legacy stream inherit what the client's header declared.
        Some(Framing::Legacy) => &[("", ns::CLIENT), ("stream", ns::STREAM)],
        _ => &[],
    };
    let el = parse_document(body.as_bytes(), limits, inherited)?;
    let framing_element = el.prefix.is_none() && matches!(el.name.as_str(), "open" | "close");
    if el.ns == ns::FRAMING || framing_element {
        if el.ns != ns::FRAMING {
            return Err(invalid_namespace("<open/>/<close/> outside the framing namespace"));
        }
        if framing == Some(Framing::Legacy) {
            return Err(invalid_namespace("framing element on a legacy stream"));
        }
        return match el.name.as_str() {
            "open" => Ok(Inbound::Open(open_request(&el), Framing::Rfc7395)),
            "close" => Ok(Inbound::Close),
            _ => Err(Error::ClientStream {
                condition: "unsupported-stanza-type",
                detail: "unknown element in the framing namespace".into(),
            }),
        };
    }
    if el.name == "stream" && el.ns == ns::STREAM {
        return Err(invalid_namespace("self-closed stream header"));
    }
    Ok(Inbound::Element(el))
}

fn invalid_namespace(detail: &str) -> Error {
    Error::ClientStream { condition: "invalid-namespace", detail: detail.into() }
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Drop a leading XML declaration (WS-08); only `<?xml` followed by space counts.
fn strip_decl(text: &str) -> &str {
    let t = text.trim_start_matches(is_xml_space);
    if let Some(rest) = t.strip_prefix("<?xml") {
        if rest.starts_with(is_xml_space) {
            if let Some(end) = rest.find("?>") {
                return &rest[end + 2..];
            }
        }
    }
    text
}

/// A legacy opening tag: `<stream:stream …>` that is not self-closed.
fn is_legacy_header(body: &str) -> bool {
    body.strip_prefix("<stream:stream")
        .is_some_and(|rest| rest.starts_with(|c: char| is_xml_space(c) || c == '>'))
        && body.ends_with('>')
        && !body.ends_with("/>")
}

fn open_request(el: &Element) -> OpenRequest {
    let mut r = OpenRequest::default();
    for a in &el.attrs {
        let xml_ns = a.ns.as_deref() == Some(ns::XML) || a.prefix.as_deref() == Some("xml");
        match (a.name.as_str(), xml_ns, a.prefix.is_none()) {
            ("lang", true, _) => r.lang = Some(a.value.clone()),
            ("to", _, true) => r.to = Some(a.value.clone()),
            ("from", _, true) => r.from = Some(a.value.clone()),
            ("version", _, true) => r.version = Some(a.value.clone()),
            _ => {}
        }
    }
    r
}

/// The header attributes xmpp-cm answers with: the upstream's, with fallbacks for what it
/// omitted (or for errors before any upstream exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub from: String,
    pub id: String,
    pub lang: String,
}

impl Reply {
    pub fn from_upstream(h: &StreamHeader, domain: &str, fallback_id: &str) -> Reply {
        Reply {
            from: h.from.clone().unwrap_or_else(|| domain.to_string()),
            id: h.id.clone().unwrap_or_else(|| fallback_id.to_string()),
            lang: h.lang.clone().unwrap_or_else(|| "en".into()),
        }
    }
}

/// Our `<open/>`: starts with the literal `<open `, framing namespace as the unprefixed default,
/// `version="1.0"` (WS-12; strophe.js and gloox check each of these).
pub fn open(r: &Reply) -> String {
    let mut s = String::with_capacity(160);
    s.push_str("<open");
    write_attr(&mut s, "xmlns", ns::FRAMING, Quote::Double);
    write_attr(&mut s, "from", &r.from, Quote::Double);
    write_attr(&mut s, "id", &r.id, Quote::Double);
    write_attr(&mut s, "version", "1.0", Quote::Double);
    write_attr(&mut s, "xml:lang", &r.lang, Quote::Double);
    s.push_str("/>");
    s
}

/// Our legacy header: an unclosed start tag declaring `jabber:client` and the `stream` prefix.
pub fn legacy_open(r: &Reply) -> String {
    let mut s = String::with_capacity(200);
    let open = stream_header::Open {
        from: Some(&r.from),
        id: Some(&r.id),
        version: Some("1.0"),
        lang: Some(&r.lang),
        ..Default::default()
    };
    write_open(&mut s, &open, Quote::Double);
    s
}

/// The header message for a framing.
pub fn open_for(framing: Framing, r: &Reply) -> String {
    match framing {
        Framing::Rfc7395 => open(r),
        Framing::Legacy => legacy_open(r),
    }
}

/// The footer message for a framing.
pub fn close_for(framing: Framing) -> &'static str {
    match framing {
        Framing::Rfc7395 => CLOSE,
        Framing::Legacy => LEGACY_CLOSE,
    }
}

/// RFC 7395 §3.6.1 (WS-20): a `<close/>` that sends the client to another endpoint (a draining
/// replica's peer). The URL comes from validated configuration (never a less secure scheme).
pub fn close_redirect(uri: &str) -> String {
    // CLOSE's bytes, one attribute longer.
    let mut s = String::with_capacity(CLOSE.len() + 20 + uri.len());
    s.push_str("<close");
    write_attr(&mut s, "xmlns", ns::FRAMING, Quote::Double);
    write_attr(&mut s, "see-other-uri", uri, Quote::Double);
    s.push_str(" />");
    s
}

/// The drain's redirect for legacy `<stream:stream>` framing, which has no `see-other-uri`:
/// the RFC 6120 §4.9.3.19 `see-other-host` stream error naming the host (and port) of `uri`, the
/// WebSocket URL of `[drain] redirect_url`. The client reconnects there with its own scheme and
/// path (legacy clients know no other way to be sent on).
pub fn see_other_host(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')).collect();
    let mut s = String::with_capacity(160 + host.len());
    write_error(&mut s, "see-other-host", Some(&host), Scope::Standalone, Quote::Double);
    s
}

/// A stream error xmpp-cm originates, as a message of its own. `condition` comes from
/// [`Error::stream_condition`]; [`write_error`] writes anything but a plain name as
/// `undefined-condition`.
pub fn stream_error(condition: &str) -> String {
    let mut s = String::with_capacity(160);
    write_error(&mut s, condition, None, Scope::Standalone, Quote::Double);
    s
}

/// A fresh stream id for `<open/>` replies that have no upstream header (errors before the
/// upstream answered): 64 random bits, hex.
pub fn local_id() -> String {
    let mut b = [0u8; 8];
    // An id only needs to be unique enough to tell streams apart in logs; on the (never seen)
    // failure of the OS RNG a constant is still a valid id.
    if getrandom::getrandom(&mut b).is_err() {
        return "xmpp-cm".into();
    }
    hex::encode(b)
}

//! The RFC 6120 stream header: reading the upstream's `<stream:stream>` attributes, and writing
//! the header xmpp-cm sends upstream. Recognising a header in the byte stream is
//! [`super::framing`]'s job; mapping header values into BOSH/WebSocket replies is the
//! transports'.

use super::element::escape_attr;
use super::{ns, Element};

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

/// The header xmpp-cm writes upstream (RFC 6120 §4.7, UP-12), with the XML declaration:
/// `<?xml version='1.0'?><stream:stream xmlns='jabber:client'
/// xmlns:stream='http://etherx.jabber.org/streams' to='…' [from='…'] version='…' xml:lang='…'>`.
/// Values are escaped.
pub fn client_header(to: &str, lang: &str, version: &str, from: Option<&str>) -> String {
    let mut s = String::with_capacity(200);
    s.push_str("<?xml version='1.0'?><stream:stream xmlns='");
    s.push_str(ns::CLIENT);
    s.push_str("' xmlns:stream='");
    s.push_str(ns::STREAM);
    s.push_str("' to='");
    escape_attr(to, &mut s);
    s.push('\'');
    if let Some(from) = from {
        s.push_str(" from='");
        escape_attr(from, &mut s);
        s.push('\'');
    }
    s.push_str(" version='");
    escape_attr(version, &mut s);
    s.push_str("' xml:lang='");
    escape_attr(lang, &mut s);
    s.push_str("'>");
    s
}

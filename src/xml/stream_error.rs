//! The one writer of the `<stream:error/>` xmpp-cm originates (RFC 6120 §4.9), for every
//! transport that has stream errors: WebSocket messages, Direct TLS refusals, polling. Which
//! condition a failure is, is `crate::error`'s; relaying the server's own stream error is the
//! transports'.

use super::element::{escape_text, write_attr, Quote};
use super::ns;

/// Where the error is written, which decides whether it declares the `stream` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Inside a stream whose header declared the prefix (Direct TLS, polling).
    InStream,
    /// A document of its own (one WebSocket message): declares `xmlns:stream` itself.
    Standalone,
}

/// Append `<stream:error[ xmlns:stream='…']><condition
/// xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>`, or with `content` as the
/// condition element's text (`see-other-host` names the host there). The condition comes from
/// a closed set but is checked anyway, so that nothing but a name ever lands in the markup:
/// anything else is written as `undefined-condition`.
pub fn write_error(out: &mut String, condition: &str, content: Option<&str>, scope: Scope, q: Quote) {
    let c = if !condition.is_empty() && condition.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        condition
    } else {
        "undefined-condition"
    };
    out.push_str("<stream:error");
    if scope == Scope::Standalone {
        write_attr(out, "xmlns:stream", ns::STREAM, q);
    }
    out.push_str("><");
    out.push_str(c);
    write_attr(out, "xmlns", ns::STREAMS_ERR, q);
    match content {
        None => out.push_str("/>"),
        Some(text) => {
            out.push('>');
            escape_text(text, out);
            out.push_str("</");
            out.push_str(c);
            out.push('>');
        }
    }
    out.push_str("</stream:error>");
}

//! XML: the element tree ([`element`]), parsing a complete document ([`parse`]), splitting an
//! endless XMPP stream into top-level elements ([`framing`]), stream headers
//! ([`stream_header`]) and the stream errors xmpp-cm writes ([`stream_error`]). Everything here
//! is pure: no IO, no async. Network input never panics.

pub mod element;
pub mod framing;
pub mod parse;
pub mod stream_error;
pub mod stream_header;

pub use element::{Attr, Element, Node};
pub use framing::{Frame, Framer};
pub use parse::{parse_document, XmlError};
pub use stream_header::StreamHeader;

/// Namespace constants used across the crate.
pub mod ns {
    pub const CLIENT: &str = "jabber:client";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const STREAMS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
    pub const XBOSH: &str = "urn:xmpp:xbosh";
    pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
    pub const COMPRESS_FEATURE: &str = "http://jabber.org/features/compress";
    pub const SM3: &str = "urn:xmpp:sm:3";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}

/// Limits applied to every piece of XML that comes from the network, before and while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element (stanza) in bytes, counted on the raw input.
    pub max_stanza_bytes: usize,
    /// Deepest nesting of elements (the stream root or BOSH body counts as depth 1).
    pub max_depth: usize,
    /// Most attributes on one element (namespace declarations included).
    pub max_attrs: usize,
    /// Longest element or attribute name in bytes.
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_bytes: 262_144, max_depth: 64, max_attrs: 64, max_name_len: 256 }
    }
}

pub use parse::parse_document_with_bindings;
pub use stream_header::client_header;

#[cfg(test)]
mod tests;

//! The RFC 6120 stream header: reading the upstream's `<stream:stream>` attributes, and writing
//! the header xmpp-cm sends upstream.

/// Attributes of a stream header (either direction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

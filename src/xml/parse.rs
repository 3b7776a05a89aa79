//! Parsing one complete XML document (a BOSH `<body/>`, a WebSocket message, or a top-level
//! element cut out of the upstream stream by [`super::framing`]) into an [`Element`] tree.
//!
//! Refused outright: DOCTYPE, entity references other than the five predefined ones and
//! character references to characters XML 1.0 forbids, processing instructions other than a
//! leading XML declaration, and comments (RFC 6120 §11.1). Limits are checked while parsing.

use super::{Element, Limits};

/// Why a piece of XML was refused. Each variant says what was wrong, never echoing the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    /// A construct XMPP forbids (DOCTYPE, comment, PI, entity declaration/reference).
    #[error("restricted XML construct: {0}")]
    Restricted(&'static str),
    #[error("element larger than {0} bytes")]
    TooLarge(usize),
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    #[error("more than {0} attributes on one element")]
    TooManyAttrs(usize),
    #[error("name longer than {0} bytes")]
    NameTooLong(usize),
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// An unbound namespace prefix.
    #[error("unbound namespace prefix")]
    UnboundPrefix,
}

/// Parse one complete document (exactly one root element; an XML declaration is allowed first;
/// whitespace around the root is allowed). `inherited` are namespace bindings in scope around
/// the document, as (prefix, uri) with "" for the default namespace.
pub fn parse_document(_input: &[u8], _limits: &Limits, _inherited: &[(&str, &str)]) -> Result<Element, XmlError> {
    todo!()
}

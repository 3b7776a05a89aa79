//! Splitting the endless upstream XML stream into frames: the stream header, complete
//! top-level elements, and the stream close. A pure state machine fed with bytes; a byte cap
//! applies before parsing. Whitespace between top-level elements is dropped here.

use super::{Element, StreamHeader};

/// What the framer yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `<stream:stream …>` (also after a restart, when a new header arrives on the same socket).
    StreamOpen(StreamHeader),
    /// A complete top-level element, with namespaces resolved against the stream root
    /// (so a `<message/>` has `ns == "jabber:client"`, `<stream:features/>` has the streams ns).
    Element(Element),
    /// `</stream:stream>`.
    StreamClose,
}

/// The stream splitter. Feed it bytes; take frames out.
#[derive(Debug)]
pub struct Framer {
    _todo: (),
}

impl Framer {
    pub fn new(_limits: super::Limits) -> Self {
        todo!()
    }
    /// Append bytes read from the socket.
    pub fn feed(&mut self, _bytes: &[u8]) {
        todo!()
    }
    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, super::XmlError> {
        todo!()
    }
}

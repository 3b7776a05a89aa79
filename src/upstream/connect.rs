//! TCP connect, STARTTLS / direct TLS, stream open, and the reader/writer halves of the
//! upstream stream.

use crate::error::Error;
use crate::xml::{Element, Frame, StreamHeader};

use super::OpenParams;

/// An open upstream stream: the server's (post-TLS) header and first features, and the halves.
pub struct Connection {
    pub header: StreamHeader,
    pub features: Element,
    /// Whether the hop is TLS-protected.
    pub secure: bool,
    pub writer: UpstreamWriter,
    pub reader: UpstreamReader,
}

pub struct UpstreamWriter {
    _todo: (),
}
pub struct UpstreamReader {
    _todo: (),
}

pub async fn connect(_ctx: &super::Upstream, _params: &OpenParams) -> Result<Connection, Error> {
    todo!()
}

impl UpstreamWriter {
    /// Serialize and write one top-level element (default namespace `jabber:client` in scope).
    pub async fn send(&mut self, _el: &Element) -> Result<(), Error> {
        todo!()
    }
    /// Write a fresh stream header on the same socket (stream restart after SASL).
    pub async fn restart(&mut self, _params: &OpenParams) -> Result<(), Error> {
        todo!()
    }
    /// Write `</stream:stream>` and shut down the write side.
    pub async fn close(&mut self) -> Result<(), Error> {
        todo!()
    }
}

impl UpstreamReader {
    /// The next frame from the server. Whitespace keepalives never come out of here. A new
    /// `StreamOpen` arrives after a restart. EOF without `</stream:stream>` → `UpstreamLost`.
    pub async fn next(&mut self) -> Result<Frame, Error> {
        todo!()
    }
}

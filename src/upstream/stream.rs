//! The open upstream stream: the [`Connection`] that negotiation (`connect.rs`) returns,
//! split into [`UpstreamReader`] (owns the framer and reads through a per-thread buffer, so a
//! waiting reader holds none) and [`UpstreamWriter`] (serializes, queues and flushes elements;
//! restart, close and abort), and the `Wire` both are cut from: the whole socket while the
//! stream is still being negotiated. Why a read failed (`ReadFail`) is decided here, as a
//! connect error during negotiation or as the loss of an open stream. Bytes never leave this
//! file, `connect.rs` and `xml`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::{ConnectKind, Error};
use crate::xml::{ns, stream_header, Element, Frame, Framer, Limits, StreamHeader, XmlError};

use super::OpenParams;

/// Size of the read buffer each worker thread shares among all its upstream connections (see
/// [`read_frame`]): no connection keeps a read buffer of its own.
const READ_BUF_BYTES: usize = 16 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_BUF_BYTES].into_boxed_slice());
}

/// Any byte stream the upstream runs over: plain TCP, or TLS over TCP. Boxed so that the
/// reader and writer have one concrete type whichever way the connection was made.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(super) type BoxIo = Box<dyn Io>;

/// An open upstream stream: the server's (post-TLS) header and first features, and the halves.
pub struct Connection {
    pub header: StreamHeader,
    pub features: Element,
    /// Whether the hop is TLS-protected.
    pub secure: bool,
    pub writer: UpstreamWriter,
    pub reader: UpstreamReader,
}

/// The writing half. Its methods are not cancel-safe (a cancelled write may leave half an
/// element on the wire); a session should finish or abandon the connection after cancelling.
pub struct UpstreamWriter {
    io: WriteHalf<BoxIo>,
    /// Elements accepted with [`UpstreamWriter::queue`] and not written yet; every other write
    /// (and [`UpstreamWriter::flush_queued`]) sends them first, so order is kept.
    queued: String,
    /// Decides whether `from` may go into a restart header (UP-19).
    secure: bool,
}

/// The reading half.
pub struct UpstreamReader {
    io: ReadHalf<BoxIo>,
    /// Carries over from negotiation: bytes after the features may already be buffered in it.
    framer: Framer,
    /// Once the stream is broken, every later call repeats why, instead of reading on.
    failed: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("header", &self.header)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpstreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamWriter").field("secure", &self.secure).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpstreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamReader").field("failed", &self.failed).finish_non_exhaustive()
    }
}

/// The rustls error inside an IO error when there is one ("invalid peer certificate:
/// UnknownIssuer"), the IO error otherwise.
pub(super) fn io_detail(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls.to_string(),
        None => e.to_string(),
    }
}

fn is_rustls(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Our header; `from` only on an encrypted stream (UP-19).
pub(super) fn client_header(params: &OpenParams, secure: bool) -> String {
    let from = if secure { params.from.as_deref() } else { None };
    stream_header::client_header(&params.domain, &params.lang, &params.version, from)
}

/// Why reading a frame failed.
pub(super) enum ReadFail {
    Eof,
    Io(std::io::Error),
    Xml(XmlError),
}

impl ReadFail {
    /// As a connect error while negotiating `what`.
    pub(super) fn during(self, what: &str) -> Error {
        let (kind, detail) = match self {
            ReadFail::Eof => (ConnectKind::Stream, format!("connection closed during {what}")),
            ReadFail::Io(e) if is_rustls(&e) => (ConnectKind::Tls, io_detail(&e)),
            ReadFail::Io(e) => (ConnectKind::Stream, format!("reading during {what}: {e}")),
            ReadFail::Xml(e) => (ConnectKind::Stream, format!("bad XML during {what}: {e}")),
        };
        Error::Connect { kind, detail }
    }

    /// As the end of an open stream.
    fn lost(self) -> String {
        match self {
            ReadFail::Eof => "connection closed without </stream:stream>".into(),
            ReadFail::Io(e) => format!("read failed: {}", io_detail(&e)),
            ReadFail::Xml(e) => format!("bad XML from upstream: {e}"),
        }
    }
}

/// Pull the next frame: from what the framer already holds, else read more. Cancel-safe: bytes
/// are fed to the framer in the same poll that reads them.
///
/// The read goes into the worker thread's shared buffer, borrowed only for the duration of one
/// `poll_read` (a read that returns `Pending` writes nothing), and what arrived is copied into
/// the framer at once; so a waiting connection holds no read buffer, only the framer's bytes of
/// an unfinished stanza.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, framer: &mut Framer) -> Result<Frame, ReadFail> {
    loop {
        if let Some(frame) = framer.next_frame().map_err(ReadFail::Xml)? {
            return Ok(frame);
        }
        let read = std::future::poll_fn(|cx| {
            READ_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let mut rb = tokio::io::ReadBuf::new(&mut b[..]);
                match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    std::task::Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n > 0 {
                            crate::metrics::metrics().bytes(crate::metrics::Direction::ToClient, n);
                            framer.feed(rb.filled());
                        }
                        std::task::Poll::Ready(Ok(n))
                    }
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
        })
        .await;
        match read {
            Ok(0) => return Err(ReadFail::Eof),
            Ok(_) => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
}

/// The whole socket during negotiation, before it is split.
pub(super) struct Wire {
    io: BoxIo,
    framer: Framer,
}

impl Wire {
    pub(super) fn new(io: BoxIo, limits: Limits) -> Wire {
        Wire { io, framer: Framer::new(limits) }
    }

    pub(super) async fn write(&mut self, s: &str) -> std::io::Result<()> {
        self.io.write_all(s.as_bytes()).await?;
        self.io.flush().await
    }

    pub(super) async fn read_frame(&mut self) -> Result<Frame, ReadFail> {
        read_frame(&mut self.io, &mut self.framer).await
    }

    /// The socket alone, for the TLS handshake after `<proceed/>` (the framer goes with what
    /// it learned before TLS).
    pub(super) fn into_io(self) -> BoxIo {
        self.io
    }

    pub(super) fn into_connection(self, header: StreamHeader, features: Element, secure: bool) -> Connection {
        let (r, w) = tokio::io::split(self.io);
        Connection {
            header,
            features,
            secure,
            writer: UpstreamWriter { io: w, queued: String::new(), secure },
            reader: UpstreamReader { io: r, framer: self.framer, failed: None },
        }
    }
}

impl UpstreamWriter {
    /// Serialize and write one top-level element (default namespace `jabber:client` in scope).
    pub async fn send(&mut self, el: &Element) -> Result<(), Error> {
        self.write(&el.to_xml(ns::CLIENT)).await
    }

    /// Serialize several top-level elements and write them with one write and one flush, so the
    /// server handles one read event for a batch (a BOSH body with several stanzas).
    pub async fn send_all(&mut self, els: &[Element]) -> Result<(), Error> {
        for el in els {
            self.queue(el);
        }
        self.flush_queued().await
    }

    /// Write already-serialized bytes as they are: a whitespace keepalive (UP-24), or a
    /// fragment the caller has checked. Nothing is validated here.
    pub async fn send_raw(&mut self, s: &str) -> Result<(), Error> {
        self.write(s).await
    }

    /// Write a fresh stream header on the same socket (stream restart after SASL). The reader
    /// then yields the server's new `StreamOpen` and features.
    pub async fn restart(&mut self, params: &OpenParams) -> Result<(), Error> {
        self.write(&client_header(params, self.secure)).await
    }

    /// Write `</stream:stream>` and shut down the write side. The reader stays usable to wait
    /// for the server's own close (RFC 6120 §4.4).
    pub async fn close(&mut self) -> Result<(), Error> {
        self.write(stream_header::CLOSE).await?;
        self.io.shutdown().await.map_err(|e| Error::UpstreamLost(format!("shutdown failed: {e}")))
    }

    /// End the connection *without* `</stream:stream>`, so that the server keeps a XEP-0198
    /// session resumable: the write side is shut down (TCP FIN, after a TLS close_notify when
    /// encrypted), bounded to one second, and the half is dropped. The socket is released once
    /// the reader is dropped as well.
    pub async fn abort(mut self) {
        // Stanzas the client already handed over still go out first (never the stream close).
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_queued()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    /// Accept an element for a later batched write: a transport that has more client messages
    /// ready queues them all and flushes once, so the server gets one read event per batch.
    /// Returns true when the queue is big enough that the caller should flush now.
    pub fn queue(&mut self, el: &Element) -> bool {
        // Empty after every write: one allocation of a typical batch's size, not a doubling
        // from 8 bytes.
        if self.queued.capacity() == 0 {
            self.queued.reserve(1024);
        }
        el.write_xml(&mut self.queued, ns::CLIENT);
        self.queued.len() >= 16 * 1024
    }

    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Write what [`UpstreamWriter::queue`] accepted.
    pub async fn flush_queued(&mut self) -> Result<(), Error> {
        if self.queued.is_empty() {
            return Ok(());
        }
        self.write("").await
    }

    async fn write(&mut self, s: &str) -> Result<(), Error> {
        let lost = |e: std::io::Error| Error::UpstreamLost(format!("write failed: {}", io_detail(&e)));
        // Queued elements go first, in the same write.
        let batch;
        let s = if self.queued.is_empty() {
            s
        } else {
            let mut q = std::mem::take(&mut self.queued);
            q.push_str(s);
            batch = q;
            batch.as_str()
        };
        self.io.write_all(s.as_bytes()).await.map_err(lost)?;
        crate::metrics::metrics().bytes(crate::metrics::Direction::ToUpstream, s.len());
        self.io.flush().await.map_err(lost)
    }
}

impl UpstreamReader {
    /// A frame that is already complete in the buffer, without any IO (`None`: the next one
    /// needs a read). Lets a transport batch what arrived in one read into one response.
    pub fn try_next_buffered(&mut self) -> Option<Result<Frame, Error>> {
        if self.failed.is_some() {
            return None;
        }
        match self.framer.next_frame() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => None,
            Err(e) => Some(Err(self.fail(ReadFail::Xml(e)))),
        }
    }

    /// The next frame from the server. Whitespace keepalives never come out of here. A new
    /// `StreamOpen` arrives after a restart; `<stream:error/>` is an ordinary `Frame::Element`
    /// for the caller to act on. EOF without `</stream:stream>`, a read error or bad XML →
    /// `UpstreamLost`, and every later call says the same. Cancel-safe (fine in `select!`).
    pub async fn next(&mut self) -> Result<Frame, Error> {
        if let Some(why) = &self.failed {
            return Err(Error::UpstreamLost(why.clone()));
        }
        read_frame(&mut self.io, &mut self.framer).await.map_err(|e| self.fail(e))
    }

    /// Remember that the stream is broken (later calls repeat why) and say what it means for
    /// the session.
    fn fail(&mut self, e: ReadFail) -> Error {
        let too_large = matches!(e, ReadFail::Xml(XmlError::TooLarge(_)));
        let why = e.lost();
        self.failed = Some(why.clone());
        if too_large {
            // upstream.max_stanza_bytes in the server-to-client direction: a limit, so the
            // client hears policy-violation, not a connection failure; the server caused it
            // (counted once, as stanza_size, where the session ends: Error::limit).
            return Error::UpstreamTooLarge;
        }
        Error::UpstreamLost(why)
    }
}

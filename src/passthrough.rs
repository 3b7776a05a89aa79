//! XEP-0368 Direct TLS passthrough on the HTTPS port: a native client (Conversations, Gajim,
//! Dino) that offers ALPN `xmpp-client` gets its decrypted RFC 6120 stream relayed to the
//! upstream server like any other session.
//!
//! No new session logic: [`TcpMessages`] frames the client's byte stream (`xml::Framer`, under
//! the client-side XML limits) and hands each frame to the WebSocket session task already
//! classified, as a legacy-framing stream ([`FromClient::Parsed`]: the header is the `<open/>`,
//! `</stream:stream>` the `<close/>`), with no text round trip; the session does the rest —
//! upstream link, feature filtering (no `<starttls/>`, no `-PLUS`), restarts, stream errors,
//! the teardown. What the session sends is written as it is (one element per message, the
//! legacy framing's own header and footer). Pings the session sends are answered locally; TCP
//! has no frames to carry them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};

use crate::state::AppState;
use crate::websocket::message::{Framing, Inbound, OpenRequest};
use crate::websocket::FromClient;
use crate::xml::{Frame, Framer, Limits};

/// Run one passthrough session over `io` (already decrypted).
pub async fn serve<S>(io: S, peer: SocketAddr, state: Arc<AppState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(%peer, "direct TLS passthrough");
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(peer.ip()),
        v4 => v4,
    };
    let _permit = match state.admission.admit(Some(ip)) {
        Ok(p) => p,
        Err(e) => {
            // Counted under the limit that refused it (sessions, per IP, rate), like the other
            // transports; the client gets a policy-violation stream error, not a bare close.
            crate::metrics::metrics().pre_session(crate::metrics::Transport::DirectTls, &e);
            refuse(io, &e).await;
            return;
        }
    };
    let config = state.config();
    let limits = crate::limits::client_xml(&config.limits, config.upstream.max_stanza_bytes);
    let messages = TcpMessages::new(io, limits);
    let tracker = state.tracker.clone();
    tracker.track_future(crate::websocket::run_passthrough(messages, state, Some(peer))).await;
}

/// Answer a refused client with a stream header, the stream error and the closing tag (RFC 6120
/// §4.9.1.1: the error comes after our header, whatever the client sent), bounded in time.
async fn refuse<S: AsyncWrite + Unpin>(mut io: S, err: &crate::Error) {
    use tokio::io::AsyncWriteExt;
    use crate::xml::{element::Quote, stream_error, stream_header};
    let condition = err.stream_condition().unwrap_or("policy-violation");
    let mut text = String::from(stream_header::DECLARATION);
    stream_header::write_open(&mut text, &stream_header::Open { version: Some("1.0"), ..Default::default() }, Quote::Single);
    stream_error::write_error(&mut text, condition, None, stream_error::Scope::InStream, Quote::Single);
    text.push_str(stream_header::CLOSE);
    let write = async {
        io.write_all(text.as_bytes()).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
}

/// A raw XMPP byte stream seen as the client side of a legacy-framing session.
pub struct TcpMessages<S> {
    rd: ReadHalf<S>,
    wr: WriteHalf<S>,
    framer: Framer,
    buf: Vec<u8>,
    /// Bytes read since the last item was handed out (the client rate limit counts them).
    unclaimed: usize,
    /// Items to hand out before reading more (pongs for the session's pings).
    pending: VecDeque<FromClient>,
    out: Vec<u8>,
    reader: Option<Waker>,
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite> TcpMessages<S> {
    pub fn new(io: S, limits: Limits) -> Self {
        let (rd, wr) = tokio::io::split(io);
        TcpMessages {
            rd,
            wr,
            framer: Framer::new(limits),
            buf: vec![0; 4096],
            unclaimed: 0,
            pending: VecDeque::new(),
            out: Vec::new(),
            reader: None,
            eof: false,
        }
    }

    fn parsed(&mut self, inbound: Result<Inbound, crate::Error>) -> FromClient {
        FromClient::Parsed { inbound: Box::new(inbound), bytes: std::mem::take(&mut self.unclaimed) }
    }
}

/// A frame of the client's stream as the session's input: the stream header opens the
/// session's legacy framing, elements are stanzas (or SASL, SM …), the footer closes it.
fn inbound(f: Frame) -> Inbound {
    match f {
        Frame::StreamOpen(h) => Inbound::Open(OpenRequest { to: h.to, from: h.from, version: h.version, lang: h.lang }, Framing::Legacy),
        Frame::Element(el) => Inbound::Element(el),
        Frame::StreamClose => Inbound::Close,
    }
}

impl<S: AsyncRead + AsyncWrite> Stream for TcpMessages<S> {
    type Item = Result<FromClient, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(m) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(m)));
            }
            match this.framer.next_frame() {
                Ok(Some(f)) => return Poll::Ready(Some(Ok(this.parsed(Ok(inbound(f)))))),
                Ok(None) => {}
                // Bad XML or a limit: the session ends with the stream error for it, like on
                // any other transport.
                Err(e) => {
                    this.eof = true;
                    return Poll::Ready(Some(Ok(this.parsed(Err(e.into())))));
                }
            }
            if this.eof {
                return Poll::Ready(None);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    this.unclaimed += n;
                    this.framer.feed(&this.buf[..n]);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(axum::Error::new(e)))),
                Poll::Pending => {
                    this.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite> Sink<Message> for TcpMessages<S> {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Keep at most one batch buffered: flush before taking more (backpressure).
        if self.out.len() > 64 * 1024 {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        match item {
            Message::Text(t) => this.out.extend_from_slice(t.as_str().as_bytes()),
            Message::Ping(p) => {
                this.pending.push_back(FromClient::Message(Message::Pong(p)));
                if let Some(w) = this.reader.take() {
                    w.wake();
                }
            }
            Message::Pong(_) | Message::Close(_) | Message::Binary(_) => {}
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        while !this.out.is_empty() {
            match Pin::new(&mut this.wr).poll_write(cx, &this.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(axum::Error::new(std::io::Error::from(std::io::ErrorKind::WriteZero)))),
                Poll::Ready(Ok(n)) => {
                    this.out.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(axum::Error::new(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut this.wr).poll_flush(cx).map_err(axum::Error::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(&mut self.get_mut().wr).poll_shutdown(cx).map_err(axum::Error::new)
    }
}

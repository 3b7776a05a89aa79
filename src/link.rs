//! The upstream link: one session's XML stream to the server, the same for every transport
//! (BOSH, WebSocket, Direct TLS, legacy polling). It opens the stream ([`Link::open`]),
//! restarts it after SASL ([`Link::restart`]), takes client elements in batches
//! ([`Link::queue`], [`Link::flush`]), yields what the server sends already rewritten by
//! [`relay::from_upstream`] ([`Link::next`]), counts stanzas both ways, notes what changes how
//! the stream may end (SASL success, resumable XEP-0198), and ends it by the one rule of
//! [`Error::teardown`] ([`Link::end`]).
//!
//! What the client sent has already been through [`relay::from_client`] (each transport does
//! that where it parses, so a refusal is answered in its own terms); what the client is shown
//! is the transport's business. Bytes stay in `upstream`.

use std::time::Duration;

use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::task::TaskTracker;

use crate::error::{Error, Teardown};
use crate::metrics::{metrics, Direction};
use crate::relay;
use crate::upstream::{self, OpenParams, Target, UpstreamReader, UpstreamWriter};
use crate::xml::{ns, Element, Frame, StreamHeader};

/// How long a closing stream is given: to take the bounces and `</stream:stream>`, then to
/// answer with its own close (so the last presence is processed before the socket goes).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// One session's open stream to the server.
pub struct Link {
    writer: UpstreamWriter,
    reader: UpstreamReader,
    /// The domain the stream was opened for: restarts keep it, reloads watch it.
    domain: String,
    /// The server said `<success/>`: a stream restart is now expected (XBOSH-13, RFC 6120 §6.4.6).
    sasl_success: bool,
    /// The server enabled resumable XEP-0198 (`<enabled resume/>`, `<resumed/>`).
    resumable: bool,
}

/// The server's answer to the opening: its post-TLS header and first features (filtered by
/// relay, counted as one stanza to the client).
pub struct Opened {
    pub header: StreamHeader,
    pub features: Element,
}

/// What the server sent, for the client.
#[derive(Debug)]
pub enum Event {
    /// A new stream header, after a restart; its features follow as an element.
    Header(StreamHeader),
    /// A top-level element, rewritten by [`relay::from_upstream`].
    Element(Element),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("domain", &self.domain).field("resumable", &self.resumable).finish_non_exhaustive()
    }
}

impl Link {
    /// Resolve, connect, negotiate TLS and open the stream for `params` (to `route` instead
    /// of the domain's servers when one was allow-listed), within `upstream.connect_timeout`.
    /// Connect time and failures are counted by `upstream` itself.
    pub async fn open(up: &upstream::Upstream, params: &OpenParams, route: Option<Target>) -> Result<(Link, Opened), Error> {
        let conn = upstream::connect_via(up, params, route).await?;
        metrics().stanza(Direction::ToClient);
        let link = Link { writer: conn.writer, reader: conn.reader, domain: params.domain.clone(), sasl_success: false, resumable: false };
        Ok((link, Opened { header: conn.header, features: relay::from_upstream(conn.features) }))
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the server would keep this session for an XEP-0198 resumption.
    pub fn resumable(&self) -> bool {
        self.resumable
    }

    /// Restart the stream on the same connection (RFC 6120 §6.4.6): allowed once after each
    /// SASL `<success/>`, for the domain the stream was opened for, whatever the client's new
    /// header says. The server's new header and features come back through [`Link::next`].
    pub async fn restart(&mut self, asked: &OpenParams) -> Result<(), Error> {
        if !std::mem::take(&mut self.sasl_success) {
            return Err(Error::BadRequest("stream restart before SASL success".into()));
        }
        let params = OpenParams { domain: self.domain.clone(), ..asked.clone() };
        self.writer.restart(&params).await
    }

    /// Take a client element for the next [`Link::flush`], so a burst is one write (and one
    /// read event for the server). True when the batch is big enough to flush now.
    pub fn queue(&mut self, el: &Element) -> bool {
        metrics().stanza(Direction::ToUpstream);
        self.writer.queue(el)
    }

    pub fn has_queued(&self) -> bool {
        self.writer.has_queued()
    }

    /// Write what [`Link::queue`] took, in one write.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.writer.flush_queued().await
    }

    /// Queue `els` and write them in one write.
    pub async fn send_all(&mut self, els: &[Element]) -> Result<(), Error> {
        for el in els {
            self.queue(el);
        }
        self.flush().await
    }

    /// The server's next header or element. The end of its stream is an error: `<stream:error/>`
    /// (`UpstreamStreamError`), `</stream:stream>` (`UpstreamClosed`), a broken connection
    /// (`UpstreamLost`, `UpstreamTooLarge`). Cancel-safe.
    pub async fn next(&mut self) -> Result<Event, Error> {
        let frame = self.reader.next().await?;
        self.event(frame)
    }

    /// An event already complete in what was read, without IO (`None`: the next one needs a
    /// read), so a transport can carry everything that arrived together in one answer.
    pub fn try_next_buffered(&mut self) -> Option<Result<Event, Error>> {
        let frame = self.reader.try_next_buffered()?;
        Some(frame.and_then(|f| self.event(f)))
    }

    fn event(&mut self, frame: Frame) -> Result<Event, Error> {
        match frame {
            Frame::StreamOpen(h) => Ok(Event::Header(h)),
            Frame::Element(el) if el.is("error", ns::STREAM) => Err(Error::UpstreamStreamError(Box::new(el))),
            Frame::Element(el) => {
                self.note(&el);
                metrics().stanza(Direction::ToClient);
                Ok(Event::Element(relay::from_upstream(el)))
            }
            Frame::StreamClose => Err(Error::UpstreamClosed),
        }
    }

    /// What an element from the server changes about the stream's end and restarts.
    fn note(&mut self, el: &Element) {
        if el.is("success", ns::SASL) {
            self.sasl_success = true;
        } else if el.is("enabled", ns::SM3) {
            self.resumable = matches!(el.attr("resume"), Some("true" | "1"));
        } else if el.is("resumed", ns::SM3) {
            self.resumable = true;
        }
    }

    /// Write `</stream:stream>` and shut the write side; [`Link::next`] still yields what the
    /// server sends until its own close. For a client's orderly goodbye, which the transport
    /// relays to the end.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.writer.close().await
    }

    /// End the stream because the session ends for `why`, by [`Error::teardown`]. `undelivered`
    /// is what the server sent that the client was never given (bounced by
    /// `BounceThenClose`). A drop or abort is done when this returns (an abort within about
    /// 2 s); a close runs on `tracker`, bounded by `CLOSE_GRACE` twice, so the session ends
    /// now and the drain still waits for it.
    pub async fn end(self, why: &Error, undelivered: &[Element], tracker: &TaskTracker) {
        let Link { mut writer, mut reader, resumable, .. } = self;
        let bounces: Vec<Element> = undelivered.iter().filter_map(relay::bounce).collect();
        match why.teardown(resumable, !bounces.is_empty()) {
            Teardown::Drop => {}
            Teardown::Abort => writer.abort().await,
            Teardown::Close => {
                tracker.spawn(async move {
                    let _ = timeout(CLOSE_GRACE, writer.close()).await;
                });
            }
            Teardown::BounceThenClose => {
                tracker.spawn(async move {
                    let closed = async {
                        for b in &bounces {
                            writer.send(b).await?;
                        }
                        writer.close().await
                    };
                    if !matches!(timeout(CLOSE_GRACE, closed).await, Ok(Ok(()))) {
                        return;
                    }
                    let deadline = Instant::now() + CLOSE_GRACE;
                    while let Ok(Ok(frame)) = timeout_at(deadline, reader.next()).await {
                        if frame == Frame::StreamClose {
                            break;
                        }
                    }
                });
            }
        }
    }
}


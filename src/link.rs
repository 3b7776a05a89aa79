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
    /// gives what the server sent that the client was never given; it is called only for
    /// `BounceThenClose`, the one teardown that bounces it (a BOSH queue is parsed back into
    /// elements for that). A drop or abort is done when this returns (an abort within about
    /// 2 s); a close runs on `tracker`, bounded by `CLOSE_GRACE` twice, so the session ends
    /// now and the drain still waits for it.
    pub async fn end(self, why: &Error, undelivered: impl FnOnce() -> Vec<Element>, tracker: &TaskTracker) {
        let Link { mut writer, mut reader, resumable, .. } = self;
        match why.teardown(resumable) {
            Teardown::Drop => {}
            Teardown::Abort => writer.abort().await,
            Teardown::Close => {
                tracker.spawn(async move {
                    let _ = timeout(CLOSE_GRACE, writer.close()).await;
                });
            }
            Teardown::BounceThenClose => {
                let bounces: Vec<Element> = undelivered().iter().filter_map(relay::bounce).collect();
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


#[cfg(test)]
mod tests {
    //! The link over a scripted fake server (`upstream::tests`' helpers): the restart rule and
    //! each teardown as the server sees it (issue 15 §2, §3; WS-24, BOSH-T-21, XEP-0198).

    use super::*;
    use crate::config::TlsMode;
    use crate::upstream::tests::{fake_opened, params, read_header, read_to_end, result_of, server_header, upstream, write, SASL_FEATURES, STEP};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    /// A link to a fake that opens the stream, then runs `then` on the socket (with what it
    /// read so far) and returns what the script returns.
    async fn linked<F, Fut>(then: F) -> (Link, JoinHandle<String>)
    where
        F: FnOnce(TcpStream, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = String> + Send,
    {
        let (addr, task) = fake_opened(then).await;
        let (link, opened) = Link::open(&upstream(addr, TlsMode::None, None, 5), &params(), None).await.unwrap();
        assert!(opened.features.is("features", ns::STREAM));
        (link, task)
    }

    /// What the fake reads after the open, until the client's side ends.
    async fn rest_of_stream(mut s: TcpStream, mut got: String) -> String {
        let first = got.len();
        let eof = read_to_end(&mut s, &mut got).await;
        format!("EOF:{eof} GOT:{}", &got[first..])
    }

    async fn next(link: &mut Link) -> Result<Event, Error> {
        tokio::time::timeout(STEP, link.next()).await.expect("the link answers in time")
    }

    fn element(xml: &str) -> Element {
        crate::xml::parse_document(xml.as_bytes(), &crate::xml::Limits::default(), &[]).unwrap()
    }

    fn owed() -> Element {
        element("<message xmlns='jabber:client' from='bob@example.test/r' to='alice@example.test/w' id='m1'><body>hi</body></message>")
    }

    async fn end_with(link: Link, why: Error, undelivered: &[Element]) {
        let tracker = TaskTracker::new();
        link.end(&why, || undelivered.to_vec(), &tracker).await;
        tracker.close();
        tokio::time::timeout(STEP, tracker.wait()).await.expect("the teardown is bounded");
    }

    /// XBOSH-13, WS-15: one restart per SASL success, for the domain the stream was opened for.
    #[tokio::test]
    async fn restart_once_after_each_sasl_success_for_the_same_domain() {
        let (mut link, task) = linked(|mut s, mut got| async move {
            write(&mut s, "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>").await;
            let first = got.len();
            if read_header(&mut s, &mut got).await {
                write(&mut s, &format!("{}{SASL_FEATURES}", server_header("s2", "1.0"))).await;
            }
            let _ = read_to_end(&mut s, &mut got).await;
            got[first..].to_string()
        })
        .await;
        // The success has not been read yet: no restart.
        assert!(matches!(link.restart(&params()).await, Err(Error::BadRequest(_))));
        assert!(matches!(next(&mut link).await, Ok(Event::Element(el)) if el.is("success", ns::SASL)));
        let asked = OpenParams { domain: "other.test".into(), lang: "de".into(), ..params() };
        link.restart(&asked).await.unwrap();
        assert!(matches!(next(&mut link).await, Ok(Event::Header(h)) if h.id.as_deref() == Some("s2")));
        assert!(matches!(next(&mut link).await, Ok(Event::Element(el)) if el.is("features", ns::STREAM)));
        assert!(matches!(link.restart(&params()).await, Err(Error::BadRequest(_))), "a second restart without a new success");
        drop(link);
        let got = result_of(task).await;
        assert_eq!(got.matches("<stream:stream").count(), 1, "{got}");
        assert!(got.contains("example.test") && !got.contains("other.test") && got.contains("'de'"), "{got}");
    }

    /// Teardown::BounceThenClose: a client gone with stanzas owed gets them bounced to their
    /// senders, then `</stream:stream>` (XEP-0206 §7, BOSH-T-21).
    #[tokio::test]
    async fn a_gone_client_owed_stanzas_gets_them_bounced_then_the_stream_closed() {
        let (link, task) = linked(rest_of_stream).await;
        end_with(link, Error::ClientGone, &[owed()]).await;
        let got = result_of(task).await;
        assert!(got.starts_with("EOF:true GOT:<message"), "{got}");
        assert!(got.contains("type='error'") && got.contains("recipient-unavailable") && got.contains("to='bob@example.test/r'"), "{got}");
        assert!(got.ends_with("</stream:stream>"), "{got}");
    }

    /// Without resumption a lost client's stream is closed gracefully (BOSH-T-22): nothing
    /// would be kept for it.
    #[tokio::test]
    async fn a_gone_client_without_resumption_gets_the_stream_closed() {
        let (link, task) = linked(rest_of_stream).await;
        end_with(link, Error::ClientGone, &[]).await;
        assert_eq!(result_of(task).await, "EOF:true GOT:</stream:stream>");
    }

    /// Teardown::Abort for a resumable session even when stanzas are owed: the server keeps
    /// them for the resumption (XEP-0198).
    #[tokio::test]
    async fn a_resumable_session_is_dropped_with_nothing_bounced() {
        let (mut link, task) = linked(|mut s, got| async move {
            write(&mut s, "<enabled xmlns='urn:xmpp:sm:3' id='sm1' resume='true' location='10.0.0.1:5222'/>").await;
            rest_of_stream(s, got).await
        })
        .await;
        let Ok(Event::Element(enabled)) = next(&mut link).await else { panic!("enabled") };
        assert_eq!(enabled.attr("location"), None, "relay rewrites what comes back");
        assert!(link.resumable());
        end_with(link, Error::Shutdown, &[owed()]).await;
        assert_eq!(result_of(task).await, "EOF:true GOT:");
    }

    /// Teardown::BounceThenClose for a client's own goodbye: the stream footer, nothing owed.
    #[tokio::test]
    async fn a_client_terminate_closes_the_stream() {
        let (link, task) = linked(rest_of_stream).await;
        end_with(link, Error::ClientTerminate, &[]).await;
        assert_eq!(result_of(task).await, "EOF:true GOT:</stream:stream>");
    }
}

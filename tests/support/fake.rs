//! The scripted fake upstream: a TCP peer on 127.0.0.1 that plays an XMPP server only as far as
//! a test says, for what a real server will not do on demand (slow stream opens, whitespace
//! keepalives, a stream error at a chosen moment, a clean close, a reset, silence). It never
//! replaces a real server (Real peers rule): it covers faults and timing.
//!
//! A connection is driven either by the test ([`FakeUpstream::start`] + [`FakeUpstream::accept`])
//! or by a script run on every accepted connection ([`FakeUpstream::scripted`]). The script is
//! a small DSL on [`FakeConn`]: `expect` (read until), `send`, `open` (header + features),
//! `until_eof` (hold, recording), or drop it (close). Everything xmpp-cm writes is recorded, per
//! connection and for the whole fake. No TLS: xmpp-cm runs with `upstream.tls = "none"`.
//! Every wait is bounded ([`WAIT`]), also under a paused tokio clock (tests/inproc.rs).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{free_port, Upstream};

/// The domain the fake serves.
pub const DOMAIN: &str = "fake.test";
/// The stream header it answers with (id `fake-id-1`).
pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='fake.test' id='fake-id-1' version='1.0' xml:lang='en'>";
/// Its features: SASL PLAIN plus what xmpp-cm must filter out (a `-PLUS` mechanism, compression).
pub const FEATURES: &str = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism></mechanisms><compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression></stream:features>";
/// Bound of every single wait for bytes from xmpp-cm.
pub const WAIT: Duration = Duration::from_secs(10);

type Log = Arc<Mutex<Vec<u8>>>;

/// A fake upstream listening on 127.0.0.1 (or, [`Self::dead`], nothing listening at all).
pub struct FakeUpstream {
    port: u16,
    /// Connections handed to the test ([`Self::start`] only).
    conns: Option<mpsc::UnboundedReceiver<FakeConn>>,
    /// Everything received on every connection, in arrival order.
    all: Log,
}

impl Upstream for FakeUpstream {
    fn domain(&self) -> &str {
        DOMAIN
    }
    fn c2s_port(&self) -> u16 {
        self.port
    }
    fn ca_file(&self) -> &std::path::Path {
        std::path::Path::new("")
    }
}

impl FakeUpstream {
    /// Nothing listens on the port: every connect is refused.
    pub fn dead() -> FakeUpstream {
        FakeUpstream { port: free_port(), conns: None, all: Log::default() }
    }

    /// Accept connections and hand each to the test through [`Self::accept`].
    pub async fn start() -> FakeUpstream {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut fake = Self::listen(move |conn| {
            let _ = tx.send(conn);
            async {}
        })
        .await;
        fake.conns = Some(rx);
        fake
    }

    /// Run `script` on every accepted connection.
    pub async fn scripted<F, Fut>(script: F) -> FakeUpstream
    where
        F: Fn(FakeConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::listen(script).await
    }

    /// Open every stream ([`FakeConn::open`]), then only listen, recording (at most 60 s).
    pub async fn opening() -> FakeUpstream {
        Self::scripted(|mut c| async move {
            c.open().await;
            c.until_eof(Duration::from_secs(60)).await;
        })
        .await
    }

    /// Accept and never say a word (a server that hangs after TCP).
    pub async fn silent() -> FakeUpstream {
        Self::scripted(|c| async move {
            c.until_eof(Duration::from_secs(3600)).await;
        })
        .await
    }

    async fn listen<F, Fut>(on_conn: F) -> FakeUpstream
    where
        F: Fn(FakeConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("fake upstream: bind");
        let port = listener.local_addr().expect("fake upstream: address").port();
        let all = Log::default();
        let log = all.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn = FakeConn { sock, seen: Vec::new(), all: log.clone() };
                tokio::spawn(on_conn(conn));
            }
        });
        FakeUpstream { port, conns: None, all }
    }

    /// The next connection xmpp-cm opens (within [`WAIT`]); only after [`Self::start`].
    pub async fn accept(&mut self) -> FakeConn {
        let rx = self.conns.as_mut().expect("FakeUpstream::accept needs FakeUpstream::start");
        tokio::time::timeout(WAIT, rx.recv()).await.expect("fake upstream: no connection").expect("fake upstream: listener gone")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything received so far, on every connection.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.all.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// An xmpp-cm config (as [`super::XmppCm::config_with`]) routing [`DOMAIN`] here in
    /// plaintext, with `extra` keys replaced or added.
    pub fn config(&self, extra: &[(&str, &str)]) -> String {
        let mut o: Vec<(&str, &str)> = vec![("upstream.tls", "\"none\""), ("upstream.ca_file", "\"\"")];
        o.extend_from_slice(extra);
        super::XmppCm::config_with(self, &o)
    }
}

/// One connection from xmpp-cm, as the test or script sees it.
pub struct FakeConn {
    sock: TcpStream,
    /// Received on this connection.
    seen: Vec<u8>,
    all: Log,
}

impl FakeConn {
    /// One read within `within`: `Some(n)` bytes (0 at EOF or error), `None` on timeout.
    async fn read_some(&mut self, within: Duration) -> Option<usize> {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(within, self.sock.read(&mut buf)).await {
            Err(_) => None,
            Ok(Err(_)) => Some(0),
            Ok(Ok(n)) => {
                self.seen.extend_from_slice(&buf[..n]);
                self.all.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
                Some(n)
            }
        }
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.seen).matches(needle).count()
    }

    /// Read until `needle` has arrived `n` times on this connection; false at EOF. Panics
    /// after [`WAIT`] without a byte.
    pub async fn wait_for_n(&mut self, needle: &str, n: usize) -> bool {
        while self.count(needle) < n {
            match self.read_some(WAIT).await {
                None => panic!("fake upstream: timed out waiting for {needle:?}; got {:?}", self.seen()),
                Some(0) => return false,
                Some(_) => {}
            }
        }
        true
    }

    /// [`Self::wait_for_n`] once.
    pub async fn wait_for(&mut self, needle: &str) -> bool {
        self.wait_for_n(needle, 1).await
    }

    /// Read until `needle` (the `n`-th time); panics at EOF or timeout.
    pub async fn expect_n(&mut self, needle: &str, n: usize) {
        assert!(self.wait_for_n(needle, n).await, "fake upstream: EOF before {needle:?} x{n}; got {:?}", self.seen());
    }

    /// Read until `needle`; panics at EOF or timeout.
    pub async fn expect(&mut self, needle: &str) {
        self.expect_n(needle, 1).await
    }

    pub async fn send(&mut self, s: &str) {
        self.sock.write_all(s.as_bytes()).await.expect("fake upstream: write");
    }

    /// Answer the stream header xmpp-cm sends: [`HEADER`] and [`FEATURES`].
    pub async fn open(&mut self) {
        self.expect("<stream:stream").await;
        self.expect(">").await;
        self.send(HEADER).await;
        self.send(FEATURES).await;
    }

    /// Hold the connection, recording, until EOF; true if EOF came within `within`.
    pub async fn until_eof(mut self, within: Duration) -> bool {
        self.wait_eof(within).await
    }

    /// [`Self::until_eof`] keeping the connection (to look at [`Self::seen`] after).
    pub async fn wait_eof(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_some(left).await {
                None => return false,
                Some(0) => return true,
                Some(_) => {}
            }
        }
    }

    /// Received on this connection so far.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

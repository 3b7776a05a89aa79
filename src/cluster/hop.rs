//! The internal hop between replicas: a forwarded BOSH request goes to its owner, and the
//! owner's answer comes back, over one multiplexed TCP connection per owner.
//!
//! Why not HTTP/2: hyper's client and server run each connection in a task of its own, so a
//! forwarded request crossed four task hand-offs and two or three writes per direction (the
//! HEADERS and DATA frames of a request leave in separate writes), and the cluster benchmark
//! measured +0.43 ms and ~200 µs of CPU per forward. Here the task that has something to send
//! writes it itself, in one write, and only the answer crosses one hand-off (the connection's
//! reader to the waiting request).
//!
//! The protocol (integers big-endian):
//! - Handshake. Client: `XCMHOP1\n`, a 16-byte nonce `nc`, its advertised address (u8 length +
//!   text), and HMAC(`hello` ‖ nc ‖ address). The owner checks it (a wrong key, or anything
//!   that is not a replica, is closed: `hop_auth`) and answers a fresh 16-byte nonce `ns` and
//!   HMAC(`welcome` ‖ nc ‖ ns), which the client checks in turn.
//! - Frames: u32 length, then kind (u8: 1 request, 2 answer, 3 ping, 4 pong), stream id (u32),
//!   the fields of the kind, and a 32-byte HMAC over nc ‖ ns ‖ direction ‖ the frame's number in
//!   its direction ‖ the frame. A request carries the original client's address (u8 length +
//!   text) and the client's BOSH body; an answer the HTTP status (u16), the Content-Type (u8
//!   length + text) and the body. A frame that does not verify closes the connection and is
//!   never acted on; the implicit numbering means a frame cannot be replayed or reordered, and
//!   a recorded handshake is worth nothing (`ns` is new every time).
//! - HMAC-SHA256 under a key derived from the cluster secret (never the secret itself).
//!
//! Liveness: a new connection counts as up once the handshake completed, within
//! `cluster.connect_timeout_ms`, so a dead or black-holed owner is `item-not-found` in that
//! time. While requests are in flight the client pings after [`PING_EVERY`] of silence and
//! drops the connection when the next period passes without a frame (an owner whose host
//! vanished without a reset); every request waiting on it is then `lost`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ring::hmac;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const MAGIC: &[u8; 8] = b"XCMHOP1\n";
const NONCE: usize = 16;
const MAC: usize = 32;
const REQUEST: u8 = 1;
const ANSWER: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
/// Direction bytes in the frame MAC.
const TO_OWNER: u8 = b'>';
const TO_PEER: u8 = b'<';
/// Largest answer frame a client accepts (BOSH answers carry queued stanzas).
const MAX_ANSWER: usize = 16 << 20;
/// Silence (with requests in flight) after which the client pings, and then gives up.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a frame may take to leave before the owner is given up (it reads nothing).
const WRITE_STALL: Duration = Duration::from_secs(3);
/// Largest request frame an owner accepts. Fixed, not `bosh.max_body_bytes` (which a reload can
/// change, and peers in a rolling update may differ on): the body's own limit is applied when
/// it is parsed, as an answer, instead of dropping every request on the connection.
pub const MAX_REQUEST: usize = 16 << 20;
/// How long the owner waits for a peer's handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// The owner's answer to a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// A forwarded request, as the owner's handler gets it (already authenticated).
#[derive(Debug)]
pub struct Forwarded {
    /// The replica it came through.
    pub peer: Option<SocketAddr>,
    /// The original client.
    pub client: Option<SocketAddr>,
    pub body: Bytes,
}

/// Why a forward failed (the `result` label of `xmpp_cm_cluster_forwards_total`).
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// No connection within the connect timeout (refused, unreachable, silent).
    #[error("owner unreachable: {0}")]
    Connect(String),
    /// The connection broke, or no answer came in time, after the request left.
    #[error("owner lost: {0}")]
    Lost(String),
    /// The owner did not accept the handshake (another cluster key, or not a replica).
    #[error("owner refused the hop: {0}")]
    Refused(String),
}

impl HopError {
    /// Every value of the `result` label, `ok` included.
    pub const RESULTS: [&'static str; 4] = ["ok", "connect_failed", "lost", "refused"];

    pub fn result(&self) -> &'static str {
        match self {
            HopError::Connect(_) => "connect_failed",
            HopError::Lost(_) => "lost",
            HopError::Refused(_) => "refused",
        }
    }
}

/// The hop's key, this replica's address, and the pooled connections to owners.
pub struct Hop {
    key: hmac::Key,
    me: SocketAddr,
    connect_timeout: Duration,
    /// How long a forwarded request may wait for its answer, in ms (`bosh.max_wait` + a margin;
    /// follows reloads: [`Hop::set_answer_within`]).
    answer_within: std::sync::atomic::AtomicU64,
    pool: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Peers dialled or heard from, for `xmpp_cm_cluster_peers_seen` (noted once per
    /// connection, not per request).
    seen: Mutex<std::collections::HashSet<SocketAddr>>,
}

/// Most distinct peers remembered for the peers-seen gauge (a bound, not a feature).
const MAX_SEEN: usize = 4096;

/// One owner's connection. Dialling holds the slot's lock, so the requests that arrive
/// meanwhile wait for that one dial instead of each opening their own; after a failed dial
/// they fail at once for a connect timeout (an owner that is gone costs each client request
/// nothing more than the first one's wait).
#[derive(Default)]
struct Slot {
    conn: Option<Arc<Conn>>,
    failed: Option<(tokio::time::Instant, String)>,
}

/// The MAC state of one direction of one connection.
struct Sealer {
    key: hmac::Key,
    salt: [u8; 2 * NONCE],
    dir: u8,
    n: u64,
}

impl Sealer {
    fn mac(&mut self, frame: &[u8]) -> hmac::Tag {
        let mut c = hmac::Context::with_key(&self.key);
        c.update(&self.salt);
        c.update(&[self.dir]);
        c.update(&self.n.to_be_bytes());
        c.update(frame);
        self.n += 1;
        c.sign()
    }

    /// `len ‖ frame ‖ mac`, ready for one write.
    fn seal(&mut self, frame: Vec<u8>) -> Vec<u8> {
        let tag = self.mac(&frame);
        let mut out = Vec::with_capacity(4 + frame.len() + MAC);
        out.extend_from_slice(&((frame.len() + MAC) as u32).to_be_bytes());
        out.extend_from_slice(&frame);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The frame of `framed` (len already stripped) if its MAC verifies.
    fn open<'a>(&mut self, framed: &'a [u8]) -> Option<&'a [u8]> {
        let (frame, tag) = framed.split_at(framed.len().checked_sub(MAC)?);
        let want = self.mac(frame);
        // Compared in constant time (no early exit on the first differing byte).
        let diff = want.as_ref().iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        (diff == 0 && tag.len() == MAC).then_some(frame)
    }
}

/// The reading side of a connection: length-prefixed frames, verified. Cancel-safe: a partial
/// frame stays in `buf` for the next call, whoever makes it.
struct FrameReader {
    rd: OwnedReadHalf,
    buf: bytes::BytesMut,
    open: Sealer,
    max: usize,
}

enum ReadError {
    Io(std::io::Error),
    /// A frame whose MAC does not verify (never acted on).
    Forged,
}

impl FrameReader {
    fn new(rd: BufReader<OwnedReadHalf>, open: Sealer, max: usize) -> FrameReader {
        // Bytes the handshake's buffered reader already holds belong to the first frames.
        let buf = bytes::BytesMut::from(rd.buffer());
        FrameReader { rd: rd.into_inner(), buf, open, max }
    }

    async fn next(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap_or_default()) as usize;
                if !(5 + MAC..=self.max + MAC).contains(&len) {
                    return Err(ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("hop frame of {len} bytes"))));
                }
                if self.buf.len() >= 4 + len {
                    let framed = self.buf.split_to(4 + len);
                    return self.open.open(&framed[4..]).map(<[u8]>::to_vec).ok_or(ReadError::Forged);
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

/// A client connection to one owner. No task of its own: a request waiting for its answer
/// reads the connection itself (one at a time, under `reader`), hands other requests' answers
/// to them, and returns as soon as its own arrives — so in the common case the answer wakes
/// only the task that waits for it.
struct Conn {
    writer: Arc<tokio::sync::Mutex<(OwnedWriteHalf, Sealer)>>,
    reader: tokio::sync::Mutex<FrameReader>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Answer>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    owner: SocketAddr,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders tells every waiting request.
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }

    /// Seal and write one frame, waiting for the writer at most until `deadline`.
    async fn send(self: &Arc<Self>, frame: Vec<u8>, deadline: tokio::time::Instant) -> std::io::Result<()> {
        let w = tokio::time::timeout_at(deadline, self.writer.clone().lock_owned())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection's writer is stuck"))?;
        self.write_frame(w, frame)
    }

    /// A ping, only if the writer is free: a frame still being written is a sign of life
    /// enough, and a writer stuck behind an owner that stopped reading must not hold the reader.
    fn try_ping(self: &Arc<Self>) -> std::io::Result<()> {
        let Ok(w) = self.writer.clone().try_lock_owned() else { return Ok(()) };
        let mut ping = vec![PING];
        ping.extend_from_slice(&0u32.to_be_bytes());
        self.write_frame(w, ping)
    }

    /// A frame is never left half-written: the request that sends it may be cancelled (its
    /// client went away) at any await, so what the socket does not take at once is written by
    /// a task of its own, which keeps the writer (and so the frames' order and numbering) until
    /// it is done, or for [`WRITE_STALL`] at most: an owner that takes nothing for that long is
    /// given up (the connection is closed, every request on it is `lost`).
    fn write_frame(self: &Arc<Self>, mut w: tokio::sync::OwnedMutexGuard<(OwnedWriteHalf, Sealer)>, frame: Vec<u8>) -> std::io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed"));
        }
        let (half, sealer) = &mut *w;
        let out = sealer.seal(frame);
        let done = match half.try_write(&out) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                self.close();
                return Err(e);
            }
        };
        if done < out.len() {
            let conn = self.clone();
            tokio::spawn(async move {
                let (half, _) = &mut *w;
                if !matches!(tokio::time::timeout(WRITE_STALL, half.write_all(&out[done..])).await, Ok(Ok(()))) {
                    tracing::info!(owner = %conn.owner, "cluster hop: the owner takes nothing we write; connection dropped");
                    conn.close();
                    let _ = half.shutdown().await;
                }
            });
        }
        Ok(())
    }
}

/// Removes a request's entry from `pending` however its wait ends (answered, timed out, or
/// cancelled because its client went away).
struct PendingEntry<'a> {
    conn: &'a Conn,
    id: u32,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.conn.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl Hop {
    pub fn new(secret: &[u8], me: SocketAddr, connect_timeout: Duration, answer_within: Duration) -> Hop {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &super::derive(secret, b"xmpp-cm hop v2"));
        let answer_within = std::sync::atomic::AtomicU64::new(answer_within.as_millis() as u64);
        Hop { key, me, connect_timeout, answer_within, pool: Mutex::new(HashMap::new()), seen: Mutex::default() }
    }

    fn saw(&self, peer: SocketAddr) {
        let Ok(mut seen) = self.seen.lock() else { return };
        if seen.len() < MAX_SEEN && seen.insert(peer) {
            crate::metrics::metrics().cluster_peers_seen(seen.len());
        }
    }

    /// A reload changed `bosh.max_wait`: forwarded requests wait this long from now on.
    pub fn set_answer_within(&self, d: Duration) {
        self.answer_within.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn answer_within(&self) -> Duration {
        Duration::from_millis(self.answer_within.load(Ordering::Relaxed))
    }

    /// Send a client's BOSH body to its owner and wait for the answer.
    pub async fn forward(&self, owner: SocketAddr, body: &[u8], client: Option<SocketAddr>) -> Result<Answer, HopError> {
        let (conn, fresh) = self.conn(owner).await?;
        match self.exchange(&conn, body, client).await {
            // A pooled connection that died meanwhile (the owner restarted, an idle reset):
            // dial once more. Repeating the request is safe: BOSH answers a repeated rid from
            // its cache and never writes its payload twice.
            Err(HopError::Lost(_)) if !fresh && conn.closed.load(Ordering::Acquire) => {
                let (conn, _) = self.conn(owner).await?;
                self.exchange(&conn, body, client).await
            }
            r => r,
        }
    }

    async fn exchange(&self, conn: &Arc<Conn>, body: &[u8], client: Option<SocketAddr>) -> Result<Answer, HopError> {
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(id, tx);
        }
        let _entry = PendingEntry { conn, id };
        let within = self.answer_within();
        let deadline = tokio::time::Instant::now() + within;
        if conn.closed.load(Ordering::Acquire) {
            return Err(HopError::Lost("connection closed".into()));
        }
        let client = client.map(|c| c.to_string()).unwrap_or_default();
        let mut frame = Vec::with_capacity(8 + client.len() + body.len());
        frame.push(REQUEST);
        frame.extend_from_slice(&id.to_be_bytes());
        push_short(&mut frame, &client);
        frame.extend_from_slice(body);
        if let Err(e) = conn.send(frame, deadline).await {
            conn.close();
            return Err(HopError::Lost(e.to_string()));
        }
        let mut rx = rx;
        let res = tokio::select! {
            biased;
            r = &mut rx => r.map_err(|_| HopError::Lost("connection closed before the answer".into())),
            rd = conn.reader.lock() => {
                let mut rd = rd;
                read_until_mine(conn, &mut rd, id, &mut rx, deadline).await
            }
            _ = tokio::time::sleep_until(deadline) => Err(HopError::Lost(format!("no answer within {within:?}"))),
        };
        res
    }

    /// A live connection to `owner` (pooled, or dialled now: `true`).
    async fn conn(&self, owner: SocketAddr) -> Result<(Arc<Conn>, bool), HopError> {
        let slot = match self.pool.lock() {
            Ok(mut p) => p.entry(owner).or_default().clone(),
            Err(_) => return Err(HopError::Connect("connection pool poisoned".into())),
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.conn.as_ref().filter(|c| !c.closed.load(Ordering::Acquire)) {
            return Ok((c.clone(), false));
        }
        slot.conn = None;
        if let Some((at, why)) = &slot.failed {
            if at.elapsed() < self.connect_timeout {
                return Err(HopError::Connect(format!("{why} (dialled {:?} ago)", at.elapsed())));
            }
        }
        let res = match tokio::time::timeout(self.connect_timeout, self.dial(owner)).await {
            Ok(r) => r,
            Err(_) => Err(HopError::Connect(format!("no handshake within {:?}", self.connect_timeout))),
        };
        match res {
            Ok(conn) => {
                self.saw(owner);
                slot.failed = None;
                slot.conn = Some(conn.clone());
                Ok((conn, true))
            }
            Err(e) => {
                slot.failed = Some((tokio::time::Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// TCP and the handshake; then the connection's reader runs in its own task.
    async fn dial(&self, owner: SocketAddr) -> Result<Arc<Conn>, HopError> {
        let tcp = TcpStream::connect(owner).await.map_err(|e| HopError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (rd, mut wr) = tcp.into_split();
        let mut rd = BufReader::new(rd);
        let nc = nonce();
        let me = self.me.to_string();
        let mut hello = Vec::with_capacity(64);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&nc);
        push_short(&mut hello, &me);
        let tag = hmac::sign(&self.key, &[b"hello".as_slice(), &nc, me.as_bytes()].concat());
        hello.extend_from_slice(tag.as_ref());
        wr.write_all(&hello).await.map_err(|e| HopError::Connect(e.to_string()))?;
        let mut welcome = [0u8; NONCE + MAC];
        rd.read_exact(&mut welcome).await.map_err(|e| HopError::Refused(format!("no welcome: {e}")))?;
        let (ns, tag) = welcome.split_at(NONCE);
        hmac::verify(&self.key, &[b"welcome".as_slice(), &nc, ns].concat(), tag).map_err(|_| HopError::Refused("the owner's welcome does not verify (another cluster key)".into()))?;
        let salt = salt(&nc, ns);
        let open = Sealer { key: self.key.clone(), salt, dir: TO_PEER, n: 0 };
        Ok(Arc::new(Conn {
            writer: Arc::new(tokio::sync::Mutex::new((wr, Sealer { key: self.key.clone(), salt, dir: TO_OWNER, n: 0 }))),
            reader: tokio::sync::Mutex::new(FrameReader::new(rd, open, MAX_ANSWER)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            owner,
        }))
    }
}

/// Read the connection for every waiting request until request `mine`'s answer arrives (or
/// was handed over by an earlier reader: `rx`), the deadline passes, or the connection dies.
/// While requests are in flight, silence for [`PING_EVERY`] sends a ping, and a second period
/// without any frame drops the connection.
async fn read_until_mine(
    conn: &Arc<Conn>,
    rd: &mut FrameReader,
    mine: u32,
    rx: &mut oneshot::Receiver<Answer>,
    deadline: tokio::time::Instant,
) -> Result<Answer, HopError> {
    let owner = conn.owner;
    let mut pinged = false;
    loop {
        if let Ok(a) = rx.try_recv() {
            return Ok(a);
        }
        if conn.closed.load(Ordering::Acquire) {
            return Err(HopError::Lost("connection closed before the answer".into()));
        }
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).min(PING_EVERY);
        if wait.is_zero() {
            return Err(HopError::Lost("no answer in time".into()));
        }
        let frame = match tokio::time::timeout(wait, rd.next()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                match e {
                    ReadError::Forged => tracing::warn!(%owner, "cluster hop: a frame from the owner does not verify; connection dropped"),
                    ReadError::Io(e) => tracing::debug!(%owner, error = %e, "cluster hop connection ended"),
                }
                conn.close();
                return Err(HopError::Lost("connection to the owner broke".into()));
            }
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(HopError::Lost("no answer in time".into())),
            Err(_) if pinged => {
                tracing::info!(%owner, "cluster hop: the owner answers nothing, not even a ping; connection dropped");
                conn.close();
                return Err(HopError::Lost("the owner answers nothing, not even a ping".into()));
            }
            Err(_) => {
                pinged = true;
                if conn.try_ping().is_err() {
                    return Err(HopError::Lost("connection to the owner broke".into()));
                }
                continue;
            }
        };
        pinged = false;
        if frame.len() < 5 {
            conn.close();
            return Err(HopError::Lost("malformed frame".into()));
        }
        let id = u32::from_be_bytes(frame[1..5].try_into().unwrap_or_default());
        match frame[0] {
            ANSWER => {
                let Some(a) = parse_answer(&frame[5..]) else {
                    conn.close();
                    return Err(HopError::Lost("malformed answer".into()));
                };
                if id == mine {
                    return Ok(a);
                }
                let waiting = conn.pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(tx) = waiting {
                    let _ = tx.send(a);
                }
            }
            PONG => {}
            _ => {
                conn.close();
                return Err(HopError::Lost("unexpected frame".into()));
            }
        }
    }
}

fn parse_answer(b: &[u8]) -> Option<Answer> {
    let status = u16::from_be_bytes(b.get(..2)?.try_into().ok()?);
    let (ct, body) = take_short(b.get(2..)?)?;
    Some(Answer { status, content_type: ct.to_string(), body: Bytes::copy_from_slice(body) })
}

/// Serve one peer's connection on the internal listener until it ends or `stop`: the
/// handshake, then every request to `handler` in a task of its own (held requests wait in
/// parallel), each answer written by that task. `refused` is called when the peer fails the
/// handshake or sends a frame that does not verify (the connection is then closed).
pub async fn serve<H, F>(hop: Arc<Hop>, tcp: TcpStream, max_request: usize, handler: H, refused: impl Fn(), stop: tokio_util::sync::CancellationToken)
where
    H: Fn(Forwarded) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    let _ = tcp.set_nodelay(true);
    let (rd, mut wr) = tcp.into_split();
    let mut rd = BufReader::new(rd);
    let hello = tokio::time::timeout(HANDSHAKE_WAIT, async {
        // A connection closed before its first byte is a port probe (a TCP health check), not
        // a failed authentication.
        match tokio::io::AsyncBufReadExt::fill_buf(&mut rd).await {
            Ok([]) | Err(_) => None,
            Ok(_) => Some(read_hello(&hop.key, &mut rd).await),
        }
    })
    .await;
    let (nc, peer) = match hello {
        Ok(None) => return,
        Ok(Some(Some(h))) => h,
        Ok(Some(None)) | Err(_) => {
            refused();
            return;
        }
    };
    let ns = nonce();
    let tag = hmac::sign(&hop.key, &[b"welcome".as_slice(), &nc, &ns].concat());
    if wr.write_all(&[ns.as_slice(), tag.as_ref()].concat()).await.is_err() {
        return;
    }
    let salt = salt(&nc, &ns);
    let mut seal = Sealer { key: hop.key.clone(), salt, dir: TO_PEER, n: 0 };
    let mut reader = FrameReader::new(rd, Sealer { key: hop.key.clone(), salt, dir: TO_OWNER, n: 0 }, max_request + 1024);
    let peer_addr = peer.parse().ok();
    if let Some(p) = peer_addr {
        hop.saw(p);
    }
    // The requests of this connection run here, not in tasks of their own: an answer wakes
    // this task, which writes it (as the HTTP/1.1 loop does for a client's own request).
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    loop {
        let out = tokio::select! {
            r = reader.next() => {
                let frame = match r {
                    Ok(f) => f,
                    Err(ReadError::Forged) => {
                        refused();
                        tracing::warn!(peer = %peer, "cluster hop: a frame that does not verify; connection closed");
                        return;
                    }
                    Err(ReadError::Io(_)) => return,
                };
                if frame.len() < 5 {
                    return;
                }
                let id: [u8; 4] = frame[1..5].try_into().unwrap_or_default();
                match frame[0] {
                    REQUEST => {
                        let Some((client, body)) = take_short(&frame[5..]) else { return };
                        let req = Forwarded { peer: peer_addr, client: client.parse().ok(), body: Bytes::copy_from_slice(body) };
                        let handler = handler.clone();
                        inflight.push(async move { (id, handler(req).await) });
                        continue;
                    }
                    PING => {
                        let mut f = vec![PONG];
                        f.extend_from_slice(&id);
                        f
                    }
                    _ => return,
                }
            }
            Some((id, a)) = futures_util::StreamExt::next(&mut inflight), if !inflight.is_empty() => {
                let mut f = Vec::with_capacity(8 + a.content_type.len() + a.body.len());
                f.push(ANSWER);
                f.extend_from_slice(&id);
                f.extend_from_slice(&a.status.to_be_bytes());
                push_short(&mut f, &a.content_type);
                f.extend_from_slice(&a.body);
                f
            }
            _ = stop.cancelled() => return,
        };
        if wr.write_all(&seal.seal(out)).await.is_err() {
            return;
        }
    }
}

/// The client's handshake, if it verifies: (its nonce, its advertised address).
async fn read_hello(key: &hmac::Key, rd: &mut BufReader<OwnedReadHalf>) -> Option<([u8; NONCE], String)> {
    let mut head = [0u8; 8 + NONCE + 1];
    rd.read_exact(&mut head).await.ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let nc: [u8; NONCE] = head[8..8 + NONCE].try_into().ok()?;
    let mut rest = vec![0u8; usize::from(head[8 + NONCE]) + MAC];
    rd.read_exact(&mut rest).await.ok()?;
    let (peer, tag) = rest.split_at(rest.len() - MAC);
    hmac::verify(key, &[b"hello".as_slice(), &nc, peer].concat(), tag).ok()?;
    Some((nc, String::from_utf8(peer.to_vec()).ok()?))
}

fn push_short(out: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(255)];
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn take_short(b: &[u8]) -> Option<(&str, &[u8])> {
    let n = usize::from(*b.first()?);
    let s = std::str::from_utf8(b.get(1..1 + n)?).ok()?;
    Some((s, &b[1 + n..]))
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    getrandom::getrandom(&mut n).expect("the OS random source is unavailable");
    n
}

fn salt(nc: &[u8], ns: &[u8]) -> [u8; 2 * NONCE] {
    let mut s = [0u8; 2 * NONCE];
    s[..NONCE].copy_from_slice(nc);
    s[NONCE..].copy_from_slice(ns);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hop(key: &[u8]) -> Arc<Hop> {
        Arc::new(Hop::new(key, "127.0.0.1:1".parse().unwrap(), Duration::from_millis(500), Duration::from_secs(5)))
    }

    /// An owner on port 0 whose handler echoes the body and counts calls; returns (address,
    /// handler calls, refusals).
    async fn owner(key: &[u8]) -> (SocketAddr, Arc<AtomicU32>, Arc<AtomicU32>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (calls, refusals) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (c, r, h) = (calls.clone(), refusals.clone(), hop(key));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (c, r) = (c.clone(), r.clone());
                let handler = move |f: Forwarded| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async move {
                        // A "held" request: answered later than the next one.
                        if f.body.as_ref() == b"slow" {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        // Big bodies are answered with their length only.
                        let body = if f.body.len() > 1 << 20 { f.body.len().to_string().into_bytes().into() } else { f.body.clone() };
                        Answer { status: 200, content_type: "text/xml".into(), body: [f.client.map(|c| c.to_string()).unwrap_or_default().as_bytes(), b"|", &body].concat().into() }
                    }
                };
                let refused = move || {
                    r.fetch_add(1, Ordering::SeqCst);
                };
                tokio::spawn(serve(h.clone(), tcp, 64 << 20, handler, refused, tokio_util::sync::CancellationToken::new()));
            }
        });
        (addr, calls, refusals)
    }

    #[tokio::test]
    async fn requests_multiplex_and_answers_find_their_request() {
        let (addr, calls, _) = owner(KEY).await;
        let h = hop(KEY);
        let client: SocketAddr = "203.0.113.7:4444".parse().unwrap();
        let (slow, fast) = tokio::join!(h.forward(addr, b"slow", Some(client)), h.forward(addr, b"fast", None));
        assert_eq!(slow.unwrap().body.as_ref(), b"203.0.113.7:4444|slow");
        assert_eq!(fast.unwrap().body.as_ref(), b"|fast");
        for i in 0..50u32 {
            let a = h.forward(addr, i.to_string().as_bytes(), None).await.unwrap();
            assert_eq!(a.body, Bytes::from(format!("|{i}")));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 52);
        assert_eq!(h.pool.lock().unwrap().len(), 1, "one connection per owner");
    }

    /// A frame larger than the socket takes at once is finished by a task of its own, in order,
    /// even when the request that sent it is cancelled meanwhile.
    #[tokio::test]
    async fn big_frames_are_written_whole_even_when_their_request_is_cancelled() {
        let (addr, _, refusals) = owner(KEY).await;
        let h = hop(KEY);
        let big = vec![b'x'; 48 << 20];
        assert_eq!(h.forward(addr, b"first", None).await.unwrap().body.as_ref(), b"|first");
        // Cancelled right after its first poll, on the connection already up: the socket takes
        // only part of 48 MiB at once.
        let _ = tokio::time::timeout(Duration::from_micros(1), h.forward(addr, &big, None)).await;
        let a = h.forward(addr, &big, None).await.unwrap();
        assert_eq!(a.body, Bytes::from(format!("|{}", big.len())));
        assert_eq!(h.forward(addr, b"small", None).await.unwrap().body.as_ref(), b"|small");
        assert_eq!(refusals.load(Ordering::SeqCst), 0, "a frame was cut");
    }

    /// An owner that completes the handshake and then reads nothing (a wedged process, a host
    /// gone without a reset): forwards to it fail within a few seconds, big or small, instead
    /// of waiting for TCP to give up.
    #[tokio::test]
    async fn an_owner_that_stops_reading_is_given_up() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let key = hop(KEY).key.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = l.accept().await {
                let (rd, mut wr) = tcp.into_split();
                let mut rd = BufReader::new(rd);
                let Some((nc, _)) = read_hello(&key, &mut rd).await else { continue };
                let ns = nonce();
                let tag = hmac::sign(&key, &[b"welcome".as_slice(), &nc, &ns].concat());
                wr.write_all(&[ns.as_slice(), tag.as_ref()].concat()).await.unwrap();
                held.push((rd, wr)); // never read again
            }
        });
        let h = hop(KEY);
        let t0 = std::time::Instant::now();
        let big = vec![b'x'; 32 << 20];
        let e = h.forward(addr, &big, None).await.unwrap_err();
        assert_eq!(e.result(), "lost", "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "big: {:?}", t0.elapsed());
        let t0 = std::time::Instant::now();
        let e = h.forward(addr, b"small", None).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "small: {e} after {:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn another_key_is_refused_at_the_handshake() {
        let (addr, calls, refusals) = owner(KEY).await;
        let e = hop(b"another key, also thirty-two bytes!!").forward(addr, b"x", None).await.unwrap_err();
        assert_eq!(e.result(), "refused", "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(refusals.load(Ordering::SeqCst), 1);
    }

    /// A frame altered on the wire is never acted on, and ends the connection.
    #[tokio::test]
    async fn a_tampered_frame_closes_the_connection_unread() {
        let (addr, calls, refusals) = owner(KEY).await;
        let h = hop(KEY);
        let (conn, _) = h.conn(addr).await.unwrap();
        {
            let mut w = conn.writer.lock().await;
            let (half, sealer) = &mut *w;
            let mut f = vec![REQUEST, 0, 0, 0, 9];
            push_short(&mut f, "");
            f.extend_from_slice(b"<body/>");
            let mut out = sealer.seal(f);
            let n = out.len();
            out[n - MAC - 2] ^= 1;
            half.write_all(&out).await.unwrap();
        }
        // The owner closed the connection: the next request on it learns so, and is lost.
        let e = h.exchange(&conn, b"after", None).await.unwrap_err();
        assert_eq!(e.result(), "lost", "{e}");
        assert!(conn.closed.load(Ordering::Acquire));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(refusals.load(Ordering::SeqCst), 1);
        // The next forward dials again and works.
        assert_eq!(h.forward(addr, b"again", None).await.unwrap().body.as_ref(), b"|again");
    }

    #[tokio::test]
    async fn garbage_and_silence_are_refused() {
        let (addr, calls, refusals) = owner(KEY).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /xmpp-cm/cluster/v1/bosh HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n<body/>").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "the owner answered a non-hop connection");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(refusals.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dead_or_silent_owner_is_a_connect_failure_within_the_timeout() {
        // Accepts and never speaks.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = hop(KEY);
        let t0 = std::time::Instant::now();
        let e = h.forward(addr, b"x", None).await.unwrap_err();
        assert_eq!(e.result(), "connect_failed", "{e}");
        assert!(t0.elapsed() < Duration::from_millis(900), "{:?}", t0.elapsed());
        // Right after: fails at once, without dialling again.
        let t0 = std::time::Instant::now();
        assert_eq!(h.forward(addr, b"x", None).await.unwrap_err().result(), "connect_failed");
        assert!(t0.elapsed() < Duration::from_millis(100));
        drop(l);
    }
}

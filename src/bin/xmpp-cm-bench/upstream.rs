//! `xmpp-cm-bench upstream`: a minimal multi-threaded XMPP server for load tests where a real
//! server would be the ceiling (100k idle sessions, raw relay rate). It accepts any SASL PLAIN
//! login without checking the password, binds the requested resource, echoes initial presence
//! to its sender, answers other get/set iqs with an empty result, and routes `<message/>` by
//! `to` (full JID, else the latest session of a bare JID) byte for byte, without stamping
//! `from`. No TLS, no roster, no storage. Never use it for figures that claim to describe a
//! real server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::xml::{self, Ev, Splitter};

#[derive(Default)]
struct Router {
    full: DashMap<String, mpsc::Sender<Bytes>>,
    bare: DashMap<String, mpsc::Sender<Bytes>>,
    sessions: AtomicU64,
    dropped: AtomicU64,
}

pub async fn serve(listeners: Vec<tokio::net::TcpListener>) -> std::io::Result<()> {
    let router = Arc::new(Router::default());
    let mut tasks = Vec::new();
    for l in listeners {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        let r = router.clone();
                        tokio::spawn(async move {
                            r.sessions.fetch_add(1, Ordering::Relaxed);
                            let _ = session(s, &r).await;
                            r.sessions.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        }));
    }
    let stats = router.clone();
    tokio::spawn(async move {
        let mut last = (0, 0);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let now = (stats.sessions.load(Ordering::Relaxed), stats.dropped.load(Ordering::Relaxed));
            if now != last {
                eprintln!("[upstream] sessions {} dropped-messages {}", now.0, now.1);
                last = now;
            }
        }
    });
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

const STREAM_NS: &str = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";

async fn session(s: TcpStream, router: &Router) -> std::io::Result<()> {
    let (mut rd, mut wr) = s.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let mut buf = BytesMut::with_capacity(2048);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    let mut sp = Splitter::default();
    let mut user: Option<String> = None;
    let mut domain = String::from("localhost");
    let mut jid: Option<(String, String)> = None; // (full, bare)
    let mut serial: u64 = 0;
    let result = async {
        loop {
            tokio::select! {
                n = rd.read_buf(&mut buf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    loop {
                        let ev = match sp.next(&mut buf) {
                            Ok(Some(ev)) => ev,
                            Ok(None) => break,
                            Err(e) => {
                                out.extend_from_slice(format!("<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{e}</text></stream:error></stream:stream>").as_bytes());
                                wr.write_all(&out).await?;
                                return Ok(());
                            }
                        };
                        match ev {
                            Ev::Header(h, _) => {
                                if let Some(to) = xml::attr(&h, "to") {
                                    domain = to.to_string();
                                }
                                serial += 1;
                                let features = if user.is_none() {
                                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
                                } else {
                                    "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
                                };
                                out.extend_from_slice(format!("<?xml version='1.0'?><stream:stream {STREAM_NS} id='u{serial}' from='{}' version='1.0' xml:lang='en'>{features}", xml::escape(&domain)).as_bytes());
                            }
                            Ev::End => {
                                out.extend_from_slice(b"</stream:stream>");
                                wr.write_all(&out).await?;
                                return Ok(());
                            }
                            Ev::Frame(f) => match xml::name(&f) {
                                "auth" => {
                                    let text = xml::child_text(&f, "auth").unwrap_or("");
                                    let dec = base64::engine::general_purpose::STANDARD.decode(text.trim()).unwrap_or_default();
                                    let parts: Vec<&[u8]> = dec.split(|&b| b == 0).collect();
                                    match parts.get(1).and_then(|u| std::str::from_utf8(u).ok()).filter(|u| !u.is_empty()) {
                                        Some(u) => {
                                            user = Some(u.to_string());
                                            out.extend_from_slice(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
                                            sp.reset();
                                        }
                                        None => out.extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><malformed-request/></failure>"),
                                    }
                                }
                                "iq" => {
                                    let id = xml::escape(xml::attr(&f, "id").unwrap_or(""));
                                    if xml::contains(&f, "urn:ietf:params:xml:ns:xmpp-bind") && jid.is_none() {
                                        if let Some(u) = &user {
                                            let res = xml::child_text(&f, "resource").map(str::to_owned).unwrap_or_else(|| format!("r{serial}"));
                                            let bare = format!("{u}@{domain}");
                                            let full = format!("{bare}/{res}");
                                            router.full.insert(full.clone(), tx.clone());
                                            router.bare.insert(bare.clone(), tx.clone());
                                            out.extend_from_slice(format!("<iq type='result' id='{id}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{full}</jid></bind></iq>").as_bytes());
                                            jid = Some((full, bare));
                                        }
                                    } else if matches!(xml::attr(&f, "type"), Some("get" | "set")) {
                                        out.extend_from_slice(format!("<iq type='result' id='{id}'/>").as_bytes());
                                    }
                                }
                                "presence" => {
                                    if let (Some((full, _)), None) = (&jid, xml::attr(&f, "to")) {
                                        out.extend_from_slice(format!("<presence from='{full}' to='{full}'/>").as_bytes());
                                    }
                                }
                                "message" => {
                                    let to = xml::attr(&f, "to").unwrap_or("");
                                    match &jid {
                                        Some((full, bare)) if to == full || to == bare => out.extend_from_slice(&f),
                                        _ => {
                                            let dest = router.full.get(to).map(|e| e.value().clone()).or_else(|| router.bare.get(to).map(|e| e.value().clone()));
                                            match dest {
                                                Some(d) if d.try_send(f.clone()).is_ok() => {}
                                                _ => {
                                                    router.dropped.fetch_add(1, Ordering::Relaxed);
                                                }
                                            }
                                        }
                                    }
                                }
                                _ => {}
                            },
                        }
                    }
                }
                Some(m) = rx.recv() => {
                    out.extend_from_slice(&m);
                    while let Ok(m) = rx.try_recv() {
                        out.extend_from_slice(&m);
                        if out.len() > 64 * 1024 { break; }
                    }
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
                if out.capacity() > 64 * 1024 {
                    out = Vec::with_capacity(2048);
                }
            }
            if buf.capacity() > 64 * 1024 && buf.is_empty() {
                buf = BytesMut::with_capacity(2048);
            }
        }
    }
    .await;
    if let Some((full, bare)) = jid {
        router.full.remove(&full);
        router.bare.remove_if(&bare, |_, v| v.same_channel(&tx));
    }
    result
}

/// Bind every `--listen` address (port 0: a free port below 32768) and print where, one JSON
/// line on stdout, so scripts and tests can read the ports.
pub async fn bind_all(addrs: &[SocketAddr]) -> std::io::Result<Vec<tokio::net::TcpListener>> {
    let mut ls = Vec::new();
    let mut bound = Vec::new();
    for a in addrs {
        let l = crate::net::listen(*a).await?;
        bound.push(l.local_addr()?.to_string());
        ls.push(l);
    }
    println!("{{\"listening\":{}}}", serde_json::to_string(&bound).unwrap_or_default());
    Ok(ls)
}

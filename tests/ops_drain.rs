//! SIGTERM drain of the real binary against real Prosody (ARCHITECTURE.md "Drain", BOSH-T-16,
//! WS-19, WS-20): 100 live sessions mixing BOSH and WebSocket; /readyz turns 503; new sessions
//! are refused; held BOSH requests get `system-shutdown` (or `see-other-uri` with a redirect);
//! WebSocket clients get the `system-shutdown` stream error (or `<close see-other-uri/>`); a
//! message handed over just before SIGTERM reaches its recipient; the process exits 0 within
//! `[drain] grace`.

mod bosh_client;
mod support;

use std::time::{Duration, Instant};

use bosh_client::Bosh;

use support::c2s::{collect_until, direct_recipient};
use support::ws::WsClient;
use support::{http_request, Prosody, ProsodyOpts, XmppCm};

const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- the tests

const SESSIONS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_100_bosh_and_websocket_sessions() {
    let p = Prosody::start(ProsodyOpts { plain_only: true, users: SESSIONS, ..Default::default() });
    let grace = 10u64;
    let mut cm = XmppCm::start(&XmppCm::config_with(
        &p,
        &[("drain.grace", &grace.to_string()), ("log.level", "\"xmpp_cm=info,warn\""), ("bosh.max_wait", "60"),
            // 100 sessions from one loopback address, logged in quickly.
            ("limits.max_sessions_per_ip", "1000"),
            ("limits.new_sessions_per_ip_per_sec", "1000"),
        ],
    ));
    let d = p.domain().to_string();
    let carol = direct_recipient(p.c2s_port(), &d, "carol", "carolpass");
    let carol_jid = format!("carol@{d}/direct");

    // 50 BOSH + 50 WebSocket sessions, logged in a few at a time.
    let half = SESSIONS / 2;
    let mut bosh = Vec::new();
    let mut ws = Vec::new();
    for chunk in (1..=SESSIONS).collect::<Vec<_>>().chunks(10) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (bu, wu, d) = (cm.bosh_url(), cm.ws_url(), d.clone());
            tasks.push(tokio::spawn(async move {
                if i <= half {
                    (Some(Bosh::login(&bu, &d, &format!("user{i}"), &format!("pass{i}"), 60).await.0), None)
                } else {
                    (None, Some(WsClient::logged_in(&wu, &d, &format!("user{i}"), &format!("pass{i}")).await))
                }
            }));
        }
        for t in tasks {
            let (b, w) = t.await.expect("login task");
            bosh.extend(b);
            ws.extend(w);
        }
    }
    assert_eq!((bosh.len(), ws.len()), (half, half));
    let admin = cm.admin_url();
    let ready = http_request("GET", &format!("{admin}/readyz"), &[], b"", T).await.unwrap();
    assert_eq!(ready.status, 200);
    let m = http_request("GET", &format!("{admin}/metrics"), &[], b"", T).await.unwrap().body;
    assert!(m.contains("xmpp_cm_sessions_active{transport=\"bosh\"} 50"), "{m}");
    assert!(m.contains("xmpp_cm_sessions_active{transport=\"websocket\"} 50"), "{m}");

    // Every BOSH session has one request held; every WebSocket reads to the end.
    let mut sender = bosh.pop().expect("a BOSH sender");
    let mut held = Vec::new();
    for mut b in bosh {
        held.push(tokio::spawn(async move { b.send("", "").await }));
    }
    let mut ws_sender = ws.pop().expect("a WS sender");
    let ws_ends: Vec<_> = ws.into_iter().map(|w| tokio::spawn(w.read_to_close())).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Messages handed over just before SIGTERM.
    let bosh_msg = format!("<message xmlns='jabber:client' to='{carol_jid}' type='chat' id='mb'><body>bosh-before-term</body></message>");
    let sender_task = tokio::spawn(async move { sender.send("", &bosh_msg).await });
    ws_sender.send(&format!("<message to='{carol_jid}' type='chat' id='mw'><body>ws-before-term</body></message>")).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let carol_reader = std::thread::spawn(move || {
        collect_until(carol, vec!["bosh-before-term".into(), "ws-before-term".into()], Duration::from_secs(15))
    });
    let t0 = Instant::now();
    cm.signal("TERM");

    // Readiness fails and a new session is refused while draining.
    let mut saw_503 = false;
    for _ in 0..40 {
        match http_request("GET", &format!("{admin}/readyz"), &[], b"", Duration::from_secs(2)).await {
            Ok(r) if r.status == 503 => {
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(e) => panic!("admin listener gone before /readyz said 503: {e}"),
        }
    }
    assert!(saw_503, "/readyz never turned 503");
    let refused = bosh_client::post(
        &cm.bosh_url(),
        &format!("<body {} rid='1' to='{d}' wait='5' hold='1' ver='1.6'/>", bosh_client::NS),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!((refused.is_terminate(), refused.condition().as_deref()), (true, Some("system-shutdown")), "{}", refused.raw);

    // Held BOSH requests: system-shutdown.
    for h in held {
        let a = h.await.expect("held request task");
        assert!(a.is_terminate(), "{}", a.raw);
        assert_eq!(a.condition().as_deref(), Some("system-shutdown"), "{}", a.raw);
    }
    let s = sender_task.await.expect("sender");
    assert!(s.raw.contains("system-shutdown") || s.status == 200, "{}", s.raw);
    // WebSocket: the system-shutdown stream error, <close/>, close code 1001.
    for w in ws_ends {
        let (texts, code) = w.await.expect("ws task");
        assert!(
            texts.iter().any(|t| t.contains("stream:error")
                && (t.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'")
                    || t.contains("<system-shutdown xmlns=\"urn:ietf:params:xml:ns:xmpp-streams\""))),
            "{texts:?}"
        );
        assert!(texts.last().is_some_and(|t| t.starts_with("<close ")), "{texts:?}");
        assert_eq!(code, Some(1001), "{texts:?}");
    }
    drop(ws_sender);

    // Exit 0 within grace.
    let (mut cm, status) = tokio::task::spawn_blocking(move || {
        let s = cm.wait_exit(Duration::from_secs(grace + 5));
        (cm, s)
    })
    .await
    .unwrap();
    let took = t0.elapsed();
    assert!(status.is_some_and(|s| s.code() == Some(0)), "exit {status:?} after {took:?}\n{}", support::tail(cm.log_path(), 40));
    assert!(took < Duration::from_secs(grace + 1), "drain took {took:?}");
    let _ = cm.stop();

    // Both messages handed over before SIGTERM reached carol.
    let got = carol_reader.join().expect("carol");
    assert!(got.contains("bosh-before-term"), "carol got: {got}");
    assert!(got.contains("ws-before-term"), "carol got: {got}");
}

/// With `[drain] redirect_url`: BOSH `see-other-uri` with `<uri/>`, WebSocket
/// `<close see-other-uri='…'/>` (WS-20, SEC-14), and new BOSH sessions are sent there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_redirect_sends_clients_to_the_peer() {
    let p = Prosody::start(ProsodyOpts { plain_only: true, ..Default::default() });
    let mut cm = XmppCm::start(&XmppCm::config_with(&p, &[("drain.redirect_url", "\"https://peer.example.test\"")]));
    let d = p.domain().to_string();
    let (mut b, _) = Bosh::login(&cm.bosh_url(), &d, "alice", "alicepass", 30).await;
    let w = WsClient::logged_in(&cm.ws_url(), &d, "bob", "bobpass").await;
    let held = tokio::spawn(async move { b.send("", "").await });
    let ws_end = tokio::spawn(w.read_to_close());
    tokio::time::sleep(Duration::from_millis(300)).await;
    cm.signal("TERM");
    let a = held.await.unwrap();
    assert_eq!(a.condition().as_deref(), Some("see-other-uri"), "{}", a.raw);
    let uri = a.children().into_iter().find(|c| c.name == "uri").map(|c| c.text());
    assert_eq!(uri.as_deref(), Some("https://peer.example.test/http-bind"), "{}", a.raw);
    let (texts, code) = ws_end.await.unwrap();
    let close = texts.last().cloned().unwrap_or_default();
    assert!(close.starts_with("<close "), "{texts:?}");
    assert!(
        close.contains("see-other-uri='wss://peer.example.test/xmpp-websocket'")
            || close.contains("see-other-uri=\"wss://peer.example.test/xmpp-websocket\""),
        "{texts:?}"
    );
    assert!(!texts.iter().any(|t| t.contains("stream:error")), "{texts:?}");
    assert_eq!(code, Some(1001));
    let (mut cm, status) = tokio::task::spawn_blocking(move || {
        let s = cm.wait_exit(Duration::from_secs(15));
        (cm, s)
    })
    .await
    .unwrap();
    assert!(status.is_some_and(|s| s.code() == Some(0)), "{status:?}\n{}", support::tail(cm.log_path(), 40));
    let _ = cm.stop();

    // SEC-14: a redirect less secure than the public URL is refused at startup (exit 64).
    let bad = XmppCm::config_with(
        &p,
        &[("http.public_url", "\"https://chat.example.test\""), ("drain.redirect_url", "\"http://peer.example.test\"")],
    );
    let (status, out) = XmppCm::run_to_exit(&bad, &["--check-config"], &[], Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(64), "{out}");
    assert!(out.contains("drain.redirect_url"), "{out}");
}

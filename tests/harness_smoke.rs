//! Tests of the test harness itself (tests/support): the real servers come up on free ports with
//! TLS and accounts as promised, the client scripts work against a server's own BOSH/WebSocket
//! (so a later failure through xmpp-cm is xmpp-cm's), and xmpp-cm starts from `config_for`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::http::parse_response;
use support::{free_port, node, Ejabberd, EjabberdOpts, Prosody, ProsodyOpts, XmppCm};

/// Open a c2s stream on raw TCP and return everything up to the end of `<stream:features>`.
fn c2s_features(port: u16, domain: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect c2s");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains("</stream:features>") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading stream features: {e}; got so far: {}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn free_ports_are_below_the_ephemeral_range_and_distinct() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    assert!(ports.iter().all(|p| (20000..32000).contains(p)), "{ports:?}");
    let mut sorted = ports.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len(), "a port was handed out twice: {ports:?}");
}

#[test]
fn http_response_parser_handles_length_chunked_and_eof_bodies() {
    let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 3\r\n\r\nabcdef", false).unwrap();
    assert_eq!((r.status, r.body.as_str(), r.header("content-type")), (200, "abc", Some("text/xml")));
    let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", false)
        .unwrap();
    assert_eq!(r.body, "abcde");
    let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\ngone", false).unwrap();
    assert_eq!((r.status, r.body.as_str()), (404, "gone"));
    assert!(parse_response(b"garbage", false).is_err());
}

#[test]
fn prosody_with_tls_required_offers_mandatory_starttls() {
    let t0 = Instant::now();
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    eprintln!("prosody up in {:?} (pid {}, c2s {})", t0.elapsed(), p.pid(), p.c2s_port());
    let f = c2s_features(p.c2s_port(), p.domain());
    assert!(f.contains("<stream:stream"), "no stream header: {f}");
    assert!(f.contains("from='localhost'") || f.contains("from=\"localhost\""), "{f}");
    assert!(f.contains("urn:ietf:params:xml:ns:xmpp-tls"), "STARTTLS not offered: {f}");
    assert!(f.contains("<required"), "STARTTLS offered but not required: {f}");
    // With TLS required, no SASL before STARTTLS.
    assert!(!f.contains("urn:ietf:params:xml:ns:xmpp-sasl"), "SASL offered before TLS: {f}");
    assert!(p.ca_file().is_file());
    assert!(p.log().contains("Prosody"), "log at {} looks empty", p.log_path().display());
}

#[test]
fn prosody_without_tls_required_still_offers_starttls_and_plain_only_hides_scram() {
    let p = Prosody::start(ProsodyOpts { plain_only: true, ..Default::default() });
    let f = c2s_features(p.c2s_port(), p.domain());
    assert!(f.contains("urn:ietf:params:xml:ns:xmpp-tls"), "{f}");
    assert!(!f.contains("<required"), "{f}");
    assert!(f.contains(">PLAIN<"), "PLAIN not offered: {f}");
    assert!(!f.contains("SCRAM"), "SCRAM offered despite plain_only: {f}");
}

/// The client scripts work against Prosody's own BOSH and WebSocket (no xmpp-cm involved), so a
/// failure of the same script through xmpp-cm points at xmpp-cm.
#[test]
fn client_scripts_chat_through_prosodys_own_bosh_and_websocket() {
    let p = Prosody::start(ProsodyOpts { http: true, users: 3, ..Default::default() });
    let t = Duration::from_secs(60);
    let bosh = p.bosh_url();
    let ws = p.ws_url();
    let out = node("strophe-chat.mjs", &["--transport", "bosh", "--url", &bosh, "--domain", "localhost", "--messages", "3"], t);
    eprintln!("strophe bosh: {}", out.assert_ok("strophe-chat over Prosody BOSH"));
    let out = node(
        "strophe-chat.mjs",
        &["--transport", "ws", "--url", &ws, "--a", "user1:pass1", "--b", "carol:carolpass", "--url-b", &bosh, "--transport-b", "bosh"],
        t,
    );
    eprintln!("strophe ws+bosh: {}", out.assert_ok("strophe-chat WS to BOSH over Prosody"));
    let out = node("xmppjs-chat.mjs", &["--url", &ws, "--domain", "localhost", "--a", "user2:pass2", "--b", "dave:davepass"], t);
    eprintln!("xmpp.js ws: {}", out.assert_ok("xmppjs-chat over Prosody WebSocket"));
    // A wrong password must fail, not hang: the scripts bound their waits.
    let out = node("strophe-chat.mjs", &["--url", &ws, "--a", "alice:wrong", "--step-timeout", "5000"], t);
    assert!(!out.success() && !out.timed_out, "{out:?}");
    assert!(out.result_line().contains("AUTHFAIL"), "{}", out.result_line());
}

#[test]
fn ejabberd_offers_starttls_and_has_the_accounts() {
    let t0 = Instant::now();
    let e = Ejabberd::start(EjabberdOpts { tls_required: true, http: true, users: 2, ..Default::default() });
    eprintln!("ejabberd up with accounts in {:?} (pid {}, c2s {})", t0.elapsed(), e.pid(), e.c2s_port());
    let f = c2s_features(e.c2s_port(), e.domain());
    assert!(f.contains("urn:ietf:params:xml:ns:xmpp-tls"), "STARTTLS not offered: {f}");
    assert!(f.contains("<required"), "STARTTLS not required: {f}");
    let out = node(
        "strophe-chat.mjs",
        &["--url", &e.ws_url(), "--a", "user1:pass1", "--b", "bob:bobpass"],
        Duration::from_secs(60),
    );
    eprintln!("strophe ws on ejabberd: {}", out.assert_ok("strophe-chat over ejabberd's own WebSocket"));
}

/// `XmppCm::config_for` yields a config the binary accepts and starts with.
#[test]
fn xmpp_cm_starts_from_config_for_and_answers_health() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let toml = XmppCm::config_for(&p);
    let (status, out) = XmppCm::run_to_exit(&toml, &["--check-config"], &[], Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "--check-config refused config_for():\n{toml}\n{out}");
    let cm = XmppCm::start(&toml);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let health = rt
        .block_on(support::http_request("GET", &format!("{}/healthz", cm.admin_url()), &[], b"", Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("/healthz: {e}\n{}", cm.log()));
    assert_eq!(health.status, 200, "/healthz: {health:?}\n{}", cm.log());
    let bad = XmppCm::run_to_exit("[bosh]\nmax_wait = 0\n", &[], &[], Duration::from_secs(10));
    assert_eq!(bad.0.and_then(|s| s.code()), Some(64), "bad config must exit 64: {}", bad.1);
}

/// Both transports and both clients through xmpp-cm to Prosody: what every other real-client
/// test builds on.
#[test]
fn clients_chat_through_xmpp_cm() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let t = Duration::from_secs(60);
    let check = |what: &str, out: support::NodeOutput| {
        if !out.success() {
            eprintln!("--- xmpp-cm log ---\n{}", support::tail(cm.log_path(), 80));
        }
        eprintln!("{what}: {}", out.assert_ok(what));
    };
    check("strophe BOSH via xmpp-cm", node("strophe-chat.mjs", &["--url", &cm.bosh_url(), "--messages", "3"], t));
    check("strophe WS via xmpp-cm", node("strophe-chat.mjs", &["--url", &cm.ws_url(), "--messages", "3"], t));
    check("xmpp.js WS via xmpp-cm", node("xmppjs-chat.mjs", &["--url", &cm.ws_url()], t));
}

/// config/example.toml documents every key of src/config.rs with its default value, so the
/// annotated sample cannot drift from the code.
#[test]
fn example_config_lists_every_key_with_its_default() {
    use figment::providers::{Format, Serialized, Toml};
    use figment::value::{Dict, Value};
    use figment::{Figment, Provider};
    use xmpp_cm::Config;

    let path = support::repo_root().join("config/example.toml");
    let example = Figment::from(Toml::file_exact(&path));
    let parsed: Config = example.extract().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(parsed, Config::default(), "config/example.toml values differ from the defaults in src/config.rs");

    fn keys(prefix: &str, d: &Dict, out: &mut Vec<String>) {
        for (k, v) in d {
            let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                Value::Dict(_, inner) if !inner.is_empty() => keys(&name, inner, out),
                _ => out.push(name),
            }
        }
    }
    let dict = |f: Figment| -> Dict {
        f.data().expect("figment data").into_values().next().unwrap_or_default()
    };
    let (mut want, mut have) = (Vec::new(), Vec::new());
    keys("", &dict(Figment::from(Serialized::defaults(Config::default()))), &mut want);
    keys("", &dict(example), &mut have);
    let missing: Vec<&String> = want.iter().filter(|k| !have.contains(k)).collect();
    assert!(missing.is_empty(), "config/example.toml lacks keys: {missing:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    for k in &want {
        // Nested tables nest in the name too: http.tls.cert_file → XMPP_CM_HTTP__TLS__CERT_FILE.
        let env = format!("XMPP_CM_{}", k.replace('.', "__").to_uppercase());
        assert!(text.contains(&env), "config/example.toml does not name the environment variable {env}");
    }
}

/// strophe-sm.mjs (XEP-0198 resumption after a dropped WebSocket) works against Prosody's own
/// WebSocket, so the same script through xmpp-cm tests the proxy, not the script.
#[test]
fn strophe_sm_script_resumes_on_prosodys_own_websocket() {
    let p = Prosody::start(ProsodyOpts { http: true, ..Default::default() });
    let out = node("strophe-sm.mjs", &["--url", &p.ws_url(), "--messages", "3", "--settle", "500"], Duration::from_secs(90));
    eprintln!("strophe-sm on Prosody: {}", out.assert_ok("strophe-sm over Prosody's own WebSocket"));
    assert!(out.result_line().contains("\"resumed\":true"), "{}", out.result_line());
}

/// XEP-0198 resumption through xmpp-cm: the proxy must drop the upstream stream without
/// </stream:stream> when the client vanishes, and strip `location` from <enabled/>.
#[test]
fn strophe_resumes_a_dropped_websocket_session_through_xmpp_cm() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let out = node("strophe-sm.mjs", &["--url", &cm.ws_url(), "--messages", "3"], Duration::from_secs(90));
    if !out.success() {
        eprintln!("--- xmpp-cm log ---\n{}\n--- prosody log ---\n{}", support::tail(cm.log_path(), 80), support::tail(p.log_path(), 40));
    }
    eprintln!("strophe-sm via xmpp-cm: {}", out.assert_ok("strophe-sm through xmpp-cm"));
}

/// `config_for` works with the second upstream too: strophe over BOSH and WebSocket through
/// xmpp-cm to ejabberd (STARTTLS required, verified with its test CA).
#[test]
fn clients_chat_through_xmpp_cm_to_ejabberd() {
    let e = Ejabberd::start(EjabberdOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&e));
    let t = Duration::from_secs(60);
    for url in [cm.bosh_url(), cm.ws_url()] {
        let out = node("strophe-chat.mjs", &["--url", &url, "--messages", "2"], t);
        if !out.success() {
            eprintln!("--- xmpp-cm log ---\n{}\n--- ejabberd log ---\n{}", support::tail(cm.log_path(), 80), support::tail(e.log_path(), 40));
        }
        eprintln!("strophe via xmpp-cm to ejabberd: {}", out.assert_ok(&format!("strophe-chat {url} → ejabberd")));
    }
}

/// `config_with` replaces and adds keys, including quoted keys with dots, and the result parses
/// as xmpp-cm's config.
#[test]
fn config_with_overrides_keys() {
    struct Fake(std::path::PathBuf);
    impl support::Upstream for Fake {
        fn domain(&self) -> &str {
            "localhost"
        }
        fn c2s_port(&self) -> u16 {
            5999
        }
        fn ca_file(&self) -> &std::path::Path {
            &self.0
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "").unwrap();
    let toml = XmppCm::config_with(
        &Fake(ca.clone()),
        &[
            ("bosh.max_wait", "5"),
            ("upstream.tls", "\"none\""),
            ("upstream.routes.\"other.test\"", "\"127.0.0.1:1\""),
            ("log.level", "\"info\""),
        ],
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &toml).unwrap();
    let c: xmpp_cm::Config = figment::Figment::from(<figment::providers::Toml as figment::providers::Format>::file_exact(&path))
        .extract()
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(c.bosh.max_wait, 5, "{toml}");
    assert_eq!(c.upstream.tls, xmpp_cm::config::TlsMode::None);
    assert_eq!(c.upstream.routes.get("localhost").map(String::as_str), Some("127.0.0.1:5999"));
    assert_eq!(c.upstream.routes.get("other.test").map(String::as_str), Some("127.0.0.1:1"));
    assert_eq!(c.upstream.ca_file, ca.to_str().unwrap());
    assert_eq!(c.log.level, "info");
    assert!(c.http.listen[0].starts_with("127.0.0.1:") && c.admin.listen.starts_with("127.0.0.1:"));
}

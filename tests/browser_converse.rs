//! A real web client in a real browser: converse.js 14 in headless Debian Chromium (driven by
//! playwright-core, tests/browser/converse-e2e.mjs) logs in through xmpp-cm to a real Prosody,
//! two users chat and log out: over BOSH, over WebSocket, mixed (A on BOSH, B on WebSocket), and
//! with only the domain given, converse.js finding xmpp-cm through XEP-0156 host-meta
//! (CHECKLIST §8 DISCO-01/04/05/09/10, §12 converse.js).
//!
//! The page is served by the script on its own loopback port (another origin than xmpp-cm's,
//! so CORS preflights are real) with a Content-Security-Policy that allows only that origin and
//! the exact xmpp-cm endpoints; the script checks that no request left loopback, that no CSP
//! violation happened (and that the policy does block an outside host), and that each page used
//! the transport and URL it was given. Screenshots and the browser console go to
//! `target/browser-artifacts/`.
//!
//! Discovery needs HTTPS: converse.js fetches `https://<domain>/.well-known/host-meta` (port 443)
//! and keeps only https:/wss: links. So a second xmpp-cm terminates TLS itself with the test
//! CA's certificate for `localhost` and `public_url = "https://localhost"`; Chromium resolves
//! `localhost:443` to that listener (`--host-resolver-rules`) and trusts exactly that
//! certificate's key (`--ignore-certificate-errors-spki-list`, which needs and gets a fresh
//! profile directory), not every certificate.
//!
//! Needs Debian's `chromium` and `npm ci` in tests/browser: scripts/test.sh installs both.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::node::node_env;
use support::{free_port, repo_root, tail, Prosody, ProsodyOpts, XmppCm};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script's own deadline; the process is killed a little after it.
const BUDGET: Duration = Duration::from_secs(100);

/// A JSON string literal (serde_json does the escaping).
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `{"bosh":url}` / `{"ws":url}` / `{"discover":true}`.
fn transport(kind: &str, url: &str) -> String {
    match kind {
        "discover" => "{\"discover\":true}".into(),
        k => format!("{{{}:{}}}", json_str(k), json_str(url)),
    }
}

#[test]
fn converse_js_in_chromium_over_bosh_websocket_mixed_and_discovery() {
    let t0 = Instant::now();
    let browser_dir = repo_root().join("tests/browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/test.sh (it installs Debian's chromium package)"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir() && browser_dir.join("node_modules/converse.js/dist").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (it runs `npm ci` in tests/browser)"
    );

    // `blocklist` (XEP-0191) is among the harness Prosody's modules: converse.js 14 hangs opening
    // a chat with a contact outside the roster without it.
    let prosody = Prosody::start(ProsodyOpts::default());
    let domain = prosody.domain().to_string();
    assert_eq!(domain, "localhost", "the discovery variant maps localhost:443 to the TLS listener");

    // Plain HTTP front: what runs behind an Ingress that terminates TLS.
    let plain = XmppCm::start(&XmppCm::config_for(&prosody));
    // TLS front with the public URL converse.js discovers.
    let certs = prosody.certs();
    let tls = XmppCm::start(&XmppCm::config_with(
        &prosody,
        &[
            ("http.tls.cert_file", &json_str(certs.cert.to_str().unwrap())),
            ("http.tls.key_file", &json_str(certs.key.to_str().unwrap())),
            ("http.public_url", "\"https://localhost\""),
        ],
    ));
    let tls_port: u16 = tls.http_addr().rsplit_once(':').unwrap().1.parse().unwrap();

    let bosh = plain.bosh_url();
    let ws = plain.ws_url();
    let disco_bosh = "https://localhost/http-bind";
    let disco_ws = "wss://localhost/xmpp-websocket";
    let host_meta = "https://localhost/.well-known/host-meta";

    let scenarios = [
        ("bosh", ("bosh", bosh.as_str()), ("bosh", bosh.as_str()), None),
        ("websocket", ("ws", ws.as_str()), ("ws", ws.as_str()), None),
        ("mixed", ("bosh", bosh.as_str()), ("ws", ws.as_str()), None),
        // converse.js prefers the WebSocket link it discovers.
        ("discovery", ("discover", ""), ("discover", ""), Some(("ws", disco_ws))),
    ];
    let scenarios: Vec<String> = scenarios
        .iter()
        .map(|(name, a, b, expect)| {
            let expect = expect
                .map(|(k, u)| {
                    let t = transport(k, u);
                    format!(
                        ",\"expect\":{{\"a\":{t},\"b\":{t}}},\"expectHostMeta\":{},\"discovered\":{{\"bosh\":{},\"ws\":{}}}",
                        json_str(host_meta),
                        json_str(disco_bosh),
                        json_str(disco_ws)
                    )
                })
                .unwrap_or_default();
            format!("{{\"name\":{},\"a\":{},\"b\":{}{expect}}}", json_str(name), transport(a.0, a.1), transport(b.0, b.1))
        })
        .collect();

    let artifacts = repo_root().join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let page_port = free_port();
    let connect_src = [
        plain.http_base(),
        ws.trim_end_matches("/xmpp-websocket").to_string(),
        "https://localhost".into(),
        "wss://localhost".into(),
    ];
    let connect_src: Vec<String> = connect_src.iter().map(|s| json_str(s)).collect();
    let chromium_args = [
        format!("--host-resolver-rules=MAP localhost:443 127.0.0.1:{tls_port}"),
    ];
    let chromium_args: Vec<String> = chromium_args.iter().map(|s| json_str(s)).collect();
    let config = format!(
        "{{\"pagePort\":{page_port},\"artifacts\":{},\"chromium\":{},\"budgetMs\":{},\
         \"trustSpkiOf\":{},\"chromiumArgs\":[{}],\"connectSrc\":[{}],\
         \"users\":{{\"a\":{{\"jid\":\"alice@{domain}\",\"password\":\"alicepass\"}},\
         \"b\":{{\"jid\":\"bob@{domain}\",\"password\":\"bobpass\"}}}},\"scenarios\":[{}]}}",
        json_str(artifacts.to_str().unwrap()),
        json_str(CHROMIUM),
        BUDGET.as_millis(),
        json_str(certs.cert.to_str().unwrap()),
        chromium_args.join(","),
        connect_src.join(","),
        scenarios.join(","),
    );

    let out = node_env("../browser/converse-e2e.mjs", &[&config], &[], BUDGET + Duration::from_secs(10));
    if !out.success() || !out.result_line().contains("\"ok\":true") {
        panic!(
            "converse.js browser test failed (status {:?}, timed out: {}, {:?})\n--- result ---\n{}\n\
             --- script stderr, with converse.js' console (last 250 lines) ---\n{}\n\
             --- xmpp-cm (plain) log, last 60 lines ---\n{}\n--- xmpp-cm (TLS) log, last 60 lines ---\n{}\n\
             --- prosody log, last 40 lines ---\n{}\n\
             (screenshots and console.log in {})",
            out.status,
            out.timed_out,
            out.elapsed,
            out.result_line(),
            tail_str(&out.stderr, 250),
            tail(plain.log_path(), 60),
            tail(tls.log_path(), 60),
            tail(prosody.log_path(), 40),
            artifacts.display(),
        );
    }
    eprintln!("{}", tail_str(&out.stderr, 40));
    // Both users logged in to the real Prosody (only reachable through xmpp-cm) once per
    // scenario.
    let plog = prosody.log();
    for user in ["alice", "bob"] {
        let n = plog.matches(&format!("Authenticated as {user}@{domain}")).count();
        assert_eq!(n, 4, "{user} authenticated {n} times at Prosody, expected 4 (one per scenario)");
    }
    eprintln!("browser test took {:?} (script {:?})", t0.elapsed(), out.elapsed);
}

fn tail_str(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

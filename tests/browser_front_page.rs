//! The front page (`GET /`, src/front_page.rs) as a visitor uses it: headless Debian Chromium
//! (playwright-core, tests/browser/front-page.mjs) opens the page xmpp-cm serves, under xmpp-cm's
//! own Content-Security-Policy, clicks "Test this network" and reads the verdict. In front of a
//! real Prosody:
//!
//! - directly against xmpp-cm: WebSocket and BOSH both pass, each with a round-trip time, and
//!   the page says so;
//! - through a real HAProxy that refuses WebSocket upgrades with 403 (`Opts::refuse_websocket`):
//!   the page, loaded through the proxy, shows the proxy's URLs, reports WebSocket refused and
//!   BOSH working, and says "WebSocket is blocked on this network; clients will fall back to
//!   BOSH";
//! - against an xmpp-cm whose XMPP server is down (its route points at a closed port): both
//!   transports reach xmpp-cm and fail with the condition it names (`remote-connection-failed`),
//!   and the page says the network is fine but the XMPP service did not answer.
//!
//! On both: the policy header is the page's, the stylesheet and script were applied, no CSP
//! violation happened during the test (and a probe shows the policy does block another origin),
//! no page error, nothing left loopback, no login reached Prosody, and every session the test
//! opened was closed again. Screenshots go to `target/browser-artifacts/front-page/`.
//!
//! Needs Debian's `chromium` and `haproxy`, and `npm ci` in tests/browser: scripts/test.sh
//! installs them.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::haproxy::{Backend, HaProxy, Opts};
use support::node::node_env;
use support::{free_port, http_request, repo_root, tail, Prosody, ProsodyOpts, XmppCm};

const CHROMIUM: &str = "/usr/bin/chromium";
const BUDGET: Duration = Duration::from_secs(90);
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'; connect-src 'self' ws: wss:";

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port")
}

/// `page.results.<transport>.<field>` and friends, as text for messages.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

async fn metrics(cm: &XmppCm) -> String {
    http_request("GET", &format!("{}/metrics", cm.admin_url()), &[], b"", Duration::from_secs(5)).await.expect("metrics").body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_page_tests_the_network_directly_and_through_a_proxy_that_blocks_websocket() {
    let t0 = Instant::now();
    let browser_dir = repo_root().join("tests/browser");
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: run scripts/test.sh (it installs Debian's chromium package)");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test.sh (it runs `npm ci` in tests/browser)"
    );

    let prosody = Prosody::start(ProsodyOpts::default());
    let domain = prosody.domain().to_string();
    let cm = XmppCm::start(&XmppCm::config_for(&prosody));
    let backend = Backend { addr: cm.http_addr().parse().expect("http addr"), check_port: port_of(&cm.admin_url()) };
    let proxy = HaProxy::start_with(&[backend], Opts { refuse_websocket: true });
    let closed = format!("\"127.0.0.1:{}\"", free_port());
    let down = XmppCm::start(&XmppCm::config_with(&prosody, &[(&format!("upstream.routes.\"{domain}\""), &closed)]));

    let artifacts = repo_root().join("target/browser-artifacts/front-page");
    let _ = std::fs::remove_dir_all(&artifacts);
    let direct = format!("{}/", cm.http_base());
    let proxied = format!("{}/", proxy.http_base());
    let config = serde_json::json!({
        "chromium": CHROMIUM,
        "artifacts": artifacts,
        "budgetMs": BUDGET.as_millis() as u64,
        "pages": [
            {"name": "direct", "url": direct},
            {"name": "haproxy", "url": proxied},
            {"name": "server-down", "url": format!("{}/", down.http_base())},
        ],
    })
    .to_string();
    let out = tokio::task::spawn_blocking(move || node_env("../browser/front-page.mjs", &[&config], &[], BUDGET + Duration::from_secs(10)))
        .await
        .expect("node thread");
    let context = || {
        format!(
            "--- result ---\n{}\n--- script stderr (last 80 lines) ---\n{}\n--- xmpp-cm log, last 40 lines ---\n{}\n\
             --- haproxy log, last 20 lines ---\n{}\n(screenshots in {})",
            out.result_line(),
            out.stderr.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
            tail(cm.log_path(), 40),
            tail(proxy.log_path(), 20),
            artifacts.display()
        )
    };
    let result: Value = serde_json::from_str(out.result_line()).unwrap_or(Value::Null);
    if !out.success() || result["ok"] != true {
        panic!("front page browser script failed (status {:?}, timed out: {})\n{}", out.status, out.timed_out, context());
    }

    let hp = proxy.port();
    for (name, page, bosh, ws) in [
        ("direct", &result["pages"]["direct"], cm.bosh_url(), cm.ws_url()),
        ("haproxy", &result["pages"]["haproxy"], format!("http://127.0.0.1:{hp}/http-bind"), format!("ws://127.0.0.1:{hp}/xmpp-websocket")),
        ("server-down", &result["pages"]["server-down"], down.bosh_url(), down.ws_url()),
    ] {
        let why = || format!("{name}: {page:#}\n{}", context());
        assert_eq!(page["status"], 200, "{}", why());
        assert_eq!(page["csp"], POLICY, "{}", why());
        // front.css sets it (46rem); front.js enables the button.
        assert_eq!(page["styled"], "736px", "{}", why());
        assert_eq!(page["scriptRan"], true, "{}", why());
        // The URLs come from the Host the browser sent: the proxy's own for the proxied page.
        assert_eq!(at(page, "shownUrls.bosh").as_str(), Some(bosh.as_str()), "{}", why());
        assert_eq!(at(page, "shownUrls.websocket").as_str(), Some(ws.as_str()), "{}", why());
        assert_eq!(at(page, "shownUrls.domain").as_str(), Some(domain.as_str()), "{}", why());
        assert_eq!(page["cspViolations"], serde_json::json!([]), "{}", why());
        assert_eq!(page["pageErrors"], serde_json::json!([]), "{}", why());
        assert_eq!(page["offLoopback"], serde_json::json!([]), "{}", why());
        // Every HTTP request the page made (its assets, icon and BOSH requests) was answered 200.
        let requests = page["requests"].as_array().cloned().unwrap_or_default();
        assert!(requests.len() >= 5 && requests.iter().all(|r| r["status"] == 200), "{}", why());
        // The policy is in force: another origin is blocked, with a violation event.
        assert!(at(page, "cspProbe.outcome").as_str().is_some_and(|o| o.starts_with("blocked")), "{}", why());
        let probe = at(page, "cspProbe.violations").to_string();
        assert!(probe.contains("connect-src") && probe.contains("127.0.0.2"), "{}", why());
        let screenshot = page["screenshot"].as_str().unwrap_or_default();
        assert!(Path::new(screenshot).is_file(), "no screenshot at {screenshot}");
        eprintln!("{name}: {} / {} — {} (test took {} ms; {screenshot})", at(page, "results.websocket.shown"), at(page, "results.bosh.shown"), at(page, "results.sentence"), page["testMs"]);
    }

    // Where a transport passes, its round trip is shown.
    for (name, transport) in [("direct", "websocket"), ("direct", "bosh"), ("haproxy", "bosh")] {
        let page = &result["pages"][name];
        let why = || format!("{name}: {page:#}\n{}", context());
        assert_eq!(at(page, &format!("results.{transport}.state")), "pass", "{}", why());
        assert!(at(page, &format!("results.{transport}.rttMs")).as_f64().is_some_and(|ms| ms >= 0.0), "{}", why());
        assert!(at(page, &format!("results.{transport}.rtt")).as_str().is_some_and(|t| t.ends_with(" ms")), "{}", why());
    }

    let direct = &result["pages"]["direct"];
    let why = || format!("direct: {direct:#}\n{}", context());
    assert_eq!(at(direct, "results.verdict"), "both", "{}", why());
    assert_eq!(at(direct, "results.sentence"), "WebSocket and BOSH both work on this network.", "{}", why());
    assert_eq!(direct["consoleErrors"], serde_json::json!([]), "{}", why());

    let proxied = &result["pages"]["haproxy"];
    let why = || format!("haproxy: {proxied:#}\n{}", context());
    assert_eq!(at(proxied, "results.websocket.state"), "fail", "{}", why());
    assert_eq!(at(proxied, "results.websocket.reason"), "refused", "{}", why());
    assert_eq!(at(proxied, "results.verdict"), "bosh-only", "{}", why());
    assert_eq!(at(proxied, "results.sentence"), "WebSocket is blocked on this network; clients will fall back to BOSH.", "{}", why());
    // Chromium reports the refused handshake on the console; nothing else may be there.
    let console: Vec<&str> = proxied["consoleErrors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(!console.is_empty() && console.iter().all(|e| e.contains("WebSocket connection to") && e.contains("403")), "{}", why());
    let down_page = &result["pages"]["server-down"];
    let why = || format!("server-down: {down_page:#}\n{}", context());
    for transport in ["websocket", "bosh"] {
        assert_eq!(at(down_page, &format!("results.{transport}.state")), "fail", "{}", why());
        assert_eq!(at(down_page, &format!("results.{transport}.reason")), "closed", "{}", why());
        assert_eq!(at(down_page, &format!("results.{transport}.condition")), "remote-connection-failed", "{}", why());
    }
    assert_eq!(at(down_page, "results.verdict"), "neither", "{}", why());
    assert_eq!(
        at(down_page, "results.sentence"),
        "This network reaches the connection manager, but the XMPP service did not answer (remote-connection-failed); no client can connect right now.",
        "{}",
        why()
    );
    assert_eq!(down_page["consoleErrors"], serde_json::json!([]), "{}", why());

    // HAProxy itself refused it: no server was involved.
    let hlog = std::fs::read_to_string(proxy.log_path()).unwrap_or_default();
    assert!(hlog.lines().any(|l| l.contains("<NOSRV>") && l.contains(" 403 ") && l.contains("/xmpp-websocket")), "{hlog}");

    // What reached xmpp-cm: one WebSocket session (the direct page) and two BOSH sessions, all
    // closed again by the page; four front-page requests per page (page, script, style, icon); nobody logged in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = metrics(&cm).await;
        let active = metric(&m, "xmpp_cm_sessions_active{transport=\"bosh\"}") + metric(&m, "xmpp_cm_sessions_active{transport=\"websocket\"}");
        if active == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metric(&m, "xmpp_cm_sessions_created_total{transport=\"websocket\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "xmpp_cm_sessions_created_total{transport=\"bosh\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "xmpp_cm_sessions_active{transport=\"bosh\"}"), 0.0, "sessions left open\n{m}");
    assert_eq!(metric(&m, "xmpp_cm_sessions_active{transport=\"websocket\"}"), 0.0, "sessions left open\n{m}");
    assert!(metric(&m, "xmpp_cm_http_requests_total{route=\"front_page\",status=\"200\"}") >= 8.0, "{m}");
    assert!(!prosody.log().contains("Authenticated as"), "the test logged in somewhere");
    eprintln!("front page browser test took {:?} (script {:?})", t0.elapsed(), out.elapsed);
}

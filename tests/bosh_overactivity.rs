//! Issue 18, BOSH overactivity (XEP-0124 §11, `Core::check_overactivity`): a well-behaved
//! client on a flaky path keeps its session, and a client looping empty requests is still
//! stopped. Real Prosody and xmpp-cm; for the client tests real HAProxy between the client and
//! xmpp-cm, cutting every request held longer than 5 s (its 504, `wait` is 60 s) and losing 3 %
//! of requests and of responses, and real strophe.js (tests/js/strophe-flaky.mjs), which
//! retries the same rid after each failure and, in a second run, reloads its page now and then
//! (attaches to its session with the next rid while the old page's poll is still held); the
//! ignored converse.js one is a measurement. The measurements behind the policy, longer runs of
//! these tests (`XMPP_CM_OVERACT_SECONDS`), are in bench/findings.md, "Issue 18: BOSH
//! overactivity".

mod bosh_client;
mod support;

use std::time::Duration;

use bosh_client::{post, Bosh};
use support::haproxy::{Backend, Flaky, HaProxy};
use support::{http_request, Prosody, ProsodyOpts, XmppCm};

fn prosody() -> Prosody {
    Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() })
}

/// The sum of every sample whose name and labels start with `prefix` (a prefix of one series,
/// or of a family).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

async fn metrics(cm: &XmppCm) -> String {
    http_request("GET", &format!("{}/metrics", cm.admin_url()), &[], b"", Duration::from_secs(5)).await.expect("metrics").body
}

/// Prosody, xmpp-cm and, in front of it, HAProxy cutting requests held over 5 s and losing 3 %
/// of requests and of responses; the BOSH URL through the proxy.
fn flaky_stack() -> (Prosody, XmppCm, HaProxy, String) {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let check_port = cm.admin_url().rsplit(':').next().and_then(|s| s.parse().ok()).expect("admin port");
    let backend = Backend { addr: cm.http_addr().parse().expect("http addr"), check_port };
    let proxy = HaProxy::start_flaky(&[backend], Flaky { server_timeout: Duration::from_secs(5), drop_percent: 3 });
    let url = format!("{}{}", proxy.http_base(), cm.bosh_url().trim_start_matches(&cm.http_base()));
    (p, cm, proxy, url)
}

/// `node tests/js/<script>` for alice and bob at `url` for `seconds` (plus `extra` arguments),
/// off the runtime's threads, killed 120 s after `seconds`.
async fn run_script(script: &'static str, url: &str, seconds: &str, extra: &[&str]) -> support::NodeOutput {
    let timeout = Duration::from_secs(seconds.parse::<u64>().expect("XMPP_CM_OVERACT_SECONDS") + 120);
    let args: Vec<String> = ["--url", url, "--domain", "localhost", "--a", "alice:alicepass", "--b", "bob:bobpass", "--seconds", seconds]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::node(script, &args, timeout)
    })
    .await
    .expect("node runner")
}

/// xmpp-cm's log lines saying why a session ended (its `kind` and the rule, at debug level).
fn ends_logged(cm: &XmppCm) -> String {
    cm.log().lines().filter(|l| l.contains("session ends")).collect::<Vec<_>>().join("\n")
}

/// The script's JSON result line.
fn result(out: &support::NodeOutput) -> serde_json::Value {
    serde_json::from_str(out.result_line()).unwrap_or_default()
}

/// The lines of the metrics that tell why sessions ended and which limits were hit.
fn endings(text: &str) -> String {
    let keep = ["xmpp_cm_sessions_ended_total{", "xmpp_cm_limit_hits_total{"];
    text.lines().filter(|l| keep.iter().any(|k| l.starts_with(k))).collect::<Vec<_>>().join("\n")
}

/// BOSH-R-15, R-16 b, R-13, R-11 (issue 18): strophe.js through a proxy that cuts held requests
/// and loses requests and responses keeps both sessions for the whole run and gets every message
/// exactly once: first only retrying after failures, then also reloading its page after
/// received messages; xmpp-cm ends no session for policy-violation and hits no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strophe_js_keeps_its_session_through_cuts_drops_and_reloads() {
    let seconds = std::env::var("XMPP_CM_OVERACT_SECONDS").unwrap_or_else(|_| "20".into());
    let (_p, cm, _proxy, url) = flaky_stack();
    for reloads in [false, true] {
        let out = run_script("strophe-flaky.mjs", &url, &seconds, if reloads { &["--reloads"] } else { &[] }).await;
        let m = metrics(&cm).await;
        // The measurement: what the client saw and why sessions ended (shown with --nocapture).
        println!("strophe-flaky reloads={reloads}: {}\n{}\n{}", out.result_line(), endings(&m), ends_logged(&cm));
        out.assert_ok(&format!("strophe.js on a flaky path, reloads {reloads}"));
        if reloads {
            assert!(result(&out)["reloads"].as_u64().is_some_and(|n| n > 0), "no reload happened: {}", out.result_line());
        }
        assert_eq!(metric_sum(&m, "xmpp_cm_sessions_ended_total{transport=\"bosh\",side=\"client\",condition=\"policy_violation\"}"), 0.0, "{}", endings(&m));
        assert_eq!(metric_sum(&m, "xmpp_cm_limit_hits_total{"), 0.0, "{}", endings(&m));
    }
}

/// BOSH-R-16 b, R-14 (issue 18): a client that loops empty requests with two in flight (each
/// new one releases the held one at once) is ended with policy-violation by the too-soon
/// streak, on its third too-soon request, counted as a `polling` limit hit.
#[tokio::test]
async fn empty_requests_in_a_tight_loop_are_stopped() {
    let p = prosody();
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let (b, _jid) = Bosh::login(&cm.bosh_url(), "localhost", "alice", "alicepass", 30).await;
    let t = Duration::from_secs(40);
    let send = |rid: u64| {
        let (url, body) = (b.url.clone(), b.body_for(rid, "", ""));
        tokio::spawn(async move { post(&url, &body, t).await })
    };
    let mut held = send(b.rid + 1);
    // Not a timing rule: only so that the loop's first request is held before its second leaves
    // (each later one leaves after the previous answer, so after its predecessor arrived).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ended_at = None;
    for n in 2..=10u64 {
        let next = send(b.rid + n);
        let a = held.await.expect("request task");
        if a.is_terminate() {
            // The answer to the request before the one that ended it: other-request.
            assert_eq!(a.condition().as_deref(), Some("other-request"), "{}", a.raw);
            let last = next.await.expect("request task");
            assert_eq!(last.condition().as_deref(), Some("policy-violation"), "{}", last.raw);
            ended_at = Some(n);
            break;
        }
        assert!(a.status == 200 && a.children().is_empty(), "loop request {}: {} {}", n - 1, a.status, a.raw);
        held = next;
    }
    // The fourth; the fifth when the first two raced (the second arrived first and was parked,
    // so neither was too soon).
    assert!(matches!(ended_at, Some(4 | 5)), "the loop was not stopped by its fifth request: {ended_at:?}");
    let m = metrics(&cm).await;
    assert_eq!(metric_sum(&m, "xmpp_cm_limit_hits_total{limit=\"polling\"}"), 1.0, "{}", endings(&m));
}

/// Issue 18's converse.js measurement (bench/findings.md): converse.js 14 in Chromium with
/// `keepalive`, through the same flaky proxy, reloading its page after received messages
/// (tests/js/converse-flaky.mjs); every reload restores the one BOSH session and xmpp-cm ends
/// none for policy-violation. Ignored by default: it takes `XMPP_CM_OVERACT_SECONDS` (90) and
/// needs Debian's chromium and tests/browser/node_modules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn converse_js_keeps_its_session_through_cuts_drops_and_reloads() {
    let seconds = std::env::var("XMPP_CM_OVERACT_SECONDS").unwrap_or_else(|_| "90".into());
    let (_p, cm, _proxy, url) = flaky_stack();
    let out = run_script("converse-flaky.mjs", &url, &seconds, &[]).await;
    let m = metrics(&cm).await;
    println!("converse-flaky: {}\n{}\n{}", out.result_line(), endings(&m), ends_logged(&cm));
    out.assert_ok("converse.js on a flaky path with reloads");
    assert_eq!(result(&out)["sessions"], 1, "a reload did not restore the session: {}", out.result_line());
    assert_eq!(metric_sum(&m, "xmpp_cm_sessions_ended_total{transport=\"bosh\",side=\"client\",condition=\"policy_violation\"}"), 0.0, "{}", endings(&m));
}

//! Operations endpoints of the real binary against real Prosody: exact /metrics lines after a
//! scripted BOSH session, /healthz and /readyz, the Grafana dashboard's queries against a real
//! /metrics output, and XEP-0156 host-meta (XRD, JRD, CORS, per-Host answers; DISCO-01..10).

mod bosh_client;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bosh_client::Bosh;
use support::http::{parse_response, raw_exchange};
use support::{http_request, repo_root, Prosody, ProsodyOpts, XmppCm};

const T: Duration = Duration::from_secs(10);

async fn get(url: &str) -> support::HttpResponse {
    http_request("GET", url, &[], b"", T).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The sample lines (no comments) of an OpenMetrics text.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// The value of the sample `name_and_labels` exactly, if present.
fn value(text: &str, name_and_labels: &str) -> Option<f64> {
    samples(text).into_iter().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every `xmpp_cm_*` metric name a dashboard query uses.
fn dashboard_metric_names() -> BTreeSet<String> {
    let path = repo_root().join("dashboards/xmpp-cm.json");
    // Readable and UTF-8 here, so a missing file fails with its path rather than in Python.
    let _ = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Parsed by Python's json module: the file must be valid JSON, and we get the exprs.
    let script = r#"
import json, re, sys
d = json.load(open(sys.argv[1]))
assert any(v.get("type") == "datasource" for v in d["templating"]["list"]), "no datasource variable"
assert any(v.get("name") == "instance" for v in d["templating"]["list"]), "no instance variable"
exprs = []
def walk(p):
    for t in p.get("targets", []):
        exprs.append(t["expr"])
    for q in p.get("panels", []):
        walk(q)
walk(d)
assert len(exprs) >= 7, exprs
for e in exprs:
    assert "$instance" in e or "instance=~" in e, e
    print(e)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 is needed to read the dashboard JSON");
    assert!(out.status.success(), "dashboard check failed: {}", String::from_utf8_lossy(&out.stderr));
    let exprs = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut names = BTreeSet::new();
    for (i, _) in exprs.match_indices("xmpp_cm_") {
        let name: String = exprs[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        names.insert(name);
    }
    names
}

/// A scripted BOSH session (create, SASL login, bind, presence, one message, terminate), then
/// exact lines in /metrics; /healthz and /readyz; every metric the dashboard queries exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_scripted_bosh_session() {
    let p = Prosody::start(ProsodyOpts { tls_required: true, ..Default::default() });
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let admin = cm.admin_url();
    assert_eq!(get(&format!("{admin}/healthz")).await.status, 200);
    assert_eq!(get(&format!("{admin}/readyz")).await.status, 200);

    let (mut b, jid) = Bosh::login(&cm.bosh_url(), p.domain(), "alice", "alicepass", 5).await;
    b.send("", &format!("<message xmlns='jabber:client' to='{jid}' type='chat' id='m1'><body>hi me</body></message>")).await;
    b.poll_until("hi me", Duration::from_secs(10)).await;
    let a = b.send("type='terminate'", "<presence xmlns='jabber:client' type='unavailable'/>").await;
    assert!(a.is_terminate(), "{}", a.raw);

    // The session task ends right after answering; give it a moment to drop its guard.
    let mut text = String::new();
    for _ in 0..50 {
        let r = get(&format!("{admin}/metrics")).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap_or("").starts_with("application/openmetrics-text"), "{r:?}");
        text = r.body;
        if value(&text, "xmpp_cm_sessions_active{transport=\"bosh\"}") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = samples(&text);
    for want in [
        "xmpp_cm_build_info{version=\"0.1.0\"} 1",
        "xmpp_cm_sessions_created_total{transport=\"bosh\"} 1",
        "xmpp_cm_sessions_active{transport=\"bosh\"} 0",
        "xmpp_cm_sessions_ended_total{transport=\"bosh\",side=\"client\",condition=\"client_terminate\"} 1",
        "xmpp_cm_session_duration_seconds_count{transport=\"bosh\"} 1",
        "xmpp_cm_upstream_connect_duration_seconds_count 1",
        // auth, bind iq, presence, message, unavailable presence (a restart is not a stanza).
        "xmpp_cm_stanzas_relayed_total{direction=\"to_upstream\"} 5",
        "xmpp_cm_draining 0",
    ] {
        assert!(lines.contains(&want), "missing line {want:?} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");
    let posts = value(&text, "xmpp_cm_http_requests_total{route=\"bosh\",status=\"200\"}").unwrap_or(0.0);
    assert!(posts >= 6.0, "{text}");
    assert!(value(&text, "xmpp_cm_stanzas_relayed_total{direction=\"to_client\"}").unwrap_or(0.0) >= 5.0, "{text}");
    assert!(value(&text, "xmpp_cm_relayed_bytes_total{direction=\"to_upstream\"}").unwrap_or(0.0) > 100.0, "{text}");
    assert!(value(&text, "xmpp_cm_bosh_hold_seconds_count").unwrap_or(0.0) >= posts, "{text}");
    assert!(value(&text, "xmpp_cm_process_resident_memory_bytes").unwrap_or(0.0) > 0.0, "{text}");
    // No label ever carries a JID, a sid or an address.
    for l in &lines {
        assert!(!l.contains('@') && !l.contains(&b.sid) && !l.contains("127.0.0.1"), "{l}");
    }

    // A failed connect has its kind.
    let mut dead = XmppCm::config_with(&p, &[]);
    dead = dead.replace(&format!("127.0.0.1:{}", p.c2s_port()), "127.0.0.1:1");
    let cm2 = XmppCm::start(&dead);
    let r = bosh_client::post(
        &cm2.bosh_url(),
        &format!("<body {} rid='1' to='{}' wait='5' hold='1' ver='1.6'/>", bosh_client::NS, p.domain()),
        T,
    )
    .await;
    assert_eq!(r.condition().as_deref(), Some("remote-connection-failed"), "{}", r.raw);
    let m2 = get(&format!("{}/metrics", cm2.admin_url())).await.body;
    assert!(samples(&m2).contains(&"xmpp_cm_upstream_connect_failures_total{kind=\"tcp\"} 1"), "{m2}");
    assert!(
        samples(&m2).contains(&"xmpp_cm_sessions_ended_total{transport=\"bosh\",side=\"upstream\",condition=\"connect_tcp\"} 1"),
        "{m2}"
    );

    // The dashboard queries only metrics that exist: a sample of that name, or a declared family
    // (`# TYPE f …`) whose samples carry that name (f_total, f_bucket …) but had no labelled
    // child yet in this run (e.g. no limit was hit).
    let names = dashboard_metric_names();
    assert!(names.len() >= 8, "{names:?}");
    let all = format!("{text}{m2}");
    let families: Vec<&str> = all.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    for n in &names {
        let sampled = samples(&all).iter().any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")));
        let declared = families.iter().any(|f| {
            ["", "_total", "_bucket", "_count", "_sum", "_info"].iter().any(|s| *n == format!("{f}{s}"))
        });
        assert!(sampled || declared, "dashboard queries {n}, which /metrics does not export:\n{all}");
    }
}

/// Raw request with our own Host header (the harness client sets Host itself).
async fn req(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> support::HttpResponse {
    let mut r = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let raw = raw_exchange(addr, r.as_bytes(), T).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse_response(&raw, method == "HEAD").unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// DISCO-01/02/04/05/06/07/10: host-meta documents, their CORS, and nothing permissive
/// elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_meta_xrd_jrd_and_cors() {
    let p = Prosody::start(ProsodyOpts::default());
    let cm = XmppCm::start(&XmppCm::config_with(
        &p,
        &[
            ("http.public_url", "\"https://chat.example.test\""),
            ("http.cors_allowed_origins", "[\"https://app.example.test\"]"),
        ],
    ));
    let addr = cm.http_addr();
    let host = p.domain().to_string();
    for accept in ["application/xrd+xml, text/xml", "*/*", "application/json"] {
        let r = req(&addr, "GET", "/.well-known/host-meta", &[("Host", &host), ("Accept", accept), ("Origin", "https://other.test")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/xrd+xml; charset=utf-8"));
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let x = xmpp_cm::xml::parse_document(r.body.as_bytes(), &Default::default(), &[]).expect("XRD parses");
        assert!(x.is("XRD", "http://docs.oasis-open.org/ns/xri/xrd-1.0"), "{}", r.body);
        let links: Vec<(String, String)> = x
            .elements()
            .filter(|l| l.name == "Link")
            .map(|l| (l.attr("rel").unwrap_or("").to_string(), l.attr("href").unwrap_or("").to_string()))
            .collect();
        let mut links = links;
        links.sort();
        assert_eq!(
            links,
            vec![
                ("urn:xmpp:alt-connections:websocket".to_string(), "wss://chat.example.test/xmpp-websocket".to_string()),
                ("urn:xmpp:alt-connections:xbosh".to_string(), "https://chat.example.test/http-bind".to_string()),
            ]
        );
    }
    let j = req(&addr, "GET", "/.well-known/host-meta.json", &[("Host", "chat.example.test")]).await;
    assert_eq!((j.status, j.header("content-type")), (200, Some("application/json")));
    assert_eq!(j.header("access-control-allow-origin"), Some("*"));
    assert!(j.body.contains("{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"https://chat.example.test/http-bind\"}"), "{}", j.body);
    assert!(j.body.contains("{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://chat.example.test/xmpp-websocket\"}"), "{}", j.body);
    // HEAD and a CORS preflight.
    let h = req(&addr, "HEAD", "/.well-known/host-meta", &[("Host", &host)]).await;
    assert_eq!((h.status, h.body.as_str()), (200, ""));
    let o = req(
        &addr,
        "OPTIONS",
        "/.well-known/host-meta",
        &[("Host", &host), ("Origin", "https://other.test"), ("Access-Control-Request-Method", "GET")],
    )
    .await;
    assert_eq!(o.status, 204);
    assert_eq!(o.header("access-control-allow-origin"), Some("*"));
    assert!(o.header("access-control-allow-methods").unwrap_or("").contains("GET"));
    // Unknown host: 404 (DISCO-06). (Plain-HTTP requests without `public_url` get no links:
    // host_meta_scheme_comes_only_from_tls_or_trusted_proxies, DISCO-03.)
    let u = req(&addr, "GET", "/.well-known/host-meta", &[("Host", "unknown.test")]).await;
    assert_eq!(u.status, 404);
    // The permissive header stays on these two documents (DISCO-05): BOSH keeps its own policy.
    let bosh = req(&addr, "OPTIONS", "/http-bind", &[("Host", &host), ("Origin", "https://other.test"), ("Access-Control-Request-Method", "POST")]).await;
    assert_ne!(bosh.header("access-control-allow-origin"), Some("*"), "{bosh:?}");
    // Host-meta requests are counted under their own route.
    let m = get(&format!("{}/metrics", cm.admin_url())).await.body;
    assert!(value(&m, "xmpp_cm_http_requests_total{route=\"host_meta\",status=\"200\"}").unwrap_or(0.0) >= 4.0, "{m}");
    assert!(samples(&m).contains(&"xmpp_cm_http_requests_total{route=\"host_meta\",status=\"404\"} 1"), "{m}");
}

/// DISCO-03, DISCO-09: without `public_url`, links are derived only for requests that really
/// came over HTTPS: xmpp-cm's own TLS, or a trusted proxy's `X-Forwarded-Proto: https`; the
/// header from anyone else is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_meta_scheme_comes_only_from_tls_or_trusted_proxies() {
    let p = Prosody::start(ProsodyOpts::default());
    // Untrusted: the header is ignored.
    let cm = XmppCm::start(&XmppCm::config_for(&p));
    let r = req(&cm.http_addr(), "GET", "/.well-known/host-meta", &[("Host", "localhost:666"), ("X-Forwarded-Proto", "https")]).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("href"), "untrusted X-Forwarded-Proto believed: {}", r.body);
    drop(cm);
    // Trusted loopback proxy: believed.
    let cm = XmppCm::start(&XmppCm::config_with(&p, &[("http.trusted_proxies", "[\"127.0.0.1/32\", \"::1/128\"]")]));
    let r = req(&cm.http_addr(), "GET", "/.well-known/host-meta", &[("Host", "localhost:666"), ("X-Forwarded-Proto", "https")]).await;
    assert!(r.body.contains("href='https://localhost:666/http-bind'"), "{}", r.body);
    assert!(r.body.contains("href='wss://localhost:666/xmpp-websocket'"), "{}", r.body);
}

//! The front page through the real public router (`oneshot`, no socket): the page, its policy
//! and URLs, the two assets, methods, the switch, and the static promises the CSP relies on.

use super::*;
use tower::ServiceExt;

fn config() -> Config {
    let mut c = Config::default();
    c.upstream.domains = vec!["a.test".into()];
    c.upstream.routes.insert("b.test".into(), "127.0.0.1:1".into());
    c
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn request(state: &Arc<AppState>, method: &str, path: &str, host: Option<&str>) -> Got {
    let mut b = axum::http::Request::builder().method(method).uri(path);
    if let Some(h) = host {
        b = b.header(header::HOST, h);
    }
    let r = crate::server::public_router(state.clone()).oneshot(b.body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = r.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    Got { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'; connect-src 'self' ws: wss:";

#[tokio::test]
async fn page_names_the_domains_and_urls_under_a_strict_policy() {
    let state = AppState::new(Arc::new(config())).unwrap();
    let g = request(&state, "GET", "/", Some("Chat.Example.org:5280")).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header(header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(g.header(header::CONTENT_SECURITY_POLICY), POLICY);
    assert_eq!(g.header(header::CACHE_CONTROL), "no-store");
    assert_eq!(g.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    for want in [
        "data-domain=\"a.test\"",
        "data-bosh=\"http://chat.example.org:5280/http-bind\"",
        "data-websocket=\"ws://chat.example.org:5280/xmpp-websocket\"",
        "<code id=\"bosh-url\">http://chat.example.org:5280/http-bind</code>",
        "<code id=\"websocket-url\">ws://chat.example.org:5280/xmpp-websocket</code>",
        "<strong>a.test and b.test</strong>",
        "Test this network",
        "href=\"xmpp-cm/front.css\"",
        "src=\"xmpp-cm/front.js\"",
        "href=\"xmpp-cm/icon.svg\"",
    ] {
        assert!(g.body.contains(want), "missing {want:?} in\n{}", g.body);
    }
    assert!(!g.body.contains("{{"), "a placeholder was left: {}", g.body);
    // Counted under its own route label.
    let m = crate::metrics::metrics().encode();
    assert!(m.lines().any(|l| l.starts_with("xmpp_cm_http_requests_total{route=\"front_page\",status=\"200\"} ")), "{m}");
}

#[tokio::test]
async fn assets_have_their_types_and_head_and_other_methods_are_sane() {
    let state = AppState::new(Arc::new(config())).unwrap();
    let js = request(&state, "GET", JS_PATH, Some("h.test")).await;
    assert_eq!((js.status, js.header(header::CONTENT_TYPE)), (StatusCode::OK, "text/javascript; charset=utf-8"));
    assert_eq!(js.body, JS);
    assert_eq!(js.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let css = request(&state, "GET", CSS_PATH, None).await;
    assert_eq!((css.status, css.header(header::CONTENT_TYPE)), (StatusCode::OK, "text/css; charset=utf-8"));
    assert_eq!(css.body, CSS);
    let icon = request(&state, "GET", ICON_PATH, None).await;
    assert_eq!((icon.status, icon.header(header::CONTENT_TYPE)), (StatusCode::OK, "image/svg+xml"));

    let head = request(&state, "HEAD", "/", Some("h.test")).await;
    assert_eq!((head.status, head.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(head.header(header::CONTENT_SECURITY_POLICY), POLICY);
    for (method, path) in [("POST", "/"), ("DELETE", "/"), ("OPTIONS", "/"), ("PUT", JS_PATH)] {
        let g = request(&state, method, path, Some("h.test")).await;
        assert_eq!((g.status, g.header(header::ALLOW)), (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD"), "{method} {path}");
    }
    // The neighbours are untouched.
    assert_eq!(request(&state, "GET", "/index.html", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(request(&state, "GET", "/xmpp-cm/other.js", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(request(&state, "GET", "/http-bind", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn off_means_404_everywhere_and_a_reload_switches_it() {
    let mut c = config();
    c.http.front_page = false;
    let state = AppState::new(Arc::new(c.clone())).unwrap();
    for (method, path) in [("GET", "/"), ("HEAD", "/"), ("POST", "/"), ("GET", JS_PATH), ("GET", CSS_PATH), ("GET", ICON_PATH)] {
        let g = request(&state, method, path, Some("h.test")).await;
        assert_eq!(g.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(g.header(header::CONTENT_SECURITY_POLICY).is_empty());
    }
    // Read per request: the same router serves it once a reload turns it on.
    c.http.front_page = true;
    state.replace_config(c).unwrap();
    assert_eq!(request(&state, "GET", "/", Some("h.test")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_transport_on_slash_keeps_its_path() {
    let mut c = config();
    c.http.bosh_path = "/".into();
    let state = AppState::new(Arc::new(c)).unwrap();
    let g = request(&state, "GET", "/", Some("h.test")).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(g.body.contains("BOSH endpoint"), "{}", g.body);
    assert_eq!(request(&state, "GET", JS_PATH, None).await.status, StatusCode::OK);
}

#[test]
fn links_from_public_url_host_and_scheme() {
    let uri: Uri = "/".parse().unwrap();
    let derived = config();
    let mut public = config();
    public.http.public_url = "https://chat.example.org/xmpp/".into();
    let host = |h: &str| {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        m
    };
    let none = HeaderMap::new();
    let cases: Vec<(&Config, HeaderMap, bool, (&str, &str))> = vec![
        (&derived, host("h.test:8080"), false, ("http://h.test:8080/http-bind", "ws://h.test:8080/xmpp-websocket")),
        (&derived, host("h.test"), true, ("https://h.test/http-bind", "wss://h.test/xmpp-websocket")),
        (&derived, host("[::1]:5280"), false, ("http://[::1]:5280/http-bind", "ws://[::1]:5280/xmpp-websocket")),
        // Nothing usable to echo: bare paths, which the script resolves against the page.
        (&derived, host("h.test\"><script>"), false, ("/http-bind", "/xmpp-websocket")),
        (&derived, host("user@h.test"), false, ("/http-bind", "/xmpp-websocket")),
        (&derived, HeaderMap::new(), false, ("/http-bind", "/xmpp-websocket")),
        // The operator's URL wins over whatever Host said.
        (&public, host("internal:5280"), false, ("https://chat.example.org/xmpp/http-bind", "wss://chat.example.org/xmpp/xmpp-websocket")),
    ];
    for (c, h, secure, (bosh, websocket)) in cases {
        assert_eq!(links(c, &h, &uri, secure), Links { bosh: bosh.into(), websocket: websocket.into() }, "{h:?} secure={secure}");
    }
    // An HTTP/2 request carries the authority in the URI.
    let h2: Uri = "https://h2.test:8443/".parse().unwrap();
    assert_eq!(links(&derived, &none, &h2, true).bosh, "https://h2.test:8443/http-bind");
    // The public URL's origin may be connected to from a page reached under another name.
    assert_eq!(csp(&public.http), format!("{POLICY} https://chat.example.org"));
    assert_eq!(csp(&derived.http), POLICY);
}

#[test]
fn inserted_values_are_escaped() {
    let mut c = config();
    c.upstream.domains = vec!["x\"<y>&z".into()];
    let page = render(&c, &Links { bosh: "/b?a=1&c='2'".into(), websocket: "/w".into() });
    assert!(page.contains("data-domain=\"x&quot;&lt;y>&amp;z\""), "{page}");
    assert!(page.contains("data-bosh=\"/b?a=1&amp;c=&apos;2&apos;\""), "{page}");
}

/// What the policy forbids must not be in the files: inline scripts and styles, inline event
/// handlers, anything fetched from another origin, `eval`-like calls.
#[test]
fn assets_obey_the_policy() {
    let page = PAGE.to_ascii_lowercase();
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script src=\"xmpp-cm/front.js\" defer></script>"));
    assert!(!page.contains("<style") && !page.contains(" style="), "inline style");
    assert!(!has_inline_handler(&page), "inline event handler");
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!page.contains(external), "an external resource: {external}");
    }
    assert!(!CSS.contains("@import") && !CSS.contains("url("), "a stylesheet fetch");
    for bad in ["eval(", "new function", "innerhtml", "document.write", "settimeout('", "settimeout(\""] {
        assert!(!JS.to_ascii_lowercase().contains(bad), "{bad} in front.js");
    }
    assert!(JS_PATH.ends_with("front.js") && CSS_PATH.ends_with("front.css"));
}

/// ` onclick=`-style attributes in `page` (lowercased).
fn has_inline_handler(page: &str) -> bool {
    page.split(" on").skip(1).any(|rest| {
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    })
}

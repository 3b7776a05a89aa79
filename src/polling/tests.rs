//! The pure parts of XEP-0025 against the examples of the XEP text (request format, key
//! sequence, changing keys, error identifiers), and the refusals through the real public
//! router (`oneshot`, no socket, nothing dialled).

use super::wire::{hash_key, new_id, next_key, parse, Fault, Request};
use super::*;
use proptest::prelude::*;
use tower::ServiceExt;

/// §4 "key sequence": K(n, "foo") for n = 0..=6.
const FOO: [&str; 7] = [
    "foo",
    "C+7Hteo/D9vJXQ3UfzxbwnXaijM=",
    "6UU8CDmH3O4aHFmCqSORCn721+M=",
    "vFFYSOhGyaGUgLrldtMBX7x91Wc=",
    "ZaDxCilBVTHS9dJfbBo1NsC2b+8=",
    "moPFsvHytDGiJQOjp186AMXAeP0=",
    "VvxEk07IFy6hUmG/PPBlTLE2fiA=",
];

const HEADER: &str = "<stream:stream to=\"jabber.com\"\n  xmlns=\"jabber:client\"\n  xmlns:stream=\"http://etherx.jabber.org/streams\">";
const IQ: &str = "<iq type=\"get\" id=\"WEBCLIENT3\">\n  <query xmlns=\"jabber:iq:auth\">\n    <username>hildjj</username>\n  </query>\n</iq>";

fn req<'a>(id: &'a str, key: Option<&'a str>, new_key: Option<&'a str>, payload: &'a str) -> Request<'a> {
    Request { id, key, new_key, payload: payload.as_bytes() }
}

#[test]
fn request_format_table() {
    let change = "7776:2054;C+7Hteo/D9vJXQ3UfzxbwnXaijM=;Tr697Eff02+32FZp38Xaq2+3Bv4=,<presence/>";
    let cases: Vec<(String, Result<Request<'static>, Fault>)> = vec![
        // The XEP's examples: initial and next request without keys, with keys, changing key.
        (format!("0,{HEADER}"), Ok(req("0", None, None, HEADER))),
        (format!("7776:2054,{IQ}"), Ok(req("7776:2054", None, None, IQ))),
        (format!("0;{},{HEADER}", FOO[6]), Ok(req("0", Some(FOO[6]), None, HEADER))),
        (format!("7776:2054;{},{IQ}", FOO[5]), Ok(req("7776:2054", Some(FOO[5]), None, IQ))),
        (change.into(), Ok(req("7776:2054", Some(FOO[1]), Some("Tr697Eff02+32FZp38Xaq2+3Bv4="), "<presence/>"))),
        // Nothing to send: the identifier followed by a comma.
        ("7776:2054,".into(), Ok(req("7776:2054", None, None, ""))),
        ("ab-12;k,".into(), Ok(req("ab-12", Some("k"), None, ""))),
        // For identifier 0 a new key "must be ignored".
        ("0;a;b,x".into(), Ok(req("0", Some("a"), None, "x"))),
        // The payload is everything after the first comma, separators included, unchecked.
        ("s,<a b='1;2,3'>".into(), Ok(req("s", None, None, "<a b='1;2,3'>"))),
        ("s,<stre".into(), Ok(req("s", None, None, "<stre"))),
        // Malformed prefixes.
        ("".into(), Err(Fault::BadRequest)),
        ("7776:2054".into(), Err(Fault::BadRequest)),
        (",<presence/>".into(), Err(Fault::BadRequest)),
        ("a b,".into(), Err(Fault::BadRequest)),
        ("a_b,".into(), Err(Fault::BadRequest)),
        ("a;,".into(), Err(Fault::BadRequest)),
        ("a;k;,".into(), Err(Fault::BadRequest)),
        ("a;k;n;m,".into(), Err(Fault::BadRequest)),
        ("a;k*y,".into(), Err(Fault::BadRequest)),
        ("é,".into(), Err(Fault::BadRequest)),
        (format!("{},", "a".repeat(600)), Err(Fault::BadRequest)),
    ];
    for (body, want) in &cases {
        assert_eq!(&parse(body.as_bytes()), want, "{body:?}");
    }
    assert!(parse(b"0,").unwrap().creates() && !parse(b"00,").unwrap().creates());
}

#[test]
fn key_sequence_of_the_xep() {
    for n in 1..FOO.len() {
        assert_eq!(hash_key(FOO[n - 1]), FOO[n], "K({n}, foo)");
    }
    // Created with K(6); each request sends the one before; K(1) comes with a new key.
    let mut last = Some(FOO[6].to_string());
    for n in (2..6).rev() {
        last = next_key(last.as_deref(), Some(FOO[n]), None).unwrap_or_else(|f| panic!("K({n}): {f:?}"));
        assert_eq!(last.as_deref(), Some(FOO[n]));
    }
    // A new chain from seed "bar": the request after the change carries its K(m-1).
    let bar: Vec<String> = std::iter::successors(Some("bar".to_string()), |k| Some(hash_key(k))).take(4).collect();
    last = next_key(last.as_deref(), Some(FOO[1]), Some(&bar[3])).unwrap();
    assert_eq!(last.as_deref(), Some(bar[3].as_str()));
    // The old chain's K(0) no longer continues anything; the new chain's K(2) does.
    assert_eq!(next_key(last.as_deref(), Some(FOO[0]), None), Err(Fault::KeySequence));
    assert_eq!(next_key(last.as_deref(), Some(&bar[2]), None).unwrap().as_deref(), Some(bar[2].as_str()));
}

#[test]
fn key_sequence_errors() {
    let last = Some(FOO[6]);
    for (last, key, new_key, want) in [
        (last, Some(FOO[4]), None, Err(Fault::KeySequence)), // skipped one
        (last, Some(FOO[6]), None, Err(Fault::KeySequence)), // replayed
        (last, None, None, Err(Fault::KeySequence)),         // keyed session, no key
        (None, Some(FOO[5]), None, Err(Fault::KeySequence)), // keyless session, a key
        (None, None, Some("x"), Ok(None)),                   // a new key alone is no key
        (None, None, None, Ok(None)),
    ] {
        assert_eq!(next_key(last, key, new_key), want, "{last:?} {key:?} {new_key:?}");
    }
}

#[test]
fn error_identifiers_of_section_3_1() {
    let ids = [Fault::Unknown, Fault::Server, Fault::BadRequest, Fault::KeySequence].map(Fault::id);
    assert_eq!(ids, ["0:0", "-1:0", "-2:0", "-3:0"]);
    for (err, want) in [
        (Error::HostUnknown, Fault::BadRequest),
        (Error::ImproperAddressing, Fault::BadRequest),
        (Error::PolicyViolation(Policy::BodyTooLarge), Fault::BadRequest),
        (Error::ClientXml(crate::xml::XmlError::Restricted("comment")), Fault::BadRequest),
        (Error::ItemNotFound("x"), Fault::Unknown),
        (Error::Shutdown, Fault::Server),
        (Error::UpstreamLost("x".into()), Fault::Server),
        (Error::TooMany { what: crate::error::AdmissionLimit::Sessions, status: 503 }, Fault::Server),
    ] {
        assert_eq!(Fault::of(&err), want, "{err}");
    }
}

#[test]
fn session_ids_are_identifiers_that_are_not_errors() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
    assert_eq!(ids.len(), 1000, "128 random bits do not repeat");
    for id in &ids {
        assert!(!id.ends_with(":0") && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(parse(format!("{id},").as_bytes()).map(|r| (r.id.len(), r.creates())), Ok((32, false)));
    }
}

proptest! {
    #[test]
    fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&body);
    }

    #[test]
    fn rendered_requests_parse_back(
        id in "[A-Za-z0-9:-]{1,40}",
        key in proptest::option::of("[A-Za-z0-9+/=]{1,28}"),
        new_key in proptest::option::of("[A-Za-z0-9+/=]{1,28}"),
        payload in ".{0,80}",
    ) {
        let mut body = id.clone();
        for k in key.iter().chain(key.as_ref().and(new_key.as_ref())) {
            body.push(';');
            body.push_str(k);
        }
        body.push(',');
        body.push_str(&payload);
        let r = parse(body.as_bytes()).unwrap();
        prop_assert_eq!(r.id, id.as_str());
        prop_assert_eq!(r.key, key.as_deref());
        let new_key = if id == "0" { None } else { key.as_ref().and(new_key.as_deref()) };
        prop_assert_eq!(r.new_key, new_key);
        prop_assert_eq!(r.payload, payload.as_bytes());
    }
}

// ---------------------------------------------------------------- through the router

fn state(enabled: bool) -> Arc<AppState> {
    let mut c = crate::Config::default();
    c.upstream.domains = vec!["a.test".into()];
    c.polling.enabled = enabled;
    AppState::new(Arc::new(c)).unwrap()
}

/// POST `body` to `path`: (status, `Set-Cookie`, body).
async fn post_to(state: &Arc<AppState>, path: &str, body: &str) -> (StatusCode, String, String) {
    let req = axum::http::Request::post(path).body(axum::body::Body::from(body.to_string())).unwrap();
    let r = crate::server::public_router(state.clone()).oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let cookie = parts.headers.get(header::SET_COOKIE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, cookie, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn refusals_are_error_identifiers_with_status_200() {
    let s = state(true);
    let open = |to: &str| format!("0,<stream:stream to='{to}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    let big = format!("0,{}", "x".repeat(300_000));
    for (body, cookie) in [
        ("no comma at all".to_string(), "ID=-2:0; path=/http-poll"),
        ("nosuchsession,".into(), "ID=0:0; path=/http-poll"),
        ("nosuchsession;key,<presence/>".into(), "ID=0:0; path=/http-poll"),
        // A domain that is not served: refused before anything is resolved or dialled.
        (open("elsewhere.test"), "ID=-2:0; path=/http-poll"),
        ("0,<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>".into(), "ID=-2:0; path=/http-poll"),
        ("0,<presence/>".into(), "ID=-2:0; path=/http-poll"),
        ("0,<stream:stream to='a.te".into(), "ID=-2:0; path=/http-poll"),
        (big, "ID=-2:0; path=/http-poll"),
    ] {
        let (status, got, _) = post_to(&s, "/http-poll", &body).await;
        assert_eq!((status, got.as_str()), (StatusCode::OK, cookie), "{:.60}", body);
    }
    let (_, _, text) = post_to(&s, "/http-poll", "nosuchsession,").await;
    assert_eq!(text, "unknown or ended session");
    // Draining: no new session.
    s.shutdown.cancel();
    let (_, got, _) = post_to(&s, "/http-poll", &open("a.test")).await;
    assert_eq!(got, "ID=-1:0; path=/http-poll");
}

#[tokio::test]
async fn off_by_default_the_path_is_not_served() {
    let (status, cookie, _) = post_to(&state(false), "/http-poll", "0,").await;
    assert_eq!((status, cookie.as_str()), (StatusCode::NOT_FOUND, ""));
}

//! The pure parts of `check`: the X.509 reader against certificates rcgen made, dates, the
//! public_url host and name matching, and which features are hidden from clients. The walk
//! itself is tested against real Prosody in `tests/ops_check.rs`.

use super::front::{name_matches, url_host};
use super::walk::Features;
use super::x509::{date, summarize};
use crate::xml::{ns, Element};

#[test]
fn x509_summary_of_an_rcgen_certificate() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Test CA");
    ca.distinguished_name.push(rcgen::DnType::OrganizationName, "xmpp-cm");
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["chat.example.test".into(), "127.0.0.1".into(), "::1".into()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "chat.example.test");
    p.not_before = rcgen::date_time_ymd(2020, 2, 29);
    p.not_after = rcgen::date_time_ymd(2051, 12, 31); // GeneralizedTime (after 2049)
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();

    let s = summarize(cert.der()).expect("parsed");
    assert_eq!(s.subject, "CN=chat.example.test");
    assert_eq!(s.issuer, "CN=Test CA, O=xmpp-cm");
    assert_eq!(s.dns_names, ["chat.example.test"]);
    assert_eq!(s.names(), ["chat.example.test", "127.0.0.1", "::1"]);
    assert_eq!(date(s.not_before), "2020-02-29 00:00 UTC");
    assert_eq!(date(s.not_after), "2051-12-31 00:00 UTC");
    assert_eq!(s.not_before, 1_582_934_400);

    assert_eq!(summarize(b"not a certificate"), None);
    assert_eq!(summarize(&cert.der()[..40]), None);
}

#[test]
fn dates() {
    for (unix, want) in [(0, "1970-01-01 00:00 UTC"), (951_782_400, "2000-02-29 00:00 UTC"), (4_102_444_799, "2099-12-31 23:59 UTC")] {
        assert_eq!(date(unix), want);
    }
}

#[test]
fn public_url_hosts() {
    let cases = [
        ("https://chat.example.org", Some("chat.example.org")),
        ("https://Chat.Example.org:8443/xmpp", Some("chat.example.org")),
        ("https://[2001:db8::1]:443/", Some("2001:db8::1")),
        ("https://user@host.test/x?y#z", Some("host.test")),
        ("https://", None),
    ];
    for (url, want) in cases {
        assert_eq!(url_host(url).as_deref(), want, "{url}");
    }
}

#[test]
fn certificate_names_cover_hosts() {
    let cases = [
        ("chat.example.org", "chat.example.org", true),
        ("CHAT.example.org", "chat.example.org.", true),
        ("*.example.org", "chat.example.org", true),
        ("*.example.org", "example.org", false),
        ("*.example.org", "a.chat.example.org", false),
        ("other.example.org", "chat.example.org", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("::1", "0:0::1", true),
    ];
    for (name, host, want) in cases {
        assert_eq!(name_matches(name, host), want, "{name} vs {host}");
    }
}

fn features(children: Vec<Element>) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    for c in children {
        f = f.with_child(c);
    }
    f
}

fn mechs(names: &[&str]) -> Element {
    let mut m = Element::new("mechanisms", ns::SASL);
    for n in names {
        m = m.with_child(Element::new("mechanism", ns::SASL).with_text(*n));
    }
    m
}

#[test]
fn hidden_features_are_what_relay_filters() {
    let f = features(vec![
        Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
        mechs(&["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"]),
        Element::new("compression", ns::COMPRESS_FEATURE).with_child(Element::new("method", ns::COMPRESS_FEATURE).with_text("zlib")),
        Element::new("sm", ns::SM3),
    ]);
    let got = Features::of(&f);
    assert_eq!(got.offered, ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1", "PLAIN"]);
    assert_eq!(got.for_clients, ["SCRAM-SHA-1", "PLAIN"]);
    assert_eq!(got.others, ["starttls (required)", "compression (zlib)", "sm (sm:3)"]);
    assert_eq!(got.hidden.len(), 3, "{:?}", got.hidden);
    assert!(got.hidden[0].starts_with("starttls (required) ("), "{:?}", got.hidden);
    assert!(got.hidden[1].starts_with("compression (zlib) ("), "{:?}", got.hidden);
    assert!(got.hidden[2].starts_with("SCRAM-SHA-1-PLUS (channel binding"), "{:?}", got.hidden);
    assert!(!got.detail().contains("none could log in"));

    // Only channel-binding mechanisms: nothing reaches clients.
    let only_plus = Features::of(&features(vec![mechs(&["SCRAM-SHA-256-PLUS"])]));
    assert!(only_plus.for_clients.is_empty());
    assert!(only_plus.detail().contains("none could log in"), "{}", only_plus.detail());
}

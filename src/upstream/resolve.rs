//! Finding where to connect: static route → SRV (`_xmpps-client._tcp` direct TLS and
//! `_xmpp-client._tcp` STARTTLS, merged in priority/weight order) → the domain on port 5222.
//!
//! The DNS part is thin ([`resolve`]; [`explain`] also keeps the SRV answers and where the
//! targets came from, for `xmpp-cm check`); the decisions live in the pure [`plan`] and
//! [`order_srv`], tested with tables. Resolving each target's host to addresses is left to
//! [`super::connect`], which tries every address of a target before the next one (UP-04).
//!
//! Rules (RFC 6120 §3.2, RFC 2782, XEP-0368):
//! - a static route from the config wins and no DNS query is made (UP-02);
//! - both SRV record sets are merged into one ordering: priority ascending, weighted random
//!   within a priority (UP-03, UP-08);
//! - a lone record with target `.` means that service is deliberately absent: for
//!   `_xmpp-client` the session fails (UP-05), for `_xmpps-client` only direct TLS is skipped
//!   (UP-11);
//! - no SRV record at all → the domain itself on 5222 (UP-07); if SRV records exist and all
//!   their targets fail there is no such fallback (UP-06): the list simply does not contain it.

use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::proto::op::ResponseCode;

use crate::error::{ConnectKind, Error};

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP literal (not the XMPP domain, which stays the TLS server name).
    pub host: String,
    pub port: u16,
    /// XEP-0368 target: TLS from the first byte, ALPN `xmpp-client`, never STARTTLS inside.
    pub direct_tls: bool,
    /// From the config (a static route, an allow-listed BOSH `route`): connected to as is.
    /// Targets learned from DNS (SRV, the domain:5222 fallback) are not, and go through the
    /// SSRF guard ([`refused_address`]) unless `upstream.allow_private_targets` is set.
    pub trusted: bool,
}

/// One SRV record as the planner sees it. `target` is without the trailing dot; `.` itself
/// (the root name) is kept as `"."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Default port of `_xmpp-client` (RFC 6120 §3.2.2 fallback).
pub const DEFAULT_PORT: u16 = 5222;

/// Where a session's targets came from ([`Resolution::source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `upstream.routes` names the domain: used as written, no DNS query (UP-02).
    Static,
    /// An allow-listed BOSH `route` ([`super::connect_via`]).
    Given,
    /// SRV records (`_xmpps-client` and `_xmpp-client` merged).
    Srv,
    /// No SRV record at all: the domain itself on [`DEFAULT_PORT`] (UP-07).
    Fallback,
}

/// One SRV query and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvAnswer {
    /// The query name, fully qualified (`_xmpp-client._tcp.example.org.`).
    pub name: String,
    /// The records as answered (empty when there were none).
    pub records: Vec<Srv>,
    /// Why there are no records ("no records (NXDOMAIN)", a timeout…); `None` when answered.
    pub failure: Option<String>,
}

/// Everything [`resolve`] decided, and why: what `xmpp-cm check` prints as its route step and
/// what [`super::connect`] walks.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub source: Source,
    /// Both SRV answers, `_xmpps-client` first; empty for static and given routes.
    pub srv: Vec<SrvAnswer>,
    /// The ordered targets, or the `Dns` error that ends the session here.
    pub targets: Result<Vec<Target>, Error>,
}

impl Resolution {
    /// A route the caller chose (an allow-listed BOSH `route`).
    pub fn given(target: Target) -> Resolution {
        Resolution { source: Source::Given, srv: Vec::new(), targets: Ok(vec![target]) }
    }
}

/// Ordered targets for `domain`. Errors are `Connect { kind: Dns }`.
pub async fn resolve(ctx: &super::Upstream, domain: &str) -> Result<Vec<Target>, Error> {
    explain(ctx, domain).await.targets
}

/// [`resolve`], keeping the route's source and the SRV answers it was decided from.
pub async fn explain(ctx: &super::Upstream, domain: &str) -> Resolution {
    if let Some((host, port)) = ctx.config.route_for(domain) {
        let targets = Ok(vec![Target { host, port, direct_tls: false, trusted: true }]);
        return Resolution { source: Source::Static, srv: Vec::new(), targets };
    }
    let domain = domain.trim_end_matches('.');
    // A fully-qualified query name, so resolv.conf search domains are never appended.
    let xmpps_name = format!("_xmpps-client._tcp.{domain}.");
    let xmpp_name = format!("_xmpp-client._tcp.{domain}.");
    let (xmpps, xmpp) = tokio::join!(
        ctx.resolver.srv_lookup(xmpps_name.as_str()),
        ctx.resolver.srv_lookup(xmpp_name.as_str())
    );
    let xmpps = srv_answer(xmpps_name, xmpps);
    let xmpp = srv_answer(xmpp_name, xmpp);
    let targets = plan(domain, &xmpps.records, &xmpp.records, &mut random_below);
    let source = if usable(&xmpps.records) + usable(&xmpp.records) == 0 { Source::Fallback } else { Source::Srv };
    Resolution { source, srv: vec![xmpps, xmpp], targets }
}

/// SRV lookup result → records; any failure (NXDOMAIN, NODATA, timeout, SERVFAIL) counts as
/// "no answer" (UP-07), logged at debug when it is more than the usual "no records".
fn srv_answer(
    name: String,
    r: Result<hickory_resolver::lookup::SrvLookup, hickory_resolver::error::ResolveError>,
) -> SrvAnswer {
    match r {
        Ok(lookup) => {
            let records: Vec<Srv> = lookup
                .iter()
                .map(|s| Srv {
                    priority: s.priority(),
                    weight: s.weight(),
                    port: s.port(),
                    target: srv_target(&s.target().to_ascii()),
                })
                .collect();
            let failure = records.is_empty().then(|| "no records".to_string());
            SrvAnswer { name, records, failure }
        }
        Err(e) => {
            let failure = match e.kind() {
                ResolveErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
                    ResponseCode::NXDomain => "no such name (NXDOMAIN)".to_string(),
                    ResponseCode::NoError => "no records (NODATA)".to_string(),
                    other => format!("no records ({other})"),
                },
                _ => {
                    tracing::debug!(query = name, error = %e, "SRV lookup failed; treated as no records");
                    format!("lookup failed, treated as no records: {e}")
                }
            };
            SrvAnswer { name, records: Vec::new(), failure: Some(failure) }
        }
    }
}

/// `example.com.` → `example.com`; the root name stays `.`.
fn srv_target(name: &str) -> String {
    let t = name.trim_end_matches('.');
    if t.is_empty() {
        ".".to_string()
    } else {
        t.to_string()
    }
}

/// Does this record set say "service deliberately absent" (a lone `.` target)?
fn absent(records: &[Srv]) -> bool {
    records.len() == 1 && records[0].target == "."
}

/// How many records [`plan`] would use from one set (none when the set says "absent").
fn usable(records: &[Srv]) -> usize {
    if absent(records) {
        return 0;
    }
    records.iter().filter(|r| srv_target(&r.target) != ".").count()
}

/// The pure decision: SRV answers (empty = no answer) → ordered targets, or a `Dns` error when
/// `_xmpp-client` says the service is absent and there is no usable direct-TLS record.
/// `rand_below(n)` returns a uniform integer in `0..n` (n ≥ 1).
pub fn plan(
    domain: &str,
    xmpps: &[Srv],
    xmpp: &[Srv],
    rand_below: &mut dyn FnMut(u32) -> u32,
) -> Result<Vec<Target>, Error> {
    // Targets as DNS writes them (`host.` / `.`) or already trimmed: both accepted.
    let norm = |records: &[Srv]| -> Vec<Srv> {
        records.iter().map(|r| Srv { target: srv_target(&r.target), ..r.clone() }).collect()
    };
    let (xmpps, xmpp) = (&norm(xmpps)[..], &norm(xmpp)[..]);
    let usable = |records: &[Srv], direct_tls: bool| -> Vec<(Srv, bool)> {
        if absent(records) {
            return Vec::new();
        }
        // `.` among other records is malformed; skip just that record.
        records.iter().filter(|r| r.target != ".").map(|r| (r.clone(), direct_tls)).collect()
    };
    let mut merged = usable(xmpps, true);
    merged.extend(usable(xmpp, false));
    if merged.is_empty() {
        if absent(xmpp) {
            return Err(Error::Connect {
                kind: ConnectKind::Dns,
                detail: format!("SRV _xmpp-client._tcp.{domain} says the service is absent ('.')"),
            });
        }
        if xmpp.is_empty() {
            return Ok(vec![Target { host: domain.to_string(), port: DEFAULT_PORT, direct_tls: false, trusted: false }]);
        }
        // Only unusable records ('.' mixed with nothing else valid) remain.
        return Err(Error::Connect {
            kind: ConnectKind::Dns,
            detail: format!("SRV records for {domain} name no usable target"),
        });
    }
    Ok(order_srv(merged, rand_below)
        .into_iter()
        .map(|(r, direct_tls)| Target { host: r.target, port: r.port, direct_tls, trusted: false })
        .collect())
}

/// RFC 2782 ordering: priority ascending; within one priority, repeatedly pick a record with
/// probability proportional to its weight. The pick is uniform in `0..sum` and the first record
/// whose running sum exceeds it is taken (as Go's resolver does): exact weight proportions,
/// where RFC 2782's literal `0..=sum` would favour the first record. Weight-0 records therefore
/// come after every weighted record of their priority, in answer order. Generic over a tag
/// carried with each record.
pub fn order_srv<T>(mut records: Vec<(Srv, T)>, rand_below: &mut dyn FnMut(u32) -> u32) -> Vec<(Srv, T)> {
    records.sort_by_key(|(r, _)| r.priority); // stable: answer order within a priority
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some((first, tag)) = rest.next() {
        let prio = first.priority;
        let mut group = vec![(first, tag)];
        while let Some(next) = rest.next_if(|(r, _)| r.priority == prio) {
            group.push(next);
        }
        loop {
            let total: u32 = group.iter().map(|(r, _)| u32::from(r.weight)).sum();
            if group.len() <= 1 || total == 0 {
                break;
            }
            let pick = rand_below(total);
            let mut running = 0u32;
            let mut idx = group.len() - 1;
            for (i, (r, _)) in group.iter().enumerate() {
                running += u32::from(r.weight);
                if running > pick {
                    idx = i;
                    break;
                }
            }
            out.push(group.remove(idx));
        }
        out.extend(group);
    }
    out
}

/// The SSRF guard: why a DNS-learned target address must not be connected to, or `None` when
/// it is an ordinary public address. A hostile or compromised DNS zone for a served domain
/// could otherwise point xmpp-cm at internal services (cloud metadata on 169.254.169.254, an
/// admin port on loopback, hosts on the private network). IPv4-mapped IPv6 addresses are
/// judged as the IPv4 address they carry.
pub fn refused_address(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_unspecified() || a == 0 {
                Some("unspecified (0.0.0.0/8)")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private (RFC 1918)")
            } else if v4.is_link_local() {
                Some("link-local (169.254.0.0/16)")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared address space (RFC 6598)")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() {
                Some("broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified (::)")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local (fc00::/7)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local (fe80::/10)")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local (fec0::/10)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// A uniform integer in `0..n` from the OS CSPRNG (n ≥ 1). Modulo bias is irrelevant at SRV
/// weight scales (sums ≤ 65535 × records, far below 2^64).
fn random_below(n: u32) -> u32 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return 0; // no randomness: answer order, still RFC-correct priorities
    }
    (u64::from_le_bytes(b) % u64::from(n.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv { priority, weight, port, target: target.into() }
    }

    fn t(host: &str, port: u16, direct_tls: bool) -> Target {
        Target { host: host.into(), port, direct_tls, trusted: false }
    }

    /// A scripted "random" source: returns the queued values (clamped to the range asked).
    fn script(vals: &[u32]) -> impl FnMut(u32) -> u32 + '_ {
        let mut i = 0;
        move |n| {
            let v = vals.get(i).copied().unwrap_or(0);
            i += 1;
            v.min(n - 1)
        }
    }

    #[test]
    fn plan_table() {
        type Case = (&'static str, Vec<Srv>, Vec<Srv>, Result<Vec<Target>, &'static str>);
        let cases: Vec<Case> = vec![
            ("no SRV at all: domain:5222", vec![], vec![], Ok(vec![t("d.test", 5222, false)])),
            (
                "xmpp-client only, priorities ascending",
                vec![],
                vec![srv(20, 0, 5223, "b.d.test."), srv(10, 0, 5222, "a.d.test")],
                Ok(vec![t("a.d.test", 5222, false), t("b.d.test", 5223, false)]),
            ),
            (
                "merged: xmpps prio 5 before xmpp prio 10",
                vec![srv(5, 0, 443, "tls.d.test")],
                vec![srv(10, 0, 5222, "plain.d.test")],
                Ok(vec![t("tls.d.test", 443, true), t("plain.d.test", 5222, false)]),
            ),
            (
                "merged: xmpp prio 1 before xmpps prio 5",
                vec![srv(5, 0, 5223, "tls.d.test")],
                vec![srv(1, 0, 5222, "plain.d.test")],
                Ok(vec![t("plain.d.test", 5222, false), t("tls.d.test", 5223, true)]),
            ),
            (
                "xmpp-client '.' → service absent, no fallback",
                vec![],
                vec![srv(0, 0, 0, ".")],
                Err("absent"),
            ),
            (
                "xmpps '.' + xmpp records → STARTTLS only",
                vec![srv(0, 0, 0, ".")],
                vec![srv(10, 0, 5222, "plain.d.test")],
                Ok(vec![t("plain.d.test", 5222, false)]),
            ),
            (
                "xmpps '.' and no xmpp records → the usual 5222 fallback",
                vec![srv(0, 0, 0, ".")],
                vec![],
                Ok(vec![t("d.test", 5222, false)]),
            ),
            (
                "xmpps records only → direct TLS only, no 5222 fallback appended",
                vec![srv(0, 0, 5223, "tls.d.test")],
                vec![],
                Ok(vec![t("tls.d.test", 5223, true)]),
            ),
            (
                "xmpp '.' but a real xmpps record → direct TLS only",
                vec![srv(0, 0, 5223, "tls.d.test")],
                vec![srv(0, 0, 0, ".")],
                Ok(vec![t("tls.d.test", 5223, true)]),
            ),
            (
                "'.' among real records is skipped",
                vec![],
                vec![srv(0, 0, 0, "."), srv(5, 0, 5222, "a.d.test")],
                Ok(vec![t("a.d.test", 5222, false)]),
            ),
        ];
        for (name, xmpps, xmpp, want) in cases {
            let mut rng = script(&[]);
            let got = plan("d.test", &xmpps, &xmpp, &mut rng);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(Error::Connect { kind: ConnectKind::Dns, detail }), Err(w)) => {
                    assert!(detail.contains(w), "{name}: {detail}")
                }
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn order_srv_weighted_picks_follow_running_sums() {
        // One priority, answer order w3, w0, w1: running sums 3, 3, 4.
        let recs = || {
            vec![
                (srv(1, 3, 1, "w3"), ()),
                (srv(1, 0, 1, "w0"), ()),
                (srv(1, 1, 1, "w1"), ()),
            ]
        };
        let names = |v: Vec<(Srv, ())>| v.into_iter().map(|(r, _)| r.target).collect::<Vec<_>>();
        let cases: &[(&[u32], &[&str])] = &[
            // pick 0 → w3; then w0, w1 (sums 0, 1): pick 0 → w1; w0 (weight 0) last.
            (&[0, 0], &["w3", "w1", "w0"]),
            (&[2, 0], &["w3", "w1", "w0"]),
            // pick 3 → w1 (running 4 > 3); then w3, w0 (sums 3, 3): w3; w0 last.
            (&[3, 0], &["w1", "w3", "w0"]),
        ];
        for (rolls, want) in cases {
            let mut rng = script(rolls);
            assert_eq!(names(order_srv(recs(), &mut rng)), *want, "rolls {rolls:?}");
        }
        // All weights 0: answer order.
        let zeros = vec![(srv(1, 0, 1, "a"), ()), (srv(1, 0, 1, "b"), ())];
        assert_eq!(names(order_srv(zeros, &mut script(&[]))), ["a", "b"]);
    }

    #[test]
    fn order_srv_priority_beats_weight_and_keeps_tags() {
        let recs = vec![
            (srv(20, 100, 1, "late"), 'a'),
            (srv(10, 0, 1, "early"), 'b'),
            (srv(15, 5, 1, "middle"), 'c'),
        ];
        let mut rng = script(&[]);
        let got: Vec<_> = order_srv(recs, &mut rng).into_iter().map(|(r, tag)| (r.target, tag)).collect();
        assert_eq!(got, vec![("early".into(), 'b'), ("middle".into(), 'c'), ("late".into(), 'a')]);
    }

    #[test]
    fn order_srv_weights_one_to_three_split_about_25_75() {
        let mut first_light: i32 = 0;
        for _ in 0..4000 {
            let recs = vec![(srv(1, 1, 1, "light"), ()), (srv(1, 3, 1, "heavy"), ())];
            if order_srv(recs, &mut random_below)[0].0.target == "light" {
                first_light += 1;
            }
        }
        // P(light first) = 1/4: expect 1000; ±150 is more than 5 standard deviations (27).
        let expected = 1000;
        assert!((first_light - expected).abs() < 150, "light first {first_light} times");
    }

    #[test]
    fn ssrf_guard_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("loopback")),
            ("127.53.0.9", Some("loopback")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("::ffff:192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.0.1", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456::1", Some("unique-local")),
            ("fec0::1", Some("site-local")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("::", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("100.64.0.1", Some("shared")),
            ("100.127.255.255", Some("shared")),
            // Public addresses (and the edges of the refused ranges) pass.
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("169.253.255.255", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("11.0.0.1", None),
            ("2001:db8::1", None),
            ("2a00:1450:4001:80b::200e", None),
            ("fbff::1", None),
            ("fe00::1", None),
            ("::ffff:8.8.8.8", None),
        ];
        for (ip, want) in cases {
            let got = refused_address(ip.parse().unwrap());
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(g.contains(w), "{ip}: {g}, want {w}"),
                (g, w) => panic!("{ip}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn srv_target_trims_the_root() {
        assert_eq!(srv_target("."), ".");
        assert_eq!(srv_target("xmpp.example.com."), "xmpp.example.com");
    }
}

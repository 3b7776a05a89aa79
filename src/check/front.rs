//! `xmpp-cm check --front`: the public side. The certificate files of `[http.tls]` (each
//! certificate's names and expiry, and whether the key matches — loaded with
//! [`crate::front::tls::CertStore::load`], exactly as the listeners load them), whether
//! `http.public_url` agrees with them, and the per-IP limits when no proxy is trusted
//! (issue 16 §4: behind an undeclared reverse proxy every client has the proxy's address).

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::Config;

use super::walk::{cert_line, EXPIRY_WARNING_DAYS};
use super::{x509, Report, Verdict};

/// Report the front's steps; the verdict.
pub fn check(config: &Config, report: &Report) -> Verdict {
    let mut failed: Option<&'static str> = None;
    let mut fail = |name: &'static str| {
        failed.get_or_insert(name);
    };
    let tls = &config.http.tls;
    let mut leaf: Option<x509::Summary> = None;
    if tls.cert_file.is_empty() {
        report.ok(
            "front_tls",
            Default::default(),
            "no [http.tls] cert_file/key_file: the public listeners speak plain HTTP, so TLS for clients must be \
             terminated in front of xmpp-cm (an Ingress, a load balancer, a reverse proxy)",
        );
    } else {
        let t0 = Instant::now();
        match chain(&tls.cert_file) {
            Err(e) => {
                report.fail("front_cert", t0.elapsed(), e);
                fail("front_cert");
            }
            Ok(certs) => {
                let now = x509::now();
                let sums: Vec<Option<x509::Summary>> = certs.iter().map(|c| x509::summarize(c)).collect();
                let lines = sums
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match s {
                        Some(s) => format!("[{i}] {}", cert_line(s, now)),
                        None => format!("[{i}] unreadable certificate"),
                    })
                    .collect::<Vec<_>>()
                    .join(" | ");
                let detail = format!("http.tls.cert_file '{}': chain of {}: {lines}", tls.cert_file, certs.len());
                leaf = sums.into_iter().next().flatten();
                match &leaf {
                    None => {
                        report.fail("front_cert", t0.elapsed(), format!("{detail}: the first certificate cannot be read"));
                        fail("front_cert");
                    }
                    Some(s) if s.not_after < now => {
                        report.fail("front_cert", t0.elapsed(), format!("{detail}: the certificate has EXPIRED: renew it"));
                        fail("front_cert");
                    }
                    Some(s) if s.not_before > now => {
                        report.fail("front_cert", t0.elapsed(), format!("{detail}: the certificate is not valid yet"));
                        fail("front_cert");
                    }
                    Some(s) if (s.not_after - now) / 86_400 < EXPIRY_WARNING_DAYS => {
                        let days = (s.not_after - now) / 86_400;
                        report.warn("front_cert", t0.elapsed(), format!("{detail}: expires in {days} days: renew it"));
                    }
                    Some(_) => report.ok("front_cert", t0.elapsed(), detail),
                }
            }
        }
        let t0 = Instant::now();
        match crate::front::tls::CertStore::load(tls) {
            Ok(_) => report.ok(
                "front_key",
                t0.elapsed(),
                format!("http.tls.key_file '{}' matches the certificate: the public listeners load this pair", tls.key_file),
            ),
            Err(e) => {
                report.fail(
                    "front_key",
                    t0.elapsed(),
                    format!("{e} (key_file '{}'): the public listeners cannot load this pair", tls.key_file),
                );
                fail("front_key");
            }
        }
    }

    let t0 = Instant::now();
    let pu = &config.http.public_url;
    if pu.is_empty() {
        report.ok(
            "public_url",
            t0.elapsed(),
            "empty: host-meta (XEP-0156) derives its URLs from the Host header of requests that came over HTTPS",
        );
    } else {
        match (url_host(pu), &leaf) {
            (None, _) => {
                report.fail("public_url", t0.elapsed(), format!("http.public_url '{pu}': no host in it"));
                fail("public_url");
            }
            (Some(host), Some(cert)) => {
                let names = cert.names();
                if names.iter().any(|n| name_matches(n, &host)) {
                    report.ok("public_url", t0.elapsed(), format!("'{pu}': https, and the certificate names {host}"));
                } else {
                    report.fail(
                        "public_url",
                        t0.elapsed(),
                        format!(
                            "'{pu}': the certificate in http.tls.cert_file does not name {host} (it names: {}): clients \
                             following host-meta to it would refuse the connection",
                            names.join(", ")
                        ),
                    );
                    fail("public_url");
                }
            }
            (Some(host), None) => report.ok(
                "public_url",
                t0.elapsed(),
                format!("'{pu}': https; TLS is not xmpp-cm's here, so the certificate in front of it must name {host}"),
            ),
        }
    }

    let t0 = Instant::now();
    let l = &config.limits;
    if !config.http.trusted_proxies.is_empty() {
        report.ok(
            "trusted_proxies",
            t0.elapsed(),
            format!(
                "Forwarded / X-Forwarded-For believed from {}: per-IP limits count the clients behind them",
                config.http.trusted_proxies.join(", ")
            ),
        );
    } else if l.max_sessions_per_ip == 0 && l.new_sessions_per_ip_per_sec == 0 {
        report.ok("trusted_proxies", t0.elapsed(), "empty, and no per-IP limit is set: nothing is capped per address");
    } else {
        report.warn(
            "trusted_proxies",
            t0.elapsed(),
            format!(
                "http.trusted_proxies is empty: the TCP peer is taken as the client, so if a reverse proxy or load \
                 balancer runs in front of xmpp-cm (a sidecar behind nginx, an Ingress) every client behind it shares \
                 the proxy's address, and the per-IP limits (limits.max_sessions_per_ip = {}, \
                 limits.new_sessions_per_ip_per_sec = {}) cap the whole service at {} sessions and {} new sessions per \
                 second; list the proxy in http.trusted_proxies (e.g. [\"127.0.0.1/32\"]) so the limits count the real \
                 clients from X-Forwarded-For. Without a proxy in front, nothing to do",
                l.max_sessions_per_ip, l.new_sessions_per_ip_per_sec, l.max_sessions_per_ip, l.new_sessions_per_ip_per_sec
            ),
        );
    }

    match failed {
        Some(step) => Verdict::fail(format!("the front would fail at {step}")),
        None => Verdict::ok("the front's certificate and settings are consistent"),
    }
}

/// Every certificate of a PEM file, in order.
fn chain(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("http.tls.cert_file '{path}': {e}"))?;
    if certs.is_empty() {
        return Err(format!("http.tls.cert_file '{path}': no PEM certificate in it"));
    }
    Ok(certs)
}

/// The host of `https://host[:port][/path]` (IPv6 without its brackets), lower-cased.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        match hostport.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => hostport,
        }
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Does certificate name `name` (a SAN: DNS name, `*.` wildcard, or IP) cover `host`?
pub fn name_matches(name: &str, host: &str) -> bool {
    if let (Ok(a), Ok(b)) = (name.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        return a == b;
    }
    let (name, host) = (name.to_ascii_lowercase(), host.trim_end_matches('.').to_ascii_lowercase());
    match name.strip_prefix("*.") {
        // A wildcard covers exactly one label.
        Some(base) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == base),
        None => name == host,
    }
}

//! Admission limits for new sessions, shared by every transport: sessions in total, sessions per
//! client IP, and new sessions per client IP per second (a token bucket). A [`Permit`] is held
//! by the session task for its whole life; dropping it gives the slot back. And [`Throttle`], the
//! per-session byte rate of what a client sends (`limits.client_bytes_per_sec`); [`client_xml`],
//! the one constructor of the client-side XML limits; [`client_key`], what per-IP limits count
//! under (an IPv6 /64).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::Limits;
use crate::error::{AdmissionLimit, Error};

#[derive(Debug)]
pub struct Admission {
    /// The counts in force (a configuration reload replaces them; live sessions keep their slots).
    cfg: std::sync::RwLock<AdmissionLimits>,
    /// Whether the per-IP refusal from a loopback or private address was already explained.
    explained: std::sync::atomic::AtomicBool,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    /// Token bucket per IP: (tokens, last refill).
    rate: DashMap<IpAddr, (f64, Instant)>,
}

/// One admitted session. Dropping it releases the slot.
#[derive(Debug)]
pub struct Permit {
    adm: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Admission {
    /// `no_trusted_proxies`: `http.trusted_proxies` is empty, so a proxy in front is the
    /// "client" of all its users (see `Admission::explain`).
    pub fn new(cfg: Limits, no_trusted_proxies: bool) -> Arc<Admission> {
        Arc::new(Admission {
            cfg: std::sync::RwLock::new(AdmissionLimits::of(&cfg, no_trusted_proxies)),
            explained: std::sync::atomic::AtomicBool::new(false),
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            rate: DashMap::new(),
        })
    }

    /// New limits from a configuration reload; sessions already admitted keep their slots.
    pub fn set_limits(&self, cfg: Limits, no_trusted_proxies: bool) {
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = AdmissionLimits::of(&cfg, no_trusted_proxies);
    }

    fn limits(&self) -> AdmissionLimits {
        *self.cfg.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Issue 16 §4: a per-IP limit hit by a loopback or private address while no proxy is
    /// trusted is most likely a reverse proxy nobody declared, whose users all share its
    /// address: say so once, with the setting that fixes it.
    fn explain(&self, ip: IpAddr, limit: &str, l: &AdmissionLimits) {
        let local = match ip {
            // 100.64.0.0/10 (carrier-grade NAT) is where some clusters put their pods.
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64),
            IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
        if !l.no_trusted_proxies || !local || self.explained.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            client = %ip,
            limit,
            "per-IP session limit reached by {ip}, a local address, and http.trusted_proxies is empty: if a reverse proxy or load balancer runs in front of xmpp-cm, every client behind it shares its address and these limits (limits.max_sessions_per_ip = {}, limits.new_sessions_per_ip_per_sec = {}) cap the whole service; list the proxy in http.trusted_proxies (e.g. [\"{ip}/32\"]) so the limits count the real clients from X-Forwarded-For. This is logged once.",
            l.max_sessions_per_ip,
            l.new_sessions_per_ip_per_sec
        );
    }

    pub fn active(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admit one new session from `ip` (None: unknown, only the global cap applies).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Permit, Error> {
        let l = self.limits();
        let max = l.max_sessions;
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if max > 0 && prev >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::TooMany { what: AdmissionLimit::Sessions, status: 503 });
        }
        let Some(ip) = ip.map(client_key) else { return Ok(Permit { adm: self.clone(), ip: None }) };
        if let Err(e) = self.take_token(ip, l.new_sessions_per_ip_per_sec) {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.explain(ip, "limits.new_sessions_per_ip_per_sec", &l);
            return Err(e);
        }
        let per_ip = l.max_sessions_per_ip;
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if per_ip > 0 && *n >= per_ip {
            drop(n);
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.explain(ip, "limits.max_sessions_per_ip", &l);
            return Err(Error::TooMany { what: AdmissionLimit::SessionsPerIp, status: 429 });
        }
        *n += 1;
        Ok(Permit { adm: self.clone(), ip: Some(ip) })
    }

    fn take_token(&self, ip: IpAddr, rate: u32) -> Result<(), Error> {
        if rate == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let cap = f64::from(rate);
        let mut e = self.rate.entry(ip).or_insert((cap, now));
        let (tokens, last) = *e;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * cap).min(cap);
        if tokens < 1.0 {
            *e = (tokens, now);
            return Err(Error::TooMany { what: AdmissionLimit::SessionRate, status: 429 });
        }
        *e = (tokens - 1.0, now);
        drop(e);
        // Keep the map from growing without bound: forget full buckets now and then.
        if self.rate.len() > 10_000 {
            self.rate.retain(|_, (t, l)| (*t + now.duration_since(*l).as_secs_f64() * cap) < cap);
        }
        Ok(())
    }
}

/// The XML limits for what a client sends, whatever its transport: `max_bytes` per element
/// (BOSH: the body; WebSocket and Direct TLS: a stanza) and `[limits] max_xml_depth`,
/// `max_xml_attrs` and `max_xml_name_len`. The one place they are put together.
pub fn client_xml(l: &Limits, max_bytes: usize) -> crate::xml::Limits {
    crate::xml::Limits { max_stanza_bytes: max_bytes, max_depth: l.max_xml_depth, max_attrs: l.max_xml_attrs, max_name_len: l.max_xml_name_len }
}

/// The admission part of `[limits]`, copied out so that a check takes no lock for long.
#[derive(Debug, Clone, Copy)]
struct AdmissionLimits {
    max_sessions: usize,
    max_sessions_per_ip: usize,
    new_sessions_per_ip_per_sec: u32,
    no_trusted_proxies: bool,
}

impl AdmissionLimits {
    fn of(l: &Limits, no_trusted_proxies: bool) -> Self {
        AdmissionLimits {
            max_sessions: l.max_sessions,
            max_sessions_per_ip: l.max_sessions_per_ip,
            new_sessions_per_ip_per_sec: l.new_sessions_per_ip_per_sec,
            no_trusted_proxies,
        }
    }
}

/// The key per-IP limits count under: the IPv4 address (IPv4-mapped IPv6 included), or the /64
/// of an IPv6 address — one subscriber or host typically holds a whole /64, so counting single
/// IPv6 addresses would let one client pick a fresh address for every session.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// A session's token bucket for the bytes its client sends (`limits.client_bytes_per_sec`, WS-25).
/// A client over the rate is slowed, not cut off: the session stops reading from it until
/// [`Throttle::take`]'s instant, so the client's own socket (WebSocket) or its next HTTP
/// requests (BOSH) wait, and nothing it sent is dropped. The burst is one second's worth, at
/// least one largest stanza, so a single big stanza never waits on an idle session.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// `None` when `rate` is 0 (unlimited).
    pub fn new(rate: u32, largest: usize, now: Instant) -> Option<Box<Throttle>> {
        if rate == 0 {
            return None;
        }
        let burst = f64::from(rate).max(largest as f64);
        Some(Box::new(Throttle { rate: f64::from(rate), burst, tokens: burst, last: now }))
    }

    /// Spends `bytes`; a bucket left in deficit pauses the client (counted as a limit hit).
    pub fn take(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            crate::metrics::metrics().limit_hit(crate::metrics::Limit::ClientRate);
        }
    }

    /// When reading may resume, while the bucket is in deficit; else `None`.
    pub fn paused_until(&self) -> Option<Instant> {
        (self.tokens < 0.0).then(|| self.last + Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// The pause has run its course (`now` is at or past [`Throttle::paused_until`]): the
    /// deficit is paid, whatever float rounding left over.
    pub fn resume(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.max(0.0);
    }

    fn refill(&mut self, now: Instant) {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.adm.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            if let dashmap::Entry::Occupied(mut o) = self.adm.per_ip.entry(ip) {
                *o.get_mut() -= 1;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_pauses_for_the_deficit_and_refills_ws25() {
        let t0 = Instant::now();
        assert!(Throttle::new(0, 1000, t0).is_none(), "0 is unlimited");
        let mut t = Throttle::new(1000, 100, t0).unwrap();
        t.take(1000, t0);
        assert_eq!(t.paused_until(), None, "the burst is one second's worth");
        t.take(500, t0);
        let resume = t.paused_until().expect("over the rate");
        assert_eq!(resume - t0, Duration::from_millis(500), "pause = deficit / rate");
        // At the resume instant the deficit is paid; half a second later 500 bytes are free.
        t.resume(resume);
        assert_eq!(t.paused_until(), None);
        t.take(500, resume + Duration::from_millis(500));
        assert_eq!(t.paused_until(), None);
        // A long quiet spell refills to the burst, no further.
        let later = resume + Duration::from_secs(60);
        t.take(1000, later);
        assert_eq!(t.paused_until(), None);
        t.take(1, later);
        assert!(t.paused_until().is_some());
    }

    #[test]
    fn throttle_burst_fits_the_largest_stanza() {
        let t0 = Instant::now();
        let mut t = Throttle::new(10, 4096, t0).unwrap();
        t.take(4096, t0);
        assert_eq!(t.paused_until(), None, "one largest stanza passes on a fresh session");
        t.take(1, t0);
        assert!(t.paused_until().is_some());
    }

    fn lim(max: usize, per_ip: usize, rate: u32) -> Arc<Admission> {
        Admission::new(Limits { max_sessions: max, max_sessions_per_ip: per_ip, new_sessions_per_ip_per_sec: rate, ..Limits::default() }, true)
    }

    fn status(r: Result<Permit, Error>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(Error::TooMany { status, .. }) => status,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn caps_and_release() {
        let a = lim(3, 2, 0);
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = a.admit(Some(ip1)).unwrap();
        let _p2 = a.admit(Some(ip1)).unwrap();
        assert_eq!(status(a.admit(Some(ip1))), 429);
        let _p3 = a.admit(Some(ip2)).unwrap();
        assert_eq!(status(a.admit(Some(ip2))), 503);
        drop(p1);
        assert_eq!(a.active(), 2);
        assert!(a.admit(Some(ip1)).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = lim(0, 2, 0);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let _p1 = a.admit(ip("2001:db8:1:2::1")).unwrap();
        let _p2 = a.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(status(a.admit(ip("2001:db8:1:2::abcd"))), 429, "same /64");
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok(), "next /64");
        let _p3 = a.admit(ip("192.0.2.7")).unwrap();
        let _p4 = a.admit(ip("::ffff:192.0.2.7")).unwrap();
        assert_eq!(status(a.admit(ip("192.0.2.7"))), 429, "IPv4-mapped is the IPv4 address");
    }

    #[test]
    fn rate_bucket() {
        let a = lim(0, 0, 5);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let mut ok = 0;
        let mut held = Vec::new();
        for _ in 0..20 {
            match a.admit(Some(ip)) {
                Ok(p) => {
                    ok += 1;
                    held.push(p);
                }
                Err(Error::TooMany { status: 429, .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 5, "burst equals the rate");
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(a.admit(Some(other)).is_ok(), "other IPs unaffected");
    }
}

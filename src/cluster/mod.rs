//! Several replicas sharing BOSH sessions (ARCHITECTURE.md §5, issue 14).
//!
//! A BOSH session's upstream TCP stream cannot move, so its owner never changes: the owner's
//! internal address and process epoch are sealed into the sid ([`sid`]), and a replica that
//! receives a request for a session it does not own forwards it over the internal hop
//! ([`hop`]: one multiplexed TCP connection per owner, a framed protocol authenticated with
//! the shared key) and relays the owner's answer.
//! No shared store, no discovery: the sid says where to go, and only addresses inside
//! `cluster.peer_cidrs` are ever dialled. WebSocket and Direct TLS connections are sticky by
//! nature and never forwarded. Without `cluster.secret_file` none of this exists
//! (`AppState::cluster` is `None`) and sids are the single-replica kind.
//!
//! The decision for a request's sid ([`Cluster::owner`]) runs before any network work:
//! not sealed under our key → `bad_sid`; ours with another epoch → `stale_epoch` (an earlier
//! process at the same address); another owner but the request already came over the hop →
//! `forwarded_twice`; owner outside `peer_cidrs` → `outside_peer_cidrs`. Each is
//! `item-not-found` for the client and a count in `xmpp_cm_cluster_refused_total{reason}`.

pub mod hop;
pub mod sid;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use hop::Hop;
pub use sid::SidCodec;

use crate::config::{self, ConfigError};

/// Why a sid was refused without any network attempt (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not minted under this cluster's key, or altered.
    BadSid,
    /// Minted by an earlier process that had this replica's address.
    StaleEpoch,
    /// Names an owner outside `cluster.peer_cidrs`.
    OutsidePeerCidrs,
    /// Arrived over the internal hop for a session this replica does not own.
    ForwardedTwice,
    /// A request on the internal listener without valid authentication.
    HopAuth,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [Refusal::BadSid, Refusal::StaleEpoch, Refusal::OutsidePeerCidrs, Refusal::ForwardedTwice, Refusal::HopAuth];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadSid => "bad_sid",
            Refusal::StaleEpoch => "stale_epoch",
            Refusal::OutsidePeerCidrs => "outside_peer_cidrs",
            Refusal::ForwardedTwice => "forwarded_twice",
            Refusal::HopAuth => "hop_auth",
        }
    }
}

/// Who answers a request for a sid.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// This process: look the session up locally.
    Local,
    /// Another replica: forward to it.
    Peer(SocketAddr),
    /// Nobody: `item-not-found`, nothing dialled.
    Refused(Refusal),
}

/// This replica's place in the cluster.
pub struct Cluster {
    codec: SidCodec,
    /// This replica's internal address, as written into its sids.
    pub advertise: SocketAddr,
    /// Random per process: sids of an earlier process at the same address are refused.
    pub epoch: u64,
    peers: Vec<(IpAddr, u8)>,
    /// The internal hop: authentication and the pooled connections to owners.
    pub hop: std::sync::Arc<Hop>,
}

impl Cluster {
    /// From a validated `[cluster]` (None when clustering is off).
    pub fn from_config(c: &config::Cluster, max_wait: u64) -> Result<Option<Cluster>, ConfigError> {
        if !c.enabled() {
            return Ok(None);
        }
        let secret = c.read_secret()?;
        let advertise = c.advertise.parse().map_err(|_| ConfigError(format!("cluster.advertise: '{}' is not ip:port", c.advertise)))?;
        let peers = c.peer_cidrs.iter().filter_map(|p| config::parse_cidr(p)).collect();
        let mut epoch = [0u8; 8];
        getrandom::getrandom(&mut epoch).expect("the OS random source is unavailable");
        let answer_within = answer_within(max_wait);
        Ok(Some(Cluster {
            codec: SidCodec::new(&secret),
            advertise,
            epoch: u64::from_be_bytes(epoch),
            peers,
            hop: std::sync::Arc::new(Hop::new(&secret, advertise, Duration::from_millis(c.connect_timeout_ms), answer_within)),
        }))
    }

    /// A sid for a new session owned by this process.
    pub fn mint(&self) -> String {
        self.codec.mint(self.advertise, self.epoch)
    }

    /// Who answers a request for `sid`; `forwarded` when it came over the internal hop.
    pub fn owner(&self, sid: &str, forwarded: bool) -> Owner {
        let Some((addr, epoch)) = self.codec.open(sid) else {
            return Owner::Refused(Refusal::BadSid);
        };
        if addr == self.advertise {
            return if epoch == self.epoch { Owner::Local } else { Owner::Refused(Refusal::StaleEpoch) };
        }
        if forwarded {
            return Owner::Refused(Refusal::ForwardedTwice);
        }
        if !self.is_peer(addr.ip()) {
            return Owner::Refused(Refusal::OutsidePeerCidrs);
        }
        Owner::Peer(addr)
    }

    /// Is `ip` inside `cluster.peer_cidrs` (may it reach the internal listener)?
    pub fn is_peer(&self, ip: IpAddr) -> bool {
        self.peers.iter().any(|n| config::cidr_contains(*n, ip))
    }
}

/// How long a forwarded request waits for its answer: as long as the owner may hold it
/// (`bosh.max_wait`), plus a margin.
pub fn answer_within(max_wait: u64) -> Duration {
    Duration::from_secs(max_wait + 15)
}

/// 32 bytes for one purpose (`info`) from the cluster secret: HKDF-SHA256 (RFC 5869).
pub(crate) fn derive(secret: &[u8], info: &[u8]) -> [u8; 32] {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"xmpp-cm cluster").extract(secret);
    let info = [info];
    let mut out = [0u8; 32];
    prk.expand(&info, Len32).and_then(|okm| okm.fill(&mut out)).expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(advertise: &str, cidrs: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = config::Cluster {
            secret_file: key.to_str().unwrap().into(),
            advertise: advertise.into(),
            peer_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Cluster::from_config(&c, 60).unwrap().unwrap()
    }

    /// The decision table of issue 14: every refusal is decided from the sid alone.
    #[test]
    fn owner_decisions() {
        let a = cluster("10.0.0.1:5281", &["10.0.0.0/8"]);
        let b = cluster("10.0.0.2:5281", &["10.0.0.0/8"]);
        let codec = SidCodec::new(b"0123456789abcdef0123456789abcdef");
        let mine = a.mint();
        assert_eq!(a.owner(&mine, false), Owner::Local);
        assert_eq!(a.owner(&mine, true), Owner::Local, "the owner answers forwarded requests");
        assert_eq!(b.owner(&mine, false), Owner::Peer(a.advertise));
        assert_eq!(b.owner(&mine, true), Owner::Refused(Refusal::ForwardedTwice));
        // An earlier process at the same address: same key, other epoch.
        let old = codec.mint(a.advertise, a.epoch.wrapping_add(1));
        assert_eq!(a.owner(&old, false), Owner::Refused(Refusal::StaleEpoch));
        let outside = codec.mint("192.168.1.1:5281".parse().unwrap(), 1);
        assert_eq!(b.owner(&outside, false), Owner::Refused(Refusal::OutsidePeerCidrs));
        let mut altered = mine.clone().into_bytes();
        altered[40] ^= 1;
        assert_eq!(b.owner(std::str::from_utf8(&altered).unwrap(), false), Owner::Refused(Refusal::BadSid));
        assert_eq!(b.owner("not-a-sid", false), Owner::Refused(Refusal::BadSid));
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let k = b"0123456789abcdef0123456789abcdef";
        assert_ne!(derive(k, b"a"), derive(k, b"b"));
        assert_eq!(derive(k, b"a"), derive(k, b"a"));
    }
}

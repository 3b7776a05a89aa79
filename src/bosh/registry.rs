//! The registry of live BOSH sessions: sid → the channel of the task that owns the session
//! (sessions are created, with their policy, by [`super::session::start`]). A sharded map;
//! nothing is held across `.await`. Also single-replica sids.

use base64::Engine as _;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::exchange::Incoming;

/// How many requests may queue for one session before the handler waits. Clients keep at most
/// `requests` (2) in flight, so this only bounds abuse.
pub(super) const SESSION_QUEUE: usize = 8;

#[derive(Default)]
pub struct Registry {
    /// Boxed requests: tokio's channel allocates 32 slots per block up front, and an unboxed
    /// `Incoming` (~0.5 KiB) would make that ~16 KiB per idle session.
    sessions: DashMap<String, mpsc::Sender<Box<Incoming>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, sid: &str) -> Option<mpsc::Sender<Box<Incoming>>> {
        self.sessions.get(sid).map(|s| s.clone())
    }

    pub fn remove(&self, sid: &str) {
        self.sessions.remove(sid);
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Register a new session's channel under a fresh sid from `mint` (drawn again on the
    /// astronomically unlikely collision); returns the sid.
    pub fn insert_new(&self, mint: impl Fn() -> String, tx: mpsc::Sender<Box<Incoming>>) -> String {
        loop {
            let sid = mint();
            if let dashmap::Entry::Vacant(v) = self.sessions.entry(sid.clone()) {
                v.insert(tx);
                return sid;
            }
        }
    }
}

/// 128 bits from the OS CSPRNG, URL-safe base64 (22 characters). SEC-01.
pub fn new_sid() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source is unavailable");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_unique_and_128_bits() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let s = new_sid();
            assert_eq!(s.len(), 22);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!(seen.insert(s));
        }
    }
}

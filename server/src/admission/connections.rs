//! What connecting peers can make the server hold: open connections, TLS
//! handshakes in progress (in all and per address), and open connections
//! per certificate identity. A connection over a cap is refused at once
//! (never queued), counted and logged once in a while; what it was
//! admitted under is held in a slot that gives it back when dropped.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::LogEvery;

/// Connections closed at once because a cap was reached, by cap.
#[derive(Debug, Default)]
pub struct AdmissionRefusals {
    /// The open-connection cap.
    pub connections: AtomicU64,
    /// The in-progress handshake cap.
    pub handshakes: AtomicU64,
    /// The per-IP in-progress handshake cap.
    pub handshakes_per_ip: AtomicU64,
    /// The per-identity open-connection cap.
    pub connections_per_identity: AtomicU64,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Open connections.
    Connections,
    /// Handshakes in progress.
    Handshakes,
    /// Handshakes in progress from one address.
    HandshakesPerIp,
    /// Open connections of one identity.
    ConnectionsPerIdentity,
}

impl Refusal {
    /// The cap's name in metrics and logs.
    pub fn cap(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Handshakes => "handshakes",
            Refusal::HandshakesPerIp => "handshakes_per_ip",
            Refusal::ConnectionsPerIdentity => "connections_per_identity",
        }
    }
}

/// The caps on what connecting peers can hold, and what they refused.
pub struct Admission {
    max_connections: usize,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_identity: Mutex<HashMap<String, usize>>,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// What was refused, for tests and metrics.
    pub refused: AdmissionRefusals,
    log: LogEvery,
}

/// A handshake slot: global and per-IP, released when dropped.
pub struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        release(&self.admission.per_ip, &self.ip);
    }
}

/// One of an identity's open connections, released when dropped.
pub struct IdentitySlot {
    admission: Arc<Admission>,
    identity: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        release(&self.admission.per_identity, &self.identity);
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// The address a peer's handshakes count against: an IPv6 host usually
/// holds a whole /64, so it counts as one address.
fn counted_ip(remote_addr: SocketAddr) -> IpAddr {
    match remote_addr.ip() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

impl Admission {
    /// Caps of `max_connections` open connections, `max_handshakes`
    /// handshakes in progress (`max_per_ip` from one address), each handshake
    /// given `handshake_timeout`.
    pub fn new(
        max_connections: usize,
        max_handshakes: usize,
        max_per_ip: usize,
        handshake_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            connections: Arc::new(Semaphore::new(max_connections)),
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            max_per_ip,
            per_ip: Mutex::default(),
            per_identity: Mutex::default(),
            handshake_timeout,
            refused: AdmissionRefusals::default(),
            log: LogEvery::new(Duration::from_secs(10)),
        })
    }

    /// Connections open now (accepted and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }

    /// Counts, and logs once in a while, a connection refused by a cap.
    pub fn refuse(&self, why: Refusal, remote_addr: SocketAddr) {
        let counter = match why {
            Refusal::Connections => &self.refused.connections,
            Refusal::Handshakes => &self.refused.handshakes,
            Refusal::HandshakesPerIp => &self.refused.handshakes_per_ip,
            Refusal::ConnectionsPerIdentity => &self.refused.connections_per_identity,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics()
            .connections_refused
            .with_label_values(&[why.cap()])
            .inc();
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(%remote_addr, cap = ?why, suppressed, "connection refused: at capacity");
        }
    }

    /// A slot among the open connections, or `None` (refused) when full.
    pub fn admit_connection(&self, remote_addr: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let permit = self.connections.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refuse(Refusal::Connections, remote_addr);
        }
        permit
    }

    /// A handshake slot, or `None` (refused) when the server or the peer's
    /// address has as many handshakes under way as it may.
    pub fn admit_handshake(self: &Arc<Self>, remote_addr: SocketAddr) -> Option<HandshakeSlot> {
        let ip = counted_ip(remote_addr);
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            self.refuse(Refusal::Handshakes, remote_addr);
            return None;
        };
        if !take(&self.per_ip, ip, self.max_per_ip) {
            self.refuse(Refusal::HandshakesPerIp, remote_addr);
            return None;
        }
        Some(HandshakeSlot {
            _permit: permit,
            admission: self.clone(),
            ip,
        })
    }

    /// One of `identity`'s at most `cap` open connections, or `None`
    /// (refused) when it holds them all.
    pub fn admit_identity(
        self: &Arc<Self>,
        identity: &str,
        cap: usize,
        remote_addr: SocketAddr,
    ) -> Option<IdentitySlot> {
        if !take(&self.per_identity, identity.to_owned(), cap) {
            self.refuse(Refusal::ConnectionsPerIdentity, remote_addr);
            return None;
        }
        Some(IdentitySlot {
            admission: self.clone(),
            identity: identity.to_owned(),
        })
    }
}

/// Counts one more for `key` unless it already has `cap`.
fn take<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: K, cap: usize) -> bool {
    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    let count = counts.entry(key).or_default();
    if *count >= cap {
        return false;
    }
    *count += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connections_past_the_cap_are_refused_until_one_closes() {
        let admission = Admission::new(2, 10, 10, Duration::from_secs(1));
        let a = admission.admit_connection(addr("127.0.0.1:1"));
        let b = admission.admit_connection(addr("127.0.0.1:2"));
        assert!(a.is_some() && b.is_some());
        assert!(admission.admit_connection(addr("127.0.0.1:3")).is_none());
        assert_eq!(admission.open_connections(), 2);
        drop(a);
        assert!(admission.admit_connection(addr("127.0.0.1:3")).is_some());
        assert_eq!(admission.refused.connections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn handshakes_are_capped_in_all_and_per_address() {
        let admission = Admission::new(100, 3, 2, Duration::from_secs(1));
        let first = admission.admit_handshake(addr("10.0.0.1:1"));
        let second = admission.admit_handshake(addr("10.0.0.1:2"));
        assert!(first.is_some() && second.is_some());
        assert!(
            admission.admit_handshake(addr("10.0.0.1:3")).is_none(),
            "per address"
        );
        let other = admission.admit_handshake(addr("10.0.0.2:1"));
        assert!(other.is_some());
        assert!(
            admission.admit_handshake(addr("10.0.0.3:1")).is_none(),
            "in all"
        );
        drop(first);
        assert!(admission.admit_handshake(addr("10.0.0.1:4")).is_some());
        assert_eq!(
            admission.refused.handshakes_per_ip.load(Ordering::Relaxed),
            1
        );
        assert_eq!(admission.refused.handshakes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let admission = Admission::new(100, 100, 1, Duration::from_secs(1));
        let held = admission.admit_handshake(addr("[2001:db8::1]:1"));
        assert!(held.is_some());
        assert!(
            admission
                .admit_handshake(addr("[2001:db8::ffff:2]:1"))
                .is_none()
        );
        assert!(
            admission
                .admit_handshake(addr("[2001:db8:0:1::1]:1"))
                .is_some()
        );
    }

    #[test]
    fn an_identity_holds_at_most_its_cap_and_gets_slots_back() {
        let admission = Admission::new(100, 100, 100, Duration::from_secs(1));
        let from = addr("127.0.0.1:1");
        let slots: Vec<_> = (0..3)
            .map(|_| admission.admit_identity("spiffe://a", 3, from))
            .collect();
        assert!(slots.iter().all(Option::is_some));
        assert!(admission.admit_identity("spiffe://a", 3, from).is_none());
        assert!(admission.admit_identity("spiffe://b", 3, from).is_some());
        drop(slots);
        assert!(admission.admit_identity("spiffe://a", 3, from).is_some());
        assert_eq!(
            admission
                .refused
                .connections_per_identity
                .load(Ordering::Relaxed),
            1
        );
    }
}

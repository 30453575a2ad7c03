//! What connecting peers can make the server hold: open connections,
//! silent connections (nothing sent yet), TLS handshakes in progress (in
//! all and per address), and open connections per certificate identity. A
//! connection over a cap is refused at once (never queued), counted and
//! logged once in a while; what it was admitted under is held in a slot
//! that gives it back when dropped.
//!
//! Silent connections never refuse a newcomer: when their pool is full the
//! oldest is closed ([`SilentSlot::evicted`]). A real client sends its
//! ClientHello in its first round trip and so leaves the pool at once for
//! a handshake slot; sockets that never speak cannot hold the slots real
//! handshakes need, whatever address they come from.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::shares::{Counts, Held};
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
    /// Silent connections closed to make room for newer ones.
    pub silent_evicted: AtomicU64,
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
    /// The oldest silent connection, closed for a newer one.
    SilentEvicted,
}

impl Refusal {
    /// The cap's name in metrics and logs.
    pub fn cap(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Handshakes => "handshakes",
            Refusal::HandshakesPerIp => "handshakes_per_ip",
            Refusal::ConnectionsPerIdentity => "connections_per_identity",
            Refusal::SilentEvicted => "silent_evicted",
        }
    }
}

/// The caps on what connecting peers can hold, and what they refused.
pub struct Admission {
    max_connections: usize,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    max_per_ip: usize,
    per_ip: Arc<Counts<IpAddr>>,
    per_identity: Arc<Counts<Arc<str>>>,
    silent: Arc<SilentPool>,
    /// How long a handshake may take, from the first bytes.
    pub handshake_timeout: Duration,
    /// How long a connection may send nothing.
    pub first_bytes_timeout: Duration,
    /// What was refused, for tests and metrics.
    pub refused: AdmissionRefusals,
    /// The tenants with a connection open, and what each holds.
    pub tenants: super::calls::Tenants,
    log: LogEvery,
}

/// A handshake slot: global and per-IP, released when dropped.
pub struct HandshakeSlot {
    _permit: OwnedSemaphorePermit,
    _ip: Held<IpAddr>,
}

/// One of an identity's open connections, released when dropped.
pub type IdentitySlot = Held<Arc<str>>;

/// The silent connections, oldest first (by admission number).
struct SilentPool {
    max: usize,
    held: std::sync::Mutex<(u64, std::collections::BTreeMap<u64, CancellationToken>)>,
}

/// A silent connection's place, given back when dropped.
pub struct SilentSlot {
    pool: Arc<SilentPool>,
    number: u64,
    evicted: CancellationToken,
}

impl SilentSlot {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for SilentSlot {
    fn drop(&mut self) {
        let mut held = self.pool.held.lock().unwrap_or_else(|e| e.into_inner());
        held.1.remove(&self.number);
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
    /// The caps of `limits`: open connections, silent connections,
    /// handshakes in progress (in all and from one address), and the
    /// timeouts of the first bytes and of the handshake.
    pub fn new(limits: &crate::limits::Limits) -> Arc<Self> {
        Arc::new(Self {
            max_connections: limits.max_connections,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            max_per_ip: limits.max_handshakes_per_ip,
            per_ip: Arc::default(),
            per_identity: Arc::default(),
            silent: Arc::new(SilentPool {
                max: limits.max_silent_connections,
                held: Default::default(),
            }),
            handshake_timeout: limits.handshake_timeout,
            first_bytes_timeout: limits.first_bytes_timeout,
            refused: AdmissionRefusals::default(),
            tenants: super::calls::Tenants::default(),
            log: LogEvery::new(Duration::from_secs(10)),
        })
    }

    /// A place among the silent connections, never refused: when they are
    /// all taken, the oldest is evicted (its [`SilentSlot::evicted`]
    /// resolves) to make room.
    pub fn admit_silent(&self, remote_addr: SocketAddr) -> SilentSlot {
        let evicted = CancellationToken::new();
        let (number, oldest) = {
            let mut held = self.silent.held.lock().unwrap_or_else(|e| e.into_inner());
            let number = held.0;
            held.0 += 1;
            let oldest = if held.1.len() >= self.silent.max {
                held.1.pop_first().map(|(_, token)| token)
            } else {
                None
            };
            held.1.insert(number, evicted.clone());
            (number, oldest)
        };
        if let Some(oldest) = oldest {
            oldest.cancel();
            self.refuse(Refusal::SilentEvicted, remote_addr);
        }
        SilentSlot {
            pool: self.silent.clone(),
            number,
            evicted,
        }
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
            Refusal::SilentEvicted => &self.refused.silent_evicted,
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
        let Some(held) = self.per_ip.take(&ip, |n| n < self.max_per_ip) else {
            self.refuse(Refusal::HandshakesPerIp, remote_addr);
            return None;
        };
        Some(HandshakeSlot {
            _permit: permit,
            _ip: held,
        })
    }

    /// One of `identity`'s at most `cap` open connections, or `None`
    /// (refused) when it holds them all.
    pub fn admit_identity(
        &self,
        identity: &Arc<str>,
        cap: usize,
        remote_addr: SocketAddr,
    ) -> Option<IdentitySlot> {
        let slot = self.per_identity.take(identity, |n| n < cap);
        if slot.is_none() {
            self.refuse(Refusal::ConnectionsPerIdentity, remote_addr);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn admission(connections: usize, handshakes: usize, per_ip: usize) -> Arc<Admission> {
        Admission::new(&crate::limits::Limits {
            max_connections: connections,
            max_handshakes: handshakes,
            max_handshakes_per_ip: per_ip,
            max_silent_connections: 2,
            ..Default::default()
        })
    }

    #[test]
    fn a_full_silent_pool_evicts_its_oldest_never_the_newcomer() {
        let admission = admission(100, 100, 100);
        let from = addr("127.0.0.1:1");
        let first = admission.admit_silent(from);
        let second = admission.admit_silent(from);
        assert!(!first.evicted.is_cancelled() && !second.evicted.is_cancelled());
        let third = admission.admit_silent(from);
        assert!(first.evicted.is_cancelled(), "the oldest goes");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        drop(second);
        let fourth = admission.admit_silent(from);
        assert!(!third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
        assert_eq!(admission.refused.silent_evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn connections_past_the_cap_are_refused_until_one_closes() {
        let admission = admission(2, 10, 10);
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
        let admission = admission(100, 3, 2);
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
        let admission = admission(100, 100, 1);
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
        let admission = admission(100, 100, 100);
        let from = addr("127.0.0.1:1");
        let (a, b): (Arc<str>, Arc<str>) = ("spiffe://a".into(), "spiffe://b".into());
        let slots: Vec<_> = (0..3)
            .map(|_| admission.admit_identity(&a, 3, from))
            .collect();
        assert!(slots.iter().all(Option::is_some));
        assert!(admission.admit_identity(&a, 3, from).is_none());
        assert!(admission.admit_identity(&b, 3, from).is_some());
        drop(slots);
        assert!(admission.admit_identity(&a, 3, from).is_some());
        assert_eq!(
            admission
                .refused
                .connections_per_identity
                .load(Ordering::Relaxed),
            1
        );
    }
}
